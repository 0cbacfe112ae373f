import numpy as np
import pytest
import tensorflow as tf

from tfcaption.models.attention import BahdanauAttention
from tfcaption.models.captioner import caption_loss, target_mask
from tfcaption.models.decoder import GRUDecoder
from tests.models.test_decoder_contract import (CHANNELS, LOCATIONS, VOCAB,
                                                assert_gradients_of_a_loop_over_step,
                                                assert_step_is_teacher_forcing, batch)


def tiny_decoder(**kwargs) -> GRUDecoder:
    args = dict(vocab_size=VOCAB, embedding_dim=8, units=8, attention_units=8, feature_dim=8,
                dropout=0.0)
    decoder = GRUDecoder(**{**args, **kwargs})
    decoder((tf.zeros([1, LOCATIONS, CHANNELS]), tf.zeros([1, 2], tf.int32)))
    return decoder


def test_attention_sums_to_one_over_locations():
    layer = BahdanauAttention(8)
    values = tf.random.normal([3, LOCATIONS, 5])
    context, alpha = layer(values, layer.keys(values), tf.random.normal([3, 6]))
    np.testing.assert_allclose(tf.reduce_sum(alpha, -1).numpy(), 1.0, rtol=1e-6)
    assert context.shape == (3, 5) and alpha.shape == (3, LOCATIONS)
    assert layer.get_config()["units"] == 8


VARIANTS = {
    "show_attend_tell": {},
    "conv_and_positions": {"feature_kernel": 3, "grid_shape": (3, 3, CHANNELS),
                           "position_embedding": True},
    "separable_conv": {"feature_kernel": 3, "feature_separable": True,
                       "grid_shape": (3, 3, CHANNELS)},
}


# The contract (tests/models/test_decoder_contract.py) on the GRU's projection variants.
@pytest.mark.parametrize("variant", VARIANTS)
def test_step_matches_teacher_forcing_and_has_static_contract(variant):
    assert_step_is_teacher_forcing(tiny_decoder(**VARIANTS[variant]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_teacher_forcing_has_the_gradients_of_a_loop_over_step(variant):
    """teacher_forced takes the values' gradient out of its loop (_context_taps):
    every weight's gradient must still be the one of T-1 calls of `step`,
    eager and under XLA."""
    assert_gradients_of_a_loop_over_step(tiny_decoder(**VARIANTS[variant]), xla=True)


def test_mask_counts_up_to_and_including_end():
    targets = tf.constant([[5, 6, 2, 0, 0], [5, 2, 7, 7, 2]])
    assert target_mask(targets).numpy().tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]


def loss_and_grads(decoder, features, tokens, lam=1.0):
    with tf.GradientTape() as tape:
        loss, _ = caption_loss(decoder, features, tokens, global_batch_size=4,
                               attention_lambda=lam)
    return loss, tape.gradient(loss, decoder.trainable_variables)


def test_padding_changes_neither_loss_nor_gradients():
    decoder = tiny_decoder()
    features, tokens = batch()
    noisy = tokens.numpy()
    noisy[noisy == 0] = 17  # anything at all after <end>
    loss_a, grads_a = loss_and_grads(decoder, features, tokens)
    loss_b, grads_b = loss_and_grads(decoder, features, tf.constant(noisy))
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-6)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(),
                                   tf.convert_to_tensor(b).numpy(), atol=1e-7)


def test_regulariser_is_counted():
    decoder = tiny_decoder()
    features, tokens = batch()
    assert float(loss_and_grads(decoder, features, tokens, lam=1.0)[0]) > float(
        loss_and_grads(decoder, features, tokens, lam=0.0)[0])


def test_graph_step_equals_eager_step():
    decoder = tiny_decoder()
    features, tokens = batch()
    eager_loss, eager_grads = loss_and_grads(decoder, features, tokens)
    graph_loss, graph_grads = tf.function(loss_and_grads)(decoder, features, tokens)
    assert float(eager_loss) == pytest.approx(float(graph_loss), rel=1e-5)
    for a, b in zip(eager_grads, graph_grads):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(),
                                   tf.convert_to_tensor(b).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_step_compiles_with_xla(variant):
    decoder = tiny_decoder(**VARIANTS[variant])
    features, tokens = batch()
    eager_loss, _ = loss_and_grads(decoder, features, tokens)
    compiled = tf.function(lambda f, t: loss_and_grads(decoder, f, t), jit_compile=True)
    xla_loss, grads = compiled(features, tokens)
    assert float(xla_loss) == pytest.approx(float(eager_loss), rel=1e-4)
    hlo = compiled.experimental_get_compiler_ir(features, tokens)(stage="hlo")
    assert "while" in hlo  # the time loop is one XLA while, not an unrolled graph


