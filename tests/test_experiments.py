"""Queued, parallel and temporary `dvc exp` runs, as a user runs sweeps, against the real DVC queue.

    PYTHONPATH=src python -m pytest -q tests/test_experiments.py

A tiny copy of the project is reproduced once; then two experiments and one with a bad param
are queued and run by two queue workers at once (`dvc queue start -j 2`), another runs with
`--temp`. Every experiment runs in a temporary copy of the repository under `.dvc/tmp/exps/`;
MLFLOW_TRACKING_URI is unset, as on a user's machine, so the runs must still land in the
*workspace's* mlflow.db (two writers at once on one SQLite file), and only training and what
follows may run: the data stages come from DVC's cache.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import process_gone, tiny_params
from tests.test_pipeline_e2e import dvc_cache_damage, make_repo, run

pytestmark = pytest.mark.slow
DATA_STAGES = ("fetch", "split", "preprocess", "boxes")
QUEUE_TIMEOUT_SECONDS = 1200


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A reproduced, committed tiny project whose MLflow store is the default (no MLFLOW_TRACKING_URI)."""
    work = tmp_path_factory.mktemp("experiments") / "repo"
    env = make_repo(work, tiny_params(models=["cnn"]))
    del env["MLFLOW_TRACKING_URI"]
    run(["dvc", "repro"], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", "baseline results"], work, env)
    return work, env


def _client(work: Path) -> mlflow.tracking.MlflowClient:
    return mlflow.tracking.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


def _runs_by_experiment(work: Path) -> dict[str, list]:
    client = _client(work)
    experiment = client.get_experiment_by_name("cxr14")
    runs: dict[str, list] = {}
    for found in client.search_runs([experiment.experiment_id]):
        runs.setdefault(found.data.tags.get("dvc_experiment", ""), []).append(found)
    return runs


def _queue_status(work: Path, env: dict) -> dict[str, str]:
    table = run(["dvc", "queue", "status"], work, env)
    status = {}
    for line in table.splitlines():
        match = re.match(r"^\w+\s+(\S+)\s+.*\s(Queued|Running|Success|Failed)\s*$", line)
        if match:
            status[match.group(1)] = match.group(2)
    return status


def _start_queue(work: Path, env: dict, workers: int) -> None:
    """`dvc queue start`: it returns once its workers are spawned, but they inherit its stdout and
    stderr, so those go to a file (a pipe would stay open as long as the longest-lived worker)."""
    with open(work.parent / "queue-start.log", "a") as log:
        subprocess.run(
            ["dvc", "queue", "start", "-j", str(workers)],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=True,
        )


def _end_idle_workers(work: Path, grace_seconds: float = 60) -> None:
    """Queue workers left running once the queue is done. A worker normally exits when the queue
    is empty, but with two of them DVC sometimes leaves one idle for good (it logged "shutting
    down due to empty queue" and ignored `dvc queue stop`, dvc 3.67 / dvc-task 0.40): give them
    `grace_seconds`, then end them, so that no worker outlives the tests."""
    pids = []
    for pid_file in (work / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    deadline = time.monotonic() + grace_seconds
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(1)
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)


def _alive(pid: int) -> bool:
    """A running queue worker (not a recycled pid of another process)."""
    if process_gone(pid):
        return False
    try:
        return b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # ended meanwhile
        return False


# Appended to the training code of exp-fast's snapshot: says which file the stage ran.
SNAPSHOT_EDIT = """

_snapshot_train_model = train_model


def train_model(*args, **kwargs):  # added by tests/test_experiments.py before queueing exp-fast
    import sys

    print(f"training code: {__file__}", file=sys.stderr)
    return _snapshot_train_model(*args, **kwargs)
"""
WORKSPACE_EDIT = '\nraise RuntimeError("the workspace was edited after queueing")\n'


@pytest.fixture(scope="module")
def queued(workspace):
    """Two experiments and a bad one, queued and run by two workers at once. exp-fast is queued with
    an edit of the training code; once all are queued, the workspace's training code is broken
    until the queue is done: each experiment must run the code it was queued with."""
    work, env = workspace
    engine = work / "src" / "cxr14" / "training" / "engine.py"
    original = engine.read_text()
    engine.write_text(original + SNAPSHOT_EDIT)
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr=0.003", "-n", "exp-fast"], work, env)
    engine.write_text(original)
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr=0.0003", "-n", "exp-slow"], work, env)
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr=-1", "-n", "exp-bad"], work, env)
    engine.write_text(original + WORKSPACE_EDIT)
    try:
        _start_queue(work, env, workers=2)
        deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
        while True:
            status = _queue_status(work, env)
            if len(status) == 3 and not {"Queued", "Running"} & set(status.values()):
                break
            assert time.monotonic() < deadline, f"queue still busy after {QUEUE_TIMEOUT_SECONDS} s: {status}"
            time.sleep(5)
    finally:
        engine.write_text(original)
        _end_idle_workers(work)
    logs = {name: run(["dvc", "queue", "logs", name], work, env) for name in status}
    return work, env, status, logs


def test_parallel_queue_runs_both_experiments_and_reports_the_bad_one(queued):
    _, _, status, logs = queued
    assert status == {"exp-fast": "Success", "exp-slow": "Success", "exp-bad": "Failed"}, logs
    # The bad param is refused by the first stage with one line naming the key, no traceback.
    assert "params.yaml: train.lr must be > 0, got -1.0" in logs["exp-bad"]
    assert "Traceback" not in logs["exp-bad"]


def test_each_queued_experiment_runs_the_code_it_was_queued_with(queued):
    """Not the workspace's code as it is when a worker starts it (pipeline/_checkout.py): the
    environment's editable install points at the workspace, DVC's copy is elsewhere."""
    work, _, status, logs = queued
    assert status["exp-slow"] == "Success", logs["exp-slow"][-3000:]  # the broken workspace code never ran
    assert "the workspace was edited after queueing" not in logs["exp-fast"] + logs["exp-slow"]
    ran = re.findall(r"training code: (\S+)", logs["exp-fast"])
    assert ran, logs["exp-fast"][-3000:]
    copy = Path(ran[0])
    assert copy.parts[-4:] == ("src", "cxr14", "training", "engine.py")
    assert copy.is_relative_to(work / ".dvc" / "tmp" / "exps"), copy
    assert "training code:" not in logs["exp-slow"]
    # Its MLflow run says its code is not its baseline commit's (the experiment's commit holds it).
    runs = _runs_by_experiment(work)
    assert runs["exp-fast"][0].data.tags["git_dirty"] == "true"
    assert runs["exp-slow"][0].data.tags["git_dirty"] == "false"


def test_queued_experiments_rerun_no_data_stage(queued):
    _, _, _, logs = queued
    for name in ("exp-fast", "exp-slow"):
        assert "Running stage 'train@cnn-42'" in logs[name]
        rerun = [stage for stage in DATA_STAGES if f"Running stage '{stage}'" in logs[name]]
        assert rerun == [], f"{name} re-ran {rerun}:\n{logs[name][-3000:]}"
    # The copies under .dvc/tmp/exps link their outputs from the shared .dvc/cache and re-train into
    # them (the persisted model folder, linked from the cache): no object may have changed.
    work = queued[0]
    assert dvc_cache_damage(work) == []


def test_queued_runs_land_in_the_workspace_store_with_test_metrics(queued):
    work, _, _, logs = queued
    runs = _runs_by_experiment(work)
    client = _client(work)
    for name, lr in (("exp-fast", "0.003"), ("exp-slow", "0.0003")):
        assert len(runs.get(name, [])) == 1, f"{name}: {runs.keys()}\n{logs[name][-2000:]}"
        found = runs[name][0]
        assert found.info.status == "FINISHED"
        assert float(found.data.params["train.lr"]) == float(lr)
        assert 0.0 <= found.data.metrics["test_macro_auroc"] <= 1.0
        # Artifacts live beside the workspace's database, not in the deleted temporary copy.
        assert {Path(item.path).name for item in client.list_artifacts(found.info.run_id, "figures")} >= {
            "roc_pr.png",
            "training.png",
        }
        assert str(work / "mlruns") in found.info.artifact_uri
        assert "Creating initial MLflow database tables" not in logs[name]  # the workspace's store existed
    assert "exp-bad" not in runs  # refused before any run was created
    experiment = client.get_experiment_by_name("cxr14")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_dvc_exp_show_lists_the_headline_only(queued):
    work, env, _, _ = queued
    table = json.loads(run(["dvc", "exp", "show", "--json"], work, env))
    names = json.dumps(table)
    assert "exp-fast" in names and "exp-slow" in names
    shown = run(
        [
            "dvc",
            "exp",
            "show",
            "--md",
            "--only-changed",
            "--drop",
            "Created|State|Executor|^metrics/[a-z_]+$|^models/",
            "--sort-by",
            "metrics/cnn.json:macro_auroc",
            "--sort-order",
            "desc",
        ],
        work,
        env,
    )
    header = [cell.strip() for cell in shown.splitlines()[0].strip("|").split("|")]
    assert {"macro_auroc", "macro_auroc_ci_low", "macro_auroc_ci_high", "train.lr"} <= set(header), header
    # exp-fast was queued with other training code: DVC shows that dependency as changed.
    code = [column for column in header if column.startswith(("src/", "pipeline/"))]
    assert code == ["src/cxr14/training"], header
    assert len(header) - len(code) <= 12, header  # the headline, not several hundred per-class columns
    rows = [line for line in shown.splitlines() if "exp-fast" in line or "exp-slow" in line]
    auroc = header.index("macro_auroc")
    values = [float(row.strip("|").split("|")[auroc]) for row in rows]
    assert len(values) == 2 and values == sorted(values, reverse=True)  # --sort-by works on the headline
    metrics = run(["dvc", "metrics", "show", "--json"], work, env)
    columns = json.loads(metrics)
    flat = json.dumps(columns)
    assert "Cardiomegaly" not in flat and "prevalence" not in flat  # per-class detail is not a metric


def test_temp_experiment_logs_to_the_workspace_store(workspace):
    work, env = workspace
    output = run(["dvc", "exp", "run", "--temp", "-S", "train.epochs=1", "-n", "exp-temp"], work, env)
    assert "Running stage 'train@cnn-42'" in output
    assert not [stage for stage in DATA_STAGES if f"Running stage '{stage}'" in output]
    runs = _runs_by_experiment(work)
    assert len(runs.get("exp-temp", [])) == 1
    assert "test_macro_auroc" in runs["exp-temp"][0].data.metrics


def test_applied_experiment_reevaluates_into_its_own_run(queued):
    work, env, _, _ = queued
    fast_run = _runs_by_experiment(work)["exp-fast"][0].info.run_id
    run(["dvc", "exp", "apply", "exp-fast"], work, env)
    recorded = json.loads((work / "models" / "cnn" / "seed-42" / "mlflow_run.json").read_text())
    assert recorded["run_id"] == fast_run
    client = _client(work)
    before = len(client.get_metric_history(fast_run, "test_macro_auroc"))
    run(["dvc", "repro", "--single-item", "--force", "evaluate@cnn"], work, env)
    assert len(client.get_metric_history(fast_run, "test_macro_auroc")) == before + 1
    assert len(_runs_by_experiment(work)["exp-fast"]) == 1  # updated, not duplicated


def test_mlflow_ui_opens_on_the_training_runs_with_their_test_auroc(queued, tmp_path):
    """The real `mlflow ui` on the workspace store, in headless Chromium, as a user opens it."""
    from playwright.sync_api import sync_playwright

    from cxr14.tracking import runs_page_url
    from tests.browser import find_chromium, require_chromium
    from tests.test_tracking import running_mlflow

    require_chromium()
    work, _, _, _ = queued
    store = f"sqlite:///{work / 'mlflow.db'}"
    runs = [found for group in _runs_by_experiment(work).values() for found in group]
    with running_mlflow(["ui", "--backend-store-uri", store], tmp_path) as ui:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=find_chromium(),
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            )
            try:
                page = browser.new_page(viewport={"width": 1800, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(runs_page_url(ui, uri=store), wait_until="load")
                page.get_by_text(f"{len(runs)} matching runs").wait_for()
                assert "/runs" in page.url  # the training runs, not the GenAI overview
                page.get_by_role("button", name="Columns", exact=True).click()
                page.locator('span[title="test_macro_auroc"]').first.click()
                page.keyboard.press("Escape")
                page.get_by_role("columnheader", name="test_macro_auroc").first.wait_for()
                rows = "\n".join(page.locator('[role="row"]').all_inner_texts())
                page.screenshot(path=str(tmp_path / "mlflow_runs.png"))
            finally:
                browser.close()
    for found in runs:
        assert found.info.run_name in rows
        assert f"{found.data.metrics['test_macro_auroc']:.4f}"[:5] in rows, (found.info.run_name, rows)
    assert "cxr14-cache-train" in rows  # the dataset column: the cache the run trained on
