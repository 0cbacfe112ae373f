"""Every file in pipelines/ loads as a RunConfig, names a known backbone and opens
with the docstring pipelines/README.md promises (command, runtime, scores).
Loading reads no data and no weights, so files that need downloads are checked too."""

import pathlib

import pytest

from tfcaption import training
from tfcaption.models.backbones import BACKBONES
from tfcaption.pipelines import load_pipeline

PIPELINES = sorted((pathlib.Path(__file__).resolve().parents[1] / "pipelines").glob("*.py"))


def test_the_pipelines_are_found():
    assert {"synthetic.py", "flickr8k_squeezenet.py", "flickr8k_resnet50.py"} <= {
        p.name for p in PIPELINES}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_pipeline_file_loads_and_documents_itself(path):
    config = load_pipeline(str(path))
    training.check_config(config)  # e.g. no scheduled sampling for a transformer
    assert config.name == path.stem
    assert config.features.backbone in BACKBONES
    text = path.read_text()
    assert f"Command:   tfcaption run pipelines/{path.name}" in text
    for section in ("Runtime:", "Scores:"):
        assert f"\n{section}" in text, f"{path.name}: no {section} in its docstring"
