"""Diversity of a split's captions, for metrics.json (see tfcaption.diversity).

Two sets are measured:
    captions   the searched captions evaluation scores (one per image): distinct-1/2,
               vocabulary, repeated-bigram rate, and novelty against the training
               captions
    samples    with decode.num_captions = N > 1, N captions per image drawn by
               decoding.sample at decode.temperature (top-k, top-p, seed and the
               n-gram ban of config.decode): the same measures over all of them,
               plus self-BLEU-4 among each image's N

Captions are compared as the scores see them: both sides through
text.normalize, split on spaces. A training caption longer than the decoder's
word budget can never be reproduced, so it only ever makes captions look novel;
that is rare (the budget is set above almost every caption).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfcaption import decoding, diversity
from tfcaption.data import pipeline, text
from tfcaption.data.features import load_manifest


def normalised_words(captions: list[str]) -> list[list[str]]:
    if not captions:
        return []
    return [diversity.words(c.decode("utf-8"))
            for c in text.normalize(tf.constant(captions)).numpy()]


def training_captions(cache_dir: str) -> set[tuple[str, ...]] | None:
    """Every cached train-split reference, normalised; None without a train cache."""
    try:
        refs = pipeline.references(cache_dir, "train")
    except FileNotFoundError:
        return None
    return {tuple(c) for c in normalised_words([c for cs in refs.values() for c in cs])}


def sample_split(config, split: str, decoder, tokenizer, max_len: int,
                 progress: bool = True) -> dict[str, list[str]]:
    """image_id -> decode.num_captions sampled captions, in cache order. Each batch
    folds its index into the seed: otherwise every batch would reuse the first
    batch's noise, row for row."""
    d, n = config.decode, config.decode.num_captions
    manifest = load_manifest(config.features.cache_dir, split)
    h, w, c = manifest["grid_shape"]

    @tf.function(input_signature=[tf.TensorSpec([None, h * w, c], tf.float16),
                                  tf.TensorSpec([2], tf.int64)], autograph=False)
    def draw(features, seed):
        tokens = decoding.sample(decoder, features, n, max_len, d.temperature, d.top_k,
                                 d.top_p, seed, d.no_repeat_ngram)[0]
        found = tokenizer.detokenize(tf.reshape(tokens, [-1, max_len]))
        return tf.reshape(found, [-1, n])

    bar = keras.utils.Progbar(manifest["count"], verbose=1 if progress else 0, unit_name="image")
    samples, done = {}, 0
    batches = pipeline.image_dataset(config.features.cache_dir, split, config.eval.batch_size)
    for index, batch in enumerate(batches):
        found = draw(batch["features"], tf.constant([d.seed, index], tf.int64)).numpy()
        for image_id, row in zip(batch["image_id"].numpy(), found):
            samples[image_id.decode()] = [c.decode("utf-8") for c in row]
        done += len(found)
        bar.update(done)
    return samples


def summarise(captions: dict[str, str], samples: dict[str, list[str]] | None,
              training: set | None) -> dict:
    """-> {"captions": measures, "samples": measures + self_bleu_4 (when sampled)}."""
    out = {"captions": diversity.summary(normalised_words(list(captions.values())), training)}
    if samples:
        ids = list(samples)
        flat = normalised_words([c for i in ids for c in samples[i]])
        n = len(samples[ids[0]])
        groups = [flat[k * n:(k + 1) * n] for k in range(len(ids))]
        out["samples"] = {**diversity.summary(flat, training),
                          "self_bleu_4": diversity.self_bleu(groups, 4)}
    return out


def split_diversity(config, split: str, captions: dict[str, str], decoder, tokenizer,
                    max_len: int, progress: bool = True) -> dict:
    """What evaluate() stores under "diversity" (see the module docstring)."""
    samples = None
    if config.decode.num_captions > 1:
        if progress:
            print(f"  sampling {config.decode.num_captions} captions per image "
                  f"(temperature {config.decode.temperature}) ...", flush=True)
        samples = sample_split(config, split, decoder, tokenizer, max_len, progress)
    training = training_captions(config.features.cache_dir)
    out = summarise(captions, samples, training)
    if training is None:
        out["note"] = "no train-split cache: novelty not measured"
    if samples:
        out["samples"].update(decoding.sampled_settings(config))
        # A few of them, for a reader of metrics.json to see what was measured.
        out["samples"]["examples"] = {i: samples[i] for i in list(samples)[:3]}
    return out
