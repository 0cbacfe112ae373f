import json
import os
import sys
import types

import numpy as np
import pytest

from tfcaption.config import DataConfig
from tfcaption.data import sources
from tfcaption.data.example import Box, Example


# -- Flickr8k -----------------------------------------------------------------

def test_flickr8k_dev_on_the_real_data(flickr8k_root):
    examples = sources.flickr8k(str(flickr8k_root), "dev")
    assert len(examples) == 1000
    assert len({ex.image_id for ex in examples}) == 1000
    for ex in examples:
        assert len(ex.captions) == 5
        assert os.path.isabs(ex.image) and os.path.exists(ex.image)
        assert ex.image_id == os.path.basename(ex.image) and ex.image_id.endswith(".jpg")
    # The split file's order, and captions in the order #0..#4.
    text = flickr8k_root / "Flickr8k_text"
    first = (text / "Flickr_8k.devImages.txt").read_text().split()[0]
    assert examples[0].image_id == first
    lines = [line.split("\t")[1].strip()
             for line in (text / "Flickr8k.token.txt").read_text().splitlines()
             if line.startswith(first + "#")]
    assert examples[0].captions == tuple(lines)
    assert sources.flickr8k(str(flickr8k_root), "val") == examples


def test_flickr8k_missing_split_names_the_file(flickr8k_root):
    with pytest.raises(FileNotFoundError, match=r"'test'.*Flickr_8k\.testImages\.txt"):
        sources.flickr8k(str(flickr8k_root), "test")
    with pytest.raises(ValueError, match="not 'testing'"):
        sources.flickr8k(str(flickr8k_root), "testing")


def test_flickr8k_orders_captions_and_skips_images_without_any(tmp_path):
    text = tmp_path / "Flickr8k_text"
    text.mkdir()
    (text / "Flickr8k.token.txt").write_text(
        "b.jpg#1\tsecond\nb.jpg#0\tfirst \na.jpg#0\t  \nc.jpg#0\tonly\n")
    (text / "Flickr_8k.trainImages.txt").write_text("b.jpg\na.jpg\nnone.jpg\nc.jpg\n")
    with pytest.warns(UserWarning) as caught:
        examples = sources.flickr8k(str(tmp_path), "train")
    messages = " ".join(str(w.message) for w in caught)
    assert "none.jpg" in messages and "a.jpg: no caption left" in messages
    assert [ex.image_id for ex in examples] == ["b.jpg", "c.jpg"]
    assert examples[0].captions == ("first", "second")
    # Image files need not exist: the feature extractor reports missing ones.
    assert examples[0].image == str(tmp_path / "Flicker8k_Dataset" / "b.jpg")


# -- Karpathy JSON --------------------------------------------------------------

def _sentences(*raws):
    return [{"raw": raw, "tokens": raw.split()} for raw in raws]


def test_karpathy_coco_ids_restval_and_paths(tmp_path):
    images = [
        {"filepath": "val2014", "filename": "v10.jpg", "imgid": 0, "cocoid": 10,
         "split": "restval", "sentences": _sentences("A restval image. ")},
        {"filepath": "train2014", "filename": "t9.jpg", "imgid": 1, "cocoid": 9,
         "split": "train", "sentences": _sentences("A dog.", "Two dogs.")},
        {"filepath": "val2014", "filename": "v3.jpg", "imgid": 2, "cocoid": 3,
         "split": "val", "sentences": _sentences("A cat.")},
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))

    train = sources.karpathy(str(path), str(tmp_path / "coco"), "train")
    assert [ex.image_id for ex in train] == ["9", "10"]  # numeric order, restval included
    assert train[0].image == str(tmp_path / "coco" / "train2014" / "t9.jpg")
    assert train[0].captions == ("A dog.", "Two dogs.")
    assert train[1].captions == ("A restval image.",)
    strict = sources.karpathy(str(path), str(tmp_path / "coco"), "train", restval_in_train=False)
    assert [ex.image_id for ex in strict] == ["9"]
    assert [ex.image_id for ex in sources.karpathy(str(path), str(tmp_path), "val")] == ["3"]
    with pytest.raises(ValueError, match=r"'dev'.*\['restval', 'train', 'val'\]"):
        sources.karpathy(str(path), str(tmp_path), "dev")


