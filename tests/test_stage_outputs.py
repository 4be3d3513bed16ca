"""Stages that cannot log or cannot write fail before computing, and change no output (issue 12, parts 6-7).

    PYTHONPATH=src python -m pytest -q tests/test_stage_outputs.py

A tiny model is trained once (in-process) against a real SQLite MLflow store; the real stage
scripts then run as subprocesses against a closed port, an unwritable SQLite path, or an
unwritable output folder. "Failed before computing" is shown by the outputs: none is written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cxr14.config import config_from_dict
from tests.conftest import cache_of, tiny_params, write_small_nih
from tests.test_cli import run_stage
from tests.test_tracking import free_port

IS_ROOT = os.geteuid() == 0  # root ignores permission bits: a regular file stands in for a folder


def _params() -> dict:
    return tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "train.epochs": 1, "models": ["cnn"]})


def train_tiny_cnn(root: Path, params: dict, seeds=(42,)) -> dict:
    """A tiny cnn trained on a 32 px cache once per seed (models/cnn/seed-<seed>), its runs in the
    SQLite store `root/store/mlflow.db`: {"root", "cache", "uri", "runs": {seed: run id}, "model_dir"}."""
    from cxr14.training.engine import train_model

    cache = cache_of(write_small_nih(root / "raw"), root / "cache")
    (root / "store").mkdir()
    uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("CXR14_NO_PROGRESS", "1")
        for seed in seeds:
            out = root / "models" / "cnn" / f"seed-{seed}"
            runs[seed] = train_model(config_from_dict(params), "cnn", cache, out, seed=seed).run_id
    return {"root": root, "cache": cache, "uri": uri, "runs": runs, "model_dir": root / "models" / "cnn"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny cnn trained on a 32 px cache, its run in the SQLite store `root/store/mlflow.db`."""
    root = tmp_path_factory.mktemp("stage_outputs")
    (root / "params.yaml").write_text(yaml.safe_dump(_params()))
    made = train_tiny_cnn(root, _params())
    return {**made, "run_id": made["runs"][42]}


