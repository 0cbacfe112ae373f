"""The synthetic world's drawing: one image and its captions from (seed, split, index).

Numpy and PIL only, no shared state: `synthetic.generate` renders images in
several worker processes at once.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageDraw

from tfcaption.data.example import Box

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 235),
    "yellow": (245, 225, 30), "purple": (150, 50, 200), "orange": (255, 135, 0),
}
SIZES = {"small": 0.2, "large": 0.36}  # side of the object's box, as a fraction of the image
SUPERSAMPLE = 2  # drawn at 2x and downsampled, for smooth edges


def _star(cx, cy, r):
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return [(cx + rad * np.cos(a), cy - rad * np.sin(a)) for a, rad in zip(angles, radii)]


def _draw(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> tuple[float, float, float, float]:
    """Draws `shape` inside box (x0, y0, x1, y1) in pixels; returns its tight box."""
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
        return box
    if shape == "square":
        draw.rectangle(box, fill=fill)
        return box
    if shape == "triangle":
        points = [(cx, y0), (x1, y1), (x0, y1)]
    else:
        points = _star(cx, cy, r)
    draw.polygon(points, fill=fill)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted gradient, soft stripes or checks, and pixel noise.

    The gradient and the checks are sums and products of a row and a column,
    broadcast: the same values as over full (size, size) grids, to the bit,
    in two thirds of the time."""
    line = np.arange(size) / size
    xx, yy = line[None, :], line[:, None]
    base = rng.uniform(70, 170, size=3)
    tilt = rng.uniform(-40, 40, size=(2, 3))
    image = (base + xx[..., None] * tilt[0]) + yy[..., None] * tilt[1]
    period = rng.uniform(0.08, 0.25)
    angle = rng.uniform(0, np.pi)
    if rng.random() < 0.5:
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        texture = np.sin(2 * np.pi * phase)
    else:
        texture = np.sign(np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period))
    image += (texture * rng.uniform(5, 20))[..., None]
    image += rng.normal(0, 10, size=image.shape)
    return image


def _place(rng, sizes: list[float], canvas: int):
    """Non-overlapping square slots (with a gap) for objects of the given sides."""
    for _ in range(200):
        boxes = []
        for side in sizes:
            s = side * canvas
            x0, y0 = rng.uniform(0.03 * canvas, 0.97 * canvas - s, size=2)
            boxes.append((x0, y0, x0 + s, y0 + s))
        gap = 0.04 * canvas
        if all(a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]
               for i, a in enumerate(boxes) for b in boxes[i + 1:]):
            return boxes
    raise RuntimeError("could not place the objects without overlap")


def _relation(a: Box, b: Box) -> str:
    """Where a is relative to b, along the axis where their centres differ most."""
    dx = (a.x0 + a.x1 - b.x0 - b.x1) / 2
    dy = (a.y0 + a.y1 - b.y0 - b.y1) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _region(box: Box) -> str:
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    row = ("top", "", "bottom")[min(int(cy * 3), 2)]
    col = ("left", "", "right")[min(int(cx * 3), 2)]
    return (f"{row} {col}".strip() or "middle")


def _captions(rng, objects) -> list[str]:
    """objects: (size, colour, shape, box) -> five paraphrases, all naming every shape."""
    return [re.sub(r"\ba (?=[aeiou])", "an ", c) for c in _paraphrases(rng, objects)]


def _paraphrases(rng, objects) -> list[str]:
    full = [f"{s} {c} {sh}" for s, c, sh, _ in objects]
    short = [f"{c} {sh}" for _, c, sh, _ in objects]
    boxes = [b for *_, b in objects]
    if len(objects) == 1:
        s, c, sh, box = objects[0]
        where = _region(box)
        return [f"a {full[0]}", f"a {short[0]} in the {where}", f"there is a {full[0]}",
                f"a single {short[0]}", f"one {s} {sh} that is {c}"]
    rel = _relation(boxes[0], boxes[1])
    back = _relation(boxes[1], boxes[0])
    if len(objects) == 2:
        return [f"a {full[0]} {rel} a {full[1]}", f"a {short[0]} and a {short[1]}",
                f"there is a {short[0]} {rel} a {short[1]}",
                f"a {short[1]} {back} a {full[0]}",
                f"two shapes a {short[0]} and a {short[1]}"]
    rel12 = _relation(boxes[1], boxes[2])
    order = rng.permutation(3)
    listed = " and a ".join(short[i] for i in order)
    return [f"a {full[0]} {rel} a {full[1]} and a {full[2]}", f"a {listed}",
            f"three shapes a {short[0]} a {short[1]} and a {short[2]}",
            f"a {short[1]} {back} a {short[0]} and a {short[2]}",
            f"a {short[1]} {rel12} a {short[2]} and a {short[0]}"]


def render(seed: int, split_index: int, index: int, size: int = 128):
    """One image: (uint8 array (size, size, 3), captions, boxes in 0..1)."""
    rng = np.random.default_rng([seed, split_index, index])
    canvas = size * SUPERSAMPLE
    count = int(rng.integers(1, 4))
    shapes = rng.choice(SHAPES, size=count, replace=False)
    colours = rng.choice(list(COLOURS), size=count)
    sizes = rng.choice(list(SIZES), size=count)
    if count == 3:  # three large objects rarely fit without overlap: one at most
        sizes[1:] = "small"
    slots = _place(rng, [SIZES[s] for s in sizes], canvas)
    pixels = np.clip(_background(rng, canvas), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    objects = []
    for shape, colour, size_word, slot in zip(shapes, colours, sizes, slots):
        x0, y0, x1, y1 = _draw(draw, str(shape), slot, COLOURS[colour])
        box = Box(str(shape), x0 / canvas, y0 / canvas, (x1 + 1) / canvas, (y1 + 1) / canvas)
        objects.append((str(size_word), str(colour), str(shape), box))
    # Left to right, so captions list objects in reading order.
    objects.sort(key=lambda o: o[3].x0 + o[3].x1)
    image = image.resize((size, size), Image.LANCZOS)
    return np.asarray(image), _captions(rng, objects), [o[3] for o in objects]


def render_png(args) -> tuple[bytes, list[str], list[Box]]:
    """render(*args), the pixels as PNG bytes."""
    pixels, captions, boxes = render(*args)
    png = io.BytesIO()
    # The lowest compression: the same pixels, a quarter less time than the default.
    Image.fromarray(pixels).save(png, format="PNG", compress_level=1)
    return png.getvalue(), captions, boxes
