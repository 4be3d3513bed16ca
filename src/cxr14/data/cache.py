"""The 224 px cache: the contract between image I/O and compute.

    build_cache(metadata, splits, cache_dir=Path("data/cache"), size=224, workers=0)
    images, index = open_split(Path("data/cache"), "train")   # uint8 memmap [N, S, S], DataFrame

Each PNG is decoded exactly once, here, in parallel, resized with area interpolation and
stored as grayscale uint8 in one `<split>.npy` per split (memory-mapped by training), beside
`<split>.csv` holding the image id, patient id and the 15 multi-hot labels in LABELS order.
Output is byte-identical for the same inputs and written atomically (staging folder + rename).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxr14.io import atomic_directory, atomic_write_json, progress
from cxr14.labels import LABELS

log = logging.getLogger(__name__)

CHUNK = 64  # images per worker task: amortises process overhead, bounds memory per task


class ImageDecodeError(ValueError):
    """A PNG that cannot be decoded (corrupt, truncated, or not an image)."""


def decode_and_resize(path: Path, size: int) -> np.ndarray:
    """Read one radiograph as 8-bit grayscale and resize it to `size` x `size` (area filter).

    16-bit and RGB(A) PNGs exist in the NIH set; they are reduced to 8-bit gray here.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"{path}: cannot decode image (corrupt or not a PNG)")
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"{path}: unsupported pixel type {image.dtype}")
    if image.shape != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image


def _decode_chunk(args: tuple[list[str], int]) -> np.ndarray:
    paths, size = args
    return np.stack([decode_and_resize(Path(path), size) for path in paths])


def build_cache(
    metadata: pd.DataFrame,
    labels: np.ndarray,
    images_dir: Path,
    cache_dir: Path,
    size: int,
    workers: int = 0,
) -> dict:
    """Write one memory-mapped array and one index per split into `cache_dir`.

    Args:
        metadata: rows with image_id, patient_id, split.
        labels: uint8 [N, 15] aligned with `metadata`.
        images_dir: folder of the source PNGs.
        cache_dir: destination; replaced atomically.
        size: output side in pixels.
        workers: processes (0 = all cores).

    Returns:
        A summary (images per split, size) also written to `cache_dir/cache.json`.
    """
    workers = workers or os.cpu_count() or 1
    summary: dict = {"size": size, "splits": {}}
    # One decode per process, the pool gives the parallelism. Threading is switched off in the
    # parent before the fork: calling cv2.setNumThreads inside a forked child can deadlock.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        _build_cache(metadata, labels, images_dir, cache_dir, size, workers, summary)
    finally:
        cv2.setNumThreads(cv2_threads)
    return summary


def _build_cache(metadata, labels, images_dir, cache_dir, size, workers, summary) -> None:
    with atomic_directory(cache_dir) as staging, ProcessPoolExecutor(max_workers=workers) as pool:
        for split in ("train", "val", "test"):
            mask = (metadata["split"] == split).to_numpy()
            rows = metadata.loc[mask].reset_index(drop=True)
            # Sorted image ids give the same cache bytes whatever order the CSV had.
            order = np.argsort(rows["image_id"].to_numpy(), kind="stable")
            rows = rows.iloc[order].reset_index(drop=True)
            split_labels = labels[mask][order]
            array = np.lib.format.open_memmap(
                staging / f"{split}.npy", mode="w+", dtype=np.uint8, shape=(len(rows), size, size)
            )
            paths = [str(images_dir / image_id) for image_id in rows["image_id"]]
            chunks = [(paths[start : start + CHUNK], size) for start in range(0, len(paths), CHUNK)]
            with progress(total=len(paths), desc=f"preprocess {split}", unit="img") as bar:
                for number, block in enumerate(pool.map(_decode_chunk, chunks)):
                    start = number * CHUNK
                    array[start : start + len(block)] = block
                    bar.update(len(block))
            array.flush()
            del array
            index = pd.DataFrame({"image_id": rows["image_id"], "patient_id": rows["patient_id"]})
            for column, name in enumerate(LABELS):
                index[name] = split_labels[:, column]
            index.to_csv(staging / f"{split}.csv", index=False)
            summary["splits"][split] = len(rows)
            log.info("cache %s: %d images at %d px", split, len(rows), size)
        atomic_write_json(staging / "cache.json", summary)


def open_split(cache_dir: Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Memory-map one split's images and read its index (labels in LABELS order)."""
    array_path = Path(cache_dir) / f"{split}.npy"
    index_path = Path(cache_dir) / f"{split}.csv"
    for path in (array_path, index_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: cache file missing; run the preprocess stage (dvc repro preprocess)")
    images = np.load(array_path, mmap_mode="r")
    index = pd.read_csv(index_path, dtype={"image_id": str, "patient_id": str})
    if len(index) != len(images):
        raise ValueError(f"{cache_dir}: {split}.csv has {len(index)} rows but {split}.npy has {len(images)} images")
    return images, index


def split_labels(index: pd.DataFrame) -> np.ndarray:
    """The [N, 15] float32 label matrix of an index frame, in LABELS order."""
    return index[list(LABELS)].to_numpy(dtype=np.float32)
