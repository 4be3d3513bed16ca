"""Read and validate a Data_Entry_2017.csv-style metadata file, and find its images.

    table = load_metadata(Path("data/raw"), missing_images="error")
    table.frame["patient_id"]     # str, normalised once here
    table.labels                  # uint8 [N, 15] in the order of cxr14.labels.LABELS
    table.images.checked_path("00000001_000.png")   # where that image's file is

Validation stops with a message naming the file and row (unknown finding, missing column,
duplicate image, missing image unless the policy says skip) so bad input never reaches training.
The file itself must be readable: an empty file, a header without rows and a byte that is not
UTF-8 each stop with one line naming the file (and the line) and the fix (:func:`read_table`).

`Patient ID` must be a positive integer written as NIH writes it (`1`, `30805`): after stripping
spaces it must match `[1-9][0-9]*`. Anything else (empty, `abc`, `1.0`, `0`, `-3`) is refused
rather than guessed at, and so is `00012`: normalising it to `12` could merge two patients a tool
wrote differently, and the split by patient must never see one patient under two ids (an empty
id once sent one patient's image to val while the patient's other images went to train).

Where the images are is answered here, once, for every reader (:func:`image_files`). The fetch
stage's folder holds either the images themselves, `images/*.png` (the phantom), or the manifest
`images.csv` (NIH data): one row per image of the user's download with its absolute path, size
and modification time as fetch saw them (`Image Index,path,bytes,mtime_ns`). DVC tracks the
manifest, not the 42 GB it points to, so a reader that opens an image first compares the file
with its row and stops on any difference (:class:`ImageChangedError`).

The subgroup attributes (:func:`subgroup_attributes`) are parsed here too, as the columns `age`,
`sex`, `view` and `follow_up` of the table. They never stop a stage: a value that is not what NIH
writes becomes unknown for its row (<NA> for the integers, "unknown" for the strings), is counted
(:attr:`Metadata.unknown_attributes`) and is named in one warning line per attribute (file, first
lines, values, what was expected). An absent column makes the attribute unknown for every row.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from cxr14.data.attributes import ATTRIBUTE_COLUMNS, UNKNOWN, count_unknown
from cxr14.errors import Cxr14Error
from cxr14.labels import NUM_CLASSES, encode_findings

log = logging.getLogger(__name__)

METADATA_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
IMAGES_FOLDER = "images"  # the images themselves (the phantom)
IMAGES_MANIFEST = "images.csv"  # or where they are (NIH data)
MANIFEST_COLUMNS = ("Image Index", "path", "bytes", "mtime_ns")
REFETCH = "re-run `dvc repro -f fetch` to record the image folder as it is now"
METADATA_FIX = (
    "re-download Data_Entry_2017_v2020.csv from NIH (https://nihcc.app.box.com/v/ChestXray-NIHCC) "
    "and re-run the fetch stage (dvc repro -f fetch)"
)
MANIFEST_FIX = "the fetch stage writes this file: re-run it (dvc repro -f fetch)"
PATIENT_ID = re.compile(r"[1-9][0-9]*")
SHOWN_BAD_ROWS = 3  # bad Patient IDs quoted in the message; the rest are counted
MAX_AGE = 120  # older ages are typos (NIH's v1 file had ages of 148-414 years)
# attribute -> (metadata column, what a valid cell is: for the warning)
ATTRIBUTE_SOURCES = {
    "age": ("Patient Age", f"a plain integer number of years from 0 to {MAX_AGE} (e.g. 58)"),
    "sex": ("Patient Gender", "M or F"),
    "view": ("View Position", "a view such as PA or AP"),
    "follow_up": ("Follow-up #", "a non-negative integer (0 = the patient's first image)"),
}


class MetadataError(Cxr14Error, ValueError):
    """The metadata file or the image folder does not match what the pipeline needs."""


class ImageChangedError(MetadataError):
    """An image listed in the manifest is missing, or its size or mtime differs from the manifest."""


@dataclass(frozen=True)
class ImageFiles:
    """Where the images of a fetch output are (from :func:`image_files`).

    Attributes:
        source: the manifest (`<raw>/images.csv`) or the folder (`<raw>/images`) they come from.
        paths: image name -> path of its file.
        recorded: for a manifest, image name -> (bytes, mtime_ns) as fetch recorded them; empty
            for a folder, whose files DVC hashes itself.
    """

    source: Path
    paths: dict[str, str]
    recorded: dict[str, tuple[int, int]]

    def checked_path(self, name: str) -> str:
        """The path of image `name`, after checking that the file is still the one fetch saw.

        Raises:
            KeyError: `name` is not an image of this fetch output.
            ImageChangedError: a manifest image whose file is missing, or whose size or mtime
                differs from the manifest; the message names the file and how to fix it.
        """
        path = self.paths[name]
        expected = self.recorded.get(name)
        if expected is None:
            return path
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise ImageChangedError(
                f"{path}: image {name} is missing; it was there when fetch wrote {self.source}. Put it back, "
                f"or {REFETCH}"
            ) from None
        found = (stat.st_size, stat.st_mtime_ns)
        if found != expected:
            what = (
                f"{expected[0]:,} bytes then, {found[0]:,} now"
                if found[0] != expected[0]
                else f"modified {_when(found[1])}, recorded {_when(expected[1])}"
            )
            raise ImageChangedError(
                f"{path}: image {name} changed since fetch wrote {self.source} ({what}); {REFETCH} "
                f"(the stages that read the images then re-run)"
            )
        return path

    def checked_paths(self, names: Iterable[str]) -> dict[str, str]:
        """name -> path for `names`, each checked as in :meth:`checked_path`."""
        return {name: self.checked_path(name) for name in names}


def image_files(raw_dir: Path) -> ImageFiles:
    """Where every image of the fetch output `raw_dir` is: the one answer all readers use.

    `raw_dir/images.csv` (NIH data: the manifest) is read when present, else the PNGs of
    `raw_dir/images/` (the phantom) are listed; dot files (macOS `._` forks) are never images.

    Raises:
        MetadataError: neither exists, both exist, or the manifest is malformed.
    """
    raw_dir = Path(raw_dir)
    manifest, folder = raw_dir / IMAGES_MANIFEST, raw_dir / IMAGES_FOLDER
    if manifest.is_file():
        if folder.exists():
            raise MetadataError(
                f"{raw_dir} holds both {IMAGES_MANIFEST} and {IMAGES_FOLDER}/, so which images "
                f"count is unclear; re-run the fetch stage (dvc repro -f fetch)"
            )
        return _read_manifest(manifest)
    if not folder.is_dir():
        raise MetadataError(
            f"{raw_dir}: no {IMAGES_MANIFEST} and no {IMAGES_FOLDER}/ folder; run the fetch stage (dvc repro fetch)"
        )
    with os.scandir(folder) as entries:
        paths = {
            entry.name: entry.path
            for entry in entries
            if entry.name.endswith(".png") and not entry.name.startswith(".") and entry.is_file()
        }
    return ImageFiles(folder, paths, {})


def write_manifest(path: Path, images: Iterable[tuple[str, str, int, int]]) -> int:
    """Write the manifest read by :func:`image_files`: (name, absolute path, bytes, mtime_ns) rows.

    Rows are sorted by name, so the same files give the same bytes (and the same DVC hash).
    Returns the number of rows.
    """
    rows = sorted(images)
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    return len(rows)


def _when(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9).isoformat(sep=" ", timespec="microseconds")


def read_table(path: Path, fix: str) -> pd.DataFrame:
    """Read the CSV `path` as strings (no NA guessing), refusing what would fail obscurely later.

    Every cell is a str, an empty or absent cell is "" and blank lines are dropped; the frame's index is
    kept so that `index + 2` is the line an editor shows (header = line 1). A UTF-8 byte-order
    mark is accepted.

    Raises:
        MetadataError: the file is empty, has a header but no rows, is not UTF-8 (the message
            names the line and byte offset) or is not parseable CSV; each message names `path`
            and ends with `fix`.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise MetadataError(
            f"{path} line {line}: byte 0x{data[error.start]:02x} at offset {error.start} is not UTF-8; "
            f"save the file as UTF-8, or {fix}"
        ) from None
    if not text.strip():
        raise MetadataError(f"{path} is empty ({len(data)} bytes); {fix}")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise MetadataError(f"{path}: not a readable CSV ({' '.join(str(error).split())}); {fix}") from None
    frame = frame.fillna("")  # the cells a short row lacks
    frame = frame.loc[~frame.apply(lambda column: column.str.strip().eq("")).all(axis=1)]
    if frame.empty:
        raise MetadataError(f"{path}: a header line but no rows; {fix}")
    return frame


