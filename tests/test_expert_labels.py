"""Radiologist labels (issue 14): the released CSV format, its refusals, the stage, the scorer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxr14.data.expert_labels import EXPERT_FINDINGS, ExpertLabelsError, read_expert_labels
from cxr14.errors import InputDataError
from cxr14.evaluation.expert import score_against_experts
from cxr14.labels import LABEL_INDEX, LABELS
from tests.conftest import tiny_params
from tests.test_cli import run_stage

# The header of Google's released file (four_findings_expert_labels), written out in full.
RELEASED_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Fracture,Pneumothorax,Airspace opacity,"
    "Nodule or mass,Set Id"
)
ROWS = [
    "00000003_000.png,Pneumothorax,0,3,45,F,PA,2500,2048,0.143,0.143,NO,YES,NO,NO,test",
    "00000002_000.png,No Finding,0,2,12,F,AP,2500,2048,0.168,0.168,NO,NO,NO,NO,test",
    "00000001_000.png,Mass|Infiltration,0,1,58,M,PA,2992,2991,0.143,0.143,YES,NO,YES,YES,val",
    "00000004_001.png,Nodule,1,4,70,M,PA,2048,2500,0.171,0.171,NO,NO,NO,YES,val",
]
KNOWN = {"00000001_000.png", "00000002_000.png", "00000003_000.png", "00000004_001.png", "00000005_000.png"}
TEST = {"00000001_000.png": "1", "00000003_000.png": "3", "00000004_001.png": "4"}


def _write(path: Path, rows: list[str], header: str = RELEASED_HEADER, newline: str = "\r\n") -> Path:
    path.write_bytes(newline.join([header, *rows, ""]).encode())
    return path


def test_released_format_parses_and_keeps_the_test_split(tmp_path):
    labels = read_expert_labels(_write(tmp_path / "four_findings.csv", ROWS), KNOWN, TEST)
    assert labels.rows == 4 and labels.outside_test == 1  # 00000002_000.png: known, not in our test split
    assert labels.set_ids == {"test": 2, "val": 2}
    frame = labels.frame
    assert list(frame.columns) == ["image_id", "patient_id", *EXPERT_FINDINGS]
    assert list(frame["image_id"]) == ["00000001_000.png", "00000003_000.png", "00000004_001.png"]
    assert list(frame["patient_id"]) == ["1", "3", "4"]
    assert frame[list(EXPERT_FINDINGS)].to_numpy().tolist() == [[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda rows: [rows[0].replace(",YES,NO,NO,test", ",MAYBE,NO,NO,test")], "line 2: column 'Pneumothorax'"),
        (lambda rows: [rows[0], rows[1].replace("NO,NO,NO,NO", "NO,NO,yes,NO")], "line 3: column 'Airspace opacity'"),
        (lambda rows: [rows[0], rows[1], rows[0]], "lines 2 and 4: image '00000003_000.png' is listed twice"),
        (lambda rows: [rows[0], rows[1].replace(",test", ",train")], "line 3: Set Id 'train'"),
        (lambda rows: [rows[0], rows[1].replace("00000002_000", "00009999_000")], "line 3: unknown image"),
    ],
)
def test_bad_rows_are_refused_naming_the_line(tmp_path, edit, expected):
    path = _write(tmp_path / "labels.csv", edit(ROWS))
    with pytest.raises(ExpertLabelsError, match="labels.csv") as error:
        read_expert_labels(path, KNOWN, TEST)
    assert expected in str(error.value)
    assert isinstance(error.value, InputDataError) and "data.nih.expert_labels" in str(error.value)


def test_bad_value_message_names_the_value(tmp_path):
    path = _write(tmp_path / "labels.csv", [ROWS[0].replace(",YES,NO,NO,test", ",MAYBE,NO,NO,test")])
    with pytest.raises(ExpertLabelsError, match="holds 'MAYBE', expected YES or NO"):
        read_expert_labels(path, KNOWN, TEST)


def test_missing_column_names_the_column_and_the_expected_header(tmp_path):
    header = RELEASED_HEADER.replace(",Airspace opacity", "")
    rows = [row.rsplit(",", 5)[0] + ",NO,YES,NO,test" for row in ROWS[:1]]
    path = _write(tmp_path / "labels.csv", rows, header=header)
    with pytest.raises(ExpertLabelsError) as error:
        read_expert_labels(path, KNOWN, TEST)
    message = str(error.value)
    assert str(path) in message and "'Airspace opacity'" in message and RELEASED_HEADER in message


# ------------------------------------------------------------------------------------- stage
def _phantom_project(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny noisy phantom and its split, made by the real fetch and split stages."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(**{"data.phantom.image_size": 32})))
    raw, splits = tmp_path / "raw", tmp_path / "splits.csv"
    for script, args in (
        ("fetch.py", ["--out", str(raw)]),
        ("split.py", ["--raw", str(raw), "--out", str(splits), "--summary", str(tmp_path / "split.json")]),
    ):
        result = run_stage(script, "--params", str(params), *args)
        assert result.returncode == 0, result.stderr
    return raw, splits


def _run_expert_stage(tmp_path: Path, raw: Path, splits: Path):
    out, summary = tmp_path / "expert.csv", tmp_path / "expert.json"
    result = run_stage(
        "expert_labels.py", "--raw", str(raw), "--splits", str(splits), "--out", str(out), "--summary", str(summary)
    )
    return result, out, summary


def test_stage_writes_the_test_images_and_a_summary_then_an_empty_table_without_a_file(tmp_path):
    raw, splits = _phantom_project(tmp_path)
    result, out, summary_path = _run_expert_stage(tmp_path, raw, splits)
    assert result.returncode == 0, result.stderr
    table, summary = pd.read_csv(out, dtype={"patient_id": str}), json.loads(summary_path.read_text())
    split = pd.read_csv(splits, dtype=str)
    test = split[split["split"] == "test"]
    assert list(table.columns) == ["image_id", "patient_id", *EXPERT_FINDINGS]
    assert sorted(table["image_id"]) == sorted(test["Image Index"]) == list(table["image_id"])
    assert summary["available"] is True and summary["rows_in_file"] == len(split)
    assert summary["in_test_split"] == len(test) and summary["outside_test_split_ignored"] == len(split) - len(test)
    assert summary["positives"] == {finding: int(table[finding].sum()) for finding in EXPERT_FINDINGS}
    assert summary["positives"]["Fracture"] == 0 and summary["positives"]["Airspace opacity"] > 0
    truth = pd.read_csv(raw / "expert_labels.csv").set_index("Image Index").loc[table["image_id"]]
    assert (truth["Pneumothorax"].eq("YES").astype(int).to_numpy() == table["Pneumothorax"].to_numpy()).all()

    (raw / "expert_labels.csv").unlink()
    result, out, summary_path = _run_expert_stage(tmp_path, raw, splits)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "image_id,patient_id,Fracture,Pneumothorax,Airspace opacity,Nodule or mass\n"
    summary = json.loads(summary_path.read_text())
    assert summary["available"] is False and summary["in_test_split"] == 0


def test_stage_refuses_a_bad_file_in_one_line_and_keeps_its_old_outputs(tmp_path):
    raw, splits = _phantom_project(tmp_path)
    result, out, summary_path = _run_expert_stage(tmp_path, raw, splits)
    assert result.returncode == 0, result.stderr
    before = out.read_bytes(), summary_path.read_bytes()
    lines = (raw / "expert_labels.csv").read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",train"
    (raw / "expert_labels.csv").write_text("\n".join(lines) + "\n")
    result, out, summary_path = _run_expert_stage(tmp_path, raw, splits)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "line 6: Set Id 'train'" in result.stderr
    assert (out.read_bytes(), summary_path.read_bytes()) == before


# ------------------------------------------------------------------------------------ scorer
def _constructed(seed: int = 0, patients: int = 150) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Truth, expert table, noisy NIH test index and scores that follow the truth."""
    rng = np.random.default_rng(seed)
    patient_ids = np.repeat(np.arange(1, patients + 1), 3).astype(str)
    n = len(patient_ids)
    truth = (rng.random((n, len(LABELS))) < 0.15).astype(int)
    truth[:, LABEL_INDEX["Hernia"]] = 0
    truth[:, -1] = (truth[:, :-1].sum(axis=1) == 0).astype(int)
    flip = rng.random(truth.shape) < 0.15
    noisy = np.where(flip, 1 - truth, truth)
    scores = 1 / (1 + np.exp(-(2.0 * truth - 1 + rng.normal(0, 1, truth.shape))))
    image_ids = [f"{i:08d}_000.png" for i in range(n)]
    index = pd.DataFrame(noisy, columns=list(LABELS))
    index.insert(0, "patient_id", patient_ids)
    index.insert(0, "image_id", image_ids)

    def any_of(names: tuple[str, ...]) -> np.ndarray:
        return truth[:, [LABEL_INDEX[name] for name in names]].max(axis=1)

    expert = pd.DataFrame({"image_id": image_ids, "patient_id": patient_ids, "Fracture": rng.integers(0, 2, n)})
    expert["Pneumothorax"] = any_of(("Pneumothorax",))
    expert["Airspace opacity"] = any_of(("Consolidation", "Infiltration", "Pneumonia"))
    expert["Nodule or mass"] = any_of(("Nodule", "Mass"))
    return expert, index, pd.DataFrame(truth, columns=list(LABELS)), scores


