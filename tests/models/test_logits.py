"""The vocabulary projection: float32 forward, gradients in the policy's dtype."""

import keras
import numpy as np
import tensorflow as tf

from tfcaption.models.logits import VocabularyProjection


def pair(gradient_dtype: str):
    """The projection and a plain float32 Dense holding the same weights."""
    layer = VocabularyProjection(50, gradient_dtype, name="logits")
    layer.build((None, 16))
    reference = keras.layers.Dense(50, dtype="float32")
    reference.build((None, 16))
    rng = np.random.default_rng(0)
    layer.set_weights([rng.standard_normal((16, 50)).astype(np.float32),
                       rng.standard_normal(50).astype(np.float32)])
    reference.set_weights(layer.get_weights())
    return layer, reference


def run(layer, x, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = layer(x)
        loss = tf.reduce_sum(logits * upstream)
    return (logits, *tape.gradient(loss, [x, layer.kernel, layer.bias]))


def test_logits_stay_float32_and_their_gradients_run_in_the_decoders_dtype():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((3, 4, 16)), tf.bfloat16)  # (batch, time, width)
    upstream = tf.constant(rng.standard_normal((3, 4, 50)), tf.float32)
    layer, reference = pair("bfloat16")
    logits, d_x, d_kernel, d_bias = run(layer, x, upstream)
    want, want_x, want_kernel, want_bias = run(reference, tf.cast(x, tf.float32), upstream)
    # The forward pass is the float32 Dense's, to the bit.
    assert logits.dtype == tf.float32
    np.testing.assert_array_equal(logits.numpy(), want.numpy())
    # The gradients are its within bfloat16's rounding, in the dtypes of what they
    # belong to, and not float32's own products (they ran in bfloat16).
    assert d_x.dtype == tf.bfloat16 and d_kernel.dtype == tf.float32
    np.testing.assert_allclose(tf.cast(d_x, tf.float32).numpy(), want_x.numpy(),
                               rtol=0.03, atol=0.03 * np.abs(want_x.numpy()).max())
    np.testing.assert_allclose(d_kernel.numpy(), want_kernel.numpy(),
                               rtol=0.03, atol=0.03 * np.abs(want_kernel.numpy()).max())
    assert np.abs(d_kernel.numpy() - want_kernel.numpy()).max() > 0
    np.testing.assert_allclose(d_bias.numpy(), want_bias.numpy(), rtol=1e-6)


def test_in_float32_it_is_a_dense_layer_and_its_config_round_trips():
    rng = np.random.default_rng(2)
    x = tf.constant(rng.standard_normal((5, 16)), tf.float32)
    upstream = tf.constant(rng.standard_normal((5, 50)), tf.float32)
    layer, reference = pair("float32")
    for got, want in zip(run(layer, x, upstream), run(reference, x, upstream)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    copy = VocabularyProjection.from_config(pair("bfloat16")[0].get_config())
    assert copy.gradient_dtype == "bfloat16" and copy.dtype_policy.compute_dtype == "float32"
