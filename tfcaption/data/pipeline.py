"""Feature cache -> tf.data: training batches of (features, tokens), and images for decoding.

Training batches follow the plan in `batches.py`: a pure function of (seed,
epoch, window) and the cached captions, with a fixed number of batches per
epoch, exactly `batch_size` rows in every batch (masked rows fill the last
batch of a window) and tokens padded to a bucket boundary. So the train step
sees one shape per bucket, and a run resumed at step s starts at the window
and offset of step s without reading what it trained on before.

The cache is either held in memory (`cache_in_memory`, read once) or streamed
one window of shards at a time; both give the same batches.

With `captions_per_image` = K, a batch is batch_size / K images and K captions
of each: features (B / K, L, C) and tokens (B, T), image i's captions in rows
i K .. i K + K - 1. The decoder encodes each image once and shares it with its
K captions.

Everything here is graph-only (no py_function), so the same dataset runs under
any tf.distribute strategy and on TPU hosts.
"""

from __future__ import annotations

import os

import tensorflow as tf

from tfcaption import io
from tfcaption.config import PipelineConfig
from tfcaption.data import batches, text
from tfcaption.data.features import load_manifest, sidecar_name

# tf.data runs autograph over every function it maps, unless told not to: it
# transpiles Python that has no control flow on tensors here (each is plain
# TensorFlow ops), ~3 s of a tiny training process's 10 (cProfile).
_plain = tf.autograph.experimental.do_not_convert

_SPEC = {
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "features": tf.io.FixedLenFeature([], tf.string),
    "captions": tf.io.VarLenFeature(tf.string),
}


def vocabulary_path(manifest: dict) -> str:
    return io.normpath(os.path.join(manifest["dir"], manifest["vocabulary"]["file"]))


_MIRROR_SPEC = {"mirror": tf.io.FixedLenFeature([], tf.string),
                "mirrorable": tf.io.FixedLenFeature([], tf.int64)}


def has_mirrors(manifest: dict) -> bool:
    """Whether the cache's records hold mirrors (features.mirror, train split)."""
    return bool(manifest["fingerprint"].get("mirror"))


def _parsed(records: tf.data.Dataset, manifest: dict, mirrors: bool = False
            ) -> tf.data.Dataset:
    """mirrors: also parse each record's mirror grid and mirrorable flag."""
    h, w, c = manifest["grid_shape"]
    spec = {**_SPEC, **_MIRROR_SPEC} if mirrors else _SPEC

    def grid(raw):
        return tf.reshape(tf.io.decode_raw(raw, tf.float16), [h * w, c])

    def parse(serialized):
        row = tf.io.parse_single_example(serialized, spec)
        out = {"image_id": row["image_id"], "features": grid(row["features"]),
               "captions": tf.sparse.to_dense(row["captions"])}
        if mirrors:
            out.update(mirror=grid(row["mirror"]), mirrorable=row["mirrorable"] > 0)
        return out

    return records.map(_plain(parse), num_parallel_calls=tf.data.AUTOTUNE)


def read_records(manifest: dict) -> tf.data.Dataset:
    """Cache -> dataset of dicts in cache order: image_id (), features (locations,
    channels) float16, captions (n,) strings."""
    files = [io.join(manifest["dir"], name) for name in manifest["shards"]]
    # Read in sequence (not interleaved): the in-memory cache and the streamed
    # windows index images by their place in shard order.
    return _parsed(tf.data.TFRecordDataset(files, buffer_size=1 << 22), manifest)


def max_tokens(max_words: int) -> int:
    """Length of a fixed-shape token row: the words plus <start> and <end>."""
    return max_words + 2


def _shard_counts(manifest: dict) -> tuple[list[int], list[list[int]] | None]:
    """Images per shard, and captions per image of each shard when the sidecars
    record them (caches made before they did: None, counted when read)."""
    images, captions = [], []
    for name in manifest["shards"]:
        sidecar = io.read_json(io.join(manifest["dir"], sidecar_name(name)))
        images.append(sidecar["count"])
        captions.append(sidecar.get("caption_counts"))
    return images, None if any(c is None for c in captions) else captions


