"""Polyak averaging of the weights (train.ema_decay, rl_ema_decay; tfcaption/averaging.py)."""

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import averaging, training
from tests.test_scst import first_epoch_best_then_last, killed_at_phase_change_and_in_scst
from tests.test_scst import fresh as fresh_scst
from tests.test_training import ONE, TWO, assert_close, cached, first_batch, fresh  # noqa: F401


def weights_of(variables) -> list:
    return [np.array(tf.convert_to_tensor(v)) for v in variables]


@pytest.mark.parametrize("strategy", [ONE, TWO], ids=["one device", "two replicas"])
def test_the_average_follows_its_formula_step_by_step(cached, strategy):
    """shadow <- d shadow + (1 - d) weight with d = min(decay, (1 + n) / (10 + n)):
    n = 1 is on the ramp (d = 2/11), n >= 2 at the decay (0.2). On two replicas
    every replica holds the one average the first replica's update wrote."""
    config = fresh(cached, "averaged", ema_decay=0.2, learning_rate=0.05, warmup_steps=0)
    config.pipeline.batch_size = 6
    config.model.dropout = 0.0
    trainer = training.make_trainer(config, strategy())
    expected = weights_of(trainer.decoder.trainable_variables)
    assert_close(weights_of(trainer.average.shadows), expected, atol=0.0)  # starts equal
    step, batch = training.make_step(trainer), first_batch(trainer)
    for n in (1, 2, 3):
        step(*batch)
        now = weights_of(trainer.decoder.trainable_variables)
        d = min(0.2, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * w for e, w in zip(expected, now)]
        assert_close(weights_of(trainer.average.shadows), expected, atol=1e-6)
    # Not the weights themselves: the average lags them.
    assert max(float(np.max(np.abs(s - w))) for s, w in
               zip(weights_of(trainer.average.shadows), now)) > 1e-4
    for replica in strategy().experimental_local_results(trainer.average.shadows[0]):
        np.testing.assert_allclose(replica.numpy(), expected[0], atol=1e-6)


def test_validation_and_the_best_checkpoint_use_the_average_training_the_weights(
        cached, monkeypatch):
    """Validation scores the average; the best checkpoint holds it as the
    decoder's weights (evaluation and export read those); training goes on
    from the weights, which `latest` holds beside the average."""
    seen = []
    real_validate = training.validate

    def spy(trainer):
        seen.append((weights_of(trainer.decoder.trainable_variables),
                     weights_of(trainer.average.shadows)))
        return real_validate(trainer)

    monkeypatch.setattr(training, "validate", spy)
    config = fresh(cached, "averaged_run", ema_decay=0.9)
    summary = training.train(config, progress=False)
    assert len(seen) == 2
    for during, shadow in seen:
        assert_close(during, shadow, atol=0.0)

    trainer = training.make_trainer(config)
    training.restore_latest(trainer, summary["best_checkpoint"])
    best = weights_of(trainer.decoder.trainable_variables)
    assert_close(best, weights_of(trainer.average.shadows), atol=0.0)
    training.restore_latest(trainer, summary["latest_checkpoint"])
    trained = weights_of(trainer.decoder.trainable_variables)
    shadow = weights_of(trainer.average.shadows)
    assert max(float(np.max(np.abs(t - s))) for t, s in zip(trained, shadow)) > 1e-4
    assert_close(shadow, seen[-1][1], atol=0.0)  # the last epoch's average


@pytest.mark.integration
def test_scst_averages_afresh_and_a_killed_run_resumes_to_the_same_average(
        cached, monkeypatch):
    """Both phases averaged. Validation (faked, by step) calls the first
    cross-entropy epoch the best: SCST starts from its average, and SCST's
    average starts there too, not at cross-entropy's last average. A run
    killed at the phase change and inside SCST ends with the uninterrupted
    run's weights and average."""
    starts = first_epoch_best_then_last(monkeypatch, lambda trainer: (
        weights_of(trainer.decoder.trainable_variables), weights_of(trainer.average.shadows)))
    averages = {"ema_decay": 0.8, "rl_ema_decay": 0.9, "deterministic": True}
    reference = fresh_scst(cached, "ema_reference", **averages)
    summary = training.train(reference, progress=False)
    assert summary["step"] == summary["total_steps"] == 40
    assert len(starts) == 1
    assert_close(starts[0][0], starts[0][1], atol=0.0)

    killed = fresh_scst(cached, "ema_killed", **averages)
    killed_at_phase_change_and_in_scst(monkeypatch, killed, summary)
    ends = []
    for config in (reference, killed):
        trainer = training.make_trainer(config)
        training.restore_latest(trainer, tf.train.latest_checkpoint(
            f"{config.train.train_dir}/latest"))
        ends.append((weights_of(trainer.decoder.trainable_variables),
                     weights_of(trainer.average.shadows)))
    assert_close(ends[0][0], ends[1][0])
    assert_close(ends[0][1], ends[1][1])
    assert max(float(np.max(np.abs(t - s))) for t, s in zip(*ends[0])) > 1e-5


def test_without_averaging_nothing_is_kept_and_bad_decays_are_refused(cached):
    trainer = training.make_trainer(fresh(cached, "plain"))
    assert trainer.average is None
    names = [name for name, _ in tf.train.list_variables(trainer.latest.save(checkpoint_number=0))]
    assert not any(n.startswith(averaging.CHECKPOINT_KEY + "/") for n in names)
    for bad in ({"ema_decay": 1.0}, {"rl_ema_decay": -0.1}):
        with pytest.raises(ValueError, match="must be in \\[0, 1\\)"):
            training.make_trainer(fresh(cached, "bad", **bad))
