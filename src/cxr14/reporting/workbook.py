"""The structure workbook: every per-layer table (models/structure.py writes them) in one XLSX file.

    write_structure_workbook({"resnet18": table, "timm:convnext_tiny": other}, Path("metrics/structure.xlsx"))

Pure pandas/openpyxl: the report stage writes it from the CSV tables without importing torch.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from cxr14.io import atomic_write_bytes

SUMMARY_SHEET = "summary"

_EXCEL_SHEET_NAME_LIMIT = 31
_EXCEL_FORBIDDEN_CHARACTERS = re.compile(r"[\[\]:*?/\\]")
_MAX_COLUMN_WIDTH = 60


def write_structure_workbook(tables: dict[str, pd.DataFrame], path: Path) -> None:
    """Write a summary sheet and one sheet per model to an XLSX file at `path` (atomically).

    Sheet names are made valid for Excel: at most 31 characters, none of ``[]:*?/\\``, and unique
    ignoring case (Excel's rule), so `timm:convnext_tiny` becomes `timm_convnext_tiny`. The
    summary sheet lists, per model, its sheet name, the number of rows, the total parameter count,
    the parameters in fully trainable layers, and the parameters in layers marked "partial" (a
    table cannot say which share of those is trainable).

    Args:
        tables: Structure tables (:func:`cxr14.models.structure.layer_table`), keyed by model name.
        path: Destination `.xlsx` file.

    Raises:
        ValueError: If `tables` is empty.
    """
    if not tables:
        raise ValueError(f"write_structure_workbook({path}): no tables given; pass at least one model's table")
    sheet_names = _unique_sheet_names(tables, reserved=[SUMMARY_SHEET])
    summary = pd.DataFrame(
        [
            {
                "model": model_name,
                "sheet": sheet_names[model_name],
                "rows": len(table),
                "params_total": int(table["parameters"].sum()),
                "params_trainable": int(table.loc[table["trainable"].eq(True), "parameters"].sum()),
                "params_in_partial_layers": int(table.loc[table["trainable"].eq("partial"), "parameters"].sum()),
            }
            for model_name, table in tables.items()
        ]
    )
    buffer = io.BytesIO()
    with pd.ExcelWriter(buffer, engine="openpyxl") as writer:
        _write_sheet(writer, summary, SUMMARY_SHEET)
        for model_name, table in tables.items():
            _write_sheet(writer, table, sheet_names[model_name])
    atomic_write_bytes(Path(path), buffer.getvalue())


def sheet_name_for(model_name: str) -> str:
    """A valid Excel sheet name for `model_name`, before making it unique within a workbook."""
    cleaned = _EXCEL_FORBIDDEN_CHARACTERS.sub("_", model_name).strip("'")  # Excel rejects a leading/trailing '
    return cleaned[:_EXCEL_SHEET_NAME_LIMIT] or "model"


def _unique_sheet_names(tables: Iterable[str], reserved: Iterable[str]) -> dict[str, str]:
    taken = {name.lower() for name in reserved}
    names = {}
    for model_name in tables:
        candidate = base = sheet_name_for(model_name)
        counter = 2
        while candidate.lower() in taken:
            suffix = f"_{counter}"
            candidate = base[: _EXCEL_SHEET_NAME_LIMIT - len(suffix)] + suffix
            counter += 1
        taken.add(candidate.lower())
        names[model_name] = candidate
    return names


def _write_sheet(writer: pd.ExcelWriter, frame: pd.DataFrame, sheet_name: str) -> None:
    frame.to_excel(writer, sheet_name=sheet_name, index=False)
    worksheet = writer.sheets[sheet_name]
    worksheet.freeze_panes = "A2"  # keep the header visible while scrolling through hundreds of layers
    for position, column in enumerate(frame.columns):
        longest_cell = max([len(str(column)), *(len(str(value)) for value in frame[column].tolist())])
        letter = worksheet.cell(row=1, column=position + 1).column_letter
        worksheet.column_dimensions[letter].width = min(longest_cell + 2, _MAX_COLUMN_WIDTH)