def _window_tensors(records: tf.data.Dataset, count, tokenizer: text.Tokenizer) -> dict:
    """`count` parsed records -> one dict: features (n, L, C), the captions' tokens
    (R, T), each caption's image (R,), each image's first caption and count (n,);
    with mirrors, also mirror (n, L, C) and mirrorable (n,)."""
    # The exact count: batch() preallocates batch_size rows.
    whole = records.map(_plain(lambda row: {k: v for k, v in row.items() if k != "image_id"}))
    rows = whole.ragged_batch(tf.cast(count, tf.int64)).get_single_element()
    captions = rows.pop("captions")
    counts = tf.cast(captions.row_lengths(), tf.int32)
    return {**rows,
            "tokens": tokenizer.tokenize(captions.flat_values).to_tensor(),
            "caption_image": tf.cast(captions.value_rowids(), tf.int32),
            "first_caption": tf.cast(captions.row_starts(), tf.int32),
            "caption_count": counts}


def _caption_counts(files: list[str]) -> list[int]:
    """Captions per image, in cache order, parsing nothing but the captions."""
    spec = {"captions": tf.io.VarLenFeature(tf.string)}
    ds = tf.data.TFRecordDataset(files).map(
        _plain(lambda r: tf.size(tf.io.parse_single_example(r, spec)["captions"].values)),
        num_parallel_calls=tf.data.AUTOTUNE)
    return [int(n) for batch in ds.batch(4096).as_numpy_iterator() for n in batch]


