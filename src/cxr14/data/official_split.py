"""The official NIH ChestX-ray14 test split, and the row filters that go with published protocols.

    frame, labels = filter_views(metadata.frame, metadata.labels, views=("PA",))
    frame, labels = one_image_per_patient(frame, labels, seed=42)
    assignment = official_split(frame, labels, val_fraction=0.1, seed=42)  # "train"/"val"/"test"

The test set is the NIH's own `test_list.txt` (25,596 images of 2,797 patients), shipped gzipped
as package data so that `split.method: official` works when a download lacks the list files.
Scores on it are comparable with published ones; the rest (train_val_list.txt, 86,524 images)
is split into train and validation by patient with the project's stratified `split_patients`.
"""

from __future__ import annotations

import functools
import gzip
import logging
import re
from importlib.resources import files

import numpy as np
import pandas as pd

from cxr14.config import ConfigError
from cxr14.data.split import LeakageError, split_patients
from cxr14.errors import InstallationError

log = logging.getLogger(__name__)

RESOURCE_PACKAGE = "cxr14.data.resources"
TEST_LIST_RESOURCE = "test_list.txt.gz"
OFFICIAL_TEST_IMAGES = 25_596
VIEWS = ("PA", "AP")
NIH_IMAGE_NAME = re.compile(r"\d{8}_\d{3}\.png")


@functools.cache
def official_test_images() -> frozenset[str]:
    """The 25,596 image names of the official test split (read once, then cached).

    Raises:
        InstallationError: the packaged list is missing or damaged (a broken install: the wheel was
            built without the package data).
    """
    resource = files(RESOURCE_PACKAGE).joinpath(TEST_LIST_RESOURCE)
    try:
        text = gzip.decompress(resource.read_bytes()).decode("ascii")
    except (FileNotFoundError, OSError, UnicodeDecodeError) as error:
        raise InstallationError(
            f"package data {RESOURCE_PACKAGE}/{TEST_LIST_RESOURCE} is missing or damaged ({error}); reinstall "
            f"cxr14 (pyproject.toml must list it under [tool.setuptools.package-data])"
        ) from error
    names = frozenset(line.strip() for line in text.splitlines() if line.strip())
    bad = next((name for name in names if not NIH_IMAGE_NAME.fullmatch(name)), None)
    if len(names) != OFFICIAL_TEST_IMAGES or bad is not None:
        raise InstallationError(
            f"package data {RESOURCE_PACKAGE}/{TEST_LIST_RESOURCE}: expected {OFFICIAL_TEST_IMAGES:,} names like "
            f"00000003_000.png, got {len(names):,}" + (f" (e.g. {bad!r})" if bad else "") + "; reinstall cxr14"
        )
    return names


