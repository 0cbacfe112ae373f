"""Self-critical sequence training: the phase after cross-entropy (tfcaption/scst.py)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import checkpoints, scst, training
from tfcaption.tokens import END_ID, START_ID
from tests.devices import two_cpus
from tests.test_training import cached, tiny_run  # noqa: F401 (a fixture)

RL = {"epochs": 2, "rl_epochs": 2, "rl_samples": 3, "rl_learning_rate": 3e-3}


def fresh(cached, name, **train):
    config = tiny_run(cached, **{**RL, **train})
    config.train.train_dir = str(cached / name)
    return config


def decoder_weights(train_dir) -> dict:
    reader = tf.train.load_checkpoint(str(train_dir))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith("decoder/") and "OPTIMIZER_SLOT" not in k}


class Killed(Exception):
    pass


def kill_after_checkpoint(monkeypatch, steps):
    """The run dies right after the `latest` checkpoint of one of `steps` is on
    disk, like a SIGKILL there (the next run builds everything anew)."""
    save = tf.train.CheckpointManager.save

    def dying(self, checkpoint_number=None, **kwargs):
        path = save(self, checkpoint_number=checkpoint_number, **kwargs)
        if checkpoint_number in steps and self.directory.endswith("latest"):
            steps.remove(checkpoint_number)
            raise Killed(checkpoint_number)
        return path

    monkeypatch.setattr(tf.train.CheckpointManager, "save", dying)


def killed_at_phase_change_and_in_scst(monkeypatch, config, reference: dict) -> None:
    """Trains config as `reference` (a summary) was trained, killed after the
    checkpoint at the phase change and after one inside SCST, then resumed to
    its end."""
    xe_steps = reference["total_steps"] - reference["scst_steps"]
    inside = next(s for s in range(xe_steps + 1, reference["total_steps"]) if s % 3 == 0)
    kill_after_checkpoint(monkeypatch, steps := [xe_steps, inside])
    for _ in range(2):
        with pytest.raises(Killed):
            training.train(config, progress=False)
    assert not steps
    assert training.train(config, progress=False)["step"] == reference["step"]


def first_epoch_best_then_last(monkeypatch, look) -> list:
    """Validation faked by step for fresh(cached, ...)'s 16 + 24 steps: the
    first cross-entropy epoch scores best, until SCST's last. -> a list that
    gets look(trainer) when each later phase has started."""
    scores = {8: 0.9, 16: 0.5, 28: 0.3, 40: 1.2}
    monkeypatch.setattr(training, "validate", lambda trainer: {
        "CIDEr-D": scores[int(trainer.state["step"].numpy())], "BLEU-4": 0.0,
        "samples": [("id", "a caption")]})
    seen = []
    original = training._start_phase

    def spy(trainer, phase, step, first):
        original(trainer, phase, step, first)
        seen.append(look(trainer))

    monkeypatch.setattr(training, "_start_phase", spy)
    return seen


@pytest.mark.integration
def test_scst_follows_the_best_cross_entropy_weights_and_resumes_exactly(cached, monkeypatch):
    """Both phases in one run. Validation (faked, by step) calls the first
    cross-entropy epoch the best and the last SCST epoch better still: SCST
    must start from the first epoch's weights, not the last ones, and the best
    checkpoint is chosen across phases. A run killed at the phase change and
    inside SCST ends with the uninterrupted run's weights."""
    def look(trainer):
        best = trainer.best.latest_checkpoint  # kept one at a time: read it now
        stored = checkpoints.restore_decoder(trainer.config, best)[0].trainable_variables
        return (best, [v.numpy() for v in trainer.decoder.trainable_variables],
                [v.numpy() for v in stored])

    seen = first_epoch_best_then_last(monkeypatch, look)
    reference = fresh(cached, "reference", deterministic=True)
    summary = training.train(reference, progress=False)
    xe_steps = summary["total_steps"] - summary["scst_steps"]
    assert (xe_steps, summary["step"], summary["total_steps"]) == (16, 40, 40)
    best_then, weights, stored = seen[0]
    assert best_then.endswith("-8")  # the first epoch's end, not the last (16)
    assert len(weights) == len(stored)
    for w, v in zip(weights, stored):
        np.testing.assert_array_equal(w, v)
    chosen = json.loads((cached / "reference" / "best.json").read_text())
    assert (chosen["phase"], chosen["step"]) == ("scst", 40)
    assert summary["best_CIDEr-D"] == pytest.approx(1.2)

    killed = fresh(cached, "killed", deterministic=True)
    killed_at_phase_change_and_in_scst(monkeypatch, killed, summary)
    a = decoder_weights(cached / "killed" / "latest")
    b = decoder_weights(cached / "reference" / "latest")
    assert a.keys() == b.keys()
    assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a) <= 1e-5


