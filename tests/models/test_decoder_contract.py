"""What every decoder of models.build.DECODERS promises, tested on each of them.

The protocol: encode(features, max_len=None) -> (values, keys, state), state
any nested structure with the batch on axis 0 (max_len: the most steps the
state will take, which a transformer's word cache needs and the recurrent
decoders ignore); step(token, state, values, keys) -> (logits float32, state,
alpha float32); teacher_forced(features, tokens) -> (logits, alphas). Training,
every search, the SavedModel and the checkpoints rely on these alone, so a
decoder that passes here works everywhere. A new decoder joins by its name in
DECODERS.
"""

import copy
import itertools
import types

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import checkpoints, decoding, export, runner, serving, tflite_export, training
from tfcaption.config import ModelConfig, RunConfig
from tfcaption.data.features import decode_image
from tfcaption.decoding.masks import NEG, NEVER_EMITTED
from tfcaption.models.backbones import build_backbone
from tfcaption.models.build import DECODERS as BUILT, build_decoder, check_model
from tfcaption.tokens import END_ID, PAD_ID, START_ID
from tests.test_export import assert_same_outputs, eager_outputs, fresh_report
from tests.test_training import cached, tiny_run  # noqa: F401 (a fixture)

DECODERS = ["gru", "lstm", "transformer"]
VOCAB, LOCATIONS, CHANNELS, MAX_LEN = 30, 9, 16, 8


def tiny_model(name: str) -> ModelConfig:
    return ModelConfig(decoder=name, embedding_dim=8, units=8, attention_units=8,
                       feature_dim=8, dropout=0.0, layers=2, heads=2)


def tiny_decoder(name: str, spread: float = 0.0, seed: int = 0, grid=(3, 3, CHANNELS),
                 vocab: int = VOCAB, config: RunConfig | None = None):
    """A built decoder; spread > 0 redraws every weight from N(0, spread), so
    that its captions differ from image to image and its argmaxes are not
    near-ties (the initial weights give every image one caption)."""
    config = config or RunConfig(model=tiny_model(name))
    decoder = build_decoder(config, vocab, grid)
    if spread:
        rng = np.random.default_rng(seed)
        for v in decoder.trainable_weights:
            v.assign(rng.normal(0.0, spread, v.shape).astype(np.float32))
    return decoder


def batch(seed=0, size=4, length=7):
    """features (size, LOCATIONS, CHANNELS), tokens (size, length) with <start>,
    <end> at several places and <pad> after it."""
    rng = np.random.default_rng(seed)
    features = tf.constant(rng.normal(size=(size, LOCATIONS, CHANNELS)) * 1e-3, tf.float32)
    tokens = rng.integers(4, VOCAB, size=(size, length)).astype(np.int32)
    tokens[:, 0] = START_ID
    ends = [length - 1, 3, 4, length - 2][:size]
    for row, end in enumerate(ends):
        tokens[row, end] = END_ID
        tokens[row, end + 1:] = PAD_ID
    return features, tf.constant(tokens)


def assert_step_is_teacher_forcing(decoder):
    """T-1 calls of `step` give teacher_forced's logits and alphas, and each
    alpha is a distribution over the locations."""
    features, tokens = batch()
    logits, alphas = decoder.teacher_forced(features, tokens)
    values, keys, state = decoder.encode(features, max_len=tokens.shape[1] - 1)
    for t in range(tokens.shape[1] - 1):
        step_logits, state, alpha = decoder.step(tokens[:, t], state, values, keys)
        assert step_logits.dtype == tf.float32 and alpha.dtype == tf.float32
        np.testing.assert_allclose(step_logits.numpy(), logits[:, t].numpy(), atol=1e-5,
                                   err_msg=f"logits at step {t}")
        np.testing.assert_allclose(alpha.numpy(), alphas[:, t].numpy(), atol=1e-6,
                                   err_msg=f"alpha at step {t}")
    assert logits.dtype == tf.float32 and logits.shape == (4, tokens.shape[1] - 1, VOCAB)
    np.testing.assert_allclose(alphas.numpy().sum(-1), 1.0, rtol=1e-5)


