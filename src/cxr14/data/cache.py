"""The 224 px cache: the contract between image I/O and compute.

    build_cache(frame, labels, images, cache_dir=Path("data/cache"), size=224, workers=0)
    images, index = open_split(Path("data/cache"), "train")   # uint8 memmap [N, S, S], DataFrame
    check_cache_size(Path("data/cache"), image_size=128, preprocess_size=224)  # before training on it

Each PNG is decoded exactly once, here, in parallel, resized with area interpolation and
stored as grayscale uint8 in one `<split>.npy` per split (memory-mapped by training), beside
`<split>.csv` holding the image id, patient id and the 15 multi-hot labels in LABELS order,
then the subgroup attributes `age`, `sex`, `view`, `follow_up` (cxr14.data.attributes: an empty
age/follow_up cell or "unknown" is an unknown value; cache.json counts them per split under
`unknown_attributes`; :func:`split_attributes` reads them, also from caches made before them).
Output is byte-identical for the same inputs and written atomically (staging folder + rename);
an interrupted run resumes from its staging folder. Memory stays bounded at any scale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr14.data.attributes import ATTRIBUTE_COLUMNS, UNKNOWN, count_unknown
from cxr14.data.images import ImageDecodeError as ImageDecodeError  # raised by _decode; importable from here as before
from cxr14.data.images import read_bitmap, resize_area, to_gray8
from cxr14.data.parallel import opencv_single_threaded
from cxr14.errors import Cxr14Error, InputDataError, MissingInputError
from cxr14.io import atomic_write_json, atomic_write_text, progress
from cxr14.labels import LABELS

log = logging.getLogger(__name__)

CHUNK = 64  # images per worker task: amortises process overhead, bounds memory per task
PROGRESS_SAVE_SECONDS = 2.0  # how often resumable progress is recorded (at most this much work is redone)


class CacheMismatchError(Cxr14Error, ValueError):
    """The cache on disk does not match the settings a stage is about to use it with."""


def decode_and_resize(path: Path, size: int) -> np.ndarray:
    """Read one radiograph as 8-bit grayscale and resize it to `size` x `size` (area filter)."""
    return _decode(path, size)[0]


def _decode(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """(image, converted): 16-bit and RGB(A) PNGs exist in the NIH set; they become 8-bit gray.

    The conversion is cxr14.data.images' (read_bitmap, to_gray8, resize_area), which `cxr14
    predict` uses too, so a new PNG is read exactly as the training images were.
    """
    image, converted = to_gray8(read_bitmap(path), path)
    return resize_area(image, size), converted


def _decode_chunk(args: tuple[str, int, list[str], int]) -> int:
    """Worker: decode a block of PNGs straight into rows [start, start + len) of the array file.

    Writing in the worker (instead of sending 3 MB of pixels back through a pipe) leaves the
    parent nothing to do but bookkeeping, so every core decodes. Returns the converted count.
    """
    array_path, start, paths, size = args
    array = np.load(array_path, mmap_mode="r+")
    converted = 0
    for offset, path in enumerate(paths):
        array[start + offset], was_converted = _decode(Path(path), size)
        converted += was_converted
    array.flush()
    del array
    return converted


def _bounded_map(pool: ProcessPoolExecutor, function, items: list, window: int) -> Iterator:
    """pool.map in order, but with at most `window` tasks in flight, so memory stays bounded."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def build_cache(
    metadata: pd.DataFrame,
    labels: np.ndarray,
    images: Mapping[str, str | os.PathLike],
    cache_dir: Path,
    size: int,
    workers: int = 0,
) -> dict:
    """Write one memory-mapped array and one index per split into `cache_dir`.

    Work happens in `.<cache_dir>.partial/` beside it, which becomes `cache_dir` only when every
    split is complete. Progress is recorded there after each flushed block, so an interrupted
    run (kill, corrupt PNG fixed afterwards) resumes where it stopped when the inputs are the
    same. Memory stays bounded: blocks go straight into the memory-mapped arrays.

    Args:
        metadata: rows with image_id, patient_id, split, and the attribute columns of
            cxr14.data.metadata.Metadata (age, sex, view, follow_up; absent ones are unknown).
        labels: uint8 [N, 15] aligned with `metadata`.
        images: image id -> its PNG, for every row of `metadata` (see
            cxr14.data.metadata.ImageFiles, whose `checked_paths` also verifies NIH files).
        cache_dir: destination; replaced atomically.
        size: output side in pixels.
        workers: processes (0 = all cores).

    Returns:
        A summary (images per split, size, converted images, per split the rows whose
        attribute is unknown: {"unknown_attributes": {split: {"age": n, "sex": n, "view": n,
        "follow_up": n}}}) also written to `cache_dir/cache.json`.
    """
    workers = workers or os.cpu_count() or 1
    plan = {}
    for split in ("train", "val", "test"):
        mask = (metadata["split"] == split).to_numpy()
        rows = metadata.loc[mask].reset_index(drop=True)
        # Sorted image ids give the same cache bytes whatever order the CSV had.
        order = np.argsort(rows["image_id"].to_numpy(), kind="stable")
        plan[split] = (rows.iloc[order].reset_index(drop=True), labels[mask][order])
    missing = [image_id for image_id in metadata["image_id"] if image_id not in images]
    if missing:
        raise InputDataError(f"{len(missing)} image(s) of the metadata have no file, e.g. {missing[0]!r}")
    paths = {image_id: os.fspath(images[image_id]) for image_id in metadata["image_id"]}
    with opencv_single_threaded():  # one decode per process; the pool gives the parallelism
        return _build_cache(plan, paths, Path(cache_dir), size, workers)


def _fingerprint(plan: dict, paths: dict[str, str], size: int) -> str:
    digest = hashlib.sha256(f"{size}".encode())
    for split, (rows, _) in plan.items():
        digest.update(f"|{split}:".encode() + "\n".join(f"{i}\t{paths[i]}" for i in rows["image_id"]).encode())
    return digest.hexdigest()


def _build_cache(plan: dict, image_paths: dict[str, str], cache_dir: Path, size: int, workers: int) -> dict:
    partial = cache_dir.parent / f".{cache_dir.name}.partial"
    state_path = partial / "progress.json"
    fingerprint = _fingerprint(plan, image_paths, size)
    state: dict[str, Any] = {"fingerprint": fingerprint, "done": {}, "converted": {}}
    if state_path.is_file():
        previous = json.loads(state_path.read_text(encoding="utf-8"))
        if previous.get("fingerprint") == fingerprint:
            state = previous
            log.info("resuming preprocess from %s (%s)", partial, state["done"])
    if state["done"] == {} and partial.exists():
        shutil.rmtree(partial)  # stale work for other inputs
    partial.mkdir(parents=True, exist_ok=True)

    summary: dict = {"size": size, "splits": {}, "converted_to_8bit_gray": 0, "unknown_attributes": {}}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for split, (rows, label_matrix) in plan.items():
            array_path = partial / f"{split}.npy"
            done = int(state["done"].get(split, 0))
            shape = (len(rows), size, size)
            if not done:  # create the file (header + zeros) that the workers fill
                created = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=shape)
                created.flush()
                del created
            paths = [image_paths[image_id] for image_id in rows["image_id"]]
            # Small sets get small blocks so that every worker has work until the end.
            chunk = max(1, min(CHUNK, -(-(len(paths) - done) // (8 * workers))))
            chunks = [
                (str(array_path), start, paths[start : start + chunk], size) for start in range(done, len(paths), chunk)
            ]
            converted = int(state["converted"].get(split, 0))
            last_saved = time.monotonic()
            with progress(total=len(paths), initial=done, desc=f"preprocess {split}", unit="img") as bar:
                # In order: `done` is always a prefix of rows that workers have written and flushed.
                for (_, _, block, _), block_converted in zip(
                    chunks, _bounded_map(pool, _decode_chunk, chunks, window=4 * workers)
                ):
                    done += len(block)
                    converted += block_converted
                    state["done"][split], state["converted"][split] = done, converted
                    if time.monotonic() - last_saved > PROGRESS_SAVE_SECONDS or done == len(paths):
                        atomic_write_json(state_path, state)
                        last_saved = time.monotonic()
                    bar.update(len(block))
            index = _index_frame(rows, label_matrix)
            atomic_write_text(partial / f"{split}.csv", index.to_csv(index=False))
            summary["splits"][split] = len(rows)
            summary["unknown_attributes"][split] = count_unknown(index)
            summary["converted_to_8bit_gray"] += converted
            log.info("cache %s: %d images at %d px", split, len(rows), size)
    if summary["converted_to_8bit_gray"]:
        log.info("%d RGB(A) or 16-bit image(s) converted to 8-bit gray", summary["converted_to_8bit_gray"])
    atomic_write_json(partial / "cache.json", summary)
    state_path.unlink()
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    os.replace(partial, cache_dir)
    return summary


def _index_frame(rows: pd.DataFrame, label_matrix: np.ndarray) -> pd.DataFrame:
    """A split's index: image_id, patient_id, the 15 labels, then ATTRIBUTE_COLUMNS (unknown if absent)."""
    index = pd.DataFrame({"image_id": rows["image_id"], "patient_id": rows["patient_id"]})
    for column, name in enumerate(LABELS):
        index[name] = label_matrix[:, column]
    for name in ATTRIBUTE_COLUMNS:
        if name in ("age", "follow_up"):
            values = rows[name] if name in rows else pd.Series(pd.NA, index=rows.index)
            index[name] = values.astype("Int64")
        else:
            index[name] = rows[name].astype(str) if name in rows else UNKNOWN
    return index


def split_attributes(index: pd.DataFrame) -> pd.DataFrame:
    """The subgroup attributes of an index frame from :func:`open_split`, one row per image.

    Columns age, follow_up (Int64, <NA> when unknown), sex and view (str, "unknown" when
    unknown); a cache written before these columns existed gives all unknown.
    """
    out = pd.DataFrame(index=index.index)
    for name in ATTRIBUTE_COLUMNS:
        if name not in index:
            out[name] = pd.Series(pd.NA, index=index.index, dtype="Int64") if name in ("age", "follow_up") else UNKNOWN
        elif name in ("age", "follow_up"):
            out[name] = pd.to_numeric(index[name], errors="coerce").astype("Int64")
        else:
            out[name] = index[name].fillna(UNKNOWN).astype(str)
    return out


def open_split(cache_dir: Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Memory-map one split's images and read its index (labels in LABELS order)."""
    array_path = Path(cache_dir) / f"{split}.npy"
    index_path = Path(cache_dir) / f"{split}.csv"
    for path in (array_path, index_path):
        if not path.is_file():
            raise MissingInputError(f"{path}: cache file missing; run the preprocess stage (dvc repro preprocess)")
    images = np.load(array_path, mmap_mode="r")
    # sex and view as written ("NA" is not missing); an empty age or follow_up cell is unknown (NaN)
    index = pd.read_csv(
        index_path,
        dtype={"image_id": str, "patient_id": str, "sex": str, "view": str},
        keep_default_na=False,
        na_values={"age": [""], "follow_up": [""]},
    )
    if len(index) != len(images):
        raise CacheMismatchError(
            f"{cache_dir}: {split}.csv has {len(index)} rows but {split}.npy has {len(images)} images"
        )
    return images, index


def split_labels(index: pd.DataFrame) -> np.ndarray:
    """The [N, 15] float32 label matrix of an index frame, in LABELS order."""
    return index[list(LABELS)].to_numpy(dtype=np.float32)


def cache_size(cache_dir: Path) -> int:
    """The side in pixels of the images in `cache_dir`, as its cache.json records it."""
    summary_path = Path(cache_dir) / "cache.json"
    if not summary_path.is_file():
        raise MissingInputError(f"{summary_path}: cache file missing; run the preprocess stage (dvc repro preprocess)")
    try:
        return int(json.loads(summary_path.read_text(encoding="utf-8"))["size"])
    except (ValueError, KeyError, TypeError) as error:
        raise CacheMismatchError(
            f"{summary_path}: unreadable cache summary ({error!r}); rebuild the cache with `dvc repro -f preprocess`"
        ) from None


def check_cache_size(
    cache_dir: Path,
    image_size: int,
    preprocess_size: int | None = None,
    *,
    model: str | None = None,
    source: str = "params.yaml",
) -> int:
    """Refuse a cache that the settings would silently misuse; return its size.

    Call it before any computation in a stage that feeds the cache to a model: the checks in
    cxr14.config compare params with params, this one compares them with the cache actually read.

    Args:
        cache_dir: the cache folder (its cache.json records the size it was built at).
        image_size: the resolution the model sees (after per-model overrides).
        preprocess_size: ``preprocess.size``; when given, the cache must have been built at it
            (otherwise the cache is stale: built for other params than the ones recorded with the run).
        model: whose image_size it is (train.overrides.<model>.image_size may set it), for the message.
        source: the params file, for the message.

    Raises:
        CacheMismatchError: the cache is stale, or smaller than `image_size` (the model would see
            upsampled images); the message names cache.json, both sizes and the fix.
        FileNotFoundError: no cache.json (the cache was never built).
    """
    size = cache_size(cache_dir)
    summary_path = Path(cache_dir) / "cache.json"
    if preprocess_size is not None and preprocess_size != size:
        raise CacheMismatchError(
            f"{summary_path}: the cache was built at {size} px but preprocess.size is {preprocess_size} in "
            f"{source}: the cache is stale; rebuild it with `dvc repro preprocess` (or set preprocess.size "
            f"back to {size})"
        )
    if image_size > size:
        key = "train.image_size" if model is None else f"train.image_size (or train.overrides.{model}.image_size)"
        raise CacheMismatchError(
            f"{summary_path}: the cache holds {size} px images but {key} is {image_size} in {source}: "
            f"the model would see upsampled {size} px images; lower it to at most {size}, or raise "
            f"preprocess.size to {image_size} and rebuild the cache with `dvc repro preprocess`"
        )
    return size


def check_cache_for_trained_model(cache_dir: Path, model_dir: Path) -> int | None:
    """check_cache_size against the image size a trained model recorded in `model_dir/train.json`.

    For stages that run a trained model on the cache (evaluate, explain): a cache rebuilt smaller
    since training would otherwise be upsampled to the model's input size without a word. Returns
    the cache size, or None when there is no train.json to compare with (loading the model then
    reports the missing training).
    """
    summary_path = Path(model_dir) / "train.json"
    if not summary_path.is_file():
        return None
    try:
        image_size = int(json.loads(summary_path.read_text(encoding="utf-8"))["image_size"])
    except (ValueError, KeyError, TypeError):
        return None  # an older or partial record: nothing reliable to compare with
    size = cache_size(cache_dir)
    if image_size > size:
        raise CacheMismatchError(
            f"{Path(cache_dir) / 'cache.json'}: the cache holds {size} px images but the model in {model_dir} was "
            f"trained at {image_size} px ({summary_path}): it would see upsampled {size} px images; rebuild the "
            f"cache with preprocess.size >= {image_size} (`dvc repro preprocess`), or retrain the model with "
            f"train.image_size <= {size}"
        )
    return size
