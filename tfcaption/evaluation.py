"""Scoring a split: decode every cached image, score with coco-caption, check attention.

Reads the feature cache and a checkpoint; writes <eval.out_dir>/<split>/
    results.json   COCO results format, [{"image_id", "caption"}], what the
                   coco-caption evaluation server and published tables read
    metrics.json   BLEU-1..4, METEOR, ROUGE_L, CIDEr-D (SPICE when installed),
                   attention correctness where the source has boxes, diversity
                   (distinct-n, vocabulary, novelty, repeated bigrams; with
                   decode.num_captions > 1 also of N samples per image and their
                   self-BLEU-4), and what was scored: split, checkpoint (path,
                   and the digest of its content and of the vocabulary), beam,
                   count; with eval.search = "sample" also "search", the
                   draw's settings. Written last, so its presence means the
                   stage is complete.

Run again with the same checkpoint content (not its path: a retrain writes the
same path with other weights), vocabulary, cached split and search settings,
it returns the stored metrics without decoding anything.
"""

from __future__ import annotations

import contextlib
import io as stdio
import os

import keras
import numpy as np
import tensorflow as tf

from tfcaption import (attention_correctness, checkpoints, decoding, diversity_eval, io,
                       metrics)
from tfcaption.config import RunConfig
from tfcaption.data import pipeline, sources, text
from tfcaption.data.features import load_manifest, manifest_centres


def spice_available() -> bool:
    """SPICE needs Stanford CoreNLP 3.6.0 next to pycocoevalcap's spice jar, which
    pycocoevalcap downloads on first use; evaluation never downloads, it only uses
    SPICE when the jars are already there."""
    try:
        import pycocoevalcap.spice as spice
    except ImportError:
        return False
    lib = os.path.join(os.path.dirname(spice.__file__), "lib")
    return metrics.java_available() and all(
        os.path.exists(os.path.join(lib, f"stanford-corenlp-3.6.0{suffix}.jar"))
        for suffix in ("", "-models"))


def _spice(candidates: dict[str, str], references: dict[str, list[str]]) -> float:
    """SPICE on PTB-tokenized text, as coco-caption's own evaluation runs it."""
    from pycocoevalcap.spice.spice import Spice
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    ids = sorted(candidates)
    tokenizer = PTBTokenizer()
    refs = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in ids})
    cands = tokenizer.tokenize({i: [{"caption": candidates[i]}] for i in ids})
    with contextlib.redirect_stdout(stdio.StringIO()):
        value, _ = Spice().compute_score(refs, cands)
    return float(value)


def coco_image_id(image_id: str):
    """COCO's results format has integer ids; other datasets keep their names."""
    return int(image_id) if image_id.isdigit() else image_id


def max_len(config: RunConfig) -> int:
    """The search's step budget, also fixed into the SavedModel."""
    return config.eval.max_len or pipeline.max_tokens(config.data.max_caption_words)


def _settings(config: RunConfig, split: str, checkpoint: str) -> dict:
    """What the stored metrics depend on: same settings, same numbers. The
    checkpoint's path is kept to be shown, and compared by its content."""
    ec = config.eval
    cache = load_manifest(config.features.cache_dir, split)["fingerprint"]
    settings = {"split": split, "checkpoint": checkpoint,
                **checkpoints.decoder_key(config, checkpoint),
                "cache_sha1": io.digest_json(cache), "beam": ec.beam_size,
                "length_penalty": ec.length_penalty, "max_len": max_len(config)}
    if config.decode.no_repeat_ngram:  # only when set: metrics.json without it stay valid
        settings["no_repeat_ngram"] = config.decode.no_repeat_ngram
    if config.decode.num_captions > 1:  # sampled diversity: the draw's settings
        settings["sampled"] = decoding.sampled_settings(config)
    if _sampling(config):  # the scored captions are drawn, not searched
        d = config.decode
        settings["search"] = {"method": "sample", "temperature": d.temperature,
                              "top_k": d.top_k, "top_p": d.top_p, "seed": d.seed}
    return settings


# Settings _settings adds only when set: absent means off, on both sides.
_OPTIONAL = ("no_repeat_ngram", "sampled", "search")
SEARCHES = ("beam", "sample")


def _sampling(config: RunConfig) -> bool:
    if config.eval.search not in SEARCHES:
        raise ValueError(f"eval.search is {config.eval.search!r}; one of {SEARCHES}")
    return config.eval.search == "sample"


def _same(stored: dict, settings: dict) -> bool:
    return all(stored.get(k) == v for k, v in settings.items() if k != "checkpoint") \
        and all(stored.get(k) == settings.get(k) for k in _OPTIONAL)


def _boxes(config: RunConfig, split: str) -> dict:
    """image_id -> its object boxes, for the images that have any."""
    return {ex.image_id: ex.boxes for ex in sources.load_examples(config.data, split)
            if ex.boxes}


