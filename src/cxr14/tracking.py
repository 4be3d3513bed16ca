"""MLflow bookkeeping: one run per trained model, which evaluate later reopens.

    uri = tracking_uri()                 # $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    check_reachable(uri)                 # fails before training if a server is down
    tags = run_tags("cnn", cache_dir, "cuda:0", weights=None)   # what the run was trained on
    with model_run("cnn", run_id=None, tags=tags) as run: ...

MLflow is the lab notebook (every run, including abandoned experiments); DVC decides what is
current. The default store is a SQLite file next to params.yaml, so `mlflow ui
--backend-store-uri sqlite:///mlflow.db` shows every run without a server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT = "cxr14"
DEFAULT_STORE = "mlflow.db"
# `dvc exp run` (workspace, --temp and queued runs alike) exports the experiment's name to every
# stage command; plain `dvc repro` does not (dvc/repo/experiments/queue/base.py, dvc/env.py).
DVC_EXPERIMENT_VARIABLE = "DVC_EXP_NAME"
# The cache's small files: one index per split and the summary. They pin the arrays' content
# (sorted image ids, labels, size), so hashing them avoids reading gigabytes of pixels.
FINGERPRINT_FILES = ("*.csv", "cache.json")


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server cannot be reached."""


def tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI` when set, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """For http(s) stores, GET /health now rather than failing after an epoch of training."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} is unreachable ({error}); start it, fix "
            "MLFLOW_TRACKING_URI, or unset it to use the local SQLite store"
        ) from None


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


@contextlib.contextmanager
def model_run(model_name: str, run_id: str | None = None, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Start (or, given `run_id`, continue) the MLflow run of one model."""
    mlflow = _mlflow()
    if run_id:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(run_name=model_name, tags={"model": model_name, **(tags or {})})
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    # MLflow caps a value at 6,000 characters; ours are short, but keep them strings.
    mlflow.log_params({key: str(value)[:500] for key, value in params.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts_to_runs(run_ids: dict[str, str], paths: list[Path], artifact_path: str) -> None:
    """Attach the same files (e.g. the report and its all-model figures) to several models' runs."""
    for model_name, run_id in run_ids.items():
        with model_run(model_name, run_id=run_id):
            for path in paths:
                log_artifact(path, artifact_path)


def recorded_run_id(run_file: Path) -> str:
    """The run id that train@<model> wrote to models/<model>/mlflow_run.json."""
    if not run_file.is_file():
        raise FileNotFoundError(f"{run_file}: no MLflow run recorded; run the train stage first")
    with run_file.open(encoding="utf-8") as handle:
        return json.load(handle)["run_id"]


def git_commit() -> str:
    """The current commit, for the run's tags ("unknown" outside a git checkout)."""
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_experiment_name() -> str | None:
    """The name of the DVC experiment running this stage, or None outside `dvc exp run`."""
    return os.environ.get(DVC_EXPERIMENT_VARIABLE) or None


def data_fingerprint(cache_dir: Path) -> str:
    """12 hex characters identifying the training data: a hash of the cache's indexes and summary."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise FileNotFoundError(f"{cache_dir}: cache folder missing; run the preprocess stage (dvc repro preprocess)")
    files = sorted({path for pattern in FINGERPRINT_FILES for path in cache_dir.glob(pattern) if path.is_file()})
    if not files:
        raise FileNotFoundError(f"{cache_dir}: no <split>.csv or cache.json to fingerprint; rerun the preprocess stage")
    digest = hashlib.sha256()
    for path in files:
        content = path.read_bytes()
        # Name and length delimit each file, so moving bytes between files changes the hash.
        digest.update(f"{path.name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:12]


def run_tags(model_name: str, cache_dir: Path, device: str, weights: str | None) -> dict[str, str]:
    """The tags that say what a run trained, on which data and code, and where.

    Args:
        model_name: registered model name.
        cache_dir: the cache the model trains on (fingerprinted, not read in full).
        device: where training ran, e.g. "cpu" or "cuda:0".
        weights: where the starting weights came from; None for a random initialisation.
    """
    tags = {"model": model_name, "git_commit": git_commit()}
    experiment = dvc_experiment_name()
    if experiment:
        tags["dvc_experiment"] = experiment
    tags.update(data_fingerprint=data_fingerprint(cache_dir), device=device, weights=weights or "random init")
    return tags
