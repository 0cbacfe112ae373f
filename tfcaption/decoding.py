"""Greedy and beam search inside the graph: tf.while_loop over preallocated buffers.

Both searches run on a `step(token, state) -> (logits, state, alpha)` function
(Model Garden's `symbols_to_logits_fn` idea): `decoder_step` makes one from the
GRU decoder, whose per-image attention values and keys are bound once and never
copied inside the loop; tests can pass a hand-made probability table instead.

Shapes never depend on the data: buffers are (batch, [beam,] max_len[, locations])
whatever step the loop exits at, so the loops compile with XLA and export to a
SavedModel. The loops exit early once every caption (every beam) has ended.
"""

from __future__ import annotations

import tensorflow as tf

from tfcaption.tokens import END_ID, PAD_ID, START_ID, UNK_ID

NEVER_EMITTED = (PAD_ID, START_ID, UNK_ID)
_NEG = -1e9  # "impossible" without inf - inf = NaN


def _banned(vocab_size: int) -> tf.Tensor:
    """(vocab,) float32: a large negative number on tokens no caption may contain."""
    return tf.reduce_sum(tf.one_hot(NEVER_EMITTED, vocab_size), axis=0) * _NEG


def decoder_step(decoder, features, repeat: int = 1):
    """-> (step, initial_state) for `decoder` on features (batch, locations, channels),
    each image repeated `repeat` times in a row (the beams of one image)."""
    return _bind(decoder, *decoder.encode(features, training=False), repeat=repeat)


def _bind(decoder, values, keys, state, repeat: int = 1):
    """decoder_step from encoded features: `encode` is two (batch * locations)
    matmuls, as costly as several steps, so beam() runs it once for both searches."""
    if repeat > 1:
        values, keys, state = (tf.repeat(x, repeat, axis=0) for x in (values, keys, state))

    def step(token, state):
        return decoder.step(token, state, values, keys, training=False)

    return step, state


def greedy_search(step, state, batch_size, max_len: int, vocab_size: int, locations):
    """-> tokens (batch, max_len) int32 (<pad> after <end>), lengths (batch,) counting
    <end>, scores (batch,) summed log-probabilities, attention (batch, max_len,
    locations) float32 (0 after <end>)."""
    banned = _banned(vocab_size)

    def body(t, token, state, finished, tokens, scores, attention):
        logits, state, alpha = step(token, state)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32) + banned)
        chosen = tf.argmax(logp, axis=-1, output_type=tf.int32)
        chosen_logp = tf.gather(logp, chosen, batch_dims=1)
        chosen = tf.where(finished, PAD_ID, chosen)
        scores += tf.where(finished, 0.0, chosen_logp)
        alpha = tf.where(finished[:, None], 0.0, tf.cast(alpha, tf.float32))
        tokens = tf.tensor_scatter_nd_update(tokens, [[t]], chosen[None])
        attention = tf.tensor_scatter_nd_update(attention, [[t]], alpha[None])
        return t + 1, chosen, state, finished | tf.equal(chosen, END_ID), tokens, scores, attention

    def cond(t, token, state, finished, *_):
        return tf.logical_not(tf.reduce_all(finished))

    initial = (tf.constant(0), tf.fill([batch_size], START_ID), state,
               tf.zeros([batch_size], tf.bool), tf.zeros([max_len, batch_size], tf.int32),
               tf.zeros([batch_size], tf.float32),
               tf.zeros([max_len, batch_size, locations], tf.float32))
    _, _, _, _, tokens, scores, attention = tf.while_loop(
        cond, body, initial, maximum_iterations=max_len)
    tokens = tf.transpose(tokens)
    lengths = tf.reduce_sum(tf.cast(tokens != PAD_ID, tf.int32), axis=1)
    return tokens, lengths, scores, tf.transpose(attention, [1, 0, 2])


def length_normalised(scores, lengths, penalty: float):
    """GNMT's length normalisation: score / ((5 + length) / 6) ** penalty."""
    return scores / tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, penalty)


