"""Stage `report`: the side-by-side comparison of every model in params.yaml `models:`.

    python pipeline/report.py --details metrics/details --predictions metrics/predictions \
        --curves metrics/curves --efficiency metrics/efficiency --structure metrics/structure \
        --explain metrics/explain --figures metrics/figures --split metrics/split.json \
        --figures-out metrics/report_figures --out metrics/report.md --html metrics/report.html \
        --summary metrics/summary.json --workbook metrics/structure.xlsx --subgroups metrics/subgroups \
        --expert-summary metrics/expert_labels.json

report.md and report.html hold the same content; the HTML embeds every figure. Both, with
the all-model figures, are also attached to every model's MLflow run (under report/), so each
run shows where it stood in the comparison it took part in.
"""

import gc

gc.disable()  # no collections during the imports below: cxr14.cli.run_stage turns it back on

import _checkout  # noqa: F401  (this checkout's src/ first: pipeline/_checkout.py)

from cxr14.warm import delegate

delegate()  # in a fork of the warm stage server, which has imported torch & co. once (cxr14.warm)

import json
import logging
import os
from pathlib import Path

from cxr14 import tracking
from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.io import atomic_write_json, atomic_write_text, staged_outputs
from cxr14.model_names import check_known_model_names
from cxr14.reporting.comparison import load_predictions, paired_comparisons
from cxr14.reporting.files import ReportError, per_model_json
from cxr14.reporting.html import render_html
from cxr14.reporting.report import build_report, load_efficiency, load_layer_tables, load_records, rank_records
from cxr14.reporting.sections import (
    draw_comparison_figures,
    load_explanations,
    load_histories,
    model_figure_paths,
)
from cxr14.reporting.workbook import write_structure_workbook

log = logging.getLogger("cxr14.stages.report")

TITLE = "cxr14 — model comparison"


