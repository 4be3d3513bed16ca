"""Which differences between models are real, and how ours compare with published numbers.

    predictions = load_predictions(Path("metrics/predictions"), ["cnn", "resnet18"])
    rows = paired_comparisons(predictions, ranking=["resnet18", "cnn"], resamples=1000, seed=42)

Every model is compared with the best one on the same test images, resampling patients
(their follow-up images are correlated), so the interval and p-value of the macro-AUROC
difference account for both models' errors moving together. A model trained with several seeds
enters with the mean of its seeds' macro AUROCs (every seed's scores are in its predictions file,
column `seed`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr14.errors import Cxr14Error
from cxr14.evaluation.statistics import paired_bootstrap
from cxr14.labels import LABELS
from cxr14.reporting.files import per_model_files

# Rajpurkar et al. 2017 (CheXNet), Table 1: per-class test AUROC of DenseNet-121 on NIH
# ChestX-ray14 with a random patient split of their own, so a reference, not a like-for-like.
CHEXNET_AUROC = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Effusion": 0.8638,
    "Infiltration": 0.7345,
    "Mass": 0.8676,
    "Nodule": 0.7802,
    "Pneumonia": 0.7680,
    "Pneumothorax": 0.8887,
    "Consolidation": 0.7901,
    "Edema": 0.8878,
    "Emphysema": 0.9371,
    "Fibrosis": 0.8047,
    "Pleural_Thickening": 0.8062,
    "Hernia": 0.9164,
}


# metrics/predictions/<model>.csv: seed, image_id, patient_id, one score column per label (LABELS
# order), then the truth beside them in these columns (written by evaluate@<model>); one block
# of rows per training seed, the first seed first.
TRUTH_COLUMNS = tuple(f"true_{name}" for name in LABELS)
# ... and last the temperature-scaled scores (evaluate@: fitted per finding on validation).
CALIBRATED_COLUMNS = tuple(f"calibrated_{name}" for name in LABELS)


class ComparisonError(Cxr14Error, ValueError):
    """Prediction files that cannot be compared (scored on different test images)."""


def load_predictions(predictions_dir: Path, models: list[str]) -> dict[str, pd.DataFrame]:
    """metrics/predictions/<model>.csv for every model (missing = ReportError naming the stage)."""
    paths = per_model_files(predictions_dir, models, ".csv", "evaluate")
    return {name: pd.read_csv(path, dtype={"image_id": str, "patient_id": str}) for name, path in paths.items()}


def by_seed(predictions: pd.DataFrame) -> list[pd.DataFrame]:
    """One table per training seed, in file order (a file without a `seed` column is one seed)."""
    if "seed" not in predictions.columns:
        return [predictions]
    order = pd.unique(predictions["seed"])
    return [predictions[predictions["seed"] == seed].reset_index(drop=True) for seed in order]


def first_seed(predictions: pd.DataFrame) -> pd.DataFrame:
    """The first training seed's rows: the model the report's per-class tables and figures show."""
    return by_seed(predictions)[0]


def seed_scores(predictions: pd.DataFrame, name: str = "model") -> np.ndarray:
    """[S, N, 15]: every seed's scores, checked to cover the same images in the same order."""
    tables = by_seed(predictions)
    reference = tables[0]["image_id"].to_numpy()
    for table in tables[1:]:
        if not np.array_equal(table["image_id"].to_numpy(), reference):
            raise ComparisonError(f"{name}: its seeds were scored on different test images; re-run evaluate@{name}")
    return np.stack([truth_and_scores(table)[1] for table in tables])


def truth_and_scores(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(targets, scores), each [N, 15] in LABELS order, from one predictions table."""
    return predictions[list(TRUTH_COLUMNS)].to_numpy(), predictions[list(LABELS)].to_numpy()


def paired_comparisons(
    predictions: dict[str, pd.DataFrame], ranking: list[str], resamples: int, seed: int
) -> list[dict]:
    """Best model (ranking[0]) minus each other model: macro AUROC difference, 95 % CI, p."""
    best = ranking[0]
    reference = first_seed(predictions[best])
    targets, _ = truth_and_scores(reference)
    reference_scores = seed_scores(predictions[best], best)
    patients = reference["patient_id"].to_numpy()
    rows = []
    for name in ranking[1:]:
        other = first_seed(predictions[name])
        if not np.array_equal(other["image_id"].to_numpy(), reference["image_id"].to_numpy()):
            raise ComparisonError(f"{name} and {best} were scored on different test images; re-run evaluate")
        result = paired_bootstrap(
            targets, reference_scores, seed_scores(predictions[name], name), patients, resamples=resamples, seed=seed
        )
        rows.append({"better": best, "worse": name, **result})
    return rows


def comparison_lines(rows: list[dict], resamples: int) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Are the differences real?",
        "",
        f"Paired bootstrap over test patients ({resamples} resamples, both models on the same resampled images): "
        "macro AUROC of the best model minus each other model, its 95 % interval and a two-sided p-value. "
        "An interval that contains 0 means this test set cannot tell the two apart.",
        "",
        "| comparison | Δ macro AUROC | 95 % CI | p |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        low, high = row["ci"]
        # A bootstrap cannot resolve p below 1/resamples: say so rather than print 0.000.
        p_text = f"< {1 / resamples:.3g}" if row["p_value"] < 1 / resamples else f"{row['p_value']:.3f}"
        lines.append(
            f"| `{row['better']}` − `{row['worse']}` | {row['difference']:+.3f} | "
            f"[{low:+.3f}, {high:+.3f}] | {p_text} |"
        )
    return lines


def chexnet_lines(best: dict) -> list[str]:
    """Our best model's per-class AUROC beside CheXNet's published numbers (NIH data only)."""
    lines = [
        "",
        "## Reference: CheXNet (published, different split)",
        "",
        "CheXNet's per-class test AUROC (Rajpurkar et al. 2017, DenseNet-121, their own random patient split), "
        f"shown beside `{best['model']}` for orientation only: the test sets differ, so this is not a paired "
        "comparison.",
        "",
        f"| finding | `{best['model']}` | CheXNet |",
        "|---|---:|---:|",
    ]
    for name, published in CHEXNET_AUROC.items():
        ours = best["metrics"]["auroc"].get(name)
        lines.append(f"| {name} | {'–' if ours is None else f'{ours:.3f}'} | {published:.4f} |")
    return lines
