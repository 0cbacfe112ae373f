"""Beam search with a pool of finished captions (GNMT; Model Garden's beam_search),
and its diverse variant (Vijayakumar et al., 2018).

Each image keeps `beam_size` live hypotheses and a pool of `beam_size` finished
ones. A hypothesis that emits <end> leaves the live beam for the pool, where it is
ranked by its length-normalised score, so the live beam stays full and long
captions are not crowded out by short ones that ended early. The search stops
once no live hypothesis could still beat the worst finished one.

Shapes never depend on the data: buffers are (batch, beam, max_len[, locations])
whatever step the loop exits at, so the loop compiles with XLA and exports.
"""

from __future__ import annotations

import tensorflow as tf

from tfcaption.decoding.masks import NEG, next_log_probs
from tfcaption.tokens import END_ID, START_ID


def length_norm(lengths, penalty: float):
    """GNMT's length normaliser ((5 + length) / 6) ** penalty, float32."""
    return tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, penalty)


def length_normalised(scores, lengths, penalty: float):
    """GNMT's length normalisation: score / ((5 + length) / 6) ** penalty."""
    return scores / length_norm(lengths, penalty)


def _write(buffer, value, t, times):
    """buffer (batch, n, max_len[, locations]) with value (batch, n[, locations]) at t."""
    now = tf.equal(times, t)
    if buffer.shape.rank == 4:
        return tf.where(now[:, None], value[:, :, None, :], buffer)
    return tf.where(now, value[..., None], buffer)