def _json(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def _cards(folder: Path, models: list[str]) -> dict[str, Path]:
    """metrics/cards/<model>.md of every model, each checked to exist (the report links them)."""
    cards = {model: folder / f"{model}.md" for model in models}
    for model, card in cards.items():
        if not card.is_file():
            raise ReportError(f"{card}: missing model card; run `dvc repro export@{model}`")
    return cards


def main(args) -> None:
    cfg = load_config(args.params)
    # Without torch or timm: registered names, or names evaluated upstream (a timm name was checked there).
    check_known_model_names(
        cfg.models, [path.stem for path in Path(args.details).glob("*.json")], "models", args.params
    )
    tracking.require_store()
    report_path, html_path, summary_path = Path(args.out), Path(args.html), Path(args.summary)
    workbook, figures_out = Path(args.workbook), Path(args.figures_out)
    # All five outputs or none: written beside, logged, then renamed into place together.
    with staged_outputs([report_path, html_path, summary_path, workbook, figures_out]) as stage:
        ranking = _report(cfg, args, stage, report_path, html_path, summary_path, workbook, figures_out)
    log.info("report: %s and %s; models by test macro AUROC: %s", report_path, html_path, ", ".join(ranking))


def _report(
    cfg, args, stage, report_path: Path, html_path: Path, summary_path: Path, workbook: Path, figures_out: Path
) -> list[str]:
    models = list(cfg.models)
    records = load_records(Path(args.details), models)
    efficiency = load_efficiency(Path(args.efficiency), models)
    tables = load_layer_tables(Path(args.structure), models)
    explanations = load_explanations(Path(args.explain), models)
    model_figures = model_figure_paths({"evaluate": Path(args.figures), "explain": Path(args.explain)}, models)
    split_summary = _json(Path(args.split))
    ranked = rank_records(records)
    ranking = [record["model"] for record in ranked]
    resamples = cfg.evaluate.bootstrap_resamples
    predictions = load_predictions(Path(args.predictions), models)
    comparisons = paired_comparisons(predictions, ranking, resamples, cfg.seed)
    staged_figures = draw_comparison_figures(
        ranked, predictions, load_histories(Path(args.curves), models), stage.path(figures_out)
    )
    # The report links the figures where they will be; the HTML embeds them from where they are now.
    comparison_figures = {name: figures_out / path.name for name, path in staged_figures.items()}
    report_dir = report_path.parent
    markdown, summary = build_report(
        records,
        split_summary,
        efficiency,
        tables,
        comparisons,
        resamples,
        chexnet_reference=cfg.data.source == "nih",
        explanations=explanations,
        comparison_figures=comparison_figures,
        model_figures=model_figures,
        report_dir=report_dir,
        review={
            "subgroups": per_model_json(Path(args.subgroups), models, "evaluate"),
            "expert_summary": _json(Path(args.expert_summary)) if args.expert_summary else None,
            "phantom": cfg.data.source == "phantom",
            "cards": _cards(Path(args.cards), models) if args.cards else {},
        },
    )
    final_link, staged_link = (
        Path(os.path.relpath(folder, report_dir)).as_posix() for folder in (figures_out, stage.path(figures_out))
    )
    html_source = markdown.replace(f"]({final_link}/", f"]({staged_link}/")
    write_structure_workbook(tables, stage.path(workbook))
    atomic_write_text(stage.path(report_path), markdown)
    atomic_write_text(stage.path(html_path), render_html(html_source, report_dir, TITLE))
    atomic_write_json(stage.path(summary_path), summary)
    run_ids = {record["model"]: record["training"]["run_id"] for record in ranked}
    tracking.log_artifacts_to_runs(
        run_ids, [stage.path(report_path), stage.path(html_path), *staged_figures.values()], "report"
    )
    return ranking


if __name__ == "__main__":
    parser = stage_parser("Write the model comparison report (markdown + self-contained HTML).", __doc__)
    parser.add_argument("--details", default="metrics/details", help="per-model records (default: %(default)s)")
    parser.add_argument(
        "--predictions",
        default="metrics/predictions",
        help="per-model test scores with truth and patient ids (default: %(default)s)",
    )
    parser.add_argument("--curves", default="metrics/curves", help="per-model training curves (default: %(default)s)")
    parser.add_argument(
        "--efficiency", default="metrics/efficiency", help="per-model efficiency figures (default: %(default)s)"
    )
    parser.add_argument(
        "--structure", default="metrics/structure", help="per-model layer tables (default: %(default)s)"
    )
    parser.add_argument(
        "--explain",
        default="metrics/explain",
        help="per-model retrieval/localisation JSON and Grad-CAM/t-SNE figures (default: %(default)s)",
    )
    parser.add_argument(
        "--figures",
        default="metrics/figures",
        help="per-model ROC/PR, reliability and training figures (default: %(default)s)",
    )
    parser.add_argument("--cards", help="per-model model cards to link, e.g. metrics/cards (export@ writes them)")
    parser.add_argument(
        "--figures-out",
        default="metrics/report_figures",
        help="where the all-model figures are drawn (default: %(default)s)",
    )
    parser.add_argument(
        "--workbook",
        default="metrics/structure.xlsx",
        help="every layer table, one sheet per model (default: %(default)s)",
    )
    parser.add_argument("--split", default="metrics/split.json", help="split summary (default: %(default)s)")
    parser.add_argument(
        "--subgroups", default="metrics/subgroups", help="per-model subgroup tables (default: %(default)s)"
    )
    parser.add_argument(
        "--expert-summary",
        default=None,
        help="optional summary of the expert_labels stage (metrics/expert_labels.json): counts for the report",
    )
    parser.add_argument("--out", default="metrics/report.md", help="markdown report (default: %(default)s)")
    parser.add_argument(
        "--html", default="metrics/report.html", help="self-contained HTML report (default: %(default)s)"
    )
    parser.add_argument("--summary", default="metrics/summary.json", help="summary JSON (default: %(default)s)")
    run_stage(main, parser)
