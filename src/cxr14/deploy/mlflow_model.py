"""A trained model as an MLflow model in the Model Registry, served by `mlflow models serve`.

    package = save_package(bundle, image_size=128, preprocess_size=224, thresholds=thresholds,
                           extra={"seed": 42, "test_macro_auroc": 0.676}, out_dir=Path("deploy/cnn"))
    info = log_model(run_id, package, input_example=test_images[:1], registered_name="cxr14-cnn",
                     description="test macro AUROC 0.676 [0.617, 0.718]")
    model = mlflow.pyfunc.load_model(info["version_uri"])          # models:/cxr14-cnn/1
    table = model.predict(images, params={"operating_point": "sensitivity"})

    source .venv/bin/activate   # the scoring server runs `uvicorn` from PATH
    MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db mlflow models serve -m models:/cxr14-cnn/1 --env-manager local
    curl -H 'Content-Type: application/json' -d '{"inputs": [[[0, 12, ...], ...]]}' localhost:5000/invocations

A model received from elsewhere must not run pickled code, so nothing here is pickled: the
package is `weights.safetensors` (the state dict, read with `safetensors.torch.load_file`) and
`model.json` (architecture, sizes, label order, thresholds), and the MLflow model's code is
`pyfunc_model.py`, logged as source ("models from code", not cloudpickled). Loading rebuilds the
architecture with `cxr14.models.build_model` and fills it with the tensors, so the installed
cxr14 package (this repository) must be importable where the model is loaded or served
(`--env-manager local` from the project's environment).

Input: uint8 grayscale images `[N, S, S]` at the preprocess cache's size S (`preprocess_size`),
exactly what the cache stores; the model resizes them to its own `image_size` with the
pipeline's `prepare_batch`. Output: a table with one probability column per finding (in
`cxr14.labels.LABELS` order) and `<finding> positive` at the operating point's threshold
(score >= threshold): `max_f1` (default, validation max-F1) or `sensitivity` (the highest
validation threshold reaching the target sensitivity), chosen with the `operating_point` param.
Scores come from `cxr14.inference.predict`, the function the evaluate stage scores with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr14 import tracking
from cxr14.deploy.outputs import DEFAULT_OPERATING_POINT, OPERATING_POINTS, POSITIVE_SUFFIX
from cxr14.errors import Cxr14Error, MissingInputError
from cxr14.inference import predict, select_device
from cxr14.io import atomic_directory, atomic_write_json
from cxr14.labels import LABELS, NUM_CLASSES
from cxr14.models import ModelBundle, build_model

__all__ = [
    "PackageError",
    "ModelInputError",
    "Package",
    "save_package",
    "load_package",
    "predict_table",
    "model_signature",
    "log_model",
    "registered_name",
]

FORMAT = "cxr14-mlflow-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model.json"
# The file MLflow logs as the model's code (models from code): it defines the python model.
CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
# The artifact key of the package folder in the logged model, and the logged model's name prefix.
PACKAGE_ARTIFACT = "package"
NAME_PREFIX = "cxr14-"
BATCH_SIZE = 32
# model.json keys save_package writes itself; `extra` may not replace them.
_RESERVED = frozenset(
    {"format", "format_version", "architecture", "num_classes", "image_size", "preprocess_size", "in_chans"}
    | {"mean", "std", "labels", "thresholds", "default_operating_point", "input"}
)


class PackageError(Cxr14Error, ValueError):
    """A model package (weights.safetensors + model.json) that cannot be written or used as it is."""


class ModelInputError(Cxr14Error, ValueError):
    """Images or parameters given to the MLflow model that it cannot score."""


@dataclass
class Package:
    """A loaded package: the rebuilt model (eval mode, on `device`) and its model.json."""

    bundle: ModelBundle
    config: dict[str, Any]
    device: torch.device

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def preprocess_size(self) -> int:
        return int(self.config["preprocess_size"])

    def thresholds(self, operating_point: str | None = None) -> dict[str, float]:
        """The per-finding thresholds of `operating_point` (None: the package's default)."""
        point = operating_point or self.config["default_operating_point"]
        return package_thresholds_of(self.config["thresholds"], point)


def package_thresholds_of(cuts: Mapping[str, Any], point: str) -> dict[str, float]:
    """The per-finding thresholds of `point` in a package's `thresholds` (as save_package writes them)."""
    if point == "max_f1":
        return cuts["max_f1"]
    if point == "sensitivity":
        return cuts["sensitivity"]["thresholds"]
    raise ModelInputError(
        f"operating_point {point!r} is unknown; use 'max_f1' (validation max-F1 thresholds, the default) or "
        f"'sensitivity' (validation sensitivity >= {cuts['sensitivity']['target']})"
    )


def registered_name(model: str) -> str:
    """The Model Registry name of a pipeline model: `cxr14-<model>` (e.g. cxr14-resnet18)."""
    return _name_for(model)


def _name_for(model: str) -> str:  # log_model's argument `registered_name` hides the public function
    return NAME_PREFIX + model.removeprefix("timm:")


def _checked_cuts(cuts: object, where: str) -> dict[str, float]:
    """{finding: threshold} for every label, each a finite number."""
    if not isinstance(cuts, Mapping):
        raise PackageError(f"{where}: expected {{finding: threshold}}, got {type(cuts).__name__}")
    missing = [name for name in LABELS if name not in cuts]
    unknown = sorted(set(map(str, cuts)) - set(LABELS))
    if missing or unknown:
        raise PackageError(
            f"{where}: needs one threshold per finding of cxr14.labels.LABELS; missing {missing}, unknown {unknown}"
        )
    checked = {}
    for name in LABELS:
        value = cuts[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PackageError(f"{where}[{name!r}]: threshold must be a finite number, got {value!r}")
        checked[name] = float(value)
    return checked


def check_thresholds(thresholds: object, where: str = "thresholds") -> dict[str, Any]:
    """Validate `{"max_f1": {finding: t}, "sensitivity": {"target": s, "thresholds": {finding: t}}}`.

    Raises:
        PackageError: a missing operating point or finding, an unknown finding, a non-number.
    """
    if not isinstance(thresholds, Mapping) or set(thresholds) != set(OPERATING_POINTS):
        keys = sorted(thresholds) if isinstance(thresholds, Mapping) else type(thresholds).__name__
        raise PackageError(f"{where}: needs exactly the operating points {list(OPERATING_POINTS)}, got {keys}")
    sensitivity = thresholds["sensitivity"]
    if not isinstance(sensitivity, Mapping) or set(sensitivity) != {"target", "thresholds"}:
        raise PackageError(f"{where}['sensitivity']: needs {{'target': 0.9, 'thresholds': {{finding: threshold}}}}")
    target = sensitivity["target"]
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise PackageError(f"{where}['sensitivity']['target']: must be a number in (0, 1], got {target!r}")
    return {
        "max_f1": _checked_cuts(thresholds["max_f1"], f"{where}['max_f1']"),
        "sensitivity": {
            "target": float(target),
            "thresholds": _checked_cuts(sensitivity["thresholds"], f"{where}['sensitivity']['thresholds']"),
        },
    }


def _package_config(
    bundle: ModelBundle, image_size: int, preprocess_size: int, thresholds: dict, extra: dict
) -> dict[str, Any]:
    clashing = sorted(_RESERVED & set(extra))
    if clashing:
        raise PackageError(f"extra: keys {clashing} are written by save_package itself; rename them")
    if not 0 < image_size <= preprocess_size:
        raise PackageError(
            f"image_size {image_size} must be positive and at most preprocess_size {preprocess_size}: the model "
            "would see upsampled images; package a model trained at or below the cache size"
        )
    return {
        **extra,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": bundle.name,
        "num_classes": NUM_CLASSES,
        "image_size": int(image_size),
        "preprocess_size": int(preprocess_size),
        **bundle.input_record(),  # in_chans, mean, std
        "labels": list(LABELS),
        "thresholds": check_thresholds(thresholds),
        "default_operating_point": DEFAULT_OPERATING_POINT,
        "input": f"uint8 grayscale images [N, {preprocess_size}, {preprocess_size}] (the preprocess cache's pixels)",
    }


def save_package(
    bundle: ModelBundle, image_size: int, preprocess_size: int, thresholds: dict, extra: dict, out_dir: Path
) -> Path:
    """Write `out_dir/weights.safetensors` (the state dict) and `out_dir/model.json`, all or none.

    Args:
        bundle: the trained model (e.g. from `cxr14.inference.load_trained`).
        image_size: the model's input size (what it was trained at).
        preprocess_size: the size S of the uint8 [N, S, S] images the MLflow model takes (the cache's).
        thresholds: `{"max_f1": {finding: t}, "sensitivity": {"target": 0.9, "thresholds": {finding: t}}}`,
            chosen on validation scores.
        extra: more model.json fields, e.g. {"seed": 42, "test_macro_auroc": 0.68}.
        out_dir: the package folder; replaced as a whole when everything is written.

    Raises:
        PackageError: bad thresholds, an image_size above preprocess_size, or `extra` replacing a key.
    """
    from safetensors.torch import save_file

    config = _package_config(bundle, image_size, preprocess_size, thresholds, extra)
    # Copies: safetensors refuses tensors sharing memory (tied weights) and non-contiguous ones.
    tensors = {key: value.detach().to("cpu").clone().contiguous() for key, value in bundle.model.state_dict().items()}
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT, "architecture": bundle.name})
        atomic_write_json(staging / CONFIG_FILE, config)
    return out_dir