def beam_search(step, state, batch_size, beam_size: int, max_len: int, vocab_size: int,
                locations, length_penalty: float = 0.0):
    """Batched beam search; `step` and `state` work on batch_size * beam_size rows,
    the beams of one image next to each other.

    A beam that has emitted <end> stays in the beam with its score frozen (it can
    only be followed by <pad> at no cost), so the loop can stop as soon as every
    beam of every image has ended. The beam returned per image is the one with
    the best length-normalised score (`length_penalty` 0 = raw log-probability).

    -> tokens (batch, max_len), lengths (batch,), scores (batch,) the returned
    caption's summed log-probability, attention (batch, max_len, locations).
    """
    k = beam_size
    banned = _banned(vocab_size)
    # What a finished beam may do next: <pad>, at no cost.
    pad_only = (1.0 - tf.one_hot(PAD_ID, vocab_size)) * _NEG
    times = tf.range(max_len)

    def regroup(x, parent):
        """(batch * k, ...) rows reordered by parent (batch, k) beam indices."""
        shaped = tf.reshape(x, tf.concat([[batch_size, k], tf.shape(x)[1:]], 0))
        return tf.reshape(tf.gather(shaped, parent, batch_dims=1), tf.shape(x))

    def body(t, token, state, logp, finished, lengths, tokens, attention):
        logits, state, alpha = step(token, state)
        step_logp = tf.nn.log_softmax(tf.cast(logits, tf.float32) + banned)
        step_logp = tf.reshape(step_logp, [batch_size, k, vocab_size])
        step_logp = tf.where(finished[..., None], pad_only, step_logp)
        candidates = tf.reshape(logp[..., None] + step_logp, [batch_size, k * vocab_size])
        logp, best = tf.math.top_k(candidates, k=k)
        parent, word = best // vocab_size, best % vocab_size
        state = tf.nest.map_structure(lambda s: regroup(s, parent), state)
        alpha = tf.gather(tf.reshape(tf.cast(alpha, tf.float32), [batch_size, k, -1]),
                          parent, batch_dims=1)
        was_finished = tf.gather(finished, parent, batch_dims=1)
        tokens = tf.gather(tokens, parent, batch_dims=1)
        attention = tf.gather(attention, parent, batch_dims=1)
        lengths = tf.gather(lengths, parent, batch_dims=1) + tf.cast(~was_finished, tf.int32)
        alpha = tf.where(was_finished[..., None], 0.0, alpha)
        now = tf.equal(times, t)  # (max_len,): where this step writes
        tokens = tf.where(now, word[..., None], tokens)
        attention = tf.where(now[:, None], alpha[:, :, None, :], attention)
        finished = was_finished | tf.equal(word, END_ID)
        return (t + 1, tf.reshape(word, [-1]), state, logp, finished, lengths, tokens,
                attention)

    def cond(t, token, state, logp, finished, *_):
        return tf.logical_not(tf.reduce_all(finished))

    # Only beam 0 is alive at first, so the k beams start from k different words.
    logp = tf.tile(tf.concat([[0.0], tf.fill([k - 1], _NEG)], 0)[None], [batch_size, 1])
    initial = (tf.constant(0), tf.fill([batch_size * k], START_ID), state, logp,
               tf.zeros([batch_size, k], tf.bool), tf.zeros([batch_size, k], tf.int32),
               tf.zeros([batch_size, k, max_len], tf.int32),
               tf.zeros([batch_size, k, max_len, locations], tf.float32))
    _, _, _, logp, _, lengths, tokens, attention = tf.while_loop(
        cond, body, initial, maximum_iterations=max_len)
    chosen = tf.argmax(length_normalised(logp, lengths, length_penalty), axis=1,
                       output_type=tf.int32)
    pick = lambda x: tf.gather(x, chosen, batch_dims=1)  # noqa: E731
    return pick(tokens), pick(lengths), pick(logp), pick(attention)


def greedy(decoder, features, max_len: int):
    """Greedy captions of features (batch, locations, channels); see greedy_search."""
    step, state = decoder_step(decoder, features)
    return greedy_search(step, state, tf.shape(features)[0], max_len, decoder.vocab_size,
                         tf.shape(features)[1])


def beam(decoder, features, beam_size: int, max_len: int, length_penalty: float = 0.0):
    """Beam-search captions of features (batch, locations, channels).

    The greedy caption competes too: beam search can lose the greedy path (it is
    not monotone in beam size), and a caller asking for beams should never get a
    worse caption than greedy would give.
    """
    batch, locations = tf.shape(features)[0], tf.shape(features)[1]
    if beam_size == 1:
        return greedy(decoder, features, max_len)
    encoded = decoder.encode(features, training=False)
    step, state = _bind(decoder, *encoded, repeat=beam_size)
    found = beam_search(step, state, batch, beam_size, max_len, decoder.vocab_size, locations,
                        length_penalty)
    step, state = _bind(decoder, *encoded)
    greedy_found = greedy_search(step, state, batch, max_len, decoder.vocab_size, locations)
    better = (length_normalised(greedy_found[2], greedy_found[1], length_penalty) >
              length_normalised(found[2], found[1], length_penalty))
    return tuple(tf.where(tf.reshape(better, [-1] + [1] * (g.shape.rank - 1)), g, b)
                 for g, b in zip(greedy_found, found))
