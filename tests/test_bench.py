"""The benchmarks still run (they import internals that change): smoke runs, slow suite."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_training_bench_quick_prints_its_table():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "training.py"), "--quick"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("own longest", "bucketed bf16", "grouped x5", "grouped x5 bf16", "fixed-32 + XLA",
                "fixed-32 4/call", "matmul 1024^3", "tutorial-style", "scst",
                "lstm bucketed", "transformer buck.", "top, frozen", "top trained"):
        assert row in out.stdout


@pytest.mark.slow
def test_tflite_bench_prints_its_table():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "tflite.py"), "--count", "2",
                          "--rounds", "1", "--max-len", "8"],
                         cwd=REPO, capture_output=True, text=True, timeout=900,
                         # this checkout's tfcaption, not whichever one is installed
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("SavedModel (TF runtime)", "TFLite, float32 weights", "TFLite, float16 weights"):
        assert row in out.stdout


@pytest.mark.slow
def test_serving_bench_prints_a_row_per_decoder():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "serving.py"), "--batch", "2",
                          "--batches", "1", "--rounds", "1", "--vocab", "50", "--max-len", "6"],
                         cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    for decoder in ("gru", "lstm", "transformer"):
        for row in ("backbone + greedy, in-memory", "SavedModel, greedy", "SavedModel, beam 3"):
            assert f"{decoder}: {row}" in out.stdout
