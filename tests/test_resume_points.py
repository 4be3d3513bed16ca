"""Exact resume wherever a kill lands: real training processes killed with SIGKILL at points
chosen by counting steps, checkpoints and validations (tests/kill_at.py), then re-run.

Each re-run must end with the history (all but the timing columns), best.pt and last.pt of an
uninterrupted run bit for bit, in one MLflow run per training, and leave no temporary file.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from cxr14.tracking import EXPERIMENT
from cxr14.training.checkpoint import load_checkpoint
from tests.conftest import cache_of, write_small_nih
from tests.test_training_processes import _environment, _params_file, _train_command, kill_at

pytestmark = pytest.mark.slow

# tiny cache: 12 training images in batches of 2 -> 6 optimizer steps per epoch; a mid-epoch
# last.pt after steps 2 and 4 of each epoch. Checkpoint writes, in order: epoch 1: last (step 2),
# last (step 4), best, last (end); epoch 2: last (step 2) = write 5, last (step 4) = write 6, ...
KILL_POINTS = {
    "before the first checkpoint": ("step", 1),
    "between checkpoint steps": ("step", 9),
    "right after a checkpoint": ("checkpoint", 5),
    "during a checkpoint write": ("checkpoint-write", 6),
    "during validation": ("validation", 2),
}
MODEL = "cnn_gap"  # dropout draws from the global torch RNG; the seed `cnn` draws nothing
HISTORY = ["epoch", "train_loss", "val_loss", "val_macro_auroc", "lr"]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The cache, params and environment shared by every kill point, and the uninterrupted run."""
    root = tmp_path_factory.mktemp("resume_points")
    cache = cache_of(write_small_nih(root / "raw"), root / "cache")
    env = _environment(root)
    params = _params_file(root, **{"train.epochs": 3, "train.checkpoint_every_steps": 2, "models": [MODEL]})
    straight = subprocess.run(
        _train_command(params, cache, root / "straight", MODEL), env=env, capture_output=True, text=True, timeout=300
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert len(pd.read_csv(root / "straight" / "history.csv")) == 3
    return root, cache, params, env


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("where", list(KILL_POINTS))
def test_a_kill_anywhere_resumes_to_the_uninterrupted_result(setting, where):
    root, cache, params, env = setting
    point, count = KILL_POINTS[where]
    out = root / where.replace(" ", "_")
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / where.replace(' ', '_')}.db"}  # one store per point
    command = _train_command(params, cache, out, MODEL)
    kill_at(point, count, command, env)
    assert not (out / "train.json").exists()
    if point == "checkpoint-write":
        assert list(out.glob(".last.pt.*.tmp")), "the kill did not land inside the checkpoint write"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    if where != "before the first checkpoint":
        assert f"resuming {MODEL}" in resumed.stderr

    expected = pd.read_csv(root / "straight" / "history.csv")
    actual = pd.read_csv(out / "history.csv")
    pd.testing.assert_frame_equal(actual[HISTORY], expected[HISTORY], check_exact=True)
    for name in ("best.pt", "last.pt"):
        straight, again = _weights(root / "straight" / name), _weights(out / name)
        differing = [key for key in straight if not torch.equal(straight[key], again[key])]
        assert not differing, f"{where}: {name} differs from the uninterrupted run in {differing[:5]}"
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]

    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val_macro_auroc")] == [1, 2, 3]
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    # the killed process's run continues, except before any checkpoint: then it is marked KILLED
    statuses = sorted(run.info.status for run in runs)
    assert statuses == (["FINISHED", "KILLED"] if where == "before the first checkpoint" else ["FINISHED"]), statuses
