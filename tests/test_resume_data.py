"""An unfinished last.pt is resumed only under the same params, data and world size; otherwise
training starts over, says why, and the abandoned MLflow run is ended and tagged."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

import cxr14
from cxr14.config import config_from_dict
from cxr14.tracking import data_fingerprint
from cxr14.training.checkpoint import load_checkpoint, save_checkpoint
from cxr14.training.code import TRAINING_CODE, code_state
from cxr14.training.engine import resume_refusal, train_model, training_fingerprint
from tests.conftest import cache_of, tiny_params, write_nih_folder
from tests.test_engine import killed_at_second_validation
from tests.test_training_processes import _environment, _params_file, _train_command, kill_at

ENGINE_LOGGER = "cxr14.training.engine"


def _other_cache(tmp_path: Path) -> Path:
    """A second 32 px cache with other images, findings and patients than `tiny_cache`."""
    findings = ["Effusion", "No Finding", "Atelectasis|Mass", "Pneumothorax", "Nodule", "No Finding", "Edema"]
    rows = [
        (f"{patient:08d}_{follow:03d}.png", findings[(2 * patient + follow) % len(findings)], str(patient))
        for patient in range(101, 113)
        for follow in range(3)
    ]
    return cache_of(write_nih_folder(tmp_path / "raw_other", rows, seed=1), tmp_path / "cache_other")


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ENGINE_LOGGER and r.levelno >= logging.WARNING]


@pytest.mark.slow
def test_unfinished_checkpoint_on_another_cache_starts_over_and_ends_the_old_run(
    tiny_cache, tmp_path, mlflow_store, caplog
):
    other_cache = _other_cache(tmp_path)
    old_data, new_data = data_fingerprint(tiny_cache), data_fingerprint(other_cache)
    assert old_data != new_data

    # A real training on the first cache, killed -9 mid-epoch 2: its MLflow run stays RUNNING.
    env = _environment(tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == mlflow_store
    overrides = {"train.epochs": 3, "train.checkpoint_every_steps": 1}
    params = _params_file(tmp_path, **overrides)
    out_dir = tmp_path / "cnn"
    last_path = out_dir / "last.pt"
    # epoch 1 writes 5 mid-epoch last.pt, best.pt and last.pt; the 8th write is epoch 2's first
    kill_at("checkpoint", 8, _train_command(params, tiny_cache, out_dir), env)
    checkpoint = load_checkpoint(last_path)
    assert not checkpoint["finished"] and checkpoint["resume_key"]["data"] == old_data
    old_run_id = checkpoint["state"]["run_id"]
    client = mlflow.tracking.MlflowClient(mlflow_store)
    assert client.get_run(old_run_id).info.status == "RUNNING"

    # Re-run with the same params on the other cache: it must not continue the old run.
    caplog.set_level(logging.INFO, logger=ENGINE_LOGGER)
    cfg = config_from_dict(
        tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "train.batch_size": 2, **overrides})
    )
    result = train_model(cfg, "cnn", other_cache, out_dir, seed=42)

    assert [row["epoch"] for row in result.history] == [1, 2, 3] and result.epochs_run == 3
    assert not any(r.getMessage().startswith("resuming") for r in caplog.records)
    refusals = [message for message in _warnings(caplog) if "not resuming" in message]
    assert len(refusals) == 1, _warnings(caplog)
    message = refusals[0]
    assert str(last_path) in message and old_data in message and new_data in message
    assert "other data" in message and "other params" not in message and "world size" not in message
    assert old_run_id in message

    assert result.run_id != old_run_id
    old_run, new_run = client.get_run(old_run_id), client.get_run(result.run_id)
    assert old_run.info.status == "KILLED"
    assert "other data" in old_run.data.tags["abandoned"] and new_data in old_run.data.tags["abandoned"]
    assert old_run.data.tags["superseded_by"] == result.run_id
    assert new_run.info.status == "FINISHED"
    assert new_run.data.tags["restarted_from"] == old_run_id
    assert old_data in new_run.data.tags["resume_refused"] and new_data in new_run.data.tags["resume_refused"]
    assert new_run.data.tags["data_fingerprint"] == new_data
    assert [m.step for m in client.get_metric_history(result.run_id, "val_macro_auroc")] == [1, 2, 3]

    final = load_checkpoint(last_path)
    assert final["finished"] and final["resume_key"]["data"] == new_data and final["state"]["run_id"] == result.run_id


def test_checkpoint_from_other_params_or_before_the_resume_key_starts_over(
    tiny_cache, tmp_path, mlflow_store, monkeypatch, caplog
):
    settings = {"train.image_size": 32, "preprocess.size": 32, "train.epochs": 2, "train.lr": 1e-3}
    out_dir = tmp_path / "cnn"
    with killed_at_second_validation(monkeypatch):
        train_model(config_from_dict(tiny_params(**settings)), "cnn", tiny_cache, out_dir, seed=42)
    checkpoint = load_checkpoint(out_dir / "last.pt")
    assert not checkpoint["finished"] and checkpoint["state"]["epoch"] == 1
    old_run_id = checkpoint["state"]["run_id"]

    caplog.set_level(logging.INFO, logger=ENGINE_LOGGER)
    result = train_model(
        config_from_dict(tiny_params(**{**settings, "train.lr": 2e-3})), "cnn", tiny_cache, out_dir, seed=42
    )
    assert [row["epoch"] for row in result.history] == [1, 2]
    refusals = [message for message in _warnings(caplog) if "not resuming" in message]
    assert len(refusals) == 1
    assert "other params (train.lr 0.001 -> 0.002)" in refusals[0] and "other data" not in refusals[0]
    client = mlflow.tracking.MlflowClient(mlflow_store)
    old_run = client.get_run(old_run_id)
    assert old_run.info.status == "FAILED"  # ended by the interrupt; abandoning keeps that status
    assert "train.lr 0.001 -> 0.002" in old_run.data.tags["abandoned"]
    assert client.get_run(result.run_id).data.tags["restarted_from"] == old_run_id

    # A checkpoint written before the resume key existed: "other settings", start over.
    legacy = {key: value for key, value in checkpoint.items() if key != "resume_key"}
    legacy["fingerprint"] = "0123456789abcdef"
    save_checkpoint(out_dir / "last.pt", legacy)
    caplog.clear()
    again = train_model(config_from_dict(tiny_params(**settings)), "cnn", tiny_cache, out_dir, seed=42)
    assert [row["epoch"] for row in again.history] == [1, 2]
    assert any("other settings" in message for message in _warnings(caplog))


def test_refusal_names_every_changed_component():
    params = {"seed": 0, "train": {"lr": 0.001, "epochs": 2}, "model": "cnn"}
    code = {"files": {"cxr14/a.py": "1111", "cxr14/b.py": "2222"}, "libraries": {"torch": "2.14.1"}}
    key = {"params": params, "data": "aaaaaaaaaaaa", "world_size": 1, "code": code}
    assert resume_refusal({"fingerprint": training_fingerprint(key), "resume_key": key}, key) is None
    old_code = {"files": {"cxr14/a.py": "9999", "cxr14/c.py": "3333"}, "libraries": {"torch": "2.13.0"}}
    old = {
        "params": {**params, "train": {"lr": 0.01, "epochs": 2}},
        "data": "bbbbbbbbbbbb",
        "world_size": 2,
        "code": old_code,
    }
    reason = resume_refusal({"fingerprint": "old", "resume_key": old}, key)
    assert "other params (train.lr 0.01 -> 0.001)" in reason
    assert "other data (data fingerprint bbbbbbbbbbbb -> aaaaaaaaaaaa)" in reason
    assert "another world size (2 -> 1 processes)" in reason
    assert "other code (torch 2.13.0 -> 2.14.1, cxr14/a.py edited, cxr14/b.py added, cxr14/c.py removed)" in reason
    without_code = {name: value for name, value in key.items() if name != "code"}  # a last.pt from before
    assert "other code (the checkpoint records none)" in resume_refusal(
        {"fingerprint": "older", "resume_key": without_code}, key
    )
    assert "other settings" in resume_refusal({"fingerprint": "legacy"}, key)


def test_checkpoint_from_other_code_starts_over(tiny_cache, tmp_path, mlflow_store, monkeypatch, caplog):
    """A run begun by other code (an edited module, another torch) is not finished by this code."""
    settings = {"train.image_size": 32, "preprocess.size": 32, "train.epochs": 2}
    cfg = config_from_dict(tiny_params(**settings))
    out_dir = tmp_path / "cnn"
    with killed_at_second_validation(monkeypatch):
        train_model(cfg, "cnn", tiny_cache, out_dir, seed=42)
    checkpoint = load_checkpoint(out_dir / "last.pt")
    assert not checkpoint["finished"] and checkpoint["resume_key"]["code"] == code_state()

    # The same checkpoint as the code before an edit of the seed CNN's module would have written it.
    key = copy.deepcopy(checkpoint["resume_key"])
    key["code"]["files"]["cxr14/models/seed.py"] = "0" * 16
    save_checkpoint(out_dir / "last.pt", {**checkpoint, "resume_key": key, "fingerprint": training_fingerprint(key)})
    caplog.set_level(logging.INFO, logger=ENGINE_LOGGER)
    result = train_model(cfg, "cnn", tiny_cache, out_dir, seed=42)
    assert [row["epoch"] for row in result.history] == [1, 2]
    refusals = [message for message in _warnings(caplog) if "not resuming" in message]
    assert len(refusals) == 1 and "other code (cxr14/models/seed.py edited)" in refusals[0], refusals
    assert "other params" not in refusals[0] and "other data" not in refusals[0]

    # Unchanged code resumes: the same interrupted run, re-run as it was, continues at epoch 2.
    shutil.rmtree(out_dir)
    with killed_at_second_validation(monkeypatch):
        train_model(cfg, "cnn", tiny_cache, out_dir, seed=42)
    caplog.clear()
    resumed = train_model(cfg, "cnn", tiny_cache, out_dir, seed=42)
    assert any(r.getMessage().startswith("resuming cnn") for r in caplog.records)
    assert not any("not resuming" in message for message in _warnings(caplog))
    assert [row["epoch"] for row in resumed.history] == [1, 2]


def test_code_state_follows_each_module_train_declares(tmp_path):
    """code_state hashes the package it is imported from: a copy with one training module edited
    differs in that module alone; a module added to a declared folder is named; a module train@
    does not declare (the report's) and a compiled cache file do not count."""
    package = Path(cxr14.__file__).resolve().parent
    shutil.copytree(package, tmp_path / "src" / "cxr14", ignore=shutil.ignore_patterns("__pycache__"))
    probe = "import json; from cxr14.training.code import code_state; print(json.dumps(code_state()))"

    def state() -> dict:
        environment = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
        done = subprocess.run(
            [sys.executable, "-c", probe], env=environment, capture_output=True, text=True, check=True, cwd=tmp_path
        )
        return json.loads(done.stdout)

    before = state()
    assert before == code_state()  # the copy is the same code as the package running this test
    assert {"cxr14/training/engine.py", "cxr14/models/seed.py", "cxr14/io.py"} <= before["files"].keys()
    assert not any(name.startswith("cxr14/reporting/") for name in before["files"])
    assert before["libraries"]["torch"] == torch.__version__.split("+")[0]
    copy_root = tmp_path / "src" / "cxr14"
    for edited in ("models/seed.py", "reporting/__init__.py"):
        (copy_root / edited).write_text((copy_root / edited).read_text() + "\n# an edit\n")
    (copy_root / "models" / "extra.py").write_text("X = 1\n")
    (copy_root / "models" / "__pycache__").mkdir(exist_ok=True)
    (copy_root / "models" / "__pycache__" / "seed.cpython-311.py").write_text("")
    after = state()
    names = before["files"].keys() | after["files"].keys()
    changed = {name for name in names if before["files"].get(name) != after["files"].get(name)}
    assert changed == {"cxr14/models/seed.py", "cxr14/models/extra.py"}
    assert after["libraries"] == before["libraries"]
    assert len(TRAINING_CODE) == len(set(TRAINING_CODE))
