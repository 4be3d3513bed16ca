"""A model logged into its training run, registered as `cxr14-cnn`, loaded back and served.

    PYTHONPATH=src python -m pytest -q tests/test_mlflow_model.py

One random-initialised `cnn` at 64 px is packaged (safetensors + model.json), logged into a run
of a real SQLite MLflow store and registered; the tests read the registry, load
`models:/cxr14-cnn/1` with `mlflow.pyfunc`, and start a real `mlflow models serve` on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr14 import tracking
from cxr14.deploy.mlflow_model import (
    BATCH_SIZE,
    POSITIVE_SUFFIX,
    ModelInputError,
    PackageError,
    load_package,
    log_model,
    predict_table,
    registered_name,
    save_package,
)
from cxr14.inference import predict
from cxr14.labels import LABELS, NUM_CLASSES
from cxr14.models import build_model
from tests.test_tracking import _stop, free_port

SIZE = 64  # model input = cache size, to keep it fast
IMAGES = 8
SERVER_START_SECONDS = 120  # loading torch, timm and the model takes ~20 s on a busy 2-core machine
VERSION_TEXT = "test macro AUROC 0.612 [0.550, 0.671] (phantom test split, seed 42)"
POSITIVES = {"max_f1": 4, "sensitivity": 7}  # of the 8 images, per finding (thresholds chosen so)


@dataclass
class Registered:
    root: Path
    store: str
    info: dict
    images: np.ndarray
    scores: np.ndarray  # cxr14.inference.predict of the packaged model on `images`
    thresholds: dict
    state: dict[str, torch.Tensor]


def _images(count: int, seed: int = 0) -> np.ndarray:
    """Radiograph-like uint8 [count, SIZE, SIZE]: a bright disc on a gradient, plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    images = []
    for _ in range(count):
        centre = rng.uniform(0.3, 0.7, size=2)
        disc = ((y - centre[0]) ** 2 + (x - centre[1]) ** 2 < rng.uniform(0.02, 0.08)) * 120
        images.append(np.clip(40 + 100 * y + disc + rng.normal(0, 20, (SIZE, SIZE)), 0, 255))
    return np.stack(images).astype(np.uint8)


def _thresholds(scores: np.ndarray) -> dict:
    """Per finding, a score of the images themselves: 4 of 8 at or above it (max_f1), 7 (sensitivity)."""
    ranked = np.sort(scores, axis=0)
    return {
        "max_f1": {name: float(ranked[IMAGES - POSITIVES["max_f1"], i]) for i, name in enumerate(LABELS)},
        "sensitivity": {
            "target": 0.9,
            "thresholds": {name: float(ranked[IMAGES - POSITIVES["sensitivity"], i]) for i, name in enumerate(LABELS)},
        },
    }


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Iterator[Registered]:
    """A trained-run-like MLflow run with the packaged model logged into it and registered."""
    root = tmp_path_factory.mktemp("mlflow_model")
    store = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store)
        patch.setenv("CXR14_NO_PROGRESS", "1")
        patch.delenv("DVC_EXP_NAME", raising=False)
        torch.manual_seed(0)
        bundle = build_model("cnn", NUM_CLASSES, SIZE, pretrained=False)
        images = _images(IMAGES)
        scores = predict(bundle, images, np.zeros((IMAGES, NUM_CLASSES), np.float32), BATCH_SIZE, SIZE, _cpu())
        assert all(len(set(column)) == IMAGES for column in scores.T)  # distinct: the counts below are exact
        thresholds = _thresholds(scores)
        package = save_package(
            bundle, SIZE, SIZE, thresholds, {"seed": 42, "test_macro_auroc": 0.612}, root / "package" / "cnn"
        )
        tags = {"git_commit": "0123abc", "git_dirty": "false"}  # as train@cnn-42 sets them
        with tracking.model_run("cnn", seed=42, tags=tags) as run:
            tracking.log_metrics({"val_macro_auroc": 0.6}, step=1)
        info = log_model(run.info.run_id, package, images[:1], registered_name("cnn"), VERSION_TEXT)
        state = {key: value.clone() for key, value in bundle.model.state_dict().items()}
        yield Registered(root, store, info, images, scores, thresholds, state)


