"""Benchmark: preprocess throughput (all cores) against a single-core decode+resize loop.

    python benchmarks/preprocess.py --images 600

Generates phantom 1024 x 1024 PNGs once (in a temp folder unless --workdir is given), then, in
one run on the same files: (1) a plain loop that decodes and area-resizes each PNG to 224 px on
one core, (2) the pipeline's `build_cache` with every core. Prints both rates and their ratio;
the goal is a ratio of at least 0.9 x cores. The files are read once before timing so both
measurements see a warm page cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxr14.data.cache import build_cache, decode_and_resize
from cxr14.data.phantom import generate_phantom
from cxr14.labels import NUM_CLASSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600, help="approximate number of PNGs (default: %(default)s)")
    parser.add_argument("--size", type=int, default=1024, help="PNG side in pixels (default: %(default)s)")
    parser.add_argument("--workdir", default=None, help="folder to keep the generated PNGs in (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir or scratch)
        raw = workdir / "raw"
        if not (raw / "Data_Entry_2017.csv").is_file():
            generate_phantom(raw, n_patients=max(1, round(args.images / 3.6)), image_size=args.size, seed=0)
        paths = sorted((raw / "images").glob("*.png"))
        for path in paths:  # warm the page cache for both measurements
            path.read_bytes()

        cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        started = time.perf_counter()
        for path in paths:
            decode_and_resize(path, 224)
        single_rate = len(paths) / (time.perf_counter() - started)
        cv2.setNumThreads(cv2_threads)

        metadata = pd.DataFrame(
            {"image_id": [p.name for p in paths], "patient_id": [p.name[:8] for p in paths], "split": "train"}
        )
        labels = np.zeros((len(paths), NUM_CLASSES), dtype=np.uint8)
        started = time.perf_counter()
        build_cache(metadata, labels, {p.name: p for p in paths}, workdir / "cache", size=224, workers=0)
        pipeline_rate = len(paths) / (time.perf_counter() - started)

    cores = os.cpu_count() or 1
    ratio = pipeline_rate / single_rate
    print(f"images: {len(paths)} PNGs of {args.size} px -> 224 px, cores: {cores}")
    print(f"single-core decode+resize loop: {single_rate:8.1f} img/s")
    print(f"preprocess (build_cache, {cores} processes): {pipeline_rate:8.1f} img/s")
    print(f"ratio: {ratio:.2f}x = {ratio / cores:.2f} x cores (goal >= 0.90 x cores)")


if __name__ == "__main__":
    main()
