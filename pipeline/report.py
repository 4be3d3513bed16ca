"""Stage `report`: the side-by-side comparison of every model in params.yaml `models:`.

    python pipeline/report.py --details metrics/details --predictions metrics/predictions \
        --efficiency metrics/efficiency \
        --structure metrics/structure --split metrics/split.json \
        --out metrics/report.md --summary metrics/summary.json --workbook metrics/structure.xlsx
"""

import json
from pathlib import Path

from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.io import atomic_write_json, atomic_write_text
from cxr14.models.structure import write_structure_workbook
from cxr14.reporting.comparison import load_predictions, paired_comparisons
from cxr14.reporting.report import build_report, load_efficiency, load_layer_tables, load_records, rank_records


def main(args) -> None:
    cfg = load_config(args.params)
    models = list(cfg.models)
    records = load_records(Path(args.details), models)
    efficiency = load_efficiency(Path(args.efficiency), models)
    tables = load_layer_tables(Path(args.structure), models)
    with Path(args.split).open(encoding="utf-8") as handle:
        split_summary = json.load(handle)
    ranking = [record["model"] for record in rank_records(records)]
    resamples = cfg.evaluate.bootstrap_resamples
    comparisons = paired_comparisons(load_predictions(Path(args.predictions), models), ranking, resamples, cfg.seed)
    markdown, summary = build_report(records, split_summary, efficiency, tables, comparisons, resamples,
                                     chexnet_reference=cfg.data.source == "nih")
    write_structure_workbook(tables, Path(args.workbook))
    atomic_write_text(Path(args.out), markdown)
    atomic_write_json(Path(args.summary), summary)


if __name__ == "__main__":
    parser = stage_parser("Write the model comparison report.", __doc__)
    parser.add_argument("--details", default="metrics/details", help="per-model records (default: %(default)s)")
    parser.add_argument("--predictions", default="metrics/predictions",
                        help="per-model test scores with truth and patient ids (default: %(default)s)")
    parser.add_argument("--efficiency", default="metrics/efficiency",
                        help="per-model efficiency figures (default: %(default)s)")
    parser.add_argument("--structure", default="metrics/structure",
                        help="per-model layer tables (default: %(default)s)")
    parser.add_argument("--workbook", default="metrics/structure.xlsx",
                        help="every layer table, one sheet per model (default: %(default)s)")
    parser.add_argument("--split", default="metrics/split.json", help="split summary (default: %(default)s)")
    parser.add_argument("--out", default="metrics/report.md", help="markdown report (default: %(default)s)")
    parser.add_argument("--summary", default="metrics/summary.json", help="summary JSON (default: %(default)s)")
    run_stage(main, parser)