def read_config(package_dir: Path) -> dict[str, Any]:
    """model.json of a package, checked (format, label order, thresholds).

    Raises:
        MissingInputError: no model.json or weights.safetensors in `package_dir`.
        PackageError: model.json is not a cxr14 package description this code can read.
    """
    path = Path(package_dir) / CONFIG_FILE
    for required in (path, path.with_name(WEIGHTS_FILE)):
        if not required.is_file():
            raise MissingInputError(f"{required}: missing; write the package with mlflow_model.save_package")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PackageError(f"{path}: not a JSON model description ({error}); write it with save_package") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise PackageError(
            f"{path}: not a {FORMAT} description of version {FORMAT_VERSION}; write it with this cxr14's save_package"
        )
    if config.get("labels") != list(LABELS):
        raise PackageError(
            f"{path}: its label order {config.get('labels')} is not cxr14.labels.LABELS; the model's outputs would "
            "be read as the wrong findings; package it again with this cxr14"
        )
    config["thresholds"] = check_thresholds(config.get("thresholds"), f"{path}: thresholds")
    return config


def load_package(package_dir: Path, device: torch.device | None = None) -> Package:
    """Rebuild the architecture of `package_dir`'s model.json and load its weights as data only.

    `device`: None for `cxr14.inference.select_device("auto")` (CUDA when present, where bf16
    autocast makes scores differ from the CPU's in the last digits).

    Raises:
        MissingInputError, PackageError: the package is incomplete, not safetensors, or does not fit
            the architecture (the message names the file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(package_dir)
    weights = Path(package_dir) / WEIGHTS_FILE
    bundle = build_model(config["architecture"], NUM_CLASSES, config["image_size"], pretrained=False)
    built = bundle.input_record()
    if built != {name: config[name] for name in built}:
        raise PackageError(
            f"{weights.with_name(CONFIG_FILE)}: the model was trained on input normalised with in_chans/mean/std "
            f"{config['in_chans']}/{config['mean']}/{config['std']}, but this installation builds "
            f"{config['architecture']} with {built['in_chans']}/{built['mean']}/{built['std']}; install the "
            "cxr14 and timm versions the model was packaged with"
        )
    try:
        state = load_file(str(weights))  # tensors only: a pickle is refused, never unpickled
    except (SafetensorError, OSError, ValueError) as error:
        raise PackageError(
            f"{weights}: not a safetensors file ({error}); it is read as data only, never unpickled; write the "
            "package again with save_package"
        ) from None
    try:
        bundle.model.load_state_dict(state)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:300]
        message = f"{weights}: does not fit {config['architecture']} as model.json describes it ({first})"
        raise PackageError(message + "; write the package again with save_package") from None
    device = device or select_device("auto")
    bundle.model.to(device).eval()
    return Package(bundle, config, device)


def check_images(images: object, size: int) -> np.ndarray:
    """`images` as uint8 [N, size, size], or ModelInputError saying what to send instead."""
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (size, size):
        raise ModelInputError(
            f"images: expected uint8 grayscale [N, {size}, {size}] (the preprocess cache's pixels), got "
            f"{array.dtype} {list(array.shape)}; resize to {size} px and convert to uint8 as "
            "cxr14.data.images.prepare_for_model does"
        )
    return array


def predict_table(
    package: Package, images: object, operating_point: str | None = None, batch_size: int = BATCH_SIZE
) -> pd.DataFrame:
    """Score uint8 [N, S, S] images: one probability column per finding, then `<finding> positive`.

    Raises:
        ModelInputError: images of another type or size, or an unknown operating point.
    """
    thresholds = package.thresholds(operating_point)
    pixels = check_images(images, package.preprocess_size)
    scores = predict(
        package.bundle,
        pixels,
        np.zeros((len(pixels), NUM_CLASSES), np.float32),
        batch_size,
        package.image_size,
        package.device,
        desc="mlflow model",
    )
    table = pd.DataFrame(scores, columns=list(LABELS))
    for column, name in enumerate(LABELS):
        table[name + POSITIVE_SUFFIX] = scores[:, column] >= thresholds[name]
    return table


def model_signature(preprocess_size: int):
    """The MLflow signature: uint8 [-1, S, S] in; 15 probabilities + 15 booleans out; `operating_point`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    outputs = [ColSpec("float", name) for name in LABELS]
    outputs += [ColSpec("boolean", name + POSITIVE_SUFFIX) for name in LABELS]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, preprocess_size, preprocess_size))]),
        outputs=Schema(outputs),  # type: ignore[arg-type]  # Schema takes a list of either spec kind
        params=ParamSchema([ParamSpec("operating_point", "string", DEFAULT_OPERATING_POINT)]),
    )


