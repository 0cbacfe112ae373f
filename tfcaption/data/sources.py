"""Readers that turn a dataset on disk into `Example`s, one split at a time.

Readers do not open images: an image that is missing or unreadable is the
feature extractor's to report (by path) and skip, so that one bad file never
stops a whole split from being read. Captions that are empty after stripping
are dropped with a warning naming the image; an image left with no caption is
skipped with a warning.
"""

from __future__ import annotations

import csv as csv_module
import json
import os
import warnings

from tfcaption.config import DataConfig
from tfcaption.data.example import Box, Example


def _clean(image_id: str, captions) -> tuple[str, ...]:
    kept = tuple(c.strip() for c in captions if c and c.strip())
    if len(kept) < len(captions):
        warnings.warn(f"{image_id}: dropped {len(captions) - len(kept)} empty caption(s)")
    return kept


def _examples(rows) -> list[Example]:
    """rows: (image_id, image, captions, boxes) -> Examples, captionless images skipped."""
    out = []
    for image_id, image, captions, boxes in rows:
        captions = _clean(image_id, captions)
        if not captions:
            warnings.warn(f"{image_id}: no caption left, image skipped")
            continue
        out.append(Example(image_id, image, captions, tuple(boxes)))
    return out


def flickr8k(root: str, split: str) -> list[Example]:
    """Flickr8k in its official layout; split train, dev (alias val) or test.
    image_id is the file name, as Karpathy's splits and published tables use."""
    split = {"val": "dev"}.get(split, split)
    text_dir = os.path.join(root, "Flickr8k_text")
    split_file = os.path.join(text_dir, f"Flickr_8k.{split}Images.txt")
    if not os.path.exists(split_file):
        raise FileNotFoundError(f"Flickr8k split {split!r}: no split file {split_file}")
    token_file = os.path.join(text_dir, "Flickr8k.token.txt")
    if not os.path.exists(token_file):
        raise FileNotFoundError(f"Flickr8k: no captions file {token_file}")
    captions: dict[str, list[tuple[int, str]]] = {}
    with open(token_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, sep, caption = line.rstrip("\n").partition("\t")
            name, hash_sign, k = key.partition("#")
            if not sep or not hash_sign:
                raise ValueError(f"{token_file}:{number}: expected '<image>#<k>\\t<caption>'")
            captions.setdefault(name, []).append((int(k), caption))
    with open(split_file, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    without = [n for n in names if n not in captions]
    if without:
        warnings.warn(f"{split_file}: {len(without)} images have no captions in "
                      f"{token_file} and are skipped, e.g. {without[:3]}")
    image_dir = os.path.join(os.path.abspath(root), "Flicker8k_Dataset")
    return _examples((n, os.path.join(image_dir, n), [c for _, c in sorted(captions[n])], ())
                     for n in names if n in captions)


def karpathy(annotations: str, root: str, split: str, restval_in_train: bool = True
             ) -> list[Example]:
    """Karpathy's dataset_{coco,flickr8k,flickr30k}.json; images under root/filepath/filename.
    "train" includes "restval", as the standard Karpathy split does."""
    with open(annotations, encoding="utf-8") as f:
        data = json.load(f)
    wanted = {split, "restval"} if split == "train" and restval_in_train else {split}
    rows = []
    for image in data["images"]:
        if image["split"] not in wanted:
            continue
        # COCO ids keep results.json comparable with the COCO evaluation server.
        image_id = str(image["cocoid"]) if "cocoid" in image else image["filename"]
        path = os.path.join(os.path.abspath(root), image.get("filepath", ""), image["filename"])
        rows.append((image_id, path, [s["raw"] for s in image["sentences"]], ()))
    return _examples(sorted(rows))


def coco(split: str, data_dir: str | None = None, restval_in_train: bool = True
         ) -> list[Example]:
    """COCO captions through tensorflow-datasets (`coco_captions`, Karpathy splits).
    Images stay encoded JPEG bytes; object boxes come with their category names."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("coco_captions", data_dir=data_dir or None)
    builder.download_and_prepare()
    names = builder.info.features["objects"]["label"].names
    parts = ["train", "restval"] if split == "train" and restval_in_train else [split]
    rows = []
    for part in parts:
        ds = builder.as_dataset(split=part, decoders={"image": tfds.decode.SkipDecoding()})
        for ex in ds.as_numpy_iterator():
            boxes = [Box(names[label], float(b[1]), float(b[0]), float(b[3]), float(b[2]))
                     for b, label in zip(ex["objects"]["bbox"], ex["objects"]["label"])]
            rows.append((str(ex["image/id"]), bytes(ex["image"]),
                         [t.decode("utf-8") for t in ex["captions"]["text"]], boxes))
    return _examples(sorted(rows, key=lambda r: int(r[0]) if r[0].isdigit() else r[0]))


def _grouped(rows, root: str, where: str) -> list[Example]:
    """Rows of {image, caption | captions, image_id?, boxes?} grouped by image."""
    images: dict[str, list] = {}
    for number, row in rows:
        image = row.get("image")
        if not image or ("caption" not in row and "captions" not in row):
            raise ValueError(f"{where}:{number}: a row needs 'image' and 'caption' (or "
                             f"'captions'); got {sorted(row)}")
        image_id = row.get("image_id") or image
        entry = images.setdefault(image_id, [image_id, os.path.join(os.path.abspath(root), image),
                                             [], []])
        captions = row["captions"] if "captions" in row else [row["caption"]]
        entry[2].extend(captions)
        entry[3].extend(Box.from_json(b) for b in row.get("boxes") or [])
    return _examples(tuple(v) for v in images.values())


def _split_path(annotations: str, split: str) -> tuple[str, bool]:
    """"captions_{split}.jsonl" -> the split's file; else one file with a split column."""
    if "{split}" in annotations:
        return annotations.format(split=split), False
    return annotations, True


def _filter_split(rows, split: str, by_column: bool):
    rows = list(rows)
    if by_column and any("split" in row for _, row in rows):
        rows = [(n, row) for n, row in rows if row.get("split") == split]
    return rows


def jsonl(annotations: str, root: str, split: str) -> list[Example]:
    """JSON lines of {image, caption} (or captions: [...]), image paths relative to root."""
    path, by_column = _split_path(annotations, split)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no captions file {path} for split {split!r}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
    return _grouped(_filter_split(rows, split, by_column), root, path)


def csv(annotations: str, root: str, split: str) -> list[Example]:
    """CSV with a header holding at least image,caption (optionally image_id, split)."""
    path, by_column = _split_path(annotations, split)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no captions file {path} for split {split!r}")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv_module.DictReader(f)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: the header must name 'image' and 'caption' columns")
        rows = [(number, dict(row)) for number, row in enumerate(reader, 2)]
    return _grouped(_filter_split(rows, split, by_column), root, path)


def synthetic(root: str, split: str) -> list[Example]:
    from tfcaption.data import synthetic as world
    return world.read_split(root, split)


SOURCES = {
    "synthetic": lambda dc, split: synthetic(dc.root, split),
    "flickr8k": lambda dc, split: flickr8k(dc.root, split),
    "karpathy": lambda dc, split: karpathy(dc.annotations, dc.root, split),
    "coco": lambda dc, split: coco(split, dc.root or None),
    "jsonl": lambda dc, split: jsonl(dc.annotations, dc.root, split),
    "csv": lambda dc, split: csv(dc.annotations, dc.root, split),
}


def load_examples(data: DataConfig, split_role: str) -> list[Example]:
    """The examples of the train, val or test split, named in the source's own terms
    by data.train_split / val_split / test_split."""
    if data.source not in SOURCES:
        raise ValueError(f"unknown source {data.source!r}; choose one of {sorted(SOURCES)}")
    if split_role not in ("train", "val", "test"):
        raise ValueError(f"split role must be train, val or test, not {split_role!r}")
    return SOURCES[data.source](data, getattr(data, f"{split_role}_split"))
