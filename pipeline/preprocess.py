"""Stage `preprocess`: decode every PNG once into the memory-mapped grayscale cache.

python pipeline/preprocess.py --raw data/raw --splits data/splits.csv --out data/cache
"""

import gc

gc.disable()  # no collections during the imports below: cxr14.cli.run_stage turns it back on

from pathlib import Path

import _checkout  # noqa: F401  (this checkout's src/ first: pipeline/_checkout.py)

from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.data.cache import build_cache
from cxr14.data.metadata import load_metadata
from cxr14.data.split import attach_splits


def main(args) -> None:
    cfg = load_config(args.params)
    metadata = load_metadata(Path(args.raw), cfg.data.missing_images, cfg.data.orphan_images)
    table, labels = attach_splits(metadata, Path(args.splits))
    # For NIH data every file is first compared with fetch's manifest (size, mtime).
    images = metadata.images.checked_paths(table["image_id"])
    build_cache(table, labels, images, Path(args.out), cfg.preprocess.size, cfg.preprocess.workers)


if __name__ == "__main__":
    parser = stage_parser("Resize every image once into the per-split uint8 cache.", __doc__)
    parser.add_argument("--raw", default="data/raw", help="raw data folder (default: %(default)s)")
    parser.add_argument("--splits", default="data/splits.csv", help="split table (default: %(default)s)")
    parser.add_argument("--out", default="data/cache", help="cache folder (default: %(default)s)")
    run_stage(main, parser)