def _cpu() -> torch.device:
    return torch.device("cpu")


def test_the_model_is_registered_with_its_descriptions_and_linked_to_its_run(registered):
    import mlflow

    client = mlflow.MlflowClient(registered.store)
    assert registered.info["registered_name"] == "cxr14-cnn" and registered.info["version"] == 1
    version = client.get_model_version("cxr14-cnn", "1")
    assert version.description == VERSION_TEXT and version.run_id == registered.info["run_id"]
    assert {key: version.tags[key] for key in ("model", "seed", "git_commit", "git_dirty")} == {
        "model": "cnn",
        "seed": "42",
        "git_commit": "0123abc",
        "git_dirty": "false",
    }
    description = client.get_registered_model("cxr14-cnn").description
    assert "uint8 grayscale images [N, 64, 64]" in description and "operating_point" in description
    # MLflow 3: a LoggedModel whose source is the run, listed in the run's outputs (the UI's "Models").
    run = client.get_run(registered.info["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["val_macro_auroc"] == 0.6
    assert [output.model_id for output in run.outputs.model_outputs] == [registered.info["model_id"]]
    logged = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    assert [(model.model_id, model.name) for model in logged] == [(registered.info["model_id"], "cxr14-cnn")]


def test_the_logged_model_holds_no_pickle(registered):
    import mlflow
    import yaml
    from safetensors.torch import load_file

    target = registered.root / "downloaded"
    target.mkdir()
    local = Path(mlflow.artifacts.download_artifacts(registered.info["version_uri"], dst_path=str(target)))
    files = sorted(path.relative_to(local).as_posix() for path in local.rglob("*") if path.is_file())
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".pt", ".pth", ".bin"))], files
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor and flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "pyfunc_model.py" in files
    weights = [name for name in files if name.endswith("weights.safetensors")]
    assert len(weights) == 1
    state = load_file(str(local / weights[0]))
    assert state.keys() == registered.state.keys()
    assert all(torch.equal(state[key], registered.state[key]) for key in state)
    config = json.loads((local / weights[0]).with_name("model.json").read_text())
    assert (config["architecture"], config["image_size"], config["preprocess_size"]) == ("cnn", SIZE, SIZE)
    assert config["labels"] == list(LABELS) and config["seed"] == 42 and config["test_macro_auroc"] == 0.612
    assert config["thresholds"] == registered.thresholds and config["default_operating_point"] == "max_f1"


def _check_table(table, registered: Registered, operating_point: str) -> None:
    """Probabilities equal the pipeline's scores; positives are score >= the point's thresholds."""
    positives = [name + POSITIVE_SUFFIX for name in LABELS]
    assert list(table.columns) == [*LABELS, *positives]
    assert np.abs(table[list(LABELS)].to_numpy(np.float64) - registered.scores).max() <= 1e-6
    cuts = registered.thresholds["max_f1" if operating_point == "max_f1" else "sensitivity"]
    cuts = cuts if operating_point == "max_f1" else cuts["thresholds"]
    expected = registered.scores >= np.array([cuts[name] for name in LABELS])
    assert np.array_equal(table[positives].to_numpy(bool), expected)
    assert expected.sum(axis=0).tolist() == [POSITIVES[operating_point]] * NUM_CLASSES


def test_the_registered_model_predicts_as_the_pipeline_scores(registered, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.store)
    model = mlflow.pyfunc.load_model("models:/cxr14-cnn/1")
    _check_table(model.predict(registered.images), registered, "max_f1")
    _check_table(model.predict(registered.images, params={"operating_point": "sensitivity"}), registered, "sensitivity")
    with pytest.raises(ModelInputError, match="operating_point 'youden' is unknown; use 'max_f1'"):
        model.predict(registered.images, params={"operating_point": "youden"})
    with pytest.raises(Exception, match="shape"):  # MLflow's signature check: the cache's 64 px, not 32
        model.predict(registered.images[:, :32, :32])


