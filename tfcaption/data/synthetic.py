"""The synthetic shapes world: the built-in dataset that needs no download.

Each image holds 1-3 objects, each a shape x colour x size, on a textured, noisy
background. Five paraphrased captions name the objects' colours, shapes, sizes
and where they are relative to each other (or, for one object, where in the
image). Every object's tight bounding box is kept with its shape word as label,
so attention on that word can be scored against the box (pointing game).

Deterministic from a seed: image i of split s is drawn from its own generator,
seeded with (seed, s, i), so the same seed gives byte-identical files and
changing one split's size changes no other image.

Layout written by `generate(root)`:
    root/images/<split>/<split>_<n>.png
    root/<split>.jsonl     {"image", "image_id", "captions", "boxes"} per line
    root/world.json        written last: its presence marks the world complete
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os

from tfcaption import io
from tfcaption.data.example import Box, Example
from tfcaption.data.shapes import COLOURS, SHAPES, SIZES, render, render_png  # noqa: F401

SPLITS = ("train", "val", "test")
MARKER = "world.json"


def _settings(seed, counts, image_size) -> dict:
    return {"seed": seed, "counts": dict(zip(SPLITS, map(int, counts))),
            "image_size": image_size, "shapes": list(SHAPES), "colours": list(COLOURS),
            "sizes": list(SIZES)}


def generate(root: str, seed: int = 0, counts=(3000, 300, 300), image_size: int = 128,
             workers: int | None = None) -> dict:
    """Renders the world into root (see the module docstring); does nothing when
    root already holds the same world. Returns a summary. workers: rendering
    processes (None: one per core; 1: this process)."""
    settings = _settings(seed, counts, image_size)
    marker = io.join(root, MARKER)
    if io.exists(marker):
        if io.read_json(marker) == settings:
            return _summary(root, settings)
        io.remove(marker)  # another world: re-render over it
    # Images are independent draws (each from its own seed), rendered in
    # worker processes and written here in order: the same files for any
    # number of workers. Processes, not threads: rendering holds the GIL for
    # much of its time (3600 demo images on 2 cores: 39 s on two threads,
    # 20 s on two processes, one measurement on a busy machine).
    jobs = [(seed, split_index, i, image_size) for split_index, split in enumerate(SPLITS)
            for i in range(settings["counts"][split])]
    rendered = _rendered(jobs, workers)
    for split in SPLITS:
        rows = []
        for i in range(settings["counts"][split]):
            png, captions, boxes = next(rendered)
            image_id = f"{split}_{i:06d}"
            rel = f"images/{split}/{image_id}.png"
            # In place: the marker, written last, is what says the world is whole.
            io.write_bytes(io.join(root, rel), png, atomic=False)
            rows.append(json.dumps({"image": rel, "image_id": image_id,
                                    "captions": captions,
                                    "boxes": [b.to_json() for b in boxes]}) + "\n")
        io.write_text(io.join(root, f"{split}.jsonl"), "".join(rows))
    io.write_json(marker, settings)
    return _summary(root, settings)


def _rendered(jobs: list, workers: int | None):
    """render_png of each job, in order: in spawned processes (not forked: the
    caller may hold TensorFlow's threads), or in this process for workers=1
    and by default for a small world (starting a worker costs ~1 s)."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(jobs) >= 200 else 1
    if workers <= 1:
        yield from map(render_png, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(render_png, jobs, chunksize=32)


def world_settings(root: str) -> dict:
    """The settings of the world rendered at root (what its images are made of)."""
    return io.read_json(io.join(root, MARKER))


def _summary(root: str, settings: dict) -> dict:
    words = set()
    for split in SPLITS:
        for ex in read_split(root, split):
            words.update(w for c in ex.captions for w in c.split())
    return {"root": root, **settings["counts"], "words": len(words)}


def read_split(root: str, split: str) -> list[Example]:
    """A generated split as Examples (absolute image paths, boxes kept)."""
    path = io.join(root, f"{split}.jsonl")
    if not io.exists(path) or not io.exists(io.join(root, MARKER)):
        raise FileNotFoundError(f"no synthetic world split at {path}; generate it with "
                                "`tfcaption generate pipelines/synthetic.py`")
    rows = [json.loads(line) for line in io.read_text(path).split("\n") if line.strip()]
    base = io.abspath(root)
    return [Example(r["image_id"], io.join(base, r["image"]), tuple(r["captions"]),
                    tuple(Box.from_json(b) for b in r["boxes"])) for r in rows]
