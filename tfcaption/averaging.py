"""Polyak averaging: an exponential moving average (EMA) of the decoder's weights.

With train.ema_decay (cross-entropy and fine-tuning) or train.rl_ema_decay
(SCST) above 0, every step of that phase moves a shadow copy of each
trainable weight towards the weight just updated:

    shadow <- d shadow + (1 - d) weight,   d = min(decay, (1 + n) / (10 + n))

n is the phase optimizer's step count (in the checkpoint, so a resumed run
averages as the killed one would have). The ramp is TensorFlow's
ExponentialMovingAverage(num_updates=n): early on, when the weights move fast,
the shadow follows them instead of remembering the initial ones for
thousands of steps.

Training itself goes on from the weights, never from the shadow. Validation
swaps the shadow in, so the best checkpoint is chosen by, and holds, the
averaged weights: evaluation, export, the report and a next phase (which
starts from the best checkpoint) all use them. The `latest` checkpoint holds
the weights and the shadow, which is what an exact resume needs. Each phase
starts its shadow afresh from the weights it starts from.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

CHECKPOINT_KEY = "ema"  # the shadow's name in a run's checkpoints


class WeightAverage:
    """The shadow of `weights` (a model's trainable variables). Made under the
    strategy's scope: each shadow is a variable like the weights (mirrored on
    every replica), which the first replica's update writes for all (the
    replicas' weights are equal after every step)."""

    def __init__(self, weights: list):
        self.weights = list(weights)
        self.shadows = [tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False,
                                    name=f"ema_{i}",
                                    synchronization=tf.VariableSynchronization.ON_WRITE,
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                        for i, w in enumerate(self.weights)]
        self.reset()

    def reset(self) -> None:
        """The shadow := the weights (a phase's start; eager, cross-replica)."""
        for shadow, weight in zip(self.shadows, self.weights):
            shadow.assign(tf.convert_to_tensor(weight))

    def update(self, decay: float, count, trained: list) -> None:
        """One step of the average, in the train step after the optimizer's
        update (replica context). count: the phase optimizer's iterations;
        trained: the variables the phase trains. The others (a backbone top
        while it is frozen) keep the shadow the phase started with, their own
        value: averaging them would only cost a step's work and rounding."""
        n = tf.cast(count, tf.float32)
        d = tf.minimum(tf.constant(decay, tf.float32), (1.0 + n) / (10.0 + n))
        moved = {id(v) for v in trained}  # Keras variables: no .ref()
        for shadow, weight in zip(self.shadows, self.weights):
            if id(weight) in moved:
                shadow.assign(d * shadow + (1.0 - d) * tf.convert_to_tensor(weight))

    @contextlib.contextmanager
    def swapped_in(self):
        """The weights hold the shadow's values inside the block, their own after."""
        own = [tf.identity(tf.convert_to_tensor(w)) for w in self.weights]
        for weight, shadow in zip(self.weights, self.shadows):
            weight.assign(tf.convert_to_tensor(shadow))
        try:
            yield
        finally:
            for weight, value in zip(self.weights, own):
                weight.assign(value)


def decay(train_config, phase: str) -> float:
    """The phase's decay: 0 (no averaging) or train.ema_decay / rl_ema_decay."""
    return train_config.rl_ema_decay if phase == "rl" else train_config.ema_decay


def wanted(train_config) -> bool:
    return train_config.ema_decay > 0 or train_config.rl_ema_decay > 0
