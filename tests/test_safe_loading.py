"""Weights and checkpoints are data, never code: a pickled payload planted in best.pt, last.pt or
a pretrained_path file is refused with a message naming the file, and never runs.

The payload creates a folder when unpickled; its absence after each attempt proves nothing ran
(with `torch.load(weights_only=False)` it is created before any error could be raised).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from cxr14 import tracking
from cxr14.config import config_from_dict
from cxr14.inference import load_trained
from cxr14.io import atomic_write_json
from cxr14.models import PretrainedWeightsError, build_model
from cxr14.training.checkpoint import CheckpointError, load_checkpoint
from cxr14.training.engine import train_model
from tests.conftest import tiny_params
from tests.test_cli import run_stage


class Payload:
    """Unpickling this calls os.mkdir(marker): code a checkpoint must never be able to run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def plant(path: Path, marker: Path, **entries) -> Path:
    """A checkpoint shaped like the project's, with the payload beside real tensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_model("cnn_gap", 15, 32, pretrained=False).model
    torch.save({"model": model.state_dict(), "image_size": 32, "extra": Payload(marker), **entries}, path)
    return path


def test_a_payload_in_best_pt_is_refused_by_evaluate_explain_and_profile(tmp_path):
    marker = tmp_path / "payload_ran"
    plant(tmp_path / "models" / "cnn_gap" / "best.pt", marker, model_name="cnn_gap")
    with pytest.raises(CheckpointError, match=r"best\.pt: refused to load.*posix\.mkdir|best\.pt: refused to load"):
        load_trained(tmp_path / "models" / "cnn_gap", "cnn_gap", torch.device("cpu"))
    assert not marker.exists()


def test_a_payload_in_last_pt_is_refused_before_training(tiny_cache, tmp_path, mlflow_store):
    marker = tmp_path / "payload_ran"
    out = tmp_path / "models" / "cnn_gap"
    plant(out / "last.pt", marker, finished=False)
    cfg = config_from_dict(tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "models": ["cnn_gap"]}))
    with pytest.raises(CheckpointError, match=r"last\.pt: refused to load"):
        train_model(cfg, "cnn_gap", tiny_cache, out, seed=42)
    assert not marker.exists()
    assert not (out / "history.csv").exists()


def test_a_payload_in_a_pretrained_path_is_refused(tmp_path):
    marker = tmp_path / "payload_ran"
    weights = plant(tmp_path / "weights.pth", marker)
    with pytest.raises(PretrainedWeightsError, match=r"weights\.pth"):
        build_model("cnn_gap", 15, 32, pretrained_path=str(weights))
    assert not marker.exists()


def test_the_evaluate_stage_refuses_a_planted_best_pt_in_one_line(tiny_cache, tmp_path, mlflow_store):
    marker = tmp_path / "payload_ran"
    model_dir = tmp_path / "models" / "cnn_gap" / "seed-42"  # train_seeds: [42]
    plant(model_dir / "best.pt", marker, model_name="cnn_gap")
    with tracking.model_run("cnn_gap") as run:  # the shared folder comes with its run record
        atomic_write_json(model_dir / "mlflow_run.json", {"run_id": run.info.run_id, "tracking_uri": mlflow_store})
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "models": ["cnn_gap"]}))
    )
    metrics = tmp_path / "metrics"
    result = run_stage(
        "evaluate.py",
        "cnn_gap",
        "--params",
        str(params),
        "--cache",
        str(tiny_cache),
        "--model-dir",
        str(model_dir.parent),
        "--metrics",
        str(metrics / "m.json"),
        "--details",
        str(metrics / "d.json"),
        "--roc",
        str(metrics / "roc.csv"),
        "--curves",
        str(metrics / "curves.csv"),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(model_dir / "best.pt") in errors[0] and "refused to load" in errors[0], errors
    assert not marker.exists()
    assert not (metrics / "m.json").exists()


def test_the_projects_own_checkpoints_load_as_data(tmp_path):
    """What the engine writes (RNG states, history, optimizer) needs nothing beyond weights_only."""
    from cxr14.training.checkpoint import capture_rng, save_checkpoint

    model = build_model("cnn_gap", 15, 32, pretrained=False).model
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    save_checkpoint(
        tmp_path / "last.pt",
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": [capture_rng(torch.Generator())],
            "state": {"best_auroc": 0.5},
        },
    )
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert set(checkpoint) == {"model", "optimizer", "rng", "state"}


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_an_empty_or_truncated_checkpoint_names_the_file(tmp_path, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"best\.pt: not a readable checkpoint"):
        load_checkpoint(path)
