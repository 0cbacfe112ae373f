"""The one record every source yields, whatever the dataset."""

from __future__ import annotations

import dataclasses
import hashlib
import json


@dataclasses.dataclass(frozen=True)
class Box:
    """An object's bounding box in normalised image coordinates (0..1).

    `label` is the word a caption uses for the object (e.g. "circle"), so that
    attention on that word can be scored against the box.
    """

    label: str
    x0: float
    y0: float
    x1: float
    y1: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> "Box":
        return cls(str(row["label"]), *(float(row[k]) for k in ("x0", "y0", "x1", "y1")))


@dataclasses.dataclass(frozen=True)
class Example:
    """One image and its reference captions.

    image: a file path (str) or the encoded bytes (JPEG/PNG/...).
    captions: the raw reference captions, un-normalised (normalisation is text.py's job).
    boxes: object boxes where the dataset has them (the synthetic world does).
    """

    image_id: str
    image: str | bytes
    captions: tuple[str, ...]
    boxes: tuple[Box, ...] = ()


def examples_digest(examples) -> str:
    """sha1 over each example's id, image path and caption text, in order: what
    a stage built from the examples depends on. Image content is left out:
    digesting it would mean reading all of COCO (20 GB) to check a cache; a
    path, with the source's settings (the synthetic world's seed and size),
    names the image well enough."""
    digest = hashlib.sha1()
    for ex in examples:
        image = ex.image if isinstance(ex.image, str) else ""
        digest.update(json.dumps([ex.image_id, image, list(ex.captions)]).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
