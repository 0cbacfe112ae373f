"""Loading a pipeline file: a Python file under pipelines/ that defines CONFIG."""

from __future__ import annotations

import importlib.util
import os

from tfcaption.config import RunConfig, override


def load_pipeline(path: str, overrides: list[str] = ()) -> RunConfig:
    """Imports `path`, takes its CONFIG (a RunConfig) and applies "section.field=value"
    overrides. Imported as a module, so a pipeline file is plain, reviewable Python."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no pipeline file at {path}")
    spec = importlib.util.spec_from_file_location(
        "tfcaption_pipeline_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = getattr(module, "CONFIG", None)
    if not isinstance(config, RunConfig):
        raise ValueError(f"{path} must define CONFIG = tfcaption.config.RunConfig(...)")
    for assignment in overrides:
        override(config, assignment)
    return config
