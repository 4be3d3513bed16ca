"""Shared fixtures: the real params.yaml shrunk to test size, and tiny NIH-layout folders.

Tests run the real code on real files (PNG, CSV, memmap, SQLite MLflow store); nothing is
mocked. Slow end-to-end tests carry the `slow` marker.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from cxr14.config import SplitConfig, config_from_dict
from cxr14.data.cache import build_cache
from cxr14.data.metadata import load_metadata
from cxr14.data.split import attach_splits
from cxr14.stages.split import make_splits

REPO_ROOT = Path(__file__).resolve().parents[1]
NIH_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
]


def real_params() -> dict:
    with (REPO_ROOT / "params.yaml").open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def tiny_params(**overrides) -> dict:
    """params.yaml shrunk: few patients, small images, one short epoch, CPU."""
    params = copy.deepcopy(real_params())
    params["data"]["phantom"].update(n_patients=40, image_size=128)
    params["preprocess"].update(size=64, workers=2)
    params["train"].update(epochs=2, batch_size=16, image_size=64, device="cpu", patience=5)
    params["evaluate"].update(batch_size=32, bootstrap_resamples=100)
    params["profile"].update(warmup=1, repeats=2, throughput_batch=4, throughput_repeats=1, device="cpu")
    params["explain"].update(batch_size=16, gradcam_images=4)
    params["models"] = ["cnn", "vit_v1"]
    # The demo's per-model sizes and epoch counts would undo the test size and the one short run.
    for model_overrides in params["train"]["overrides"].values():
        model_overrides.pop("image_size", None)
        model_overrides.pop("epochs", None)
        model_overrides.pop("min_epochs", None)
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params


@pytest.fixture
def tiny_config():
    return config_from_dict(tiny_params(), source="tiny params")


def write_nih_folder(root: Path, rows: list[tuple[str, str, str]], size: int = 48, seed: int = 0) -> Path:
    """Write images/<id> PNGs and Data_Entry_2017.csv for (image_id, findings, patient_id) rows."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for follow_up, (image_id, findings, patient_id) in enumerate(rows):
        pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
        assert cv2.imwrite(str(root / "images" / image_id), pixels)
        records.append([image_id, findings, follow_up, patient_id, 50, "M", "PA"])
    pd.DataFrame(records, columns=NIH_COLUMNS).to_csv(root / "Data_Entry_2017.csv", index=False)
    return root


def write_small_nih(root: Path) -> Path:
    """30 images of 10 patients with a mix of findings, in the NIH layout, under `root`."""
    findings = ["No Finding", "Effusion", "Mass|Nodule", "Cardiomegaly", "No Finding", "Infiltration"]
    rows = [
        (f"{patient:08d}_{follow:03d}.png", findings[(patient + follow) % len(findings)], str(patient))
        for patient in range(1, 11)
        for follow in range(3)
    ]
    return write_nih_folder(root, rows)


@pytest.fixture
def small_nih(tmp_path) -> Path:
    """30 images of 10 patients with a mix of findings, in the NIH layout."""
    return write_small_nih(tmp_path / "raw")


def process_gone(pid: int) -> bool:
    """No such process, or a zombie (ended, not yet reaped by its parent): from /proc (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # ended and reaped (ESRCH while reading)
        return True
    return stat.split(")")[-1].split()[0] == "Z"


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A real SQLite MLflow store in the test's temp folder."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("CXR14_NO_PROGRESS", "1")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def cache_of(raw: Path, cache_dir: Path, size: int = 32) -> Path:
    """A `size` px cache of the NIH-layout folder `raw`, split 40/30/30 by patient (seed 0)."""
    metadata = load_metadata(raw)
    table, _ = make_splits(metadata, SplitConfig(val_fraction=0.3, test_fraction=0.3), seed=0)
    splits_csv = cache_dir.parent / f"{cache_dir.name}_splits.csv"
    table.to_csv(splits_csv, index=False)
    frame, labels = attach_splits(metadata, splits_csv)
    build_cache(frame, labels, metadata.images.paths, cache_dir, size=size, workers=1)
    return cache_dir


@pytest.fixture
def tiny_cache(small_nih, tmp_path):
    """A 32 px cache of `small_nih` (30 images, 10 patients) split 40/30/30 by patient."""
    return cache_of(small_nih, tmp_path / "cache")
