"""One word per row per step: greedy search, and sampling, which is greedy search
with a random choice of word.

The loop writes into buffers preallocated for max_len steps, so its shapes never
depend on the data, and exits early once every row has ended.
"""

from __future__ import annotations

import tensorflow as tf

from tfcaption.decoding.masks import NEG, next_log_probs
from tfcaption.tokens import END_ID, PAD_ID, START_ID


def argmax(logp, t):
    """The greedy choice: (rows, vocab) -> (rows,) int32."""
    return tf.argmax(logp, axis=-1, output_type=tf.int32)


def sampler(temperature, top_k=0, top_p=1.0, seed=0):
    """-> choose(logp (rows, vocab), t) -> (rows,) int32: a word drawn from the
    distribution sharpened by `temperature` (<= 0: the argmax), cut to the top_k
    likeliest words (0: all; ties with the k-th stay in) and then to the smallest
    set whose probability reaches top_p (the first word always stays).

    All arguments may be tensors, so a SavedModel can take them per request. The
    draw is Gumbel-max with stateless Philox noise keyed by (seed, t): the same seed
    gives the same captions, eagerly and in a graph (a SavedModel). XLA draws its
    own stream from the same seed, as reproducible but not the same.
    """
    temperature = tf.cast(temperature, tf.float32)
    top_k, top_p = tf.cast(top_k, tf.int32), tf.cast(top_p, tf.float32)
    seed = tf.cast(seed, tf.int64)
    key = tf.stack([seed, tf.zeros_like(seed)]) if seed.shape.rank == 0 else seed
    # Cutting needs the vocabulary sorted in every row at every step: 9% of an
    # SCST step's op time, for a draw that top_k=0, top_p=1 leaves uncut.
    # Known values decide while tracing; tensors (a request's) at run time.
    known_k, known_p = tf.get_static_value(top_k), tf.get_static_value(top_p)
    if known_k is not None and known_p is not None:
        cuts = bool(known_k > 0 or known_p < 1)
    else:
        cuts = (top_k > 0) | (top_p < 1)

    def cut(scaled):
        """scaled with the words outside the top_k / top_p set at NEG."""
        ranked = tf.sort(scaled, axis=-1, direction="DESCENDING")
        position = tf.range(tf.shape(scaled)[-1])
        # The mass ranked strictly before each word decides whether it is kept.
        before = tf.math.cumsum(tf.nn.softmax(ranked), axis=-1, exclusive=True)
        kept = (before < top_p) | tf.equal(position, 0)
        kept &= (top_k <= 0) | (position < top_k)
        floor = tf.reduce_min(tf.where(kept, ranked, -NEG), axis=-1, keepdims=True)
        return tf.where(scaled < floor, NEG, scaled)

    def choose(logp, t):
        scaled = logp / tf.maximum(temperature, 1e-6)
        if cuts is True:
            scaled = cut(scaled)
        elif cuts is not False:
            scaled = tf.cond(cuts, lambda: cut(scaled), lambda: scaled)
        uniform = tf.random.stateless_uniform(
            tf.shape(logp), tf.random.experimental.stateless_fold_in(key, t, alg="philox"),
            minval=1e-7, maxval=1.0, alg="philox")
        drawn = argmax(scaled - tf.math.log(-tf.math.log(uniform)), t)
        return tf.where(temperature > 0, drawn, argmax(logp, t))

    return choose


def greedy_search(step, state, batch_size, max_len: int, vocab_size: int, locations,
                  choose=argmax, no_repeat_ngram: int = 0):
    """`step` (see decoding.decoder_step) run on batch_size rows, each taking the word
    `choose(logp, t)` picks (greedy by default; see `sampler`).

    -> tokens (batch, max_len) int32 (<pad> after <end>), lengths (batch,) counting
    <end>, scores (batch,) summed log-probabilities, attention (batch, max_len,
    locations) float32 (0 after <end>).
    """
    del vocab_size  # kept for callers: the logits carry it

    def body(t, token, state, finished, tokens, scores, attention):
        logits, state, alpha = step(token, state)
        logp = next_log_probs(logits, tf.transpose(tokens), t, no_repeat_ngram)
        chosen = choose(logp, t)
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
