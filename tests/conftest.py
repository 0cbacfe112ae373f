"""Shared test setup: quiet TensorFlow, paths to the data ../shared holds."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs, so MirroredStrategy can be tested against one device. This
# must happen before TensorFlow initialises its devices, hence at import time.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

# Grappler rewrites every graph before its first run; the tests' graphs mostly
# run a few times each, so the rewrite costs more than it saves (a tiny
# `training.train`: 24 -> 17 s). Graphs in processes the tests start keep it.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("TFCAPTION_SHARED", REPO.parent / "shared"))
FLICKR8K = SHARED / "flickr8k"
SQUEEZENET_H5 = SHARED / "weights" / "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"


# The files that take longest (trained models, killed processes), longest
# first: the two test processes take whole files in this order, and the short
# ones then fill in, instead of one process finishing a long file alone.
# (By their summed test times in `make test` and `make test-integration`,
# 2026-12-07; both orders come from this one ranking.)
LONGEST_FIRST = ("test_training.py", "test_resume.py", "test_decoder_contract.py",
                 "test_storage.py", "test_transformer.py", "test_evaluation.py",
                 "test_export.py", "test_decoder.py", "test_finetune.py", "test_runner.py",
                 "test_precision.py", "test_features.py", "test_decoding.py", "test_scst.py",
                 "test_backbones.py", "test_pipeline.py", "test_averaging.py",
                 "test_resnet.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: the order inside a file is kept


@pytest.fixture(scope="session", autouse=True)
def meteor_warm():
    """One METEOR scorer per test process. Its Java process spends 10-20 s
    loading its tables, and every evaluation (each `tfcaption run` a test makes)
    would start one; started here, it loads while the first tests run. Its
    -stdio mode keeps no state between requests, so no score changes."""
    from tfcaption import metrics
    if not metrics.java_available():
        yield None
        return
    import pycocoevalcap.meteor.meteor as meteor_module
    shared = meteor_module.Meteor()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(meteor_module, "Meteor", lambda: shared)
        yield shared


@pytest.fixture(scope="session")
def flickr8k_root():
    if not (FLICKR8K / "Flickr8k_text" / "Flickr8k.token.txt").exists():
        pytest.skip(f"Flickr8k not found at {FLICKR8K}")
    return FLICKR8K


@pytest.fixture(scope="session")
def squeezenet_h5():
    if not SQUEEZENET_H5.exists():
        pytest.skip(f"SqueezeNet weights not found at {SQUEEZENET_H5}")
    return SQUEEZENET_H5
