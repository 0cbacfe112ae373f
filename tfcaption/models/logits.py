"""The vocabulary projection, the largest matmul of a decoder's step."""

from __future__ import annotations

import keras
import tensorflow as tf


class VocabularyProjection(keras.layers.Dense):
    """Dense(vocabulary) in float32, whose two gradient products run in the
    decoder's compute dtype under a mixed policy.

    The forward pass stays float32: logits of ~20 in bfloat16 would be
    rounded to 1/8, and the softmax, the loss and the searches' scores read
    them. Its gradients are what every other layer's are under a mixed
    policy, products in bfloat16 (or float16) accumulated in float32 by the
    kernel. On a CPU with AMX those two products of (896, 256) x (256, 5000)
    took ~6 ms against ~15 in float32, casts included; tensor cores and TPUs
    gain alike.
    """

    def __init__(self, units: int, gradient_dtype: str = "float32", **kwargs):
        kwargs.pop("dtype", None)  # always float32 (from_config passes it back)
        super().__init__(units, dtype="float32", **kwargs)
        self.gradient_dtype = gradient_dtype

    def call(self, inputs):
        if self.gradient_dtype == "float32":
            return super().call(inputs)
        return _product(inputs, tf.convert_to_tensor(self.kernel),
                        tf.as_dtype(self.gradient_dtype)) + self.bias

    def get_config(self):
        return {**super().get_config(), "gradient_dtype": self.gradient_dtype}


def _product(x, kernel, low):
    """x (..., width) @ kernel in float32; its gradients computed in `low`."""

    @tf.custom_gradient
    def product(x, kernel):
        def gradient(d):
            rows = tf.reshape(tf.cast(x, low), [-1, x.shape[-1]])
            d_rows = tf.reshape(tf.cast(d, low), [-1, kernel.shape[-1]])
            d_x = tf.matmul(d_rows, tf.cast(kernel, low), transpose_b=True)
            d_kernel = tf.matmul(rows, d_rows, transpose_a=True)
            return (tf.reshape(tf.cast(d_x, x.dtype), tf.shape(x)),
                    tf.cast(d_kernel, kernel.dtype))
        return tf.tensordot(x, kernel, 1), gradient

    return product(x, kernel)
