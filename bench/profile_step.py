"""Where the train step's time goes: the TensorFlow profiler over a few steps,
as a table of TensorFlow ops by self time (host CPU or device).

    .venv/bin/python bench/profile_step.py [--grouped 5] [--steps 10] [--top 25]
        [--precision mixed_bfloat16]

The step, model sizes and cache are bench/training.py's (Flickr8k captions,
random 8x8x2048 grids, E256 U512 A512 F512, vocabulary 5000, batch 64). The
trace is written under a temporary folder (--keep to keep it for TensorBoard's
profile plugin) and read back with the profiler's own converter.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import io as pyio
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from training import (SHARED, draw_batches, flickr_captions, synthetic_captions,  # noqa: E402
                      write_cache)

from tfcaption import training  # noqa: E402
from tfcaption.config import (FeatureConfig, ModelConfig, PipelineConfig, RunConfig,  # noqa: E402
                              TrainConfig)


def op_table(logdir: str) -> list[dict]:
    """The profiler's per-op statistics (framework_op_stats) of the trace in logdir."""
    planes = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    if not planes:
        raise FileNotFoundError(f"no profile written under {logdir}")
    raw, ok = _pywrap_profiler_plugin.xspace_to_tools_data(planes, "framework_op_stats", {})
    if not ok:
        raise RuntimeError("the profiler could not convert its trace")
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text.lstrip().startswith("["):  # a DataTable JSON: [{cols, rows}, ...]
        table = json.loads(text)[0]
        names = [c["id"] for c in table["cols"]]
        return [dict(zip(names, (cell.get("v") for cell in row["c"]))) for row in table["rows"]]
    return list(csv.DictReader(pyio.StringIO(text)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grouped", type=int, default=0, help="captions_per_image (0: pairs)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--precision", default="",
                        help="train.mixed_precision, e.g. mixed_bfloat16 (default float32)")
    args = parser.parse_args()

    found = flickr_captions(str(SHARED / "flickr8k"))
    if found:
        order = np.random.default_rng(0).permutation(len(found[0]))[: args.images]
        captions, vocab_captions = [found[0][i] for i in order], found[1]
    else:
        captions, vocab_captions = synthetic_captions(args.images)
    tmp = tempfile.mkdtemp(prefix="tfcaption-profile-")
    try:
        cache = os.path.join(tmp, "cache")
        write_cache(cache, captions, vocab_captions)
        k = args.grouped
        batch = -(-64 // k) * k if k else 64
        config = RunConfig(
            features=FeatureConfig(cache_dir=cache),
            pipeline=PipelineConfig(batch_size=batch, captions_per_image=k),
            model=ModelConfig(embedding_dim=256, units=512, attention_units=512, feature_dim=256),
            train=TrainConfig(train_dir=os.path.join(tmp, "train"), epochs=1,
                              mixed_precision=args.precision))
        trainer = training.make_trainer(config)
        step = training.make_step(trainer)
        batches, _ = draw_batches(config, trainer.tokenizer, args.steps)
        for f, t in {tuple(t.shape): (f, t) for f, t in batches}.values():
            float(step(f, t)[0])  # every shape traced before the trace starts
        logdir = os.path.join(tmp, "profile")
        tf.profiler.experimental.start(logdir)
        for f, t in batches:
            float(step(f, t)[0])
        tf.profiler.experimental.stop()
        rows = op_table(logdir)
        if args.keep:
            kept = shutil.copytree(logdir, "profile-step")
            print(f"trace kept in {kept} (tensorboard --logdir {kept})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def number(row, *keys):
        for key in keys:
            if key in row and row[key] not in (None, ""):
                return float(row[key])
        return 0.0

    self_key = ("total_self_time", "Total self-time (us)", "total_self_time_in_us")
    rows.sort(key=lambda r: -number(r, *self_key))
    total = sum(number(r, *self_key) for r in rows) or 1.0
    what = (f"grouped x{k}" if k else "pairs") + f", {args.precision or 'float32'}"
    print(f"\n{args.steps} steps, {what}, batch {batch}: TensorFlow ops by self time "
          f"({total / 1e3 / args.steps:.0f} ms of op time per step)\n")
    print(f"{'op type':<28}{'op name':<60}{'ms/step':>9}{'share':>8}")
    for row in rows[: args.top]:
        t = number(row, *self_key)
        kind = str(row.get("type") or row.get("Operation Type") or "")
        name = str(row.get("operation") or row.get("Operation Name") or "")
        print(f"{kind[:27]:<28}{name[-59:]:<60}{t / 1e3 / args.steps:>9.1f}{t / total:>8.1%}")
    by_type: dict[str, float] = {}
    for row in rows:
        kind = str(row.get("type") or row.get("Operation Type") or "?")
        by_type[kind] = by_type.get(kind, 0.0) + number(row, *self_key)
    print(f"\n{'op type (summed)':<28}{'ms/step':>9}{'share':>8}")
    for kind, t in sorted(by_type.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{kind[:27]:<28}{t / 1e3 / args.steps:>9.1f}{t / total:>8.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
