import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import training
from tfcaption.config import ModelConfig, TrainConfig
from tfcaption.data import features
from tests.data.fixtures import make_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]


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
    per_epoch = int(np.ceil(36 / config.pipeline.batch_size))
    assert summary["step"] == summary["total_steps"] == 2 * per_epoch
    assert summary["best_checkpoint"] and os.path.exists(summary["best_checkpoint"] + ".index")
    best = json.load(open(cached / "run1" / "best.json"))
    assert {"CIDEr-D", "BLEU-4", "step"} <= set(best)
    assert os.listdir(cached / "run1" / "logs")
    again = training.train(config, progress=False)  # already complete: no step taken
    assert again["step"] == summary["step"] and again["stopped"] == "complete"


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


def one_step_loss(config, strategy):
    """The reduced loss of the first step, from the same initial weights."""
    tf.keras.utils.set_random_seed(1)
    trainer = training.make_trainer(config, strategy)
    ds = training.pipeline.training_dataset(config.features.cache_dir, trainer.tokenizer,
                                            config.pipeline)
    feats, tokens = next(iter(ds))
    dist = strategy.experimental_distribute_values_from_function(
        lambda ctx: tuple(t[ctx.replica_id_in_sync_group::ctx.num_replicas_in_sync]
                          for t in (feats, tokens)))
    loss, stats, _ = training.make_step(trainer)(*dist)
    return float(loss), float(stats["tokens"])


def test_mirrored_over_two_cpus_matches_one_device(cached):
    config = fresh(cached, "mirrored")
    config.pipeline.batch_size = 6
    config.model.dropout = 0.0
    single = one_step_loss(config, tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored = one_step_loss(config, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    assert mirrored[1] == single[1]
    assert mirrored[0] == pytest.approx(single[0], rel=1e-5)


def grouped_first_step(config, strategy):
    """The first step's loss with captions grouped by image, batches split across
    replicas by tf.distribute itself (in order, as `train` does)."""
    tf.keras.utils.set_random_seed(1)
    trainer = training.make_trainer(config, strategy)
    ds = training.pipeline.training_dataset(config.features.cache_dir, trainer.tokenizer,
                                            config.pipeline)
    feats, tokens = next(iter(strategy.experimental_distribute_dataset(ds)))
    loss, stats, _ = training.make_step(trainer)(feats, tokens)
    return float(loss), float(stats["tokens"])


def test_captions_grouped_by_image_train_and_split_across_replicas(cached):
    config = fresh(cached, "grouped", epochs=1)
    config.pipeline.captions_per_image, config.pipeline.batch_size = 3, 6
    summary = training.train(config, progress=False)
    assert summary["step"] == summary["total_steps"] == 12 * 3 // 6
    config.model.dropout = 0.0
    single = grouped_first_step(config, tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored = grouped_first_step(config, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    assert mirrored[1] == single[1]
    assert mirrored[0] == pytest.approx(single[0], rel=1e-5)
    config.pipeline.batch_size = 9  # 3 images cannot be shared by 2 replicas
    with pytest.raises(ValueError, match="replicas"):
        training.make_trainer(config, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
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


def write_pipeline(root: pathlib.Path, name: str, **train) -> pathlib.Path:
    path = root / f"{name}.py"
    args = ", ".join(f"{k}={v!r}" for k, v in train.items())
    path.write_text(
        "import pathlib\nfrom tests.test_training import fresh\n"
        f"CONFIG = fresh(pathlib.Path({str(root)!r}), {name!r}, {args})\n")
    return path


def test_sigkill_then_resume_ends_at_same_step(cached):
    pipeline_file = write_pipeline(cached, "killed", epochs=6, checkpoint_every=2)
    cmd = [sys.executable, "-m", "tfcaption.cli", "train", str(pipeline_file)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = cached / "killed" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if tf.train.latest_checkpoint(str(latest)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = tf.train.latest_checkpoint(str(latest))
    assert killed_at, "killed before the first checkpoint"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert "resumed from" in done.stderr
    summary = json.loads(done.stdout.split("training: ", 1)[1].splitlines()[0])
    assert summary["step"] == summary["total_steps"] > int(killed_at.rsplit("-", 1)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_worker_multiworker_mirrored_on_localhost(cached):
    pipeline_file = write_pipeline(cached, "multiworker", epochs=1, strategy="multiworker")
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": json.dumps(tf_config)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tfcaption.cli", "train", str(pipeline_file)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert all('"stopped": "complete"' in out for out in outputs)
    # Only the chief writes into the shared train_dir (best.json once raced).
    run = cached / "multiworker"
    assert len(os.listdir(run / "logs")) == 1
    assert json.load(open(run / "best.json"))["step"] > 0
