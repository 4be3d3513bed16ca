"""Stage logic of `split`: every metadata row to train/val/test/excluded, and the summary.

    table, summary = make_splits(metadata, cfg.split, cfg.seed, source=cfg.data.source)

The pure parts are in `cxr14.data.split` (patient-grouped split, leakage check, summary) and
`cxr14.data.official_split` (NIH's official test list, view filter, one image per patient).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cxr14.data.official_split import filter_views, official_split, one_image_per_patient
from cxr14.data.split import (
    EXCLUDED,
    SPLITS,
    check_patient_disjoint,
    split_patients,
    split_summary,
    subsample_training_patients,
)

log = logging.getLogger(__name__)


def make_splits(metadata, split_cfg, seed: int, source: str = "phantom") -> tuple[pd.DataFrame, dict]:
    """The split stage: (table for data/splits.csv sorted by image, summary for split.json).

    Rows removed by the view filter or one-image-per-patient, and the training images of the
    patients left out by `split.train_fraction` < 1, stay in the table as "excluded", so every
    metadata row is accounted for and preprocess can tell a filter from a bug.
    """
    frame, labels = metadata.frame, metadata.labels
    kept_frame, kept_labels = frame, labels
    if tuple(sorted(split_cfg.views)) != ("AP", "PA"):
        kept_frame, kept_labels = filter_views(kept_frame, kept_labels, split_cfg.views)
    if split_cfg.one_per_patient:
        kept_frame, kept_labels = one_image_per_patient(kept_frame, kept_labels, seed)
    method = split_cfg.resolved_method(source)
    if method == "official":
        kept_assignment = official_split(kept_frame, kept_labels, split_cfg.val_fraction, seed)
    else:
        kept_assignment = split_patients(
            kept_frame["patient_id"].to_numpy(), kept_labels, split_cfg.val_fraction, split_cfg.test_fraction, seed
        )
    kept_assignment, subsample = _train_fraction(kept_frame, kept_assignment, split_cfg.train_fraction, seed)
    lookup = dict(zip(kept_frame["image_id"], kept_assignment))
    assignment = frame["image_id"].map(lookup).fillna(EXCLUDED).to_numpy()
    table = pd.DataFrame({"image_id": frame["image_id"], "patient_id": frame["patient_id"], "split": assignment})
    check_patient_disjoint(table)
    summary = split_summary(table, labels)
    summary.update(
        method=method,
        excluded_images=int((assignment == EXCLUDED).sum()),
        dropped_missing_images=metadata.dropped_missing,
        orphan_images=metadata.orphan_images,
        **subsample,
    )
    order = np.argsort(table["image_id"].to_numpy(), kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    for split in SPLITS:
        log.info("split %s: %d images, %d patients", split, summary[split]["images"], summary[split]["patients"])
    output = table.rename(columns={"image_id": "Image Index", "patient_id": "Patient ID"})
    return output, summary


def _train_fraction(
    kept_frame: pd.DataFrame, assignment: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, dict]:
    """(assignment with only a seeded `fraction` of the training patients left in train, summary
    entries). At 1.0 nothing changes and nothing is added, so splits.csv and split.json keep the
    bytes they had before `split.train_fraction` existed."""
    if fraction >= 1.0:
        return assignment, {}
    patient_ids = kept_frame["patient_id"].to_numpy()
    subsampled = subsample_training_patients(patient_ids, assignment, fraction, seed)
    dropped = (np.asarray(assignment) == "train") & (subsampled == EXCLUDED)
    log.info("split.train_fraction %.3g: %d training image(s) excluded", fraction, int(dropped.sum()))
    return subsampled, {
        "train_fraction": float(fraction),
        "train_fraction_dropped_images": int(dropped.sum()),
        "train_fraction_dropped_patients": int(pd.Series(patient_ids[dropped]).astype(str).nunique()),
    }
