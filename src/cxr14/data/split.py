"""Patient-wise, seeded, label-stratified train/val/test split.

    assignment = split_patients(patient_ids, labels, val_fraction=0.1, test_fraction=0.2, seed=42)
    assignment = subsample_training_patients(patient_ids, assignment, fraction=0.25, seed=42)

All images of a patient land in one split (follow-ups share anatomy, so a leaky split inflates
scores). Patients are dealt out by iterative stratification (Sechidis et al., 2011) applied
to patients: rarest finding first, each patient goes to the split that still lacks the most
images with that finding, so every finding's prevalence is similar across splits.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cxr14.errors import Cxr14Error, InputDataError
from cxr14.labels import LABELS

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Rows dropped by split.views / split.one_per_patient / split.train_fraction, kept visible in splits.csv.
EXCLUDED = "excluded"
# Spawn key of the data seed's own random stream for the split.train_fraction draw.
TRAIN_SUBSAMPLE_STREAM = 1


class LeakageError(Cxr14Error, ValueError):
    """A patient appears in more than one split: bad data (or a stale splits.csv), not a bug.

    Not an AssertionError any more: that base says "broken invariant in the code", and callers
    that catch ValueError for bad input should catch this too. The check always runs either way:
    it is a `raise`, and `python -O` strips only `assert` statements, never raises.
    """


def split_patients(
    patient_ids: np.ndarray, labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Return the split name of every image (array of "train"/"val"/"test").

    Args:
        patient_ids: [N] patient id per image.
        labels: [N, C] multi-hot per image.
        val_fraction, test_fraction: shares of images aimed at (patients are indivisible).
        seed: the only source of randomness (tie-breaking and patient order).
    """
    rng = np.random.default_rng(seed)
    codes, patient_index = np.unique(np.asarray(patient_ids).astype(str), return_inverse=True)
    n_patients = len(codes)
    # Per-patient image counts per label, and per-patient image totals.
    patient_labels = np.zeros((n_patients, labels.shape[1]), dtype=np.int64)
    np.add.at(patient_labels, patient_index, labels.astype(np.int64))
    patient_images = np.bincount(patient_index, minlength=n_patients).astype(np.int64)

    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    label_demand = fractions[:, None] * patient_labels.sum(axis=0)[None, :]  # [3, C]
    image_demand = fractions * patient_images.sum()  # [3]

    order = rng.permutation(n_patients)  # seeded tie-breaking among equal patients
    assigned = np.full(n_patients, -1, dtype=np.int64)

    def assign(patient: int, split: int) -> None:
        assigned[patient] = split
        label_demand[split] -= patient_labels[patient]
        image_demand[split] -= patient_images[patient]

    # Rarest label first; the patients carrying it are dealt out before common labels fill up.
    for label in np.argsort(patient_labels.sum(axis=0), kind="stable"):
        carriers = order[(patient_labels[order, label] > 0) & (assigned[order] < 0)]
        for patient in carriers:
            need = label_demand[:, label]
            best = np.flatnonzero(need == need.max())
            if len(best) > 1:
                totals = image_demand[best]
                best = best[totals == totals.max()]
            assign(patient, int(best[0]) if len(best) == 1 else int(rng.choice(best)))
    for patient in order[assigned[order] < 0]:
        assign(patient, int(np.argmax(image_demand)))

    return np.array(SPLITS, dtype=object)[assigned[patient_index]]