def official_split(
    metadata: pd.DataFrame,
    labels: np.ndarray,
    val_fraction: float,
    seed: int,
    test_list: frozenset[str] | None = None,
) -> np.ndarray:
    """Split name per row: "test" if the image is in the official list, else "train" or "val".

    Validation is carved from the non-test rows by whole patients, stratified by finding, so
    model selection never sees a test patient and every finding appears in validation.

    Args:
        metadata: one row per image with `image_id` and `patient_id` (Metadata.frame).
        labels: [N, 15] multi-hot aligned with the rows.
        val_fraction: share of the non-test (train_val_list) images aimed at for validation.
        seed: drives the patient order and tie-breaking of `split_patients`.
        test_list: the test image names; defaults to :func:`official_test_images` (tests pass
            their own).

    Raises:
        ConfigError: no image is in the list (not NIH data, e.g. the phantom or a renamed set),
            every image is, or val_fraction is outside (0, 1).
        LeakageError: a patient has images both in and outside the list; the official split is
            patient-disjoint, so the names do not belong to NIH ChestX-ray14.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"split.val_fraction must be in (0, 1) for split.method: official, got {val_fraction}")
    _check_aligned(metadata, labels)
    test_list = official_test_images() if test_list is None else test_list
    image_ids = metadata["image_id"].astype(str)
    patient_ids = metadata["patient_id"].astype(str).to_numpy()
    in_test = image_ids.isin(test_list).to_numpy()
    n_test = int(in_test.sum())
    if n_test == 0:
        raise ConfigError(
            f"split.method: official needs NIH image names, but none of the {len(metadata):,} images "
            f"(e.g. {image_ids.iloc[0]!r}) is in the official test list of {len(test_list):,} names; "
            f"use split.method: patient for this data"
        )
    if n_test == len(metadata):
        raise ConfigError(
            f"all {n_test:,} images are in the official test list, so nothing is left to train on; "
            f"use split.method: patient for this subset"
        )
    _check_list_is_patient_disjoint(image_ids.to_numpy(), patient_ids, in_test)

    rest = ~in_test
    assignment = np.full(len(metadata), "test", dtype=object)
    # split_patients deals out train/val/test; with test_fraction 0 the test share has no demand,
    # so every non-test patient lands in train or val and val_fraction is a share of these rows.
    assignment[rest] = split_patients(patient_ids[rest], labels[rest], val_fraction, 0.0, seed)
    if (assignment[rest] == "test").any():  # cannot happen with test_fraction 0; guards a future change
        raise RuntimeError("split_patients assigned non-official rows to test with test_fraction 0")
    for split in ("train", "val", "test"):
        mask = assignment == split
        log.info("official split %s: %d images, %d patients", split, int(mask.sum()), len(np.unique(patient_ids[mask])))
    if n_test != len(test_list):
        log.info("%d of the %d official test images are in the metadata", n_test, len(test_list))
    return assignment


def filter_views(
    metadata_frame: pd.DataFrame, labels: np.ndarray, views: tuple[str, ...]
) -> tuple[pd.DataFrame, np.ndarray]:
    """Keep only images taken in the given view positions (PA and/or AP).

    AP films are mostly bedside films of sicker patients, so some protocols train and test on
    PA only; the count of dropped rows is logged so the reduction is visible in the stage log.

    Args:
        metadata_frame: rows with a `view_position` column ("PA"/"AP").
        labels: [N, 15] aligned with the rows.
        views: subset of ("PA", "AP"); the order does not matter.

    Returns:
        The kept rows (index reset) and their labels.

    Raises:
        ConfigError: an unknown view name, an empty `views`, or no row left (e.g. a metadata file
            without a View Position column).
    """
    wanted = tuple(str(view).strip().upper() for view in views)
    unknown = [view for view in views if str(view).strip().upper() not in VIEWS]
    if not wanted or unknown:
        raise ConfigError(f"split.views: {list(views)!r} is not valid; use one or both of {list(VIEWS)}")
    _check_aligned(metadata_frame, labels)
    view_positions = metadata_frame["view_position"].astype(str).str.strip().str.upper()
    keep = view_positions.isin(wanted).to_numpy()
    if not keep.any():
        found = sorted(view_positions.unique())[:5]
        raise ConfigError(
            f"split.views {list(wanted)} keeps none of the {len(keep):,} images (view positions found: {found}); "
            f"the metadata needs a 'View Position' column, or remove split.views"
        )
    dropped = view_positions[~keep].value_counts()
    log.info(
        "view filter %s: kept %d of %d images, dropped %d (%s)",
        "/".join(wanted),
        int(keep.sum()),
        len(keep),
        int((~keep).sum()),
        ", ".join(f"{view or 'blank'} {count}" for view, count in dropped.items()) or "none",
    )
    return metadata_frame.loc[keep].reset_index(drop=True), labels[keep]


def one_image_per_patient(
    metadata_frame: pd.DataFrame, labels: np.ndarray, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Keep one seeded random image per patient, dropping the follow-ups.

    Follow-ups of one patient are strongly correlated, so some protocols keep one image per
    patient to make every test case independent. The choice depends on the seed and the image
    names only (not on the row order), so the same seed keeps the same images.

    Args:
        metadata_frame: rows with `image_id` and `patient_id`.
        labels: [N, 15] aligned with the rows.
        seed: the only source of randomness.

    Returns:
        The kept rows in their original order (index reset) and their labels.
    """
    _check_aligned(metadata_frame, labels)
    n_rows = len(metadata_frame)
    if n_rows == 0:
        return metadata_frame.reset_index(drop=True), labels
    image_ids = metadata_frame["image_id"].astype(str).to_numpy()
    _, patient_codes = np.unique(metadata_frame["patient_id"].astype(str).to_numpy(), return_inverse=True)
    # Random keys handed out in image-name order, so reordering the rows changes nothing.
    keys = np.empty(n_rows)
    keys[np.argsort(image_ids, kind="stable")] = np.random.default_rng(seed).random(n_rows)
    by_patient_then_key = np.lexsort((keys, patient_codes))
    first_of_patient = np.ones(n_rows, dtype=bool)
    first_of_patient[1:] = patient_codes[by_patient_then_key[1:]] != patient_codes[by_patient_then_key[:-1]]
    kept = np.sort(by_patient_then_key[first_of_patient])
    log.info(
        "one image per patient: kept %d of %d images, dropped %d follow-ups", len(kept), n_rows, n_rows - len(kept)
    )
    return metadata_frame.iloc[kept].reset_index(drop=True), labels[kept]


def _check_list_is_patient_disjoint(image_ids: np.ndarray, patient_ids: np.ndarray, in_test: np.ndarray) -> None:
    straddling = np.intersect1d(patient_ids[in_test], patient_ids[~in_test])
    if not len(straddling):
        return
    patient = straddling[0]
    mine = patient_ids == patient
    inside, outside = image_ids[mine & in_test], image_ids[mine & ~in_test]
    raise LeakageError(
        f"patient {patient} has {len(inside)} image(s) in the official test list (e.g. {inside[0]}) and "
        f"{len(outside)} outside it (e.g. {outside[0]}); {len(straddling)} patient(s) straddle the list. The "
        f"official split is patient-disjoint, so these are not the NIH ChestX-ray14 images (the phantom reuses "
        f"NIH-style names) or the metadata was edited; use split.method: patient"
    )


def _check_aligned(metadata_frame: pd.DataFrame, labels: np.ndarray) -> None:
    if len(metadata_frame) != len(labels):
        raise ValueError(f"metadata has {len(metadata_frame)} rows but labels has {len(labels)}; they must be aligned")
