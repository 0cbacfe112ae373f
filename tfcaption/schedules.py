"""The learning-rate schedule: a function of the optimizer's step, restored with it."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to `peak * floor` at `total` steps."""

    def __init__(self, peak: float, warmup: int, total: int, floor: float):
        self.peak, self.warmup, self.total, self.floor = peak, warmup, max(total, 1), floor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup, 1)
        progress = tf.clip_by_value((step - self.warmup) / max(self.total - self.warmup, 1),
                                    0.0, 1.0)
        cosine = self.floor + (1.0 - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup, warm, self.peak * cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total,
                "floor": self.floor}


class Constant(keras.optimizers.schedules.LearningRateSchedule):
    """A constant rate, as a schedule: a plain float would become a variable of
    the optimizer, saved in its checkpoints and restored over the configured
    rate, so a run resumed with another rate would silently keep the old one."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, step):
        return tf.constant(self.rate, tf.float32)

    def get_config(self):
        return {"rate": self.rate}


class TwoRates(keras.optimizers.schedules.LearningRateSchedule):
    """`first` for the optimizer's first `steps` steps, then `then`: the
    backbone top's rate in fine-tuning, then in SCST (its optimizer steps in
    those two phases only, so its own step count says which one it is in)."""

    def __init__(self, first: float, then: float, steps: int):
        self.first, self.then, self.steps = first, then, steps

    def __call__(self, step):
        return tf.where(tf.cast(step, tf.int64) < self.steps, self.first, self.then)

    def get_config(self):
        return {"first": self.first, "then": self.then, "steps": self.steps}
