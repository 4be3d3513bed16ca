"""Stage `fetch`: materialise the raw data set in the NIH layout under --out.

    python pipeline/fetch.py --out data/raw

With `data.source: phantom` (the default) it generates the synthetic ChestX-ray14; real NIH
data plugs in through `data.source: nih` (see README). Each source is a module registered in
cxr14.data.sources.SOURCES, whose docstring says how to add one.
"""

import gc

gc.disable()  # no collections during the imports below: cxr14.cli.run_stage turns it back on

from pathlib import Path

import _checkout  # noqa: F401  (this checkout's src/ first: pipeline/_checkout.py)

from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.data.sources import fetch


def main(args) -> None:
    fetch(load_config(args.params), Path(args.out))


if __name__ == "__main__":
    parser = stage_parser("Fetch or generate the raw images and metadata.", __doc__)
    parser.add_argument("--out", default="data/raw", help="raw data folder (default: %(default)s)")
    run_stage(main, parser)
