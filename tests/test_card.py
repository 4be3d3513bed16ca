"""Model cards (cxr14.reporting.card): hand-made records shaped like evaluate@'s, profile@'s and
split's files, and every model whose evaluation is committed under metrics/."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from cxr14.config import config_from_dict, config_to_dict
from cxr14.labels import LABELS
from cxr14.reporting.card import (
    NOT_AVAILABLE,
    PHANTOM_CAVEAT,
    CardError,
    load_card_inputs,
    model_card,
    thresholds_from_details,
    write_card,
)
from cxr14.reporting.files import ReportError
from cxr14.reporting.review import fmt
from tests.conftest import REPO_ROOT, real_params

METRICS = REPO_ROOT / "metrics"


def _config(model: str = "resnet18", **noise: float) -> dict:
    """The resolved config as train@ writes it to config.json (the engine's recipe, on params.yaml)."""
    params = real_params()
    params["data"]["phantom"]["label_noise"].update(noise)
    cfg = config_from_dict(params)
    train = dataclasses.asdict(cfg.train_for(model))
    return {**config_to_dict(cfg), "train": train, "model": model, "train_seed": 42, "world_size": 1}


def _per_label(start: float, step: float) -> dict[str, float]:
    return {name: round(start + step * i, 6) for i, name in enumerate(LABELS)}


def _details(model: str = "resnet18", seeds: tuple[int, ...] = (42,)) -> dict:
    auroc, ap = _per_label(0.60, 0.01), _per_label(0.10, 0.02)
    at_f1 = {
        name: {"sensitivity": 0.5 + i / 100, "specificity": 0.8 - i / 100, "ppv": 0.2, "f1": 0.3}
        for i, name in enumerate(LABELS)
    }
    at_sens = {
        name: {"sensitivity": 0.9 - i / 200, "specificity": 0.3 + i / 100, "ppv": 0.1, "f1": 0.2}
        for i, name in enumerate(LABELS)
    }
    scaling_side = {"macro_brier": 0.0513, "macro_ece": 0.016, "pooled_ece": 0.0082, "macro_test_nll": 0.19}
    metrics = {
        "auroc": auroc,
        "ap": ap,
        "macro_auroc": 0.712,
        "micro_auroc": 0.854,
        "macro_ap": 0.207,
        "classes_in_macro_auroc": 15,
        "intervals": {
            "auroc": {name: [value - 0.05, value + 0.04] for name, value in auroc.items()},
            "ap": {name: [value - 0.03, value + 0.06] for name, value in ap.items()},
            "macro_auroc": [0.65, 0.77],
            "micro_auroc": [0.829, 0.877],
            "macro_ap": [0.192, 0.243],
            "resamples": 1000,
            "unit": "patient",
        },
        "thresholds": _per_label(0.0123, 0.031),
        "sensitivity_thresholds": _per_label(0.0051, 0.0107),
        "sensitivity_target": 0.9,
        "at_max_f1": at_f1,
        "at_sensitivity": at_sens,
        "calibration": {"ece": 0.0082, "bins": []},
        "temperature_scaling": {
            "bins": 10,
            "before": scaling_side,
            "after": {**scaling_side, "macro_brier": 0.0512, "macro_ece": 0.0159},
            "temperatures": _per_label(0.82, 0.02),
        },
    }
    values = [0.712 + 0.01 * i for i in range(len(seeds))]
    return {
        "model": model,
        "seed": seeds[0],
        "metrics": metrics,
        "seeds": {
            "seeds": list(seeds),
            "macro_auroc": values,
            "mean": sum(values) / len(values),
            "sd": 0.01 if len(seeds) > 1 else None,
            "ci": [0.65, 0.77],
            "resamples": 1000,
        },
        "training": {
            "best_epoch": 7,
            "best_val_macro_auroc": 0.655,
            "epochs_run": 8,
            "image_size": 128,
            "params_total": 11184207,
            "params_trainable": 11184207,
            "run_id": "09e27d412d2d4db980000437a6a20216",
            "selection": "epoch with the highest validation macro AUROC",
            "train_seconds": 234.36,
            "weights": None,
            "world_size": 1,
        },
    }


def _headline(seeds: int = 1) -> dict:
    return {
        "macro_auroc": 0.712 if seeds == 1 else 0.722,
        "macro_auroc_ci_low": 0.65,
        "macro_auroc_ci_high": 0.77,
        "macro_auroc_seed_sd": None if seeds == 1 else 0.01,
        "seeds": seeds,
        "micro_auroc": 0.854,
        "macro_ap": 0.207,
        "best_epoch": 7,
        "train_seconds": 234.36,
    }


def _split() -> dict:
    block = {"positives": dict.fromkeys(LABELS, 5), "prevalence": dict.fromkeys(LABELS, 0.05)}
    return {
        "method": "patient",
        "excluded_images": 0,
        "dropped_missing_images": 0,
        "orphan_images": 0,
        "train": {"images": 1502, "patients": 434, **copy.deepcopy(block)},
        "val": {"images": 217, "patients": 56, **copy.deepcopy(block)},
        "test": {"images": 434, "patients": 110, **copy.deepcopy(block)},
    }


def _gap(value: float | None, low: float = -0.1, high: float = 0.1) -> dict:
    if value is None:
        return {"gap": None, "ci": None, "excludes_zero": None, "resamples": 0}
    return {"gap": value, "ci": [low, high], "excludes_zero": low > 0 or high < 0, "resamples": 1000}


def _group(images: int, patients: int, auroc: float, under: float) -> dict:
    return {
        "images": images,
        "patients": patients,
        "too_small": False,
        "macro_auroc": auroc,
        "macro_auroc_ci": [auroc - 0.05, auroc + 0.05],
        "underdiagnosis": {"rate": under, "ci": [under - 0.1, under + 0.1], "too_small": False},
    }


def _subgroups(model: str = "resnet18") -> dict:
    sex_gaps = {name: {"tpr": _gap(None), "fpr": _gap(0.0)} for name in LABELS}
    sex_gaps["Effusion"] = {"tpr": _gap(-0.21, -0.35, -0.05), "fpr": _gap(0.055, 0.009, 0.106)}
    sex_gaps["Mass"] = {"tpr": _gap(0.12, -0.1, 0.3), "fpr": _gap(0.01)}
    mirrored = {
        name: {rate: {**gap, "gap": None if gap["gap"] is None else -gap["gap"]} for rate, gap in rates.items()}
        for name, rates in sex_gaps.items()
    }
    return {
        "model": model,
        "seed": 42,
        "min_cases": 10,
        "min_patients": 20,
        "dimensions": {
            "sex": {
                "gap_reference": "the other group",
                "groups": {"F": _group(155, 37, 0.698, 0.39), "M": _group(279, 73, 0.620, 0.41)},
                "gaps": {"F": sex_gaps, "M": mirrored},
            },
            "age": {
                "gap_reference": "median over the scored age groups",
                "groups": {
                    "0-20": {"images": 25, "patients": 6, "too_small": True},
                    "20-40": _group(108, 34, 0.617, 0.46),
                },
                "gaps": {"20-40": {name: {"tpr": _gap(None), "fpr": _gap(0.0)} for name in LABELS}},
            },
        },
    }


def _efficiency(model: str = "resnet18") -> dict:
    return {
        "model": model,
        "device": "cpu",
        "input_size": "3x128x128",
        "params_total": 11184207,
        "params_trainable": 11184207,
        "flops_per_image": 1184381952,
        "size_mb": 44.814795,
        "latency_ms": 11.338732,
        "throughput_img_s": 158.637,
        "batch_size_throughput": 32,
    }


def _expert_summary() -> dict:
    return {"available": True, "in_test_split": 434, "test_patients": 110, "outside_test_split_ignored": 1719}


def _inputs(source: str = "phantom", **changes) -> dict:
    config = _config()
    config["data"]["source"] = source
    inputs = {
        "headline": _headline(),
        "details": _details(),
        "split": _split(),
        "config": config,
        "subgroups": _subgroups(),
        "efficiency": _efficiency(),
        "expert_summary": _expert_summary(),
    }
    inputs.update(changes)
    return inputs


def _section(card: str, title: str) -> str:
    """The text of `## title` up to the next second-level heading."""
    start = card.index(f"\n## {title}\n")
    end = card.find("\n## ", start + 1)
    return card[start : end if end >= 0 else len(card)]


def _rows(section: str) -> dict[str, list[str]]:
    """Table rows of a section keyed by their first cell (a finding name), cells stripped."""
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in LABELS:
            rows[cells[0]] = cells
    return rows


def test_headline_and_per_finding_results_carry_their_intervals():
    card = model_card("resnet18", **_inputs())
    results = _section(card, "Test results")
    assert "**Macro AUROC:** 0.712 [0.650, 0.770]" in results
    assert "1000 bootstrap resamples of test patients" in results
    assert "**Micro AUROC:** 0.854 [0.829, 0.877]" in results
    assert "spread across seeds is not measured" in results
    rows = _rows(results.split("### Calibration")[0])
    assert len(rows) == 15
    details = _details()["metrics"]
    for name in LABELS:
        low, high = details["intervals"]["auroc"][name]
        assert rows[name][2] == f"{fmt(details['auroc'][name])} [{fmt(low)}, {fmt(high)}]"
    assert "| Brier score (macro) | 0.0513 | 0.0512 |" in results


def test_early_stopping_row_names_min_epochs_only_where_it_is_set():
    def stopping(model: str) -> str:
        records = {"details": _details(model), "subgroups": _subgroups(model), "efficiency": _efficiency(model)}
        card = model_card(model, **_inputs(config=_config(model), **records))
        return next(line for line in _section(card, "Training").splitlines() if line.startswith("| early stopping |"))

    assert stopping("resnet18") == "| early stopping | after 3 epochs without a better validation macro AUROC |"
    assert stopping("convnextv2_seed") == (
        "| early stopping | after 3 epochs without a better validation macro AUROC, not before epoch 12 |"
    )


def test_several_seeds_show_their_spread_and_every_seed():
    inputs = _inputs(headline=_headline(seeds=3), details=_details(seeds=(42, 43, 44)))
    results = _section(model_card("resnet18", **inputs), "Test results")
    assert "mean over 3 training seeds, SD across seeds 0.010" in results
    assert "42: 0.712, 43: 0.722, 44: 0.732" in results
    assert "0.854 (mean over 3 seeds; seed 42: 0.854 [0.829, 0.877])" in results


def test_threshold_table_has_every_finding_with_both_operating_points():
    card = model_card("resnet18", **_inputs())
    section = _section(card, "Thresholds")
    assert "greater than or equal to the threshold" in section and "0.5 has no special meaning" in section
    metrics = _details()["metrics"]
    rows = _rows(section)
    assert list(rows) == list(LABELS)
    for name, cells in rows.items():
        f1, target = metrics["at_max_f1"][name], metrics["at_sensitivity"][name]
        assert cells[1:] == [
            fmt(metrics["thresholds"][name], 4),
            fmt(f1["sensitivity"]),
            fmt(f1["specificity"]),
            fmt(metrics["sensitivity_thresholds"][name], 4),
            fmt(target["sensitivity"]),
            fmt(target["specificity"]),
        ]
    assert "threshold for sensitivity ≥ 0.9" in section


def test_given_thresholds_must_be_those_the_test_metrics_were_measured_at():
    details = _details()
    same = thresholds_from_details(details)
    assert same == {
        "max_f1": details["metrics"]["thresholds"],
        "sensitivity": {"target": 0.9, "thresholds": details["metrics"]["sensitivity_thresholds"]},
    }
    expected = model_card("resnet18", **_inputs())
    assert model_card("resnet18", thresholds=same, **_inputs()) == expected
    details_keys = {
        key: details["metrics"][key] for key in ("thresholds", "sensitivity_thresholds", "sensitivity_target")
    }
    assert model_card("resnet18", thresholds=details_keys, **_inputs()) == expected

    other = copy.deepcopy(same)
    other["max_f1"]["Effusion"] += 0.1
    with pytest.raises(CardError, match=r"max-F1 thresholds given differ .*Effusion"):
        model_card("resnet18", thresholds=other, **_inputs())
    del other["max_f1"]["Mass"]
    with pytest.raises(CardError, match="lack Mass"):
        model_card("resnet18", thresholds=other, **_inputs())


def test_every_card_says_not_a_medical_device_and_only_phantom_cards_carry_the_caveat():
    phantom = model_card("resnet18", **_inputs("phantom"))
    nih = model_card("resnet18", **_inputs("nih"))
    for card in (phantom, nih):
        assert "not a medical device" in card
        assert "not a medical device" in _section(card, "Intended use")
        assert "cxr14 predict --model models/resnet18 IMAGES --out predictions.csv" in card
    assert PHANTOM_CAVEAT in _section(phantom, "Data and split")
    assert PHANTOM_CAVEAT in _section(phantom, "Test results")
    assert "probability 0.15" in phantom and "probability 0.01" in phantom
    assert "phantom" not in nih.lower() and "synthetic" not in nih.lower()
    assert "NIH ChestX-ray14" in nih and "Oakden-Rayner" in nih and "text-mined" in nih
    assert "Majkowska" in _section(nih, "Data and split")
    assert "section Published references" in nih and "Published references" not in phantom


def test_phantom_noise_rates_come_from_the_config():
    card = model_card("resnet18", **_inputs(config=_config(missed=0.2, spurious=0.03)))
    assert "probability 0.2 and each absent finding added with probability 0.03" in card
    noiseless = model_card("resnet18", **_inputs(config=_config(missed=0.0, spurious=0.0)))
    assert "labels are noiseless" in noiseless
    unknown = model_card("resnet18", data_source="phantom", **_inputs(config=None))
    assert f"rates are {NOT_AVAILABLE}" in unknown


def test_missing_optional_inputs_make_their_sections_say_not_available():
    details = _details()
    del details["metrics"]["temperature_scaling"]
    inputs = _inputs(subgroups=None, efficiency=None, expert_summary=None, config=None, details=details)
    card = model_card("resnet18", data_source="nih", **inputs)
    assert f"Subgroup analysis: {NOT_AVAILABLE}" in _section(card, "Subgroups")
    assert f"Efficiency figures: {NOT_AVAILABLE}" in _section(card, "Efficiency")
    assert f"Training settings: {NOT_AVAILABLE}" in _section(card, "Training")
    assert f"temperature scaling: {NOT_AVAILABLE}" in card
    assert f"Comparison with radiologist labels: {NOT_AVAILABLE}" in card
    assert f"**Reference labels:** {NOT_AVAILABLE}" in card
    assert "11,184,207" in _section(card, "Model details")  # parameters from the training summary
    assert f"FLOPs per image:** {NOT_AVAILABLE}" in card

    del details["metrics"]["thresholds"]
    card = model_card("resnet18", data_source="nih", **inputs)
    assert f"Validation-chosen thresholds: {NOT_AVAILABLE}" in _section(card, "Thresholds")


def test_subgroup_section_lists_groups_and_the_largest_gaps():
    card = model_card("resnet18", report_link="../report.md", **_inputs())
    section = _section(card, "Subgroups")
    assert "| sex | F | 155 / 37 | 0.698 [0.648, 0.748] | 0.390 [0.290, 0.490] |" in section
    assert "| age (years) | 0-20 | 25 / 6 | too small (6 patients) | too small (6 patients) |" in section
    # F − M shown once (M is its mirror); the largest TPR gap of sex is Effusion's, which is established.
    assert "- sex F − M, Effusion TPR: -0.210 [-0.350, -0.050] (interval excludes 0)" in section
    assert "sex M − F" not in section and "M − M" not in section
    assert "- age (years): no group with enough positives to compare" in section
    assert "excludes 0: 2; the largest:" in section
    assert "[the comparison report](../report.md)" in section
    assert "2 true- or false-positive-rate gap(s)" in _section(card, "Limitations and ethical considerations")


def test_efficiency_section_names_the_device():
    section = _section(model_card("resnet18", **_inputs()), "Efficiency")
    assert "on device `cpu`" in section
    assert "| 3x128x128 | 11,184,207 | 1.184 | 44.8 | 11.34 | 159 at batch 32 |" in section


def test_records_of_another_model_or_no_data_source_are_refused():
    with pytest.raises(CardError, match="efficiency record is model 'cnn'"):
        model_card("resnet18", **_inputs(efficiency=_efficiency("cnn")))
    with pytest.raises(CardError, match="data source is unknown"):
        model_card("resnet18", **_inputs(config=None))
    with pytest.raises(CardError, match="data.source 'phantom'"):
        model_card("resnet18", data_source="nih", **_inputs())


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_inputs_read_from_files_and_the_card_written_atomically(tmp_path):
    metrics, models = tmp_path / "metrics", tmp_path / "models"
    _write_json(metrics / "details" / "resnet18.json", _details())
    _write_json(metrics / "split.json", _split())
    with pytest.raises(ReportError, match=r"resnet18\.json: missing; run `dvc repro evaluate@resnet18`"):
        load_card_inputs("resnet18", metrics)
    _write_json(metrics / "resnet18.json", _headline())
    _write_json(models / "resnet18" / "seed-42" / "config.json", _config(missed=0.25))

    inputs = load_card_inputs("resnet18", metrics, model_dir=models / "resnet18")
    assert inputs["subgroups"] is None and inputs["efficiency"] is None and inputs["expert_summary"] is None
    card = model_card("resnet18", **inputs)
    assert "probability 0.25" in card and f"Subgroup analysis: {NOT_AVAILABLE}" in card

    target = tmp_path / "metrics" / "cards" / "resnet18.md"
    write_card(target, card)
    write_card(target, card)  # replaces
    assert target.read_text(encoding="utf-8") == card
    assert sorted(path.name for path in target.parent.iterdir()) == ["resnet18.md"]


def _committed_models() -> list[str]:
    return sorted(path.stem for path in METRICS.glob("*.json") if (METRICS / "details" / path.name).is_file())


def test_every_committed_model_renders_with_its_headline():
    """Reads the committed metrics/ (whatever the last `dvc repro` wrote) and params.yaml's data source."""
    models = _committed_models()
    assert models, "no committed model evaluations under metrics/"
    source = config_from_dict(real_params()).data.source
    for model in models:
        inputs = load_card_inputs(model, METRICS)
        card = model_card(model, data_source=source, **inputs)
        headline = inputs["headline"]
        expected = (
            f"**Macro AUROC:** {fmt(headline['macro_auroc'])} "
            f"[{fmt(headline['macro_auroc_ci_low'])}, {fmt(headline['macro_auroc_ci_high'])}]"
        )
        assert expected in card, model
        assert len(_rows(_section(card, "Thresholds"))) == 15, model
        assert (PHANTOM_CAVEAT in card) == (source == "phantom"), model
        if inputs["subgroups"] is not None:
            assert "| sex | F |" in _section(card, "Subgroups"), model