def test_grouped_captions_equal_repeated_images_in_loss_and_gradients():
    """Images encoded once for K captions each: the same loss and gradients as
    each image repeated K times, eager, in a graph with unknown batch sizes, and
    under XLA."""
    decoder = tiny_decoder()
    features, tokens = batch(size=4)
    images = features[::2]  # rows 0, 1 are captions of image 0; rows 2, 3 of image 1
    repeated = tf.repeat(images, 2, axis=0)
    loss_a, grads_a = loss_and_grads(decoder, repeated, tokens)
    dynamic = tf.function(lambda f, t: loss_and_grads(decoder, f, t), input_signature=[
        tf.TensorSpec([None, LOCATIONS, CHANNELS]), tf.TensorSpec([None, None], tf.int32)])
    xla = tf.function(lambda f, t: loss_and_grads(decoder, f, t), jit_compile=True)
    for loss_b, grads_b in [loss_and_grads(decoder, images, tokens),
                            dynamic(images, tokens),
                            xla(images, tokens)]:
        assert float(loss_b) == pytest.approx(float(loss_a), rel=1e-5)
        for a, b in zip(grads_a, grads_b):
            np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(),
                                       tf.convert_to_tensor(b).numpy(), rtol=1e-4, atol=1e-6)


def test_dropout_only_in_training():
    decoder = tiny_decoder(dropout=0.5)
    features, tokens = batch()
    a, _ = decoder.teacher_forced(features, tokens, training=False)
    b, _ = decoder.teacher_forced(features, tokens, training=False)
    c, _ = decoder.teacher_forced(features, tokens, training=True)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())


def test_get_config_round_trips():
    decoder = tiny_decoder(gate=False)
    config = decoder.get_config()
    assert config["gate"] is False and config["units"] == 8
    assert GRUDecoder.from_config(config).vocab_size == VOCAB


CORNER_3X3 = {(0, 0), (0, 1), (1, 0), (1, 1)}


@pytest.mark.parametrize("kernel, separable, reach", [(1, False, {(0, 0)}), (3, False, CORNER_3X3),
                                                      (3, True, CORNER_3X3)])
def test_feature_kernel_spans_neighbouring_cells(kernel, separable, reach):
    # Seeded: a ReLU projection can be dead at one cell for some initial weights,
    # and the global seed otherwise depends on which tests ran before.
    tf.keras.utils.set_random_seed(0)
    h = w = 5
    decoder = GRUDecoder(vocab_size=VOCAB, embedding_dim=8, units=8, attention_units=8,
                         feature_dim=8, dropout=0.0, feature_kernel=kernel, grid_shape=(h, w),
                         feature_separable=separable)
    features = tf.random.stateless_normal([1, h * w, CHANNELS], [0, 1])
    with tf.GradientTape() as tape:
        tape.watch(features)
        values, _, _ = decoder.encode(features)
        corner = tf.reduce_sum(values[:, 0] * tf.range(1.0, 9.0))
    support = np.abs(tape.gradient(corner, features).numpy()[0]).sum(-1).reshape(h, w) > 0
    assert set(zip(*np.nonzero(support))) == reach
    with pytest.raises(ValueError, match="grid"):
        GRUDecoder(vocab_size=VOCAB, feature_kernel=3)
    with pytest.raises(ValueError, match="feature_kernel > 1"):
        GRUDecoder(vocab_size=VOCAB, feature_separable=True)


