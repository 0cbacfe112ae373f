"""The one record every source yields, whatever the dataset."""

from __future__ import annotations

import dataclasses


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
