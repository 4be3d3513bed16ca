"""Stage logic of `evaluate@<model>`: score a trained model on the test split, once, with thresholds
tuned on validation.

    record = evaluate_model(cfg, "cnn", cache_dir=Path("data/cache"), model_dir=Path("models/cnn/seed-42"))
    combined = combine_seeds(cfg, [record, ...])   # one record per training seed of the model

Validation predictions choose the per-class max-F1 thresholds; the test split is touched only
here, after model selection, so its numbers are honest estimates. With several training seeds
(`train_seeds`), each seed's model is evaluated alike; the headline is the mean over seeds with
its spread and a patient-bootstrap interval of the mean, and the detailed tables are those of
the first seed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr14 import tracking
from cxr14.config import Config
from cxr14.data.cache import open_split, split_attributes, split_labels
from cxr14.errors import MissingInputError
from cxr14.evaluation.calibration import calibrate
from cxr14.evaluation.expert import score_against_experts
from cxr14.evaluation.metrics import micro_roc_points, operating_point_thresholds, test_metrics
from cxr14.evaluation.statistics import (
    bootstrap_intervals,
    calibration,
    seed_accuracy,
    seed_summary,
    threshold_metrics,
)
from cxr14.evaluation.subgroups import subgroup_report
from cxr14.inference import load_operating_points, load_trained, predict, select_device
from cxr14.labels import LABELS
from cxr14.model_names import train_stage
from cxr14.reporting.comparison import CALIBRATED_COLUMNS, TRUTH_COLUMNS, seed_scores, truth_and_scores
from cxr14.reporting.figures import reliability_figure, roc_pr_figure, save_figures, training_figure

log = logging.getLogger(__name__)


def evaluate_model(
    cfg: Config, model_name: str, cache_dir: Path, model_dir: Path, expert: pd.DataFrame | None = None
) -> dict:
    """Return the full evaluation record (metrics, thresholds, ROC, predictions, training summary,
    subgroups; against `expert`, the radiologists' labels of test images, when given)."""
    device = select_device(cfg.train.device)
    bundle, image_size = load_trained(model_dir, model_name, device)
    batch_size = cfg.evaluate.batch_size

    val_images, val_index = open_split(cache_dir, "val")
    test_images, test_index = open_split(cache_dir, "test")
    val_targets, test_targets = split_labels(val_index), split_labels(test_index)
    val_scores = predict(bundle, val_images, val_targets, batch_size, image_size, device, desc="val")
    test_scores = predict(bundle, test_images, test_targets, batch_size, image_size, device, desc="test")

    points = load_operating_points(model_dir, model_name)  # training's validation choices, as predict uses
    thresholds, settings = operating_point_thresholds(points), cfg.evaluate
    metrics = test_metrics(test_targets, test_scores, thresholds)
    patient_ids = test_index["patient_id"].astype(str).to_numpy()
    sensitivity_cut = operating_point_thresholds(points, settings.sensitivity_target)
    metrics.update(
        intervals=bootstrap_intervals(
            test_targets, test_scores, patient_ids, resamples=settings.bootstrap_resamples, seed=cfg.seed
        ),
        at_max_f1=threshold_metrics(test_targets, test_scores, thresholds),
        at_sensitivity=threshold_metrics(test_targets, test_scores, sensitivity_cut),
        sensitivity_target=settings.sensitivity_target,
        sensitivity_thresholds=sensitivity_cut,
        seed_accuracy=seed_accuracy(test_targets, test_scores),
        calibration=calibration(test_targets, test_scores, bins=settings.calibration_bins),
    )
    calibrated, metrics["temperature_scaling"] = calibrate(
        val_targets, val_scores, test_targets, test_scores, bins=settings.calibration_bins
    )
    subgroups = _subgroups(cfg, test_targets, test_scores, thresholds, test_index)
    if expert is not None and len(expert):
        metrics["expert"] = score_against_experts(
            expert, test_index, test_scores, resamples=settings.bootstrap_resamples, seed=cfg.seed
        )
    with (model_dir / "train.json").open(encoding="utf-8") as handle:
        training = json.load(handle)
    history = pd.read_csv(model_dir / "history.csv")
    predictions = _predictions_table(test_index, test_scores, test_targets, calibrated)
    log.info(
        "%s: test macro AUROC %.4f [%.4f, %.4f] (95%% patient bootstrap) over %d classes, %d images",
        model_name,
        metrics["macro_auroc"],
        *metrics["intervals"]["macro_auroc"],
        metrics["classes_in_macro_auroc"],
        len(test_targets),
    )
    return {
        "model": model_name,
        "metrics": metrics,
        "training": training,
        "roc": micro_roc_points(test_targets, test_scores) if len(test_targets) else [],
        "history": history,
        "predictions": predictions,
        "subgroups": subgroups,
    }


def _subgroups(
    cfg: Config, targets: np.ndarray, scores: np.ndarray, thresholds: dict[str, float], index: pd.DataFrame
) -> dict:
    """Sex, age, view and first/follow-up groups of the test split, at the validation thresholds."""
    return subgroup_report(
        targets,
        scores,
        thresholds,
        index["patient_id"].astype(str).to_numpy(),
        split_attributes(index),
        min_patients=cfg.evaluate.subgroup_min_patients,
        resamples=cfg.evaluate.bootstrap_resamples,
        seed=cfg.seed,
    )


def _predictions_table(index: pd.DataFrame, scores: np.ndarray, targets: np.ndarray, calibrated: np.ndarray):
    """metrics/predictions/<model>.csv of one seed: ids, scores, truth, temperature-scaled scores."""
    predictions = pd.DataFrame(scores, columns=list(LABELS))
    predictions.insert(0, "image_id", index["image_id"])
    predictions.insert(1, "patient_id", index["patient_id"].astype(str))
    for column, name in enumerate(TRUTH_COLUMNS):  # the truth beside the scores, for paired comparisons
        predictions[name] = targets[:, column].astype(int)
    for column, name in enumerate(CALIBRATED_COLUMNS):  # temperature-scaled (fitted on validation)
        predictions[name] = calibrated[:, column]
    return predictions


def seed_dirs(model_dir: Path, seeds: Sequence[int]) -> dict[int, Path]:
    """models/<model>/seed-<seed> for each training seed, each checked to hold a trained model."""
    found = {seed: model_dir / f"seed-{seed}" for seed in seeds}
    for seed, folder in found.items():
        if not (folder / "best.pt").is_file():
            raise MissingInputError(
                f"{folder}: no trained model of seed {seed} (best.pt missing); "
                f"run `dvc repro {train_stage(model_dir.name, folder)}` (train_seeds lists {list(seeds)})"
            )
    return found


def combine_seeds(cfg: Config, records: Sequence[dict], seeds: Sequence[int]) -> dict:
    """One model's evaluation over its training seeds: the first seed's full record (tables,
    thresholds, figures) plus `seeds`, the spread of the macro AUROC across seeds and the
    patient-bootstrap interval of its mean, and every seed's test scores (column `seed`)."""
    first = records[0]
    predictions = pd.concat(
        [record["predictions"].assign(seed=seed) for seed, record in zip(seeds, records)], ignore_index=True
    )
    predictions.insert(0, "seed", predictions.pop("seed"))
    targets, _ = truth_and_scores(first["predictions"])
    summary = seed_summary(
        targets,
        seed_scores(predictions, first["model"]),  # checks that every seed scored the same images
        first["predictions"]["patient_id"].to_numpy(),
        resamples=cfg.evaluate.bootstrap_resamples,
        seed=cfg.seed,
    )
    summary.update(
        seeds=list(seeds),
        micro_auroc=[record["metrics"]["micro_auroc"] for record in records],
        macro_ap=[record["metrics"]["macro_ap"] for record in records],
        best_epoch=[record["training"]["best_epoch"] for record in records],
        train_seconds=[record["training"]["train_seconds"] for record in records],
    )
    return {**first, "seed": seeds[0], "seeds": summary, "all_predictions": predictions}


def compact_metrics(record: dict) -> dict:
    """The headline numbers, the only ones declared as DVC metrics (metrics/<model>.json), so
    that `dvc exp show` fits a screen; per-class detail stays in metrics/details/<model>.json.
    Means over the training seeds; the interval is that of the mean (see `combine_seeds`)."""
    seeds = record["seeds"]
    return {
        "macro_auroc": seeds["mean"],
        "macro_auroc_ci_low": seeds["ci"][0],
        "macro_auroc_ci_high": seeds["ci"][1],
        "macro_auroc_seed_sd": seeds["sd"],
        "seeds": len(seeds["seeds"]),
        "micro_auroc": float(np.mean(seeds["micro_auroc"])),
        "macro_ap": float(np.mean(seeds["macro_ap"])),
        "best_epoch": record["training"]["best_epoch"],
        "train_seconds": float(np.sum(seeds["train_seconds"])),
    }


def write_figures(record: dict, figure_dir: Path) -> list[Path]:
    """ROC + precision-recall, reliability diagram and training curves of one model (PNG)."""
    name = record["model"]
    scaling = record["metrics"]["temperature_scaling"]
    targets, scores = truth_and_scores(record["predictions"])
    return list(
        save_figures(
            {
                "roc_pr.png": roc_pr_figure(targets, scores, name),
                "reliability.png": reliability_figure(
                    scaling["before"]["reliability"], name, scaling["after"]["reliability"]
                ),
                "training.png": training_figure({name: record["history"]}),
            },
            figure_dir,
        ).values()
    )


def review_metrics(record: dict) -> dict[str, float]:
    """The reviewer's numbers as flat MLflow metrics: calibration (Brier, ECE before/after
    temperature scaling), radiologist vs NIH AUROC per finding, and per subgroup the macro
    AUROC and the under-diagnosis rate (too-small groups have none)."""
    metrics = record["metrics"]
    flat: dict[str, float | None] = {}
    scaling = metrics.get("temperature_scaling")
    if scaling:
        for when in ("before", "after"):
            flat[f"test_macro_brier_{when}_scaling"] = scaling[when]["macro_brier"]
            flat[f"test_macro_ece_{when}_scaling"] = scaling[when]["macro_ece"]
    for finding, row in (metrics.get("expert") or {}).get("findings", {}).items():
        key = finding.replace(" ", "_")
        flat[f"test_expert_auroc_{key}"], flat[f"test_nih_auroc_{key}"] = row["auroc_expert"], row["auroc_nih"]
    for dimension, block in (record.get("subgroups") or {}).get("dimensions", {}).items():
        for group, entry in block["groups"].items():
            key = f"{dimension}_{group}".replace("+", "plus").replace(" ", "_")
            flat[f"test_subgroup_macro_auroc_{key}"] = entry.get("macro_auroc")
            flat[f"test_underdiagnosis_{key}"] = (entry.get("underdiagnosis") or {}).get("rate")
    return {key: float(value) for key, value in flat.items() if value is not None and np.isfinite(value)}


def log_to_run(
    record: dict,
    run_file: Path,
    figures: Sequence[Path] = (),
    cache_dir: Path | None = None,
    files: Sequence[Path] = (),
) -> None:
    """Add the test metrics (and figures, `files` such as the subgroup tables, and with `cache_dir`
    the test split as a dataset input) to the model's training run (recorded in mlflow_run.json)."""
    run_id = tracking.recorded_run_id(run_file)
    metrics = record["metrics"]
    flat = {f"test_{key}": value for key, value in metrics.items() if isinstance(value, float)}
    flat.update({f"test_auroc_{name}": value for name, value in metrics["auroc"].items() if value is not None})
    flat.update(review_metrics(record))
    with tracking.model_run(record["model"], run_id=run_id):
        tracking.log_metrics({key: value for key, value in flat.items() if np.isfinite(value)})
        for figure in figures:
            tracking.log_artifact(figure, "figures")
        for path in files:
            tracking.log_artifact(path, "evaluation")
        if cache_dir is not None:
            tracking.log_cache_inputs(cache_dir, {"test": "testing"})
