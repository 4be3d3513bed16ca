"""Apply a trained model to new radiographs: the library behind `cxr14 predict`.

    model = load_model_folder(Path("models/resnet18"), device=torch.device("cpu"))  # first seed
    outcome = predict_files(model, [Path("scans/")], operating_point="max_f1")
    outcome.table        # one row per image: 15 probabilities, 15 positive/negative calls
    outcome.failures     # (file, why) for every file that could not be scored

A model folder is what `train@` wrote: `models/<model>/seed-<seed>/` (best.pt, config.json), or
its parent `models/<model>/`, which means the first training seed (`--seed` picks another).
Nothing in it runs code: best.pt is read with ``torch.load(weights_only=True)``
(cxr14.training.checkpoint) and config.json is JSON.

A model `export@` registered in MLflow is named by its URI instead (`models:/cxr14-resnet18/1`,
`models:/cxr14-resnet18@<alias>`, `runs:/<run id>/cxr14-resnet18`), read from the store of
`cxr14.tracking.tracking_uri()` (`$MLFLOW_TRACKING_URI`, e.g. a team's `mlflow server`):
:func:`load_registered_model` downloads its package (safetensors weights, model.json with the
validation thresholds; nothing unpickled) and scores exactly as the folder it was exported from.

Images are scored exactly as `evaluate@` scores the cache: the pixels the cache would hold
(cxr14.data.images: grayscale, 8-bit, area resize to the model's `preprocess.size`), then
:func:`cxr14.inference.predict` (the same resize to the model's input size, channels,
normalisation, eval mode). Probabilities become positive/negative at thresholds chosen on the
validation split when the model was trained (stored in best.pt with the weights):

- ``max_f1`` (default): per finding, the threshold with the highest validation F1 — the
  operating point of the report's tables;
- ``sensitivity``: per finding, the highest threshold that still finds `sensitivity` (default
  0.9) of the validation positives — a screening operating point with more false positives.

The thresholds the predictions used are written beside them, so no one has to guess what a
probability of 0.5 means: it means nothing by itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from cxr14.data.images import check_radiograph, find_images, prepare_for_model
from cxr14.deploy.outputs import DEFAULT_SENSITIVITY, OPERATING_POINTS, POSITIVE_SUFFIX
from cxr14.errors import Cxr14Error, MissingInputError
from cxr14.evaluation.gradcam import find_taps, grad_cam, is_empty_map
from cxr14.evaluation.metrics import operating_point_thresholds
from cxr14.inference import load_operating_points, load_trained, predict
from cxr14.io import atomic_write_bytes, atomic_write_json, progress
from cxr14.labels import LABELS, NUM_CLASSES
from cxr14.models import ModelBundle
from cxr14.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

CHUNK = 256  # images read and scored at a time: memory stays bounded whatever the folder holds


class ModelFolderError(Cxr14Error, ValueError):
    """A model folder without what prediction needs (weights, config, validation thresholds)."""


@dataclass
class TrainedModel:
    """A trained model ready to score images, with the validation operating points it was saved with."""

    name: str
    folder: Path | None  # models/<model>/seed-<seed>; None for a model loaded from MLflow (`uri`)
    seed: int | None
    bundle: ModelBundle
    image_size: int  # what the network sees
    preprocess_size: int  # the cache resolution it was trained on
    operating_points: dict  # cxr14.evaluation.metrics.operating_points of the validation split
    # A registered model: the package's thresholds (max_f1, and sensitivity at its one target)
    # instead of `operating_points`, which export@ does not package.
    packaged_thresholds: dict | None = None
    uri: str | None = None  # the MLflow model URI it was loaded from

    @property
    def source(self) -> str:
        """Where the model came from: its folder, or its MLflow model URI."""
        return self.uri if self.uri is not None else str(self.folder)

    def thresholds(self, operating_point: str = "max_f1", sensitivity: float = DEFAULT_SENSITIVITY) -> dict[str, float]:
        """Per finding, the validation-chosen threshold of `operating_point` (as evaluate@ uses them)."""
        if operating_point not in OPERATING_POINTS:
            raise ModelFolderError(f"operating point {operating_point!r}: use one of {', '.join(OPERATING_POINTS)}")
        if self.packaged_thresholds is not None:
            return _packaged(self.packaged_thresholds, operating_point, sensitivity, self.source)
        return operating_point_thresholds(self.operating_points, None if operating_point == "max_f1" else sensitivity)


def _packaged(cuts: dict, operating_point: str, sensitivity: float, source: str) -> dict[str, float]:
    from cxr14.deploy.mlflow_model import package_thresholds_of

    target = float(cuts["sensitivity"]["target"])
    if operating_point == "sensitivity" and abs(sensitivity - target) > 1e-9:
        raise ModelFolderError(
            f"{source}: a registered model carries the sensitivity operating point for a target of {target:g} only "
            f"(chosen on validation when it was exported); use --sensitivity {target:g}, or score with the model "
            "folder it came from (models/<model>), which holds every validation operating point"
        )
    return dict(package_thresholds_of(cuts, operating_point))


def resolve_model_folder(path: Path, seed: int | None = None) -> tuple[Path, int | None]:
    """(folder holding best.pt, its training seed): `path` itself, or for models/<model> the
    seed-<seed> folder of `seed` (default: the first of the training's `train_seeds`)."""
    if (path / "best.pt").is_file():
        if seed is not None and path.name != f"seed-{seed}":
            raise ModelFolderError(f"{path}: --seed {seed} given, but this folder is one trained model ({path.name})")
        return path, _seed_of(path)
    found = (_seed_of(child) for child in path.glob("seed-*") if (child / "best.pt").is_file())
    seeds = sorted(seed for seed in found if seed is not None)
    if not seeds:
        raise ModelFolderError(
            f"{path}: no trained model here (neither best.pt nor seed-<seed>/best.pt); pass a folder written "
            "by `dvc repro` (models/<model> or models/<model>/seed-<seed>)"
        )
    if seed is None:
        seed = _first_training_seed(path, seeds)
    if seed not in seeds:
        raise ModelFolderError(f"{path}: no model trained with seed {seed}; trained seeds: {seeds}")
    return path / f"seed-{seed}", seed


def _seed_of(folder: Path) -> int | None:
    name = folder.name
    return int(name[5:]) if name.startswith("seed-") and name[5:].isdigit() else None


def _first_training_seed(path: Path, seeds: list) -> int:
    """The first of `train_seeds` as the training recorded it (the seed explain@/profile@ use)."""
    for seed in seeds:
        listed = _read_config(path / f"seed-{seed}").get("train_seeds") or []
        if listed and listed[0] in seeds:
            return int(listed[0])
    return int(seeds[0])


def _read_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFolderError(f"{config_path}: missing; a model folder needs the config.json its training wrote")
    with config_path.open(encoding="utf-8") as handle:
        return json.load(handle)


def load_model_folder(path: Path, seed: int | None = None, device: torch.device | None = None) -> TrainedModel:
    """The model in `path` (see :func:`resolve_model_folder`), on `device` (default CPU)."""
    folder, seed = resolve_model_folder(path, seed)
    config = _read_config(folder)
    checkpoint = load_checkpoint(folder / "best.pt")  # data only
    name = str(checkpoint.get("model_name") or config.get("model"))
    try:
        points = load_operating_points(folder, name, checkpoint)
    except MissingInputError as error:
        raise ModelFolderError(str(error)) from error
    bundle, image_size = load_trained(folder, name, device or torch.device("cpu"), checkpoint=checkpoint)
    return TrainedModel(name, folder, seed, bundle, image_size, int(config["preprocess"]["size"]), points)


MODEL_URI_SCHEMES = ("models:/", "runs:/")


def is_model_uri(text: str | Path) -> bool:
    """True for an MLflow model URI (`models:/...`, `runs:/...`) rather than a model folder."""
    return str(text).startswith(MODEL_URI_SCHEMES)


def load_registered_model(uri: str, device: torch.device | None = None) -> TrainedModel:
    """The model `export@` logged to MLflow under `uri`, from the store of `tracking_uri()`.

    Raises:
        ModelFolderError: the store does not hold `uri`, or it is not a cxr14 model (no package).
        TrackingUnavailableError: the store cannot be reached.
        PackageError: the package does not load (cxr14.deploy.mlflow_model.load_package).
    """
    import tempfile

    from cxr14 import tracking
    from cxr14.deploy.mlflow_model import PACKAGE_ARTIFACT, load_package

    store = tracking.tracking_uri()
    database = tracking.sqlite_path(store)
    if database is not None and not database.is_file():  # MLflow would create an empty store
        raise ModelFolderError(
            f"{uri}: no MLflow store at {database} ({tracking.describe_store(store)}); run in the pipeline's "
            "workspace, or set MLFLOW_TRACKING_URI to the store export@ registered the model in"
        )
    tracking.check_reachable(store)
    with tempfile.TemporaryDirectory(prefix="cxr14-model-") as scratch:
        local = _download_model(uri, store, Path(scratch))
        flavor = _read_mlmodel(local, uri).get("flavors", {}).get("python_function", {})
        package = (flavor.get("artifacts") or {}).get(PACKAGE_ARTIFACT, {}).get("path")
        if not package or not (local / package).is_dir():
            raise ModelFolderError(
                f"{uri}: not a cxr14 model (its MLmodel has no '{PACKAGE_ARTIFACT}' artifact); pass a model that "
                "export@ registered (cxr14-<model>, see exports/<model>/registry.json)"
            )
        loaded = load_package(local / package, device or torch.device("cpu"))
    config = loaded.config
    seed = config.get("seed")
    return TrainedModel(
        name=str(config["architecture"]),
        folder=None,
        seed=int(seed) if seed is not None else None,
        bundle=loaded.bundle,
        image_size=loaded.image_size,
        preprocess_size=loaded.preprocess_size,
        operating_points={},
        packaged_thresholds=config["thresholds"],
        uri=uri,
    )


def _download_model(uri: str, store: str, into: Path) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    from cxr14.tracking import describe_store

    mlflow.set_tracking_uri(store)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
    except (MlflowException, OSError) as error:
        first = " ".join(str(error).split())[:300]
        raise ModelFolderError(
            f"{uri}: cannot be read from {describe_store(store)} ({first}); registered cxr14 models are named "
            "cxr14-<model> (the version is in exports/<model>/registry.json)"
        ) from None


def _read_mlmodel(local: Path, uri: str) -> dict:
    import yaml

    path = local / "MLmodel"
    if not path.is_file():
        raise ModelFolderError(f"{uri}: not an MLflow model (no MLmodel file); pass models:/<name>/<version>")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


@dataclass
class Outcome:
    """What :func:`predict_files` produced: the table, and every file that failed or looked odd."""

    table: pd.DataFrame
    thresholds: dict[str, float]
    failures: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[tuple[Path, str]] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    # Overlays whose Grad-CAM map is zero everywhere: no location raised the score at the tapped
    # layer (the overlay shows the radiograph only).
    empty_overlays: list[Path] = field(default_factory=list)


def output_columns() -> list[str]:
    """The prediction table's columns: image, 15 probabilities, 15 calls, operating point, warnings."""
    return ["image", *LABELS, *(name + POSITIVE_SUFFIX for name in LABELS), "operating_point", "warnings"]


def predict_files(
    model: TrainedModel,
    paths: Sequence[Path],
    *,
    operating_point: str = "max_f1",
    sensitivity: float = DEFAULT_SENSITIVITY,
    batch_size: int = 32,
    gradcam_dir: Path | None = None,
) -> Outcome:
    """Score every image under `paths` (files or folders); a file that cannot be read, or does
    not look like a frontal radiograph, is listed in `failures` and the others are still scored."""
    thresholds = model.thresholds(operating_point, sensitivity)
    files, problems = find_images(paths)
    outcome = Outcome(pd.DataFrame(columns=output_columns()), thresholds, failures=list(problems))
    tables = []
    # One bar over the files (reading them is most of the work), advanced as each chunk is scored.
    with progress(total=len(files), desc="predict", unit="img") as bar:
        for start in range(0, len(files), CHUNK):
            chunk = files[start : start + CHUNK]
            pixels, kept, notes = _read_chunk(chunk, model.preprocess_size, outcome)
            if kept:
                scores = _score(model, pixels, batch_size)
                label = operating_point if operating_point == "max_f1" else f"sensitivity>={sensitivity:g}"
                tables.append(_table(kept, scores, thresholds, label, notes))
                if gradcam_dir is not None:
                    written, empty = write_overlays(model, pixels, scores, thresholds, kept, gradcam_dir)
                    outcome.overlays += written
                    outcome.empty_overlays += empty
            bar.update(len(chunk))
    if tables:
        outcome.table = pd.concat(tables, ignore_index=True)[output_columns()]
    return outcome


def _read_chunk(files: list[Path], size: int, outcome: Outcome) -> tuple[np.ndarray, list[Path], list[str]]:
    """The cache pixels of the files that read and pass the checks; the rest go to `outcome`."""
    pixels, kept, notes = [], [], []
    for path in files:
        try:
            image, radiograph = prepare_for_model(path, size)
        except Cxr14Error as error:  # its message starts with the path, which the caller prints anyway
            message = str(error)
            outcome.failures.append((path, message.removeprefix(f"{path}: ")))
            continue
        refusals, warnings = check_radiograph(radiograph)
        if refusals:
            outcome.failures.append((path, "; ".join(refusals)))
            continue
        outcome.warnings += [(path, warning) for warning in warnings]
        pixels.append(image)
        kept.append(path)
        notes.append("; ".join(warnings))
    stacked = np.stack(pixels) if pixels else np.zeros((0, size, size), np.uint8)
    return stacked, kept, notes


def _score(model: TrainedModel, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """Sigmoid scores [N, 15]: the very function evaluate@ scores the cache with."""
    device = next(model.bundle.model.parameters()).device
    labels = np.zeros((len(pixels), NUM_CLASSES), np.float32)  # unused by scoring
    return predict(model.bundle, pixels, labels, batch_size, model.image_size, device, show_progress=False)


def _table(paths: list[Path], scores: np.ndarray, thresholds: dict[str, float], point: str, notes: list[str]):
    table = pd.DataFrame(scores, columns=list(LABELS))
    table.insert(0, "image", [str(path) for path in paths])
    for index, name in enumerate(LABELS):
        table[name + POSITIVE_SUFFIX] = (scores[:, index] >= thresholds[name]).astype(int)
    table["operating_point"] = point
    table["warnings"] = notes
    return table


def write_overlays(
    model: TrainedModel,
    pixels: np.ndarray,
    scores: np.ndarray,
    thresholds: dict[str, float],
    paths: list[Path],
    out_dir: Path,
) -> tuple[list[Path], list[Path]]:
    """One Grad-CAM overlay PNG per image and finding called positive: `<image stem>_<finding>.png`;
    returns (written, those of them whose map is zero everywhere)."""
    pairs = [
        (row, column)
        for row in range(len(paths))
        for column, name in enumerate(LABELS)
        if scores[row, column] >= thresholds[name]
    ]
    if not pairs:
        return [], []
    device = next(model.bundle.model.parameters()).device
    taps = find_taps(model.bundle, model.image_size, device)
    written, empty = [], []
    for start in range(0, len(pairs), 16):
        chunk = pairs[start : start + 16]
        maps, _ = grad_cam(
            model.bundle, taps, pixels[[row for row, _ in chunk]], [c for _, c in chunk], model.image_size, device
        )
        for (row, column), cam in zip(chunk, maps):
            target = out_dir / f"{paths[row].stem}_{LABELS[column].replace(' ', '_')}.png"
            atomic_write_bytes(target, overlay_png(pixels[row], cam))
            written.append(target)
            if is_empty_map(cam):
                empty.append(target)
    return written, empty


def overlay_png(image: np.ndarray, cam: np.ndarray) -> bytes:
    """The radiograph with the map in jet colours blended in proportion to its value (PNG bytes)."""
    heat = cv2.applyColorMap(np.clip(cam * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    gray = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR).astype(np.float32)
    weight = 0.6 * np.clip(cam, 0, 1)[..., None]
    blended = np.clip(gray * (1 - weight) + heat * weight, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", blended)
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode an overlay")
    return encoded.tobytes()


def write_thresholds(
    path: Path, model: TrainedModel, outcome: Outcome, operating_point: str, sensitivity: float
) -> None:
    """The thresholds a prediction table used, beside it (`<out>.thresholds.json`)."""
    atomic_write_json(
        path,
        {
            "model": model.name,
            ("model_uri" if model.uri is not None else "model_folder"): model.source,
            "seed": model.seed,
            "operating_point": operating_point,
            "sensitivity_target": sensitivity if operating_point == "sensitivity" else None,
            "validation_images": model.operating_points.get("validation_images"),
            "thresholds": outcome.thresholds,
        },
    )
