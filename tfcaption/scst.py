"""Self-critical sequence training (SCST; Rennie et al. 2017): the second phase.

After cross-entropy, the decoder is trained on the metric itself. For each
image, `rl_samples` captions are drawn from the model (decoding.sample: a
tf.while_loop over preallocated buffers, static shapes); each is rewarded with
CIDEr-D (or BLEU-4, or both) against the image's references, computed with
TensorFlow ops (rewards.py), so the whole step runs under tf.distribute and
XLA. The baseline is the mean reward of the image's *other* samples ("new
self-critical", Luo 2020), or the reward of the image's greedy caption (the
original). The loss is -(reward - baseline) * log p(sample), summed over the
sample's real tokens, <end> included.

Sampling and rewards run outside the gradient tape (nothing flows through a
draw); the log-probabilities of the drawn captions are then computed by one
teacher-forced pass over them, the same fast path cross-entropy trains with.
Both run with dropout off, so the log-probabilities are those of the
distribution the captions were drawn from.

Batches come from the training plan (data/batches.py) with captions_per_image
= rl_references and fixed shapes: each image with all its references (cycled
when it has fewer; COCO's 6th and 7th are left out), one trace in all, and a
resumed run starts at the step it stopped at.
"""

from __future__ import annotations

import dataclasses
import logging

import tensorflow as tf

from tfcaption import decoding, io, rewards
from tfcaption.config import RunConfig
from tfcaption.data import pipeline
from tfcaption.models.captioner import caption_loss, target_mask
from tfcaption.tokens import END_ID, PAD_ID, START_ID

log = logging.getLogger("tfcaption.scst")

BASELINES = ("mean", "greedy")
DF_FILE = "cider_df.npz"


def check(config: RunConfig) -> None:
    tc = config.train
    if tc.rl_epochs <= 0:
        return
    if tc.rl_baseline not in BASELINES:
        raise ValueError(f"train.rl_baseline must be one of {', '.join(BASELINES)}, "
                         f"not {tc.rl_baseline!r}")
    if tc.rl_baseline == "mean" and tc.rl_samples < 2:
        raise ValueError("train.rl_baseline=mean needs train.rl_samples >= 2 (the mean of "
                         "an image's other samples)")
    if tc.rl_references < 1:
        raise ValueError("train.rl_references must be >= 1")
    if tc.rl_xent_weight < 0 or tc.rl_entropy_weight < 0:
        raise ValueError("train.rl_xent_weight and train.rl_entropy_weight must be >= 0")
    if tc.rl_reward not in rewards.REWARDS:
        raise ValueError(f"train.rl_reward must be one of {', '.join(rewards.REWARDS)}, "
                         f"not {tc.rl_reward!r}")


