"""Build metrics/report.md from the per-model evaluation and profile records.

    records = load_records(Path("metrics/details"), ["cnn", "vit_v1"])
    efficiency = load_efficiency(Path("metrics/efficiency"), ["cnn", "vit_v1"])
    tables = load_layer_tables(Path("metrics/structure"), ["cnn", "vit_v1"])
    markdown, summary = build_report(records, split_summary, efficiency, tables)

One row per model, best macro AUROC first; every number is read from a file under metrics/,
so the report can always be traced back (and regenerated with `dvc repro report`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from cxr14.labels import LABELS
from cxr14.reporting.comparison import chexnet_lines, comparison_lines
from cxr14.reporting.files import ReportError, per_model_files, per_model_json
from cxr14.reporting.review import (
    calibration_lines,
    expert_lines,
    fmt,
    published_lines,
    seed_lines,
    subgroup_lines,
)
from cxr14.reporting.sections import (
    comparison_figure_lines,
    data_lines,
    explain_lines,
    figure_lines,
    reference_lines,
)


def headline(record: dict) -> tuple[float, tuple[float, float] | None, float | None, int]:
    """(macro AUROC, its patient-bootstrap interval, spread across seeds, seeds) of a model: the
    mean over its training seeds when the record has them (evaluate@ writes `seeds`), else the
    single model's value (older records)."""
    seeds = record.get("seeds")
    if seeds:
        value = seeds["mean"]
        return (float("nan") if value is None else value), seeds["ci"], seeds["sd"], len(seeds["seeds"])
    metrics = record["metrics"]
    return metrics["macro_auroc"], (metrics.get("intervals") or {}).get("macro_auroc"), None, 1


def _interval(interval: tuple[float, float] | None) -> str:
    """ "[low, high]" of the patient-level bootstrap, when there is one."""
    return "" if not interval else f"[{fmt(interval[0])}, {fmt(interval[1])}]"


def _headline_cell(record: dict) -> str:
    """ "0.812 ± 0.010 [0.780, 0.840]": mean over seeds, sample SD across seeds (with 2+), interval."""
    value, interval, sd, _ = headline(record)
    spread = "" if sd is None else f" ± {fmt(sd)}"
    return f"{fmt(value)}{spread} {_interval(interval)}"


def _mean_defined(values: dict) -> float | None:
    defined = [value for value in values.values() if value is not None]
    return sum(defined) / len(defined) if defined else None


