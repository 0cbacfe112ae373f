"""Feature cache -> tf.data: training batches of (features, tokens), and images for decoding.

Training rows are (image, caption) pairs. An image's feature grid is parsed once
and shared by its captions (`Dataset.from_tensors(grid).repeat(n)` yields the
same buffer n times; nothing is copied until batching). Images are shuffled as
a whole, then rows are shuffled again in a smaller buffer so that one batch does
not hold all captions of one image.

With `captions_per_image` = K, a batch is instead batch_size / K images and K
captions of each: features (B / K, L, C) and tokens (B, T), image i's captions
in rows i K .. i K + K - 1. The decoder encodes each image once and shares it
with its K captions, which removes most of the step's encoding work (the
feature projection and attention keys are two thirds of a forward pass at
15x15 locations). tf.distribute splits both tensors in order, so as long as
every replica gets whole images the rows stay aligned.

Batches are padded to their own longest caption, with rows grouped by length
(`bucket_by_sequence_length`) so little of a batch is padding. For TPUs and XLA,
`fixed_shapes` pads every batch to the same length and drops the short last
batch, so the step compiles once.

Everything here is graph-only (no py_function), so the same dataset runs under
any tf.distribute strategy and on TPU hosts.
"""

from __future__ import annotations

import os

import tensorflow as tf

from tfcaption import io
from tfcaption.config import PipelineConfig
from tfcaption.data import text
from tfcaption.data.features import load_manifest

_SPEC = {
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "features": tf.io.FixedLenFeature([], tf.string),
    "captions": tf.io.VarLenFeature(tf.string),
}


def vocabulary_path(manifest: dict) -> str:
    return io.normpath(os.path.join(manifest["dir"], manifest["vocabulary"]["file"]))


def read_records(manifest: dict, shuffle_files: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Cache -> dataset of dicts: image_id (), features (locations, channels) float16,
    captions (n,) strings."""
    h, w, c = manifest["grid_shape"]
    files = [os.path.join(manifest["dir"], name) for name in manifest["shards"]]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle_files)

    def parse(serialized):
        row = tf.io.parse_single_example(serialized, _SPEC)
        grid = tf.reshape(tf.io.decode_raw(row["features"], tf.float16), [h * w, c])
        return {"image_id": row["image_id"], "features": grid,
                "captions": tf.sparse.to_dense(row["captions"])}

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def max_tokens(max_words: int) -> int:
    """Length of a fixed-shape token row: the words plus <start> and <end>."""
    return max_words + 2


def training_dataset(cache_dir: str, tokenizer: text.Tokenizer, cfg: PipelineConfig,
                     split_role: str = "train", batch_size: int | None = None,
                     repeat: bool = False) -> tf.data.Dataset:
    """Batches of (features (B, L, C) float16, tokens (B, T) int32, 0 = padding).

    batch_size: the global batch size (default cfg.batch_size).
    """
    manifest = load_manifest(cache_dir, split_role)
    batch_size = batch_size or cfg.batch_size
    ds = read_records(manifest, shuffle_files=not cfg.cache_in_memory, seed=cfg.seed)
    ds = ds.map(lambda row: (row["features"], tokenizer.tokenize(row["captions"]).to_tensor()),
                num_parallel_calls=tf.data.AUTOTUNE)
    if cfg.cache_in_memory:
        ds = ds.cache()
    image_buffer = manifest["count"] if cfg.cache_in_memory else min(manifest["count"], 1024)
    ds = ds.shuffle(image_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if cfg.captions_per_image:
        return _grouped(ds, tokenizer, cfg, batch_size).prefetch(tf.data.AUTOTUNE)

    def rows(grid, tokens):
        # Each caption row keeps its own length: padding is re-made per batch.
        lengths = tf.reduce_sum(tf.cast(tokens != text.PAD_ID, tf.int32), axis=1)
        captions = tf.data.Dataset.from_tensor_slices((tokens, lengths)).map(
            lambda row, n: row[:n])
        return tf.data.Dataset.zip((tf.data.Dataset.from_tensors(grid).repeat(), captions))

    ds = ds.flat_map(rows)
    ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed + 1, reshuffle_each_iteration=True)
    return _batch(ds, cfg, tokenizer, batch_size).prefetch(tf.data.AUTOTUNE)


def _batch(ds: tf.data.Dataset, cfg: PipelineConfig, tokenizer: text.Tokenizer, count: int,
           rows: tuple[int, ...] = ()) -> tf.data.Dataset:
    """Elements (grid, tokens (*rows, T)) -> batches of `count`, the tokens padded
    to the fixed length (fixed_shapes) or to each batch's longest, batches grouped
    by length."""
    if cfg.fixed_shapes:
        return ds.padded_batch(count, drop_remainder=True, padded_shapes=(
            [None, None], [*rows, max_tokens(tokenizer.max_words)]))
    boundaries = [b for b in cfg.bucket_boundaries if b > 0]
    return ds.bucket_by_sequence_length(
        lambda grid, tokens: tf.shape(tokens)[-1], bucket_boundaries=boundaries,
        bucket_batch_sizes=[count] * (len(boundaries) + 1),
        padded_shapes=([None, None], [*rows, None]), drop_remainder=False)


def _grouped(ds: tf.data.Dataset, tokenizer: text.Tokenizer, cfg: PipelineConfig,
             batch_size: int) -> tf.data.Dataset:
    """(grid, tokens (n, T)) per image -> batches of (grids (B / K, L, C), tokens (B, T))."""
    k = cfg.captions_per_image
    if batch_size % k:
        raise ValueError(f"pipeline.batch_size ({batch_size}) must be a multiple of "
                         f"pipeline.captions_per_image ({k})")

    def pick(row, seed):
        grid, tokens = row
        n = tf.shape(tokens)[0]
        # K of the n captions without repeats when n >= K, each at most
        # ceil(K / n) times otherwise; stateless, so a seeded run repeats.
        pool = tf.tile(tf.range(n), [(k + n - 1) // n])
        noise = tf.random.stateless_uniform(tf.shape(pool), seed=tf.stack([seed, seed // 7]))
        chosen = tf.gather(tokens, tf.gather(pool, tf.argsort(noise)[:k]))
        longest = tf.reduce_max(tf.reduce_sum(tf.cast(chosen != text.PAD_ID, tf.int32), axis=1))
        return grid, chosen[:, :longest]

    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=cfg.seed + 2)))
    ds = ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE)
    ds = _batch(ds, cfg, tokenizer, batch_size // k, rows=(k,))
    return ds.map(lambda grids, tokens: (grids, tf.reshape(tokens, [-1, tf.shape(tokens)[2]])))


def image_dataset(cache_dir: str, split_role: str, batch_size: int) -> tf.data.Dataset:
    """Batches of dicts image_id (B,), features (B, L, C) float16, in cache order,
    one row per image: what decoding and evaluation read."""
    manifest = load_manifest(cache_dir, split_role)
    ds = read_records(manifest).map(lambda row: {"image_id": row["image_id"],
                                                 "features": row["features"]})
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def references(cache_dir: str, split_role: str) -> dict[str, list[str]]:
    """image_id -> its raw reference captions, as cached."""
    manifest = load_manifest(cache_dir, split_role)
    ds = read_records(manifest).map(lambda row: (row["image_id"], row["captions"]))
    return {i.decode(): [c.decode("utf-8") for c in caps]
            for i, caps in ds.as_numpy_iterator()}
