"""Backbone -> sharded TFRecord feature cache, with a manifest that marks it complete.

Layout of one split's cache (`<cache_dir>/<split>/`):

    fingerprint.json             what the cache is made of; written first
    features-00003-of-00012.tfrecord  one record per image (float16 grid)
    features-00003-of-00012.json      the shard's ids, skipped files and inputs
    manifest.json                written last, once every shard is complete

With `features.mirror`, each train record also holds its image's left-right
mirror's grid (`mirror`) and whether the image may be mirrored (`mirrorable`:
no caption says left or right); see pipeline.TrainingData.

Shard k always holds examples [k*S, (k+1)*S) of the source's deterministic
order, so shards can be made in any order, by several machines (`--shard i/n`
takes every shard k with k % n == i) and by a run that resumes after a kill.
A shard is written under a temporary name (one per process) and renamed when
complete, so a shard file that exists is complete; `manifest.json` exists only
when every shard does. Readers refuse a cache without a manifest.

What a cache is made of (the fingerprint) is judged by content: the examples'
ids, image paths and caption text, the synthetic world's settings, the
backbone, and for the train split the vocabulary settings. Shard names end in
a digest of the inputs their records depend on, so a shard of other inputs is
never taken for one of these. When the inputs change, the cache is re-made in
place (stale shards removed); a change of the vocabulary settings alone, which
the records do not depend on, re-makes only the vocabulary and the manifest.

Images are read and decoded inside tf.data (no Python per image on the fast
path); an image that fails to read or decode is dropped there, found missing
afterwards, diagnosed once more to name the error, reported by path and listed
under `skipped` in the shard's sidecar and the manifest.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import re
import time

import numpy as np
import tensorflow as tf

from tfcaption import io
from tfcaption.config import RunConfig
from tfcaption.data import text
from tfcaption.data.example import Example, examples_digest
from tfcaption.data.sources import load_examples
from tfcaption.models.backbones import build_backbone, cell_centres

log = logging.getLogger("tfcaption.extract")

MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint.json"
VOCABULARY = "vocab.txt"
SHARD_SUFFIX = ".tfrecord"


def sidecar_name(shard: str) -> str:
    """A shard's sidecar, from its name or path with or without .tfrecord:
    features-00003-of-00012[.tfrecord] -> features-00003-of-00012.json."""
    stem = shard[: -len(SHARD_SUFFIX)] if shard.endswith(SHARD_SUFFIX) else shard
    return f"{stem}.json"


def split_dir(cache_dir: str, split_role: str) -> str:
    return os.path.join(cache_dir, split_role)


def shard_name(index: int, count: int, inputs: str = "") -> str:
    """inputs: the digest of what the records are made of (see _records_key)."""
    return f"features-{index:05d}-of-{count:05d}" + (f"-{inputs[:12]}" if inputs else "")


def vocabulary_file(cache_dir: str) -> str:
    """The vocabulary the train split's manifest builds (one for all splits)."""
    return io.join(cache_dir, VOCABULARY)


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes -> (h, w, 3) uint8; grayscale and CMYK become RGB."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


SIDE_WORDS = frozenset({"left", "right"})


def mirrorable(captions) -> bool:
    """False when a caption names a side: its mirror image would contradict it."""
    return not any(SIDE_WORDS.intersection(re.findall(r"[a-z]+", c.lower())) for c in captions)


def _serialize(image_id: str, grid: np.ndarray, ex: Example,
               mirror: np.ndarray | None = None) -> bytes:
    feature = {
        "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
        "features": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[grid.astype(np.float16).tobytes()])),
        "captions": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[c.encode("utf-8") for c in ex.captions])),
    }
    if mirror is not None:
        feature["mirror"] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[mirror.astype(np.float16).tobytes()]))
        feature["mirrorable"] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[int(mirrorable(ex.captions))]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _open_shard(path: str) -> tf.io.TFRecordWriter:
    """A writer of the shard's temporary file. A leftover of this process (a
    failed attempt) is removed first: ram:// would append to it."""
    tmp = io.temp_name(f"{path}.tfrecord")
    io.remove(tmp)
    return tf.io.TFRecordWriter(tmp)


def _diagnose(ex: Example) -> str:
    """Why an image was dropped by the fast path, in words a user can act on."""
    try:
        encoded = tf.io.read_file(ex.image) if isinstance(ex.image, str) else ex.image
        decode_image(encoded)
    except (tf.errors.OpError, OSError) as err:
        message = getattr(err, "message", str(err)).strip().splitlines()[0]
        return f"{type(err).__name__}: {message}"
    return "dropped by the input pipeline for an unknown reason"


