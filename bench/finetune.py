"""The backbone top's cost in training (issue 18), for bench/training.py.

At the real-data default's sizes (pipelines/flickr8k_squeezenet.py: LSTM E256
U512 A256 F256, batches of 64 captions, SqueezeNet at 224 px), three steps on
the same captions, measured alternately in one process:

    frozen          the default: a cache of fire9's 13x13x512 grid, no top
    top, frozen     features.trainable_from=fire6: a cache of pool5's 13x13x256
                    grid, fire6..fire9 run in the step; the cross-entropy phase
                    of a fine-tuning run (the top's weights are not trained)
    top trained     the same in the fine-tune phase: the top's gradients too,
                    and its own Adam

Peak memory: each step run for a few steps in a process of its own
(`python bench/finetune.py --memory LABEL`), reporting the process's peak
resident set and how much the steps added to what it held before them. The
grids are random (the speed of a convolution does not depend on its weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

LABELS = ("frozen", "top, frozen", "top trained")
CUT = "fire6"


def configs(cache_root: str, train_root: str, batch_size: int):
    """label -> (RunConfig, grid) at the Flickr8k default's sizes."""
    from tfcaption.config import (FeatureConfig, ModelConfig, PipelineConfig, RunConfig,
                                  TrainConfig)
    model = ModelConfig(decoder="lstm", embedding_dim=256, units=512, attention_units=256,
                        feature_dim=256, dropout=0.3)
    made = {}
    for label, cut, grid in (("frozen", "", (13, 13, 512)), ("top, frozen", CUT, (13, 13, 256)),
                             ("top trained", CUT, (13, 13, 256))):
        cache = os.path.join(cache_root, f"cache-{grid[2]}")
        made[label] = (RunConfig(
            features=FeatureConfig(backbone="squeezenet", weights="random", input_size=224,
                                   cache_dir=cache, trainable_from=cut),
            pipeline=PipelineConfig(batch_size=batch_size), model=model,
            train=TrainConfig(train_dir=os.path.join(train_root, label.replace(", ", "-")),
                              epochs=1, finetune_epochs=1 if cut else 0)), grid)
    return made


def write_caches(made: dict, write_cache, captions, vocab_captions) -> None:
    for config, grid in made.values():
        if not os.path.exists(config.features.cache_dir):
            write_cache(config.features.cache_dir, captions, vocab_captions, grid=grid)


def steps(made: dict, draw_batches, count: int) -> dict:
    """label -> (step function, batches): one trainer per cache."""
    from tfcaption import training
    out, trainers = {}, {}
    for label, (config, _) in made.items():
        key = config.features.cache_dir
        if key not in trainers:
            trainers[key] = training.make_trainer(config)
        trainer = trainers[key]
        batches, _ = draw_batches(config, trainer.tokenizer, count)
        out[label] = (training.make_step(trainer, "ft" if label == "top trained" else "xe"),
                      batches)
    return out


def memory(label: str, root: str, batch_size: int, count: int) -> dict:
    """The peak RSS (MB) of this process while it runs `count` steps of
    `label` (traced beforehand), and how much that is above its RSS before
    them (the caches were written by the parent). Linux: the peak is reset
    after the set-up (/proc/self/clear_refs), whose own peak is not the step's."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from training import draw_batches, run_steps  # bench/training.py
    made = configs(root, tempfile.mkdtemp(prefix="tfcaption-bench-mem-"), batch_size)
    step, batches = steps({label: made[label]}, draw_batches, count)[label]
    run_steps(step, list({tuple(t.shape): (f, t) for f, t in batches}.values()))  # traces
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set
    before = _status_mb("VmRSS")
    run_steps(step, batches)
    peak = _status_mb("VmHWM")
    return {"peak_mb": peak, "added_mb": peak - before}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def measure_memory(root: str, batch_size: int, count: int) -> dict:
    """label -> memory(label) from a fresh process each."""
    out = {}
    for label in LABELS:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory", label,
                               root, str(batch_size), str(count)],
                              capture_output=True, text=True, check=True)
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def table(runs: dict, mem: dict) -> str:
    """runs: label -> {"batches", "times"}; the rows bench/training.py prints."""
    lines = [f"{'backbone top':<14}{'steps/s':>9}{'images/s':>10}{'captions/s':>12}"
             f"{'vs frozen':>11}{'peak RSS MB':>13}{'step added MB':>15}"]
    base = None
    for label in LABELS:
        run = runs[label]
        t = min(run["times"])
        n = len(run["batches"])
        images = sum(int(f.shape[0]) for f, _ in run["batches"]) / t
        captions = sum(int((t_[:, 0] != 0).numpy().sum()) for _, t_ in run["batches"]) / t
        base = base or n / t
        m = mem.get(label, {})
        lines.append(f"{label:<14}{n / t:>9.3f}{images:>10.1f}{captions:>12.1f}"
                     f"{n / t / base:>11.2f}{m.get('peak_mb', float('nan')):>13.0f}"
                     f"{m.get('added_mb', float('nan')):>15.0f}")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:2] == ["--memory"]:
    label, root, batch_size, count = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(memory(label, root, batch_size, count)))