def _read_manifest(path: Path) -> ImageFiles:
    frame = read_table(path, MANIFEST_FIX)
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise MetadataError(
            f"{path}: missing column(s) {missing}; expected {','.join(MANIFEST_COLUMNS)}. "
            f"The fetch stage writes this file: re-run it (dvc repro -f fetch)"
        )
    try:
        sizes = frame["bytes"].astype("int64").tolist()
        mtimes = frame["mtime_ns"].astype("int64").tolist()
    except (TypeError, ValueError) as error:
        raise MetadataError(
            f"{path}: bytes and mtime_ns must be integers ({error}); re-run the fetch stage (dvc repro -f fetch)"
        ) from error
    names = frame["Image Index"].tolist()
    paths = dict(zip(names, frame["path"].tolist()))
    if len(paths) != len(names):
        duplicate = frame["Image Index"][frame["Image Index"].duplicated()].iloc[0]
        raise MetadataError(f"{path}: image {duplicate!r} is listed twice; re-run the fetch stage (dvc repro -f fetch)")
    return ImageFiles(path, paths, dict(zip(names, zip(sizes, mtimes))))


@dataclass(frozen=True)
class Metadata:
    """Validated metadata: one row per usable image, labels aligned with the rows."""

    # columns: image_id, patient_id, finding_labels, view_position (as written) and ATTRIBUTE_COLUMNS:
    # age, follow_up (Int64, <NA> when unknown), sex ("M"/"F"/"unknown"), view ("PA", "AP", ... /"unknown")
    frame: pd.DataFrame
    labels: np.ndarray  # uint8 [N, 15]
    images: ImageFiles
    source_csv: Path
    dropped_missing: int
    orphan_images: int = 0
    # attribute -> rows of `frame` where it is unknown (bad or missing cell, or no column)
    unknown_attributes: dict[str, int] = field(default_factory=dict)


