"""Stage `report`: the side-by-side comparison of every model in params.yaml `models:`.

    python pipeline/report.py --details metrics/details --split metrics/split.json \
        --out metrics/report.md --summary metrics/summary.json
"""

import json
from pathlib import Path

from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.io import atomic_write_json, atomic_write_text
from cxr14.reporting.report import build_report, load_records


def main(args) -> None:
    cfg = load_config(args.params)
    records = load_records(Path(args.details), list(cfg.models))
    with Path(args.split).open(encoding="utf-8") as handle:
        split_summary = json.load(handle)
    markdown, summary = build_report(records, split_summary)
    atomic_write_text(Path(args.out), markdown)
    atomic_write_json(Path(args.summary), summary)


if __name__ == "__main__":
    parser = stage_parser("Write the model comparison report.", __doc__)
    parser.add_argument("--details", default="metrics/details", help="per-model records (default: %(default)s)")
    parser.add_argument("--split", default="metrics/split.json", help="split summary (default: %(default)s)")
    parser.add_argument("--out", default="metrics/report.md", help="markdown report (default: %(default)s)")
    parser.add_argument("--summary", default="metrics/summary.json", help="summary JSON (default: %(default)s)")
    run_stage(main, parser)
