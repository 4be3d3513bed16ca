"""Multi-label metrics over the 15 targets.

    per_class_auroc(targets, scores)           # {label: AUROC or None when undefined}
    thresholds = max_f1_thresholds(val_targets, val_scores)
    report = test_metrics(test_targets, test_scores, thresholds)
    points = operating_points(val_targets, val_scores)   # stored with the weights (best.pt)
    sensitivity_threshold(points["positive_scores"]["Effusion"], 0.9)

A class with no positives (or no negatives) in a split has no AUROC; it is reported as None and
left out of the macro average rather than counted as 0.5, and the number of classes averaged
is stored beside the macro value so that the omission is visible.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from cxr14.labels import LABELS


def _defined(column: np.ndarray) -> bool:
    return 0 < column.sum() < len(column)


def per_class_auroc(targets: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    return {
        name: float(roc_auc_score(targets[:, i], scores[:, i])) if _defined(targets[:, i]) else None
        for i, name in enumerate(LABELS)
    }


def per_class_ap(targets: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    return {
        name: float(average_precision_score(targets[:, i], scores[:, i])) if targets[:, i].sum() > 0 else None
        for i, name in enumerate(LABELS)
    }


def macro(values: dict[str, float | None]) -> float:
    defined = [value for value in values.values() if value is not None]
    return float(np.mean(defined)) if defined else float("nan")


def macro_auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean AUROC over classes with both positives and negatives (validation/early stopping)."""
    return macro(per_class_auroc(targets, scores))


def max_f1_thresholds(targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Per class, the score threshold with the highest F1 on these (validation) data.

    A class without validation positives gets 0.5: there is nothing to tune on.
    """
    thresholds: dict[str, float] = {}
    for i, name in enumerate(LABELS):
        y, s = targets[:, i], scores[:, i]
        if y.sum() == 0:
            thresholds[name] = 0.5
            continue
        order = np.argsort(-s, kind="stable")
        sorted_scores, sorted_y = s[order], y[order]
        true_pos = np.cumsum(sorted_y)
        predicted_pos = np.arange(1, len(y) + 1)
        f1 = 2 * true_pos / (predicted_pos + y.sum())
        # Only cut between distinct scores; the threshold is the score of the last kept item.
        distinct = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
        best = int(np.argmax(np.where(distinct, f1, -1.0)))
        thresholds[name] = float(sorted_scores[best])
    return thresholds


def sensitivity_threshold(positive_scores: np.ndarray | list[float], target: float) -> float:
    """The highest threshold at which at least `target` of these (validation) positives score at
    or above it; 0.5 when there are none (nothing to tune on).

    Sensitivity only changes at positive scores: at threshold s it is the share of positives
    scoring >= s (ties included), so the answer is one of these scores.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target!r}")
    ordered = np.sort(np.asarray(positive_scores, dtype=np.float64))[::-1]
    if len(ordered) == 0:
        return 0.5
    at_or_above = len(ordered) - np.searchsorted(ordered[::-1], ordered, side="left")
    return float(ordered[int(np.argmax(at_or_above / len(ordered) >= target))])


def operating_points(targets: np.ndarray, scores: np.ndarray) -> dict:
    """What turns a deployed model's scores into positive/negative, from the validation split:
    the max-F1 threshold per finding, and per finding the validation positives' scores (highest
    first), from which :func:`sensitivity_threshold` gives the threshold for any target
    sensitivity without the validation images. Plain data (floats, lists), stored in best.pt."""
    return {
        "validation_images": int(len(targets)),
        "max_f1": max_f1_thresholds(targets, scores),
        "positive_scores": {
            name: [float(value) for value in np.sort(scores[targets[:, i] > 0, i])[::-1]]
            for i, name in enumerate(LABELS)
        },
    }


def operating_point_thresholds(points: dict, sensitivity: float | None = None) -> dict[str, float]:
    """Per finding, the threshold of stored :func:`operating_points`: max-F1, or with `sensitivity`
    the highest threshold reaching that share of the validation positives."""
    if sensitivity is None:
        return {name: float(points["max_f1"][name]) for name in LABELS}
    return {name: sensitivity_threshold(points["positive_scores"][name], sensitivity) for name in LABELS}


def f1_at(targets: np.ndarray, scores: np.ndarray, thresholds: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, name in enumerate(LABELS):
        predicted = scores[:, i] >= thresholds[name]
        true_pos = float((predicted & (targets[:, i] > 0)).sum())
        denominator = predicted.sum() + targets[:, i].sum()
        out[name] = 2 * true_pos / denominator if denominator else 0.0
    return out


def test_metrics(targets: np.ndarray, scores: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Everything metrics/<model>.json holds about the test split."""
    auroc = per_class_auroc(targets, scores)
    ap = per_class_ap(targets, scores)
    f1 = f1_at(targets, scores, thresholds)
    micro = float(roc_auc_score(targets.ravel(), scores.ravel())) if _defined(targets.ravel()) else None
    return {
        "macro_auroc": macro(auroc),
        "micro_auroc": micro,
        "macro_ap": macro(ap),
        "macro_f1": float(np.mean(list(f1.values()))),
        "classes_in_macro_auroc": sum(value is not None for value in auroc.values()),
        "n_images": int(len(targets)),
        "auroc": auroc,
        "ap": ap,
        "f1": f1,
        "thresholds": thresholds,
    }


def micro_roc_points(targets: np.ndarray, scores: np.ndarray, max_points: int = 200) -> list[dict]:
    """A thinned micro-averaged ROC curve, for `dvc plots` (fpr, tpr)."""
    fpr, tpr, _ = roc_curve(targets.ravel(), scores.ravel())
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(max_points, len(fpr))).round().astype(int))
    return [{"fpr": round(float(fpr[i]), 5), "tpr": round(float(tpr[i]), 5)} for i in keep]