def find_metadata_csv(raw_dir: Path) -> Path:
    for name in METADATA_NAMES:
        if (raw_dir / name).is_file():
            return raw_dir / name
    raise MetadataError(f"{raw_dir}: no metadata file (expected one of {', '.join(METADATA_NAMES)})")


def load_metadata(raw_dir: Path, missing_images: str = "error", orphan_images: str = "ignore") -> Metadata:
    """Load `raw_dir/Data_Entry_2017.csv` and check it against the images of :func:`image_files`.

    The files themselves are not opened here (and a manifest's are not stat'ed): the readers
    that open them check them.

    Args:
        raw_dir: the fetch stage's folder (metadata CSV + images/ or images.csv).
        missing_images: "error" stops at the first row whose image is absent; "skip" drops
            such rows and logs how many.
        orphan_images: images without a metadata row: "ignore" counts and logs them, "error"
            stops (a metadata file that does not match its images).
    """
    raw_dir = Path(raw_dir)
    csv_path = find_metadata_csv(raw_dir)
    images = image_files(raw_dir)
    frame = read_table(csv_path, METADATA_FIX)
    missing_columns = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing_columns:
        raise MetadataError(f"{csv_path}: missing required column(s) {missing_columns}")
    # line = index + 2: the header is line 1 (read_table keeps the index across blank lines), so
    # every message matches what an editor shows
    lines = (frame.index + 2).to_numpy()
    _check_patient_ids(csv_path, frame, lines)
    _check_unique_images(csv_path, frame)
    labels = np.zeros((len(frame), NUM_CLASSES), dtype=np.uint8)
    for row, (cell, image) in enumerate(zip(frame["Finding Labels"], frame["Image Index"])):
        labels[row] = encode_findings(cell, where=f"{csv_path} line {lines[row]} ({image})")
    present, dropped, orphans = _match_images(csv_path, frame, lines, images, missing_images, orphan_images)
    attributes = subgroup_attributes(csv_path, frame, lines).loc[present]
    table = pd.concat([_metadata_table(frame.loc[present]), attributes.reset_index(drop=True)], axis=1)
    unknown = count_unknown(table)
    log.info("metadata: %d images, %d patients from %s", len(table), table["patient_id"].nunique(), csv_path)
    return Metadata(table, labels[present], images, csv_path, dropped, orphans, unknown)