class Extractor:
    """Runs one backbone over shards of examples; one instance per process."""

    def __init__(self, config: RunConfig):
        self.config = config
        fc = config.features
        self.backbone = build_backbone(fc.backbone, weights=fc.weights,
                                       input_size=fc.input_size, seed=fc.seed, layer=fc.layer,
                                       trainable_from=fc.trainable_from)
        # uint8 batches from resize(): normalised here, on the whole batch, rather
        # than image by image in the input pipeline, which shares the same CPUs.
        # One trace for every full batch; the short last batch adds one more.
        self._forward = tf.function(
            lambda x: tf.cast(self.backbone(self.backbone.normalize(x)), tf.float16),
            autograph=False)

    def _dataset(self, examples: list[Example]) -> tf.data.Dataset:
        sources = [ex.image if isinstance(ex.image, bytes) else ex.image.encode()
                   for ex in examples]
        is_path = [isinstance(ex.image, str) for ex in examples]

        def load(index, source, path):
            encoded = tf.cond(path, lambda: tf.io.read_file(source), lambda: source)
            return index, self.backbone.resize(decode_image(encoded))

        ds = tf.data.Dataset.from_tensor_slices((np.arange(len(examples)), sources, is_path))
        # Plain TensorFlow ops (tf.cond, not if): autograph need not transpile it.
        ds = ds.map(tf.autograph.experimental.do_not_convert(load),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors()
        ds = ds.batch(self.config.features.batch_size).prefetch(2)
        # tf.data's autotuner keeps re-optimising a pipeline whose consumer (the
        # backbone) is the slow part, and on a 2-core machine it takes CPU from
        # the forward pass: InceptionV3 extraction ran at 12.4 images/s with it
        # and 22.7 without, against 23.6 for the bare forward pass.
        options = tf.data.Options()
        options.autotune.enabled = False
        return ds.with_options(options)

    def write_shards(self, jobs: list[tuple[list[Example], str]], on_shard=None,
                     mirror: bool = False) -> list[dict]:
        """Extracts each (examples, path) job into `path`.tfrecord (+ .json sidecar);
        returns the sidecars. `on_shard(sidecar)` is called as each one completes.
        mirror: each record also holds the grid of the image flipped left-right.

        One input pipeline runs over all the jobs, so decoding never stops at a
        shard boundary: a pipeline per shard would drain and refill every few
        hundred images, with the backbone idle meanwhile. Rows come in order, so
        shard k is complete (and renamed) before shard k + 1 is written."""
        flat = [ex for examples, _ in jobs for ex in examples]
        ends = np.cumsum([len(examples) for examples, _ in jobs])
        sidecars: list[dict] = []
        state = {"job": 0, "writer": None, "done": []}

        def finish():
            j = state["job"]
            examples, path = jobs[j]
            writer = state["writer"] or _open_shard(path)
            writer.close()
            sidecars.append(self._finish_shard(examples, path, state["done"]))
            if on_shard:
                on_shard(sidecars[-1])
            state.update(job=j + 1, writer=None, done=[])

        def write(indices, grids, mirrors):
            for n, (i, grid) in enumerate(zip(indices, grids)):
                while i >= ends[state["job"]]:
                    finish()
                examples, path = jobs[state["job"]]
                if state["writer"] is None:
                    state["writer"] = _open_shard(path)
                first = ends[state["job"]] - len(examples)
                ex = examples[i - first]
                state["writer"].write(_serialize(ex.image_id, grid, ex,
                                                 None if mirrors is None else mirrors[n]))
                state["done"].append(int(i - first))

        # Records of batch k are serialised and written on a second thread while
        # the backbone runs batch k + 1 (TensorFlow releases the GIL), instead of
        # between forward passes. One writer thread keeps the records in order.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = None
            try:
                for indices, images in self._dataset(flat):
                    grids = self._forward(images).numpy()
                    # Flipped after resizing: the same pixels, mirrored.
                    mirrors = self._forward(tf.reverse(images, [2])).numpy() if mirror else None
                    if pending is not None:
                        pending.result()  # re-raises a failed write here
                    pending = pool.submit(write, indices.numpy(), grids, mirrors)
                if pending is not None:
                    pending.result()
                while state["job"] < len(jobs):  # the last shards, or ones all skipped
                    finish()
            finally:
                if pending is not None and not pending.done():
                    concurrent.futures.wait([pending])  # its error, if any, is raised above
                if state["writer"] is not None:
                    state["writer"].close()  # a .tmp file: never read as complete
        return sidecars

    def write_shard(self, examples: list[Example], path: str) -> dict:
        """write_shards for one shard."""
        return self.write_shards([(examples, path)])[0]

    @staticmethod
    def _finish_shard(examples: list[Example], path: str, done: list[int]) -> dict:
        """Reports the skipped images, then writes the sidecar and renames the shard
        into place (the rename is what makes it count as complete)."""
        kept = set(done)
        skipped = []
        for i, ex in enumerate(examples):
            if i not in kept:
                where = ex.image if isinstance(ex.image, str) else f"<bytes of {ex.image_id}>"
                reason = _diagnose(ex)
                log.warning("skipped %s: %s", where, reason)
                skipped.append({"image_id": ex.image_id, "path": where, "error": reason})
        sidecar = {"count": len(done), "image_ids": [examples[i].image_id for i in done],
                   # What the training plan needs to count a window's rows
                   # without reading its records.
                   "caption_counts": [len(examples[i].captions) for i in done],
                   "skipped": skipped}
        io.write_json(sidecar_name(path), sidecar)
        io.gfile.rename(io.temp_name(f"{path}.tfrecord"), f"{path}.tfrecord", overwrite=True)
        return sidecar


def _fingerprint(config: RunConfig, split_role: str, examples, backbone) -> dict:
    dc, fc = config.data, config.features
    fingerprint = {
        "source": dc.source, "root": io.abspath(dc.root), "annotations": dc.annotations,
        "split": getattr(dc, f"{split_role}_split"), "split_role": split_role,
        # The records hold the captions, and the vocabulary is counted from them.
        "examples": len(examples), "examples_sha1": examples_digest(examples),
        "backbone": fc.backbone, "weights": backbone.weights_id,
        # Only when set, so caches made before the option existed stay valid.
        **({"layer": backbone.layer} if backbone.layer else {}),
        **({"trainable_from": backbone.trainable_from} if backbone.trainable_from else {}),
        **({"mirror": True} if mirrored(config, split_role) else {}),
        "input_size": backbone.input_size, "grid_shape": list(backbone.grid_shape),
        "shard_size": fc.shard_size,
    }
    if dc.source == "synthetic":
        # Another image size redraws the same scenes with the same captions:
        # only the world's settings tell its images apart.
        from tfcaption.data import synthetic
        fingerprint["world"] = synthetic.world_settings(dc.root)
    if split_role == "train":
        fingerprint["vocabulary"] = {"min_count": dc.min_count, "max_vocab": dc.max_vocab}
    return fingerprint


def mirrored(config: RunConfig, split_role: str) -> bool:
    """Whether this split's records hold mirrors: the train split's, when asked."""
    return config.features.mirror and split_role == "train"


def _records_key(fingerprint: dict) -> str:
    """What the shards' records depend on: everything but the vocabulary settings."""
    return io.digest_json({k: v for k, v in fingerprint.items() if k != "vocabulary"})


def _remove_stale(out: str, names: list[str]) -> None:
    """Removes the manifest, then every shard file (and temporary file) not of
    `names`. A worker still writing one of `names` keeps its temporary file."""
    io.remove(io.join(out, MANIFEST))
    wanted = set(names)
    for name in io.listdir(out):
        if name.startswith("features-") and name.split(".")[0] not in wanted:
            io.remove(io.join(out, name))


def parse_shard_spec(spec: str) -> tuple[int, int]:
    """"i/n" -> (i, n): this machine takes every shard k with k % n == i."""
    try:
        i, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n, e.g. 0/4; got {spec!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {spec}: need 0 <= i < n")
    return i, n


def extract(config: RunConfig, split_role: str, shard: tuple[int, int] = (0, 1),
            extractor: Extractor | None = None) -> dict:
    """Fills the cache of one split; returns its manifest, or the progress so far
    when other workers still own missing shards."""
    examples = load_examples(config.data, split_role)
    if not examples:
        raise ValueError(f"the {split_role} split of {config.data.source} has no examples")
    out = split_dir(config.features.cache_dir, split_role)
    io.makedirs(out)
    extractor = extractor or Extractor(config)
    wanted = _fingerprint(config, split_role, examples, extractor.backbone)
    size = config.features.shard_size
    count = math.ceil(len(examples) / size)
    names = [shard_name(k, count, _records_key(wanted)) for k in range(count)]

    manifest_path = io.join(out, MANIFEST)
    if io.exists(manifest_path):
        manifest = io.read_json(manifest_path)
        if manifest["fingerprint"] == wanted:
            log.info("%s: cache complete, nothing to do (%s)", split_role, manifest_path)
            return manifest
    fingerprint_path = io.join(out, FINGERPRINT)
    have = io.read_json(fingerprint_path) if io.exists(fingerprint_path) else None
    if have is not None and have != wanted:
        diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
        log.warning("%s: %s holds a cache of other inputs (%s, as (cached, now)); "
                    "re-making it", split_role, out, diff)
    if have != wanted:
        _remove_stale(out, names)
        io.write_json(fingerprint_path, wanted)

    mine = [k for k in range(count) if k % shard[1] == shard[0]]
    todo = [k for k in mine if not io.exists(io.join(out, names[k]) + ".tfrecord")]
    start, made = time.perf_counter(), []

    def progress(sidecar):
        made.append(sidecar["count"])
        rate = sum(made) / (time.perf_counter() - start)
        log.info("%s: shard %d/%d written (%d images, %.1f images/s)",
                 split_role, todo[len(made) - 1] + 1, count, sidecar["count"], rate)

    if todo:
        extractor.write_shards([(examples[k * size:(k + 1) * size], io.join(out, names[k]))
                                for k in todo], on_shard=progress,
                                mirror=mirrored(config, split_role))

    missing = [n for n in names if not io.exists(io.join(out, f"{n}.tfrecord"))]
    if missing:
        log.info("%s: %d of %d shards complete; the rest belong to other workers",
                 split_role, count - len(missing), count)
        return {"complete": False, "missing_shards": missing}
    return _write_manifest(config, split_role, out, names, wanted, examples,
                           extractor.backbone.cell_centres())


def _write_manifest(config, split_role, out, names, fingerprint, examples, centres) -> dict:
    sidecars = [io.read_json(io.join(out, sidecar_name(n))) for n in names]
    skipped = [s for car in sidecars for s in car["skipped"]]
    dropped = {s["image_id"] for s in skipped}
    captions = [c for ex in examples if ex.image_id not in dropped for c in ex.captions]
    vocab_path = vocabulary_file(config.features.cache_dir)
    if split_role == "train":
        vocab = text.build_vocabulary(captions, config.data.min_count, config.data.max_vocab)
        text.save_vocabulary(vocab, vocab_path)
    manifest = {
        "complete": True,
        "fingerprint": fingerprint,
        **{k: fingerprint[k] for k in ("source", "split", "backbone", "weights",
                                        "input_size", "grid_shape")},
        "cell_centres": centres,
        "count": sum(car["count"] for car in sidecars),
        "captions": len(captions),
        "skipped": skipped,
        "shards": [f"{n}.tfrecord" for n in names],
        "vocabulary": {"file": os.path.join("..", VOCABULARY),
                       "min_count": config.data.min_count, "max_vocab": config.data.max_vocab,
                       "size": len(text.load_vocabulary(vocab_path))
                       if io.exists(vocab_path) else None},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    io.write_json(io.join(out, MANIFEST), manifest)
    log.info("%s: cache complete: %d images, %d skipped -> %s", split_role,
             manifest["count"], len(skipped), out)
    return manifest


def load_manifest(cache_dir: str, split_role: str) -> dict:
    """The manifest of a complete cache; a partial cache is refused, never read."""
    path = io.join(split_dir(cache_dir, split_role), MANIFEST)
    if not io.exists(path):
        raise FileNotFoundError(
            f"no complete feature cache at {os.path.dirname(path)} ({MANIFEST} missing); "
            f"run `tfcaption extract` for the {split_role} split first")
    manifest = io.read_json(path)
    manifest["dir"] = os.path.dirname(path)
    return manifest


def manifest_centres(manifest: dict) -> dict:
    """The grid's cell centres; caches written before they were recorded get them
    from the backbone's architecture."""
    if "cell_centres" in manifest:
        return manifest["cell_centres"]
    fp = manifest["fingerprint"]
    return cell_centres(fp["backbone"], fp["input_size"], fp.get("layer", ""))


def manifest_summary(manifest: dict) -> str:
    h, w, c = manifest["grid_shape"]
    return (f"{manifest['split']}: {manifest['count']} images, {manifest['captions']} captions, "
            f"{len(manifest['skipped'])} skipped, {manifest['backbone']} {h}x{w}x{c}")


