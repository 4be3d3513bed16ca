"""A model's test scores against radiologists' labels, beside the NIH labels of the same images.

    result = score_against_experts(expert, test_index, scores, resamples=1000, seed=42)
    result["findings"]["Pneumothorax"]["auroc_expert"], result["findings"]["Pneumothorax"]["auroc_nih"]

For each expert finding (cxr14.labels.NIH_COMPONENTS; why those: cxr14.data.expert_labels) the NIH target of an image is
the maximum of its component labels and the model's score the maximum of its components'
probabilities; both AUROCs are computed on the same images (those the expert file covers) with
patient-bootstrap 95 % intervals from the same resamples (cxr14.evaluation.statistics). Fracture
has no NIH class and no model output: it is listed with its expert positives, `nih_class` None
and no AUROC. An AUROC that is undefined (no positive or no negative) is None, never a number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cxr14.errors import InputDataError
from cxr14.evaluation.statistics import bootstrap_intervals, percentile_interval, resampled_weights, weighted_auroc
from cxr14.labels import EXPERT_FINDINGS, LABEL_INDEX, LABELS, NIH_COMPONENTS, NUM_CLASSES

MAPPED = tuple(finding for finding in EXPERT_FINDINGS if NIH_COMPONENTS[finding])


def _aligned(expert: pd.DataFrame, test_index: pd.DataFrame, scores: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """Rows of `test_index` (and `scores`) for each expert image, in the expert table's order."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(test_index), NUM_CLASSES):
        raise ValueError(f"scores have shape {scores.shape}, expected ({len(test_index)}, {NUM_CLASSES})")
    missing = [column for column in ("image_id", "patient_id", *LABELS) if column not in test_index.columns]
    missing += [column for column in ("image_id", *EXPERT_FINDINGS) if column not in expert.columns]
    if missing:
        raise ValueError(f"missing column(s) {missing} in the expert table or the test index")
    position = pd.Series(np.arange(len(test_index)), index=test_index["image_id"].astype(str))
    images = expert["image_id"].astype(str)
    unknown = images[~images.isin(position.index)]
    if len(unknown):
        raise InputDataError(
            f"{len(unknown)} image(s) of the expert table are not among the scored test images, e.g. "
            f"{unknown.iloc[0]!r}: the table is stale; re-run the expert_labels stage (dvc repro expert_labels)"
        )
    return position[images].to_numpy(), expert


