"""Strategies for tests, one instance each per process.

Two MirroredStrategy objects in one process number their collective ops from
the same keys; the second one's all-reduce can then meet the first one's
leftover instance ("Shape mismatch in the collective instance"). A training
program makes one strategy; the tests share one of each kind to do the same.
"""

import functools

import tensorflow as tf


@functools.cache
def one_cpu() -> tf.distribute.Strategy:
    return tf.distribute.OneDeviceStrategy("/cpu:0")


@functools.cache
def two_cpus() -> tf.distribute.Strategy:
    """Mirrored over the two logical CPUs that conftest.py makes."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
