"""Stage logic of `evaluate@<model>`: score a trained model on the test split, once, with thresholds
tuned on validation.

    record = evaluate_model(cfg, "cnn", cache_dir=Path("data/cache"), model_dir=Path("models/cnn"))

Validation predictions choose the per-class max-F1 thresholds; the test split is touched only
here, after model selection, so its numbers are honest estimates.
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
from cxr14.data.cache import open_split, split_labels
from cxr14.evaluation.metrics import max_f1_thresholds, micro_roc_points, test_metrics
from cxr14.evaluation.statistics import (
    bootstrap_intervals,
    calibration,
    seed_accuracy,
    sensitivity_thresholds,
    threshold_metrics,
)
from cxr14.inference import load_trained, predict, select_device
from cxr14.labels import LABELS
from cxr14.reporting.comparison import TRUTH_COLUMNS, truth_and_scores
from cxr14.reporting.figures import reliability_figure, roc_pr_figure, save_figures, training_figure

log = logging.getLogger(__name__)


def evaluate_model(cfg: Config, model_name: str, cache_dir: Path, model_dir: Path) -> dict:
    """Return the full evaluation record (metrics, thresholds, ROC, predictions, training summary)."""
    device = select_device(cfg.train.device)
    bundle, image_size = load_trained(model_dir, model_name, device)
    batch_size = cfg.evaluate.batch_size

    val_images, val_index = open_split(cache_dir, "val")
    test_images, test_index = open_split(cache_dir, "test")
    val_targets, test_targets = split_labels(val_index), split_labels(test_index)
    val_scores = predict(bundle, val_images, val_targets, batch_size, image_size, device, desc="val")
    test_scores = predict(bundle, test_images, test_targets, batch_size, image_size, device, desc="test")

    thresholds = max_f1_thresholds(val_targets, val_scores)
    metrics = test_metrics(test_targets, test_scores, thresholds)
    settings = cfg.evaluate
    patient_ids = test_index["patient_id"].astype(str).to_numpy()
    sensitivity_cut = sensitivity_thresholds(val_targets, val_scores, target=settings.sensitivity_target)
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
    with (model_dir / "train.json").open(encoding="utf-8") as handle:
        training = json.load(handle)
    history = pd.read_csv(model_dir / "history.csv")
    predictions = pd.DataFrame(test_scores, columns=list(LABELS))
    predictions.insert(0, "image_id", test_index["image_id"])
    predictions.insert(1, "patient_id", test_index["patient_id"].astype(str))
    for column, name in enumerate(TRUTH_COLUMNS):  # the truth beside the scores, for paired comparisons
        predictions[name] = test_targets[:, column].astype(int)
    log.info(
        "%s: test macro AUROC %.4f over %d classes, %d images",
        model_name,
        metrics["macro_auroc"],
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
    }


def compact_metrics(record: dict) -> dict:
    """The headline numbers, the only ones declared as DVC metrics (metrics/<model>.json), so
    that `dvc exp show` fits a screen; per-class detail stays in metrics/details/<model>.json."""
    metrics = record["metrics"]
    return {
        "macro_auroc": metrics["macro_auroc"],
        "macro_auroc_ci_low": metrics["intervals"]["macro_auroc"][0],
        "macro_auroc_ci_high": metrics["intervals"]["macro_auroc"][1],
        "micro_auroc": metrics["micro_auroc"],
        "macro_ap": metrics["macro_ap"],
        "best_epoch": record["training"]["best_epoch"],
        "train_seconds": record["training"]["train_seconds"],
    }


def write_figures(record: dict, figure_dir: Path) -> list[Path]:
    """ROC + precision-recall, reliability diagram and training curves of one model (PNG)."""
    name = record["model"]
    targets, scores = truth_and_scores(record["predictions"])
    return list(
        save_figures(
            {
                "roc_pr.png": roc_pr_figure(targets, scores, name),
                "reliability.png": reliability_figure(record["metrics"]["calibration"], name),
                "training.png": training_figure({name: record["history"]}),
            },
            figure_dir,
        ).values()
    )


def log_to_run(record: dict, run_file: Path, figures: Sequence[Path] = (), cache_dir: Path | None = None) -> None:
    """Add the test metrics (and figures, and with `cache_dir` the test split as a dataset input)
    to the model's training run (recorded in mlflow_run.json)."""
    run_id = tracking.recorded_run_id(run_file)
    metrics = record["metrics"]
    flat = {f"test_{key}": value for key, value in metrics.items() if isinstance(value, float)}
    flat.update({f"test_auroc_{name}": value for name, value in metrics["auroc"].items() if value is not None})
    with tracking.model_run(record["model"], run_id=run_id):
        tracking.log_metrics({key: value for key, value in flat.items() if np.isfinite(value)})
        for figure in figures:
            tracking.log_artifact(figure, "figures")
        if cache_dir is not None:
            tracking.log_cache_inputs(cache_dir, {"test": "testing"})
