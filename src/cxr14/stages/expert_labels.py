"""Stage logic of `expert_labels`: the radiologists' labels of the test images, validated.

    table, summary = expert_table(Path("data/raw"), Path("data/splits.csv"))

Reads `<raw>/expert_labels.csv` (written by the fetch stage: the phantom's truth, or a copy of
``data.nih.expert_labels``), checks it against the metadata (`<raw>/Data_Entry_2017.csv`) and
keeps the images of the test split (cxr14.data.expert_labels.read_expert_labels). Without the
file the table is empty (its header only) and the summary says `available: false`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxr14.data.expert_labels import EXPERT_FILE, EXPERT_FINDINGS, SET_IDS, empty_table, read_expert_labels
from cxr14.data.metadata import METADATA_FIX, find_metadata_csv, read_table
from cxr14.errors import InputDataError, MissingInputError

log = logging.getLogger(__name__)
SPLIT_COLUMNS = ("Image Index", "Patient ID", "split")


def patients_of_test_split(splits_csv: Path) -> dict[str, str]:
    """image -> patient id of the test split in the split stage's table."""
    splits_csv = Path(splits_csv)
    if not splits_csv.is_file():
        raise MissingInputError(f"{splits_csv}: no split table; run the split stage first (dvc repro split)")
    splits = pd.read_csv(splits_csv, dtype=str, keep_default_na=False)
    missing = [column for column in SPLIT_COLUMNS if column not in splits.columns]
    if missing:
        raise InputDataError(
            f"{splits_csv}: missing column(s) {missing}, expected {','.join(SPLIT_COLUMNS)}; re-run the split stage"
        )
    test = splits[splits["split"] == "test"]
    return dict(zip(test["Image Index"], test["Patient ID"].str.strip()))


def _summary(path: Path | None, table: pd.DataFrame, rows: int, outside: int, set_ids: dict[str, int]) -> dict:
    return {
        "available": path is not None,
        "file": None if path is None else str(path),
        "rows_in_file": rows,
        "in_test_split": len(table),
        "test_patients": int(table["patient_id"].nunique()),
        "outside_test_split_ignored": outside,
        "set_ids": set_ids,
        "positives": {finding: int(table[finding].sum()) for finding in EXPERT_FINDINGS},
    }


def expert_table(raw: Path, splits_csv: Path) -> tuple[pd.DataFrame, dict]:
    """(the covered test images' table for data/expert_labels.csv, the summary JSON).

    Table columns: image_id, patient_id, Fracture, Pneumothorax, Airspace opacity, Nodule or
    mass (0/1), sorted by image. Summary: available, file, rows_in_file, in_test_split,
    test_patients, outside_test_split_ignored, set_ids, positives (per finding).
    """
    path = Path(raw) / EXPERT_FILE
    patients = patients_of_test_split(splits_csv)
    if not path.is_file():
        log.info("%s: no expert labels (data.nih.expert_labels is null); writing an empty table", path)
        return empty_table(), _summary(None, empty_table(), 0, 0, dict.fromkeys(SET_IDS, 0))
    known = set(read_table(find_metadata_csv(Path(raw)), METADATA_FIX)["Image Index"].str.strip())
    labels = read_expert_labels(path, known, patients)
    log.info(
        "expert labels: %d row(s) in %s, %d in the test split, %d outside it (ignored)",
        labels.rows,
        path,
        len(labels.frame),
        labels.outside_test,
    )
    return labels.frame, _summary(path, labels.frame, labels.rows, labels.outside_test, labels.set_ids)
