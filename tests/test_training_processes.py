"""Training as real processes: kill -9 mid-epoch then resume, and 2-process DDP under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml

from cxr14.tracking import EXPERIMENT
from tests.conftest import REPO_ROOT, tiny_params

pytestmark = pytest.mark.slow


def _environment(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "CXR14_NO_PROGRESS": "1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def _params_file(tmp_path: Path, **overrides) -> Path:
    params = tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "train.batch_size": 2, **overrides})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _train_command(params: Path, cache: Path, out: Path, model: str = "cnn") -> list[str]:
    return [sys.executable, str(REPO_ROOT / "pipeline" / "train.py"), model, "--params", str(params),
            "--cache", str(cache), "--out", str(out)]


def _mid_epoch_checkpoint(last_path: Path) -> dict | None:
    """The resumable state in last.pt if it was written inside an epoch after the first."""
    try:
        state = torch.load(last_path, map_location="cpu", weights_only=False)["state"]
    except (FileNotFoundError, EOFError, RuntimeError, KeyError):
        return None  # not written yet (the rename is atomic, so never half a file)
    return state if state["partial"] is not None and state["epoch"] >= 1 else None


def kill_mid_epoch(command: list[str], env: dict, last_path: Path) -> dict:
    """Start a training process, kill -9 it once last.pt holds a mid-epoch checkpoint after the
    first epoch, and return that checkpoint's state."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    state = None
    while state is None and process.poll() is None and time.monotonic() < deadline:
        state = _mid_epoch_checkpoint(last_path)
        time.sleep(0.01)
    assert state is not None, "the run ended before a mid-epoch checkpoint could be caught; kill test not exercised"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return state


def test_kill_9_mid_epoch_then_rerun_matches_an_uninterrupted_run(tiny_cache, tmp_path):
    env = _environment(tmp_path)
    params = _params_file(tmp_path, **{"train.epochs": 4, "train.checkpoint_every_steps": 1})
    straight = subprocess.run(_train_command(params, tiny_cache, tmp_path / "straight"), env=env,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    kill_mid_epoch(_train_command(params, tiny_cache, killed_dir), env, killed_dir / "last.pt")
    assert not (killed_dir / "train.json").exists()

    resumed = subprocess.run(_train_command(params, tiny_cache, killed_dir), env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming cnn" in resumed.stderr and ", batch " in resumed.stderr
    expected = pd.read_csv(tmp_path / "straight" / "history.csv")
    actual = pd.read_csv(killed_dir / "history.csv")
    columns = ["epoch", "train_loss", "val_loss", "val_macro_auroc", "lr"]
    pd.testing.assert_frame_equal(actual[columns], expected[columns], rtol=1e-6)
    straight_weights = torch.load(tmp_path / "straight" / "best.pt", weights_only=False)["model"]
    resumed_weights = torch.load(killed_dir / "best.pt", weights_only=False)["model"]
    assert all(torch.allclose(resumed_weights[key], value, atol=1e-6) for key, value in straight_weights.items())

    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 2  # the straight run and the killed-then-continued one, not three
    run_id = json.loads((killed_dir / "mlflow_run.json").read_text())["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "val_macro_auroc")] == [1, 2, 3, 4]


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
