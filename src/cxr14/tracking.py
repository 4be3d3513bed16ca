"""MLflow bookkeeping: one run per trained model, which evaluate later reopens.

    uri = tracking_uri()                 # $MLFLOW_TRACKING_URI or sqlite:///<workspace>/mlflow.db
    check_reachable(uri)                 # fails before training if the store cannot be written
    require_store(Path("models/cnn/mlflow_run.json"), "cnn")   # + the recorded run is in it
    tags = run_tags("cnn", cache_dir, "cuda:0", weights=None)   # what the run was trained on
    with model_run("cnn", run_id=None, tags=tags, system_metrics=True) as run: ...

MLflow is the lab notebook (every run, including abandoned experiments); DVC decides what is
current. The default store is a SQLite file next to params.yaml in the *workspace*: `dvc exp
run --queue` and `--temp` run each experiment in a copy of the repository under
`.dvc/tmp/exps/`, and DVC tells every stage where the workspace is (`$DVC_ROOT`), so their
runs land in the same `mlflow.db` as the workspace's and survive the copy. Several queue
workers may write at once: SQLite connections wait up to `SQLITE_TIMEOUT_SECONDS` for a lock,
and creating the store and the experiment is serialised by a file lock.

Every stage that logs checks the store before it computes (`check_reachable`, `require_store`):
a server that does not answer or a SQLite file or folder that cannot be written is one
`TrackingUnavailableError` naming MLFLOW_TRACKING_URI (or saying that the default store is
used), not a traceback after the work is done. A store that fails later, inside `model_run`,
is the same one-line error with MLflow's own message in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxr14.errors import Cxr14Error, MissingInputError
from cxr14.model_names import train_stage

log = logging.getLogger(__name__)

EXPERIMENT = "cxr14"
DEFAULT_STORE = "mlflow.db"
# Where a local store keeps artifacts: beside the database, so that runs from an experiment's
# temporary copy of the repository keep their artifacts when the copy is deleted.
ARTIFACT_FOLDER = "mlruns"
# A queue worker waits this long for another worker's write instead of failing on
# "database is locked" (SQLAlchemy passes it to sqlite3.connect).
SQLITE_TIMEOUT_SECONDS = 120
# The MLflow UI opens an experiment on the page for its kind; without this tag it guesses, and
# MLflow 3 guesses the GenAI overview (traces, tokens) for an experiment of training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# `dvc exp run` (workspace, --temp and queued runs alike) exports the experiment's name to every
# stage command; plain `dvc repro` does not (dvc/repo/experiments/queue/base.py, dvc/env.py).
DVC_EXPERIMENT_VARIABLE = "DVC_EXP_NAME"
# Set by DVC for every stage command: the repository's root, and for queued and --temp
# experiments the root of the workspace they were queued from, not of the temporary copy.
DVC_ROOT_VARIABLE = "DVC_ROOT"
# The cache's small files: one index per split and the summary. They pin the arrays' content
# (sorted image ids, labels, size), so hashing them avoids reading gigabytes of pixels.
FINGERPRINT_FILES = ("*.csv", "cache.json")


class TrackingUnavailableError(Cxr14Error, RuntimeError):
    """The MLflow tracking store cannot be reached or written."""


def workspace_root() -> Path:
    """The DVC workspace this process works for: `$DVC_ROOT` under DVC, else the current folder."""
    return Path(os.environ.get(DVC_ROOT_VARIABLE) or Path.cwd()).resolve()


def tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI` when set, else the workspace's SQLite file (with a lock timeout)."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return _default_uri()


def _default_uri() -> str:
    return f"sqlite:///{workspace_root() / DEFAULT_STORE}?timeout={SQLITE_TIMEOUT_SECONDS}"


def describe_store(uri: str) -> str:
    """Where `uri` came from, for error messages: the variable to fix, or that it is the default."""
    if uri == _default_uri():
        return (
            f"the default MLflow store {uri} (MLFLOW_TRACKING_URI is not set; the store is "
            f"$DVC_ROOT/{DEFAULT_STORE}, or {DEFAULT_STORE} in the current folder outside DVC)"
        )
    return f"MLFLOW_TRACKING_URI={uri}"


def _store_fix(uri: str) -> str:
    if uri == _default_uri():
        return (
            "fix that file or folder, or set MLFLOW_TRACKING_URI to a store you can write "
            "(sqlite:////absolute/path/mlflow.db or http://host:port)"
        )
    return f"fix MLFLOW_TRACKING_URI, or unset it to use the default store sqlite:///{workspace_root() / DEFAULT_STORE}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (query such as `?timeout=` removed); None otherwise."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    # sqlite:///relative.db and sqlite:////absolute.db (SQLAlchemy's forms), query removed.
    path = urllib.parse.unquote(uri[len(prefix) :].split("?", 1)[0])
    return Path(path).resolve() if path and path != ":memory:" else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail now, not after the stage's work, when the store cannot take what the stage logs.

    http(s): GET /health answers. sqlite: the database's folder exists (or can be created) and
    is writable, the database file (if any) is a writable SQLite file, and the artifact folder
    beside it (if any) is writable. Other schemes are not checked.

    Raises:
        TrackingUnavailableError: one line naming MLFLOW_TRACKING_URI (or the default store),
            the server or path, and the fix.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise TrackingUnavailableError(
                f"{describe_store(uri)}: MLflow tracking server {uri} is unreachable ({reason}); start it, fix "
                "MLFLOW_TRACKING_URI, or unset it to use the local SQLite store"
            ) from None
        return
    database = sqlite_path(uri)
    if database is not None:
        problem = _sqlite_problem(database)
        if problem:
            raise TrackingUnavailableError(f"{describe_store(uri)}: {problem}; {_store_fix(uri)}")


def _sqlite_problem(database: Path) -> str | None:
    """Why SQLite could not write `database` (and MLflow its artifacts beside it), or None."""
    import sqlite3
    import tempfile

    folder = database.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create the SQLite store {database}: {existing} is a file, not a folder"
    if existing != folder:  # created on first use (with its parents)
        if not os.access(existing, os.W_OK | os.X_OK):
            return (
                f"cannot create the SQLite store {database}: folder {folder} is missing and {existing} is not writable"
            )
        return None
    try:  # SQLite writes its journal beside the database: the folder must take new files
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"cannot write the SQLite store {database}: folder {folder} is not writable ({error.strerror or error})"
    for artifacts in (folder / ARTIFACT_FOLDER, *(folder / ARTIFACT_FOLDER).glob("*")):
        if artifacts.is_dir() and not os.access(artifacts, os.W_OK | os.X_OK):
            return f"cannot write MLflow artifacts beside the store: folder {artifacts} is not writable"
    if not database.exists():
        return None
    if not database.is_file():
        return f"the SQLite store {database} is not a file"
    try:
        with open(database, "r+b"):
            pass
        connection = sqlite3.connect(f"file:{urllib.parse.quote(str(database))}?mode=rw", uri=True, timeout=1)
        try:
            connection.execute("PRAGMA schema_version").fetchone()
        finally:
            connection.close()
    except OSError as error:
        return f"cannot write the SQLite store {database} ({error.strerror or error})"
    except sqlite3.Error as error:
        if "locked" in str(error):  # busy with another writer: model_run waits for it
            return None
        return f"cannot open the SQLite store {database} ({error})"
    return None


def require_store(run_file: Path | None = None, model_name: str | None = None) -> None:
    """Check the store before a stage computes: writable or reachable (`check_reachable`) and,
    given the model's `run_file` (models/<model>/mlflow_run.json), holding its recorded run.

    Raises:
        TrackingUnavailableError: the store cannot be reached or written.
        RecordedRunMissingError: the recorded run is not in this store.
        FileNotFoundError: `run_file` is missing (the model was not trained).
    """
    uri = tracking_uri()
    check_reachable(uri)
    if run_file is None:
        return
    run_id = recorded_run_id(Path(run_file))
    from mlflow.tracking import MlflowClient

    with _explained_store_errors(uri):
        _require_run(MlflowClient(uri), run_id, model_name or Path(run_file).parent.parent.name, uri, run_file)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise creating a SQLite store and its experiment across processes (queue workers)."""
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mlflow():
    """mlflow, pointed at the store and experiment (created once, with its kind and artifact folder)."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            database = sqlite_path(uri)
            # A local store's artifacts go beside the database (MLflow's default is ./mlruns of
            # the current folder, which for a queued experiment is a temporary copy).
            # A plain path: MLflow mangles a file:// URI given here (the host part is lost).
            location = str(database.parent / ARTIFACT_FOLDER / EXPERIMENT) if database else None
            experiment_id = mlflow.create_experiment(
                EXPERIMENT, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        else:
            experiment_id = experiment.experiment_id
            if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return mlflow


@contextlib.contextmanager
def model_run(
    model_name: str,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
    system_metrics: bool = False,
    seed: int | None = None,
) -> Iterator[Any]:
    """Start (or, given `run_id`, continue) the MLflow run of one model.

    `seed`: the training seed of a new run, in its name ("cnn seed 42") and its `seed` tag, so
    the runs of one model trained with several seeds tell apart and group in the UI.

    `system_metrics` samples CPU, memory and (with pynvml on a GPU node) GPU utilisation and
    memory in the background while the run is open: use it for training.

    Raises:
        RecordedRunMissingError: `run_id` is not in the current store.
        TrackingUnavailableError: the SQLite store stayed locked longer than the timeout.
    """
    uri = tracking_uri()
    with _explained_store_errors(uri):
        mlflow = _mlflow()
        if run_id:
            _require_run(mlflow.MlflowClient(), run_id, model_name, uri)
            run = mlflow.start_run(run_id=run_id, log_system_metrics=False)
        else:
            # In a DVC experiment the run is named after both, so a sweep's runs tell apart in the UI.
            experiment = dvc_experiment_name()
            name = model_name if seed is None else f"{model_name} seed {seed}"
            seed_tag = {} if seed is None else {"seed": str(seed)}
            run = mlflow.start_run(
                run_name=f"{name} ({experiment})" if experiment else name,
                tags={"model": model_name, **seed_tag, **(tags or {})},
                log_system_metrics=False,
            )
        monitor = _start_system_metrics(run.info.run_id, resumed=bool(run_id)) if system_metrics else None
        try:
            yield run
        except BaseException:
            _stop_system_metrics(monitor, run.info.run_id)
            try:
                mlflow.end_run(status="FAILED")
            except Exception as ending:  # the original error matters more; say the run stays open
                log.warning("MLflow run %s could not be marked FAILED: %s", run.info.run_id, ending)
            raise
        _stop_system_metrics(monitor, run.info.run_id)
        mlflow.end_run()


def _start_system_metrics(run_id: str, resumed: bool) -> Any:
    """MLflow's background sampler of CPU, memory, disk, network (and GPU) use for one run.

    The run owns it, rather than `mlflow.start_run(log_system_metrics=True)`, so that its end can
    be flushed (`_stop_system_metrics`): MLflow's own sampler logs nothing for a run shorter than
    its sampling interval (10 s unless `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` says otherwise).
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed)
    monitor.start()
    return monitor


