"""Stage `expert_labels`: radiologists' labels (Majkowska et al. 2020) of the test images, validated.

    python pipeline/expert_labels.py --raw data/raw --splits data/splits.csv \
        --out data/expert_labels.csv --summary metrics/expert_labels.json

Reads `<raw>/expert_labels.csv` (the fetch stage writes it: the phantom's truth, or a copy of
``data.nih.expert_labels``) and writes the test images it covers (image_id, patient_id and the
four findings as 0/1) plus a summary; without the file, a header-only table and `available: false`.
"""

import gc

gc.disable()  # no collections during the imports below: cxr14.cli.run_stage turns it back on

from pathlib import Path

import _checkout  # noqa: F401  (this checkout's src/ first: pipeline/_checkout.py)

from cxr14.cli import run_stage, stage_parser
from cxr14.io import atomic_write_json, atomic_write_text, staged_outputs
from cxr14.stages.expert_labels import expert_table


def main(args) -> None:
    out, summary_path = Path(args.out), Path(args.summary)
    with staged_outputs([out, summary_path]) as stage:  # both files or none
        table, summary = expert_table(Path(args.raw), Path(args.splits))
        atomic_write_text(stage.path(out), table.to_csv(index=False, lineterminator="\n"))
        atomic_write_json(stage.path(summary_path), summary)


if __name__ == "__main__":
    parser = stage_parser("Validate the radiologists' labels and keep the test images they cover.", __doc__)
    parser.add_argument("--raw", default="data/raw", help="raw data folder (default: %(default)s)")
    parser.add_argument("--splits", default="data/splits.csv", help="split table (default: %(default)s)")
    parser.add_argument("--out", default="data/expert_labels.csv", help="expert table (default: %(default)s)")
    parser.add_argument(
        "--summary", default="metrics/expert_labels.json", help="counts per finding (default: %(default)s)"
    )
    run_stage(main, parser)
