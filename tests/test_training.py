import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import distribute, training
from tfcaption.config import ModelConfig, TrainConfig
from tfcaption.data import features
from tests.data.fixtures import make_dataset
from tests.devices import one_cpu, two_cpus



def tiny_run(root: pathlib.Path, count=12, **train):
    config = make_dataset(root, count=count, bad=False)
    config.model = ModelConfig(embedding_dim=8, units=8, attention_units=8, feature_dim=8,
                               dropout=0.1)
    config.train = TrainConfig(**{"train_dir": str(root / "train"), "epochs": 2,
                                  "warmup_steps": 2, "log_every": 1, "val_batch_size": 8,
                                  "checkpoint_every": 3, **train})
    return config


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    config = tiny_run(root)
    for split in ("train", "val"):
        features.extract(config, split)
    return root


def fresh(cached, name, **train):
    config = tiny_run(cached, **train)
    config.train.train_dir = str(cached / name)
    return config


def test_training_runs_validates_and_keeps_best(cached):
    config = fresh(cached, "run1")
    summary = training.train(config, progress=False)
    per_epoch = int(np.ceil(36 / config.pipeline.batch_size))  # one window: no extra batch
    assert summary["steps_per_epoch"] == per_epoch
    assert summary["step"] == summary["total_steps"] == 2 * per_epoch
    assert summary["best_checkpoint"] and os.path.exists(summary["best_checkpoint"] + ".index")
    best = json.load(open(cached / "run1" / "best.json"))
    assert {"CIDEr-D", "BLEU-4", "step"} <= set(best)
    assert os.listdir(cached / "run1" / "logs")
    again = training.train(config, progress=False)  # already complete: no step taken
    assert again["step"] == summary["step"] and again["stopped"] == "complete"


def test_a_run_cut_by_the_time_limit_says_so_and_finishes_when_given_time(cached, caplog):
    config = fresh(cached, "cut", max_minutes=1e-9)  # out of time after the first step
    summary = training.train(config, progress=False)
    assert summary["stopped"].startswith("time limit") and summary["step"] == 1
    total = summary["total_steps"]
    assert "TRAINING WAS CUT" in caplog.text and f"step 1 of {total}" in caplog.text
    again = training.train(config, progress=False)  # the same limit: nothing more
    assert again["step"] == 1 and again["stopped"].startswith("time limit")
    config.train.max_minutes = 0  # no limit: it resumes and trains the rest
    done = training.train(config, progress=False)
    assert done["step"] == total and done["stopped"] == "complete"


def test_restoring_under_other_model_options_is_refused(cached):
    """A checkpoint without the location table must not restore into a decoder
    that has one, leaving it at its random init."""
    from tfcaption.checkpoints import restore_decoder
    config = fresh(cached, "run1")
    if not os.path.exists(cached / "run1" / "finished.json"):
        training.train(config, progress=False)
    assert restore_decoder(config)[0].positions is None
    config.model.position_embedding = True
    with pytest.raises(ValueError, match="other model options"):
        restore_decoder(config)
    with pytest.raises(ValueError, match="other model options"):  # resuming training
        training.train(config, progress=False)
    # The other way round: the checkpoint's gate weights have nowhere to go.
    config.model.position_embedding, config.model.gate = False, False
    with pytest.raises(ValueError, match="gate_layer"):
        restore_decoder(config)


def first_batch(trainer):
    """The first global batch, split among the replicas as `train` splits it."""
    return next(iter(distribute.distribute(trainer.strategy, trainer.data.dataset)))


def after_one_step(config, strategy):
    """(loss, tokens, weights after the step, trainer) of one step from the same
    initial weights."""
    trainer = training.make_trainer(config, strategy)
    feats, tokens = first_batch(trainer)
    loss, stats, _ = training.make_step(trainer)(feats, tokens)
    weights = [v.numpy() for v in trainer.decoder.trainable_variables]
    return float(loss), float(stats["tokens"]), weights, trainer


def assert_close(a, b, atol=1e-5):
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    assert worst <= atol, f"weights differ by up to {worst}"


ONE, TWO = one_cpu, two_cpus


def test_mirrored_step_with_clipping_equals_one_device_step(cached):
    """The clip sees the global batch's gradient: clipping each replica's half
    (what Keras does before its own sum) gives other weights."""
    config = fresh(cached, "mirrored", clip_norm=0.05, learning_rate=0.05, warmup_steps=0)
    config.pipeline.batch_size = 6
    config.model.dropout = 0.0
    single = after_one_step(config, ONE())
    mirrored = after_one_step(config, TWO())
    assert mirrored[1] == single[1]
    assert mirrored[0] == pytest.approx(single[0], rel=1e-5)
    initial = training.make_trainer(config, ONE()).decoder.trainable_variables
    assert max(float(np.max(np.abs(w - v.numpy()))) for w, v in zip(single[2], initial)) > 1e-3
    assert_close(mirrored[2], single[2])


