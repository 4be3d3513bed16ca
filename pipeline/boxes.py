"""Stage `boxes`: NIH's finding boxes for the images of one cache split, in cache pixels.

    python pipeline/boxes.py --raw data/raw --cache data/cache --out data/boxes.csv [--split test]

Without `data/raw/BBox_List_2017.csv` (a source that ships none) it writes an empty table.
"""

import gc

gc.disable()  # no collections during the imports below: cxr14.cli.run_stage turns it back on

from pathlib import Path

import _checkout  # noqa: F401  (this checkout's src/ first: pipeline/_checkout.py)

from cxr14.cli import run_stage, stage_parser
from cxr14.data.boxes import boxes_in_cache, write_boxes
from cxr14.data.metadata import image_files


def main(args) -> None:
    raw = Path(args.raw)
    write_boxes(boxes_in_cache(raw, Path(args.cache), image_files(raw).checked_path, args.split), Path(args.out))


if __name__ == "__main__":
    parser = stage_parser("Scale NIH's bounding boxes onto the cached images of one split.", __doc__)
    parser.add_argument("--raw", default="data/raw", help="raw data folder (default: %(default)s)")
    parser.add_argument("--cache", default="data/cache", help="cache folder (default: %(default)s)")
    parser.add_argument("--out", default="data/boxes.csv", help="box table (default: %(default)s)")
    parser.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="cache split (default: %(default)s)"
    )
    run_stage(main, parser)
