"""`tfcaption run`: every stage in order, and a second run that does no work."""

import json
import os
import shutil

import pytest

from tfcaption import runner
from tests.test_evaluation import tiny_synthetic

pytestmark = pytest.mark.integration  # a whole pipeline, twice


def test_run_makes_every_artifact_then_skips_each_complete_stage(tmp_path, capsys):
    config = tiny_synthetic(tmp_path)
    config.data.synthetic_counts = (24, 8, 8)
    config.data.synthetic_image_size = 64
    first = runner.run(config, progress=False)
    printed = capsys.readouterr().out
    assert "CIDEr-D" in printed and "artifacts:" in printed
    for key in ("results", "metrics", "report"):
        assert os.path.isfile(first[key]), key
    # Attention correctness is printed whenever a generated word named an object.
    with open(first["metrics"]) as f:
        scored = json.load(f)["attention_correctness"]["words"]
    assert ("pointing" in printed) == bool(scored)
    assert os.path.isfile(os.path.join(first["SavedModel"], "saved_model.pb"))
    assert first["SavedModel"].endswith(os.path.join("tiny", "1"))
    stamps = {k: os.path.getmtime(first[k]) for k in ("metrics", "report")}
    finished = os.path.getmtime(os.path.join(config.train.train_dir, "finished.json"))

    second = runner.run(config, progress=False)
    assert second == first  # the same SavedModel version, not a new one
    assert {k: os.path.getmtime(second[k]) for k in stamps} == stamps
    assert os.path.getmtime(os.path.join(config.train.train_dir, "finished.json")) == finished

    # Killed after evaluation: the export and the report are made again, nothing else.
    shutil.rmtree(os.path.dirname(first["SavedModel"]))
    os.remove(first["report"])
    third = runner.run(config, progress=False)
    assert third["SavedModel"] == first["SavedModel"]
    assert os.path.isfile(third["report"])
    assert os.path.getmtime(third["metrics"]) == stamps["metrics"]