def _stop_system_metrics(monitor: Any, run_id: str) -> None:
    """Stop the sampler, then log one last sample: the samples taken since its last logging step
    and the state at the end of the run, so every run, however short, has its system metrics."""
    if monitor is None:
        return
    monitor.finish()
    try:
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception as error:  # the run's own records matter more than its last system sample
        log.warning("MLflow run %s: the last system-metrics sample was not logged: %s", run_id, error)


class RecordedRunMissingError(Cxr14Error, RuntimeError):
    """A model's recorded MLflow run is not in the store this process logs to."""


class NoExperimentError(Cxr14Error, LookupError):
    """The tracking store has no experiment of this project yet (nothing was run against it)."""


def _require_run(client, run_id: str, model_name: str, uri: str, run_file: Path | None = None) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        stage = train_stage(model_name, None if run_file is None else Path(run_file).parent)
        raise RecordedRunMissingError(
            f"MLflow run {run_id} of {model_name} ({run_file or 'models/<model>/seed-<seed>/mlflow_run.json'}) is not "
            f"in the store {uri}; set MLFLOW_TRACKING_URI to the store it was trained against (the file names it), "
            f"or re-train with `dvc repro --force {stage}`"
        ) from None


def _locked_store_error(error: BaseException, uri: str) -> TrackingUnavailableError | None:
    if "database is locked" not in str(error):
        return None
    return TrackingUnavailableError(
        f"MLflow store {uri} stayed locked beyond its timeout ({SQLITE_TIMEOUT_SECONDS} s unless the URI sets "
        "?timeout=) and MLflow's retries: another process holds a "
        "write lock on it (a stuck queue worker or script); stop it and re-run, or log to an MLflow server "
        "(MLFLOW_TRACKING_URI=http://...) when many workers write at once"
    )


