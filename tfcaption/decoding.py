"""Decoding inside the graph: a tf.while_loop over preallocated buffers, static shapes.

Both the validation during training and the SavedModel decode through
`decoder.encode` + `decoder.step`, the same math as training.
"""

from __future__ import annotations

import tensorflow as tf

from tfcaption.data.text import END_ID, PAD_ID, START_ID, UNK_ID

NEVER_EMITTED = (PAD_ID, START_ID, UNK_ID)


def _banned(vocab_size: int) -> tf.Tensor:
    """(vocab,) float32: -inf on tokens a caption may never contain."""
    mask = tf.reduce_sum(tf.one_hot(NEVER_EMITTED, vocab_size), axis=0)
    return mask * tf.float32.min


def greedy(decoder, features, max_len: int):
    """features (batch, locations, channels) ->
    tokens (batch, max_len) int32 (0 after <end>), lengths (batch,) int32 counting
    <end>, scores (batch,) float32 summed log-probabilities, attention
    (batch, max_len, locations) float32 (0 after <end>).

    The loop stops early once every caption has ended; buffers keep their
    static shape whatever the exit step, so the loop compiles with XLA.
    """
    values, keys, state = decoder.encode(features, training=False)
    batch = tf.shape(features)[0]
    locations = tf.shape(values)[1]
    banned = _banned(decoder.vocab_size)

    def body(t, token, state, finished, tokens, scores, attention):
        logits, state, alpha = decoder.step(token, state, values, keys, training=False)
        logp = tf.nn.log_softmax(logits + banned)
        chosen = tf.argmax(logp, axis=-1, output_type=tf.int32)
        chosen_logp = tf.gather(logp, chosen, batch_dims=1)
        chosen = tf.where(finished, PAD_ID, chosen)
        scores += tf.where(finished, 0.0, chosen_logp)
        alpha = tf.where(finished[:, None], 0.0, alpha)
        tokens = tf.tensor_scatter_nd_update(tokens, [[t]], chosen[None])
        attention = tf.tensor_scatter_nd_update(attention, [[t]], alpha[None])
        finished = finished | tf.equal(chosen, END_ID)
        return t + 1, chosen, state, finished, tokens, scores, attention

    def cond(t, token, state, finished, *_):
        return tf.logical_not(tf.reduce_all(finished))

    initial = (tf.constant(0), tf.fill([batch], START_ID), state, tf.zeros([batch], tf.bool),
               tf.zeros([max_len, batch], tf.int32), tf.zeros([batch], tf.float32),
               tf.zeros([max_len, batch, locations], tf.float32))
    _, _, _, _, tokens, scores, attention = tf.while_loop(
        cond, body, initial, maximum_iterations=max_len)
    tokens = tf.transpose(tokens)
    lengths = tf.reduce_sum(tf.cast(tokens != PAD_ID, tf.int32), axis=1)
    return tokens, lengths, scores, tf.transpose(attention, [1, 0, 2])