def _check_unique_images(csv_path: Path, frame: pd.DataFrame) -> None:
    """Refuse an Image Index that appears on more than one row, naming its first line."""
    duplicated = frame["Image Index"].duplicated(keep=False)
    if duplicated.any():
        first = frame.index[duplicated][0]
        raise MetadataError(
            f"{csv_path} line {first + 2}: image {frame.at[first, 'Image Index']!r} "
            f"appears {int(duplicated.sum())} times in total"
        )


def _match_images(
    csv_path: Path, frame: pd.DataFrame, lines: np.ndarray, images: ImageFiles, missing_images: str, orphan_images: str
) -> tuple[np.ndarray, int, int]:
    """Rows whose image exists (mask), rows without an image, images without a row.

    Applies `missing_images` / `orphan_images` as :func:`load_metadata` describes.
    """
    on_disk = images.paths.keys()
    present = frame["Image Index"].isin(on_disk).to_numpy()
    dropped = int((~present).sum())
    if dropped and missing_images == "error":
        row = int(np.flatnonzero(~present)[0])
        raise MetadataError(
            f"{csv_path} line {lines[row]}: image {frame['Image Index'].iat[row]!r} not found in "
            f"{images.source} ({dropped} row(s) in all have no image; set data.missing_images: skip "
            "to drop them)"
        )
    if dropped:
        log.warning("dropped %d metadata row(s) whose image is missing from %s", dropped, images.source)
    orphans = len(on_disk) - int(present.sum())
    if orphans and orphan_images == "error":
        example = sorted(on_disk - set(frame["Image Index"]))[0]
        raise MetadataError(
            f"{images.source}: {orphans} image(s) have no row in {csv_path}, e.g. {example!r} "
            "(set data.orphan_images: ignore to leave them out)"
        )
    if orphans:
        log.info("%d image(s) in %s have no metadata row and are ignored", orphans, images.source)
    return present, dropped, orphans


def _metadata_table(kept: pd.DataFrame) -> pd.DataFrame:
    """The kept CSV rows as :class:`Metadata`'s table (image_id, patient_id, finding_labels, view_position)."""
    return pd.DataFrame(
        {
            "image_id": kept["Image Index"].to_numpy(),
            "patient_id": kept["Patient ID"].str.strip().to_numpy(),
            "finding_labels": kept["Finding Labels"].to_numpy(),
            "view_position": kept.get("View Position", pd.Series([""] * len(kept))).to_numpy(),
        }
    )