def test_wrong_images_are_refused_naming_what_to_send(registered):
    package = load_package(registered.root / "package" / "cnn", _cpu())
    for wrong in (registered.images.astype(np.float32), registered.images[:, :32, :32], registered.images[0]):
        with pytest.raises(ModelInputError, match=r"expected uint8 grayscale \[N, 64, 64\]"):
            predict_table(package, wrong)


class _Payload:
    """A pickle that creates `marker` when unpickled: what a malicious weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_weights_file_is_refused_unopened(registered, tmp_path):
    proof = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(_Payload(proof)))  # the payload is live: unpickling it runs code
    assert proof.exists()
    package = tmp_path / "package"
    save_package(
        build_model("cnn", NUM_CLASSES, SIZE, pretrained=False), SIZE, SIZE, registered.thresholds, {}, package
    )
    marker = tmp_path / "ran"
    torch.save({"model": _Payload(marker)}, package / "weights.safetensors")
    with pytest.raises(PackageError, match="weights.safetensors: not a safetensors file .*never unpickled"):
        load_package(package, _cpu())
    assert not marker.exists()


def test_a_package_with_another_label_order_or_bad_thresholds_is_refused(registered, tmp_path):
    bundle = build_model("cnn", NUM_CLASSES, SIZE, pretrained=False)
    package = save_package(bundle, SIZE, SIZE, registered.thresholds, {}, tmp_path / "package")
    config_file = package / "model.json"
    config = json.loads(config_file.read_text())
    config["labels"] = list(reversed(LABELS))
    config_file.write_text(json.dumps(config))
    with pytest.raises(PackageError, match="model.json: its label order .* is not cxr14.labels.LABELS"):
        load_package(package, _cpu())

    incomplete = {**registered.thresholds, "max_f1": dict(list(registered.thresholds["max_f1"].items())[1:])}
    with pytest.raises(PackageError, match=r"thresholds\['max_f1'\]: .* missing \['Cardiomegaly'\]"):
        save_package(bundle, SIZE, SIZE, incomplete, {}, tmp_path / "other")
    with pytest.raises(PackageError, match="image_size 128 .* at most preprocess_size 64"):
        save_package(bundle, 128, SIZE, registered.thresholds, {}, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_a_package_normalised_otherwise_than_this_installation_builds_is_refused(registered, tmp_path):
    """cnn's normalisation changed once (2026-12-03): a package of the old cnn must not be fed
    the new centred input. The record written is the one the loader compares."""
    bundle = build_model("cnn", NUM_CLASSES, SIZE, pretrained=False)
    package = save_package(bundle, SIZE, SIZE, registered.thresholds, {}, tmp_path / "package")
    config_file = package / "model.json"
    config = json.loads(config_file.read_text())
    assert {name: config[name] for name in ("in_chans", "mean", "std")} == bundle.input_record()
    load_package(package, _cpu())  # as written: loads
    config_file.write_text(json.dumps({**config, "mean": [0.0], "std": [1.0]}))
    with pytest.raises(
        PackageError,
        match=rf"model.json: .* in_chans/mean/std {bundle.in_chans}/\[0.0\]/\[1.0\], but .* builds cnn with "
        rf"{bundle.in_chans}/\[0.5\]/\[0.25\]; install",
    ):
        load_package(package, _cpu())


@contextlib.contextmanager
def _serving(model_uri: str, store: str, root: Path) -> Iterator[str]:
    """`mlflow models serve -m model_uri --env-manager local` on a free port until the block ends;
    yields its URL once /ping answers (the log is root/serve.log)."""
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the scoring server runs `uvicorn` from PATH: the venv's
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    environment = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    log = root / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            command, cwd=root, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not _answers(f"{url}/ping"):
            if server.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {server.returncode}" if server.poll() is not None else "did not answer /ping"
                pytest.fail(f"{' '.join(command)} {state}:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(server)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _invoke(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mlflow_models_serve_answers_with_the_local_predictions(registered):
    import pandas as pd

    with _serving("models:/cxr14-cnn/1", registered.store, registered.root) as url:
        status, answer = _invoke(url, {"inputs": registered.images.tolist()})
        assert status == 200, answer
        _check_table(pd.DataFrame(answer["predictions"]), registered, "max_f1")
        body = {"inputs": registered.images.tolist(), "params": {"operating_point": "sensitivity"}}
        status, answer = _invoke(url, body)
        assert status == 200, answer
        _check_table(pd.DataFrame(answer["predictions"]), registered, "sensitivity")
        status, answer = _invoke(url, {"inputs": registered.images[:, :32, :32].tolist()})
        assert status == 400 and "shape" in answer["message"]


def test_cxr14_predict_scores_a_registered_model_as_the_package(registered, tmp_path):
    """`cxr14 predict --model models:/cxr14-cnn/1`: the registry's package, from PNG files, gives
    the scores and calls of the packaged model; the thresholds file names the URI."""
    import cv2
    import pandas as pd

    files = [tmp_path / f"image_{index}.png" for index in range(IMAGES)]
    for path, image in zip(files, registered.images, strict=True):
        cv2.imwrite(str(path), image)
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered.store, "CXR14_NO_PROGRESS": "1"}
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    command = [sys.executable, "-m", "cxr14", "predict", "--model", "models:/cxr14-cnn/1", *map(str, files)]
    for point in ("max_f1", "sensitivity"):
        out = tmp_path / f"{point}.csv"
        result = subprocess.run(
            [*command, "--operating-point", point, "--out", str(out)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert "Downloading artifacts" not in result.stderr and "models:/cxr14-cnn/1 (seed 42)" in result.stderr
        table = pd.read_csv(out)
        assert list(table["image"]) == [str(path) for path in files]
        _check_table(table[[*LABELS, *(name + POSITIVE_SUFFIX for name in LABELS)]], registered, point)
        saved = json.loads(out.with_suffix(".thresholds.json").read_text())
        cuts = (
            registered.thresholds["max_f1"] if point == "max_f1" else registered.thresholds["sensitivity"]["thresholds"]
        )
        assert saved["model_uri"] == "models:/cxr14-cnn/1" and saved["thresholds"] == cuts


@pytest.mark.parametrize(
    ("model", "options", "says"),
    [
        ("models:/cxr14-nothing/1", [], "models:/cxr14-nothing/1: cannot be read from MLFLOW_TRACKING_URI="),
        ("models:/cxr14-cnn/1", ["--operating-point", "sensitivity", "--sensitivity", "0.8"], "a target of 0.9 only"),
        ("models:/cxr14-cnn/1", ["--seed", "7"], "--seed 7: a registered model (models:/cxr14-cnn/1) is one"),
    ],
)
def test_cxr14_predict_refuses_what_a_registered_model_cannot_do_in_one_line(
    registered, tmp_path, monkeypatch, capsys, model, options, says
):
    import cv2

    from cxr14.__main__ import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.store)
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), registered.images[0])
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model", model, *options, str(image)])
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.startswith("error: ")]
    assert exit_.value.code == 2 and len(lines) == 1 and says in lines[0], error
    assert "Traceback" not in error


def test_cxr14_predict_without_a_store_says_where_it_looked(tmp_path, monkeypatch, capsys):
    from cxr14.__main__ import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model", "models:/cxr14-cnn/1", str(tmp_path)])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and f"no MLflow store at {tmp_path.resolve() / 'mlflow.db'}" in error, error
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create an empty store
