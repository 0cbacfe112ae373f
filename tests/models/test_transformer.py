"""The transformer decoder: its word cache, its causal mask, the searches over
it, training, XLA and the SavedModel. (What every decoder must do alike lives
with the decoder contract's tests.)"""

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import decoding, tflite_export
from tfcaption.checkpoints import restore_checked, weight_names
from tfcaption.config import ModelConfig, RunConfig
from tfcaption.models.backbones import build_backbone
from tfcaption.models.build import build_decoder, dtype_policy
from tfcaption.models.captioner import caption_loss
from tfcaption.models.transformer import TransformerDecoder
from tests.models.test_decoder import CHANNELS, LOCATIONS, VOCAB, batch
from tests.test_decoding import python_greedy
from tests.test_export import assert_same_outputs, eager_outputs, fresh_report, trained_export

UNITS, LAYERS, HEADS, MAX_LEN = 8, 2, 2, 9


def tiny_transformer(seed=0, **kwargs) -> TransformerDecoder:
    # Seeded: the searches' tests below need a model whose beam and greedy differ.
    tf.keras.utils.set_random_seed(seed)
    args = dict(vocab_size=VOCAB, units=UNITS, num_layers=LAYERS, heads=HEADS, feature_dim=8,
                dropout=0.0)
    decoder = TransformerDecoder(**{**args, **kwargs})
    decoder((tf.zeros([1, LOCATIONS, CHANNELS]), tf.zeros([1, 2], tf.int32)))
    return decoder


def stepped(decoder, features, tokens, max_len=MAX_LEN):
    """A Python loop over step from encode's empty cache -> logits (batch, T-1,
    vocab), alphas (batch, T-1, locations), the last state."""
    values, keys, state = decoder.encode(features, max_len=max_len)
    logits, alphas = [], []
    for t in range(tokens.shape[1] - 1):
        step_logits, state, alpha = decoder.step(tokens[:, t], state, values, keys)
        logits.append(step_logits)
        alphas.append(alpha)
    return tf.stack(logits, 1), tf.stack(alphas, 1), state