# Errors of the store's client libraries: MLflow's own, SQLAlchemy/alembic (SQLite), requests/urllib3 (HTTP).
_STORE_ERROR_MODULES = ("mlflow", "sqlalchemy", "alembic", "requests", "urllib3", "sqlite3")


def _is_store_error(error: BaseException) -> bool:
    """Raised by MLflow or its store libraries (an OSError counts when raised inside MLflow's code,
    e.g. copying an artifact into an unwritable folder)."""
    if isinstance(error, (RecordedRunMissingError, TrackingUnavailableError)):
        return False
    if type(error).__module__.split(".")[0] in _STORE_ERROR_MODULES:
        return True
    if isinstance(error, OSError):
        frame = error.__traceback__
        while frame is not None:
            if f"{os.sep}mlflow{os.sep}" in frame.tb_frame.f_code.co_filename:
                return True
            frame = frame.tb_next
    return False


@contextlib.contextmanager
def _explained_store_errors(uri: str) -> Iterator[None]:
    """Turn SQLite's "database is locked" (after the timeout and MLflow's retries), and any other
    failure of the store, into one line naming the store and MLFLOW_TRACKING_URI."""
    try:
        yield
    except Exception as error:
        locked = _locked_store_error(error, uri)
        if locked is not None:
            raise locked from error
        if _is_store_error(error):
            message = " ".join(str(error).split())[:400] or type(error).__name__
            raise TrackingUnavailableError(
                f"{describe_store(uri)}: the MLflow store failed ({type(error).__name__}: {message}); "
                f"check that the store is up and writable and re-run the stage (or {_store_fix(uri)})"
            ) from error
        raise


