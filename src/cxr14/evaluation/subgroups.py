"""Does the model work equally for everyone? Test metrics per subgroup, their gaps, under-diagnosis.

    attributes = split_attributes(test_index)      # cxr14.data.cache: age, sex, view, follow_up
    report = subgroup_report(test_targets, test_scores, thresholds, patient_ids, attributes,
                             min_patients=20, resamples=1000, seed=0)   # JSON-ready dict

Pure: no files, no MLflow. The thresholds are the ones chosen on the validation split (the
operating point of `stages/evaluate.py`); a prediction is positive where score >= threshold.

Dimensions and groups (an image whose attribute is unknown is counted per dimension in
`unknown_images`, never scored as a group):

- sex: M, F.
- age (years at the image): 0-20, 20-40, 40-60, 60-80, 80+, i.e. [0, 20), [20, 40), [40, 60),
  [60, 80), [80, inf).
- view: PA, AP (any other View Position, e.g. LL, is counted in `other_images`).
- follow_up: first (Follow-up # 0) and follow-up (Follow-up # > 0).

A group with fewer than `min_patients` distinct patients is `too_small` and carries only its image
and patient counts: no AUROC, rate, gap or interval, so a reader never quotes noise as a finding.

Per scored group: the macro AUROC (mean over the LABELS classes with positives and negatives in
the group, the 14 findings and No Finding, as `metrics.macro_auroc`) with the patient-bootstrap
interval of `statistics.bootstrap_intervals` run on the group's images (patients of the group
resampled); per finding the TPR (positives predicted positive) and FPR (negatives predicted
positive), None where the group has no positive (TPR) or no negative (FPR) of that finding.

Gaps, per finding, of TPR and of FPR:

- sex, view, follow_up: group - the other group of the dimension (both must be scored);
- age: group - the median of that rate over the scored age groups in which it is defined (at
  least two; otherwise None).

A rate enters a gap only when the group has at least `min_cases` positives (TPR) or negatives
(FPR) of that finding; otherwise the gap is None (`findings` still shows the rate and its counts).

Each gap comes with a 95 % (`level`) percentile interval from a patient bootstrap of the whole
test split: patients are drawn with replacement, every image enters with its patient's
multiplicity, and the gap is recomputed in every resample from the resampled counts of each group
(groups that share patients, e.g. first image and follow-ups, are resampled together). Resamples in
which the gap is undefined (a group drew no positive) are left out; `resamples` says how many were
used. A gap is *found* (`excludes_zero: true`) when the interval lies entirely above or below 0;
an interval containing 0 means the data do not distinguish the gap from noise.

Under-diagnosis (Seyyed-Kalantari et al.): among the images with at least one finding (NIH label
No Finding = 0), the share the model calls "No Finding" (No Finding score >= its threshold), per
group and per sex x age cell, with the counts and a bootstrap interval. Its too-small rule counts
the patients that have an image with a finding in the group (the rate's own denominator).

The result (JSON-ready; an undefined value is None, never NaN)::

    {"unit": "patient", "resamples", "seed", "level", "min_patients", "min_cases",
     "age_bins": {"0-20": [0, 20], ..., "80+": [80, None]},          # [low, high) years
     "dimensions": {"sex" | "age" | "view" | "follow_up": {
         "groups": {group: {"images", "patients", "too_small",       # too small: nothing else
                            "macro_auroc", "macro_auroc_ci": [low, high], "classes_in_macro_auroc",
                            "findings": {label: {"tpr", "fpr", "positives", "negatives"}},
                            "underdiagnosis": UD}},
         "unknown_images", "other_images", "gap_reference",
         "gaps": {scored group: {label: {"tpr" | "fpr": {"gap", "ci", "excludes_zero", "resamples"}}}}}},
     "underdiagnosis_sex_age": {"M" | "F": {age bin: {"images", "patients", **UD}}}}
    UD = {"images_with_finding", "patients_with_finding", "too_small",
          "called_no_finding", "rate", "ci"}                          # the last three unless too small
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxr14.evaluation.metrics import macro, per_class_auroc
from cxr14.evaluation.statistics import bootstrap_intervals, percentile_interval, resampled_weights
from cxr14.labels import LABEL_INDEX, LABELS, NO_FINDING, NUM_CLASSES

AGE_BINS: tuple[tuple[str, float, float], ...] = (
    ("0-20", 0, 20),
    ("20-40", 20, 40),
    ("40-60", 40, 60),
    ("60-80", 60, 80),
    ("80+", 80, np.inf),
)
DIMENSIONS = ("sex", "age", "view", "follow_up")
# A group's TPR (FPR) of a finding enters a gap only with this many positives (negatives) in it.
MIN_CASES = 10
TWO_GROUPS = {"sex": ("M", "F"), "view": ("PA", "AP"), "follow_up": ("first", "follow-up")}
# Count columns of a cell, per image: positives, true positives, negatives, false positives (15 each),
# then images with a finding and those of them called No Finding.
_POS, _TP, _NEG, _FP = (slice(k * NUM_CLASSES, (k + 1) * NUM_CLASSES) for k in range(4))
_WITH_FINDING, _CALLED = 4 * NUM_CLASSES, 4 * NUM_CLASSES + 1


def group_masks(attributes: pd.DataFrame) -> dict[str, tuple[dict[str, np.ndarray], int, int]]:
    """dimension -> ({group: boolean mask over images}, unknown images, other images).

    `attributes` has the columns age, sex, view, follow_up (cxr14.data.cache.split_attributes):
    age and follow_up numbers or missing, sex "M"/"F", view "PA"/"AP"/other; anything else,
    e.g. "unknown", is unknown.
    """
    missing = [name for name in DIMENSIONS if name not in attributes]
    if missing:
        raise ValueError(f"attributes lack column(s) {missing}; expected {list(DIMENSIONS)}")
    age = pd.to_numeric(attributes["age"], errors="coerce").astype(float).to_numpy()
    follow_up = pd.to_numeric(attributes["follow_up"], errors="coerce").astype(float).to_numpy()
    sex = attributes["sex"].astype(str).to_numpy()
    view = attributes["view"].astype(str).to_numpy()
    view_unknown = np.isin(view, ("unknown", "", "nan", "<NA>", "None"))
    with np.errstate(invalid="ignore"):  # NaN ages compare False: unknown
        ages = {name: (age >= low) & (age < high) for name, low, high in AGE_BINS}
    return {
        "sex": ({"M": sex == "M", "F": sex == "F"}, int((~np.isin(sex, ("M", "F"))).sum()), 0),
        "age": (ages, int(np.isnan(age).sum()), 0),
        "view": (
            {"PA": view == "PA", "AP": view == "AP"},
            int(view_unknown.sum()),
            int((~view_unknown & ~np.isin(view, ("PA", "AP"))).sum()),
        ),
        "follow_up": ({"first": follow_up == 0, "follow-up": follow_up > 0}, int(np.isnan(follow_up).sum()), 0),
    }


def _checked(targets, scores, thresholds, patient_ids, attributes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive [N, 15] bool, predicted positive [N, 15] bool, patient ids [N] str)."""
    targets, scores = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    if targets.ndim != 2 or targets.shape[1] != NUM_CLASSES or scores.shape != targets.shape:
        raise ValueError(f"targets and scores must both be [N, {NUM_CLASSES}], got {targets.shape} and {scores.shape}")
    if not np.isin(targets, (0, 1)).all() or not np.isfinite(scores).all():
        raise ValueError("targets must be 0/1 and scores finite")
    missing = [name for name in LABELS if name not in thresholds]
    if missing:
        raise ValueError(f"thresholds lack labels {missing}; pass one threshold for each of LABELS")
    patients = np.asarray(patient_ids).astype(str)
    if patients.shape != (len(targets),) or len(attributes) != len(targets):
        raise ValueError(f"{len(targets)} images but {patients.shape} patient ids and {len(attributes)} attribute rows")
    cut = np.array([thresholds[name] for name in LABELS], dtype=np.float64)
    return targets > 0, scores >= cut, patients