def run_script(script: str, *args: str, uri: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        MLFLOW_TRACKING_URI=uri,
        # Should anything reach MLflow's HTTP client, fail at once instead of retrying for minutes.
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    return run_stage(script, *args, cwd=cwd, env=env, timeout=600)


def evaluate_args(trained, out: Path) -> list[str]:
    return [
        "cnn",
        "--params",
        str(trained["root"] / "params.yaml"),
        "--cache",
        str(trained["cache"]),
        "--model-dir",
        str(trained["model_dir"]),
        "--metrics",
        str(out / "cnn.json"),
        "--details",
        str(out / "details" / "cnn.json"),
        "--roc",
        str(out / "roc" / "cnn.csv"),
        "--curves",
        str(out / "curves" / "cnn.csv"),
        "--predictions",
        str(out / "predictions" / "cnn.csv"),
        "--figures",
        str(out / "figures" / "cnn"),
    ]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The stage's single `error:` line (exit 2, no traceback)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes); hidden staging leftovers included."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def unwritable_sqlite_uris(tmp_path: Path) -> list[tuple[str, Path]]:
    """(uri, path the error must name): a store under a regular file, and (not as root) a read-only folder."""
    (tmp_path / "afile").write_text("not a folder")
    cases = [(f"sqlite:///{tmp_path / 'afile' / 'x.db'}", tmp_path / "afile")]
    if not IS_ROOT:
        read_only = tmp_path / "read_only"
        read_only.mkdir()
        read_only.chmod(0o500)
        cases.append((f"sqlite:///{read_only / 'x.db'}", read_only))
    return cases


def test_evaluate_refuses_a_closed_tracking_port_before_computing(trained, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "metrics"
    result = run_script("evaluate.py", *evaluate_args(trained, out), uri=uri, cwd=tmp_path)
    line = one_error_line(result)
    assert f"MLFLOW_TRACKING_URI={uri}" in line and "unreachable" in line
    assert not out.exists()  # nothing computed, nothing written


def test_evaluate_refuses_an_unwritable_sqlite_store_before_computing(trained, tmp_path):
    for number, (uri, culprit) in enumerate(unwritable_sqlite_uris(tmp_path)):
        out = tmp_path / f"metrics{number}"
        result = run_script("evaluate.py", *evaluate_args(trained, out), uri=uri, cwd=tmp_path)
        line = one_error_line(result)
        assert f"MLFLOW_TRACKING_URI={uri}" in line and str(culprit) in line, line
        assert not out.exists()


def test_train_refuses_an_unwritable_sqlite_store_before_training(trained, tmp_path):
    for number, (uri, culprit) in enumerate(unwritable_sqlite_uris(tmp_path)):
        out = tmp_path / f"model{number}"
        result = run_script(
            "train.py",
            "cnn",
            "--seed",
            "42",
            "--params",
            str(trained["root"] / "params.yaml"),
            "--cache",
            str(trained["cache"]),
            "--out",
            str(out),
            uri=uri,
            cwd=tmp_path,
        )
        line = one_error_line(result)
        assert f"MLFLOW_TRACKING_URI={uri}" in line and str(culprit) in line, line
        assert not out.exists()


def test_evaluate_with_an_unwritable_figure_folder_keeps_every_old_output_and_logs_nothing(trained, tmp_path):
    import mlflow

    out = tmp_path / "metrics"
    olds = {
        out / "cnn.json": b'{"old": 1}\n',
        out / "details" / "cnn.json": b'{"old": 2}\n',
        out / "roc" / "cnn.csv": b"fpr,tpr\n0,0\n",
        out / "curves" / "cnn.csv": b"epoch\n1\n",
        out / "predictions" / "cnn.csv": b"image_id\nold.png\n",
    }
    for path, content in olds.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    if IS_ROOT:
        (out / "figures").write_bytes(b"a file where the figures' folder should be")
        culprit = out / "figures"
    else:
        culprit = out / "figures" / "cnn"
        culprit.mkdir(parents=True)
        (culprit / "roc_pr.png").write_bytes(b"old figure")
        culprit.chmod(0o500)
    before = snapshot(out)
    try:
        result = run_script("evaluate.py", *evaluate_args(trained, out), uri=trained["uri"], cwd=tmp_path)
    finally:
        if not IS_ROOT:
            culprit.chmod(0o700)
    line = one_error_line(result)
    assert str(culprit) in line, line
    assert snapshot(out) == before  # byte-identical, and no staging folder left behind
    assert not list(out.rglob(".*"))
    run = mlflow.tracking.MlflowClient(trained["uri"]).get_run(trained["run_id"])
    assert not [key for key in run.data.metrics if key.startswith("test_")]


def test_default_store_is_named_when_it_cannot_be_written(tmp_path, monkeypatch):
    from cxr14 import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "mlflow.db").mkdir()  # a folder where the database file should be
    with pytest.raises(tracking.TrackingUnavailableError) as caught:
        tracking.require_store()
    message = str(caught.value)
    assert "default MLflow store" in message and "MLFLOW_TRACKING_URI is not set" in message
    assert str(tmp_path / "mlflow.db") in message and "\n" not in message


def test_a_store_failing_mid_stage_is_one_line_naming_the_uri(tmp_path, monkeypatch):
    """The artifact folder beside a SQLite store turns into a file after the run started."""
    from cxr14 import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"png")
    with pytest.raises(tracking.TrackingUnavailableError) as caught:
        with tracking.model_run("cnn"):
            tracking.log_metrics({"a": 1.0})
            artifacts = tmp_path / tracking.ARTIFACT_FOLDER  # made on the first artifact
            shutil.rmtree(artifacts, ignore_errors=True)
            artifacts.write_bytes(b"no longer a folder")
            tracking.log_artifact(figure, "figures")
    message = str(caught.value)
    assert f"MLFLOW_TRACKING_URI={uri}" in message and "\n" not in message
