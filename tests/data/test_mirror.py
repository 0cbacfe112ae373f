"""features.mirror: the train cache holds each image's mirror grid, and training
rows take it half the time, never for captions that name a side."""

import collections
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from tfcaption.data import features, pipeline, text
from tests.data.fixtures import make_dataset


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    config = make_dataset(root, count=12, bad=False)
    config.features.mirror = True
    for split in ("train", "val"):
        features.extract(config, split)
    tokenizer = text.Tokenizer(str(root / "cache" / "vocab.txt"), max_words=8)
    return config, tokenizer


def records(config, split: str) -> list[dict]:
    """Every record's features, as stored."""
    manifest = features.load_manifest(config.features.cache_dir, split)
    files = [str(features.io.join(manifest["dir"], n)) for n in manifest["shards"]]
    out = []
    for raw in tf.data.TFRecordDataset(files):
        ex = tf.train.Example.FromString(raw.numpy()).features.feature
        out.append({k: ex[k] for k in ex})
    return out


def grid(feature) -> np.ndarray:
    return np.frombuffer(feature.bytes_list.value[0], np.float16)


def test_the_train_cache_holds_the_backbone_run_on_each_flipped_image(cache):
    config, _ = cache
    extractor = features.Extractor(config)
    rows = records(config, "train")
    examples = {ex.image_id: ex for ex in features.load_examples(config.data, "train")}
    sides = 0
    for row in rows:
        ex = examples[row["image_id"].bytes_list.value[0].decode()]
        image = extractor.backbone.resize(features.decode_image(tf.io.read_file(ex.image)))
        flipped = extractor._forward(tf.reverse(image, [1])[None]).numpy().reshape(-1)
        np.testing.assert_allclose(grid(row["mirror"]), flipped, atol=1e-2)
        assert not np.allclose(grid(row["mirror"]), grid(row["features"]), atol=1e-2)
        named = any(w in c.split() for c in ex.captions for w in ("left", "right"))
        assert row["mirrorable"].int64_list.value[0] == (not named)
        sides += named
    assert 0 < sides < len(rows)  # both kinds are in the fixture
    # Only the train split is mirrored; its fingerprint says so.
    assert not any("mirror" in row for row in records(config, "val"))
    assert features.load_manifest(config.features.cache_dir, "train")["fingerprint"]["mirror"]
    assert "mirror" not in features.load_manifest(config.features.cache_dir,
                                                  "val")["fingerprint"]


def versions(config) -> dict[bytes, tuple[str, str, bool]]:
    """grid bytes -> (image id, "original" or "mirror", mirrorable)."""
    out = {}
    for row in records(config, "train"):
        image_id = row["image_id"].bytes_list.value[0].decode()
        ok = bool(row["mirrorable"].int64_list.value[0])
        out[grid(row["features"]).tobytes()] = (image_id, "original", ok)
        out[grid(row["mirror"]).tobytes()] = (image_id, "mirror", ok)
    return out


@pytest.mark.parametrize("k", [0, 3])
def test_rows_take_the_mirror_half_the_time_and_never_for_a_side(cache, k):
    config, tokenizer = cache
    pc = dataclasses.replace(config.pipeline, captions_per_image=k,
                             batch_size=6 if k else config.pipeline.batch_size)
    known = versions(config)
    refs = pipeline.references(config.features.cache_dir, "train")
    tokens_of = {i: {tuple(t) for t in tokenizer.tokenize(tf.constant(c)).to_list()}
                 for i, c in refs.items()}
    seen = collections.Counter()
    ds = pipeline.training_dataset(config.features.cache_dir, tokenizer, pc, epochs=8)
    for feats, tokens in ds:
        tokens = tokens.numpy().reshape(len(feats), max(k, 1), -1)
        for g, caps in zip(feats.numpy(), tokens):
            if not caps.any():
                continue  # a masked row
            image_id, version, ok = known[g.reshape(-1).tobytes()]
            for cap in caps:  # the grid is the captions' own image's, either way
                assert tuple(cap[cap > 0]) in tokens_of[image_id]
            seen[(ok, version)] += 1
    assert seen[(False, "mirror")] == 0 and seen[(False, "original")] > 0
    share = seen[(True, "mirror")] / (seen[(True, "mirror")] + seen[(True, "original")])
    assert 0.35 < share < 0.65, seen


def batches(ds) -> list:
    return [(f.numpy().tobytes(), t.numpy().tobytes()) for f, t in ds]


def test_a_resumed_or_streamed_run_draws_the_same_mirrors(cache):
    config, tokenizer = cache
    data = pipeline.TrainingData(config.features.cache_dir, tokenizer, config.pipeline)
    whole = batches(data.dataset(0, 3))
    n = data.steps_per_epoch
    assert batches(data.dataset(n + 3, 3)) == whole[n + 3:]
    streamed = dataclasses.replace(config.pipeline, cache_in_memory=False)
    other = pipeline.TrainingData(config.features.cache_dir, tokenizer, streamed)
    assert other.memory is None and batches(other.dataset(0, 3)) == whole


def test_turning_mirrors_on_or_off_remakes_the_train_cache_only(cache, caplog):
    config, _ = cache
    off = dataclasses.replace(config, features=dataclasses.replace(config.features,
                                                                   mirror=False))
    train = features.extract(off, "train")
    assert "mirror" not in train["fingerprint"]
    assert not any("mirror" in row for row in records(off, "train"))
    val_before = json.dumps(features.load_manifest(config.features.cache_dir, "val"))
    features.extract(off, "val")  # the val cache was never mirrored: nothing to do
    assert json.dumps(features.load_manifest(config.features.cache_dir, "val")) == val_before
    assert features.extract(config, "train")["fingerprint"]["mirror"]