def test_karpathy_flickr_uses_file_names(tmp_path):
    images = [{"filename": name, "imgid": i, "split": "test", "sentences": _sentences("x", "")}
              for i, name in enumerate(["b.jpg", "a.jpg"])]
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr8k"}))
    with pytest.warns(UserWarning) as caught:
        examples = sources.karpathy(str(path), "imgs", "test")
    assert sorted(str(w.message) for w in caught) == [
        "a.jpg: dropped 1 empty caption(s)", "b.jpg: dropped 1 empty caption(s)"]
    assert [ex.image_id for ex in examples] == ["a.jpg", "b.jpg"]
    assert examples[0].image == os.path.abspath(os.path.join("imgs", "a.jpg"))


# -- COCO through tensorflow-datasets (mocked, offline) ------------------------

def _fake_coco(self, split, decoders=None, read_config=None, shuffle_files=False):
    """Stands in for the builder's TFRecord reader (FileReaderBuilder._as_dataset).

    mock_data's own random examples cannot be used here: once a decoder is
    passed (SkipDecoding), it encodes them, and it draws the length of each
    field of the `objects` Sequence independently, which encode_example rejects
    ("The length of all elements of one sequence should be the same"). So the
    examples are written by hand, serialized with the builder's real
    FeaturesDict and parsed back with the caller's decoders: the path a
    prepared dataset's records take.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    features = self.info.features
    first = {"train": 9, "restval": 10, "val": 100, "test": 200}[str(split)]
    records = []
    for image_id in (first, first + 1000):
        records.append(features.serialize_example({
            "image": np.full((8, 8, 3), 128, np.uint8),
            "image/filename": f"{image_id}.jpg",
            "image/id": image_id,
            "objects": {"area": [4, 9], "id": [1, 2], "is_crowd": [False, False],
                        "bbox": [tfds.features.BBox(0.1, 0.2, 0.5, 0.6),
                                 tfds.features.BBox(0.0, 0.0, 1.0, 1.0)],
                        "label": [3, 17]},
            "captions": {"text": [f" image {image_id} ", "  "], "id": [1, 2]},
        }))
    ds = tf.data.Dataset.from_tensor_slices(records)
    return ds.map(lambda record: features.deserialize_example(record, decoders=decoders))


def test_coco_through_mocked_tfds(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(as_dataset_fn=_fake_coco):
        names = tfds.builder("coco_captions").info.features["objects"]["label"].names
        with pytest.warns(UserWarning, match="dropped 1 empty"):
            train = sources.coco("train", str(tmp_path))
            strict = sources.coco("train", str(tmp_path), restval_in_train=False)
            test = sources.coco("test")
    assert [ex.image_id for ex in train] == ["9", "10", "1009", "1010"]  # restval in, numeric
    assert [ex.image_id for ex in strict] == ["9", "1009"]
    assert [ex.image_id for ex in test] == ["200", "1200"]
    for ex in train:
        assert isinstance(ex.image, bytes) and ex.image[:2] == b"\xff\xd8"  # JPEG, not pixels
        assert ex.captions == (f"image {ex.image_id}",)
        for box in ex.boxes:
            assert 0 <= box.x0 < box.x1 <= 1 and 0 <= box.y0 < box.y1 <= 1
    # tfds' [ymin, xmin, ymax, xmax] becomes x0, y0, x1, y1; labels are category names.
    dog, whole = train[0].boxes
    assert (dog.label, whole.label) == (names[3], names[17])
    assert (dog.x0, dog.y0, dog.x1, dog.y1) == pytest.approx((0.2, 0.1, 0.6, 0.5))
    assert (whole.x0, whole.y0, whole.x1, whole.y1) == (0, 0, 1, 1)


# -- JSONL and CSV --------------------------------------------------------------

def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_jsonl_groups_rows_by_image_in_first_seen_order(tmp_path):
    box = Box("dog", 0.1, 0.2, 0.3, 0.4)
    _write_jsonl(tmp_path / "c.jsonl", [
        {"image": "z.jpg", "caption": "z one", "boxes": [box.to_json()]},
        {"image": "a.jpg", "captions": ["a one", " a two "]},
        "",
        {"image": "z.jpg", "caption": "z two", "boxes": [box.to_json()]},
        {"image": "/abs/k.png", "caption": "k", "image_id": "k-1"},
    ])
    examples = sources.jsonl(str(tmp_path / "c.jsonl"), str(tmp_path / "img"))
    assert examples == [
        Example("z.jpg", str(tmp_path / "img" / "z.jpg"), ("z one", "z two"), (box,)),
        Example("a.jpg", str(tmp_path / "img" / "a.jpg"), ("a one", "a two")),
        Example("k-1", "/abs/k.png", ("k",)),
    ]


def test_jsonl_splits_by_file_name_or_by_column(tmp_path):
    _write_jsonl(tmp_path / "c_val.jsonl", [{"image": "v.jpg", "caption": "v", "split": "x"}])
    # "{split}" picks the file; a split field inside it is then not a filter.
    examples = sources.jsonl(str(tmp_path / "c_{split}.jsonl"), str(tmp_path), "val")
    assert [ex.image_id for ex in examples] == ["v.jpg"]
    with pytest.raises(FileNotFoundError, match=r"c_test\.jsonl for split 'test'"):
        sources.jsonl(str(tmp_path / "c_{split}.jsonl"), str(tmp_path), "test")

    _write_jsonl(tmp_path / "all.jsonl", [
        {"image": "t.jpg", "caption": "t", "split": "train"},
        {"image": "v.jpg", "caption": "v", "split": "val"},
    ])
    assert [ex.image_id for ex in sources.jsonl(str(tmp_path / "all.jsonl"), "", "val")] \
        == ["v.jpg"]
    assert len(sources.jsonl(str(tmp_path / "all.jsonl"), "")) == 2  # no split: every row
    with pytest.raises(ValueError, match=r"'test'.*\['train', 'val'\]"):
        sources.jsonl(str(tmp_path / "all.jsonl"), "", "test")
    # Without a split column, every split is the whole file.
    _write_jsonl(tmp_path / "plain.jsonl", [{"image": "p.jpg", "caption": "p"}])
    assert len(sources.jsonl(str(tmp_path / "plain.jsonl"), "", "test")) == 1


@pytest.mark.parametrize("line, message", [
    ('{"image": "a.jpg", "caption": ', "not JSON"),
    ('{"caption": "no image"}', "missing 'image'"),
    ('{"image": "a.jpg"}', "missing 'caption'"),
    ('{"image": "a.jpg", "captions": "not a list"}', "list of strings"),
    ('{"image": "a.jpg", "caption": "c", "boxes": [{"label": "x"}]}', "bad 'boxes'"),
    ('["a.jpg", "c"]', "expected a JSON object"),
])
def test_jsonl_malformed_row_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [{"image": "ok.jpg", "caption": "fine"}, "", line])
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*{message}"):
        sources.jsonl(str(path), str(tmp_path))


def test_jsonl_empty_captions_warn_and_captionless_images_are_skipped(tmp_path):
    _write_jsonl(tmp_path / "c.jsonl", [
        {"image": "a.jpg", "captions": ["a", "   "]},
        {"image": "b.jpg", "caption": ""},
    ])
    with pytest.warns(UserWarning) as caught:
        examples = sources.jsonl(str(tmp_path / "c.jsonl"), str(tmp_path))
    messages = [str(w.message) for w in caught]
    assert "a.jpg: dropped 1 empty caption(s)" in messages
    assert "b.jpg: no caption left, image skipped" in messages
    assert [(ex.image_id, ex.captions) for ex in examples] == [("a.jpg", ("a",))]


def test_csv_groups_filters_and_reads_quoted_commas(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("\ufeffimage,caption,split\n"  # Excel's byte-order mark
                    'b.jpg,"a dog, running",train\n'
                    "a.jpg,a cat,val\n"
                    "b.jpg,  a dog  ,train\n")
    train = sources.csv(str(path), str(tmp_path), "train")
    assert train == [Example("b.jpg", str(tmp_path / "b.jpg"), ("a dog, running", "a dog"))]
    assert [ex.image_id for ex in sources.csv(str(path), str(tmp_path), "val")] == ["a.jpg"]

    (tmp_path / "d_test.csv").write_text("image_id,image,caption\n7,x/7.jpg,seven\n")
    examples = sources.csv(str(tmp_path / "d_{split}.csv"), str(tmp_path), "test")
    assert examples == [Example("7", str(tmp_path / "x" / "7.jpg"), ("seven",))]


def test_csv_errors_name_file_and_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("image,text\na.jpg,x\n")
    with pytest.raises(ValueError, match=r"c\.csv:1: the header must name"):
        sources.csv(str(path), str(tmp_path))
    path.write_text("image,caption\na.jpg,x\nb.jpg\n")
    with pytest.raises(ValueError, match=r"c\.csv:3: missing 'caption'"):
        sources.csv(str(path), str(tmp_path))
    path.write_text("image,caption\na.jpg,x\n,y\n")
    with pytest.raises(ValueError, match=r"c\.csv:3: missing 'image'"):
        sources.csv(str(path), str(tmp_path))
    path.write_text("image,caption\na.jpg,a dog, running\n")
    with pytest.raises(ValueError, match=r"c\.csv:2: more fields than the header"):
        sources.csv(str(path), str(tmp_path))
    path.write_text("image,caption\na.jpg,\n")
    with pytest.warns(UserWarning, match="a.jpg: no caption left"):
        assert sources.csv(str(path), str(tmp_path)) == []


# -- load_examples ----------------------------------------------------------------

def test_load_examples_maps_roles_to_the_source_splits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # annotations are relative to the current directory
    _write_jsonl(tmp_path / "cap_dev.jsonl", [{"image": "d.jpg", "caption": "d"}])
    data = DataConfig(source="jsonl", root="images", annotations="cap_{split}.jsonl",
                      val_split="dev")
    assert sources.load_examples(data, "val") == \
        [Example("d.jpg", str(tmp_path / "images" / "d.jpg"), ("d",))]
    with pytest.raises(ValueError, match="split role"):
        sources.load_examples(data, "dev")
    with pytest.raises(ValueError, match="needs data.annotations"):
        sources.load_examples(DataConfig(source="csv"), "train")
    with pytest.raises(ValueError, match=r"unknown source 'coco2017'.*'flickr8k'"):
        sources.load_examples(DataConfig(source="coco2017"), "train")


def test_load_examples_dispatch(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("tfcaption.data.synthetic")
    fake.read_split = lambda root, split: calls.append(("synthetic", root, split)) or []
    # The synthetic module is imported lazily; stand in for it wherever it is looked up.
    monkeypatch.setitem(sys.modules, "tfcaption.data.synthetic", fake)
    monkeypatch.setattr(sys.modules["tfcaption.data"], "synthetic", fake, raising=False)
    monkeypatch.setattr(sources, "coco", lambda split, data_dir: calls.append(
        ("coco", data_dir, split)) or [])
    monkeypatch.setattr(sources, "flickr8k", lambda root, split: calls.append(
        ("flickr8k", root, split)) or [])
    monkeypatch.setattr(sources, "karpathy", lambda ann, root, split: calls.append(
        ("karpathy", ann, root, split)) or [])

    sources.load_examples(DataConfig(source="synthetic", root="w", test_split="t"), "test")
    sources.load_examples(DataConfig(source="coco", root=""), "train")
    sources.load_examples(DataConfig(source="coco", root="tfds"), "val")
    sources.load_examples(DataConfig(source="flickr8k", root="f"), "val")
    sources.load_examples(DataConfig(source="karpathy", root="r", annotations="k.json"), "test")
    assert calls == [("synthetic", "w", "t"), ("coco", None, "train"), ("coco", "tfds", "val"),
                     ("flickr8k", "f", "val"), ("karpathy", "k.json", "r", "test")]
    assert sorted(sources.SOURCES) == ["coco", "csv", "flickr8k", "jsonl", "karpathy",
                                       "synthetic"]