def assert_gradients_of_a_loop_over_step(decoder, xla: bool = False):
    """Every weight's gradient through teacher_forced (which may take parts of
    it out of its loop, as the recurrent decoders' context taps do; the
    transformer's runs every position at once) is the one of T-1 calls of
    `step`, eager and (xla) compiled."""
    features, tokens = batch()
    weights = tf.random.stateless_normal([4, tokens.shape[1] - 1, VOCAB], [1, 2])

    def looped():
        with tf.GradientTape() as tape:
            values, keys, state = decoder.encode(features, max_len=tokens.shape[1] - 1)
            total = 0.0
            for t in range(tokens.shape[1] - 1):
                logits, state, alpha = decoder.step(tokens[:, t], state, values, keys)
                total += tf.reduce_sum(logits * weights[:, t]) + tf.reduce_sum(alpha ** 2)
        return tape.gradient(total, decoder.trainable_variables)

    def forced():
        with tf.GradientTape() as tape:
            logits, alphas = decoder.teacher_forced(features, tokens)
            total = tf.reduce_sum(logits * weights) + tf.reduce_sum(alphas ** 2)
        return tape.gradient(total, decoder.trainable_variables)

    expected = looped()
    found = [forced()] + ([tf.function(forced, jit_compile=True)()] if xla else [])
    for grads in found:
        for var, a, b in zip(decoder.trainable_variables, expected, grads):
            assert a is not None and b is not None, var.path
            a, b = tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy()
            # Float32 sums in another order: ~1e-6 of the gradient's scale
            # (the transformer's loop and its all-positions pass share none).
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=max(1e-6, 1e-5 * np.abs(a).max()),
                                       err_msg=var.path)


def test_every_listed_decoder_is_built_and_others_are_refused():
    assert set(DECODERS) == set(BUILT)
    with pytest.raises(ValueError, match="model.decoder='lsmt'.*choose one of gru, lstm, transformer"):
        check_model(tiny_model("lsmt"))


@pytest.mark.parametrize("name", DECODERS)
def test_step_loop_equals_teacher_forcing(name):
    assert_step_is_teacher_forcing(tiny_decoder(name))


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_the_recurrent_cells_math_is_the_keras_cells(name):
    """cell_step (the math teacher forcing and step run on the cell's own
    variables) equals calling the Keras cell, with every weight and bias
    random and far from zero."""
    decoder = tiny_decoder(name, spread=0.7)
    decoder.teacher_forced(*batch())  # builds the cell
    rng = np.random.default_rng(1)
    inputs = tf.constant(rng.normal(size=(5, decoder.cell.kernel.shape[0])), tf.float32)
    state = tf.nest.map_structure(
        lambda _: tf.constant(rng.normal(size=(5, decoder.units)), tf.float32),
        decoder.initial_state(tf.zeros([5, decoder.feature_dim])))
    h, new_state = decoder.recur(inputs, state)
    keras_h, keras_state = decoder.cell(inputs, list(tf.nest.flatten(state)))
    np.testing.assert_allclose(h.numpy(), keras_h.numpy(), atol=1e-5)
    for ours, theirs in zip(tf.nest.flatten(new_state), keras_state):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", DECODERS)
def test_teacher_forcing_has_the_gradients_of_a_loop_over_step(name):
    assert_gradients_of_a_loop_over_step(tiny_decoder(name))


def loop_over_step(decoder, features, forced=None):
    """A search written out as a Python loop over `step`: each row takes the
    argmax of the log-probabilities (specials banned), or the words of `forced`
    (rows, MAX_LEN); <pad> after <end>. -> tokens, summed log-probabilities,
    attention."""
    values, keys, state = decoder.encode(features, max_len=MAX_LEN)
    rows = features.shape[0]
    token, done = np.full(rows, START_ID, np.int32), np.zeros(rows, bool)
    tokens, scores = np.zeros((rows, MAX_LEN), np.int32), np.zeros(rows, np.float32)
    attention = np.zeros((rows, MAX_LEN, LOCATIONS), np.float32)
    for t in range(MAX_LEN):
        logits, state, alpha = decoder.step(tf.constant(token), state, values, keys)
        logits = logits.numpy()
        logits[:, list(NEVER_EMITTED)] += NEG
        logp = tf.nn.log_softmax(logits).numpy()
        word = np.where(done, PAD_ID, logp.argmax(-1) if forced is None else forced[:, t])
        scores += np.where(done, 0.0, logp[np.arange(rows), word])
        attention[:, t] = np.where(done[:, None], 0.0, alpha.numpy())
        tokens[:, t], token = word, word
        done |= word == END_ID
    return tokens, scores, attention


# The draw of spread_world's weights where seed 0 makes a weak test. The
# transformer's image reaches the words through cross-attention alone, and
# under N(0, 1) weights the words' own residual stream is ~3x larger: on seed 0
# all 8 images get one caption (as on about half of seeds 0-7, 1 block or 2).
WORLD_SEEDS = {"transformer": 1}


