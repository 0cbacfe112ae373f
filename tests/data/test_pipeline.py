import collections
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tfcaption.data import batches, features, pipeline, text
from tests.data.fixtures import make_dataset


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    config = make_dataset(root, count=12, bad=False)
    features.extract(config, "train")
    vocab = str(root / "cache" / "vocab.txt")
    return config, text.Tokenizer(vocab, max_words=8)


def grid_key(grid) -> bytes:
    return np.asarray(grid).tobytes()


def test_one_row_per_image_caption_pair_per_epoch(cache):
    config, tokenizer = cache
    refs = pipeline.references(config.features.cache_dir, "train")
    grids = {}
    for row in pipeline.read_records(features.load_manifest(config.features.cache_dir, "train")):
        grids[grid_key(row["features"])] = row["image_id"].numpy().decode()
    expected = collections.Counter()
    for image_id, captions in refs.items():
        for tokens in tokenizer.tokenize(tf.constant(captions)).to_list():
            expected[(image_id, tuple(tokens))] += 1
    seen = collections.Counter()
    ds = pipeline.training_dataset(config.features.cache_dir, tokenizer, config.pipeline)
    bounds = [4, 6, 10]  # the configured (4, 6) and max_words + 2
    assert ds.element_spec[0].shape.as_list() == [5, 9, 512]  # static batch and grid
    batches = 0
    for feats, tokens in ds:
        batches += 1
        assert feats.dtype == tf.float16 and tokens.dtype == tf.int32
        lengths = tf.reduce_sum(tf.cast(tokens != 0, tf.int32), axis=1).numpy()
        # Padded to the smallest boundary that holds the longest caption.
        assert tokens.shape[1] == min(b for b in bounds if b >= lengths.max())
        for grid, row, n in zip(feats.numpy(), tokens.numpy(), lengths):
            if n:  # rows of padding only fill the last batch to 5
                seen[(grids[grid_key(grid)], tuple(row[:n]))] += 1
    assert seen == expected
    assert batches == 8  # ceil(36 / 5): nothing dropped


def test_epochs_are_shuffled_differently(cache):
    config, tokenizer = cache
    ds = pipeline.training_dataset(config.features.cache_dir, tokenizer, config.pipeline,
                                   epochs=2)
    both = [t.numpy().tolist() for _, t in ds]
    assert len(both) == 16 and both[:8] != both[8:]
    again = [t.numpy().tolist() for _, t in ds]
    assert again == both  # a function of (seed, epoch), not of the iteration


def test_fixed_shapes_for_tpu(cache):
    config, tokenizer = cache
    config.pipeline.fixed_shapes = True
    try:
        ds = pipeline.training_dataset(config.features.cache_dir, tokenizer, config.pipeline)
    finally:
        config.pipeline.fixed_shapes = False
    feats_spec, tokens_spec = ds.element_spec
    assert tokens_spec.shape.as_list() == [5, 10]
    assert feats_spec.shape.as_list() == [5, 9, 512]
    rows = sum(int(tf.reduce_sum(tf.cast(t[:, 0] != 0, tf.int32))) for _, t in ds)
    assert rows == 36  # the short last batch is filled with masked rows, not dropped


def test_no_python_in_the_input_graph(cache):
    config, tokenizer = cache
    ds = pipeline.training_dataset(config.features.cache_dir, tokenizer, config.pipeline)
    graph = ds._as_serialized_graph().numpy()
    for op in (b"PyFunc", b"EagerPyFunc", b"NumpyFunction"):
        assert op not in graph