# MLflow 3's UI opens every experiment in its "GenAI" mode unless the page says otherwise (the
# UI's own GenAI / Model training switch wins over the experiment's kind tag); this parameter
# opens the training-runs table.
UI_TRAINING_VIEW = "workflowType=machine_learning"


def runs_page_url(ui: str = "http://127.0.0.1:5000", uri: str | None = None) -> str:
    """The MLflow UI address of the experiment's training-runs table (`make mlflow-ui` prints it)."""
    experiment_id = _mlflow_for(uri or tracking_uri())
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}?{UI_TRAINING_VIEW}"


def _mlflow_for(uri: str) -> str:
    import mlflow

    experiment = mlflow.MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise NoExperimentError(f"{uri}: no MLflow experiment {EXPERIMENT!r} yet; run `dvc repro` first")
    return experiment.experiment_id


def log_cache_inputs(cache_dir: Path, contexts: dict[str, str]) -> None:
    """Record cache splits as the active run's dataset inputs (MLflow's "Datasets" column).

    Args:
        cache_dir: the preprocess cache; its `data_fingerprint` is every split's digest.
        contexts: split -> MLflow context, e.g. {"train": "training", "val": "validation"}.
    """
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]  # made at import

    cache_dir = Path(cache_dir)
    summary = json.loads((cache_dir / "cache.json").read_text(encoding="utf-8"))
    digest = data_fingerprint(cache_dir)
    for split, context in contexts.items():
        index = cache_dir / f"{split}.csv"
        patients = _count_patients(index)
        dataset = MetaDataset(  # type: ignore[abstract]  # mlflow types `profile` abstract, it is not
            LocalArtifactDatasetSource(str(index.resolve())), name=f"cxr14-cache-{split}", digest=digest
        )
        tags = {
            "split": split,
            "images": str(summary["splits"].get(split, 0)),
            "patients": str(patients),
            "size_px": str(summary.get("size")),
        }
        mlflow.log_input(dataset, context=context, tags=tags)