def images_per_batch(config: RunConfig) -> int:
    tc = config.train
    return tc.rl_images or max(1, config.pipeline.batch_size // tc.rl_samples)


def training_data(config: RunConfig, tokenizer,
                  share: pipeline.TrainingData | None = None) -> pipeline.TrainingData:
    """The phase's batches: images_per_batch images, each with rl_references
    captions (its references), padded to one fixed length. share: the
    cross-entropy phase's data, whose in-memory cache this reuses."""
    r = config.train.rl_references
    pc = dataclasses.replace(config.pipeline, captions_per_image=r, fixed_shapes=True,
                             batch_size=images_per_batch(config) * r)
    return pipeline.TrainingData(config.features.cache_dir, tokenizer, pc, share=share)


def end_word(config: RunConfig, vocab_size: int) -> int | None:
    """The id <end> takes as a word in the reward (train.rl_end_word): one past
    the vocabulary, so no word has it; None when <end> is not a word."""
    return vocab_size if config.train.rl_end_word else None


def as_reward_words(tokens, word: int | None):
    """tokens (..., T) -> the same with <end> as the word `word` (None: unchanged).
    Everything after a caption's <end> is <pad> already (sampling and the
    pipeline both write it), so the caption still ends there."""
    return tokens if word is None else tf.where(tokens == END_ID, word, tokens)


def document_frequencies(config: RunConfig, tokenizer) -> rewards.DocumentFrequencies:
    """The training split's n-gram document frequencies, which CIDEr-D's idf
    needs: counted once over the cached references and stored beside the cache
    (keyed by the vocabulary, as ids index it), not re-counted per step or run."""
    cache = config.features.cache_dir
    vocab_digest = io.digest_files([pipeline.vocabulary_path(
        pipeline.load_manifest(cache, "train"))])
    word = end_word(config, tokenizer.vocab_size)
    variant = "" if word is None else "end-"
    path = io.join(cache, f"{vocab_digest[:16]}-{variant}{DF_FILE}")
    if io.exists(path):
        return rewards.DocumentFrequencies.load(path)
    refs = [caps for caps in pipeline.references(cache, "train").values() if caps]
    # One tokenizer call for every caption (one per image took 30 s on the demo).
    flat = tokenizer.tokenize(tf.constant([c for caps in refs for c in caps]))
    rows = tf.ragged.map_flat_values(as_reward_words, flat, word).to_list()
    ids, start = [], 0
    for caps in refs:
        ids.append(rows[start:start + len(caps)])
        start += len(caps)
    df = rewards.document_frequencies(ids, tokenizer.vocab_size + (word is not None))
    df.save(path)
    log.info("document frequencies of %d training images written to %s", len(ids), path)
    return df


def sample_and_reward(decoder, features, references, reward_fn, config: RunConfig, seed):
    """features (I, L, C); references (I * R, Tr), image i's in rows i R .. i R + R - 1
    (rows of <pad> only: an image that fills the batch) ->

    tokens (I * K, max_len + 1) int32: <start> + each sampled caption, image i's K
        samples in rows i K .. i K + K - 1;
    advantage (I * K,) float32: reward - baseline;
    real (I * K,) float32: 0 for the samples of filling images;
    stats: per-replica sums (reward, baseline, samples) for logging.
    """
    tc = config.train
    k, r = tc.rl_samples, tc.rl_references
    max_len = pipeline.max_tokens(config.data.max_caption_words)
    images = tf.shape(features)[0]
    refs = tf.reshape(references, [images, r, -1])
    real = tf.cast(refs[:, 0, 0] != PAD_ID, tf.float32)  # (I,)
    sampled = decoding.sample(decoder, features, k, max_len, temperature=1.0, seed=seed,
                              no_repeat_ngram=0)[0]
    sampled = tf.reshape(sampled, [images * k, max_len])
    word = end_word(config, decoder.vocab_size)
    refs_words = as_reward_words(refs, word)
    reward = tf.reshape(reward_fn(as_reward_words(sampled, word),
                                  tf.repeat(refs_words, k, axis=0)), [images, k])
    if tc.rl_baseline == "mean":
        baseline = (tf.reduce_sum(reward, 1, keepdims=True) - reward) / (k - 1)
    else:
        greedy = decoding.greedy(decoder, features, max_len)[0]
        baseline = tf.tile(reward_fn(as_reward_words(greedy, word), refs_words)[:, None],
                           [1, k])
    advantage = tf.reshape(reward - baseline, [-1])
    tokens = tf.concat([tf.fill([images * k, 1], START_ID), sampled], axis=1)
    stats = {"reward": tf.reduce_sum(reward * real[:, None]),
             "baseline": tf.reduce_sum(baseline * real[:, None]),
             "samples": tf.reduce_sum(real) * k}
    return tokens, tf.stop_gradient(advantage), tf.repeat(real, k), stats


def policy_loss(decoder, features, tokens, advantage, real, global_samples: int,
                entropy_weight: float = 0.0):
    """-(advantage * log p(caption)) over each caption's real tokens (<end>
    included), summed and divided by the GLOBAL number of samples (so summing
    over replicas gives the mean), minus entropy_weight * the policy's entropy
    summed along each sample (the same mean); also the summed per-token entropy
    of the policy along the samples, and the token count, for logging."""
    logits, _ = decoder.teacher_forced(features, tokens, training=False)
    targets = tokens[:, 1:]
    mask = target_mask(targets) * real[:, None]
    logp = tf.nn.log_softmax(logits)
    chosen = tf.gather(logp, targets, batch_dims=2)
    caption_logp = tf.reduce_sum(chosen * mask, axis=1)
    entropy = tf.reduce_sum(-tf.reduce_sum(tf.exp(logp) * logp, axis=-1) * mask)
    loss = -tf.reduce_sum(advantage * caption_logp)
    if entropy_weight:
        loss -= entropy_weight * entropy
    return loss / tf.cast(global_samples, tf.float32), {
        "entropy": tf.stop_gradient(entropy), "tokens": tf.reduce_sum(mask)}


def mixed_loss(decoder, features, references, tokens, advantage, real, config: RunConfig):
    """policy_loss, plus train.rl_xent_weight x the cross-entropy of the batch's
    references (mean per reference over the global batch: caption_loss, as the
    first phase trains, dropout and the attention regulariser included)."""
    tc = config.train
    global_images = images_per_batch(config)
    loss, stats = policy_loss(decoder, features, tokens, advantage, real,
                              global_images * tc.rl_samples, tc.rl_entropy_weight)
    if tc.rl_xent_weight:
        xent, more = caption_loss(decoder, features, references,
                                  global_images * tc.rl_references, tc.attention_lambda,
                                  training=True)
        loss += tc.rl_xent_weight * xent
        stats = {**stats, "xent": more["xent"], "xent_tokens": more["tokens"]}
    return loss, stats
