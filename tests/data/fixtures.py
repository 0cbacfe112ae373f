"""Tiny on-disk datasets for the data tests: real image files, some of them bad."""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image

from tfcaption.config import DataConfig, FeatureConfig, PipelineConfig, RunConfig

WORDS = ["red", "green", "blue", "circle", "square", "small", "large", "left", "of"]


def make_images(root: pathlib.Path, count: int, seed: int = 0) -> list[dict]:
    """Writes `count` small valid images in mixed formats; returns JSONL rows."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        pixels = rng.integers(0, 255, size=(24 + i % 5, 32, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        kind = i % 4
        name = f"img/{i:04d}." + ("png" if kind == 1 else "jpg")
        if kind == 2:
            image = image.convert("L")  # grayscale JPEG
        elif kind == 3:
            image = image.convert("CMYK")  # CMYK JPEG
        image.save(root / name)
        caption_words = rng.choice(WORDS, size=(3, 3 + i % 4))
        rows.append({"image": name, "captions": [" ".join(w) for w in caption_words]})
    return rows


def make_dataset(root: pathlib.Path, count: int = 10, bad: bool = True) -> RunConfig:
    """A JSONL dataset with `count` good images (+ 3 bad ones when `bad`) and a
    config that caches it with a tiny random SqueezeNet."""
    rows = make_images(root, count)
    if bad:
        (root / "img" / "corrupt.jpg").write_bytes(b"this is not an image")
        good = (root / rows[0]["image"]).read_bytes()
        (root / "img" / "truncated.jpg").write_bytes(good[: len(good) // 3])
        rows.insert(3, {"image": "img/corrupt.jpg", "captions": ["a corrupt file"]})
        rows.insert(5, {"image": "img/truncated.jpg", "captions": ["a truncated file"]})
        rows.append({"image": "img/missing.jpg", "captions": ["a missing file"]})
    with open(root / "captions.jsonl", "w") as f:
        for split in ("train", "val"):
            for row in rows:
                f.write(json.dumps({**row, "split": split}) + "\n")
    return RunConfig(
        name="tiny",
        data=DataConfig(source="jsonl", root=str(root), annotations=str(root / "captions.jsonl")),
        features=FeatureConfig(backbone="squeezenet", weights="random", input_size=64,
                               cache_dir=str(root / "cache"), batch_size=4, shard_size=4),
        pipeline=PipelineConfig(batch_size=5, shuffle_window=16, bucket_boundaries=(4, 6)),
    )
