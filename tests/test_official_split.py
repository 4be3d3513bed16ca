"""The packaged official test list, the official split at full NIH scale, and the row filters."""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pytest

from cxr14.data.official_split import filter_views, official_split, official_test_images, one_image_per_patient
from cxr14.data.split import LeakageError, check_patient_disjoint, split_patients
from cxr14.labels import LABEL_INDEX, LABELS, NO_FINDING

NIH_IMAGES, NIH_PATIENTS = 112_120, 30_805
# Per-image prevalence of each finding in Data_Entry_2017 (Wang et al., 2017); "No Finding"
# is whatever image draws none of them (~54 % in the real data, ~45 % with independent draws).
PREVALENCE = {
    "Atelectasis": 0.103,
    "Cardiomegaly": 0.025,
    "Effusion": 0.119,
    "Infiltration": 0.177,
    "Mass": 0.052,
    "Nodule": 0.056,
    "Pneumonia": 0.013,
    "Pneumothorax": 0.047,
    "Consolidation": 0.042,
    "Edema": 0.021,
    "Emphysema": 0.022,
    "Fibrosis": 0.015,
    "Pleural_Thickening": 0.030,
    "Hernia": 0.002,
}


def random_labels(rng: np.random.Generator, n_images: int) -> np.ndarray:
    labels = np.zeros((n_images, len(LABELS)), dtype=np.uint8)
    for name, prevalence in PREVALENCE.items():
        labels[:, LABEL_INDEX[name]] = rng.random(n_images) < prevalence
    labels[:, LABEL_INDEX[NO_FINDING]] = labels.sum(axis=1) == 0
    return labels


@pytest.fixture(scope="module")
def nih_scale() -> tuple[pd.DataFrame, np.ndarray]:
    """112,120 images of 30,805 patients whose test images are exactly the official test list.

    NIH names are <patient:08d>_<follow-up:03d>.png, so the list gives the 2,797 test patients;
    the other 28,008 ids in 1..30,805 get the remaining 86,524 images (at least one each).
    """
    rng = np.random.default_rng(0)
    test_names = sorted(official_test_images())
    test_patients = {int(name[:8]) for name in test_names}
    other_patients = np.array([pid for pid in range(1, NIH_PATIENTS + 1) if pid not in test_patients])
    n_other = NIH_IMAGES - len(test_names)
    weights = rng.exponential(size=len(other_patients))  # skewed: a few patients with many follow-ups
    counts = 1 + rng.multinomial(n_other - len(other_patients), weights / weights.sum())
    other_names = [
        f"{pid:08d}_{follow:03d}.png" for pid, count in zip(other_patients, counts) for follow in range(count)
    ]
    names = np.array(test_names + other_names)
    names = names[rng.permutation(len(names))]  # the real CSV is sorted, but nothing may rely on it
    frame = pd.DataFrame({"image_id": names, "patient_id": [str(int(name[:8])) for name in names]})
    return frame, random_labels(rng, len(frame))


def test_packaged_list_loads():
    names = official_test_images()
    assert isinstance(names, frozenset) and len(names) == 25_596
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", name) for name in names)
    assert len({name[:8] for name in names}) == 2_797


def test_official_split_at_nih_scale(nih_scale):
    frame, labels = nih_scale
    assert (len(frame), frame["patient_id"].nunique()) == (NIH_IMAGES, NIH_PATIENTS)
    started = time.perf_counter()
    assignment = official_split(frame, labels, val_fraction=0.1, seed=42)
    elapsed = time.perf_counter() - started
    print(f"\nofficial_split on {len(frame):,} rows / {NIH_PATIENTS:,} patients: {elapsed:.2f} s")

    in_list = frame["image_id"].isin(official_test_images()).to_numpy()
    assert (assignment == "test").sum() == 25_596
    assert np.array_equal(assignment == "test", in_list)
    check_patient_disjoint(frame.assign(split=assignment))
    n_val, n_rest = int((assignment == "val").sum()), int((~in_list).sum())
    assert abs(n_val / n_rest - 0.1) < 0.005
    # Stratified: every finding, even Hernia (0.2 %), reaches validation.
    assert (labels[assignment == "val"].sum(axis=0) > 0).all()
    assert np.array_equal(assignment, official_split(frame, labels, val_fraction=0.1, seed=42))
    assert not np.array_equal(assignment, official_split(frame, labels, val_fraction=0.1, seed=7))


def test_patient_method_at_nih_scale(nih_scale):
    frame, labels = nih_scale
    started = time.perf_counter()
    assignment = split_patients(frame["patient_id"].to_numpy(), labels, val_fraction=0.1, test_fraction=0.2, seed=42)
    elapsed = time.perf_counter() - started
    print(f"\nsplit_patients on {len(frame):,} rows / {NIH_PATIENTS:,} patients: {elapsed:.2f} s")
    check_patient_disjoint(frame.assign(split=assignment))
    shares = {split: float(np.mean(assignment == split)) for split in ("train", "val", "test")}
    assert abs(shares["val"] - 0.1) < 0.005 and abs(shares["test"] - 0.2) < 0.005