def test_no_function_of_the_pipelines_goes_through_autograph(cache, monkeypatch):
    """Each mapped function is plain TensorFlow ops; autograph would transpile
    it all the same (~3 s of a tiny training process, pipeline._plain)."""
    from tensorflow.python.autograph.impl import api
    converted, real = [], api.converted_call
    def spy(f, *args, **kwargs):
        # TensorFlow's own functions pass through here too, unconverted.
        if str(getattr(f, "__module__", "")).startswith("tfcaption"):
            converted.append(f.__qualname__)
        return real(f, *args, **kwargs)

    monkeypatch.setattr(api, "converted_call", spy)
    config, tokenizer = cache
    cache_dir = config.features.cache_dir
    for k, memory in ((0, True), (2, False)):  # in memory; one window at a time
        cfg = dataclasses.replace(config.pipeline, captions_per_image=k, batch_size=4,
                                  cache_in_memory=memory)
        next(iter(pipeline.TrainingData(cache_dir, tokenizer, cfg).dataset(0, 1)))
    next(iter(pipeline.replica_slices(pipeline.training_dataset(cache_dir, tokenizer, cfg),
                                      2, range(1, 2))))
    next(iter(pipeline.image_dataset(cache_dir, "train", 5, static=True)))
    pipeline.references(cache_dir, "train")
    features.extract(config, "val")  # the images' decoding
    assert converted == []


def test_images_and_references_for_decoding(cache):
    config, _ = cache
    batches = list(pipeline.image_dataset(config.features.cache_dir, "train", batch_size=5))
    ids = [i.decode() for b in batches for i in b["image_id"].numpy()]
    assert len(ids) == len(set(ids)) == 12
    refs = pipeline.references(config.features.cache_dir, "train")
    assert sorted(refs) == sorted(ids) and all(len(c) == 3 for c in refs.values())


def test_partial_cache_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `tfcaption extract`"):
        pipeline.image_dataset(str(tmp_path), "train", batch_size=2)


@pytest.mark.parametrize("k", [2, 5])  # fewer, then more than an image's 3 captions
def test_captions_grouped_by_image(cache, k):
    """K captions of each image per epoch, in rows i K .. i K + K - 1 of its batch;
    with fewer than K captions, each is used before any repeats."""
    config, tokenizer = cache
    cfg = dataclasses.replace(config.pipeline, captions_per_image=k, batch_size=3 * k)
    refs = pipeline.references(config.features.cache_dir, "train")
    grids = {grid_key(row["features"]): row["image_id"].numpy().decode() for row in
             pipeline.read_records(features.load_manifest(config.features.cache_dir, "train"))}
    own = {i: {tuple(t) for t in tokenizer.tokenize(tf.constant(c)).to_list()}
           for i, c in refs.items()}
    seen = []
    for feats, tokens in pipeline.training_dataset(config.features.cache_dir, tokenizer, cfg):
        assert tokens.shape[0] == k * feats.shape[0] and feats.shape[0] == 3
        lengths = tf.reduce_sum(tf.cast(tokens != 0, tf.int32), axis=1).numpy()
        assert tokens.shape[1] >= lengths.max()
        rows = [tuple(r[:n]) for r, n in zip(tokens.numpy(), lengths)]
        for i, grid in enumerate(feats.numpy()):
            mine = rows[i * k:(i + 1) * k]
            if not any(mine):
                continue  # a masked image filling the last batch
            image_id = grids[grid_key(grid)]
            assert set(mine) <= own[image_id]
            assert len(set(mine)) == min(k, len(own[image_id]))
            seen.append(image_id)
    assert sorted(seen) == sorted(refs)  # every image once per epoch


def test_grouped_fixed_shapes_and_a_batch_that_is_not_whole_images(cache):
    config, tokenizer = cache
    cfg = dataclasses.replace(config.pipeline, captions_per_image=2, batch_size=6,
                              fixed_shapes=True)
    ds = pipeline.training_dataset(config.features.cache_dir, tokenizer, cfg)
    feats_spec, tokens_spec = ds.element_spec
    assert feats_spec.shape[0] == 3 and tokens_spec.shape.as_list() == [6, 10]
    assert sum(1 for _ in ds) == 12 // 3
    with pytest.raises(ValueError, match="multiple of"):
        pipeline.training_dataset(config.features.cache_dir, tokenizer,
                                  dataclasses.replace(cfg, batch_size=5))


def batches_of(ds):
    return [(f.numpy().tobytes(), t.numpy().tolist()) for f, t in ds]


