import collections
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tfcaption.data import features, pipeline, text
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
    for feats, tokens in ds:
        assert feats.dtype == tf.float16 and tokens.dtype == tf.int32
        assert feats.shape[1:] == (9, 512)
        # Padded to the batch's own longest caption, not to a global maximum.
        lengths = tf.reduce_sum(tf.cast(tokens != 0, tf.int32), axis=1).numpy()
        assert tokens.shape[1] == lengths.max()
        for grid, row, n in zip(feats.numpy(), tokens.numpy(), lengths):
            seen[(grids[grid_key(grid)], tuple(row[:n]))] += 1
    assert seen == expected


def test_epochs_are_shuffled_differently(cache):
    config, tokenizer = cache
    ds = pipeline.training_dataset(config.features.cache_dir, tokenizer, config.pipeline)
    first = [t.numpy().tolist() for _, t in ds]
    second = [t.numpy().tolist() for _, t in ds]
    assert first != second


def test_fixed_shapes_for_tpu(cache):
    config, tokenizer = cache
    config.pipeline.fixed_shapes = True
    try:
        ds = pipeline.training_dataset(config.features.cache_dir, tokenizer, config.pipeline)
    finally:
        config.pipeline.fixed_shapes = False
    feats_spec, tokens_spec = ds.element_spec
    assert tokens_spec.shape.as_list() == [5, 10]
    assert feats_spec.shape.as_list() == [5, None, None] or feats_spec.shape[0] == 5
    assert sum(1 for _ in ds) == 36 // 5  # the short remainder is dropped


def test_no_python_in_the_input_graph(cache):
    config, tokenizer = cache
    ds = pipeline.training_dataset(config.features.cache_dir, tokenizer, config.pipeline)
    graph = ds._as_serialized_graph().numpy()
    for op in (b"PyFunc", b"EagerPyFunc", b"NumpyFunction"):
        assert op not in graph


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
        assert tokens.shape[0] == k * feats.shape[0] and feats.shape[0] <= 3
        lengths = tf.reduce_sum(tf.cast(tokens != 0, tf.int32), axis=1).numpy()
        assert tokens.shape[1] == lengths.max()
        rows = [tuple(r[:n]) for r, n in zip(tokens.numpy(), lengths)]
        for i, grid in enumerate(feats.numpy()):
            image_id = grids[grid_key(grid)]
            mine = rows[i * k:(i + 1) * k]
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
