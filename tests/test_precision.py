"""Accelerator readiness, proved on the CPU: the whole train step under both
mixed precisions, with and without XLA, on one device and on two (Mirrored over
two logical CPUs), traces once per bucket under XLA (once in all without)
and follows float32's loss curve.

Tolerance: the mean loss of every block of 10 steps stays within 6% of
float32's (bfloat16 keeps 8 bits of mantissa, so single steps differ by more;
a broken loss scale or cast diverges by far more than this, or goes NaN).
"""

import dataclasses
import pathlib

import numpy as np
import pytest

from tfcaption import distribute, runner, training
from tests.devices import one_cpu, two_cpus
from tfcaption.config import (DataConfig, FeatureConfig, ModelConfig, PipelineConfig,
                              RunConfig, TrainConfig)

STEPS = 60
TOLERANCE = 0.06


def world(root: pathlib.Path) -> RunConfig:
    return RunConfig(
        name="precision",
        data=DataConfig(source="synthetic", root=str(root / "world"), max_caption_words=12,
                        synthetic_counts=(96, 8, 8), synthetic_image_size=64),
        features=FeatureConfig(backbone="squeezenet", weights="random", input_size=64,
                               cache_dir=str(root / "cache"), batch_size=32, shard_size=32),
        # Boundaries no caption length reaches exactly (7, 10): padding to them is
        # told apart from padding to the batch's longest caption.
        pipeline=PipelineConfig(batch_size=16, bucket_boundaries=(7, 10, 12)),
        model=ModelConfig(embedding_dim=16, units=16, attention_units=16, feature_dim=16,
                          dropout=0.0),
        train=TrainConfig(train_dir=str(root / "train"), epochs=100, warmup_steps=10,
                          learning_rate=3e-3, deterministic=True))


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    config = world(tmp_path_factory.mktemp("precision"))
    runner.prepare_source(config)
    runner.extract_splits(config, ["train", "val"])
    return config


def loss_curve(config: RunConfig, strategy, steps: int = STEPS):
    """Per-token cross entropy of each of the first `steps` steps, and the traces."""
    trainer = training.make_trainer(config, strategy)
    step = training.make_step(trainer)
    batches = iter(distribute.distribute(strategy, lambda: trainer.data.dataset(0, 100)))
    losses, widths = [], set()
    for _ in range(steps):
        feats, tokens = next(batches)
        widths.add(strategy.experimental_local_results(tokens)[0].shape[1])
        _, stats, _ = step(feats, tokens)
        losses.append(float(stats["xent"]) / float(stats["tokens"]))
    # Every batch is padded to a bucket boundary. XLA traces each width once;
    # without it the step traces once for all (training.make_step).
    traces = len(widths) if config.train.jit_compile else 1
    assert widths <= set(trainer.data.pad_lengths) and round(trainer.traces) == traces
    return np.array(losses), trainer.traces, trainer


def blocks(curve):
    return curve.reshape(-1, 10).mean(axis=1)


@pytest.fixture(scope="module")
def float32_curve(cached):
    curve, traces, trainer = loss_curve(cached, one_cpu())
    assert len(trainer.data.pad_lengths) > 2 and round(traces) == 1
    assert blocks(curve)[-1] < 0.8 * blocks(curve)[0]  # it learns: a curve worth following
    return curve


COMBOS = [(p, jit, devices) for p in ("mixed_bfloat16", "mixed_float16")
          for jit in (False, True) for devices in (1, 2)]


# In `make test`: both policies on one device; bfloat16 on two devices (a
# whole loss curve, ~22 s) in `make test-integration`, which CI runs too (two
# replicas' step under a mixed policy is also in test_training.py). The XLA
# cases and float16 on two devices (its loss scale across replicas is also
# tested in test_training.py) run with `make test-slow`.
QUICK = {("mixed_bfloat16", False, 1), ("mixed_float16", False, 1)}
INTEGRATION = {("mixed_bfloat16", False, 2)}


def marked(combo):
    if combo in QUICK:
        return combo
    mark = pytest.mark.integration if combo in INTEGRATION else pytest.mark.slow
    return pytest.param(*combo, marks=mark)


@pytest.mark.parametrize("policy, jit, devices", [marked(c) for c in COMBOS])
def test_mixed_precision_follows_float32_and_traces_as_make_step_says(
        cached, float32_curve, policy, jit, devices):
    config = dataclasses.replace(cached, train=dataclasses.replace(
        cached.train, mixed_precision=policy, jit_compile=jit))
    strategy = one_cpu() if devices == 1 else two_cpus()
    curve, traces, trainer = loss_curve(config, strategy)
    assert trainer.decoder.feature_proj.compute_dtype == policy.split("_")[1]
    assert round(traces) == (len(trainer.data.pad_lengths) if jit else 1)
    assert np.all(np.isfinite(curve))
    gap = np.abs(blocks(curve) - blocks(float32_curve)) / blocks(float32_curve)
    # Both curves in the message: a failure must say which side moved.
    assert gap.max() <= TOLERANCE, (
        f"{policy}: block means differ by up to {gap.max():.3f}: "
        f"{np.round(blocks(curve), 3)} against float32's {np.round(blocks(float32_curve), 3)}")