def _count_patients(index_csv: Path) -> int:
    import pandas as pd

    return int(pd.read_csv(index_csv, usecols=["patient_id"])["patient_id"].nunique())


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
        raise MissingInputError(f"{run_file}: no MLflow run recorded; run the train stage first")
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


CODE_FOLDERS = ("src", "pipeline")  # what a stage runs; params and data are recorded separately


def git_dirty() -> str:
    """Whether the code (src/, pipeline/) differs from `git_commit()`, for the run's tags: "true"
    when a file there is edited, staged, deleted or new (then that commit alone does not hold the
    code that ran; inside `dvc exp run` the experiment's own commit does), "false", or "unknown"
    outside a git checkout."""
    import subprocess

    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", *CODE_FOLDERS],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "true" if status.strip() else "false"


def dvc_experiment_name() -> str | None:
    """The name of the DVC experiment running this stage, or None outside `dvc exp run`."""
    return os.environ.get(DVC_EXPERIMENT_VARIABLE) or None


def data_fingerprint(cache_dir: Path) -> str:
    """12 hex characters identifying the training data: a hash of the cache's indexes and summary."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise MissingInputError(f"{cache_dir}: cache folder missing; run the preprocess stage (dvc repro preprocess)")
    files = sorted({path for pattern in FINGERPRINT_FILES for path in cache_dir.glob(pattern) if path.is_file()})
    if not files:
        raise MissingInputError(f"{cache_dir}: no <split>.csv or cache.json to fingerprint; rerun the preprocess stage")
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
    tags = {"model": model_name, "git_commit": git_commit(), "git_dirty": git_dirty()}
    experiment = dvc_experiment_name()
    if experiment:
        tags["dvc_experiment"] = experiment
    tags.update(data_fingerprint=data_fingerprint(cache_dir), device=device, weights=weights or "random init")
    return tags


def end_abandoned_run(run_id: str, reason: str, superseded_by: str | None = None, status: str = "KILLED") -> str | None:
    """Mark a run that will never be continued (its unfinished checkpoint was not resumed).

    Sets the tags `abandoned` (= `reason`) and `superseded_by`, and ends the run with `status`
    if it is still RUNNING (a killed process never ended it); a run that already ended (e.g.
    FAILED by an exception) keeps its status.

    Returns:
        The run's status afterwards, or None (with a warning) when the run is not in this store.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        log.warning("MLflow run %s (abandoned: %s) not found in %s: %s", run_id, reason, tracking_uri(), error)
        return None
    client.set_tag(run_id, "abandoned", reason[:5000])
    if superseded_by:
        client.set_tag(run_id, "superseded_by", superseded_by)
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, status=status)
        return status
    return run.info.status


def end_orphaned_run(run_id: str, reason: str, superseded_by: str | None = None) -> str | None:
    """Mark KILLED a run whose process died before it wrote anything to continue from.

    Unlike :func:`end_abandoned_run` this leaves an ended run alone (a finished training whose
    folder is re-used is not abandoned): only a run still RUNNING gets the tags `abandoned` and
    `superseded_by` and the status KILLED. Returns the run's status afterwards, or None when it
    is not in this store.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    try:
        status = client.get_run(run_id).info.status
    except MlflowException:
        return None
    if status != "RUNNING":
        return status
    return end_abandoned_run(run_id, reason, superseded_by=superseded_by)