def test_policy_gradient_raises_rewarded_captions_and_lowers_the_others(cached):
    """One plain gradient step on policy_loss: a caption with positive advantage
    becomes likelier, one with negative advantage less likely, and padding
    rows (real = 0) do not count."""
    config = fresh(cached, "policy")
    trainer = training.make_trainer(config)
    decoder = trainer.decoder
    feats = tf.random.normal([1, *trainer.data.grid]) * 1e-3
    tokens = tf.constant([[START_ID, 5, 6, END_ID, 0], [START_ID, 7, 8, 9, END_ID],
                          [START_ID, 5, 9, END_ID, 0]], tf.int32)

    for advantage, real, direction in (([1.0, -1.0, 0.0], [1.0, 1.0, 1.0], (1, -1)),
                                       ([1.0, 5.0, 0.0], [1.0, 0.0, 1.0], (1, 0))):
        before = per_caption_logp(decoder, feats, tokens)
        with tf.GradientTape() as tape:
            loss, stats = scst.policy_loss(decoder, feats, tokens, tf.constant(advantage),
                                           tf.constant(real), 3)
        grads = tape.gradient(loss, decoder.trainable_variables)
        backup = [v.numpy() for v in decoder.trainable_variables]
        for v, g in zip(decoder.trainable_variables, grads):
            v.assign_sub(0.5 * tf.convert_to_tensor(g))
        change = per_caption_logp(decoder, feats, tokens) - before
        for v, b in zip(decoder.trainable_variables, backup):
            v.assign(b)
        if direction[1] == 0:  # a padding row's huge advantage must change nothing
            grads_without = _grads(decoder, feats, tokens[:1], [1.0], [1.0])
            for g, h in zip(grads, grads_without):
                np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(),
                                           tf.convert_to_tensor(h).numpy() / 3, atol=1e-6)
        else:
            assert change[0] > 0 > change[1]
        assert float(stats["tokens"]) == sum(r * n for r, n in zip(real, (3, 4, 3)))


def test_mixed_objective_adds_the_references_cross_entropy_and_the_entropy_bonus(cached):
    """train.rl_xent_weight adds that multiple of caption_loss on the batch's
    references (normalised by the global number of references);
    train.rl_entropy_weight subtracts the policy's entropy: with no advantage,
    a gradient step on it raises the entropy along the samples."""
    config = fresh(cached, "mixed", rl_xent_weight=0.5, rl_references=2)
    config.model.dropout = 0.0  # caption_loss trains with dropout: compare without
    trainer = training.make_trainer(config)
    decoder = trainer.decoder
    feats = tf.random.normal([2, *trainer.data.grid]) * 1e-3
    samples = tf.constant([[START_ID, 5, 6, END_ID, 0], [START_ID, 7, 8, 9, END_ID]] * 3,
                          tf.int32)
    refs = tf.constant([[START_ID, 5, END_ID], [START_ID, 6, END_ID],
                        [START_ID, 7, 8], [START_ID, 9, END_ID]], tf.int32)
    advantage, real = tf.constant([0.3, -0.3, 0.1, 0.0, 0.2, -0.1]), tf.ones([6])
    images = scst.images_per_batch(config)
    loss, stats = scst.mixed_loss(decoder, feats, refs, samples, advantage, real, config)
    policy, _ = scst.policy_loss(decoder, feats, samples, advantage, real, images * 3)
    xent, _ = training.caption_loss(decoder, feats, refs, images * 2,
                                    config.train.attention_lambda)
    np.testing.assert_allclose(float(loss), float(policy) + 0.5 * float(xent), rtol=1e-5)
    assert float(stats["xent_tokens"]) == 2 + 2 + 2 + 2

    config.train.rl_xent_weight, config.train.rl_entropy_weight = 0.0, 1.0
    entropy = lambda: float(scst.policy_loss(  # noqa: E731
        decoder, feats, samples, advantage, real, 1)[1]["entropy"])
    before = entropy()
    with tf.GradientTape() as tape:
        loss, _ = scst.mixed_loss(decoder, feats, refs, samples, tf.zeros([6]), real, config)
    for v, g in zip(decoder.trainable_variables,
                    tape.gradient(loss, decoder.trainable_variables)):
        if g is not None:
            v.assign_sub(0.5 * tf.convert_to_tensor(g))
    assert entropy() > before + 1e-3


def _grads(decoder, feats, tokens, advantage, real):
    with tf.GradientTape() as tape:
        loss, _ = scst.policy_loss(decoder, feats, tokens, tf.constant(advantage),
                                   tf.constant(real), 1)
    return tape.gradient(loss, decoder.trainable_variables)


def per_caption_logp(decoder, feats, tokens) -> np.ndarray:
    logits, _ = decoder.teacher_forced(feats, tokens)
    logp = tf.gather(tf.nn.log_softmax(logits), tokens[:, 1:], batch_dims=2)
    mask = tf.cast(tf.cumsum(tf.cast(tokens[:, 1:] == END_ID, tf.int32), axis=1,
                             exclusive=True) == 0, tf.float32)
    return tf.reduce_sum(logp * mask, 1).numpy()