def _count_columns(positive: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per image the count columns of a cell (see _POS ... _CALLED), float64 [N, 62]."""
    no_finding = LABEL_INDEX[NO_FINDING]
    with_finding = ~positive[:, no_finding]
    return np.concatenate(
        [
            positive,
            positive & predicted,
            ~positive,
            ~positive & predicted,
            with_finding[:, None],
            (with_finding & predicted[:, no_finding])[:, None],
        ],
        axis=1,
    ).astype(np.float64)


def _rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """TPR, FPR [..., 15] and under-diagnosis rate [...] from count rows [..., 62]; NaN where undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "tpr": np.where(counts[..., _POS] > 0, counts[..., _TP] / counts[..., _POS], np.nan),
            "fpr": np.where(counts[..., _NEG] > 0, counts[..., _FP] / counts[..., _NEG], np.nan),
            "underdiagnosis": np.where(
                counts[..., _WITH_FINDING] > 0, counts[..., _CALLED] / counts[..., _WITH_FINDING], np.nan
            ),
        }


def _bootstrap_counts(
    units: np.ndarray, columns: np.ndarray, cells: Mapping[str, np.ndarray], resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """cell -> its count row in every patient resample [R, 62] (one draw of patients for all cells)."""
    members = {key: (np.flatnonzero(mask), columns[mask]) for key, mask in cells.items() if mask.any()}
    chunks: dict[str, list[np.ndarray]] = {key: [] for key in members}
    for weights in resampled_weights(units, resamples, seed):
        for key, (rows, counts) in members.items():
            chunks[key].append(weights[:, rows] @ counts)
    return {key: np.concatenate(parts) for key, parts in chunks.items()}


def _number(value: float | np.ndarray) -> float | None:
    number = float(value)
    return None if np.isnan(number) else number


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    interval = percentile_interval(np.asarray(values, dtype=np.float64), level)
    return None if interval is None else [interval[0], interval[1]]


def _underdiagnosis(mask, positive, patients, counts, resampled, min_patients: int, level: float) -> dict:
    """The under-diagnosis entry of one cell: counts, and unless too small the rate and its interval."""
    with_finding = mask & ~positive[:, LABEL_INDEX[NO_FINDING]]
    entry: dict = {
        "images_with_finding": int(with_finding.sum()),
        "patients_with_finding": len(np.unique(patients[with_finding])),
    }
    entry["too_small"] = entry["patients_with_finding"] < min_patients
    if entry["too_small"]:
        return entry
    entry["called_no_finding"] = int(counts[_CALLED])
    entry["rate"] = _number(_rates(counts)["underdiagnosis"])
    entry["ci"] = _interval(_rates(resampled)["underdiagnosis"], level)
    return entry


def _group_entry(mask, targets, scores, positive, patients, counts, resampled, settings: dict) -> dict:
    """One group: sizes; unless too small, macro AUROC + interval, TPR/FPR per finding, under-diagnosis."""
    entry: dict = {"images": int(mask.sum()), "patients": len(np.unique(patients[mask]))}
    entry["too_small"] = entry["patients"] < settings["min_patients"]
    if entry["too_small"]:
        return entry
    auroc = per_class_auroc(targets[mask], scores[mask])
    intervals = bootstrap_intervals(
        targets[mask], scores[mask], patients[mask], resamples=settings["resamples"], seed=settings["seed"]
    )
    rates = _rates(counts)
    entry.update(
        macro_auroc=_number(macro(auroc)),
        macro_auroc_ci=None if intervals["macro_auroc"] is None else list(intervals["macro_auroc"]),
        classes_in_macro_auroc=sum(value is not None for value in auroc.values()),
        findings={
            name: {
                "tpr": _number(rates["tpr"][i]),
                "fpr": _number(rates["fpr"][i]),
                "positives": int(counts[_POS][i]),
                "negatives": int(counts[_NEG][i]),
            }
            for i, name in enumerate(LABELS)
        },
        underdiagnosis=_underdiagnosis(
            mask, positive, patients, counts, resampled, settings["min_patients"], settings["level"]
        ),
    )
    return entry


def _gap_rates(rates: dict[str, np.ndarray], counts: np.ndarray, min_cases: int) -> dict[str, np.ndarray]:
    """The rates a gap may use: where the group (its observed `counts`) has fewer than `min_cases`
    positives of a finding its TPR is NaN (fewer negatives: its FPR), in `rates` whether observed
    [15] or resampled [R, 15], so no gap is computed from it: the bootstrap of a rate from one or
    two cases is degenerate (the case is drawn or not) and would call noise a gap."""
    return {
        **rates,
        "tpr": np.where(counts[_POS] >= min_cases, rates["tpr"], np.nan),
        "fpr": np.where(counts[_NEG] >= min_cases, rates["fpr"], np.nan),
    }


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """Median over the last axis of the defined values; NaN where fewer than two are defined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as wanted
        median = np.nanmedian(values, axis=-1)
    return np.where((~np.isnan(values)).sum(axis=-1) >= 2, median, np.nan)


def _gap_entry(observed: float, resampled: np.ndarray, level: float) -> dict:
    if np.isnan(observed):
        return {"gap": None, "ci": None, "excludes_zero": None, "resamples": 0}
    ci = _interval(resampled, level)
    return {
        "gap": float(observed),
        "ci": ci,
        "excludes_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
        "resamples": int((~np.isnan(resampled)).sum()),
    }


def _gaps(dimension: str, scored: Sequence[str], observed: dict, resampled: dict, level: float) -> dict:
    """group -> finding -> {"tpr": gap entry, "fpr": gap entry} for the scored groups of a dimension."""
    if dimension == "age":
        names = list(scored)
        if not names:
            return {}
        reference = {
            rate: (
                _nanmedian(np.stack([observed[name][rate] for name in names], axis=-1)),
                _nanmedian(np.stack([resampled[name][rate] for name in names], axis=-1)),
            )
            for rate in ("tpr", "fpr")
        }
        pairs = dict.fromkeys(names, reference)
    else:
        first, second = TWO_GROUPS[dimension]
        if first not in scored or second not in scored:
            return {}
        pairs = {
            name: {rate: (observed[other][rate], resampled[other][rate]) for rate in ("tpr", "fpr")}
            for name, other in ((first, second), (second, first))
        }
    return {
        name: {
            label: {
                rate: _gap_entry(
                    observed[name][rate][i] - reference[rate][0][i],
                    resampled[name][rate][:, i] - reference[rate][1][:, i],
                    level,
                )
                for rate in ("tpr", "fpr")
            }
            for i, label in enumerate(LABELS)
        }
        for name, reference in pairs.items()
    }


def subgroup_report(
    targets: np.ndarray,
    scores: np.ndarray,
    thresholds: Mapping[str, float],
    patient_ids: Sequence | np.ndarray,
    attributes: pd.DataFrame,
    *,
    min_patients: int = 20,
    min_cases: int = MIN_CASES,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Subgroup metrics of one model on the test split (rules and layout: module docstring).

    `targets`/`scores`: [N, 15] in LABELS order; `thresholds`: label -> threshold chosen on
    validation; `patient_ids`: one per image (the bootstrap draws patients); `attributes`: N rows
    of age, sex, view, follow_up (cxr14.data.cache.split_attributes); groups (and under-diagnosis
    cells) with fewer than `min_patients` patients are too small; `resamples`, `seed`, `level`:
    the patient bootstrap (same seed and data, same numbers). Undefined values are None.
    """
    if min_patients < 1 or min_cases < 1:
        raise ValueError(f"min_patients and min_cases must be >= 1, got {min_patients!r} and {min_cases!r}")
    positive, predicted, patients = _checked(targets, scores, thresholds, patient_ids, attributes)
    targets, scores = positive.astype(np.float64), np.asarray(scores, dtype=np.float64)
    masks = group_masks(attributes.reset_index(drop=True))
    cells = _cells(masks)
    columns = _count_columns(positive, predicted)
    units = np.unique(patients, return_inverse=True)[1].ravel()
    drawn = _bootstrap_counts(units, columns, cells, resamples, seed)
    empty = np.zeros((resamples, columns.shape[1]))  # a cell without images
    resampled = {key: drawn.get(key, empty) for key in cells}
    settings: dict[str, float] = {"min_patients": min_patients, "min_cases": min_cases, "resamples": resamples}
    settings.update(seed=seed, level=level)
    data = (targets, scores, positive, patients)
    dimensions = {dim: _dimension(dim, masks[dim], data, columns, resampled, settings) for dim in DIMENSIONS}
    sex_age = {
        sex: {
            age: _sex_age_cell(
                cells[f"sex_age/{sex}/{age}"], data, columns, resampled[f"sex_age/{sex}/{age}"], settings
            )
            for age, _, _ in AGE_BINS
        }
        for sex in TWO_GROUPS["sex"]
    }
    return {
        "unit": "patient",
        "resamples": int(resamples),
        "seed": int(seed),
        "level": float(level),
        "min_patients": int(min_patients),
        "min_cases": int(min_cases),
        "age_bins": {name: [low, None if np.isinf(high) else high] for name, low, high in AGE_BINS},
        "dimensions": dimensions,
        "underdiagnosis_sex_age": sex_age,
    }


def _cells(masks: dict) -> dict[str, np.ndarray]:
    """ "<dimension>/<group>" and "sex_age/<sex>/<age bin>" -> mask over images."""
    cells = {f"{dim}/{name}": mask for dim, (groups, _, _) in masks.items() for name, mask in groups.items()}
    for sex in TWO_GROUPS["sex"]:
        for age, age_mask in masks["age"][0].items():
            cells[f"sex_age/{sex}/{age}"] = masks["sex"][0][sex] & age_mask
    return cells


def _dimension(dim: str, masks: tuple, data: tuple, columns: np.ndarray, resampled: dict, settings: dict) -> dict:
    """One dimension's entry: its groups, unknown/other counts and the gaps of its scored groups."""
    groups, unknown, other = masks
    targets, scores, positive, patients = data
    entries, observed, boot = {}, {}, {}
    for name, mask in groups.items():
        counts, draws = columns[mask].sum(axis=0), resampled[f"{dim}/{name}"]
        entries[name] = _group_entry(mask, targets, scores, positive, patients, counts, draws, settings)
        # Rates from too few cases (counted in the observed group) take part in no gap, observed or resampled.
        observed[name] = _gap_rates(_rates(counts), counts, settings["min_cases"])
        boot[name] = _gap_rates(_rates(draws), counts, settings["min_cases"])
    scored = [name for name, entry in entries.items() if not entry["too_small"]]
    return {
        "groups": entries,
        "unknown_images": unknown,
        "other_images": other,
        "gap_reference": "median over the scored age groups" if dim == "age" else "the other group",
        "gaps": _gaps(dim, scored, observed, boot, settings["level"]),
    }


def _sex_age_cell(mask: np.ndarray, data: tuple, columns: np.ndarray, resampled: np.ndarray, settings: dict) -> dict:
    _, _, positive, patients = data
    return {
        "images": int(mask.sum()),
        "patients": len(np.unique(patients[mask])),
        **_underdiagnosis(
            mask, positive, patients, columns[mask].sum(axis=0), resampled, settings["min_patients"], settings["level"]
        ),
    }