class TrainingData:
    """The training split as a sequence of batches: `dataset(start_step, epochs)`.

    rows_per_batch: batch_size captions, or batch_size / K images.
    steps_per_epoch: the same every epoch (see batches.py).
    """

    def __init__(self, cache_dir: str, tokenizer: text.Tokenizer, cfg: PipelineConfig,
                 split_role: str = "train", batch_size: int | None = None,
                 share: "TrainingData | None" = None):
        """share: another TrainingData of the same cache and tokenizer whose
        in-memory copy this one reuses (the SCST phase batches the split the
        cross-entropy phase holds already: one copy in RAM, not two)."""
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, cfg.seed
        self.manifest = manifest = load_manifest(cache_dir, split_role)
        self.mirrors = has_mirrors(manifest)
        self.batch_size = batch_size or cfg.batch_size
        self.k = cfg.captions_per_image
        if self.k and self.batch_size % self.k:
            raise ValueError(f"pipeline.batch_size ({self.batch_size}) must be a multiple of "
                             f"pipeline.captions_per_image ({self.k})")
        self.rows_per_batch = self.batch_size // self.k if self.k else self.batch_size
        self.pad_lengths = batches.boundaries(cfg.bucket_boundaries,
                                              max_tokens(tokenizer.max_words), cfg.fixed_shapes)
        h, w, c = manifest["grid_shape"]
        self.grid = (h * w, c)
        images, captions = _shard_counts(manifest)
        self.files = [io.join(manifest["dir"], n) for n in manifest["shards"]]
        self.memory = None
        starts = [sum(images[:i]) for i in range(len(images))]
        if cfg.cache_in_memory and share is not None and share.memory is not None \
                and share.manifest == manifest and share.tokenizer is tokenizer:
            self.memory = share.memory
        elif cfg.cache_in_memory:
            self.memory = _window_tensors(self._records(self.files), sum(images), tokenizer)
        if self.memory is not None:
            counts = self.memory["caption_count"].numpy().tolist()
            captions = [counts[s:s + n] for s, n in zip(starts, images)]
        elif captions is None:  # a cache older than the counts in its sidecars
            counts = _caption_counts(self.files)
            captions = [counts[s:s + n] for s, n in zip(starts, images)]
        per_window = max(1, cfg.shuffle_window // max(1, max(images)))
        self.windows = [list(range(i, min(i + per_window, len(images))))
                        for i in range(0, len(images), per_window)]
        image_start = [0]
        caption_start = [0]
        for n, caps in zip(images, captions):
            image_start.append(image_start[-1] + n)
            caption_start.append(caption_start[-1] + sum(caps))
        # Each window's [first, last) image and caption of the in-memory cache.
        self.image_ranges = [(image_start[w[0]], image_start[w[-1] + 1]) for w in self.windows]
        self.caption_ranges = [(caption_start[w[0]], caption_start[w[-1] + 1])
                               for w in self.windows]
        rows = [(b - a) for a, b in (self.image_ranges if self.k else self.caption_ranges)]
        self.batches_per_window = batches.batches_per_window(rows, self.rows_per_batch)
        self.steps_per_epoch = sum(self.batches_per_window)

    def schedule(self, start_step: int, epochs: int) -> list[tuple[int, int, int]]:
        """(epoch, window, batches to skip) from global step start_step to the
        end of epoch `epochs`: whole windows already trained are left out."""
        first, offset = divmod(start_step, self.steps_per_epoch)
        out = []
        for epoch in range(first, epochs):
            for w in batches.window_order(len(self.windows), self.seed, epoch).numpy():
                skip = 0
                if epoch == first:
                    if offset >= self.batches_per_window[w]:
                        offset -= self.batches_per_window[w]
                        continue
                    skip, offset = offset, 0
                out.append((epoch, int(w), skip))
        return out

    def dataset(self, start_step: int = 0, epochs: int = 1) -> tf.data.Dataset:
        """Global batches (features (rows_per_batch, L, C) float16, tokens (batch, T)
        int32, 0 = padding) from start_step to the end of epoch `epochs`."""
        table = self.schedule(start_step, epochs)
        # An empty table still needs one row to give the dataset its element spec.
        rows = table or [(epochs, 0, 0)]
        ds = tf.data.Dataset.from_tensor_slices(tuple(tf.constant(c, tf.int32)
                                                      for c in zip(*rows)))
        ds = ds.flat_map(_plain(self._window_batches))
        return (ds if table else ds.take(0)).prefetch(2)

    def _records(self, files) -> tf.data.Dataset:
        # Read in sequence, as read_records: rows are indexed by their place.
        return _parsed(tf.data.TFRecordDataset(files, buffer_size=1 << 22), self.manifest,
                       self.mirrors)

    def _load(self, window) -> dict:
        if self.memory is not None:
            m = self.memory
            i0, i1 = tf.unstack(tf.gather(tf.constant(self.image_ranges), window))
            c0, c1 = tf.unstack(tf.gather(tf.constant(self.caption_ranges), window))
            per_image = {k: m[k][i0:i1] for k in ("features", "caption_count", "mirror",
                                                   "mirrorable") if k in m}
            return {**per_image, "tokens": m["tokens"][c0:c1],
                    "caption_image": m["caption_image"][c0:c1] - i0,
                    "first_caption": m["first_caption"][i0:i1] - c0}
        files = tf.ragged.constant([[self.files[s] for s in w] for w in self.windows])[window]
        i0, i1 = tf.unstack(tf.gather(tf.constant(self.image_ranges), window))
        return _window_tensors(self._records(files), i1 - i0, self.tokenizer)

    def _window_batches(self, epoch, window, skip) -> tf.data.Dataset:
        data = self._load(window)
        lengths = tf.reduce_sum(tf.cast(data["tokens"] != text.PAD_ID, tf.int32), axis=1)
        chosen = None
        if self.k:  # rows are images: K captions each, bucketed by the longest
            picks = batches.choose_captions(data["caption_count"], self.k,
                                            batches.caption_seed(self.seed, epoch, window))
            chosen = data["first_caption"][:, None] + picks
            lengths = tf.reduce_max(tf.gather(lengths, chosen), axis=1)
        flips = None
        if self.mirrors:  # each row (caption, or image with its K) drawn once an epoch
            image_of_row = tf.range(tf.shape(lengths)[0]) if self.k else data["caption_image"]
            flips = batches.mirror_rows(tf.gather(data["mirrorable"], image_of_row),
                                        batches.mirror_seed(self.seed, epoch, window))
        rows, pad_to = batches.plan(lengths, self.rows_per_batch, self.pad_lengths,
                                    self.seed, epoch, window)
        plan = tf.data.Dataset.from_tensor_slices((rows, pad_to)).skip(tf.cast(skip, tf.int64))
        return plan.map(_plain(lambda r, t: self._assemble(data, chosen, r, t, flips)))

    def _assemble(self, data: dict, chosen, rows, pad_to, flips=None):
        valid = rows >= 0
        rows = tf.maximum(rows, 0)
        if self.k:
            images, captions = rows, tf.gather(chosen, rows)  # (n,), (n, K)
        else:
            images, captions = tf.gather(data["caption_image"], rows), rows
        if flips is None:
            feats = tf.gather(data["features"], images)
        else:
            # Each row's grid gathered once, from the originals or the mirrors
            # (not both, then a choice: twice the bytes moved per batch).
            side = tf.cast(tf.gather(flips, rows), tf.int32)
            where = tf.dynamic_partition(tf.range(tf.size(images)), side, 2)
            which = tf.dynamic_partition(images, side, 2)
            feats = tf.dynamic_stitch(where, [tf.gather(data["features"], which[0]),
                                              tf.gather(data["mirror"], which[1])])
        tokens = batches.pad_tokens(tf.gather(data["tokens"], captions), pad_to)
        keep = tf.reshape(valid, [-1] + [1] * (tokens.shape.rank - 1))
        tokens = tf.where(keep, tokens, text.PAD_ID)  # masked rows: no tokens at all
        tokens = tf.reshape(tokens, [self.batch_size, -1])
        length = self.pad_lengths[0] if len(self.pad_lengths) == 1 else None
        return (tf.ensure_shape(feats, [self.rows_per_batch, *self.grid]),
                tf.ensure_shape(tokens, [self.batch_size, length]))


def training_dataset(cache_dir: str, tokenizer: text.Tokenizer, cfg: PipelineConfig,
                     split_role: str = "train", batch_size: int | None = None,
                     epochs: int = 1) -> tf.data.Dataset:
    """`epochs` epochs of global batches from the start (see TrainingData)."""
    return TrainingData(cache_dir, tokenizer, cfg, split_role, batch_size).dataset(0, epochs)


def replica_slices(ds: tf.data.Dataset, replicas: int, mine: range) -> tf.data.Dataset:
    """Global batches -> the per-replica batches of the replicas in `mine`, in
    order: replica r gets rows [r n, (r + 1) n) of every tensor (n = rows /
    replicas), so grouped batches keep whole images with their captions."""
    def split(*tensors):
        # At most one unknown dimension (the tokens' length): -1 stands for it.
        parts = [tf.reshape(t, [replicas, t.shape[0] // replicas,
                                *(-1 if d is None else d for d in t.shape[1:])])
                 [mine.start:mine.stop] for t in tensors]
        return tf.data.Dataset.from_tensor_slices(tuple(parts))

    if replicas == 1:
        return ds
    return ds.flat_map(_plain(split))


def image_dataset(cache_dir: str, split_role: str, batch_size: int,
                  static: bool = False) -> tf.data.Dataset:
    """Batches of dicts image_id (B,), features (B, L, C) float16, in cache order,
    one row per image: what decoding and evaluation read. static: every batch
    has batch_size rows, the last one filled with rows whose image_id is ""."""
    manifest = load_manifest(cache_dir, split_role)
    ds = read_records(manifest).map(_plain(lambda row: {"image_id": row["image_id"],
                                                        "features": row["features"]}))
    ds = ds.batch(batch_size)
    if static:
        def fill(batch):
            short = batch_size - tf.shape(batch["image_id"])[0]
            return {"image_id": tf.pad(batch["image_id"], [[0, short]]),
                    "features": tf.pad(batch["features"], [[0, short], [0, 0], [0, 0]])}
        h, w, c = manifest["grid_shape"]
        ds = ds.map(_plain(fill)).map(_plain(lambda b: {
            "image_id": tf.ensure_shape(b["image_id"], [batch_size]),
            "features": tf.ensure_shape(b["features"], [batch_size, h * w, c])}))
    return ds.prefetch(tf.data.AUTOTUNE)


def references(cache_dir: str, split_role: str) -> dict[str, list[str]]:
    """image_id -> its raw reference captions, as cached."""
    manifest = load_manifest(cache_dir, split_role)
    ds = read_records(manifest).map(_plain(lambda row: (row["image_id"], row["captions"])))
    return {i.decode(): [c.decode("utf-8") for c in caps]
            for i, caps in ds.as_numpy_iterator()}
