"""The report's reviewer sections (cxr14.reporting.review) on records made by the real evaluation code."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr14.evaluation.calibration import calibrate
from cxr14.evaluation.expert import score_against_experts
from cxr14.evaluation.statistics import seed_summary
from cxr14.evaluation.subgroups import subgroup_report
from cxr14.labels import EXPERT_FINDINGS, LABEL_INDEX, LABELS
from cxr14.reporting.report import source_lines
from cxr14.reporting.review import (
    calibration_lines,
    expert_lines,
    published_lines,
    seed_lines,
    subgroup_lines,
)

N_PATIENTS = 120


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(N_PATIENTS), 2).astype(str)
    targets = (rng.random((len(patients), len(LABELS))) < 0.3).astype(int)
    targets[:, LABEL_INDEX["No Finding"]] = (targets[:, : len(LABELS) - 1].sum(axis=1) == 0).astype(int)
    scores = 1 / (1 + np.exp(-(3 * targets - 1.5 + rng.normal(0, 1.5, targets.shape))))
    attributes = pd.DataFrame(
        {
            "age": pd.array(np.repeat(rng.integers(5, 95, N_PATIENTS), 2), dtype="Int64"),
            "sex": np.repeat(rng.choice(["M", "F"], N_PATIENTS), 2),
            "view": np.repeat(rng.choice(["PA", "AP"], N_PATIENTS), 2),
            "follow_up": pd.array(np.tile([0, 1], N_PATIENTS), dtype="Int64"),
        }
    )
    return targets, scores, patients, attributes


def _record(name: str, seed: int = 0) -> tuple[dict, dict]:
    targets, scores, patients, attributes = _data(seed)
    thresholds = dict.fromkeys(LABELS, 0.5)
    _, scaling = calibrate(targets, scores, targets, scores, bins=10)
    index = pd.DataFrame(targets, columns=list(LABELS))
    index.insert(0, "image_id", [f"{i}.png" for i in range(len(targets))])
    index.insert(1, "patient_id", patients)
    expert = index[["image_id", "patient_id"]].copy()
    for finding in EXPERT_FINDINGS:
        expert[finding] = 0
    expert["Pneumothorax"] = targets[:, LABEL_INDEX["Pneumothorax"]]
    expert["Nodule or mass"] = targets[:, [LABEL_INDEX["Nodule"], LABEL_INDEX["Mass"]]].max(axis=1)
    stack = np.stack([scores, np.clip(scores + 0.01, 0, 1)])
    record = {
        "model": name,
        "metrics": {
            "temperature_scaling": scaling,
            "expert": score_against_experts(expert, index, scores, resamples=100, seed=1),
        },
        "seeds": {**seed_summary(targets, stack, patients, resamples=100, seed=1), "seeds": [42, 43]},
    }
    subgroups = subgroup_report(targets, scores, thresholds, patients, attributes, min_patients=25, resamples=100)
    return record, subgroups


def test_published_references_follow_the_split_and_never_the_phantom():
    official = "\n".join(published_lines("official", phantom=False))
    assert "0.822" in official and "0.830" in official and "0.835" in official and "0.841" not in official
    assert "not results" in official and "test set" in official
    patient = "\n".join(published_lines("patient", phantom=False))
    assert "0.841" in patient and "0.822" not in patient and "never released" in patient
    assert published_lines("patient", phantom=True) == []


def test_seed_table_lists_every_seed_and_the_spread():
    record, _ = _record("a")
    text = "\n".join(seed_lines([record]))
    seeds = record["seeds"]
    assert "## Training seeds" in text and f"42: {seeds['macro_auroc'][0]:.3f}" in text
    assert f"| {seeds['sd']:.3f} |" in text
    assert seed_lines([{"model": "old", "metrics": {}}]) == []  # a record from before seeds


def test_expert_section_puts_both_aurocs_side_by_side_and_lists_fracture():
    record, _ = _record("a")
    lines = expert_lines([record], {"outside_test_split_ignored": 17})
    text = "\n".join(lines)
    assert "## Against radiologists" in text and "17 labelled images outside" in text
    assert "Airspace opacity ← Consolidation / Infiltration / Pneumonia" in text
    row = next(line for line in lines if "| Pneumothorax |" in line)
    found = record["metrics"]["expert"]["findings"]["Pneumothorax"]
    assert f"{found['auroc_expert']:.3f}" in row and f"{found['auroc_nih']:.3f}" in row
    assert any("| Fracture |" in line and "no NIH class" in line for line in lines)
    mean = record["metrics"]["expert"]["mean"]
    row = next(line for line in lines if "**mean of 2**" in line)  # Airspace opacity: no expert positive here
    assert f"{mean['auroc_expert']:.3f}" in row and f"difference {mean['difference']:+.3f}" in row


def test_on_the_phantom_the_reference_labels_are_not_called_radiologists():
    record, _ = _record("a")
    text = "\n".join(expert_lines([record], {}, phantom=True))
    assert "## Against reference labels (the phantom's truth)" in text and "noiseless labels" in text
    assert "AUROC vs reference | AUROC vs metadata labels |" in text
    assert "Radiologist-adjudicated labels (Majkowska" not in text and "AUROC vs radiologists" not in text
    # No reading of the difference beyond what its interval allows.
    assert "not by what it sees" not in text and "interval contains 0 cannot tell" in text


def test_the_report_says_first_whether_its_data_are_synthetic():
    phantom = "\n".join(source_lines(True))
    assert phantom.startswith("**Synthetic data.**") and "nothing here says how they would do on real" in phantom
    assert "NIH ChestX-ray14 (`data.source: nih`)" in "\n".join(source_lines(False))
    assert source_lines(None) == []  # a caller that does not say: no claim either way


def test_subgroup_section_reports_too_small_groups_without_numbers():
    record, subgroups = _record("a")
    text = "\n".join(subgroup_lines([record], {"a": subgroups}))
    assert "### Macro AUROC per group" in text and "### Under-diagnosis per group" in text
    groups = subgroups["dimensions"]["age"]["groups"]
    small = [name for name, entry in groups.items() if entry["too_small"]]
    assert small, "the constructed ages should leave some bin under 25 patients"
    row = next(line for line in text.splitlines() if line.startswith(f"| age (years): {small[0]} ("))
    assert "too small" in row and "[" not in row.split("|")[2]
    scored = next(name for name, entry in subgroups["dimensions"]["sex"]["groups"].items() if not entry["too_small"])
    row = next(line for line in text.splitlines() if line.startswith(f"| sex: {scored} ("))
    assert f"{subgroups['dimensions']['sex']['groups'][scored]['macro_auroc']:.3f}" in row


def test_calibration_section_shows_before_and_after():
    record, _ = _record("a")
    lines = calibration_lines([record])
    row = next(line for line in lines if line.startswith("| `a` |"))
    scaling = record["metrics"]["temperature_scaling"]
    assert f"{scaling['before']['macro_brier']:.4f}" in row and f"{scaling['after']['macro_brier']:.4f}" in row


def test_calibration_section_counts_where_scaling_helped_on_test():
    helped, record = _record("a")[0], _record("b", seed=1)[0]
    scaling = record["metrics"]["temperature_scaling"]
    worse = {**scaling, "after": {**scaling["after"], "macro_ece": scaling["before"]["macro_ece"] + 0.01}}
    hurt = {**record, "metrics": {**record["metrics"], "temperature_scaling": worse}}
    base = helped["metrics"]["temperature_scaling"]
    better = {**base, "after": {**base["after"], "macro_ece": base["before"]["macro_ece"] - 0.01}}
    helped = {**helped, "metrics": {**helped["metrics"], "temperature_scaling": better}}
    verdict = calibration_lines([helped, hurt])[-1]
    assert "lowered macro ECE for 1 of 2 models" in verdict and "Validation NLL falls by construction" in verdict


def test_a_group_averaging_fewer_classes_says_so():
    record, subgroups = _record("a")
    group = next(name for name, entry in subgroups["dimensions"]["sex"]["groups"].items() if not entry["too_small"])
    subgroups["dimensions"]["sex"]["groups"][group]["classes_in_macro_auroc"] = 14
    text = "\n".join(subgroup_lines([record], {"a": subgroups}))
    row = next(line for line in text.splitlines() if line.startswith(f"| sex: {group} ("))
    assert "(14 classes)" in row
    assert "(15 classes)" not in text and "unless the cell says fewer" in text
