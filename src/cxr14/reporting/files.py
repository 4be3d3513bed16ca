"""The report's inputs: one file per model under metrics/, each made by a known stage.

paths = per_model_files(Path("metrics/efficiency"), ["cnn"], ".json", "profile")
figures = per_model_json(Path("metrics/efficiency"), ["cnn"], "profile")
"""

from __future__ import annotations

import json
from pathlib import Path

from cxr14.errors import Cxr14Error


class ReportError(Cxr14Error, ValueError):
    """The report inputs are missing or inconsistent."""


def per_model_files(directory: Path, models: list[str], suffix: str, stage: str) -> dict[str, Path]:
    """<directory>/<model><suffix> for every model; a missing one names the stage that makes it."""
    paths = {name: Path(directory) / f"{name}{suffix}" for name in models}
    for name, path in paths.items():
        if not path.is_file():
            raise ReportError(f"{path}: no output of {stage}@{name}; run `dvc repro {stage}@{name}`")
    return paths


def per_model_json(directory: Path, models: list[str], stage: str) -> dict[str, dict]:
    """The parsed <directory>/<model>.json of every model (missing = error naming the stage)."""
    records = {}
    for name, path in per_model_files(directory, models, ".json", stage).items():
        with path.open(encoding="utf-8") as handle:
            records[name] = json.load(handle)
    return records
