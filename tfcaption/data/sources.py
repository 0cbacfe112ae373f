"""Readers that turn a dataset on disk into `Example`s, one split at a time.

Every reader returns `list[Example]` in a deterministic order: the dataset's own
order where it has a canonical one (Flickr8k's split files, the rows of a JSONL
or CSV file), otherwise sorted by image_id (Karpathy JSON, COCO).

Readers do not open images. An image file that is missing or unreadable is not
an error here: the feature extractor reports it by path and skips it, so that
one bad file never stops a whole split from being read.

Captions are stripped; an empty one is dropped with a warning naming the image,
and an image left with no caption is skipped with a warning.

`load_examples(data_cfg, "train" | "val" | "test")` is the one entry point the
rest of the package uses; `SOURCES` maps `DataConfig.source` to a reader.
"""

from __future__ import annotations

import csv as csv_module
import json
import os
import warnings

from tfcaption import io
from tfcaption.config import DataConfig
from tfcaption.data.example import Box, Example


def _examples(rows) -> list[Example]:
    """(image_id, image, captions, boxes) rows -> Examples; captionless images skipped."""
    out = []
    for image_id, image, captions, boxes in rows:
        kept = tuple(c.strip() for c in captions if c.strip())
        if not kept:
            warnings.warn(f"{image_id}: no caption left, image skipped")
            continue
        if len(kept) < len(captions):
            warnings.warn(f"{image_id}: dropped {len(captions) - len(kept)} empty caption(s)")
        out.append(Example(image_id, image, kept, tuple(boxes)))
    return out


def _id_order(image_id: str):
    # COCO ids sort as numbers ("9" before "10"); file names as strings.
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


# -- Flickr8k -----------------------------------------------------------------

FLICKR8K_SPLITS = ("train", "dev", "test")


def flickr8k(root: str, split: str) -> list[Example]:
    """Flickr8k in its official layout; split train, dev (alias val) or test.

    image_id is the file name ("1000268201_693b08cb0e.jpg"), as Karpathy's
    splits and published evaluations use; captions come in the order #0..#4;
    images keep the split file's order. An image listed in the split file but
    without captions in Flickr8k.token.txt is skipped with one warning.
    """
    split = {"val": "dev"}.get(split, split)
    if split not in FLICKR8K_SPLITS:
        raise ValueError(f"Flickr8k has splits {FLICKR8K_SPLITS} (and 'val' for 'dev'), "
                         f"not {split!r}")
    text_dir = os.path.join(root, "Flickr8k_text")
    split_file = os.path.join(text_dir, f"Flickr_8k.{split}Images.txt")
    token_file = os.path.join(text_dir, "Flickr8k.token.txt")
    if not io.exists(split_file):
        raise FileNotFoundError(f"Flickr8k split {split!r}: no split file {split_file}")
    if not io.exists(token_file):
        raise FileNotFoundError(f"Flickr8k: no captions file {token_file}")

    captions: dict[str, list[tuple[int, str]]] = {}
    with io.open_text(token_file) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, tab, caption = line.rstrip("\r\n").partition("\t")
            name, hash_sign, k = key.partition("#")
            if not tab or not hash_sign or not k.isdigit():
                raise ValueError(f"{token_file}:{number}: expected '<image>#<k>\\t<caption>', "
                                 f"got {line.strip()[:80]!r}")
            captions.setdefault(name, []).append((int(k), caption))
    with io.open_text(split_file) as f:
        names = [line.strip() for line in f if line.strip()]

    missing = [n for n in names if n not in captions]
    if missing:
        warnings.warn(f"{split_file}: {len(missing)} image(s) have no captions in {token_file} "
                      f"and are skipped, e.g. {missing[:3]}")
    image_dir = io.join(io.abspath(root), "Flicker8k_Dataset")
    return _examples((n, os.path.join(image_dir, n), [c for _, c in sorted(captions[n])], ())
                     for n in names if n in captions)


# -- Karpathy split JSON --------------------------------------------------------