def _finding_arrays(
    expert: pd.DataFrame, test_index: pd.DataFrame, scores: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N, k] expert targets, NIH targets (max of the components) and scores (max of the components'
    probabilities) of the k mapped findings, for the expert images (`rows` of the test index)."""
    nih = test_index[list(LABELS)].to_numpy(dtype=np.float64)[rows]
    probabilities = np.asarray(scores, dtype=np.float64)[rows]
    columns = {f: [LABEL_INDEX[name] for name in NIH_COMPONENTS[f]] for f in MAPPED}
    shape = (len(rows), len(MAPPED))
    expert_targets = expert[list(MAPPED)].to_numpy(dtype=np.float64).reshape(shape)
    nih_targets = np.stack([nih[:, columns[f]].max(axis=1) for f in MAPPED], axis=1).reshape(shape)
    finding_scores = np.stack([probabilities[:, columns[f]].max(axis=1) for f in MAPPED], axis=1).reshape(shape)
    return expert_targets, nih_targets, finding_scores


def _packed(expert_targets: np.ndarray, nih_targets: np.ndarray, finding_scores: np.ndarray) -> tuple:
    """[N, 15] targets/scores for bootstrap_intervals: the k mapped findings against the experts in
    columns 0..k-1, against NIH in k..2k-1 (same scores), the other columns all 0 (undefined)."""
    k = expert_targets.shape[1]
    targets, packed = np.zeros((len(expert_targets), NUM_CLASSES)), np.zeros((len(expert_targets), NUM_CLASSES))
    targets[:, :k], targets[:, k : 2 * k] = expert_targets, nih_targets
    packed[:, :k], packed[:, k : 2 * k] = finding_scores, finding_scores
    return targets, packed


def _interval(intervals: dict | None, column: int) -> list[float] | None:
    if intervals is None:
        return None
    found = intervals["auroc"][LABELS[column]]
    return None if found is None else [float(found[0]), float(found[1])]


def _aurocs(
    j: int, expert_targets: np.ndarray, nih_targets: np.ndarray, scores: np.ndarray, intervals: dict | None
) -> dict[str, Any]:
    """NIH positives and both AUROCs (None if undefined) with intervals of mapped finding j."""
    defined = len(scores) > 0
    return {
        "nih_positives": int(nih_targets[:, j].sum()),
        "auroc_expert": weighted_auroc(expert_targets[:, j], scores[:, j]) if defined else None,
        "auroc_nih": weighted_auroc(nih_targets[:, j], scores[:, j]) if defined else None,
        "auroc_expert_ci": _interval(intervals, j),
        "auroc_nih_ci": _interval(intervals, expert_targets.shape[1] + j),
    }


def _mean_difference(
    expert_targets: np.ndarray, nih_targets: np.ndarray, scores: np.ndarray, patients: np.ndarray, settings: dict
) -> dict[str, Any]:
    """Mean AUROC over the mapped findings defined against both label sets, against the experts and
    against NIH, and their difference with a patient-bootstrap interval (the same resamples)."""
    both = [
        j
        for j in range(expert_targets.shape[1])
        if 0 < expert_targets[:, j].sum() < len(scores) and 0 < nih_targets[:, j].sum() < len(scores)
    ]
    if not both:
        return {"findings": [], "auroc_expert": None, "auroc_nih": None, "difference": None, "difference_ci": None}

    def means(weights: np.ndarray | None) -> tuple[float, float]:
        values = [
            (
                weighted_auroc(expert_targets[:, j], scores[:, j], weights),
                weighted_auroc(nih_targets[:, j], scores[:, j], weights),
            )
            for j in both
        ]
        pairs = [(e, n) for e, n in values if e is not None and n is not None]
        return (
            (float(np.mean([e for e, _ in pairs])), float(np.mean([n for _, n in pairs])))
            if pairs
            else (np.nan, np.nan)
        )

    expert_mean, nih_mean = means(None)
    units = np.unique(patients, return_inverse=True)[1].ravel()
    differences = np.array(
        [
            np.subtract(*means(weights))
            for chunk in resampled_weights(units, settings["resamples"], settings["seed"])
            for weights in chunk
        ]
    )
    interval = percentile_interval(differences, settings["level"])
    return {
        "findings": [MAPPED[j] for j in both],
        "auroc_expert": float(expert_mean),
        "auroc_nih": float(nih_mean),
        "difference": float(expert_mean - nih_mean),
        "difference_ci": None if interval is None else [interval[0], interval[1]],
    }


def score_against_experts(
    expert: pd.DataFrame,
    test_index: pd.DataFrame,
    scores: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Per expert finding: counts and AUROC against the experts and against NIH, with intervals.

    Args:
        expert: the expert_labels stage's table: image_id, patient_id and the four findings as 0/1.
        test_index: the scored test images: image_id, patient_id and the 15 NIH label columns
            (cxr14.labels.LABELS) as 0/1, one row per row of `scores`.
        scores: [N, 15] probabilities in LABELS order.
        resamples, seed, level: of the patient bootstrap (the same resamples for both AUROCs).

    Returns:
        {"images", "patients", "resamples", "unit": "patient", "level", "findings": {finding:
        {"nih_class": [NIH labels] or None, "images", "patients", "expert_positives",
        "nih_positives" (None for Fracture), "auroc_expert", "auroc_nih" (None if undefined),
        "auroc_expert_ci", "auroc_nih_ci" ([low, high] or None)}}, "mean": {"findings" (those with
        both AUROCs defined), "auroc_expert", "auroc_nih" (means over them), "difference" (expert -
        NIH), "difference_ci" (patient bootstrap, same resamples)}}, JSON-ready.

    Raises:
        InputDataError: an expert image is not among the scored test images (a stale table).
    """
    rows, expert = _aligned(expert, test_index, scores)
    patients = test_index["patient_id"].astype(str).to_numpy()[rows]
    expert_targets, nih_targets, finding_scores = _finding_arrays(expert, test_index, scores, rows)
    intervals = None
    if len(rows):
        targets, packed = _packed(expert_targets, nih_targets, finding_scores)
        intervals = bootstrap_intervals(targets, packed, patients, resamples=resamples, seed=seed, level=level)
    n_patients = len(set(patients))
    findings = {}
    for finding in EXPERT_FINDINGS:
        entry: dict[str, Any] = {
            "nih_class": list(NIH_COMPONENTS[finding]) or None,
            "images": len(rows),
            "patients": n_patients,
            "expert_positives": int(expert[finding].to_numpy(dtype=np.int64).sum()),
            **dict.fromkeys(("nih_positives", "auroc_expert", "auroc_nih", "auroc_expert_ci", "auroc_nih_ci")),
        }
        if finding in MAPPED:
            entry.update(_aurocs(MAPPED.index(finding), expert_targets, nih_targets, finding_scores, intervals))
        findings[finding] = entry
    settings = {"resamples": resamples, "seed": seed, "level": level}
    return {
        "mean": _mean_difference(expert_targets, nih_targets, finding_scores, patients, settings),
        "images": len(rows),
        "patients": n_patients,
        "resamples": int(resamples),
        "unit": "patient",
        "level": float(level),
        "findings": findings,
    }
