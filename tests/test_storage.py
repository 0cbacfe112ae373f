"""Storage: every artifact goes through tf.io.gfile, and each stage is keyed by content.

A whole pipeline runs with every folder on ram:// (TensorFlow's in-memory
filesystem, which stands in for gs:// here: neither is reachable through `open`
or `os.path`) from an empty working directory and temp directory, which must
stay empty. The same ram:// run then serves the checks that stages are judged
by what they are made of (a retrain into the same checkpoint path is a new
model), not by paths.
"""

import contextlib
import copy
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import uuid

import numpy as np
import pytest
import tensorflow as tf

from tfcaption import (checkpoints, cli, decoding, evaluation, export, io, report, runner,
                       serving, tflite_export)
from tests.test_evaluation import tiny_synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]


def ram_config(root: str):
    config = tiny_synthetic(pathlib.Path("unused"))
    config.data.root = f"{root}/world"
    config.data.synthetic_counts = (24, 8, 8)
    config.data.synthetic_image_size = 64
    config.features.cache_dir = f"{root}/cache"
    config.train.train_dir = f"{root}/train"
    config.eval.out_dir = f"{root}/eval"
    config.eval.export_dir = f"{root}/saved_models"
    config.eval.report_dir = f"{root}/report"
    return config


def local_files(folder: pathlib.Path) -> dict[str, float]:
    """Every file under folder with its mtime, caches of Python and pytest aside."""
    skip = {".git", "__pycache__", ".pytest_cache", ".venv"}
    out = {}
    for path, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            full = os.path.join(path, name)
            out[full] = os.path.getmtime(full)
    return out


@contextlib.contextmanager
def nothing_written_locally(scratch: pathlib.Path):
    """Runs the block from an empty working directory with an empty TMPDIR, and
    checks afterwards that both are still empty and the repository unchanged
    (a relative or temporary local path would land in one of them)."""
    cwd, tmp = scratch / f"cwd-{uuid.uuid4().hex[:6]}", scratch / f"tmp-{uuid.uuid4().hex[:6]}"
    cwd.mkdir()
    tmp.mkdir()
    repo = local_files(REPO)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setenv("TMPDIR", str(tmp))
        patch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR afresh
        yield
    assert list(cwd.rglob("*")) == []
    # AutoGraph writes each converted tf.function's source to a temporary .py
    # file: TensorFlow's own scratch, not an artifact.
    assert [p for p in tmp.rglob("*") if not p.name.startswith("__autograph_generated")] == []
    assert local_files(REPO) == repo