def karpathy(annotations: str, root: str, split: str, restval_in_train: bool = True
             ) -> list[Example]:
    """Karpathy's dataset_{coco,flickr8k,flickr30k}.json; images at root/filepath/filename.

    "train" includes "restval" (the standard Karpathy practice) unless
    `restval_in_train` is False. image_id is str(cocoid) for COCO, so that a
    results.json matches the COCO evaluation ids, else the file name.
    """
    images = io.read_json(annotations)["images"]
    wanted = {"train", "restval"} if split == "train" and restval_in_train else {split}
    root = io.abspath(root)
    rows = [(str(im["cocoid"]) if "cocoid" in im else im["filename"],
             os.path.join(root, im.get("filepath", ""), im["filename"]),
             [s["raw"] for s in im["sentences"]], ())
            for im in images if im["split"] in wanted]
    if not rows:
        # A misspelt split ("dev" for "val") would otherwise train on nothing.
        raise ValueError(f"{annotations}: no images in split {split!r}; splits present: "
                         f"{sorted({im['split'] for im in images})}")
    return _examples(sorted(rows, key=lambda r: _id_order(r[0])))


# -- COCO through tensorflow-datasets ------------------------------------------

def coco(split: str, data_dir: str | None = None, restval_in_train: bool = True
         ) -> list[Example]:
    """COCO 2014 captions via tfds `coco_captions` (Karpathy splits train, val,
    test, restval; "train" includes restval unless `restval_in_train` is False).

    Images stay encoded JPEG bytes (no decoding here: the extractor decodes), so
    the whole split is held in memory: about 13 GB for train + restval. For the
    full train split on a small machine, prefer the "karpathy" source over the
    COCO image folders, which yields paths. Boxes are tfds' normalised
    [ymin, xmin, ymax, xmax] with the category name as label.
    """
    import tensorflow_datasets as tfds  # heavy; only this source needs it

    builder = tfds.builder("coco_captions", data_dir=data_dir or None)
    builder.download_and_prepare()
    names = builder.info.features["objects"]["label"].names
    parts = ["train", "restval"] if split == "train" and restval_in_train else [split]
    rows = []
    for part in parts:
        ds = builder.as_dataset(split=part, decoders={"image": tfds.decode.SkipDecoding()})
        for ex in ds.as_numpy_iterator():
            boxes = [Box(names[label], float(x0), float(y0), float(x1), float(y1))
                     for (y0, x0, y1, x1), label in zip(ex["objects"]["bbox"],
                                                        ex["objects"]["label"])]
            rows.append((str(ex["image/id"]), bytes(ex["image"]),
                         [t.decode("utf-8") for t in ex["captions"]["text"]], boxes))
    return _examples(sorted(rows, key=lambda r: _id_order(r[0])))


# -- Generic JSONL / CSV captions files -----------------------------------------

def _captions_file(annotations: str, split: str | None) -> tuple[str, str | None]:
    """-> (the file to read, the split to filter rows by, if any).

    "captions_{split}.jsonl" names one file per split; a single file may
    instead carry a `split` field per row.
    """
    if "{split}" not in annotations:
        if not io.exists(annotations):
            raise FileNotFoundError(f"no captions file {annotations}")
        return annotations, split
    if split is None:
        raise ValueError(f"{annotations} names one file per split: pass a split")
    path = annotations.format(split=split)
    if not io.exists(path):
        raise FileNotFoundError(f"no captions file {path} for split {split!r}")
    return path, None