def training_patients_to_keep(n_patients: int, fraction: float) -> int:
    """How many of `n_patients` training patients `split.train_fraction` keeps:
    fraction x n rounded half up (2.5 -> 3, not Python's round-half-even 2), at least one
    (when there is one), at most all."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction!r}")
    if n_patients == 0:
        return 0
    return min(n_patients, max(1, int(np.floor(fraction * n_patients + 0.5))))


def subsample_training_patients(
    patient_ids: np.ndarray, assignment: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """The assignment with only a seeded share of the training PATIENTS left in "train".

    The other training patients' images become EXCLUDED; validation and test rows are
    untouched. The draw uses its own stream of the data seed (spawn key
    TRAIN_SUBSAMPLE_STREAM), so the split itself and every other seeded step are unchanged,
    and it is a prefix of one seeded permutation of the training patients (sorted ids): with
    one seed, the patients kept at fraction 0.25 are among those kept at 0.5 (nested curves).

    Args:
        patient_ids: [N] patient id per image.
        assignment: [N] "train"/"val"/"test"/EXCLUDED, as `split_patients` makes it.
        fraction: share of training patients kept, in (0, 1]; see `training_patients_to_keep`.
        seed: the data seed (`seed` in params.yaml).
    """
    assignment = np.asarray(assignment, dtype=object).copy()
    patient_ids = np.asarray(patient_ids).astype(str)
    training = assignment == "train"
    patients = np.unique(patient_ids[training])
    keep = training_patients_to_keep(len(patients), fraction)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(TRAIN_SUBSAMPLE_STREAM,)))
    kept = patients[rng.permutation(len(patients))[:keep]]
    assignment[training & ~np.isin(patient_ids, kept)] = EXCLUDED
    return assignment


def check_patient_disjoint(frame: pd.DataFrame) -> None:
    """Raise LeakageError naming a patient found in two splits (excluded rows do not count)."""
    frame = frame[frame["split"] != EXCLUDED]
    splits_per_patient = frame.groupby("patient_id")["split"].nunique()
    leaked = splits_per_patient[splits_per_patient > 1]
    if len(leaked):
        patient = leaked.index[0]
        where = sorted(frame.loc[frame["patient_id"] == patient, "split"].unique())
        raise LeakageError(f"patient {patient} is in splits {where} ({len(leaked)} leaking patients)")


def split_summary(frame: pd.DataFrame, labels: np.ndarray) -> dict:
    """Counts and per-class prevalence per split, for metrics/split.json."""
    summary: dict = {}
    for split in SPLITS:
        mask = (frame["split"] == split).to_numpy()
        n_images = int(mask.sum())
        prevalence = labels[mask].mean(axis=0) if n_images else np.zeros(len(LABELS))
        summary[split] = {
            "images": n_images,
            "patients": int(frame.loc[mask, "patient_id"].nunique()),
            "prevalence": {name: round(float(p), 5) for name, p in zip(LABELS, prevalence)},
            "positives": {name: int(n) for name, n in zip(LABELS, labels[mask].sum(axis=0))},
        }
    return summary


def split_sizes(summary: dict) -> dict:
    """The split's headline numbers for `dvc metrics` / `dvc exp show` (metrics/split_sizes.json):
    images and patients per split and the rows left out; the per-finding detail stays in the
    full summary (metrics/split.json), which the report reads."""
    sizes = {split: {"images": summary[split]["images"], "patients": summary[split]["patients"]} for split in SPLITS}
    sizes.update({key: summary[key] for key in ("excluded_images", "dropped_missing_images", "orphan_images")})
    return sizes


def attach_splits(metadata, splits_csv) -> tuple[pd.DataFrame, np.ndarray]:
    """Metadata rows with their split column, and their labels, without the excluded rows.

    Raises:
        InputDataError: an image has no row in the split table (the split is stale: re-run it).
    """
    splits = pd.read_csv(splits_csv, dtype={"Image Index": str, "Patient ID": str})
    lookup = dict(zip(splits["Image Index"], splits["split"]))
    frame = metadata.frame.copy()
    frame["split"] = frame["image_id"].map(lookup)
    unassigned = frame["split"].isna()
    if unassigned.any():
        raise InputDataError(
            f"{splits_csv}: {int(unassigned.sum())} image(s) have no split, e.g. "
            f"{frame.loc[unassigned, 'image_id'].iloc[0]!r}; re-run the split stage"
        )
    check_patient_disjoint(frame)
    excluded = frame["split"] == EXCLUDED
    if excluded.any():
        log.info(
            "preprocess skips %d image(s) excluded by the split stage (views, one_per_patient, train_fraction)",
            int(excluded.sum()),
        )
    return frame.loc[~excluded].reset_index(drop=True), metadata.labels[~excluded.to_numpy()]
