"""Read and validate a Data_Entry_2017.csv-style metadata file.

    table = load_metadata(Path("data/raw"), missing_images="error")
    table.frame["patient_id"]     # str, normalised once here
    table.labels                  # uint8 [N, 15] in the order of cxr14.labels.LABELS

Validation stops with a message naming the file and row (unknown finding, missing column,
duplicate image, missing image unless the policy says skip) so bad input never reaches training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr14.labels import NUM_CLASSES, encode_findings

log = logging.getLogger(__name__)

METADATA_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


class MetadataError(ValueError):
    """The metadata file or the image folder does not match what the pipeline needs."""


@dataclass(frozen=True)
class Metadata:
    """Validated metadata: one row per usable image, labels aligned with the rows."""

    frame: pd.DataFrame  # columns: image_id, patient_id, finding_labels, view_position
    labels: np.ndarray  # uint8 [N, 15]
    images_dir: Path
    source_csv: Path
    dropped_missing: int
    orphan_images: int = 0


def find_metadata_csv(raw_dir: Path) -> Path:
    for name in METADATA_NAMES:
        if (raw_dir / name).is_file():
            return raw_dir / name
    raise MetadataError(f"{raw_dir}: no metadata file (expected one of {', '.join(METADATA_NAMES)})")


def load_metadata(raw_dir: Path, missing_images: str = "error", orphan_images: str = "ignore") -> Metadata:
    """Load `raw_dir/Data_Entry_2017.csv` and check it against `raw_dir/images/`.

    Args:
        raw_dir: folder in the NIH layout (images/ + metadata CSV).
        missing_images: "error" stops at the first row whose image is absent; "skip" drops
            such rows and logs how many.
        orphan_images: images without a metadata row: "ignore" counts and logs them, "error"
            stops (a metadata file that does not match its images).
    """
    raw_dir = Path(raw_dir)
    csv_path = find_metadata_csv(raw_dir)
    images_dir = raw_dir / "images"
    if not images_dir.is_dir():
        raise MetadataError(f"{images_dir}: image folder not found")
    frame = pd.read_csv(csv_path, dtype={"Patient ID": str, "Image Index": str}, keep_default_na=False)
    missing_columns = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing_columns:
        raise MetadataError(f"{csv_path}: missing required column(s) {missing_columns}")
    duplicated = frame["Image Index"].duplicated(keep=False)
    if duplicated.any():
        first = frame.index[duplicated][0]
        raise MetadataError(
            f"{csv_path} line {first + 2}: image {frame.at[first, 'Image Index']!r} "
            f"appears {int(duplicated.sum())} times in total"
        )
    labels = np.zeros((len(frame), NUM_CLASSES), dtype=np.uint8)
    for row, (cell, image) in enumerate(zip(frame["Finding Labels"], frame["Image Index"])):
        # line = row + 2: the header is line 1, so the message matches what an editor shows
        labels[row] = encode_findings(cell, where=f"{csv_path} line {row + 2} ({image})")

    on_disk = {path.name for path in images_dir.glob("*.png")}
    present = frame["Image Index"].isin(on_disk).to_numpy()
    dropped = int((~present).sum())
    if dropped and missing_images == "error":
        row = int(np.flatnonzero(~present)[0])
        raise MetadataError(
            f"{csv_path} line {row + 2}: image {frame.at[row, 'Image Index']!r} not found in "
            f"{images_dir} ({dropped} row(s) in all have no image; set data.missing_images: skip "
            "to drop them)"
        )
    if dropped:
        log.warning("dropped %d metadata row(s) whose image is missing from %s", dropped, images_dir)
    orphans = len(on_disk) - int(present.sum())
    if orphans and orphan_images == "error":
        example = sorted(on_disk - set(frame["Image Index"]))[0]
        raise MetadataError(
            f"{images_dir}: {orphans} image(s) have no row in {csv_path}, e.g. {example!r} "
            "(set data.orphan_images: ignore to leave them out)"
        )
    if orphans:
        log.info("%d image(s) in %s have no metadata row and are ignored", orphans, images_dir)

    kept = frame.loc[present]
    table = pd.DataFrame(
        {
            "image_id": kept["Image Index"].to_numpy(),
            "patient_id": kept["Patient ID"].str.strip().to_numpy(),
            "finding_labels": kept["Finding Labels"].to_numpy(),
            "view_position": kept.get("View Position", pd.Series([""] * len(kept))).to_numpy(),
        }
    )
    log.info("metadata: %d images, %d patients from %s", len(table), table["patient_id"].nunique(), csv_path)
    return Metadata(table, labels[present], images_dir, csv_path, dropped, orphans)