def _operating_point_lines(ranked: list[dict]) -> list[str]:
    """Macro sensitivity/specificity/PPV/F1 at both validation-chosen thresholds, accuracy, calibration."""
    with_points = [r for r in ranked if "at_max_f1" in r["metrics"]]
    if not with_points:
        return []
    target = with_points[0]["metrics"]["sensitivity_target"]
    lines = [
        "",
        "## Operating points and calibration",
        "",
        "Per-class thresholds chosen on validation only: max-F1, and the highest threshold reaching "
        f"{target:.0%} validation sensitivity; values are test-split macro averages over the classes where "
        "they are defined. Seed accuracy is the design notes' seed metric (binary accuracy over all 15 × N "
        "entries at 0.5): with mostly-negative labels it is high for any model and says little. Pooled ECE: "
        "expected calibration error over all 15 × N scores at once (the Calibration section averages it per "
        "finding instead).",
        "",
        "| model | sens @maxF1 | spec @maxF1 | PPV @maxF1 | F1 @maxF1 | sens @target | spec @target | "
        "PPV @target | seed accuracy | pooled ECE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in with_points:
        m = record["metrics"]
        cells = []
        for point in ("at_max_f1", "at_sensitivity"):
            keys = (
                ("sensitivity", "specificity", "ppv", "f1")
                if point == "at_max_f1"
                else ("sensitivity", "specificity", "ppv")
            )
            for key in keys:
                cells.append(fmt(_mean_defined({name: row[key] for name, row in m[point].items()})))
        lines.append(
            f"| `{record['model']}` | "
            + " | ".join(cells)
            + f" | {fmt(m['seed_accuracy'])} | {fmt(m['calibration']['ece'])} |"
        )
    return lines


def _rank_key(record: dict) -> float:
    """Best macro AUROC (mean over seeds) first; a model without one (NaN) goes last."""
    value = headline(record)[0]
    return -value if value == value else float("inf")


def rank_records(records: list[dict]) -> list[dict]:
    """Best macro AUROC first (the order of the report's tables and of the comparisons)."""
    return sorted(records, key=_rank_key)


def load_records(details_dir: Path, models: list[str] | None = None) -> list[dict]:
    """Read metrics/details/<model>.json; with `models`, exactly those (missing = error)."""
    paths = sorted(Path(details_dir).glob("*.json"))
    records = {}
    for path in paths:
        with path.open(encoding="utf-8") as handle:
            records[path.stem] = json.load(handle)
    if models is not None:
        missing = [name for name in models if name not in records]
        if missing:
            raise ReportError(f"{details_dir}: no evaluation for model(s) {missing}; run `dvc repro`")
        return [records[name] for name in models]
    return list(records.values())


def load_efficiency(efficiency_dir: Path, models: list[str]) -> dict[str, dict]:
    """Read metrics/efficiency/<model>.json for every model (missing = error)."""
    return per_model_json(efficiency_dir, models, "profile")


def load_layer_tables(structure_dir: Path, models: list[str]) -> dict[str, pd.DataFrame]:
    """Read metrics/structure/<model>.csv for every model (missing = error)."""
    return {name: pd.read_csv(path) for name, path in per_model_files(structure_dir, models, ".csv", "profile").items()}


def _efficiency_lines(ranked: list[dict], efficiency: dict[str, dict], tables: dict[str, pd.DataFrame]) -> list[str]:
    any_figures = next(iter(efficiency.values()))
    lines = [
        "",
        "## Efficiency",
        "",
        f"Measured by `profile@<model>` on `{any_figures['device']}` at each model's training resolution: FLOPs = "
        "2 × multiply-accumulates per image (convolutions, matrix products, attention); size = the saved state dict; "
        "latency = median batch-1 forward pass after warm-up; throughput at the batch shown. "
        "Source: `metrics/efficiency/<model>.json`; layer tables: `metrics/structure/<model>.csv` and "
        "`metrics/structure.xlsx` (one sheet per model).",
        "",
        "| model | input | params | trainable | GFLOPs | size (MB) | latency (ms) | throughput (img/s) | batch "
        "| layers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in ranked:
        name = record["model"]
        e = efficiency[name]
        lines.append(
            f"| `{name}` | {e['input_size']} | {e['params_total']:,} | {e['params_trainable']:,} | "
            f"{e['flops_per_image'] / 1e9:.3f} | {e['size_mb']:.1f} | {e['latency_ms']:.2f} | "
            f"{e['throughput_img_s']:.0f} | {e['batch_size_throughput']} | "
            f"[{len(tables[name])}](structure/{name}.csv) |"
        )
    return lines


def _layer_table_lines(ranked: list[dict], tables: dict[str, pd.DataFrame]) -> list[str]:
    """Per model: where its layer table is and what it is made of (most frequent layer types)."""
    lines = [
        "",
        "## Layer tables",
        "",
        "One row per layer: name, type, input/output shape, params, trainable, kernel, stride, padding, "
        "activation, dropout, bias. All models: `metrics/structure.xlsx`.",
        "",
        "| model | table | layers | most frequent layer types |",
        "|---|---|---:|---|",
    ]
    for record in ranked:
        name = record["model"]
        table = tables[name]
        counts = table["layer_type"].value_counts().head(5)
        kinds = ", ".join(f"{kind} ×{count}" for kind, count in counts.items())
        lines.append(f"| `{name}` | [`structure/{name}.csv`](structure/{name}.csv) | {len(table)} | {kinds} |")
    return lines


def build_report(
    records: list[dict],
    split_summary: dict | None,
    efficiency: dict[str, dict] | None = None,
    tables: dict[str, pd.DataFrame] | None = None,
    comparisons: list[dict] | None = None,
    resamples: int = 0,
    chexnet_reference: bool = False,
    explanations: dict[str, dict] | None = None,
    comparison_figures: dict[str, Path] | None = None,
    model_figures: dict[str, dict[str, Path]] | None = None,
    report_dir: Path = Path("metrics"),
    review: dict | None = None,
) -> tuple[str, dict]:
    """Return the markdown text and a machine-readable summary.

    Figures are referenced relative to `report_dir` (where report.md is written). `review`:
    {"subgroups": {model: metrics/subgroups/<model>.json}, "expert_summary": metrics/expert_labels.json,
    "phantom": bool, "cards": {model: metrics/cards/<model>.md}} for the reviewer's sections
    (cxr14.reporting.review) and the links to the model cards.
    """
    review = review or {}
    ranked = sorted(records, key=_rank_key)
    lines = ["# cxr14 — model comparison", ""]
    lines += source_lines(review.get("phantom"))
    if split_summary:
        lines += _data_size_lines(split_summary)
    lines += _ranking_lines(ranked, efficiency)
    lines += card_lines(ranked, review.get("cards") or {}, report_dir)
    lines += seed_lines(ranked)
    lines += comparison_lines(comparisons or [], resamples)
    if chexnet_reference and ranked:
        lines += chexnet_lines(ranked[0])
    if comparison_figures:
        lines += comparison_figure_lines(comparison_figures, report_dir)
    lines += _operating_point_lines(ranked)
    lines += calibration_lines(ranked)
    lines += expert_lines(ranked, review.get("expert_summary"), phantom=bool(review.get("phantom")))
    lines += subgroup_lines(ranked, review.get("subgroups") or {})
    if efficiency:
        lines += _efficiency_lines(ranked, efficiency, tables or {})
    if tables:
        lines += _layer_table_lines(ranked, tables)
    lines += _per_class_lines(ranked)
    if explanations:
        lines += explain_lines(ranked, explanations)
    if model_figures:
        lines += figure_lines(ranked, model_figures, report_dir)
    if split_summary and "method" in split_summary:
        lines += data_lines(split_summary)
        lines += published_lines(split_summary["method"], phantom=bool(review.get("phantom")))
    lines += reference_lines(chexnet=chexnet_reference)
    summary = _summary(ranked, efficiency, explanations, comparisons)
    summary["subgroups"] = review.get("subgroups") or {}
    return "\n".join(lines) + "\n", summary


def source_lines(phantom: bool | None) -> list[str]:
    """What the data are, first: a report built on the phantom must not read as a result on X-rays."""
    if phantom is None:
        return []
    if phantom:
        return [
            "**Synthetic data.** Every number below comes from the phantom (`data.source: phantom`), a synthetic "
            "stand-in for ChestX-ray14 drawn by this project to exercise the pipeline: the models were trained and "
            "tested on it, and nothing here says how they would do on real chest X-rays. Set `data.source: nih` "
            'for results on NIH ChestX-ray14 (README, "Training on a GPU node").',
            "",
        ]
    return ["Data source: NIH ChestX-ray14 (`data.source: nih`).", ""]


def _data_size_lines(split_summary: dict) -> list[str]:
    """One sentence: images and patients per split."""
    parts = [
        f"{split}: {split_summary[split]['images']} images / {split_summary[split]['patients']} patients"
        for split in ("train", "val", "test")
    ]
    return [f"Data: {'; '.join(parts)} (patient-wise split; source `metrics/split.json`).", ""]


def _ranking_lines(ranked: list[dict], efficiency: dict[str, dict] | None) -> list[str]:
    """The ranking table: one row per model, with cost columns when `efficiency` is given."""
    cost_header, cost_rule = (
        ("", "")
        if not efficiency
        else (" GFLOPs | latency (ms) | size (MB) | inference img/s |", "---:|---:|---:|---:|")
    )
    seeds = max(headline(record)[3] for record in ranked)
    seed_note = (
        f" Macro AUROC is the mean over each model's {seeds} training seeds ± their standard deviation, with the "
        "patient-bootstrap interval of that mean; the other columns are the first seed's (see Training seeds)."
        if seeds > 1
        else " One training seed per model: the spread across seeds is not measured (add seeds to `train_seeds`)."
    )
    lines = [
        "Test split, thresholds for F1 tuned per class on validation. Macro AUROC averages the classes "
        "with positives in the test split (count in the last column)."
        + seed_note
        + " Sources: `metrics/details/<model>.json`"
        + ("; cost columns from `metrics/efficiency/<model>.json` (see Efficiency)." if efficiency else "."),
        "",
        "| rank | model | params | macro AUROC (95 % CI) | micro AUROC | macro AP | macro F1 |"
        + cost_header
        + " best epoch | train time (s) | classes |",
        "|---:|---|---:|---:|---:|---:|---:|" + cost_rule + "---:|---:|---:|",
    ]
    for rank, record in enumerate(ranked, 1):
        m, t = record["metrics"], record["training"]
        cost = ""
        if efficiency:
            e = efficiency[record["model"]]
            cost = (
                f" {e['flops_per_image'] / 1e9:.3f} | {e['latency_ms']:.2f} | {e['size_mb']:.1f} | "
                f"{e['throughput_img_s']:.0f} |"
            )
        lines.append(
            f"| {rank} | `{record['model']}` | {t['params_total']:,} | {_headline_cell(record)} | "
            f"{fmt(m['micro_auroc'])} | {fmt(m['macro_ap'])} | {fmt(m['macro_f1'])} |{cost} {t['best_epoch']} | "
            f"{t['train_seconds']:.0f} | {m['classes_in_macro_auroc']} |"
        )
    return lines


def card_lines(ranked: list[dict], cards: dict[str, Path], report_dir: Path) -> list[str]:
    """One line linking each ranked model's card (intended use, thresholds, limitations)."""
    links = [
        f"[`{record['model']}`]({Path(os.path.relpath(cards[record['model']], report_dir)).as_posix()})"
        for record in ranked
        if record["model"] in cards
    ]
    if not links:
        return []
    return [
        "",
        "Model cards (data, intended use, thresholds, subgroups, limitations; `cxr14 predict` applies a model): "
        + " · ".join(links),
        "",
    ]


def _per_class_lines(ranked: list[dict]) -> list[str]:
    """Per-class test AUROC and F1, one column per model in rank order."""
    lines = ["", "## Per-class test AUROC", ""]
    header = "| finding | " + " | ".join(f"`{r['model']}`" for r in ranked) + " |"
    lines += [header, "|---|" + "---:|" * len(ranked)]
    for name in LABELS:
        lines.append(f"| {name} | " + " | ".join(fmt(r["metrics"]["auroc"][name]) for r in ranked) + " |")
    lines += ["", "## Per-class test F1 (validation-tuned thresholds)", "", header, "|---|" + "---:|" * len(ranked)]
    for name in LABELS:
        lines.append(f"| {name} | " + " | ".join(fmt(r["metrics"]["f1"][name]) for r in ranked) + " |")
    return lines


def _summary(
    ranked: list[dict],
    efficiency: dict[str, dict] | None,
    explanations: dict[str, dict] | None,
    comparisons: list[dict] | None,
) -> dict:
    """The machine-readable summary: ranking, headline numbers per model, comparisons."""
    return {
        "ranking": [r["model"] for r in ranked],
        "models": {
            r["model"]: {
                "macro_auroc": headline(r)[0],
                "seeds": r.get("seeds"),
                "macro_f1": r["metrics"]["macro_f1"],
                "temperature_scaling": r["metrics"].get("temperature_scaling"),
                "expert": r["metrics"].get("expert"),
                "params_total": r["training"]["params_total"],
                "train_seconds": r["training"]["train_seconds"],
                **({"efficiency": efficiency[r["model"]]} if efficiency else {}),
                **(
                    {
                        "retrieval": explanations[r["model"]]["retrieval"],
                        "localisation": (explanations[r["model"]]["localisation"] or {}).get("overall"),
                    }
                    if explanations
                    else {}
                ),
            }
            for r in ranked
        },
        "comparisons": comparisons or [],
    }
