"""Build metrics/report.md from the per-model evaluation records.

    markdown, summary = build_report(details_dir=Path("metrics/details"), split_file=Path("metrics/split.json"))

One row per model, best macro AUROC first; every number is read from a file under metrics/,
so the report can always be traced back (and regenerated with `dvc repro report`).
"""

from __future__ import annotations

import json
from pathlib import Path

from cxr14.labels import LABELS


class ReportError(ValueError):
    """The report inputs are missing or inconsistent."""


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def _rank_key(record: dict) -> float:
    """Best macro AUROC first; a model without one (NaN) goes last."""
    value = record["metrics"]["macro_auroc"]
    return -value if value == value else float("inf")


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


def build_report(records: list[dict], split_summary: dict | None) -> tuple[str, dict]:
    """Return the markdown text and a machine-readable summary."""
    ranked = sorted(records, key=_rank_key)
    lines = ["# cxr14 — model comparison", ""]
    if split_summary:
        parts = [
            f"{split}: {split_summary[split]['images']} images / {split_summary[split]['patients']} patients"
            for split in ("train", "val", "test")
        ]
        lines += [f"Data: {'; '.join(parts)} (patient-wise split; source `metrics/split.json`).", ""]
    lines += [
        "Test split, thresholds for F1 tuned per class on validation. Macro AUROC averages the classes "
        "with positives in the test split (count in the last column). Source: `metrics/details/<model>.json`.",
        "",
        "| rank | model | params | macro AUROC | micro AUROC | macro AP | macro F1 | best epoch | train time (s) | classes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rank, record in enumerate(ranked, 1):
        m, t = record["metrics"], record["training"]
        lines.append(
            f"| {rank} | `{record['model']}` | {t['params_total']:,} | {_fmt(m['macro_auroc'])} | {_fmt(m['micro_auroc'])} | "
            f"{_fmt(m['macro_ap'])} | {_fmt(m['macro_f1'])} | {t['best_epoch']} | {t['train_seconds']:.0f} | "
            f"{m['classes_in_macro_auroc']} |"
        )
    lines += ["", "## Per-class test AUROC", ""]
    header = "| finding | " + " | ".join(f"`{r['model']}`" for r in ranked) + " |"
    lines += [header, "|---|" + "---:|" * len(ranked)]
    for name in LABELS:
        lines.append(f"| {name} | " + " | ".join(_fmt(r["metrics"]["auroc"][name]) for r in ranked) + " |")
    lines += ["", "## Per-class test F1 (validation-tuned thresholds)", "", header, "|---|" + "---:|" * len(ranked)]
    for name in LABELS:
        lines.append(f"| {name} | " + " | ".join(_fmt(r["metrics"]["f1"][name]) for r in ranked) + " |")
    summary = {
        "ranking": [r["model"] for r in ranked],
        "models": {
            r["model"]: {"macro_auroc": r["metrics"]["macro_auroc"], "macro_f1": r["metrics"]["macro_f1"],
                         "params_total": r["training"]["params_total"], "train_seconds": r["training"]["train_seconds"]}
            for r in ranked
        },
    }
    return "\n".join(lines) + "\n", summary
