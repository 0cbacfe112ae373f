"""Attention correctness: does the model look at an object when it names it?

Scored for sources whose examples carry object boxes (the synthetic world;
COCO's category boxes), on every generated word equal to a box label (so a
label of two words, COCO's "traffic light", is never scored). When the word
names several objects (two circles), any of them counts: the boxes are taken
as one region, their union.

Geometry: backbones squash the whole image to a square (no crop), so grid
positions are image positions in the same 0..1 coordinates as the boxes. Cell
(i, j) is placed at its receptive field's centre (rows[i], cols[j]), from
`Backbone.cell_centres()`: with "valid" convolutions these are not the centres
of equal slices (SqueezeNet's pool3 at 128 px: 7.5 ... 119.5 px, not 4.3 ...
123.7). For mass, a cell covers the image up to halfway to its neighbours'
centres, the border cells out to the image's edge. Without centres, the grid is
taken as equal slices.

Two numbers per scored word:

- pointing game: the peak cell's centre lies inside the region. The point is the
  cell's centre, not the peak of an upsampled map: the model attends over cells,
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

from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from tfcaption.data.example import Box


Centres = Optional[Dict[str, Sequence[float]]]  # {"rows": (h,), "cols": (w,)}


def slice_centres(h: int, w: int) -> dict:
    """Cell centres of a grid taken as equal slices of the image: the fallback
    when the backbone's receptive-field centres are not known."""
    return {"rows": (np.arange(h) + 0.5) / h, "cols": (np.arange(w) + 0.5) / w}


def grid_centres(h: int, w: int, centres: Centres = None) -> tuple[np.ndarray, np.ndarray]:
    """centres ({"rows", "cols"}, as the cache manifest and the export info hold
    them; None: equal slices) -> (rows (h,), cols (w,)), checked against the grid."""
    centres = centres or slice_centres(h, w)
    rows, cols = (np.asarray(centres[k], np.float64) for k in ("rows", "cols"))
    if rows.shape != (h,) or cols.shape != (w,):
        raise ValueError(f"centres for a {len(rows)}x{len(cols)} grid, attention is {h}x{w}")
    return rows, cols


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell centres (n,) -> cell edges (n + 1,): halfway between neighbours, 0 and 1 outside."""
    return np.concatenate([[0.0], (centres[:-1] + centres[1:]) / 2, [1.0]])


def coverage(boxes: Sequence[Box], h: int, w: int, centres: Centres = None) -> np.ndarray:
    """(h, w): the fraction of each cell's area inside the union of `boxes`. Exact:
    the cell edges and box edges cut the image into rectangles that are each
    wholly inside or wholly outside the union and inside one cell."""
    rows, cols = grid_centres(h, w, centres)
    row_edges, col_edges = _edges(rows), _edges(cols)

    def cuts(edges, lows, highs):
        return np.unique(np.clip(np.concatenate([edges, lows, highs]), 0.0, 1.0))

    xs = cuts(col_edges, [b.x0 for b in boxes], [b.x1 for b in boxes])
    ys = cuts(row_edges, [b.y0 for b in boxes], [b.y1 for b in boxes])
    mx, my = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside = np.zeros((len(my), len(mx)), bool)
    for b in boxes:
        inside |= ((my >= b.y0) & (my < b.y1))[:, None] & ((mx >= b.x0) & (mx < b.x1))[None, :]
    area = np.diff(ys)[:, None] * np.diff(xs)[None, :] * inside
    r = np.clip(np.searchsorted(row_edges, my, side="right") - 1, 0, h - 1)
    c = np.clip(np.searchsorted(col_edges, mx, side="right") - 1, 0, w - 1)
    out = np.zeros((h, w))
    np.add.at(out, (r[:, None], c[None, :]), area)
    cell_area = np.diff(row_edges)[:, None] * np.diff(col_edges)[None, :]
    return out / cell_area


def pointing(attention: np.ndarray, boxes: Sequence[Box], centres: Centres = None) -> float:
    """attention (h, w) -> 1.0 when its peak cell's centre is inside a box, else 0.0;
    tied peaks score the share of them that are inside."""
    h, w = attention.shape
    rows, cols = grid_centres(h, w, centres)
    r, c = np.nonzero(attention == attention.max())
    cx, cy = cols[c], rows[r]
    hit = np.zeros(len(r), bool)
    for b in boxes:
        hit |= (cx >= b.x0) & (cx < b.x1) & (cy >= b.y0) & (cy < b.y1)
    return float(hit.mean())


def mass_in_boxes(attention: np.ndarray, boxes: Sequence[Box], centres: Centres = None
                  ) -> float:
    """attention (h, w) -> the fraction of its mass inside the union of `boxes`."""
    total = float(attention.sum())
    if total <= 0.0:
        return 0.0
    return float((attention * coverage(boxes, *attention.shape, centres)).sum() / total)


def chance(boxes: Sequence[Box]) -> float:
    """The union's share of the image: what a uniform map or a random point scores."""
    return float(coverage(boxes, 1, 1)[0, 0])


def caption_rows(words: Sequence[str], attention: np.ndarray, boxes: Sequence[Box],
                 centres: Centres = None) -> list[tuple[float, float, float]]:
    """words[t] was generated with attention[t] (h, w). -> one (pointing, mass,
    chance) row per word that names a boxed object."""
    by_label: dict[str, list[Box]] = {}
    for b in boxes:
        by_label.setdefault(b.label.lower(), []).append(b)
    rows = []
    for word, att in zip(words, attention):
        region = by_label.get(word)
        if region:
            rows.append((pointing(att, region, centres), mass_in_boxes(att, region, centres),
                         chance(region)))
    return rows


def summarise(rows: Iterable[tuple[float, float, float]]) -> dict:
    """Rows from caption_rows -> the means over every scored word."""
    table = np.asarray(list(rows), np.float64).reshape(-1, 3)
    if not len(table):
        return {"pointing_accuracy": None, "mass_in_box": None, "chance": None, "words": 0}
    pointing_acc, mass, chance = table.mean(axis=0)
    return {"pointing_accuracy": float(pointing_acc), "mass_in_box": float(mass),
            "chance": float(chance), "words": int(len(table))}