def _grouped(rows, root: str, path: str, split: str | None) -> list[Example]:
    """(line, row) pairs of {image, caption | captions, image_id?, boxes?, split?}
    -> one Example per image, images and captions in first-seen order."""
    if split is not None and any(row.get("split") for _, row in rows):
        present = sorted({str(row.get("split")) for _, row in rows})
        rows = [(n, row) for n, row in rows if row.get("split") == split]
        if not rows:
            raise ValueError(f"{path}: no rows of split {split!r}; splits present: {present}")
    root = io.abspath(root)
    images: dict[str, tuple[str, list, list]] = {}
    for number, row in rows:
        where = f"{path}:{number}"
        image = row.get("image")
        if not isinstance(image, str) or not image:
            raise ValueError(f"{where}: missing 'image' field")
        if row.get("captions") is not None:
            captions = row["captions"]
        elif row.get("caption") is not None:
            captions = [row["caption"]]
        else:
            raise ValueError(f"{where}: missing 'caption' (or 'captions') field")
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"{where}: captions must be text (a string or a list of strings)")
        try:
            boxes = [Box.from_json(b) for b in row.get("boxes") or []]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: bad 'boxes' ({err!r}); expected a list of "
                             "{label, x0, y0, x1, y1}") from None
        # The default id is the path as written: stable wherever root is mounted.
        image_id = str(row.get("image_id") or image)
        full = os.path.join(root, image)  # join keeps an absolute image path as it is
        seen = images.setdefault(image_id, (full, [], []))
        if seen[0] != full:
            raise ValueError(f"{where}: image_id {image_id!r} already names {seen[0]}, not {full}")
        seen[1].extend(captions)
        # Per-caption rows often repeat the image's boxes: keep each box once.
        seen[2].extend(b for b in boxes if b not in seen[2])
    return _examples((image_id, full, captions, boxes)
                     for image_id, (full, captions, boxes) in images.items())


def jsonl(annotations: str, root: str, split: str | None = None) -> list[Example]:
    """JSON lines of {image, caption} or {image, captions: [...]}, optionally with
    image_id, boxes ([Box.to_json(), ...]) and split; image paths relative to root."""
    path, split = _captions_file(annotations, split)
    rows = []
    with io.open_text(path, encoding="utf-8-sig") as f:  # -sig: tolerate a byte-order mark
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, "
                                 f"got {type(row).__name__}")
            rows.append((number, row))
    return _grouped(rows, root, path, split)


def csv(annotations: str, root: str, split: str | None = None) -> list[Example]:
    """CSV whose header names at least image,caption (optionally image_id, split);
    one caption per row; image paths relative to root. Boxes need JSONL."""
    path, split = _captions_file(annotations, split)
    rows = []
    with io.open_text(path, encoding="utf-8-sig", newline="") as f:  # Excel writes a BOM
        reader = csv_module.DictReader(f)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise ValueError(f"{path}:1: the header must name 'image' and 'caption' columns, "
                             f"got {reader.fieldnames}")
        for row in reader:
            if None in row:
                # Almost always an unquoted comma inside a caption, which would
                # otherwise silently cut the caption short.
                raise ValueError(f"{path}:{reader.line_num}: more fields than the header "
                                 "(quote captions that contain commas)")
            row.pop("boxes", None)  # a JSON list does not survive CSV quoting reliably
            rows.append((reader.line_num, row))
    return _grouped(rows, root, path, split)


# -- One entry point ----------------------------------------------------------

def synthetic(root: str, split: str) -> list[Example]:
    # Imported here: the shapes world is only needed when it is the source.
    from tfcaption.data import synthetic as world

    return world.read_split(root, split)


def _annotations(data: DataConfig) -> str:
    if not data.annotations:
        raise ValueError(f"source {data.source!r} needs data.annotations (its captions file)")
    return data.annotations


SOURCES = {
    "synthetic": lambda data, split: synthetic(data.root, split),
    "flickr8k": lambda data, split: flickr8k(data.root, split),
    "karpathy": lambda data, split: karpathy(_annotations(data), data.root, split),
    "coco": lambda data, split: coco(split, data.root or None),
    "jsonl": lambda data, split: jsonl(_annotations(data), data.root, split),
    "csv": lambda data, split: csv(_annotations(data), data.root, split),
}

SPLIT_ROLES = ("train", "val", "test")


def load_examples(data: DataConfig, split_role: str) -> list[Example]:
    """The examples of the train, val or test split, named in the source's own
    terms by data.train_split / val_split / test_split."""
    if data.source not in SOURCES:
        raise ValueError(f"unknown source {data.source!r}; known sources: {sorted(SOURCES)}")
    if split_role not in SPLIT_ROLES:
        raise ValueError(f"split role must be one of {SPLIT_ROLES}, not {split_role!r}")
    return SOURCES[data.source](data, getattr(data, f"{split_role}_split"))
