"""Which words may come next: the log-probabilities every search draws from.

All searches (greedy, sampling, beam, diverse beam) take their next-word
distribution from `next_log_probs`, so a rule such as "never <unk>" or "no
repeated n-gram" holds in every one of them.
"""

from __future__ import annotations

import tensorflow as tf

from tfcaption.tokens import END_ID, PAD_ID, START_ID, UNK_ID

NEVER_EMITTED = (PAD_ID, START_ID, UNK_ID)
NEG = -1e9  # "impossible" without inf - inf = NaN


def banned_specials(vocab_size: int) -> tf.Tensor:
    """(vocab,) float32: a large negative number on tokens no caption may contain."""
    return tf.reduce_sum(tf.one_hot(NEVER_EMITTED, vocab_size), axis=0) * NEG


def repeated_ngrams(tokens, t, n: int, vocab_size: int):
    """(rows, vocab) bool: the words that, written at position t, would complete an
    n-gram already in the row.

    tokens (rows, max_len) int32, of which positions < t hold the row's words so
    far; max_len must be static. Every earlier n-gram is compared with the last
    n - 1 words at once (no loop over time), and the words that completed the
    matching ones are scattered into the mask.
    """
    max_len = tokens.shape[1]
    starts = max_len - n + 1  # where an n-gram can begin
    rows = tf.shape(tokens)[0]
    if starts <= 0:
        return tf.zeros([rows, vocab_size], tf.bool)
    # An earlier n-gram at s must lie before t: s + n - 1 < t. Before position
    # n - 1 none does, and the clipped gather below reads harmless words.
    match = tf.broadcast_to(tf.range(starts) + n - 1 < t, [rows, starts])
    for i in range(n - 1):
        word = tf.gather(tokens, tf.maximum(t - n + 1 + i, 0), axis=1)
        match &= tf.equal(tokens[:, i:i + starts], word[:, None])
    completing = tokens[:, n - 1:n - 1 + starts]
    row = tf.broadcast_to(tf.range(rows)[:, None], [rows, starts])
    hits = tf.scatter_nd(tf.stack([row, completing], -1), tf.cast(match, tf.int32),
                         [rows, vocab_size])
    return hits > 0


def next_log_probs(logits, tokens, t, no_repeat_ngram: int = 0):
    """logits (rows, vocab) -> float32 log-probabilities (rows, vocab) over the words
    allowed at position t: never <pad>/<start>/<unk>, and with no_repeat_ngram=n > 0
    no word that repeats an n-gram of tokens (rows, max_len) (positions < t written).

    The specials go before the softmax: they are not words, so their mass belongs
    to no caption. Repeats go after it: a caption's score stays its
    log-probability under the model, and beam search gains nothing by running
    into the mask (sampling draws from the renormalised rest either way).
    """
    vocab_size = logits.shape[-1]
    logp = tf.nn.log_softmax(tf.cast(logits, tf.float32) + banned_specials(vocab_size))
    if no_repeat_ngram > 0:
        repeated = repeated_ngrams(tokens, t, no_repeat_ngram, vocab_size)
        # <end> repeats nothing: a caption must always be able to stop.
        repeated &= tf.not_equal(tf.range(vocab_size), END_ID)
        logp = tf.where(repeated, NEG, logp)
    return logp