def test_step_with_its_cache_equals_teacher_forcing():
    """Word by word through the cache = all words at once under the causal mask.
    A cache written at the wrong position, or a mask that lets a word see a
    later one (in either path), breaks the equality."""
    decoder = tiny_transformer()
    features, tokens = batch()
    logits, alphas = decoder.teacher_forced(features, tokens)
    step_logits, step_alphas, _ = stepped(decoder, features, tokens)
    np.testing.assert_allclose(step_logits.numpy(), logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(step_alphas.numpy(), alphas.numpy(), atol=1e-6)
    assert logits.dtype == alphas.dtype == tf.float32
    assert logits.shape == (4, tokens.shape[1] - 1, VOCAB)
    # The attention map is a distribution over the grid's locations.
    np.testing.assert_allclose(alphas.numpy().sum(-1), 1.0, rtol=1e-5)


def test_the_step_reads_earlier_words_from_the_cache_and_nothing_else():
    """The state holds no tokens, so the step cannot run the prefix again: its
    keys and values come from the cache, written at t and nowhere later. Poking
    a cached entry of an earlier word changes the next logits (they are read);
    poking the one just beyond t does not (it is masked)."""
    decoder = tiny_transformer()
    features, tokens = batch()
    values, keys, state = decoder.encode(features, max_len=MAX_LEN)
    assert set(state) == {"position", "keys", "values"}
    assert state["keys"].shape == state["values"].shape == (4, LAYERS, MAX_LEN, UNITS)
    for t in range(3):
        _, state, _ = decoder.step(tokens[:, t], state, values, keys)
        assert state["position"].numpy().tolist() == [t + 1] * 4
        for name in ("keys", "values"):
            written = np.abs(state[name].numpy()).sum(-1)  # (batch, layers, max_len)
            assert (written[:, :, :t + 1] > 0).all() and not written[:, :, t + 1:].any()
    following = decoder.step(tokens[:, 3], state, values, keys)[0].numpy()

    def poked(name, position):
        cache = state[name].numpy()
        cache[:, :, position] += 1.0
        return decoder.step(tokens[:, 3], {**state, name: tf.constant(cache)}, values,
                            keys)[0].numpy()

    for name in ("keys", "values"):
        assert np.abs(poked(name, 0) - following).max() > 1e-3
        np.testing.assert_array_equal(poked(name, 4), following)  # the step writes at 3


def test_grouped_captions_equal_repeated_images_under_xla():
    """K captions per image: each image encoded once and gathered, the same
    logits as each image repeated, eager and in an XLA-compiled train step."""
    decoder = tiny_transformer()
    features, tokens = batch(size=4)
    images = features[::2]  # rows 0, 1 are captions of image 0; rows 2, 3 of image 1
    expected = decoder.teacher_forced(tf.repeat(images, 2, axis=0), tokens)[0].numpy()
    np.testing.assert_allclose(decoder.teacher_forced(images, tokens)[0].numpy(), expected,
                               atol=1e-6)

    def loss(f, t):
        with tf.GradientTape() as tape:
            value, _ = caption_loss(decoder, f, t, global_batch_size=4, attention_lambda=1.0)
        return value, tape.gradient(value, decoder.trainable_variables)

    eager_loss, eager_grads = loss(images, tokens)
    xla_loss, xla_grads = tf.function(loss, jit_compile=True)(images, tokens)
    assert float(xla_loss) == pytest.approx(float(eager_loss), rel=1e-5)
    for a, b in zip(eager_grads, xla_grads):
        np.testing.assert_allclose(tf.convert_to_tensor(b).numpy(),
                                   tf.convert_to_tensor(a).numpy(), rtol=1e-4, atol=1e-6)


def test_searches_over_the_cache():
    """Greedy = a Python loop over step and argmax; sampling at temperature 0 =
    greedy; beam 3 never scores below greedy, and where it scores above, it
    found another caption; diverse beam search runs over the same state."""
    decoder = tiny_transformer()
    features, _ = batch(size=4)
    tokens, lengths, scores, attention = decoding.greedy(decoder, features, MAX_LEN)
    np.testing.assert_array_equal(tokens.numpy(), python_greedy(decoder, features, MAX_LEN))
    for n, att in zip(lengths.numpy(), attention.numpy()):
        np.testing.assert_allclose(att[:n].sum(-1), 1.0, rtol=1e-5)
    cold = decoding.sample(decoder, features, 2, MAX_LEN, temperature=0.0)
    np.testing.assert_array_equal(cold[0].numpy(), np.repeat(tokens.numpy()[:, None], 2, 1))

    beam_tokens, _, beam_scores, _ = decoding.beam(decoder, features, 3, MAX_LEN)
    assert (beam_scores.numpy() >= scores.numpy() - 1e-5).all()
    better = beam_scores.numpy() > scores.numpy() + 1e-4
    assert better.any()  # the seeded model has a row where beam search wins
    for row in np.flatnonzero(better):
        assert beam_tokens.numpy()[row].tolist() != tokens.numpy()[row].tolist()

    diverse = decoding.diverse_beam(decoder, features, 4, 2, 1.0, MAX_LEN)
    assert diverse[0].shape == (4, 4, MAX_LEN)


def test_searches_compile_with_xla_and_give_the_eager_tokens():
    decoder = tiny_transformer()
    features, _ = batch(size=3)
    for search in (lambda f: decoding.greedy(decoder, f, MAX_LEN),
                   lambda f: decoding.beam(decoder, f, 3, MAX_LEN, no_repeat_ngram=2)):
        eager = search(features)
        xla = tf.function(search, jit_compile=True)(features)
        np.testing.assert_array_equal(xla[0].numpy(), eager[0].numpy())
        np.testing.assert_allclose(xla[2].numpy(), eager[2].numpy(), rtol=1e-5, atol=1e-5)


def test_a_few_train_steps_lower_the_loss():
    decoder = tiny_transformer(dropout=0.1)
    features, tokens = batch()
    optimizer = tf.keras.optimizers.Adam(1e-2)
    losses = []
    for _ in range(15):
        with tf.GradientTape() as tape:
            loss, _ = caption_loss(decoder, features, tokens, global_batch_size=4,
                                   attention_lambda=1.0)
        grads = tape.gradient(loss, decoder.trainable_variables)
        assert all(g is not None for g in grads)  # every weight takes part
        optimizer.apply_gradients(zip(grads, decoder.trainable_variables))
        losses.append(float(loss))
    assert losses[-1] < 0.75 * losses[0], losses


def test_mixed_precision_keeps_logits_and_attention_float32():
    with dtype_policy("mixed_float16"):
        decoder = tiny_transformer()
    features, tokens = batch()
    logits, alphas = decoder.teacher_forced(features, tokens)
    values, keys, state = decoder.encode(features, max_len=MAX_LEN)
    step_logits, state, alpha = decoder.step(tokens[:, 0], state, values, keys)
    assert state["keys"].dtype == values.dtype == tf.float16
    assert {t.dtype for t in (logits, alphas, step_logits, alpha)} == {tf.float32}
    np.testing.assert_allclose(step_logits.numpy(), logits[:, 0].numpy(), atol=1e-2)


def tiny_config() -> RunConfig:
    config = RunConfig()
    config.model = ModelConfig(decoder="transformer", units=UNITS, layers=LAYERS, heads=HEADS,
                               feature_dim=8, dropout=0.0)
    return config


def test_built_from_the_config_and_round_trips():
    config = tiny_config()
    decoder = build_decoder(config, VOCAB, (3, 3, CHANNELS))
    assert isinstance(decoder, TransformerDecoder) and len(decoder.blocks) == 2
    clone = TransformerDecoder.from_config(decoder.get_config())
    assert (clone.units, clone.num_layers, clone.heads) == (8, 2, 2)
    config.model.decoder = "lstmm"
    with pytest.raises(ValueError, match="model.decoder"):
        build_decoder(config, VOCAB, (3, 3, CHANNELS))
    with pytest.raises(ValueError, match="multiple of heads"):
        TransformerDecoder(VOCAB, units=8, heads=3)
    values, keys, state = decoder.encode(tf.zeros([1, LOCATIONS, CHANNELS]))
    with pytest.raises(ValueError, match="max_len"):  # teacher forcing's encode: no cache
        decoder.step(tf.constant([1]), state, values, keys)


def test_a_checkpoint_saves_and_restores_every_weight(tmp_path):
    """Keras 3 hides a list of layers from tf.train.Checkpoint (its blocks would
    be neither saved nor restored, and restore_checked would not notice)."""
    decoder = tiny_transformer()
    path = tf.train.Checkpoint(decoder=decoder).save(str(tmp_path / "ckpt"))
    saved = [k for k in weight_names(path) if k.startswith("decoder/")]
    assert len(saved) == len(decoder.weights)
    other = tiny_transformer(seed=1)
    restore_checked(tf.train.Checkpoint(decoder=other), path)
    for a, b in zip(decoder.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_tflite_greedy_gives_the_eager_captions():
    """Its loop converts to TFLite builtins (the cache writes are selects)."""
    backbone = build_backbone("squeezenet", weights="random", input_size=64, seed=0)
    h, w, c = backbone.grid_shape
    decoder = build_decoder(tiny_config(), VOCAB, backbone.grid_shape)
    rng = np.random.default_rng(0)
    for v in decoder.weights:  # far from uniform: captions without near-ties
        v.assign(rng.normal(0.0, 0.5, v.shape).astype(np.float32))
    images = rng.integers(0, 255, (3, 64, 64, 3)).astype(np.uint8)
    found = tflite_export.run(tflite_export.convert(
        tflite_export.greedy_function(backbone, decoder, MAX_LEN, 3)), images)
    grid = tf.reshape(backbone(backbone.normalize(tf.constant(images))), [-1, h * w, c])
    tokens, _, scores, attention = decoding.greedy(decoder, grid, MAX_LEN, 3)
    np.testing.assert_array_equal(found["tokens"], tokens.numpy())
    np.testing.assert_allclose(found["scores"], scores.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(found["attention"].reshape(attention.shape), attention.numpy(),
                               atol=1e-5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    # At the GRU's 1e-3 its 14 steps leave a unigram model: every caption "<end>".
    return trained_export(tmp_path_factory.mktemp("export"), greedy=False,
                          train={"learning_rate": 3e-3}, decoder="transformer", heads=2)


def test_saved_model_in_a_fresh_process_gives_the_eager_tokens(exported, tmp_path_factory):
    """Trained, exported, reloaded where tfcaption cannot be imported: the beam,
    greedy, features and sampling signatures give what the eager decoder gives."""
    eager = eager_outputs(exported)
    fresh = fresh_report(exported, eager, tmp_path_factory.mktemp("fresh"))
    assert fresh["tfcaption_importable"] is False
    served = fresh["beam"]
    assert_same_outputs(served["serving_default"], eager.beam)
    assert_same_outputs(served["greedy"], eager.greedy)
    assert_same_outputs(served["caption_features"], eager.beam)
    assert served["sample"]["cold"]["tokens"] == [[row] * 3 for row in served["greedy"]["tokens"]]
    assert any(eager.greedy["lengths"] > 1)  # not a test of empty captions
