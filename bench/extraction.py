"""Extraction throughput: JPEG files -> feature cache, against the bare backbone.

    .venv/bin/python bench/extraction.py [--root ../shared/flickr8k] [--split dev]

Both rates come from one process, one backbone, the same batch size, measured
alternately (bare, extract, bare, extract) so machine noise hits both alike; the
best of each is kept. The ratio extract/bare says how much of the backbone's
speed the input pipeline and the TFRecord writing cost (1.0 = none).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from tfcaption.config import DataConfig, FeatureConfig, RunConfig  # noqa: E402
from tfcaption.data import features  # noqa: E402
from tfcaption.data.sources import load_examples  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


def bare_rate(extractor: features.Extractor, examples, batch: int, repeats: int = 3) -> float:
    """Images/s of the backbone alone on preprocessed (resized and normalised)
    float32 images already in memory, with the extraction's float16 output."""
    backbone = extractor.backbone
    images = [backbone.preprocess(features.decode_image(tf.io.read_file(ex.image)))
              for ex in examples[: batch * 8]]
    batches = [tf.stack(images[i:i + batch]) for i in range(0, len(images), batch)]
    forward = tf.function(lambda x: tf.cast(backbone(x), tf.float16))
    forward(batches[0]).numpy()  # trace + warm up
    start = time.perf_counter()
    for _ in range(repeats):
        for b in batches:
            forward(b).numpy()
    return repeats * len(images) / (time.perf_counter() - start)


def extract_rate(config: RunConfig, extractor: features.Extractor, split: str) -> tuple[float, int]:
    """Images/s from JPEG files on disk to a complete cache (records + manifest)."""
    shutil.rmtree(config.features.cache_dir, ignore_errors=True)
    start = time.perf_counter()
    manifest = features.extract(config, split, extractor=extractor)
    return manifest["count"] / (time.perf_counter() - start), manifest["count"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(SHARED / "flickr8k"))
    parser.add_argument("--split", default="val", help="split role: train, val (= dev), test")
    parser.add_argument("--backbone", default="squeezenet")
    parser.add_argument("--weights", default=str(
        SHARED / "weights" / "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"))
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if not os.path.exists(args.weights) and args.weights not in ("random", "imagenet"):
        print(f"no weights at {args.weights}; pass --weights random", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="tfcaption-bench-")
    config = RunConfig(
        data=DataConfig(source="flickr8k", root=args.root, val_split="dev"),
        features=FeatureConfig(backbone=args.backbone, weights=args.weights,
                               cache_dir=os.path.join(tmp, "cache"), batch_size=args.batch))
    examples = load_examples(config.data, args.split)
    extractor = features.Extractor(config)
    bare, extracted = [], []
    try:
        for _ in range(2):
            bare.append(bare_rate(extractor, examples, args.batch))
            rate, count = extract_rate(config, extractor, args.split)
            extracted.append(rate)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    b, e = max(bare), max(extracted)
    h, w, c = extractor.backbone.grid_shape
    print(f"\n{args.backbone} {extractor.backbone.input_size}px -> {h}x{w}x{c}, batch "
          f"{args.batch}, {count} images of {args.root} ({args.split}), "
          f"{os.cpu_count()} CPUs\n")
    print(f"{'measure':<44}{'images/s':>10}{'runs':>24}")
    print(f"{'backbone forward, in-memory tensors':<44}{b:>10.1f}"
          f"{' '.join(f'{x:.1f}' for x in bare):>24}")
    print(f"{'extraction, JPEG files -> cache':<44}{e:>10.1f}"
          f"{' '.join(f'{x:.1f}' for x in extracted):>24}")
    print(f"{'ratio extraction / forward':<44}{e / b:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