@pytest.mark.parametrize("k", [0, 2])
def test_streamed_and_in_memory_give_the_same_batches_and_resume_anywhere(cache, k):
    """The order is the plan's: the same whether the cache is in memory or read
    one window (here one shard) at a time; starting at step s gives the batches
    from s on, without the windows before it."""
    config, tokenizer = cache
    cfg = dataclasses.replace(config.pipeline, captions_per_image=k, batch_size=4,
                              shuffle_window=4)
    memory = pipeline.TrainingData(config.features.cache_dir, tokenizer, cfg)
    streamed = pipeline.TrainingData(config.features.cache_dir, tokenizer,
                                     dataclasses.replace(cfg, cache_in_memory=False))
    assert len(memory.windows) == 3 and memory.memory is not None and streamed.memory is None
    everything = batches_of(memory.dataset(0, 2))
    assert len(everything) == 2 * memory.steps_per_epoch
    assert batches_of(streamed.dataset(0, 2)) == everything
    first = memory.batches_per_window[memory.schedule(0, 2)[0][1]]
    for start in (1, first + 1, memory.steps_per_epoch + 2):
        assert batches_of(streamed.dataset(start, 2)) == everything[start:]
        # Windows already trained on are not in the schedule: never read.
        skipped = len(streamed.schedule(0, 2)) - len(streamed.schedule(start, 2))
        done, whole = 0, 0
        for _, w, _ in streamed.schedule(0, 2):
            if done + streamed.batches_per_window[w] > start:
                break
            done, whole = done + streamed.batches_per_window[w], whole + 1
        assert skipped == whole and (whole > 0) == (start >= first)
    windows_order = [w for e, w, _ in memory.schedule(0, 2)]
    assert windows_order[:3] != windows_order[3:] or k  # epochs visit windows differently


def test_static_image_batches_fill_the_last_batch(cache):
    config, _ = cache
    batches = list(pipeline.image_dataset(config.features.cache_dir, "train", batch_size=5,
                                          static=True))
    assert [b["features"].shape[0] for b in batches] == [5, 5, 5]
    ids = [i.decode() for b in batches for i in b["image_id"].numpy()]
    assert ids[-3:] == ["", "", ""] and len(set(ids[:12])) == 12


def test_a_streamed_cache_without_caption_counts_counts_them_from_the_records(cache,
                                                                           monkeypatch):
    """Caches made before the sidecars recorded caption counts: the counts are read
    from the records (the captions only), and the plan is the same."""
    config, tokenizer = cache
    cfg = dataclasses.replace(config.pipeline, cache_in_memory=False, shuffle_window=4)
    with_counts = pipeline.TrainingData(config.features.cache_dir, tokenizer, cfg)
    real = pipeline.io.read_json

    def without_counts(path):
        data = real(path)
        if isinstance(data, dict):
            data.pop("caption_counts", None)
        return data

    monkeypatch.setattr(pipeline.io, "read_json", without_counts)
    counted = pipeline.TrainingData(config.features.cache_dir, tokenizer, cfg)
    monkeypatch.undo()
    assert counted.batches_per_window == with_counts.batches_per_window
    assert counted.caption_ranges == with_counts.caption_ranges
    assert batches_of(counted.dataset(0, 1)) == batches_of(with_counts.dataset(0, 1))


def test_each_buckets_batches_are_spread_over_the_window():
    """A bucket's batches come at even intervals (a shuffle would leave runs of
    one bucket: in the synthetic world, of one kind of caption), every batch
    exactly once, and the order still depends on the seed."""
    bucket = tf.constant([0] * 40 + [1] * 20 + [2] * 10 + [3] * 2)
    order = batches.spread_order(bucket, 4, batches._seed(0, 0, 3)).numpy()
    assert sorted(order) == list(range(72))
    placed = bucket.numpy()[order]
    counts = [40, 20, 10, 2]
    for b, count in enumerate(counts):
        gaps = np.diff(np.flatnonzero(placed == b))
        # Between two of its batches, each other bucket has at most its share.
        most = 1 + sum(int(np.ceil(n / count)) for c, n in enumerate(counts) if c != b)
        assert gaps.max() <= most, (b, gaps)
    # No two batches of bucket 1 (every 3.6th slot) side by side.
    assert not np.any(np.diff(np.flatnonzero(placed == 1)) == 1)
    other = batches.spread_order(bucket, 4, batches._seed(0, 1, 3)).numpy()
    assert not np.array_equal(order, other)