def test_overflow_on_one_replica_skips_the_step_on_all(cached):
    config = fresh(cached, "overflow", mixed_precision="mixed_float16")
    config.pipeline.batch_size = 6
    strategy = TWO()
    trainer = training.make_trainer(config, strategy)
    weights = lambda: [v.numpy() for v in trainer.decoder.trainable_variables]  # noqa: E731
    initial, scale = weights(), float(trainer.optimizer.dynamic_scale.numpy())
    step, (feats, tokens) = training.make_step(trainer), first_batch(trainer)
    local = strategy.experimental_local_results(feats)  # an overflow on the last replica only
    poisoned = [f if i < len(local) - 1 else f * np.inf for i, f in enumerate(local)]
    step(strategy.experimental_distribute_values_from_function(
        lambda ctx: poisoned[ctx.replica_id_in_sync_group]), tokens)
    assert_close(weights(), initial, atol=0.0)
    assert float(trainer.optimizer.dynamic_scale.numpy()) == scale / 2
    step(feats, tokens)  # the next, finite step does apply
    assert max(float(np.max(np.abs(w - v))) for w, v in zip(weights(), initial)) > 0


def test_captions_grouped_by_image_train_and_split_across_replicas(cached):
    config = fresh(cached, "grouped", epochs=1)
    config.pipeline.captions_per_image, config.pipeline.batch_size = 3, 6
    summary = training.train(config, progress=False)
    assert summary["step"] == summary["total_steps"] == 12 * 3 // 6
    config.model.dropout = 0.0
    single = after_one_step(config, ONE())
    mirrored = after_one_step(config, TWO())
    assert mirrored[1] == single[1]
    assert mirrored[0] == pytest.approx(single[0], rel=1e-5)
    assert_close(mirrored[2], single[2])
    config.pipeline.batch_size = 9  # 3 images cannot be shared by 2 replicas
    with pytest.raises(ValueError, match="replicas"):
        training.make_trainer(config, TWO())


def widths_of(trainer, epochs=2) -> dict:
    """A batch of each token width the run's batches have, by width."""
    seen = {}
    for features, tokens in trainer.data.dataset(0, epochs):
        seen.setdefault(int(tokens.shape[1]), (features, tokens))
    return seen


def test_the_step_traces_once_off_xla_and_once_per_width_under_it(cached):
    # XLA compiles for static shapes (TPUs need them): one trace per width.
    # Two widths show it (one trace would be the unknown length's); each
    # compile costs seconds.
    for jit, count, traces in ((False, 3, 1), (True, 2, 2)):
        config = fresh(cached, f"traces-{jit}", jit_compile=jit)
        config.pipeline.bucket_boundaries = (6, 7)  # captions of 5-8 tokens: 3 widths
        trainer = training.make_trainer(config)
        step = training.make_step(trainer)
        widths = widths_of(trainer)
        assert len(widths) == 3
        for features, tokens in list(widths.values())[:count]:
            step(features, tokens)
        assert round(trainer.traces) == traces
    config = fresh(cached, "traces-train", epochs=2)  # a whole run: its 3 widths, one trace
    config.pipeline.bucket_boundaries = (6, 7)
    assert training.train(config, progress=False)["step_traces"] == 1


def test_steps_per_execution_trains_the_same_steps(cached):
    """4 steps per call: the same weights as one step per call, checkpoints and
    validation at the same steps."""
    one = fresh(cached, "spe-1", epochs=2, checkpoint_every=3)
    four = fresh(cached, "spe-4", epochs=2, checkpoint_every=3, steps_per_execution=4)
    for config in (one, four):
        config.train.deterministic = True
        summary = training.train(config, progress=False)
    assert summary["step"] == summary["total_steps"]
    names = [sorted(os.listdir(cached / n / "latest")) for n in ("spe-1", "spe-4")]
    assert names[0] == names[1]
    weights = [tf.train.load_checkpoint(str(cached / n / "latest")) for n in ("spe-1", "spe-4")]
    keys = [k for k in weights[0].get_variable_to_shape_map() if k.startswith("decoder/")]
    assert_close([weights[0].get_tensor(k) for k in keys], [weights[1].get_tensor(k) for k in keys],
                 atol=1e-6)
    assert json.load(open(cached / "spe-1" / "best.json")) == \
        json.load(open(cached / "spe-4" / "best.json"))