def _requirements() -> list[str]:
    """Pinned pip requirements of the model's code (cxr14 itself is not on PyPI: see the module docstring)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "timm", "safetensors", "numpy", "pandas")]


def model_description(config: Mapping[str, Any]) -> str:
    """The registered model's description (what goes in, what comes out, how it was made)."""
    size, target = config["preprocess_size"], config["thresholds"]["sensitivity"]["target"]
    return (
        f"cxr14 {config['architecture']}: a multi-label classifier of the 15 NIH ChestX-ray14 targets (14 findings "
        f"+ No Finding) on frontal chest radiographs. Input: uint8 grayscale images [N, {size}, {size}] as the "
        f"preprocess cache stores them; the model resizes them to {config['image_size']} px. Output: one "
        "probability column per finding and '<finding> positive' at the thresholds of the operating_point param: "
        f"max_f1 (default; validation max-F1) or sensitivity (validation sensitivity >= {target}). Weights are "
        "safetensors and the model's code is logged as source (nothing is unpickled); loading needs the cxr14 "
        "package installed (mlflow models serve --env-manager local). Research use only, not a medical device."
    )


def log_model(
    run_id: str,
    package_dir: Path,
    input_example: np.ndarray,
    registered_name: str | None = None,
    description: str | None = None,
    *,
    register: bool = True,
) -> dict[str, Any]:
    """Log the package as an MLflow model of the training run `run_id` and register it.

    The logged model (MLflow 3 LoggedModel, named `cxr14-<model>`) is linked to the run (its
    "Models" column); its registered version gets the tags model, seed, git_commit and git_dirty (the run's),
    image_size and preprocess_size, and `description`. The registered model's description says
    what the model takes and returns (:func:`model_description`).

    Args:
        run_id: the model's training run (models/<model>/seed-<seed>/mlflow_run.json), in the store of
            `cxr14.tracking.tracking_uri()`.
        package_dir: written by :func:`save_package`.
        input_example: real uint8 [N, S, S] images (one is enough), stored with the model.
        registered_name: None for `registered_name(<architecture>)`.
        description: the version's description, e.g. its test macro AUROC with the interval.
        register: False to log the model without registering a version.

    Returns:
        {"model_uri", "model_id", "run_id", "registered_name", "version", "version_uri"} (the last
        three None when not registered).

    Raises:
        PackageError, MissingInputError: a bad package (checked before the run is touched).
        ModelInputError: an input example of the wrong type or size.
        RecordedRunMissingError, TrackingUnavailableError: the run is not in the store, or the store failed.
    """
    package_dir = Path(package_dir)
    config = read_config(package_dir)
    example = check_images(input_example, int(config["preprocess_size"]))
    architecture = config["architecture"]
    name = registered_name or _name_for(architecture)
    with tracking.model_run(architecture, run_id=run_id) as run:
        import mlflow

        info = mlflow.pyfunc.log_model(
            name=_name_for(architecture),
            python_model=str(CODE_FILE),
            artifacts={PACKAGE_ARTIFACT: str(package_dir)},
            signature=model_signature(int(config["preprocess_size"])),
            input_example=example,
            pip_requirements=_requirements(),
            params={key: str(config[key]) for key in ("architecture", "image_size", "preprocess_size")},
            tags=_version_tags(config, run.data.tags),
        )
        result: dict[str, Any] = {"model_uri": info.model_uri, "model_id": info.model_id, "run_id": run_id}
        result.update(registered_name=None, version=None, version_uri=None)
        if register:
            version = _register(info.model_uri, name, config, run.data.tags, description)
            result.update(registered_name=name, version=int(version), version_uri=f"models:/{name}/{version}")
    return result


