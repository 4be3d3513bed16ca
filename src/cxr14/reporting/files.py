"""The report's inputs: one file per model under metrics/, each made by a known stage.

    paths = per_model_files(Path("metrics/efficiency"), ["cnn"], ".json", "profile")
"""

from __future__ import annotations

from pathlib import Path


class ReportError(ValueError):
    """The report inputs are missing or inconsistent."""


def per_model_files(directory: Path, models: list[str], suffix: str, stage: str) -> dict[str, Path]:
    """<directory>/<model><suffix> for every model; a missing one names the stage that makes it."""
    paths = {name: Path(directory) / f"{name}{suffix}" for name in models}
    for name, path in paths.items():
        if not path.is_file():
            raise ReportError(f"{path}: no output of {stage}@{name}; run `dvc repro {stage}@{name}`")
    return paths