def test_validation_decodes_on_the_replicas(cached):
    config = fresh(cached, "val-replicas", epochs=1)
    config.train.val_batch_size = 5  # 12 images: the last batch is padded
    config.pipeline.batch_size = 6
    captions = []
    for strategy in (ONE(), TWO()):
        trainer = training.make_trainer(config, strategy)
        captions.append(training.greedy_captions(trainer, "val"))
    assert len(captions[0]) == 12 and captions[0] == captions[1]


def test_combinations_that_cannot_work_are_refused(cached):
    config = fresh(cached, "refused", strategy="tpu", steps_per_execution=4)
    with pytest.raises(ValueError, match="fixed_shapes"):
        training.make_trainer(config)


# The whole loop (checkpoints with the loss scale, validation) under mixed
# precision; tests/test_precision.py holds the step to float32's loss curve.
@pytest.mark.parametrize("policy", ["mixed_float16"])
def test_mixed_precision_steps_are_finite(cached, policy):
    config = fresh(cached, f"mp-{policy}", mixed_precision=policy, epochs=1)
    summary = training.train(config, progress=False)
    assert summary["step"] == summary["total_steps"]
    trainer = training.make_trainer(config)
    assert trainer.decoder.feature_proj.compute_dtype == policy.split("_")[1]


def test_xla_training_step(cached):
    config = fresh(cached, "xla", jit_compile=True, epochs=1)
    config.pipeline.fixed_shapes = True
    assert training.train(config, progress=False)["step"] > 0


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(cached, monkeypatch):
    config = fresh(cached, "nan", epochs=1)
    training.train(config, progress=False)
    latest = tf.train.latest_checkpoint(str(cached / "nan" / "latest"))
    config.train.epochs = 2
    real = training.caption_loss
    monkeypatch.setattr(training, "caption_loss",
                        lambda *a, **k: (real(*a, **k)[0] * np.nan, real(*a, **k)[1]))
    with pytest.raises(training.NonFiniteLoss, match="last good checkpoint"):
        training.train(config, progress=False)
    assert tf.train.latest_checkpoint(str(cached / "nan" / "latest")) == latest


def test_scheduled_sampling_reaches_the_step_and_is_refused_where_it_cannot_work(cached):
    """At the phase's end (probability 1 here) the step's loss is not teacher
    forcing's; the transformer and probabilities above 1 are refused by name."""
    config = fresh(cached, "ss", scheduled_sampling=1.0, epochs=1)
    config.pipeline.batch_size = 6
    config.model.dropout = 0.0
    losses = []
    for p in (0.0, 1.0):
        config.train.scheduled_sampling = p
        trainer = training.make_trainer(config, ONE())
        trainer.optimizer.iterations.assign(trainer.xe_steps)  # the end of the ramp
        feats, tokens = next(iter(trainer.data.dataset(0, 1)))
        losses.append(float(training.make_step(trainer)(feats, tokens)[0]))
    assert abs(losses[1] - losses[0]) > 1e-3 * losses[0]
    for bad, match in (({"scheduled_sampling": 1.5}, "probability"),):
        with pytest.raises(ValueError, match=match):
            training.make_trainer(fresh(cached, "ss-bad", **bad))
    transformer = fresh(cached, "ss-transformer", scheduled_sampling=0.2)
    transformer.model.decoder = "transformer"
    with pytest.raises(ValueError, match="recurrent decoder"):
        training.make_trainer(transformer)


@pytest.mark.integration  # a whole run on two replicas
def test_scheduled_sampling_trains_on_two_replicas_logging_its_ramp(cached):
    """A two-replica run trains, logging the ramped probability of each step."""
    config = fresh(cached, "ss-two", scheduled_sampling=1.0, epochs=1)
    config.pipeline.batch_size = 6
    summary = training.train(config, strategy=TWO(), progress=False)
    assert summary["step"] == summary["total_steps"] == 6
    logged = []
    for path in (cached / "ss-two" / "logs").iterdir():
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            logged += [(event.step, float(tf.make_ndarray(v.tensor)))
                       for v in event.summary.value if v.tag == "scheduled_sampling"]
    # Step s (1-based) ran with probability (s - 1) / 6.
    assert sorted(logged) == [(s, pytest.approx((s - 1) / 6)) for s in range(1, 7)]


def test_deterministic_also_turns_grappler_off(cached):
    """train.deterministic: op determinism and no Grappler, whose rewrite of the
    SCST step gave other weights in some processes (training.make_trainer;
    shown on the demo's model, which a quick test cannot afford to run in
    several processes). A process-wide switch, like op determinism; conftest.py
    turns Grappler off for the tests' speed, so it is turned on first here."""
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
    try:
        training.make_trainer(fresh(cached, "grappler-on"))
        assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer")
        training.make_trainer(fresh(cached, "grappler-off", deterministic=True))
        assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"] is True
    finally:  # as conftest.py left it
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
