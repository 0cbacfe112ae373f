"""Additive (Bahdanau) soft attention over the locations of a feature grid."""

from __future__ import annotations

import keras
import tensorflow as tf


class BahdanauAttention(keras.layers.Layer):
    """score(l) = v . tanh(W1 values_l + W2 h);  alpha = softmax_l(score).

    The keys `W1 values` do not depend on the time step, so `keys()` is called
    once per image and `call()` once per step; the per-step cost is then one
    (batch, units) matmul plus the tanh, instead of a (batch * locations) matmul.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.w1 = keras.layers.Dense(units, use_bias=True, name="w1")
        self.w2 = keras.layers.Dense(units, use_bias=False, name="w2")
        self.v = keras.layers.Dense(1, use_bias=False, name="v")

    def keys(self, values):
        """values: (batch, locations, channels) -> keys: (batch, locations, units)."""
        return self.w1(values)

    def call(self, values, keys, state):
        """values: (images, locations, channels); keys: (images, locations, units);
        state: (batch, state_units) -> context (batch, channels), alpha (batch, locations).

        batch = K * images (static): rows i K .. i K + K - 1 query image i
        (captions grouped by image). Each image's values and keys are then
        read once for its K rows, not copied K times: in training, their
        per-step gradient sums are K times smaller too."""
        images, rows = values.shape[0], state.shape[0]
        if images is None or rows is None or images == rows:
            hidden = tf.tanh(keys + tf.expand_dims(self.w2(state), 1))
            alpha = _softmax(tf.squeeze(self.v(hidden), -1))
            context = tf.einsum("bl,blc->bc", tf.cast(alpha, values.dtype), values)
            return context, alpha
        query = tf.reshape(self.w2(state), [images, rows // images, 1, self.units])
        hidden = tf.tanh(tf.expand_dims(keys, 1) + query)  # (images, K, locations, units)
        alpha = _softmax(tf.squeeze(self.v(hidden), -1))
        context = tf.einsum("ikl,ilc->ikc", tf.cast(alpha, values.dtype), values)
        return (tf.reshape(context, [rows, values.shape[-1]]),
                tf.reshape(alpha, [rows, values.shape[1]]))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _softmax(scores):
    # In float32: float16 sums over ~100-200 locations lose precision.
    return tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1)


class LocationEmbedding(keras.layers.Layer):
    """Adds a learned vector per grid location to (batch, locations, channels).

    Features from a backbone's interior carry little of where they are (a
    convolution is translation-equivariant), yet captions say "left of" and
    "in the top right"; this gives every location its own address.
    """

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table", shape=(input_shape[-2], input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, values):
        return values + tf.cast(self.table, values.dtype)
