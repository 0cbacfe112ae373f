"""The transformer decoder's own tests: its word cache (read and written at t
only), XLA, training (a step, and a tiny run end to end), mixed precision, the
config, checkpoint completeness and the build-time check of it.
What every decoder must do alike (step = teacher forcing, gradients, the
searches, the SavedModel, TFLite, checkpoint types) is tested with the decoder
contract (test_decoder_contract.py)."""

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import decoding, training
from tfcaption.checkpoints import restore_checked, restore_decoder, type_record, weight_names
from tfcaption.config import ModelConfig, RunConfig
from tfcaption.models import build
from tfcaption.models.build import build_decoder, check_model, dtype_policy
from tfcaption.models.captioner import caption_loss
from tfcaption.models.transformer import DecoderBlock, TransformerDecoder
from tests.models.test_decoder_contract import CHANNELS, LOCATIONS, VOCAB, batch
from tests.test_training import cached, tiny_run  # noqa: F401 (a fixture)

UNITS, LAYERS, HEADS, MAX_LEN = 8, 2, 2, 9


def tiny_transformer(seed=0, **kwargs) -> TransformerDecoder:
    # Seeded: the same weights in every test.
    tf.keras.utils.set_random_seed(seed)
    args = dict(vocab_size=VOCAB, units=UNITS, num_layers=LAYERS, heads=HEADS, feature_dim=8,
                dropout=0.0)
    decoder = TransformerDecoder(**{**args, **kwargs})
    decoder((tf.zeros([1, LOCATIONS, CHANNELS]), tf.zeros([1, 2], tf.int32)))
    return decoder


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
    config.model.heads = 3  # refused before anything is built (check_config calls it)
    with pytest.raises(ValueError, match="multiple of model.heads"):
        check_model(config.model)
    with pytest.raises(ValueError, match="multiple of heads"):
        TransformerDecoder(VOCAB, units=8, heads=3)
    values, keys, state = decoder.encode(tf.zeros([1, LOCATIONS, CHANNELS]))
    with pytest.raises(ValueError, match="max_len"):  # teacher forcing's encode: no cache
        decoder.step(tf.constant([1]), state, values, keys)


def test_a_checkpoint_saves_and_restores_every_weight(tmp_path):
    """Keras 3 hides a list of layers from tf.train.Checkpoint (its blocks would
    be neither saved nor restored, and restore_checked would not notice)."""
    decoder = tiny_transformer()
    path = tf.train.Checkpoint(decoder=decoder, **type_record(decoder)).save(
        str(tmp_path / "ckpt"))
    saved = [k for k in weight_names(path) if k.startswith("decoder/")]
    assert len(saved) == len(decoder.weights)
    other = tiny_transformer(seed=1)
    restore_checked(tf.train.Checkpoint(decoder=other), path)
    for a, b in zip(decoder.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_a_tiny_run_trains_validates_and_restores(cached):  # noqa: F811
    """training.train end to end: the train step, validation's compiled greedy
    search over the word cache, checkpoints that restore_decoder reads back."""
    config = tiny_run(cached)
    config.model = tiny_config().model
    config.train.train_dir = str(cached / "transformer")
    summary = training.train(config, progress=False)
    assert summary["stopped"] == "complete" and summary["step"] == summary["total_steps"]
    assert isinstance(restore_decoder(config)[0], TransformerDecoder)


class ListedBlocks(TransformerDecoder):
    """Its blocks in a list, as the transformer first held them."""

    def __init__(self, vocab_size, num_layers, **kwargs):
        super().__init__(vocab_size, num_layers=0, **kwargs)
        self.num_layers = num_layers
        self.blocks = [DecoderBlock(self.units, self.heads, self.dropout_rate, name=f"block_{i}")
                       for i in range(num_layers)]


def test_a_decoder_whose_checkpoint_would_miss_weights_is_not_built(monkeypatch):
    """Keras 3 tracks a list of layers for `weights` but hides it from
    tf.train.Checkpoint: build_decoder refuses such a decoder, naming the
    weights a checkpoint would lose, rather than train what it cannot save."""
    monkeypatch.setitem(build.DECODERS, "transformer", ListedBlocks)
    with pytest.raises(TypeError, match=r"42 of its 52 weights would be missing from its "
                                        r"checkpoints \(.*block_0/self_norm/gamma"):
        build_decoder(tiny_config(), VOCAB, (3, 3, CHANNELS))