def spread_world(name):
    """A decoder whose captions differ between the 8 images. N(0, 1) weights:
    at 0.5 the LSTM's next-word distributions are flat enough that a beam of 3
    loses greedy's path on 2 of the 8 images (beam search does not promise to
    beat greedy; a peaked model, as a trained one is, makes it do so)."""
    decoder = tiny_decoder(name, spread=1.0, seed=WORLD_SEEDS.get(name, 0))
    features = tf.random.stateless_normal([8, LOCATIONS, CHANNELS], [3, 4])
    return decoder, features


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_is_a_loop_over_step_and_beam_finds_better(name):
    decoder, features = spread_world(name)
    tokens, lengths, scores, attention = decoding.greedy(decoder, features, MAX_LEN)
    expected = loop_over_step(decoder, features)
    np.testing.assert_array_equal(tokens.numpy(), expected[0])
    np.testing.assert_allclose(scores.numpy(), expected[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(attention.numpy(), expected[2], atol=1e-6)
    assert len({tuple(row) for row in expected[0]}) > 1  # not one caption for all

    beam_tokens, _, beam_scores, _ = decoding.beam(decoder, features, 3, MAX_LEN)
    beam_tokens, beam_scores, greedy_scores = beam_tokens.numpy(), beam_scores.numpy(), \
        scores.numpy()
    # Its score is the model's for its words: the state was regrouped with its beams.
    np.testing.assert_allclose(loop_over_step(decoder, features, beam_tokens)[1], beam_scores,
                               rtol=1e-5, atol=1e-5)
    assert (beam_scores >= greedy_scores - 1e-5).all()
    differ = (beam_tokens != tokens.numpy()).any(axis=1)
    assert differ.any(), "no image where the beam found another caption: a weak test"
    assert (beam_scores[differ] > greedy_scores[differ] + 1e-6).all()


@pytest.mark.parametrize("name", DECODERS)
def test_sampling_and_diverse_beam_carry_the_state_in_a_graph(name):
    """The searches that copy and regroup the state (tf.repeat, tf.gather along
    the rows, with tf.nest over its structure) give in a graph what the eager
    searches give: cold sampling is greedy N times, one-group diverse beam is
    beam search, three groups run the same eagerly and in a graph."""
    decoder, features = spread_world(name)
    greedy = decoding.greedy(decoder, features, MAX_LEN)[0].numpy()
    cold = tf.function(lambda f: decoding.sample(decoder, f, 2, MAX_LEN, 0.0))(features)
    np.testing.assert_array_equal(cold[0].numpy(), np.repeat(greedy[:, None], 2, 1))
    beam = decoding.beam(decoder, features, 3, MAX_LEN)[0].numpy()
    diverse = lambda f, groups, penalty: decoding.diverse_beam(  # noqa: E731
        decoder, f, 3, groups, penalty, MAX_LEN)[0]
    np.testing.assert_array_equal(tf.function(diverse)(features, 1, 0.0)[:, 0].numpy(), beam)
    np.testing.assert_array_equal(tf.function(diverse)(features, 3, 2.0),
                                  diverse(features, 3, 2.0))


# --- The SavedModel and the checkpoints: one tiny cache, a checkpoint per decoder.


def run_config(cache_root, train_dir, name: str) -> RunConfig:
    """A tiny run of decoder `name` over test_training's cache (at cache_root)."""
    config = tiny_run(cache_root)
    config.model = tiny_model(name)
    config.train.train_dir = str(train_dir)
    return config


def as_other(config, decoder: str) -> RunConfig:
    """A copy of config that asks for another decoder type."""
    other = copy.deepcopy(config)
    other.model = tiny_model(decoder)
    return other


@pytest.fixture(scope="module")
def runs(cached, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """Per decoder: a run whose latest checkpoint holds spread random weights (no
    training: what restores it takes it for a trained one), and image bytes."""
    root = tmp_path_factory.mktemp("contract")
    blobs = [p.read_bytes() for p in sorted((cached / "img").iterdir())][:6]
    configs = {}
    for name in DECODERS:
        config = run_config(cached, root / name / "train", name)
        manifest = checkpoints.load_manifest(config.features.cache_dir, "train")
        vocab = len(open(checkpoints.vocabulary_path(manifest)).read().split())
        decoder = tiny_decoder(name, spread=1.0, grid=manifest["grid_shape"], vocab=vocab,
                               config=config)
        tf.train.Checkpoint(decoder=decoder, **checkpoints.type_record(decoder)).save(
            str(root / name / "train" / "latest" / "ckpt"))
        configs[name] = config
    return types.SimpleNamespace(configs=configs, root=root, blobs=blobs)


@pytest.fixture(scope="module")
def exports(runs):
    """Per decoder: its SavedModel (beam 3) and what this process computes from
    the checkpoint; then one fresh process, which cannot import tfcaption, runs
    every SavedModel."""
    paths, eager = {}, {}
    for name, config in runs.configs.items():
        paths[name] = export.export(config, out_root=str(runs.root / "saved_models"),
                                    beam_size=3, max_len=MAX_LEN, name=name)
        eager[name] = eager_outputs(config, runs.blobs, serving.model_info(paths[name]))
    report = fresh_report(paths, runs.blobs, eager[DECODERS[0]].grid, {}, runs.root)
    return types.SimpleNamespace(eager=eager, report=report)


@pytest.mark.integration  # a Python without tfcaption
@pytest.mark.parametrize("name", DECODERS)
def test_savedmodel_in_a_fresh_process_gives_the_eager_tokens(exports, name):
    assert exports.report["tfcaption_importable"] is False
    served, eager = exports.report[name], exports.eager[name]
    assert_same_outputs(served["serving_default"], eager.beam)
    assert_same_outputs(served["greedy"], eager.greedy)
    assert_same_outputs(served["caption_features"], eager.beam)
    assert (eager.greedy["lengths"] > 1).any()  # not only empty captions
    cold = served["sample"]["cold"]  # temperature 0: greedy, N times over
    assert cold["tokens"] == [[row] * 3 for row in served["greedy"]["tokens"]]


@pytest.mark.parametrize("name", DECODERS)
def test_tflite_gives_the_eager_greedy_tokens(runs, name):
    """The state crosses TFLite's WHILE as it crosses tf.while_loop."""
    config = runs.configs[name]
    fc = config.features
    backbone = build_backbone(fc.backbone, weights=fc.weights, input_size=fc.input_size,
                              seed=fc.seed)
    images = tf.stack([backbone.resize(decode_image(tf.constant(b))) for b in runs.blobs])
    h, w, c = backbone.grid_shape
    grid = tf.reshape(backbone(backbone.normalize(images)), [-1, h * w, c])
    decoder, *_ = checkpoints.restore_decoder(config)
    tokens, _, scores, _ = decoding.greedy(decoder, grid, MAX_LEN, config.decode.no_repeat_ngram)
    path = tflite_export.export_tflite(config, str(runs.root / "tflite"), max_len=MAX_LEN)
    found = tflite_export.run(f"{path}/{tflite_export.MODEL_FILE}", images.numpy())
    np.testing.assert_array_equal(found["tokens"], tokens.numpy())
    np.testing.assert_allclose(found["scores"], scores.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("trained, asked", itertools.permutations(DECODERS, 2))
def test_a_checkpoint_restores_only_into_its_own_decoder_type(runs, trained, asked):
    """Evaluation, export and caption (restore_decoder) and a resumed training
    run all refuse, naming both types."""
    config = as_other(runs.configs[trained], asked)
    message = f"trained with model.decoder={trained}; this config says model.decoder={asked}"
    with pytest.raises(ValueError, match=message):
        checkpoints.restore_decoder(config)
    with pytest.raises(ValueError, match=message):
        training.train(config, progress=False)


def test_a_checkpoint_from_before_the_record_is_a_gru(cached, tmp_path):  # noqa: F811
    """Checkpoints written before decoder types were recorded (GRU's, with no
    record) restore and resume as GRU and are refused as anything else."""
    config = run_config(cached, tmp_path, "gru")
    trainer = training.make_trainer(config)
    path = training._checkpoint(trainer.decoder, trainer.optimizer, trainer.state,
                                record=False).save(str(tmp_path / "old" / "ckpt"))
    assert checkpoints.recorded_type(path) is None
    training.restore_latest(training.make_trainer(config), path)
    checkpoints.restore_decoder(config, path)
    with pytest.raises(ValueError, match="model.decoder=gru .it records no type.*says "
                                         "model.decoder=lstm"):
        checkpoints.restore_decoder(as_other(config, "lstm"), path)
    # The record is what a run writes from now on.
    assert checkpoints.recorded_type(trainer.latest.save(1)) == "gru"


def test_an_unknown_decoder_fails_before_any_work(monkeypatch):
    config = RunConfig(model=tiny_model("lsmt"))
    monkeypatch.setattr(runner, "prepare_source", lambda c: pytest.fail("the world was made"))
    with pytest.raises(ValueError, match="choose one of"):
        runner.run(config, progress=False)
