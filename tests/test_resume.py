"""A run killed with SIGKILL and restarted ends with the weights of a run that
never stopped: every piece of training state is in the checkpoint or is a
function of the step count.

The killed runs are real processes (`tfcaption train PIPELINE`). Their pipeline
file (written below) makes the process SIGKILL itself right after the
checkpoint of a chosen step is on disk: a real kill at a known place, with no
race between a watching test and a fast run.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import training
from tfcaption.config import ModelConfig, TrainConfig
from tfcaption.data import features
from tests.data.fixtures import make_dataset
from tests.devices import two_cpus

REPO = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration

VARIANTS = {
    # 36 captions in batches of 5: 8 steps an epoch, in memory, one window.
    "pairs in memory": {},
    # 12 images x 3 captions in batches of 2 images, streamed one shard (4
    # images) at a time: 3 windows of 2 steps, 6 steps an epoch.
    "grouped, streamed": {"captions_per_image": 3, "batch_size": 6,
                          "cache_in_memory": False, "shuffle_window": 4},
}


def resume_config(root: pathlib.Path, name: str, variant: str, **train):
    """The tiny run of these tests: dropout on (so the RNG matters), warm-up and
    cosine decay (so the schedule's step matters), 3 epochs."""
    config = make_dataset(root, count=12, bad=False)
    for key, value in VARIANTS[variant].items():
        setattr(config.pipeline, key, value)
    config.model = ModelConfig(embedding_dim=8, units=8, attention_units=8, feature_dim=8,
                               dropout=0.3)
    config.train = TrainConfig(**{
        "train_dir": str(root / name), "epochs": 3, "warmup_steps": 4, "log_every": 1,
        "val_batch_size": 8, "checkpoint_every": 3, "deterministic": True,
        "learning_rate": 0.01, **train})
    return config


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    config = resume_config(root, "unused", "pairs in memory")
    for split in ("train", "val"):
        features.extract(config, split)
    return root


PIPELINE = """\
import os, pathlib, signal
import tensorflow as tf
from tests.test_resume import resume_config
tf.config.optimizer.set_experimental_options({{"disable_meta_optimizer": True}})  # as conftest.py
CONFIG = resume_config(pathlib.Path({root!r}), {name!r}, {variant!r}, **{train!r})
_KILL_AT = {{int(s) for s in os.environ.get("TFCAPTION_TEST_KILL_AT", "").split(",") if s}}
_save = tf.train.CheckpointManager.save

def save(self, checkpoint_number=None, **kwargs):
    path = _save(self, checkpoint_number=checkpoint_number, **kwargs)
    if checkpoint_number in _KILL_AT and self.directory.endswith("latest"):
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill, right after a checkpoint
    return path

tf.train.CheckpointManager.save = save
"""


def write_pipeline(root: pathlib.Path, name: str, variant: str, **train) -> pathlib.Path:
    path = root / f"{name}.py"
    path.write_text(PIPELINE.format(root=str(root), name=name, variant=variant, train=train))
    return path


def decoder_weights(train_dir: pathlib.Path) -> dict:
    reader = tf.train.load_checkpoint(str(train_dir / "latest"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith("decoder/") and "OPTIMIZER_SLOT" not in k}


def assert_same_weights(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys() and a
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst <= atol, f"weights differ by up to {worst}"


def run_until_done(cmd, env, kill_at, launches_expected, timeout=240):
    """Runs cmd again after each SIGKILL; returns the final run's output."""
    env = {**env, "TFCAPTION_TEST_KILL_AT": ",".join(map(str, kill_at))}
    for launch in range(1, launches_expected + 1):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode == 0:
            break
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert launch == launches_expected, f"{launch} launches for kills at {kill_at}"
    return done


# The default suite keeps one real SIGKILL variant (the streamed one, which
# resumes inside a shard window); the in-memory one, killed twice, is slow.
@pytest.mark.parametrize("variant", [
    "grouped, streamed", pytest.param("pairs in memory", marks=pytest.mark.slow)])
def test_sigkill_in_two_epochs_then_resume_gives_the_same_weights(cached, variant):
    reference = resume_config(cached, f"reference-{variant}", variant)
    summary = training.train(reference, progress=False)
    per_epoch = summary["steps_per_epoch"]
    # Mid-epoch checkpoints (every 3 steps) in the first and the second epoch;
    # the streamed variant is killed in the second only (a launch is ~8 s):
    # what it adds is resuming inside a shard window of a later epoch.
    kills = [3, next(s for s in range(per_epoch + 1, 2 * per_epoch) if s % 3 == 0)]
    if variant != "pairs in memory":
        kills = kills[1:]
    name = f"killed-{variant}"
    pipeline_file = write_pipeline(cached, name, variant)
    cmd = [sys.executable, "-m", "tfcaption.cli", "train", str(pipeline_file)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = run_until_done(cmd, env, kills, launches_expected=len(kills) + 1)
    assert "resumed from" in done.stderr and f"ckpt-{kills[-1]}" in done.stderr
    final = json.loads(done.stdout.split("training: ", 1)[1].splitlines()[0])
    assert final["step"] == summary["step"] == summary["total_steps"]
    assert_same_weights(decoder_weights(cached / name),
                        decoder_weights(pathlib.Path(reference.train.train_dir)))
    assert final["best_CIDEr-D"] == pytest.approx(summary["best_CIDEr-D"], abs=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_killed_mid_epoch_restart_from_the_chiefs_checkpoint(cached):
    """Both workers SIGKILLed after the same mid-epoch checkpoint, restarted on
    new ports: they resume at the chief's step (not the others at 0), agree on
    every step, and end with the weights of one process training the same
    global batches on two replicas."""
    variant = "pairs in memory"
    reference = resume_config(cached, "mw-reference", variant)
    reference.pipeline.batch_size = 6
    two = two_cpus()
    summary = training.train(reference, strategy=two, progress=False)

    name = "mw-killed"
    pipeline_file = write_pipeline(cached, name, variant, strategy="multiworker")
    pipeline_file.write_text(pipeline_file.read_text() + "CONFIG.pipeline.batch_size = 6\n")
    kill_at = 3
    for launch in range(2):
        workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        procs = []
        for index in range(2):
            tf_config = {"cluster": {"worker": workers},
                         "task": {"type": "worker", "index": index}}
            env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": json.dumps(tf_config),
                   "TFCAPTION_TEST_KILL_AT": str(kill_at) if launch == 0 else ""}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tfcaption.cli", "train", str(pipeline_file)], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        try:
            outputs = [p.communicate(timeout=300)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
        codes = [p.returncode for p in procs]
        if launch == 0:
            assert codes == [-signal.SIGKILL] * 2, outputs[0][-3000:] + outputs[1][-3000:]
        else:
            assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    for out in outputs:  # every worker resumed from the chief's checkpoint
        assert f"resumed from {cached / name / 'latest' / f'ckpt-{kill_at}'}" in out
        assert '"stopped": "complete"' in out
    run = cached / name
    # Only the chief writes into train_dir: one events file per launch of it.
    assert len(os.listdir(run / "logs")) == 2
    assert json.load(open(run / "best.json"))["step"] > 0
    assert_same_weights(decoder_weights(run), decoder_weights(cached / "mw-reference"))
    assert summary["step"] == summary["total_steps"]
