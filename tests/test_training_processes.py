"""Training as real processes: 2-process DDP under torchrun, and the helpers that run or kill -9
a real training (the kill points themselves are tested in test_resume_points.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from cxr14.tracking import EXPERIMENT
from tests.conftest import REPO_ROOT, tiny_params

pytestmark = pytest.mark.slow


def _environment(tmp_path: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT / "src"),
        "CXR14_NO_PROGRESS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }


def _params_file(tmp_path: Path, **overrides) -> Path:
    params = tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "train.batch_size": 2, **overrides})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _train_command(params: Path, cache: Path, out: Path, model: str = "cnn") -> list[str]:
    return [
        sys.executable,
        str(REPO_ROOT / "pipeline" / "train.py"),
        model,
        "--seed",
        "42",
        "--params",
        str(params),
        "--cache",
        str(cache),
        "--out",
        str(out),
    ]


def kill_at(point: str, count: int, command: list[str], env: dict) -> None:
    """Run the training `command` under tests/kill_at.py, which SIGKILLs it at the `count`th
    `point` (step, checkpoint, checkpoint-write, validation): a kill chosen by counting, not timing."""
    killed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "kill_at.py"), point, str(count), *command[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, f"the kill point was not reached: {killed.stderr[-2000:]}"


def test_torchrun_two_processes_train_one_model_with_one_run(tiny_cache, tmp_path):
    env = _environment(tmp_path)
    params = _params_file(tmp_path, **{"train.epochs": 2, "train.device": "cpu"})
    out_dir = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", *_train_command(params, tiny_cache, out_dir)[1:]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    summary = json.loads((out_dir / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2
    history = pd.read_csv(out_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert (history["train_loss"] > 0).all() and history["train_loss"].notna().all()
    assert (history["images_per_second"] > 0).all()
    assert sorted(path.name for path in out_dir.glob("*.pt")) == ["best.pt", "last.pt"]
    assert result.stderr.count("epoch 1: train loss") == 1  # only rank 0 logs

    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].data.params["world_size"] == "2"
