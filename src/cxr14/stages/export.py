"""Stage logic of `export@<model>`: make the trained model usable outside the pipeline.

    record = export_trained(cfg, "resnet18", Path("models/resnet18"), Path("data/cache"),
                            Path("metrics"), out_dir=Path("exports/resnet18"), card=Path("metrics/cards/resnet18.md"))

For the first training seed's model (the one explain@ and profile@ use), after evaluate@ and profile@:

- `exports/<model>/network/`: TorchScript and ONNX (dynamic batch) files with the preprocessing
  contract, checked against the PyTorch model on test images of the cache (cxr14.deploy.export);
- `exports/<model>/package/`: safetensors weights + model.json (thresholds, sizes), the content of
  the MLflow model (cxr14.deploy.mlflow_model);
- `metrics/cards/<model>.md`: the model card (cxr14.reporting.card), whose threshold table must
  equal evaluate@'s; the thresholds are those best.pt carries (chosen on validation in training);
- in MLflow: the MLflow model logged in the seed's training run, registered as `cxr14-<model>`
  with the test macro AUROC in the version's description, and the card and export record as
  artifacts of the run. `exports/<model>/registry.json` names the version.
"""

from __future__ import annotations

from pathlib import Path

from cxr14 import tracking
from cxr14.config import Config
from cxr14.data.cache import open_split
from cxr14.deploy.export import export_model
from cxr14.deploy.mlflow_model import log_model, registered_name, save_package
from cxr14.deploy.predict import TrainedModel, load_model_folder
from cxr14.inference import select_device
from cxr14.io import atomic_write_json
from cxr14.models import UnknownModelError, describe_model
from cxr14.reporting.card import load_card_inputs, model_card, write_card

PARITY_IMAGES = 16  # test images of the cache the exported files must reproduce (first rows)


def package_thresholds(model: TrainedModel, target: float) -> dict:
    """The two operating points in the form the MLflow package and the card take."""
    return {
        "max_f1": model.thresholds("max_f1"),
        "sensitivity": {"target": target, "thresholds": model.thresholds("sensitivity", target)},
    }


def version_description(model_name: str, headline: dict, seed: int | None) -> str:
    """The registered version's description: what it scored on the test split, honestly bounded."""
    seeds = headline.get("seeds", 1)
    over = f"mean over {seeds} training seeds; this version is seed {seed}" if seeds > 1 else f"training seed {seed}"
    return (
        f"{model_name}: test macro AUROC {headline['macro_auroc']:.3f} "
        f"[{headline['macro_auroc_ci_low']:.3f}, {headline['macro_auroc_ci_high']:.3f}] "
        f"(95% patient-bootstrap interval; {over}). Input: uint8 grayscale [N, S, S] at the cache size; "
        "output: 15 probabilities and calls at the validation-chosen thresholds. Research use only, "
        "not a medical device."
    )


def export_trained(
    cfg: Config, model_name: str, model_dir: Path, cache_dir: Path, metrics_dir: Path, out_dir: Path, card: Path
) -> dict:
    """Export files, MLflow package, model card and registered MLflow model; returns the record.
    `out_dir` and `card` are the staged outputs (cxr14.io.staged_outputs): written, then logged."""
    model = load_model_folder(model_dir, cfg.train_seeds[0], select_device(cfg.train.device))
    test_images, _ = open_split(cache_dir, "test")
    check = test_images[:PARITY_IMAGES]
    thresholds = package_thresholds(model, cfg.evaluate.sensitivity_target)
    inputs = {**load_card_inputs(model_name, metrics_dir, model_dir), "thresholds": thresholds}
    write_card(card, model_card(model_name, **inputs, data_source=cfg.data.source, architecture=_architecture(model)))
    exported = export_model(
        model.bundle, model.image_size, model.preprocess_size, out_dir / "network", check_images=check
    )
    extra = {"seed": model.seed, "test_macro_auroc": inputs["headline"]["macro_auroc"]}
    save_package(model.bundle, model.image_size, model.preprocess_size, thresholds, extra, out_dir / "package")
    description = version_description(model_name, inputs["headline"], model.seed)
    registered = _register(model, out_dir, check, description, card)
    atomic_write_json(out_dir / "registry.json", registered)
    return {"export": exported, "registry": registered}


def _architecture(model: TrainedModel) -> dict:
    """What the card says about the network: description, input channels, normalisation."""
    try:
        description = describe_model(model.name)
    except UnknownModelError:
        description = f"timm architecture `{model.name}`"
    bundle = model.bundle
    return {"description": description, "mean": list(bundle.mean), "std": list(bundle.std), "in_chans": bundle.in_chans}


def _register(model: TrainedModel, out_dir: Path, images, description: str, card: Path) -> dict:
    """Log the package as an MLflow model of the seed's training run, register it, attach the card."""
    assert model.folder is not None  # loaded from its folder by export_trained
    run_id = tracking.recorded_run_id(model.folder / "mlflow_run.json")  # store checked by pipeline/export.py
    registered = log_model(run_id, out_dir / "package", images[:1], registered_name(model.name), description)
    with tracking.model_run(model.name, run_id=run_id):
        tracking.log_artifact(card, "card")
        tracking.log_artifact(out_dir / "network" / "export.json", "export")
        tracking.log_artifact(out_dir / "network" / "preprocessing.json", "export")
    return registered
