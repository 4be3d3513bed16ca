"""Stage `split`: assign every image to train/val/test by patient.

    python pipeline/split.py --raw data/raw --out data/splits.csv --summary metrics/split.json \
        --sizes metrics/split_sizes.json
"""

import gc

gc.disable()  # no collections during the imports below: cxr14.cli.run_stage turns it back on

from pathlib import Path

import _checkout  # noqa: F401  (this checkout's src/ first: pipeline/_checkout.py)

from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.data.metadata import load_metadata
from cxr14.data.split import split_sizes
from cxr14.io import atomic_write_json, atomic_write_text, staged_outputs
from cxr14.stages.split import make_splits


def main(args) -> None:
    cfg = load_config(args.params)
    outputs = [Path(path) for path in (args.out, args.summary, args.sizes) if path]
    with staged_outputs(outputs) as stage:  # all three files or none
        metadata = load_metadata(Path(args.raw), cfg.data.missing_images, cfg.data.orphan_images)
        table, summary = make_splits(metadata, cfg.split, cfg.seed, source=cfg.data.source)
        atomic_write_text(stage.path(Path(args.out)), table.to_csv(index=False))
        atomic_write_json(stage.path(Path(args.summary)), summary)
        if args.sizes:
            atomic_write_json(stage.path(Path(args.sizes)), split_sizes(summary))


if __name__ == "__main__":
    parser = stage_parser("Split the metadata into train/val/test by patient.", __doc__)
    parser.add_argument("--raw", default="data/raw", help="raw data folder (default: %(default)s)")
    parser.add_argument("--out", default="data/splits.csv", help="split table (default: %(default)s)")
    parser.add_argument(
        "--summary",
        default="metrics/split.json",
        help="counts and prevalence per finding, read by the report (default: %(default)s)",
    )
    parser.add_argument(
        "--sizes", default=None, help="optional headline JSON (images and patients per split) for dvc metrics"
    )
    run_stage(main, parser)
