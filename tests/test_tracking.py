"""Run tags, and training tracked by a real `mlflow server` subprocess over HTTP.

    PYTHONPATH=src python -m pytest -q tests/test_tracking.py

The server test starts `mlflow server` on a free local port with a SQLite store and proxied
artifacts in a temp folder, trains a tiny model against it, and reads the run back through
the REST API, as a shared lab server would be used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr14 import tracking
from cxr14.config import config_from_dict
from cxr14.tracking import (
    EXPERIMENT,
    TrackingUnavailableError,
    check_reachable,
    data_fingerprint,
    dvc_experiment_name,
    run_tags,
)
from tests.conftest import tiny_params

SERVER_START_SECONDS = 60  # a cold start (imports, SQLite migrations) takes ~10 s on a busy 2-core machine


def free_port() -> int:
    """A port nothing listens on (the OS picks it; the socket is closed again at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(server: subprocess.Popen) -> None:
    # The server runs in its own session; its uvicorn worker is a child, so signal the group.
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)


@contextlib.contextmanager
def running_mlflow(subcommand: list[str], root: Path) -> Iterator[str]:
    """Run `mlflow <subcommand…> --host 127.0.0.1 --port <free>` in `root` until the block ends;
    yields its URI once /health answers (the log is root/server.log)."""
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow_cli) if mlflow_cli.is_file() else shutil.which("mlflow") or "mlflow",
        *subcommand,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    uri = f"http://127.0.0.1:{port}"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    with (root / "server.log").open("wb") as server_log:
        server = subprocess.Popen(
            command, cwd=root, env=environment, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                output = (root / "server.log").read_text(errors="replace")[-4000:]
                state = (
                    f"exited with {server.returncode}"
                    if server.poll() is not None
                    else f"not healthy after {SERVER_START_SECONDS} s"
                )
                pytest.fail(f"mlflow server on {uri} {state}: {' '.join(command)}\n{output}")
            time.sleep(0.5)
        yield uri
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """The URI of a live `mlflow server` with its own SQLite store and artifact folder."""
    root = tmp_path_factory.mktemp("mlflow_server")
    with running_mlflow(
        [
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        root,
    ) as uri:
        yield uri


def test_training_is_tracked_on_a_real_mlflow_server(mlflow_server, tiny_cache, tmp_path, monkeypatch):
    import mlflow

    from cxr14.training.engine import train_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-exp")  # as `dvc exp run -n tiny-exp` would set it
    # A sampling interval far longer than this training: its system metrics are the last sample,
    # which the run logs when it ends (MLflow's sampler alone would log none for such a short run).
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "3600")
    cfg = config_from_dict(tiny_params(**{"train.image_size": 32, "preprocess.size": 32}))
    result = train_model(cfg, "cnn", tiny_cache, tmp_path / "models" / "cnn", seed=42)

    client = mlflow.tracking.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [result.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["model"] == "cnn" and tags["device"] == "cpu" and tags["weights"] == "random init"
    assert tags["dvc_experiment"] == "tiny-exp"
    assert tags["data_fingerprint"] == data_fingerprint(tiny_cache)
    assert tags["git_commit"]
    assert run.data.params["train.lr"] == str(cfg.train_for("cnn").lr)
    assert [m.step for m in client.get_metric_history(result.run_id, "val_macro_auroc")] == [1, 2]
    artifacts = {artifact.path for artifact in client.list_artifacts(result.run_id)}
    assert {"history.csv", "config.json", "checkpoint"} <= artifacts
    assert [a.path for a in client.list_artifacts(result.run_id, "checkpoint")] == ["checkpoint/best.pt"]
    assert run.info.run_name == "cnn seed 42 (tiny-exp)" and tags["seed"] == "42"
    # The cache as MLflow dataset inputs: one per split, named, digested by the data fingerprint.
    inputs = {_context(entry): entry for entry in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    for context, split in (("training", "train"), ("validation", "val")):
        dataset = inputs[context].dataset
        assert dataset.name == f"cxr14-cache-{split}" and dataset.digest == data_fingerprint(tiny_cache)
        tags = {tag.key: tag.value for tag in inputs[context].tags}
        assert int(tags["images"]) == len((tiny_cache / f"{split}.csv").read_text().splitlines()) - 1
        assert int(tags["patients"]) > 0
    # System metrics sampled during training (CPU and memory here; GPU ones on a GPU node).
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics


def _context(dataset_input) -> str:
    return {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"]


def test_check_reachable_accepts_a_live_server(mlflow_server):
    check_reachable(mlflow_server)


def test_check_reachable_names_a_closed_port():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnavailableError, match=f"{uri} is unreachable"):
        check_reachable(uri, timeout=2)


def test_check_reachable_ignores_local_stores(tmp_path):
    check_reachable(f"sqlite:///{tmp_path / 'mlflow.db'}")  # nothing to reach; must not raise


def test_dvc_experiment_name_reads_what_dvc_exp_run_exports(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-3")
    assert dvc_experiment_name() == "lr-sweep-3"
    monkeypatch.setenv("DVC_EXP_NAME", "")
    assert dvc_experiment_name() is None
    monkeypatch.delenv("DVC_EXP_NAME")
    assert dvc_experiment_name() is None


def _small_cache(folder: Path) -> Path:
    """The small files of a cache (the arrays are stand-ins: they must not matter)."""
    folder.mkdir(parents=True)
    for split, ids in {"train": "a.png,b.png", "val": "c.png", "test": "d.png"}.items():
        rows = "\n".join(f"{image_id},1,0" for image_id in ids.split(","))
        (folder / f"{split}.csv").write_text(f"image_id,patient_id,Atelectasis\n{rows}\n", encoding="utf-8")
        (folder / f"{split}.npy").write_bytes(b"pixels")
    (folder / "cache.json").write_text('{"size": 32, "splits": {"train": 2, "val": 1, "test": 1}}', encoding="utf-8")
    return folder


def test_data_fingerprint_is_stable_and_follows_the_index(tmp_path):
    cache_dir = _small_cache(tmp_path / "cache")
    fingerprint = data_fingerprint(cache_dir)
    assert len(fingerprint) == 12 and int(fingerprint, 16) >= 0
    assert data_fingerprint(cache_dir) == fingerprint
    assert data_fingerprint(_small_cache(tmp_path / "elsewhere")) == fingerprint  # content, not location

    (cache_dir / "train.npy").write_bytes(b"other pixels")  # not read: the index pins the arrays
    assert data_fingerprint(cache_dir) == fingerprint
    index = cache_dir / "val.csv"
    index.write_text(index.read_text(encoding="utf-8").replace("c.png,1,0", "c.png,1,1"), encoding="utf-8")
    assert data_fingerprint(cache_dir) != fingerprint


def test_data_fingerprint_names_a_missing_or_empty_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data_fingerprint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        data_fingerprint(tmp_path / "empty")


def test_run_tags(tmp_path, monkeypatch):
    cache_dir = _small_cache(tmp_path / "cache")
    monkeypatch.setattr(tracking, "git_commit", lambda: "0123abc")
    monkeypatch.setattr(tracking, "git_dirty", lambda: "false")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert run_tags("vit_v1", cache_dir, "cpu", None) == {
        "model": "vit_v1",
        "git_commit": "0123abc",
        "git_dirty": "false",
        "data_fingerprint": data_fingerprint(cache_dir),
        "device": "cpu",
        "weights": "random init",
    }
    monkeypatch.setenv("DVC_EXP_NAME", "bold-fern")
    tags = run_tags("resnet50", cache_dir, "cuda:0", "timm:resnet50.a1_in1k")
    assert tags["dvc_experiment"] == "bold-fern" and tags["weights"] == "timm:resnet50.a1_in1k"
    assert all(isinstance(value, str) for value in tags.values())


def test_git_dirty_says_whether_the_code_differs_from_the_commit(tmp_path, monkeypatch):
    """src/ and pipeline/ edited, staged, deleted or new: the commit alone does not hold the code."""
    import subprocess

    monkeypatch.chdir(tmp_path)
    assert tracking.git_dirty() == "unknown"  # not a git checkout

    def git(*args: str) -> None:
        subprocess.run(["git", *args], check=True, capture_output=True)

    git("init", "-q")
    for name in ("src/cxr14/a.py", "pipeline/train.py", "params.yaml", "README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "code")
    assert tracking.git_dirty() == "false"
    (tmp_path / "params.yaml").write_text("x = 2\n")  # params are recorded as such, data by DVC
    (tmp_path / "README.md").write_text("more\n")
    assert tracking.git_dirty() == "false"
    (tmp_path / "src" / "cxr14" / "a.py").write_text("x = 2\n")
    assert tracking.git_dirty() == "true"
    git("checkout", "--", "src")
    (tmp_path / "pipeline" / "new.py").write_text("")  # an untracked module runs too
    assert tracking.git_dirty() == "true"
    (tmp_path / "pipeline" / "new.py").unlink()
    (tmp_path / "pipeline" / "train.py").unlink()
    assert tracking.git_dirty() == "true"


def test_default_store_is_the_dvc_workspaces_even_from_an_experiment_copy(tmp_path, monkeypatch):
    """`dvc exp run --queue/--temp` runs stages in .dvc/tmp/exps/<copy> with DVC_ROOT = the workspace."""
    copy = tmp_path / "workspace" / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "workspace"))
    uri = tracking.tracking_uri()
    assert tracking.sqlite_path(uri) == tmp_path / "workspace" / "mlflow.db"
    with tracking.model_run("cnn") as run:
        pass
    assert (tmp_path / "workspace" / "mlflow.db").is_file() and not (copy / "mlflow.db").exists()
    assert run.info.artifact_uri.startswith(str(tmp_path / "workspace" / "mlruns"))
    monkeypatch.delenv("DVC_ROOT")  # by hand, outside DVC: the current folder
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
    assert tracking.sqlite_path(tracking.tracking_uri()) == copy / "mlflow.db"


def test_a_locked_store_fails_with_one_clear_error(tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}?timeout=0.2")
    with tracking.model_run("cnn"):
        pass
    holder = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's write transaction that never ends
    try:
        with pytest.raises(TrackingUnavailableError, match="stayed locked beyond its timeout"):
            with tracking.model_run("cnn"):
                pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_reopening_a_run_missing_from_the_store_names_it_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(tracking.RecordedRunMissingError, match="not in the store .*MLFLOW_TRACKING_URI"):
        with tracking.model_run("cnn", run_id="0123456789abcdef0123456789abcdef"):
            pass