def test_position_embedding_tells_identical_cells_apart():
    features = tf.ones([2, LOCATIONS, CHANNELS]) * tf.range(CHANNELS, dtype=tf.float32)
    for positions, uniform in ((False, True), (True, False)):
        decoder = tiny_decoder(position_embedding=positions)
        values, keys, state = decoder.encode(features)
        _, _, alpha = decoder.step(tf.constant([1, 1]), state, values, keys)
        assert np.allclose(alpha.numpy(), 1 / LOCATIONS, atol=1e-7) == uniform


def test_variant_config_round_trips():
    decoder = tiny_decoder(**VARIANTS["conv_and_positions"])
    clone = GRUDecoder.from_config(decoder.get_config())
    assert (clone.feature_kernel, clone.grid_shape, clone.position_embedding) == (3, (3, 3), True)
    clone = GRUDecoder.from_config(tiny_decoder(**VARIANTS["separable_conv"]).get_config())
    assert (clone.feature_kernel, clone.feature_separable) == (3, True)


@pytest.mark.parametrize("kernel, separable", [(1, False), (3, False), (3, True)])
def test_folded_norm_affine_is_the_layers_function_and_gradients(kernel, separable):
    """encode folds feature_norm's scale and offset into feature_proj: values and
    the gradients of every weight must equal feature_proj(feature_norm(x)),
    border cells of the 3x3 convolution included (non-trivial gamma and beta)."""
    grid = (3, 3)
    decoder = tiny_decoder(feature_kernel=kernel, grid_shape=grid, feature_separable=separable)
    rng = np.random.default_rng(1)
    decoder.feature_norm.gamma.assign(rng.uniform(0.5, 2.0, CHANNELS).astype(np.float32))
    decoder.feature_norm.beta.assign(rng.normal(0, 1.0, CHANNELS).astype(np.float32))
    features, _ = batch()
    decoder.project_features(batch()[0])  # builds feature_proj
    proj = decoder.feature_proj
    kernels = ([proj.depthwise_kernel, proj.pointwise_kernel] if separable else [proj.kernel])
    weights = [decoder.feature_norm.gamma, decoder.feature_norm.beta, *kernels, proj.bias]

    def unfolded():
        x = decoder.feature_norm(features)
        if kernel > 1:
            x = tf.reshape(x, [-1, *grid, CHANNELS])
        return tf.reshape(decoder.feature_proj(x), [features.shape[0], LOCATIONS, -1])

    probe = tf.constant(rng.normal(size=(features.shape[0], LOCATIONS, 8)), tf.float32)
    outputs = {}
    for name, fn in {"folded": lambda: decoder.project_features(features),
                     "unfolded": unfolded}.items():
        with tf.GradientTape() as tape:
            values = fn()
            loss = tf.reduce_sum(values * probe) + tf.reduce_sum(values ** 2)
        outputs[name] = (values.numpy(), [g.numpy() for g in tape.gradient(loss, weights)])
    np.testing.assert_allclose(outputs["folded"][0], outputs["unfolded"][0], atol=1e-5)
    for a, b in zip(outputs["folded"][1], outputs["unfolded"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_training_normalises_the_grid_with_xla_searches_without():
    """The train step's feature normalisation is XLA-fused (projection.normalise_compiled);
    searches and exports, which TF Serving and TFLite run, keep plain ops. Same values."""
    from tfcaption.models.projection import normalise, normalise_compiled

    decoder = tiny_decoder()
    rng = np.random.default_rng(0)
    # Channels far from mean 0 / variance 1, as a backbone's are.
    features = tf.constant(40 + 9 * rng.standard_normal((2, LOCATIONS, CHANNELS)), tf.float32)
    np.testing.assert_allclose(normalise_compiled(features, 1e-3, tf.float32).numpy(),
                               normalise(features, 1e-3, tf.float32).numpy(), atol=1e-5)
    np.testing.assert_allclose(decoder.project_features(features, training=True).numpy(),
                               decoder.project_features(features).numpy(), atol=1e-5)

    def compiled_calls(training: bool) -> int:
        fn = tf.function(lambda f: decoder.project_features(f, training), autograph=False)
        graph = fn.get_concrete_function(features).graph
        return sum(1 for op in graph.get_operations()
                   if "_XlaMustCompile" in op.node_def.attr
                   and op.node_def.attr["_XlaMustCompile"].b)

    assert compiled_calls(True) == 1 and compiled_calls(False) == 0
