import numpy as np
import pandas as pd
import pytest

from cxr14.config import SplitConfig
from cxr14.data.metadata import load_metadata
from cxr14.data.split import LeakageError, check_patient_disjoint, split_patients
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
