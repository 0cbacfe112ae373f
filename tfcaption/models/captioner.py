"""The trainable whole: teacher-forced loss over a caption, with the attention regulariser."""

from __future__ import annotations

import tensorflow as tf

from tfcaption.tokens import END_ID, PAD_ID


def target_mask(targets: tf.Tensor) -> tf.Tensor:
    """targets (batch, T) -> float32 mask, 1 up to and including the first <end>.

    The mask comes from the <end> position, not from the padding id, so what
    stands in the padding can change neither the loss nor its gradients.
    """
    ended_before = tf.cumsum(tf.cast(tf.equal(targets, END_ID), tf.int32), axis=1,
                             exclusive=True)
    return tf.cast(ended_before == 0, tf.float32)


def caption_loss(decoder, features, tokens, global_batch_size: int,
                 attention_lambda: float, training: bool = True, sampling=None):
    """features (batch, locations, channels), tokens (batch, T) with <start> .. <end>
    (a row of padding only is a masked row) ->

    loss: (summed cross entropy over real tokens + lambda * sum_locations
        (1 - sum_t alpha)^2), summed over the batch and divided by the GLOBAL batch
        size, so that summing it over replicas gives the mean over the global batch;
    stats: per-replica sums (cross entropy, real tokens, regulariser, captions)
        for logging.
    sampling: scheduled sampling's (probability, key), for a recurrent decoder.
    """
    more = {} if sampling is None else {"sampling": sampling}
    logits, alphas = decoder.teacher_forced(features, tokens, training=training, **more)
    targets = tokens[:, 1:]
    # Rows of padding only (no <start>) fill a batch to its static size: no loss.
    real_row = tf.cast(tokens[:, 0] != PAD_ID, tf.float32)
    mask = target_mask(targets) * real_row[:, None]
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    xent = tf.reduce_sum(xent * mask, axis=1)
    coverage = tf.reduce_sum(alphas * mask[:, :, None], axis=1)  # (batch, locations)
    regulariser = attention_lambda * tf.reduce_sum(tf.square(1.0 - coverage), axis=1) * real_row
    loss = tf.reduce_sum(xent + regulariser) / tf.cast(global_batch_size, tf.float32)
    stats = {"xent": tf.reduce_sum(xent), "tokens": tf.reduce_sum(mask),
             "regulariser": tf.reduce_sum(regulariser),
             "captions": tf.reduce_sum(real_row)}
    return loss, stats
