"""Attention correctness: does the model look at an object when it names it?

Scored for sources whose examples carry object boxes (the synthetic world;
COCO's category boxes), on every generated word equal to a box label (so a
label of two words, COCO's "traffic light", is never scored). When the word
names several objects (two circles), any of them counts: the boxes are taken
as one region, their union.

Geometry: backbones squash the whole image to a square (no crop), so cell
(i, j) of an h x w attention grid covers x in [j/w, (j+1)/w) and y in
[i/h, (i+1)/h) of the image, in the same 0..1 coordinates as the boxes.

Two numbers per scored word:

- pointing game: the peak cell's centre lies inside the region. The point is the
  cell centre, not the peak of an upsampled map: the model attends over cells,
  and an upsampled peak moves with the interpolation and the image size. Nor is
  "the peak cell overlaps the box" used: on a coarse grid most cells touch some
  object, which would make the game too easy. Tied peaks (a flat map) score
  the share of tied cells whose centres are inside, the expected hit under a
  random tie break, so a uniform map scores chance rather than whatever the
  top-left cell happens to hold.
- mass in box: the attention mass inside the region, each cell's weight counted
  in proportion to the part of the cell the region covers (attention taken as
  uniform within a cell).

Chance for both is the region's share of the image (uniform attention, or a
uniformly random point); it is reported next to them, averaged over the same
words.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from tfcaption.data.example import Box


def coverage(boxes: Sequence[Box], h: int, w: int) -> np.ndarray:
    """(h, w): the fraction of each cell's area inside the union of `boxes`. Exact:
    the cell edges and box edges cut the image into rectangles that are each
    wholly inside or wholly outside the union and inside one cell."""
    def cuts(n, lows, highs):
        edges = np.concatenate([np.arange(n + 1) / n, lows, highs])
        return np.unique(np.clip(edges, 0.0, 1.0))

    xs = cuts(w, [b.x0 for b in boxes], [b.x1 for b in boxes])
    ys = cuts(h, [b.y0 for b in boxes], [b.y1 for b in boxes])
    mx, my = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside = np.zeros((len(my), len(mx)), bool)
    for b in boxes:
        inside |= ((my >= b.y0) & (my < b.y1))[:, None] & ((mx >= b.x0) & (mx < b.x1))[None, :]
    area = np.diff(ys)[:, None] * np.diff(xs)[None, :] * inside
    rows = np.minimum((my * h).astype(int), h - 1)
    cols = np.minimum((mx * w).astype(int), w - 1)
    out = np.zeros((h, w))
    np.add.at(out, (rows[:, None], cols[None, :]), area)
    return out * (h * w)  # area -> fraction of a cell (each is 1 / (h w) of the image)


def pointing(attention: np.ndarray, boxes: Sequence[Box]) -> float:
    """attention (h, w) -> 1.0 when its peak cell's centre is inside a box, else 0.0;
    tied peaks score the share of them that are inside."""
    h, w = attention.shape
    rows, cols = np.nonzero(attention == attention.max())
    cx, cy = (cols + 0.5) / w, (rows + 0.5) / h
    hit = np.zeros(len(rows), bool)
    for b in boxes:
        hit |= (cx >= b.x0) & (cx < b.x1) & (cy >= b.y0) & (cy < b.y1)
    return float(hit.mean())


def mass_in_boxes(attention: np.ndarray, boxes: Sequence[Box]) -> float:
    """attention (h, w) -> the fraction of its mass inside the union of `boxes`."""
    total = float(attention.sum())
    if total <= 0.0:
        return 0.0
    return float((attention * coverage(boxes, *attention.shape)).sum() / total)


def caption_rows(words: Sequence[str], attention: np.ndarray, boxes: Sequence[Box]
                 ) -> list[tuple[float, float, float]]:
    """words[t] was generated with attention[t] (h, w). -> one (pointing, mass,
    chance) row per word that names a boxed object."""
    by_label: dict[str, list[Box]] = {}
    for b in boxes:
        by_label.setdefault(b.label.lower(), []).append(b)
    rows = []
    for word, att in zip(words, attention):
        region = by_label.get(word)
        if region:
            h, w = att.shape
            rows.append((pointing(att, region), mass_in_boxes(att, region),
                         float(coverage(region, h, w).mean())))
    return rows


def summarise(rows: Iterable[tuple[float, float, float]]) -> dict:
    """Rows from caption_rows -> the means over every scored word."""
    table = np.asarray(list(rows), np.float64).reshape(-1, 3)
    if not len(table):
        return {"pointing_accuracy": None, "mass_in_box": None, "chance": None, "words": 0}
    pointing_acc, mass, chance = table.mean(axis=0)
    return {"pointing_accuracy": float(pointing_acc), "mass_in_box": float(mass),
            "chance": float(chance), "words": int(len(table))}