def decode_split(config: RunConfig, split: str, decoder, tokenizer, manifest: dict,
                 boxes: dict, progress: bool = True):
    """-> (image_id -> caption in cache order, attention-correctness rows). The
    search runs in one tf.function per batch shape; greedy when beam_size is 1.
    With eval.search = "sample", one caption per image drawn at decode.temperature
    (top_k, top_p); batch i draws with the seed (decode.seed, i), as
    diversity_eval.sample_split does, so batches do not share their noise."""
    ec, d, steps = config.eval, config.decode, max_len(config)
    sampling = _sampling(config)
    h, w, c = manifest["grid_shape"]
    vocab = np.asarray(text.load_vocabulary(pipeline.vocabulary_path(manifest)))
    centres = manifest_centres(manifest) if boxes else None

    @tf.function(input_signature=[tf.TensorSpec([None, h * w, c], tf.float16),
                                  tf.TensorSpec([2], tf.int64)], autograph=False)
    def search(features, seed):
        if sampling:
            found = decoding.sample(decoder, features, 1, steps, d.temperature, d.top_k,
                                    d.top_p, seed, d.no_repeat_ngram)
            tokens, lengths, _, attention = (x[:, 0] for x in found)
        else:
            tokens, lengths, _, attention = decoding.beam(
                decoder, features, ec.beam_size, steps, ec.length_penalty, d.no_repeat_ngram)
        return tokenizer.detokenize(tokens), tokens, lengths, attention

    count = load_manifest(config.features.cache_dir, split)["count"]
    bar = keras.utils.Progbar(count, verbose=1 if progress else 0, unit_name="image")
    captions, rows, done = {}, [], 0
    batches = pipeline.image_dataset(config.features.cache_dir, split, ec.batch_size)
    for index, batch in enumerate(batches):
        seed = tf.constant([d.seed, index], tf.int64)
        found, tokens, lengths, attention = (x.numpy() for x in search(batch["features"], seed))
        for k, image_id in enumerate(batch["image_id"].numpy()):
            image_id = image_id.decode()
            captions[image_id] = found[k].decode("utf-8")
            if image_id in boxes:
                # Step t produced tokens[t] while looking at attention[t]. <end>
                # names nothing; a caption cut at max_len has none.
                steps = tokens[k, :int(lengths[k])]
                steps = steps[steps != text.END_ID]
                words = [str(word) for word in vocab[steps]]
                maps = attention[k, :len(steps)].reshape(len(steps), h, w)
                rows += attention_correctness.caption_rows(words, maps, boxes[image_id], centres)
        done += len(found)
        bar.update(done)
    return captions, rows


def score_captions(candidates: dict[str, str], references: dict[str, list[str]],
                   progress: bool = True) -> tuple[dict, list[str]]:
    """coco-caption's scorers on PTB-tokenized text, saying which one is running:
    METEOR and SPICE take the longest."""
    notes = []
    announce = (lambda name: print(f"  scoring {'BLEU-1..4' if name == 'BLEU' else name} ...",
                                   flush=True)) if progress else None
    scores = metrics.score(candidates, references, tokenize="ptb", announce=announce)
    if not metrics.java_available():
        notes.append("java not found: METEOR skipped, captions normalised without "
                     "coco-caption's PTB tokenizer (scores not comparable to published ones)")
    if spice_available():
        if progress:
            print("  scoring SPICE ...", flush=True)
        scores["SPICE"] = _spice(candidates, references)
    else:
        notes.append("SPICE skipped: Stanford CoreNLP 3.6.0 jars are not in "
                     "pycocoevalcap/spice/lib (python -m pycocoevalcap.spice.get_stanford_models "
                     "fetches them)")
    return scores, notes


def evaluate(config: RunConfig, split_role: str | None = None, checkpoint: str | None = None,
             progress: bool = True) -> dict:
    """Decodes `split_role` (default config.eval.split) with beam config.eval.beam_size,
    scores it and writes results.json and metrics.json; returns the metrics.json dict.
    Already done for the same checkpoint, split and search: returns what is stored."""
    split = split_role or config.eval.split
    checkpoint = checkpoints.chosen_checkpoint(config.train.train_dir, checkpoint)
    settings = _settings(config, split, checkpoint)
    out = io.join(config.eval.out_dir, split)
    metrics_file = io.join(out, "metrics.json")
    if io.exists(metrics_file):
        stored = io.read_json(metrics_file)
        if _same(stored, settings):
            if progress:
                print(f"evaluate {split}: already scored for {checkpoint} (beam "
                      f"{settings['beam']}) -> {metrics_file}")
            return stored

    decoder, tokenizer, manifest, checkpoint = checkpoints.restore_decoder(config, checkpoint)
    if progress:
        search = "greedy" if config.eval.beam_size == 1 else f"beam {config.eval.beam_size}"
        if _sampling(config):
            search = f"sampling at temperature {config.decode.temperature}"
        print(f"evaluate {split}: decoding ({search}) with {checkpoint}")
    boxes = _boxes(config, split)
    captions, rows = decode_split(config, split, decoder, tokenizer, manifest, boxes, progress)
    io.write_json(io.join(out, "results.json"),
                [{"image_id": coco_image_id(i), "caption": c} for i, c in captions.items()])

    refs = pipeline.references(config.features.cache_dir, split)
    scores, notes = score_captions(captions, {i: refs[i] for i in captions}, progress)
    result = {**settings, "count": len(captions), "metrics": scores,
              "tokenize": "ptb" if metrics.java_available() else "simple"}
    if boxes:
        result["attention_correctness"] = attention_correctness.summarise(rows)
    result["diversity"] = diversity_eval.split_diversity(config, split, captions, decoder,
                                                         tokenizer, max_len(config), progress)
    if notes:
        result["notes"] = notes
    io.write_json(metrics_file, result)
    if progress:
        print(f"evaluate {split}: {len(captions)} images scored -> {metrics_file}")
    return result
