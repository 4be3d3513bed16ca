import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from cxr14.config import SplitConfig
from cxr14.data.metadata import load_metadata
from cxr14.data.split import (
    EXCLUDED,
    LeakageError,
    check_patient_disjoint,
    split_patients,
    subsample_training_patients,
    training_patients_to_keep,
)
from cxr14.stages.split import make_splits


def synthetic_cohort(n_patients: int, seed: int = 0):
    """Patients with 1..8 images and skewed multi-label prevalence (rare to common)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 9, size=n_patients)
    patient_ids = np.repeat(np.arange(n_patients), counts).astype(str)
    prevalence = np.array([0.002, 0.01, 0.02, 0.05, 0.1, 0.2])
    labels = (rng.random((len(patient_ids), len(prevalence))) < prevalence).astype(np.uint8)
    return patient_ids, labels


def test_patient_disjoint_and_fractions():
    patient_ids, labels = synthetic_cohort(3000)
    assignment = split_patients(patient_ids, labels, 0.1, 0.2, seed=1)
    frame = pd.DataFrame({"patient_id": patient_ids, "split": assignment})
    check_patient_disjoint(frame)
    shares = frame["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.02)
    assert shares["val"] == pytest.approx(0.1, abs=0.02)
    assert shares["test"] == pytest.approx(0.2, abs=0.02)


def test_stratified_prevalence_is_similar_across_splits():
    patient_ids, labels = synthetic_cohort(6000)
    assignment = split_patients(patient_ids, labels, 0.1, 0.2, seed=3)
    overall = labels.mean(axis=0)
    for split in ("train", "val", "test"):
        prevalence = labels[assignment == split].mean(axis=0)
        # common labels within 15 % relative; the stratifier should do far better than random
        assert np.all(np.abs(prevalence[3:] - overall[3:]) / overall[3:] < 0.15), (split, prevalence, overall)
    # the rarest label still reaches every split
    for split in ("train", "val", "test"):
        assert labels[assignment == split, 0].sum() > 0


def test_seed_determines_split():
    patient_ids, labels = synthetic_cohort(500)
    first = split_patients(patient_ids, labels, 0.1, 0.2, seed=7)
    again = split_patients(patient_ids, labels, 0.1, 0.2, seed=7)
    other = split_patients(patient_ids, labels, 0.1, 0.2, seed=8)
    assert (first == again).all()
    assert (first != other).any()


def test_leak_is_detected():
    frame = pd.DataFrame({"patient_id": ["1", "1", "2"], "split": ["train", "test", "val"]})
    with pytest.raises(LeakageError, match="patient 1 is in splits"):
        check_patient_disjoint(frame)


def test_split_stage_output_is_byte_identical(small_nih):
    metadata = load_metadata(small_nih)
    table, summary = make_splits(metadata, SplitConfig(), seed=42)
    again, _ = make_splits(metadata, SplitConfig(), seed=42)
    assert table.to_csv(index=False) == again.to_csv(index=False)
    assert list(table.columns) == ["Image Index", "Patient ID", "split"]
    assert sum(summary[s]["images"] for s in ("train", "val", "test")) == 30
    assert set(summary["train"]["prevalence"]) >= {"Effusion", "No Finding"}


def test_view_filter_marks_rows_excluded_and_preprocess_drops_them(small_nih, tmp_path):
    from cxr14.data.split import EXCLUDED, attach_splits

    csv = small_nih / "Data_Entry_2017.csv"
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[frame.index % 3 == 0, "View Position"] = "AP"
    frame.to_csv(csv, index=False)
    metadata = load_metadata(small_nih)
    table, summary = make_splits(metadata, SplitConfig(views=("PA",)), seed=1)
    assert (table["split"] == EXCLUDED).sum() == 10 == summary["excluded_images"]
    splits_csv = tmp_path / "splits.csv"
    table.to_csv(splits_csv, index=False)
    kept, labels = attach_splits(metadata, splits_csv)
    assert len(kept) == len(labels) == 20 and set(kept["view_position"]) == {"PA"}
    rows = metadata.frame["image_id"].tolist()
    for image_id, row_labels in zip(kept["image_id"], labels):
        assert np.array_equal(row_labels, metadata.labels[rows.index(image_id)])


def test_official_method_uses_the_nih_test_list(tmp_path):
    from cxr14.data.official_split import official_test_images
    from tests.conftest import write_nih_folder

    test_names = sorted(official_test_images())[:6]  # two or more test patients
    test_patients = {name[:8] for name in test_names}
    rows = [(name, "Effusion" if i % 2 else "No Finding", str(int(name[:8]))) for i, name in enumerate(test_names)]
    rows += [
        (f"{90000000 + p:08d}_{f:03d}.png", "Mass" if p % 3 == 0 else "No Finding", str(90000000 + p))
        for p in range(40)
        for f in range(2)
    ]
    # the list's other images of these patients would be missing: keep only complete test patients
    raw = write_nih_folder(tmp_path / "raw", rows)
    metadata = load_metadata(raw)
    table, summary = make_splits(metadata, SplitConfig(method="official"), seed=0, source="nih")
    test_rows = table[table["split"] == "test"]
    assert set(test_rows["Image Index"]) == set(test_names) and summary["method"] == "official"
    assert not set(table.loc[table["split"] != "test", "Patient ID"].str.zfill(8)) & test_patients
    assert summary["val"]["images"] > 0 and summary["train"]["images"] > summary["val"]["images"]


# --------------------------------------------------------------------- split.train_fraction

VARIED_FINDINGS = [
    "No Finding",
    "Effusion",
    "Mass|Nodule",
    "Cardiomegaly",
    "Infiltration",
    "Atelectasis|Effusion",
    "Hernia",
]


def varied_nih(root):
    """60 patients with 1 to 4 images each, tiny PNGs, in the NIH layout."""
    from tests.conftest import write_nih_folder

    rows = [
        (f"{patient:08d}_{follow:03d}.png", VARIED_FINDINGS[(3 * patient + follow) % 7], str(patient))
        for patient in range(1, 61)
        for follow in range(1 + (patient * 7) % 4)
    ]
    return write_nih_folder(root, rows, size=8)


def split_digest(table: pd.DataFrame, summary: dict) -> str:
    """First 16 hex digits of the sha256 of splits.csv + split.json as pipeline/split.py writes them."""
    text = table.to_csv(index=False) + json.dumps(summary, indent=2, sort_keys=True) + "\n"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("cohort", "config", "seed", "expected"),
    [
        ("small", SplitConfig(), 42, "e7307fd3a18ce012"),
        ("small", SplitConfig(one_per_patient=True), 3, "a7086935d30ea6d9"),
        ("varied", SplitConfig(), 42, "956b2f63aabe2a04"),
        ("varied", SplitConfig(one_per_patient=True), 3, "0f950f323463f096"),
        ("varied", SplitConfig(val_fraction=0.2, test_fraction=0.3, train_fraction=1.0), 0, "6aa2960bafa0df9f"),
    ],
)
def test_train_fraction_one_keeps_the_split_outputs_byte_identical(tmp_path, cohort, config, seed, expected):
    # The digests were computed with the split stage as it was before split.train_fraction existed
    # (commit dd1ef0f): at the default 1.0, splits.csv and split.json must not change by one byte.
    from tests.conftest import write_small_nih

    raw = write_small_nih(tmp_path / "raw") if cohort == "small" else varied_nih(tmp_path / "raw")
    table, summary = make_splits(load_metadata(raw), config, seed=seed)
    assert split_digest(table, summary) == expected
    assert "train_fraction" not in summary


def test_train_fraction_subsamples_whole_training_patients_and_keeps_val_and_test(tmp_path):
    metadata = load_metadata(varied_nih(tmp_path / "raw"))
    full, full_summary = make_splits(metadata, SplitConfig(), seed=5)
    half, summary = make_splits(metadata, SplitConfig(train_fraction=0.5), seed=5)
    assert (full["Image Index"] == half["Image Index"]).all()
    for split in ("val", "test"):
        assert (full["split"] == split).equals(half["split"] == split), split
        assert summary[split] == full_summary[split]
    full_train = set(full.loc[full["split"] == "train", "Patient ID"])
    half_train = set(half.loc[half["split"] == "train", "Patient ID"])
    assert half_train < full_train and len(half_train) == training_patients_to_keep(len(full_train), 0.5)
    # whole patients: a kept patient keeps every training image, a dropped one loses all of them
    was_train = full["split"] == "train"
    kept = half["Patient ID"].isin(half_train)
    assert (half.loc[was_train & kept, "split"] == "train").all()
    assert (half.loc[was_train & ~kept, "split"] == EXCLUDED).all()
    dropped_images = int((was_train & ~kept).sum())
    assert dropped_images > 0 and summary["excluded_images"] == full_summary["excluded_images"] + dropped_images
    assert summary["train_fraction"] == 0.5
    assert summary["train_fraction_dropped_images"] == dropped_images
    assert summary["train_fraction_dropped_patients"] == len(full_train) - len(half_train)
    assert summary["train"]["images"] == full_summary["train"]["images"] - dropped_images


def test_training_patients_to_keep_rounds_half_up_and_keeps_at_least_one():
    assert training_patients_to_keep(10, 0.25) == 3  # 2.5 rounds up (Python's round would give 2)
    assert training_patients_to_keep(10, 0.24) == 2
    assert training_patients_to_keep(10, 0.01) == 1  # at least one patient
    assert training_patients_to_keep(7, 1.0) == 7
    assert training_patients_to_keep(0, 0.5) == 0
    with pytest.raises(ValueError, match="train_fraction"):
        training_patients_to_keep(10, 0.0)


def kept_training_patients(assignment: np.ndarray, patient_ids: np.ndarray) -> set[str]:
    return set(patient_ids[assignment == "train"])


def test_training_subsample_is_seeded_nested_and_leaves_other_rows_alone():
    patient_ids, labels = synthetic_cohort(400)
    assignment = split_patients(patient_ids, labels, 0.1, 0.2, seed=2)
    assignment[:5] = EXCLUDED  # rows a filter removed stay excluded
    train_patients = kept_training_patients(assignment, patient_ids)
    quarter = subsample_training_patients(patient_ids, assignment, 0.25, seed=2)
    again = subsample_training_patients(patient_ids, assignment, 0.25, seed=2)
    other = subsample_training_patients(patient_ids, assignment, 0.25, seed=3)
    half = subsample_training_patients(patient_ids, assignment, 0.5, seed=2)
    assert (quarter == again).all() and (quarter != other).any()
    kept = kept_training_patients(quarter, patient_ids)
    assert len(kept) == training_patients_to_keep(len(train_patients), 0.25) and kept < train_patients
    assert kept < kept_training_patients(half, patient_ids)  # the same seed's curves are nested
    untouched = assignment != "train"
    assert (quarter[untouched] == assignment[untouched]).all()
    assert set(quarter[~untouched]) == {"train", EXCLUDED}
    assert (subsample_training_patients(patient_ids, assignment, 1.0, seed=2) == assignment).all()