def beam_search(step, state, batch_size, beam_size: int, max_len: int, vocab_size: int,
                locations, length_penalty: float = 0.0, groups: int = 1,
                diversity_penalty: float = 0.0, no_repeat_ngram: int = 0):
    """Batched beam search; `step` and `state` work on batch_size * beam_size rows,
    the beams of one image next to each other.

    groups > 1: diverse beam search. The beams form `groups` groups of beam_size /
    groups, each a beam search of its own with its own pool; at every step the
    groups choose in turn, and a word costs diversity_penalty for each beam of an
    earlier group that chose it at this step (Hamming diversity). The penalty
    only steers the choice: scores stay log-probabilities.

    A hypothesis still live at max_len enters the pool cut there (no <end>), as
    greedy search returns it.

    -> the pools of every group, best length-normalised score first: tokens
    (batch, beam, max_len) int32 (<pad> after the end), lengths (batch, beam)
    counting <end>, scores (batch, beam) summed log-probabilities, attention
    (batch, beam, max_len, locations) float32 (0 after the end).
    """
    if beam_size % groups:
        raise ValueError(f"beam_size {beam_size} is not a multiple of groups {groups}")
    k, kg, v = beam_size, beam_size // groups, vocab_size
    times = tf.range(max_len)
    # A live hypothesis of length l ends at a length in (l, max_len]: the largest
    # normaliser there bounds its final score from above (log-probs only fall).
    best_norm = lambda t: tf.maximum(length_norm(t + 2, length_penalty),  # noqa: E731
                                     length_norm(max_len, length_penalty))

    def grow(t, logp, alpha, alive, pool, taken):
        """One group's step. logp (batch, kg, vocab) and alpha (batch, kg, locations)
        of its live rows; taken (batch, vocab): beams of earlier groups per word.
        -> alive, pool, parent (batch, kg) and word of each new live row, done (batch,)."""
        total = tf.reshape(alive["logp"][..., None] + logp, [batch_size, kg * v])
        ranking = total
        if groups > 1:
            ranking -= diversity_penalty * tf.tile(taken, [1, kg])
        # 2 kg candidates: at most kg of them end (one <end> per parent), so at
        # least kg go on and the live beam stays full.
        ranked, best = tf.math.top_k(ranking, 2 * kg)
        logp_of = tf.gather(total, best, batch_dims=1)
        parent, word = best // v, best % v
        ends = tf.equal(word, END_ID) | tf.equal(t, max_len - 1)
        tokens_of = lambda p, w: _write(  # noqa: E731
            tf.gather(alive["tokens"], p, batch_dims=1), w, t, times)
        attention_of = lambda p: _write(  # noqa: E731
            tf.gather(alive["attention"], p, batch_dims=1), tf.gather(alpha, p, batch_dims=1),
            t, times)

        # The finished pool: its members and the candidates that end, best kg kept.
        score = tf.where(ends & (logp_of > NEG / 2),
                         length_normalised(logp_of, t + 1, length_penalty), -float("inf"))
        merged, chosen = tf.math.top_k(tf.concat([pool["score"], score], 1), kg)
        kept = chosen < kg
        old = lambda x: tf.gather(x, tf.minimum(chosen, kg - 1), batch_dims=1)  # noqa: E731
        new = tf.maximum(chosen - kg, 0)
        new_parent, new_word = (tf.gather(x, new, batch_dims=1) for x in (parent, word))
        pool = {"score": merged,
                "logp": tf.where(kept, old(pool["logp"]), tf.gather(logp_of, new, batch_dims=1)),
                "lengths": tf.where(kept, old(pool["lengths"]), t + 1),
                "tokens": tf.where(kept[..., None], old(pool["tokens"]),
                                   tokens_of(new_parent, new_word)),
                "attention": tf.where(kept[..., None, None], old(pool["attention"]),
                                      attention_of(new_parent))}

        # The live beam: the kg best candidates that go on.
        _, live = tf.math.top_k(tf.where(ends, -float("inf"), ranked), kg)
        live_parent, live_word = (tf.gather(x, live, batch_dims=1) for x in (parent, word))
        alive = {"logp": tf.where(tf.gather(ends, live, batch_dims=1), NEG,
                                  tf.gather(logp_of, live, batch_dims=1)),
                 "tokens": tokens_of(live_parent, live_word),
                 "attention": attention_of(live_parent)}

        finished = tf.math.is_finite(pool["score"])
        worst = tf.reduce_min(tf.where(finished, pool["score"], float("inf")), axis=1)
        bound = tf.reduce_max(alive["logp"], axis=1) / best_norm(t)
        done = tf.reduce_any(finished, axis=1) & (worst >= bound)
        return alive, pool, live_parent, live_word, done

    def body(t, token, state, alive, pool, done):
        logits, state, alpha = step(token, state)
        logp = next_log_probs(logits, tf.reshape(alive["tokens"], [-1, max_len]), t,
                              no_repeat_ngram)
        logp = tf.reshape(logp, [batch_size, k, v])
        alpha = tf.reshape(tf.cast(alpha, tf.float32), [batch_size, k, -1])
        taken = tf.zeros([batch_size, v])
        grown = []
        for g in range(groups):
            rows = slice(g * kg, (g + 1) * kg)
            part = lambda d: {key: x[:, rows] for key, x in d.items()}  # noqa: E731
            grown.append(grow(t, logp[:, rows], alpha[:, rows], part(alive), part(pool), taken))
            taken += tf.reduce_sum(tf.one_hot(grown[-1][3], v), axis=1)
        joined = lambda d: {key: tf.concat([x[d][key] for x in grown], 1)  # noqa: E731
                            for key in grown[0][d]}
        alive, pool = joined(0), joined(1)
        parent = tf.concat([x[2] + g * kg for g, x in enumerate(grown)], 1)
        word = tf.concat([x[3] for x in grown], 1)
        done = tf.reduce_all(tf.stack([x[4] for x in grown], 1), axis=1)
        regroup = lambda s: tf.reshape(  # noqa: E731
            tf.gather(tf.reshape(s, tf.concat([[batch_size, k], tf.shape(s)[1:]], 0)), parent,
                      batch_dims=1), tf.shape(s))
        return t + 1, tf.reshape(word, [-1]), tf.nest.map_structure(regroup, state), alive, \
            pool, done

    def cond(t, token, state, alive, pool, done):
        return tf.logical_not(tf.reduce_all(done))

    # Only the first beam of each group is live at first, so a group's beams start
    # from different words.
    first = tf.constant(([0.0] + [NEG] * (kg - 1)) * groups)
    buffers = lambda: {"tokens": tf.zeros([batch_size, k, max_len], tf.int32),  # noqa: E731
                       "attention": tf.zeros([batch_size, k, max_len, locations], tf.float32)}
    alive = {"logp": tf.tile(first[None], [batch_size, 1]), **buffers()}
    pool = {"score": tf.fill([batch_size, k], -float("inf")), "logp": tf.zeros([batch_size, k]),
            "lengths": tf.zeros([batch_size, k], tf.int32), **buffers()}
    initial = (tf.constant(0), tf.fill([batch_size * k], START_ID), state, alive, pool,
               tf.zeros([batch_size], tf.bool))
    _, _, _, _, pool, _ = tf.while_loop(cond, body, initial, maximum_iterations=max_len)
    _, order = tf.math.top_k(pool["score"], k)
    pick = lambda x: tf.gather(x, order, batch_dims=1)  # noqa: E731
    return pick(pool["tokens"]), pick(pool["lengths"]), pick(pool["logp"]), \
        pick(pool["attention"])