@pytest.fixture(scope="module")
def ram_run(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("storage")
    root = f"ram://tfcaption-test-{uuid.uuid4().hex}"
    config = ram_config(root)
    with nothing_written_locally(scratch):
        artifacts = runner.run(config, progress=False)
    yield config, artifacts, scratch
    # ram:// keeps no folder entry for some folders TensorFlow writes into
    # (rmtree then stops with NotFound); the memory goes with the process anyway.
    with contextlib.suppress(tf.errors.NotFoundError):
        io.rmtree(root)


@pytest.mark.integration
def test_every_artifact_is_on_ram_and_nothing_local(ram_run):
    config, artifacts, _ = ram_run
    assert all(str(where).startswith("ram://") for where in artifacts.values()
               if isinstance(where, str))
    for split in ("train", "val", "test"):
        assert io.exists(io.join(artifacts["feature caches"][split], "manifest.json"))
    assert io.exists(io.join(config.features.cache_dir, "vocab.txt"))
    assert io.exists(io.join(config.data.root, "world.json"))
    assert io.exists(io.join(config.train.train_dir, "finished.json"))
    assert tf.io.gfile.glob(f"{artifacts['checkpoint']}.*")
    assert tf.io.gfile.listdir(artifacts["TensorBoard logs"])
    assert json.loads(io.read_text(artifacts["results"]))
    stored = io.read_json(artifacts["metrics"])
    assert stored["checkpoint_digest"] == checkpoints.checkpoint_digest(artifacts["checkpoint"])
    model = artifacts["SavedModel"]
    assert model == f"{config.eval.export_dir}/tiny/1"
    assert io.exists(io.join(model, "saved_model.pb"))
    assert serving.model_info(model)["checkpoint_digest"] == stored["checkpoint_digest"]
    assert "<!DOCTYPE html>" in io.read_text(artifacts["report"])


@pytest.mark.integration
def test_cli_run_with_ram_paths_skips_every_complete_stage(ram_run, tmp_path, monkeypatch,
                                                           capsys):
    """`--set` takes URLs; a second run over complete outputs decodes, exports and
    reports nothing."""
    config, artifacts, scratch = ram_run
    pipeline_file = tmp_path / "ram_pipeline.py"
    pipeline_file.write_text("import pathlib\nfrom tests.test_evaluation import tiny_synthetic\n"
                             "CONFIG = tiny_synthetic(pathlib.Path('unused'))\n")
    sets = {"data.root": config.data.root, "data.synthetic_counts": "24,8,8",
            "data.synthetic_image_size": "64", "features.cache_dir": config.features.cache_dir,
            "train.train_dir": config.train.train_dir, "eval.out_dir": config.eval.out_dir,
            "eval.export_dir": config.eval.export_dir, "eval.report_dir": config.eval.report_dir}
    argv = ["run", str(pipeline_file)] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    monkeypatch.setattr(evaluation, "decode_split", lambda *a, **k: pytest.fail("decoded"))
    monkeypatch.setattr(export, "export", lambda *a, **k: pytest.fail("exported"))
    monkeypatch.setattr(serving, "caption_bytes", lambda *a, **k: pytest.fail("reported"))
    with nothing_written_locally(scratch):
        assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "already scored" in printed and artifacts["SavedModel"] in printed


@pytest.mark.integration
def test_retrain_into_the_same_path_redoes_evaluation_export_and_report(ram_run):
    """`make clean` then a retrain: the same checkpoint path holds other weights.
    Judged by the checkpoint's content, evaluation, export and report are done
    again (a new SavedModel version), not taken from the old model."""
    config, first, scratch = ram_run
    old_metrics = io.read_json(first["metrics"])
    old_report = io.read_text(first["report"])
    io.rmtree(config.train.train_dir)
    config.train.seed = 1
    with nothing_written_locally(scratch):
        second = runner.run(config, progress=False)
    assert second["checkpoint"] == first["checkpoint"]  # same path, other weights
    digest = checkpoints.checkpoint_digest(second["checkpoint"])
    assert digest != old_metrics["checkpoint_digest"]
    assert io.read_json(second["metrics"])["checkpoint_digest"] == digest
    assert second["SavedModel"] == f"{config.eval.export_dir}/tiny/2"
    assert serving.model_info(second["SavedModel"])["checkpoint_digest"] == digest
    assert io.read_text(second["report"]) != old_report
    assert "tiny/2" in io.read_text(second["report"])

    # A version number used again for another model (saved_models cleaned, or
    # `export --version 2` elsewhere) is another model, though its path is not.
    info_file = io.join(second["SavedModel"], serving.INFO_FILE)
    io.write_json(info_file, {**serving.model_info(second["SavedModel"]),
                              "checkpoint_digest": "of other weights"})
    page = io.read_text(second["report"])
    with nothing_written_locally(scratch):
        report.write_report(config, model_dir=second["SavedModel"])
    assert io.read_text(second["report"]) != page


@pytest.mark.slow  # three more pipeline runs (~40 s); the decoding parts' own tests are quick
def test_sampling_decode_settings_and_tflite_keep_to_ram(ram_run):
    """The decoding parts go through io as well: sampled diversity in metrics.json
    and samples in the report; a decode.* setting the SavedModel fixes
    (no_repeat_ngram) makes `run` export a new version, a per-request one
    (num_captions, temperature) does not; the TFLite model is written to ram://
    and read back from there. (After the retrain test: its version numbers.)"""
    config, _, scratch = ram_run
    config = copy.deepcopy(config)
    with nothing_written_locally(scratch):
        kept = runner.run(config, progress=False)["SavedModel"]  # (the last info was altered)
        config.decode.num_captions, config.decode.temperature = 3, 1.0
        sampled = runner.run(config, progress=False)
    assert sampled["SavedModel"] == kept  # sampling settings travel with each request
    stored = io.read_json(sampled["metrics"])
    assert stored["sampled"] == decoding.sampled_settings(config)
    assert 0.0 <= stored["diversity"]["samples"]["self_bleu_4"] <= 1.0
    page = io.read_text(sampled["report"])
    assert "self-BLEU-4" in page and "<ol class='samples'>" in page

    config.decode.no_repeat_ngram = 2
    with nothing_written_locally(scratch):
        banned = runner.run(config, progress=False)
    assert banned["SavedModel"] != kept
    assert serving.complete_versions(io.join(config.eval.export_dir, config.name))[-1] == \
        int(banned["SavedModel"].rsplit("/", 1)[1])
    info = serving.model_info(banned["SavedModel"])
    assert info["decode_settings"] == decoding.decode_settings(config)
    assert info["decode_settings"]["no_repeat_ngram"] == 2
    assert io.read_json(banned["metrics"])["no_repeat_ngram"] == 2

    with nothing_written_locally(scratch):
        path = tflite_export.export_tflite(config, config.eval.export_dir)
        size = config.features.input_size
        found = tflite_export.run(io.join(path, tflite_export.MODEL_FILE),
                                  np.zeros([1, size, size, 3], np.uint8))
    assert path == f"{config.eval.export_dir}/tiny-tflite/1"
    assert sorted(io.listdir(path)) == ["model.tflite", "tfcaption.json", "vocab.txt"]
    assert io.read_json(io.join(path, tflite_export.INFO_FILE))["decode_settings"] == \
        info["decode_settings"]
    assert found["tokens"].shape[0] == 1


# -- io.py ----------------------------------------------------------------------------

def test_write_json_temp_names_differ_between_processes(tmp_path):
    """Two workers writing one file (best.json, a shard's sidecar) never share a
    temporary file: the name carries the host and the process id."""
    path = str(tmp_path / "shared.json")
    code = f"from tfcaption import io; print(io.temp_name({path!r}))"
    other = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           text=True, cwd=REPO).stdout.strip()
    mine = io.temp_name(path)
    assert mine != other and mine.startswith(path) and other.startswith(path)
    assert str(os.getpid()) in mine


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_crashed_write_leaves_the_old_file_or_none(where, tmp_path, monkeypatch):
    folder = str(tmp_path) if where == "local" else f"ram://crash-{uuid.uuid4().hex}"
    path = io.join(folder, "sub", "metrics.json")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process died between writing and renaming

    monkeypatch.setattr(io.gfile, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        io.write_json(path, {"step": 1})
    assert not io.exists(path)  # no complete-looking file, only a temporary one
    assert io.listdir(io.join(folder, "sub")) == [os.path.basename(io.temp_name(path))]
    monkeypatch.undo()
    io.write_json(path, {"step": 1})
    monkeypatch.setattr(io.gfile, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        io.write_json(path, {"step": 2})
    assert io.read_json(path) == {"step": 1}


def test_versions_without_their_marker_are_incomplete(tmp_path):
    """An export killed half way (or still writing, in place, on gs://) is no
    version to serve or to reuse, and its number is not handed out again."""
    model_dir = f"ram://versions-{uuid.uuid4().hex}/tiny"
    io.write_json(io.join(model_dir, "1", serving.INFO_FILE), {"version": 1})
    io.write_bytes(io.join(model_dir, "2", "saved_model.pb"), b"half")
    io.makedirs(io.join(model_dir, "3.tmp-host-1"))
    assert io.versions(model_dir) == [1, 2]
    assert serving.complete_versions(model_dir) == [1]
    assert export.next_version(model_dir) == 3
    assert io.versions(f"ram://versions-{uuid.uuid4().hex}/none") == []


def test_the_next_export_removes_what_killed_exports_left_here(tmp_path, caplog):
    """Local exports are written aside (<version>.tmp-<host>-<pid>) and renamed;
    one killed half-way leaves its folder. The next export here removes those of
    this host's processes that no longer run, and keeps a live process's and
    another host's (on a shared disk it cannot tell those are abandoned)."""
    host = socket.gethostname()
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              check=True, capture_output=True, text=True).stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        left = [f"1.tmp-{host}-{gone}", f"3.tmp-{host}-{gone}"]
        kept = [f"1.tmp-{host}-{alive.pid}", f"1.tmp-elsewhere-{gone}", "2"]
        for name in left + kept:
            (tmp_path / name).mkdir()
            (tmp_path / name / "saved_model.pb").write_bytes(b"half")
        with caplog.at_level("WARNING", logger="tfcaption.export"):
            final, tmp, version = export.version_folder(str(tmp_path), None)
        assert version == 3 and final == str(tmp_path / "3")
        assert sorted(os.listdir(tmp_path)) == sorted(kept)
        assert all(name in caplog.text for name in left)
    finally:
        alive.kill()
        alive.wait()


def test_paths_keep_their_scheme():
    assert io.abspath("gs://bucket/a") == "gs://bucket/a"
    assert io.abspath("a") == os.path.join(os.getcwd(), "a")
    assert io.normpath("gs://bucket/cache/train/../vocab.txt") == "gs://bucket/cache/vocab.txt"
    assert io.normpath("cache/train/../vocab.txt") == os.path.join("cache", "vocab.txt")
