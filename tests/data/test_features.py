import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfcaption.config import DataConfig, FeatureConfig, RunConfig
from tfcaption.data import features, pipeline, synthetic, text
from tests.data.fixtures import WORDS, make_dataset


@pytest.fixture
def config(tmp_path):
    return make_dataset(tmp_path, count=10)


def cached_ids(cache_split_dir: str) -> list[str]:
    names = sorted(n for n in os.listdir(cache_split_dir) if n.endswith(".tfrecord"))
    ids = []
    for name in names:
        for record in tf.data.TFRecordDataset(os.path.join(cache_split_dir, name)):
            row = tf.io.parse_single_example(
                record, {"image_id": tf.io.FixedLenFeature([], tf.string)})
            ids.append(row["image_id"].numpy().decode())
    return ids


def test_extract_caches_every_good_image_and_reports_bad_ones(config, caplog):
    manifest = features.extract(config, "train")
    assert manifest["complete"] and manifest["count"] == 10
    assert manifest["grid_shape"] == [3, 3, 512] and manifest["backbone"] == "squeezenet"
    skipped = {os.path.basename(s["path"]): s["error"] for s in manifest["skipped"]}
    assert set(skipped) == {"corrupt.jpg", "truncated.jpg", "missing.jpg"}
    assert "NotFound" in skipped["missing.jpg"]
    for name in skipped:
        assert name in caplog.text  # reported by path, not only counted
    out = features.split_dir(config.features.cache_dir, "train")
    ids = cached_ids(out)
    assert len(ids) == len(set(ids)) == 10
    assert manifest["captions"] == 30
    vocab = open(os.path.join(config.features.cache_dir, "vocab.txt")).read().split()
    assert vocab[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and "circle" in vocab
    on_disk = json.load(open(os.path.join(out, "manifest.json")))
    assert on_disk["fingerprint"]["weights"] == "random:0"


def test_second_run_does_no_work(config, monkeypatch):
    features.extract(config, "train")

    def fail(*args, **kwargs):
        raise AssertionError("a complete cache was extracted again")

    monkeypatch.setattr(features.Extractor, "write_shards", fail)
    assert features.extract(config, "train")["count"] == 10


def test_interrupted_run_resumes_without_loss_or_duplicates(config, monkeypatch):
    real = features.Extractor._finish_shard
    calls = []

    def dies_on_third_shard(examples, path, done):
        calls.append(path)
        if len(calls) == 3:
            # Half a shard on disk under its temporary name, as a kill leaves it.
            open(f"{path}.tfrecord.tmp", "wb").write(b"partial")
            raise KeyboardInterrupt
        return real(examples, path, done)

    monkeypatch.setattr(features.Extractor, "_finish_shard", staticmethod(dies_on_third_shard))
    with pytest.raises(KeyboardInterrupt):
        features.extract(config, "train")
    out = features.split_dir(config.features.cache_dir, "train")
    assert len([f for f in os.listdir(out) if f.endswith(".tfrecord")]) == 2
    with pytest.raises(FileNotFoundError, match="no complete feature cache"):
        features.load_manifest(config.features.cache_dir, "train")
    monkeypatch.setattr(features.Extractor, "_finish_shard", staticmethod(real))
    manifest = features.extract(config, "train")
    ids = cached_ids(features.split_dir(config.features.cache_dir, "train"))
    assert sorted(ids) == sorted(set(ids)) and len(ids) == manifest["count"] == 10


def test_one_input_pipeline_for_all_shards(config, monkeypatch):
    """Decoding runs on across shard boundaries: one tf.data pipeline per run, not
    one per shard (each restart would leave the backbone waiting for a refill)."""
    real, built = features.Extractor._dataset, []
    monkeypatch.setattr(features.Extractor, "_dataset",
                        lambda self, examples: built.append(len(examples)) or real(self, examples))
    manifest = features.extract(config, "train")
    assert len(manifest["shards"]) >= 3 and len(built) == 1


def test_cached_grids_are_what_the_serving_path_computes(config):
    """Extraction batches resized uint8 images and normalises them in the forward
    pass; a SavedModel preprocesses image by image. Same features either way."""
    manifest = features.extract(config, "train")
    extractor = features.Extractor(config)
    backbone = extractor.backbone
    examples = {ex.image_id: ex for ex in features.load_examples(config.data, "train")}
    h, w, c = manifest["grid_shape"]
    out = features.split_dir(config.features.cache_dir, "train")
    record = next(iter(tf.data.TFRecordDataset(os.path.join(out, manifest["shards"][0]))))
    row = tf.io.parse_single_example(record, {
        "image_id": tf.io.FixedLenFeature([], tf.string),
        "features": tf.io.FixedLenFeature([], tf.string)})
    cached = tf.io.decode_raw(row["features"], tf.float16).numpy().reshape(h, w, c)
    image = features.decode_image(tf.io.read_file(examples[row["image_id"].numpy().decode()].image))
    assert image.shape[:2] != (64, 64)  # the resize path
    served = backbone(backbone.preprocess(image)[None])[0].numpy().astype(np.float16)
    # float16 rounding apart (batch size may change the convolution's summation order).
    np.testing.assert_allclose(cached.astype(np.float32), served.astype(np.float32),
                               rtol=2e-3, atol=1e-3 * float(np.abs(served).max()))


def test_shards_split_across_workers(config):
    first = features.extract(config, "train", shard=(0, 2))
    assert first == {"complete": False, "missing_shards": first["missing_shards"]}
    assert len(first["missing_shards"]) == 2
    manifest = features.extract(config, "train", shard=(1, 2))
    assert manifest["complete"] and manifest["count"] == 10
    assert features.parse_shard_spec("1/2") == (1, 2)
    with pytest.raises(ValueError):
        features.parse_shard_spec("2/2")


def shard_files(cache_split_dir: str) -> set[str]:
    return {n for n in os.listdir(cache_split_dir) if n.endswith(".tfrecord")}


def test_cache_of_other_inputs_is_remade_not_mixed_in(config, caplog):
    """Half a cache made with one backbone, the rest asked for with another: the
    stale shards go and every shard is made from the inputs asked for now."""
    out = features.split_dir(config.features.cache_dir, "train")
    features.extract(config, "train", shard=(0, 2))
    half = shard_files(out)
    config.features.seed = 1  # other random weights: other features
    manifest = features.extract(config, "train")
    assert "holds a cache of other inputs" in caplog.text and "random:1" in caplog.text
    assert manifest["complete"] and manifest["weights"] == "random:1"
    assert shard_files(out) == set(manifest["shards"]) and not half & set(manifest["shards"])
    # fire8 and fire9 give grids of the same shape: only the layer tells them apart.
    config.features.layer = "fire8_concat"
    again = features.extract(config, "train")
    assert again["fingerprint"]["layer"] == "fire8_concat"
    assert shard_files(out) == set(again["shards"]) and not set(manifest["shards"]) & set(
        again["shards"])
    assert len(cached_ids(out)) == again["count"] == 10


def first_grid(cache_split_dir: str, shard: str) -> np.ndarray:
    record = next(iter(tf.data.TFRecordDataset(os.path.join(cache_split_dir, shard))))
    row = tf.io.parse_single_example(record, {"features": tf.io.FixedLenFeature([], tf.string)})
    return np.frombuffer(row["features"].numpy(), np.float16)


def test_resnet50_and_resnet101_caches_are_told_apart(config):
    """Same grid shape, weights id ("random:0") and input size: only the backbone's
    name tells the two caches apart, and the second is made anew, not reused."""
    out = features.split_dir(config.features.cache_dir, "train")
    # 10 images in full batches: one trace of each (deep) forward pass, not two.
    config.features.backbone, config.features.batch_size = "resnet50", 5
    first = features.extract(config, "train")
    grid50 = first_grid(out, first["shards"][0])
    config.features.backbone = "resnet101"
    second = features.extract(config, "train")
    assert (first["backbone"], second["backbone"]) == ("resnet50", "resnet101")
    assert first["grid_shape"] == second["grid_shape"] == [2, 2, 2048]
    assert first["weights"] == second["weights"] and first["input_size"] == second["input_size"]
    assert first["fingerprint"] != second["fingerprint"]
    assert shard_files(out) == set(second["shards"]) and not set(first["shards"]) & set(
        second["shards"])
    grid101 = first_grid(out, second["shards"][0])
    assert grid50.shape == grid101.shape and np.abs(grid50 - grid101).max() > 1e-2
    assert np.isfinite(grid101).all() and second["count"] == 10


def test_changed_caption_text_remakes_the_cache(config):
    """Same images and ids, one caption edited: the records carry captions, so the
    cache is made again and holds the new text."""
    features.extract(config, "train")
    annotations = pathlib.Path(config.data.annotations)
    rows = [json.loads(line) for line in annotations.read_text().splitlines()]
    rows[0]["captions"][0] = "an edited caption"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    features.extract(config, "train")
    refs = pipeline.references(config.features.cache_dir, "train")
    assert "an edited caption" in [c for captions in refs.values() for c in captions]
    vocab = text.load_vocabulary(features.vocabulary_file(config.features.cache_dir))
    assert "edited" in vocab


def test_vocabulary_settings_remake_the_vocabulary_not_the_features(config, monkeypatch):
    cache = config.features.cache_dir
    first = features.extract(config, "train")
    size = len(text.load_vocabulary(features.vocabulary_file(cache)))
    assert first["vocabulary"]["size"] == size == 4 + len(set(WORDS))
    monkeypatch.setattr(features.Extractor, "write_shards",
                        lambda *a, **k: pytest.fail("the records do not depend on min_count"))
    config.data.max_vocab = 7
    assert features.extract(config, "train")["vocabulary"]["size"] == 7
    assert len(text.load_vocabulary(features.vocabulary_file(cache))) == 7
    config.data.max_vocab, config.data.min_count = 0, 1000
    assert features.extract(config, "train")["vocabulary"]["size"] == 4
    assert text.load_vocabulary(features.vocabulary_file(cache)) == list(text.SPECIALS)


def test_synthetic_world_of_another_image_size_remakes_the_cache(tmp_path):
    """Another image size can draw the same ids and captions (as seed 1 does
    for its first two train images at 64 and 80 px): only the world's settings
    tell the images apart."""
    root = str(tmp_path / "world")
    config = RunConfig(name="w", data=DataConfig(source="synthetic", root=root),
                       features=FeatureConfig(weights="random", input_size=64, batch_size=4,
                                              shard_size=4, cache_dir=str(tmp_path / "cache")))
    synthetic.generate(root, seed=1, counts=(2, 1, 1), image_size=64)
    named = lambda: [(ex.image_id, ex.image, ex.captions)  # noqa: E731
                     for ex in features.load_examples(config.data, "train")]
    before = named()
    first = features.extract(config, "train")
    synthetic.generate(root, seed=1, counts=(2, 1, 1), image_size=80)
    assert named() == before
    second = features.extract(config, "train")
    assert not set(second["shards"]) & set(first["shards"])
    assert second["fingerprint"]["world"]["image_size"] == 80


def test_large_image_is_resized(tmp_path):
    import numpy as np
    from PIL import Image
    config = make_dataset(tmp_path, count=1, bad=False)
    Image.fromarray(np.zeros((2500, 3000, 3), np.uint8)).save(tmp_path / "img" / "0000.jpg")
    assert features.extract(config, "train")["count"] == 1


@pytest.mark.integration
def test_sigkill_half_way_then_resume(tmp_path):
    """A real `kill -9` of the CLI while it writes shards; the re-run completes the cache."""
    config_file = tmp_path / "pipeline.py"
    make_dataset(tmp_path, count=40, bad=False)
    config_file.write_text(
        "from tests.data.fixtures import WORDS, make_dataset\nimport pathlib\n"
        f"CONFIG = make_dataset(pathlib.Path({str(tmp_path)!r}), count=40, bad=False)\n")
    cmd = [sys.executable, "-m", "tfcaption.cli", "extract", str(config_file), "--split", "train"]
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}
    out = features.split_dir(str(tmp_path / "cache"), "train")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = [n for n in os.listdir(out)] if os.path.isdir(out) else []
        if sum(n.endswith(".tfrecord") for n in done) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "manifest.json")), "killed too late to test"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = cached_ids(out)
    assert len(ids) == len(set(ids)) == 40