def test_scores_that_follow_the_truth_agree_more_with_the_experts_than_with_noisy_labels():
    expert, index, _, scores = _constructed()
    result = score_against_experts(expert.iloc[::-1], index, scores, resamples=200, seed=1)
    assert result["images"] == len(index) and result["patients"] == 150 and result["unit"] == "patient"
    for finding in ("Pneumothorax", "Airspace opacity", "Nodule or mass"):
        entry = result["findings"][finding]
        assert entry["auroc_expert"] > entry["auroc_nih"] + 0.05, (finding, entry)
        for key in ("expert", "nih"):
            low, high = entry[f"auroc_{key}_ci"]
            assert low < entry[f"auroc_{key}"] < high
        assert entry["expert_positives"] == int(expert[finding].sum())
    assert result["findings"]["Nodule or mass"]["nih_class"] == ["Nodule", "Mass"]
    nih_positives = index[["Nodule", "Mass"]].max(axis=1).sum()
    assert result["findings"]["Nodule or mass"]["nih_positives"] == nih_positives
    fracture = result["findings"]["Fracture"]
    assert fracture["nih_class"] is None and fracture["auroc_expert"] is None and fracture["auroc_nih"] is None
    assert fracture["expert_positives"] == int(expert["Fracture"].sum()) > 0
    mean = result["mean"]
    assert mean["findings"] == ["Pneumothorax", "Airspace opacity", "Nodule or mass"]
    expected = [result["findings"][f][key] for key in ("auroc_expert", "auroc_nih") for f in mean["findings"]]
    assert mean["auroc_expert"] == pytest.approx(np.mean(expected[:3]))
    assert mean["auroc_nih"] == pytest.approx(np.mean(expected[3:]))
    assert mean["difference"] == pytest.approx(mean["auroc_expert"] - mean["auroc_nih"])
    assert 0 < mean["difference_ci"][0] < mean["difference"] < mean["difference_ci"][1]  # the noise is real
    json.dumps(result)  # JSON-ready


