"""Scheduled sampling (train.scheduled_sampling) in the recurrent decoders'
teacher forcing: probability 0 is teacher forcing, probability 1 feeds the
model's own words, the draws are a function of the key, and the probability
ramps over the cross-entropy phase."""

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import training
from tfcaption.decoding.masks import NEVER_EMITTED
from tests.models.test_decoder_contract import batch, tiny_decoder

RECURRENT = ["gru", "lstm"]
KEY = tf.constant([3, 7], tf.int64)


def peaked(name: str):
    """A decoder whose next-word distributions are one-hot in effect: its
    logits are scaled so far apart that a draw is the argmax (Gumbel noise
    is at most ~16 here)."""
    decoder = tiny_decoder(name, spread=1.0)
    kernel = decoder.logits_layer.kernel
    kernel.assign(kernel * 1e4)
    return decoder


def own_words_loop(decoder, features, tokens):
    """A Python loop over `step` that feeds <start>, then at every position the
    model's likeliest word (specials excluded) after the previous step."""
    values, keys, state = decoder.encode(features)
    token, logits_seen = tokens[:, 0], []
    for _ in range(tokens.shape[1] - 1):
        logits, state, _ = decoder.step(token, state, values, keys)
        logits_seen.append(logits)
        banned = np.zeros(logits.shape[-1], np.float32)
        banned[list(NEVER_EMITTED)] = -np.inf
        token = tf.constant(np.argmax(logits.numpy() + banned, axis=-1).astype(np.int32))
    return tf.stack(logits_seen, axis=1)


@pytest.mark.parametrize("name", RECURRENT)
def test_probability_zero_is_teacher_forcing(name):
    decoder = tiny_decoder(name, spread=1.0)
    features, tokens = batch()
    logits, alphas = decoder.teacher_forced(features, tokens)
    sampled, sampled_alphas = decoder.teacher_forced(features, tokens, sampling=(0.0, KEY))
    np.testing.assert_allclose(sampled.numpy(), logits.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sampled_alphas.numpy(), alphas.numpy(), atol=1e-6)


@pytest.mark.parametrize("name", RECURRENT)
def test_probability_one_feeds_the_models_own_words(name):
    decoder = peaked(name)
    features, tokens = batch(size=4, length=7)
    fed, _ = decoder.teacher_forced(features, tokens, sampling=(1.0, KEY))
    expected = own_words_loop(decoder, features, tokens)
    forced, _ = decoder.teacher_forced(features, tokens)
    scale = float(tf.reduce_max(tf.abs(expected)))
    np.testing.assert_allclose(fed.numpy() / scale, expected.numpy() / scale, atol=1e-5)
    # Not teacher forcing in disguise: the references' words lead elsewhere.
    assert np.abs(forced.numpy() - expected.numpy()).max() / scale > 1e-2


@pytest.mark.parametrize("name", RECURRENT)
def test_draws_are_a_function_of_the_key(name):
    decoder = tiny_decoder(name, spread=1.0)
    features, tokens = batch(size=4, length=7)
    run = lambda key: decoder.teacher_forced(  # noqa: E731
        features, tokens, sampling=(0.5, tf.constant(key, tf.int64)))[0].numpy()
    np.testing.assert_array_equal(run([1, 2]), run([1, 2]))
    assert not np.allclose(run([1, 2]), run([1, 3]))


@pytest.mark.parametrize("name", RECURRENT)
def test_gradients_reach_every_weight(name):
    decoder = tiny_decoder(name, spread=0.5)
    features, tokens = batch()
    with tf.GradientTape() as tape:
        logits, _ = decoder.teacher_forced(features, tokens, sampling=(tf.constant(0.5), KEY))
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(tokens[:, 1:],
                                                                            logits))
    grads = tape.gradient(loss, decoder.trainable_variables)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


@pytest.mark.parametrize("name", RECURRENT)
def test_compiles_with_xla(name):
    """XLA draws its own Philox stream from a key, so the comparison is where
    no draw can differ: probability 1 on a peaked model (every draw the argmax)."""
    decoder = peaked(name)
    features, tokens = batch()
    run = lambda: decoder.teacher_forced(features, tokens, sampling=(1.0, KEY))[0]  # noqa: E731
    eager, compiled = run(), tf.function(run, jit_compile=True)()
    scale = float(tf.reduce_max(tf.abs(eager)))
    np.testing.assert_allclose(compiled.numpy() / scale, eager.numpy() / scale, atol=1e-5)


def test_the_probability_ramps_over_the_cross_entropy_phase():
    trainer = type("T", (), {})()
    trainer.xe_steps = 200
    trainer.config = type("C", (), {"train": type("TC", (), {"scheduled_sampling": 0.25})})()
    at = lambda step: float(training.sampling_probability(trainer, step))  # noqa: E731
    assert at(0) == 0.0
    assert at(100) == pytest.approx(0.125)
    assert at(200) == pytest.approx(0.25) and at(260) == pytest.approx(0.25)