def _small_frame(names: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame({"image_id": names, "patient_id": [str(int(name[:8])) for name in names]})
    return frame, random_labels(np.random.default_rng(1), len(frame))


def test_names_outside_the_list_ask_for_the_patient_method():
    names = [f"{pid:08d}_{follow:03d}.png" for pid in range(40_001, 40_041) for follow in range(3)]
    frame, labels = _small_frame(names)
    with pytest.raises(ValueError, match=r"split.method: official needs NIH image names.*split.method: patient"):
        official_split(frame, labels, val_fraction=0.1, seed=0)


def test_patient_straddling_the_list_is_leakage():
    # Patient 3 has 8 official test images; a ninth and tenth follow-up (as a phantom with more
    # follow-ups than the real patient would have) sit outside the list.
    names = [f"00000003_{follow:03d}.png" for follow in range(10)]
    names += [f"{pid:08d}_000.png" for pid in range(40_001, 40_021)]
    frame, labels = _small_frame(names)
    with pytest.raises(LeakageError, match=r"patient 3 has 8 image\(s\) in the official test list.*2 outside it"):
        official_split(frame, labels, val_fraction=0.1, seed=0)


def test_custom_test_list_and_bad_fraction():
    frame, labels = _small_frame([f"{pid:08d}_{follow:03d}.png" for pid in range(1, 41) for follow in range(2)])
    test_list = frozenset(name for name in frame["image_id"] if int(name[:8]) <= 8)
    assignment = official_split(frame, labels, val_fraction=0.25, seed=0, test_list=test_list)
    assert (assignment == "test").sum() == 16 and (assignment == "val").sum() > 0
    check_patient_disjoint(frame.assign(split=assignment))
    with pytest.raises(ValueError, match=r"split.val_fraction must be in \(0, 1\)"):
        official_split(frame, labels, val_fraction=0.0, seed=0, test_list=test_list)
    with pytest.raises(ValueError, match="nothing is left to train on"):
        official_split(frame, labels, val_fraction=0.1, seed=0, test_list=frozenset(frame["image_id"]))


def _views_frame() -> tuple[pd.DataFrame, np.ndarray]:
    views = ["PA", "AP", "PA", "ap", "", "PA"]
    frame = pd.DataFrame(
        {
            "image_id": [f"00000001_{index:03d}.png" for index in range(len(views))],
            "patient_id": ["1"] * len(views),
            "view_position": views,
        }
    )
    labels = np.eye(len(LABELS), dtype=np.uint8)[: len(views)]  # row i has label i: alignment is checkable
    return frame, labels


def test_filter_views_keeps_the_asked_views_and_logs_drops(caplog):
    frame, labels = _views_frame()
    caplog.set_level("INFO")
    kept, kept_labels = filter_views(frame, labels, ("PA",))
    assert kept["image_id"].tolist() == ["00000001_000.png", "00000001_002.png", "00000001_005.png"]
    assert np.array_equal(kept_labels.argmax(axis=1), [0, 2, 5])
    assert "kept 3 of 6 images, dropped 3" in caplog.text
    both, _ = filter_views(frame, labels, ("AP", "PA"))
    assert len(both) == 5  # the blank view is dropped, lower-case "ap" is kept
    with pytest.raises(ValueError, match=r"split.views: \['LL'\] is not valid"):
        filter_views(frame, labels, ("LL",))
    with pytest.raises(ValueError, match="keeps none"):
        filter_views(frame.assign(view_position=""), labels, ("PA",))


def test_one_image_per_patient_is_seeded_and_order_free(caplog):
    names = [f"{pid:08d}_{follow:03d}.png" for pid in range(1, 51) for follow in range(pid % 5 + 1)]
    frame = pd.DataFrame({"image_id": names, "patient_id": [str(int(name[:8])) for name in names]})
    labels = np.arange(len(frame))[:, None].repeat(len(LABELS), axis=1)  # row id in every column
    caplog.set_level("INFO")
    kept, kept_labels = one_image_per_patient(frame, labels, seed=3)
    assert len(kept) == 50 and kept["patient_id"].is_unique
    assert f"dropped {len(frame) - 50} follow-ups" in caplog.text
    assert kept["image_id"].tolist() == [names[row] for row in kept_labels[:, 0]]  # labels follow their rows

    again, _ = one_image_per_patient(frame, labels, seed=3)
    assert again["image_id"].tolist() == kept["image_id"].tolist()
    shuffled = frame.sample(frac=1.0, random_state=0)
    reordered, _ = one_image_per_patient(shuffled, labels[shuffled.index.to_numpy()], seed=3)
    assert set(reordered["image_id"]) == set(kept["image_id"])
    other, _ = one_image_per_patient(frame, labels, seed=4)
    assert set(other["image_id"]) != set(kept["image_id"])
