"""Radiologist labels for four findings, in the format Google released (Majkowska et al. 2020).

    labels = read_expert_labels(Path("data/raw/expert_labels.csv"), known_images, test_patients)
    labels.frame          # image_id, patient_id, Fracture, Pneumothorax, Airspace opacity, Nodule or mass (0/1)
    labels.outside_test   # rows of images that exist but are not in our test split: ignored, counted

The released CSV holds the NIH metadata columns of each image (`Image Index, Finding Labels,
Follow-up #, Patient ID, Patient Age, Patient Gender, View Position, ...`), then
`Fracture,Pneumothorax,Airspace opacity,Nodule or mass` as `YES`/`NO`, and `Set Id`
(`test`/`val`: the release's own split, which this pipeline only validates). The fetch stage
puts it at `<raw>/expert_labels.csv` (:data:`EXPERT_FILE`): a copy of ``data.nih.expert_labels``
for NIH data, or the phantom's own file with its noiseless truth.

How the NIH classes (and the models' outputs) map onto the four expert findings,
:data:`cxr14.labels.NIH_COMPONENTS` (an image is positive if any component is; a model's score is the maximum
of its components' probabilities):

* Pneumothorax <- Pneumothorax.
* Nodule or mass <- Nodule, Mass: the readers did not separate the two (NIH's cut-off between
  them, about 3 cm, is a size, not a different finding).
* Airspace opacity <- Consolidation, Infiltration, Pneumonia: airspace opacity is alveolar
  filling (by fluid, pus, blood or cells), which is what a report calls consolidation, an
  infiltrate or pneumonia. Edema and Atelectasis are left out: an NIH "Edema" label does not
  say whether the oedema is interstitial or alveolar, and collapse is volume loss, not filling.
* Fracture <- nothing: NIH has no fracture class and the models no fracture output, so it is
  listed without an AUROC (and the phantom draws no fractures: its file says NO everywhere).

Every refusal names the file and the line (header = line 1) and says how to fix the file.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr14.data.metadata import read_table
from cxr14.errors import InputDataError
from cxr14.labels import EXPERT_FINDINGS, NIH_COMPONENTS

EXPERT_FILE = "expert_labels.csv"  # in the fetch stage's output folder
SET_ID = "Set Id"
SET_IDS = ("test", "val")
VALUES = {"YES": 1, "NO": 0}
REQUIRED_COLUMNS = ("Image Index", *EXPERT_FINDINGS, SET_ID)
RELEASED_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    "Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id"
)
FIX = (
    "use the CSV as released (four_findings_expert_labels: NIH metadata columns, the four findings as YES/NO "
    "and Set Id) or set data.nih.expert_labels: null, then re-run the fetch stage"
)
TABLE_COLUMNS = ("image_id", "patient_id", *EXPERT_FINDINGS)  # the expert_labels stage's table


class ExpertLabelsError(InputDataError):
    """The expert-label CSV cannot be used: a missing column, a bad value, a duplicate, an unknown image."""


@dataclass(frozen=True)
class ExpertLabels:
    """The validated expert labels of the images in our test split.

    Attributes:
        frame: one row per covered test image, TABLE_COLUMNS, findings as 0/1, sorted by image.
        rows: data rows in the file.
        outside_test: rows whose image is in the metadata but not in the test split (ignored).
        set_ids: rows per `Set Id` value in the whole file.
    """

    frame: pd.DataFrame
    rows: int
    outside_test: int
    set_ids: dict[str, int]


def empty_table() -> pd.DataFrame:
    """The table with no rows (no expert file): its header only."""
    return pd.DataFrame(
        {column: pd.Series([], dtype=str if column in TABLE_COLUMNS[:2] else "uint8") for column in TABLE_COLUMNS}
    )


def _line(frame: pd.DataFrame, row: int) -> int:
    return int(frame.index[row]) + 2  # read_table keeps the index: header = line 1


def _check_columns(path: Path, frame: pd.DataFrame) -> None:
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise ExpertLabelsError(
            f"{path}: missing column(s) {', '.join(repr(column) for column in missing)}; expected the released "
            f"header {RELEASED_HEADER} (at least {', '.join(REQUIRED_COLUMNS)}); {FIX}"
        )


def _check_values(path: Path, frame: pd.DataFrame) -> np.ndarray:
    """The four findings as uint8 [N, 4]; refuse any cell other than YES/NO, naming it."""
    values = np.zeros((len(frame), len(EXPERT_FINDINGS)), dtype=np.uint8)
    for j, finding in enumerate(EXPERT_FINDINGS):
        cells = frame[finding].str.strip()
        bad = np.flatnonzero(~cells.isin(list(VALUES)).to_numpy())
        if len(bad):
            row = int(bad[0])
            raise ExpertLabelsError(
                f"{path} line {_line(frame, row)}: column {finding!r} holds {frame[finding].iat[row]!r}, expected "
                f"YES or NO ({len(bad)} such cell(s) in this column); {FIX}"
            )
        values[:, j] = cells.map(VALUES).to_numpy(dtype=np.uint8)
    return values


def _check_rows(path: Path, frame: pd.DataFrame, known_images: Collection[str]) -> None:
    """Refuse duplicates (naming both lines), a Set Id other than test/val, an unknown image."""
    images = frame["Image Index"].str.strip()
    duplicated = np.flatnonzero(images.duplicated(keep=False).to_numpy())
    if len(duplicated):
        first = int(duplicated[0])
        second = int(next(row for row in duplicated[1:] if images.iat[row] == images.iat[first]))
        raise ExpertLabelsError(
            f"{path} lines {_line(frame, first)} and {_line(frame, second)}: image {images.iat[first]!r} is listed "
            f"twice; keep one row per image; {FIX}"
        )
    set_ids = frame[SET_ID].str.strip()
    bad = np.flatnonzero(~set_ids.isin(list(SET_IDS)).to_numpy())
    if len(bad):
        row = int(bad[0])
        raise ExpertLabelsError(
            f"{path} line {_line(frame, row)}: {SET_ID} {frame[SET_ID].iat[row]!r} is not one of "
            f"{', '.join(SET_IDS)}; {FIX}"
        )
    unknown = np.flatnonzero(~images.isin(known_images).to_numpy())
    if len(unknown):
        row = int(unknown[0])
        raise ExpertLabelsError(
            f"{path} line {_line(frame, row)}: unknown image {images.iat[row]!r}, not in the metadata "
            f"({len(unknown)} row(s) in all); the file belongs to another data set or metadata version; {FIX}"
        )


def read_expert_labels(path: Path, known_images: Collection[str], test_patients: Mapping[str, str]) -> ExpertLabels:
    """Read and validate an expert-label CSV; keep the rows of our test split.

    Args:
        path: the CSV in the released format (see the module docstring).
        known_images: every image of the metadata; a row naming another image is refused.
        test_patients: image -> patient id of the test split; rows of other known images are
            ignored and counted.

    Raises:
        ExpertLabelsError: a required column is missing (the message gives the expected header),
            a finding cell is not YES/NO, an image is listed twice, a Set Id is not test/val, or
            an image is unknown; each names the file and line.
        MetadataError: the file is empty, has no rows or is not UTF-8 (from read_table).
    """
    path = Path(path)
    frame = read_table(path, FIX)
    _check_columns(path, frame)
    values = _check_values(path, frame)
    known = known_images if isinstance(known_images, (set, frozenset, dict)) else set(known_images)
    _check_rows(path, frame, known)
    images = frame["Image Index"].str.strip().to_numpy()
    in_test = np.array([image in test_patients for image in images], dtype=bool)
    table = pd.DataFrame({"image_id": images[in_test], "patient_id": [test_patients[i] for i in images[in_test]]})
    for j, finding in enumerate(EXPERT_FINDINGS):
        table[finding] = values[in_test, j]
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    set_ids = frame[SET_ID].str.strip().value_counts()
    return ExpertLabels(
        frame=table,
        rows=len(frame),
        outside_test=int((~in_test).sum()),
        set_ids={name: int(set_ids.get(name, 0)) for name in SET_IDS},
    )


def expert_csv(metadata: pd.DataFrame, truth: list[tuple[str, ...]], set_ids: list[str]) -> str:
    """The released format for `metadata` rows (the NIH columns, copied) with findings from `truth`.

    `truth[i]`: the NIH labels image i really shows; each expert finding is YES when any of its
    NIH_COMPONENTS is among them (Fracture, with none, is NO). `set_ids[i]`: "test" or "val".
    """
    if not len(metadata) == len(truth) == len(set_ids):
        raise ValueError(f"{len(metadata)} metadata rows, {len(truth)} label sets and {len(set_ids)} set ids")
    frame = metadata.copy()
    for finding in EXPERT_FINDINGS:
        components = set(NIH_COMPONENTS[finding])
        frame[finding] = ["YES" if components & set(labels) else "NO" for labels in truth]
    frame[SET_ID] = list(set_ids)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()
