"""Subgroup statistics (issue 14) on constructed data whose answer is known."""

import json

import numpy as np
import pandas as pd
import pytest

from cxr14.evaluation.subgroups import subgroup_report
from cxr14.labels import LABEL_INDEX, LABELS

EFFUSION = LABEL_INDEX["Effusion"]
NO_FINDING = LABEL_INDEX["No Finding"]
THRESHOLDS = dict.fromkeys(LABELS, 0.5)


def _two_sexes(tpr_f: float, tpr_m: float, patients: int = 80, seed: int = 1):
    """`patients` women and men with 2 images each; Effusion is positive on half the images and
    predicted positive with probability `tpr_<sex>` on the positives (and 0.1 on the negatives)."""
    rng = np.random.default_rng(seed)
    patient_ids = np.repeat(np.arange(2 * patients), 2)
    n = len(patient_ids)
    sex = np.where(patient_ids < patients, "F", "M")
    targets = (rng.random((n, len(LABELS))) < 0.3).astype(int)
    targets[:, EFFUSION] = np.arange(n) % 2
    targets[:, NO_FINDING] = targets.sum(axis=1) - targets[:, NO_FINDING] == 0
    hit = rng.random(n) < np.where(sex == "F", tpr_f, tpr_m)
    scores = rng.random((n, len(LABELS)))
    scores[:, EFFUSION] = np.where(targets[:, EFFUSION] == 1, np.where(hit, 0.9, 0.1), np.where(hit, 0.1, 0.1))
    attributes = pd.DataFrame(
        {"age": pd.array([45] * n, dtype="Int64"), "sex": sex, "view": "PA", "follow_up": np.arange(n) % 2}
    )
    return targets, scores, patient_ids, attributes


def test_a_tpr_gap_that_exists_is_found():
    targets, scores, patients, attributes = _two_sexes(tpr_f=0.9, tpr_m=0.4)
    report = subgroup_report(targets, scores, THRESHOLDS, patients, attributes, min_patients=20, resamples=300)
    sex = report["dimensions"]["sex"]
    women, men = sex["groups"]["F"], sex["groups"]["M"]
    observed = women["findings"]["Effusion"]["tpr"] - men["findings"]["Effusion"]["tpr"]
    assert observed > 0.3
    gap = sex["gaps"]["F"]["Effusion"]["tpr"]
    assert gap["gap"] == pytest.approx(observed) and gap["resamples"] == 300
    assert gap["excludes_zero"] is True and 0 < gap["ci"][0] < gap["gap"] < gap["ci"][1]
    assert sex["gaps"]["M"]["Effusion"]["tpr"]["gap"] == pytest.approx(-observed)
    assert sex["gaps"]["M"]["Effusion"]["tpr"]["ci"][1] < 0
    assert sex["gap_reference"] == "the other group"


def test_no_gap_is_found_where_there_is_none():
    targets, scores, patients, attributes = _two_sexes(tpr_f=0.7, tpr_m=0.7)
    report = subgroup_report(targets, scores, THRESHOLDS, patients, attributes, min_patients=20, resamples=300)
    gap = report["dimensions"]["sex"]["gaps"]["F"]["Effusion"]["tpr"]
    assert gap["ci"][0] < 0 < gap["ci"][1] and gap["excludes_zero"] is False
    again = subgroup_report(targets, scores, THRESHOLDS, patients, attributes, min_patients=20, resamples=300)
    assert again == report  # seeded: the same numbers every run


def test_too_small_groups_carry_no_numbers():
    targets, scores, patients, attributes = _two_sexes(tpr_f=0.9, tpr_m=0.9, patients=30)
    attributes.loc[patients < 4, "age"] = 85  # 4 patients aged 80+
    attributes.loc[patients == 5, ["sex", "view"]] = ["unknown", "LL"]
    report = subgroup_report(targets, scores, THRESHOLDS, patients, attributes, min_patients=10, resamples=50)
    age = report["dimensions"]["age"]
    assert age["groups"]["80+"] == {"images": 8, "patients": 4, "too_small": True}
    assert age["groups"]["0-20"] == {"images": 0, "patients": 0, "too_small": True}
    assert "80+" not in age["gaps"] and set(age["gaps"]) == {"40-60"}
    assert age["groups"]["40-60"]["patients"] == 56 and age["groups"]["40-60"]["macro_auroc"] is not None
    assert report["underdiagnosis_sex_age"]["F"]["80+"] == {
        "images": 8,
        "patients": 4,
        "images_with_finding": int((targets[patients < 4, NO_FINDING] == 0).sum()),
        "patients_with_finding": 4,
        "too_small": True,
    }
    assert report["dimensions"]["sex"]["unknown_images"] == 2 and report["dimensions"]["view"]["other_images"] == 2
    json.dumps(report, allow_nan=False)  # JSON-ready: no NaN anywhere