def _version_tags(config: Mapping[str, Any], run_tags: Mapping[str, str]) -> dict[str, str]:
    """Tags of the logged model and its registered version: what model, trained how, from which code."""
    tags = {"model": str(config["architecture"])}
    seed = config.get("seed", run_tags.get("seed"))
    if seed is not None:
        tags["seed"] = str(seed)
    for key in ("git_commit", "git_dirty"):
        if run_tags.get(key):
            tags[key] = run_tags[key]
    if config.get("test_macro_auroc") is not None:
        tags["test_macro_auroc"] = str(config["test_macro_auroc"])
    tags.update(image_size=str(config["image_size"]), preprocess_size=str(config["preprocess_size"]))
    return tags


def _register(
    model_uri: str, name: str, config: Mapping[str, Any], run_tags: Mapping[str, str], description: str | None
) -> str:
    """Register `model_uri` as a new version of `name`; set its and the registered model's descriptions."""
    import mlflow

    # register_model creates the registered model when missing (tolerating a concurrent creation);
    # SQLite serialises the version numbers.
    version = mlflow.register_model(model_uri, name, tags=_version_tags(config, run_tags))
    client = mlflow.MlflowClient()
    if description:
        client.update_model_version(name, version.version, description=description)
    client.update_registered_model(name, description=model_description(config))
    return str(version.version)