def test_baselines_mean_of_the_others_and_greedy(cached):
    """The "mean" baseline of a sample is the mean reward of its image's other
    samples; "greedy" is the reward of the image's greedy caption."""
    config = fresh(cached, "baselines", rl_samples=4)
    trainer = training.make_trainer(config)
    data = iter(trainer.rl_data.dataset(0, 1))
    feats, refs = next(data)
    seed = tf.constant([0, 7], tf.int64)
    rewards = []

    def recording(c, r):
        out = trainer.reward(c, r)
        rewards.append(out)
        return out

    _, advantage, real, _ = scst.sample_and_reward(trainer.decoder, feats, refs, recording,
                                                   config, seed)
    reward = tf.reshape(rewards[0], [-1, 4]).numpy()
    others = (reward.sum(1, keepdims=True) - reward) / 3
    np.testing.assert_allclose(advantage.numpy(), (reward - others).ravel(), atol=1e-6)
    config.train.rl_baseline = "greedy"
    rewards.clear()
    _, advantage, _, _ = scst.sample_and_reward(trainer.decoder, feats, refs, recording,
                                                config, seed)
    greedy = rewards[1].numpy()
    np.testing.assert_allclose(advantage.numpy(),
                               (rewards[0].numpy().reshape(-1, 4) - greedy[:, None]).ravel(),
                               atol=1e-6)


@pytest.mark.integration  # a whole run, both phases, on two replicas
def test_scst_runs_on_two_replicas(cached):
    # With the mixed objective and the entropy bonus: the references' loss is
    # normalised by the global batch, so it must run split across replicas too.
    config = fresh(cached, "two", epochs=1, rl_epochs=1, rl_xent_weight=0.1,
                   rl_entropy_weight=0.01)
    config.pipeline.batch_size = 6  # 2 images of 3 samples: one per replica
    summary = training.train(config, strategy=two_cpus(), progress=False)
    assert summary["step"] == summary["total_steps"] and summary["scst_steps"] > 0


def test_scst_refuses_what_cannot_work(cached):
    for bad, match in (({"rl_baseline": "max"}, "rl_baseline"),
                       ({"rl_reward": "meteor"}, "rl_reward"),
                       ({"rl_samples": 1}, "rl_samples"),
                       ({"rl_xent_weight": -1.0}, "rl_xent_weight")):
        with pytest.raises(ValueError, match=match):
            training.make_trainer(fresh(cached, "bad", **bad))


def test_end_is_a_word_of_the_reward_unless_turned_off(cached):
    """With train.rl_end_word, <end> is one more word (id vocab_size) in the
    training df and in the rewarded captions: every training image's
    references end, so its unigram df is the number of images."""
    from tfcaption import rewards
    config = fresh(cached, "end-word")
    trainer = training.make_trainer(config)
    df = scst.document_frequencies(config, trainer.tokenizer)
    word = trainer.tokenizer.vocab_size
    assert df.vocab_size == word + 1
    key = rewards._ngram_keys_np([word], 1, df.vocab_size)[0]
    assert df.counts[np.searchsorted(df.keys, key)] == df.num_images == 12
    tokens = tf.constant([[START_ID, 5, END_ID, 0]])
    assert scst.as_reward_words(tokens, word).numpy().tolist() == [[START_ID, 5, word, 0]]
    config.train.rl_end_word = False
    plain = scst.document_frequencies(config, trainer.tokenizer)
    assert plain.vocab_size == word and len(plain.keys) < len(df.keys)
    assert scst.as_reward_words(tokens, None) is tokens


def test_a_resumed_run_takes_the_configured_scst_learning_rate(cached):
    """The rate is the config's, not the one a checkpoint was written with."""
    config = fresh(cached, "rate", rl_learning_rate=1e-3)
    trainer = training.make_trainer(config)
    # The phases batch one in-memory copy of the cache, not two.
    assert trainer.data.memory is not None and trainer.rl_data.memory is trainer.data.memory
    trainer.latest.save(checkpoint_number=1)
    config.train.rl_learning_rate = 2e-4
    again = training.make_trainer(config)
    training.restore_latest(again, again.latest.latest_checkpoint)
    assert float(again.rl_optimizer.learning_rate) == pytest.approx(2e-4)


def test_cross_entropy_stopped_early_goes_on_to_scst(cached, monkeypatch):
    """Early stopping ends the cross-entropy phase, not the run: SCST starts
    at its first step from the best weights, and trains all its steps."""
    scores = [0.9, 0.5, 0.4, 0.3, 0.2]  # epoch 1 best; patience 1 stops after epoch 2
    validated = []

    def validate(trainer):
        validated.append(int(trainer.state["step"].numpy()))
        return {"CIDEr-D": scores[len(validated) - 1], "BLEU-4": 0.0,
                "samples": [("id", "a caption")]}

    monkeypatch.setattr(training, "validate", validate)
    starts = []
    original = training._start_phase
    monkeypatch.setattr(training, "_start_phase", lambda trainer, phase, step, first: (
        starts.append(step), original(trainer, phase, step, first)))
    config = fresh(cached, "stopped", epochs=4, rl_epochs=1, patience=1)
    summary = training.train(config, progress=False)
    xe_steps = summary["total_steps"] - summary["scst_steps"]
    assert xe_steps == 32 and starts == [32]
    assert summary["step"] == summary["total_steps"] == 32 + 12
    assert validated == [8, 16, 44]  # no cross-entropy epoch 3 or 4