def _check_patient_ids(csv_path: Path, frame: pd.DataFrame, lines: np.ndarray) -> None:
    """Refuse any Patient ID that is not a positive integer as NIH writes it (module docstring)."""
    ids = frame["Patient ID"].str.strip()
    bad = np.flatnonzero(~ids.str.fullmatch(PATIENT_ID.pattern).to_numpy(dtype=bool))
    if not len(bad):
        return
    shown = ", ".join(
        f"line {lines[row]} ({frame['Image Index'].iat[row]}) {frame['Patient ID'].iat[row]!r}"
        for row in bad[:SHOWN_BAD_ROWS]
    )
    more = f" and {len(bad) - SHOWN_BAD_ROWS} more" if len(bad) > SHOWN_BAD_ROWS else ""
    raise MetadataError(
        f"{csv_path}: {len(bad)} row(s) have a Patient ID that is not a positive integer: {shown}{more}. "
        f"NIH writes it as 1, 30805, ... and the split by patient needs it to keep a patient's images "
        f"together; write the patient's number in those cells, or {METADATA_FIX}"
    )


def subgroup_attributes(csv_path: Path, frame: pd.DataFrame, lines: np.ndarray) -> pd.DataFrame:
    """The subgroup attributes of every row of `frame` (the metadata CSV as :func:`read_table` reads it).

    Columns (index of `frame`): `age` and `follow_up` (pandas Int64, <NA> when unknown), `sex`
    ("M", "F" or "unknown") and `view` (the View Position upper-cased, e.g. "PA", "AP", "LL";
    "unknown" when empty). Accepted, after stripping spaces: an age of digits only, at most
    MAX_AGE ("58" and "058" are 58; "58Y", "-3", "", "abc", "130" are unknown); a sex of M or F
    in either case; a follow-up number of digits only. Anything else is unknown, and each
    attribute with unknown rows is logged once (a warning naming `csv_path`, the first
    SHOWN_BAD_ROWS lines by `lines` with their values, the count and what a valid value is).
    """
    cells = {name: _column(frame, source) for name, (source, _) in ATTRIBUTE_SOURCES.items()}
    out = pd.DataFrame(index=frame.index)
    for name in ("age", "follow_up"):
        text = cells[name].str.strip()
        valid = text.str.fullmatch(r"[0-9]{1,9}")
        numbers = pd.Series(pd.NA, index=frame.index, dtype="Int64")
        numbers[valid] = text[valid].astype("int64")
        if name == "age":
            numbers[numbers > MAX_AGE] = pd.NA
        out[name] = numbers
    sex = cells["sex"].str.strip().str.upper()
    out["sex"] = sex.where(sex.isin(("M", "F")), UNKNOWN)
    view = cells["view"].str.strip().str.upper()
    out["view"] = view.where(view != "", UNKNOWN)
    for name, (source, expected) in ATTRIBUTE_SOURCES.items():
        if source not in frame.columns:
            log.warning("%s: no %r column; %s is unknown for all %d rows", csv_path, source, name, len(frame))
            continue
        unknown = out[name].isna() if name in ("age", "follow_up") else out[name] == UNKNOWN
        _warn_unknown(csv_path, frame[source], lines, unknown.to_numpy(dtype=bool), name, expected)
    return out[list(ATTRIBUTE_COLUMNS)]


def _column(frame: pd.DataFrame, source: str) -> pd.Series:
    return frame[source] if source in frame.columns else pd.Series("", index=frame.index, dtype=object)


def _warn_unknown(csv_path: Path, cells: pd.Series, lines: np.ndarray, unknown: np.ndarray, name: str, expected: str):
    bad = np.flatnonzero(unknown)
    if not len(bad):
        return
    shown = ", ".join(f"line {lines[row]} {cells.iat[row]!r}" for row in bad[:SHOWN_BAD_ROWS])
    more = f" and {len(bad) - SHOWN_BAD_ROWS} more" if len(bad) > SHOWN_BAD_ROWS else ""
    log.warning(
        "%s: %d row(s) have a %r that is not %s: %s%s; %s is unknown for them (counted, left out of its subgroups)",
        csv_path,
        len(bad),
        cells.name,
        expected,
        shown,
        more,
        name,
    )