def test_the_mean_difference_is_not_found_where_the_labels_agree():
    expert, index, _, scores = _constructed(seed=5)
    for finding, components in (("Pneumothorax", ["Pneumothorax"]), ("Nodule or mass", ["Nodule", "Mass"])):
        expert[finding] = index[components].max(axis=1).to_numpy()  # the experts say what NIH says
    expert["Airspace opacity"] = index[["Consolidation", "Infiltration", "Pneumonia"]].max(axis=1).to_numpy()
    mean = score_against_experts(expert, index, scores, resamples=200, seed=1)["mean"]
    assert mean["difference"] == pytest.approx(0.0, abs=1e-12)
    assert mean["difference_ci"][0] <= 0 <= mean["difference_ci"][1]


def test_a_finding_without_positives_has_no_auroc_and_a_stale_table_is_refused():
    expert, index, _, scores = _constructed(seed=3, patients=40)
    expert["Pneumothorax"] = 0
    entry = score_against_experts(expert, index, scores, resamples=100, seed=0)["findings"]["Pneumothorax"]
    assert entry["auroc_expert"] is None and entry["auroc_expert_ci"] is None
    assert entry["auroc_nih"] is not None  # the noisy NIH labels of the same images do have positives
    empty = score_against_experts(expert.iloc[:0], index, scores, resamples=100, seed=0)
    assert empty["images"] == 0 and all(f["auroc_expert"] is None for f in empty["findings"].values())
    stale = expert.copy()
    stale.loc[0, "image_id"] = "99999999_000.png"
    with pytest.raises(InputDataError, match="99999999_000.png"):
        score_against_experts(stale, index, scores, resamples=100, seed=0)