def test_underdiagnosis_on_a_hand_checked_example():
    # (patient, sex, age, No Finding label, No Finding score); the threshold is 0.5
    rows = [
        (1, "F", 30, 0, 0.8),  # a finding, called No Finding: under-diagnosed
        (1, "F", 31, 0, 0.2),  # a finding, flagged
        (2, "F", 35, 1, 0.9),  # no finding: not in the denominator
        (2, "F", 35, 0, 0.6),  # a finding, called No Finding
        (3, "M", 70, 0, 0.1),
    ]
    targets = np.zeros((len(rows), len(LABELS)), dtype=int)
    scores = np.zeros((len(rows), len(LABELS)))
    for i, (_, _, _, no_finding, score) in enumerate(rows):
        targets[i, NO_FINDING], targets[i, EFFUSION] = no_finding, 1 - no_finding
        scores[i, NO_FINDING] = score
    attributes = pd.DataFrame({"age": [r[2] for r in rows], "sex": [r[1] for r in rows], "view": "AP", "follow_up": 0})
    patients = [str(r[0]) for r in rows]
    report = subgroup_report(targets, scores, THRESHOLDS, patients, attributes, min_patients=1, resamples=100)
    women = report["dimensions"]["sex"]["groups"]["F"]["underdiagnosis"]
    assert {key: women[key] for key in ("images_with_finding", "patients_with_finding", "called_no_finding")} == {
        "images_with_finding": 3,
        "patients_with_finding": 2,
        "called_no_finding": 2,
    }
    assert women["rate"] == pytest.approx(2 / 3) and women["too_small"] is False
    cells = report["underdiagnosis_sex_age"]
    assert cells["F"]["20-40"]["rate"] == pytest.approx(2 / 3) and cells["M"]["60-80"]["rate"] == 0.0
    assert "rate" not in cells["M"]["20-40"] and cells["M"]["20-40"]["too_small"] is True  # nobody there
    # patient 1 alone is 1/2, patient 2 alone 1/1: every resample lies in [1/2, 1]
    assert 0.5 <= cells["F"]["20-40"]["ci"][0] <= cells["F"]["20-40"]["ci"][1] <= 1.0


def test_age_gaps_are_against_the_median_and_undefined_values_are_none():
    # Three age groups of 10 patients, one image each; Effusion TPR 0.2, 0.5, 0.8 exactly.
    ages, tprs = (10, 30, 50), (0.2, 0.5, 0.8)
    n = 10 * len(ages)
    targets = np.zeros((n, len(LABELS)), dtype=int)
    targets[:, EFFUSION] = 1
    scores = np.zeros((n, len(LABELS)))
    scores[:, EFFUSION] = [0.9 if k < tpr * 10 else 0.1 for tpr in tprs for k in range(10)]
    attributes = pd.DataFrame({"age": np.repeat(ages, 10), "sex": "M", "view": "PA", "follow_up": 0})
    report = subgroup_report(targets, scores, THRESHOLDS, np.arange(n), attributes, min_patients=5, resamples=100)
    age = report["dimensions"]["age"]
    assert age["gap_reference"] == "median over the scored age groups"
    gaps = [age["gaps"][name]["Effusion"]["tpr"]["gap"] for name in ("0-20", "20-40", "40-60")]
    assert gaps == pytest.approx([-0.3, 0.0, 0.3])
    group = age["groups"]["0-20"]
    assert group["findings"]["Effusion"]["fpr"] is None  # no negatives
    assert group["findings"]["Mass"]["tpr"] is None and group["findings"]["Mass"]["fpr"] == 0.0  # no positives
    assert age["gaps"]["0-20"]["Mass"]["tpr"] == {"gap": None, "ci": None, "excludes_zero": None, "resamples": 0}
    assert group["macro_auroc"] is None and group["macro_auroc_ci"] is None  # no class has both outcomes
    assert report["dimensions"]["sex"]["gaps"] == {}  # no women: nothing to compare the men with


def test_a_rate_from_too_few_cases_enters_no_gap():
    """Two women and two men with an Effusion, all the women's found and none of the men's: every
    resample agrees, so without the case minimum this would be a 'found' gap of +1.0."""
    targets, scores, patients, attributes = _two_sexes(tpr_f=1.0, tpr_m=0.0)
    keep = targets[:, EFFUSION] == 0
    for sex in ("F", "M"):  # two positive images per sex, from two patients each
        keep[np.flatnonzero((attributes["sex"] == sex).to_numpy() & (targets[:, EFFUSION] == 1))[:2]] = True
    targets, scores, patients, attributes = targets[keep], scores[keep], patients[keep], attributes[keep]
    loose = subgroup_report(targets, scores, THRESHOLDS, patients, attributes, min_cases=1, resamples=100)
    gap = loose["dimensions"]["sex"]["gaps"]["F"]["Effusion"]["tpr"]
    assert gap["gap"] == pytest.approx(1.0) and gap["excludes_zero"] is True  # degenerate, as feared
    strict = subgroup_report(targets, scores, THRESHOLDS, patients, attributes, min_cases=10, resamples=100)
    sex = strict["dimensions"]["sex"]
    assert sex["gaps"]["F"]["Effusion"]["tpr"] == {"gap": None, "ci": None, "excludes_zero": None, "resamples": 0}
    assert sex["groups"]["F"]["findings"]["Effusion"] == {"tpr": 1.0, "fpr": 0.0, "positives": 2, "negatives": 80}
    assert sex["gaps"]["F"]["Effusion"]["fpr"]["gap"] is not None  # 80 negatives a side: FPR still compared
    assert strict["min_cases"] == 10
