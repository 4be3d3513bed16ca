"""NIH's hand-drawn finding boxes (`BBox_List_2017.csv`), read, validated and moved onto the cache.

    boxes = read_bbox_list(Path("data/raw/BBox_List_2017.csv"))    # original PNG pixels
    images = image_files(Path("data/raw"))                         # cxr14.data.metadata
    frame = boxes_in_cache(Path("data/raw"), Path("data/cache"), images.checked_path)  # test split, cache pixels
    write_boxes(frame, Path("data/boxes.csv"))

NIH ships 984 boxes on 880 images for 8 findings. The real file's header is
`Image Index,Finding Label,Bbox [x,y,w,h],,,`: pandas splits the bracket into the columns
`Bbox [x`, `y`, `w`, `h]` and adds empty `Unnamed: N` columns, which are ignored. x, y is the
top-left corner and w, h the size, in pixels of the 1024 x 1024 PNG. NIH spells one finding
"Infiltrate"; it becomes our label "Infiltration" (cxr14.labels.LABELS).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxr14.data.cache import open_split
from cxr14.errors import Cxr14Error
from cxr14.io import atomic_write_text
from cxr14.labels import LABELS

log = logging.getLogger(__name__)

BBOX_FILE = "BBox_List_2017.csv"
# NIH spelling -> our label, for the 8 findings NIH boxed.
BOX_FINDINGS: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Effusion",
    "Infiltrate": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
NIH_SPELLING: dict[str, str] = {ours: nih for nih, ours in BOX_FINDINGS.items()}  # our label -> NIH name
NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BOX_COLUMNS = ("row", "image_id", "finding", "x", "y", "w", "h")
_COORDS = ("x", "y", "w", "h")
# Both the real header and one already named x,y,w,h are accepted.
_RENAME = {"Image Index": "image_id", "Finding Label": "finding", "Bbox [x": "x", "h]": "h"}
assert set(BOX_FINDINGS.values()) <= set(LABELS)


class BoxError(Cxr14Error, ValueError):
    """A bounding-box file or row that cannot be used; the message names the file and line."""


def read_bbox_list(path: Path) -> pd.DataFrame:
    """Read and validate an NIH `BBox_List_2017.csv`.

    Args:
        path: the CSV, in NIH format (see the module docstring).

    Returns:
        Columns image_id, finding (our spelling), x, y, w, h (float, original PNG pixels); the
        index is the 1-based CSV line of each box (the header is line 1).

    Raises:
        BoxError: a missing column, an unknown finding, a non-numeric or non-finite coordinate,
            w <= 0 or h <= 0, or a non-empty unnamed column; the message names file and line.
    """
    path = Path(path)
    # As strings, blank lines kept: the frame index + 2 is then the CSV line of every row.
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError as error:
        raise BoxError(f"{path}: empty file; expected the header {NIH_HEADER!r} and one box per line") from error
    raw.columns = [str(column).strip() for column in raw.columns]
    raw.index = raw.index + 2
    raw.index.name = "line"
    raw = raw[(raw != "").any(axis=1)]  # blank lines
    for column in [c for c in raw.columns if c.startswith("Unnamed:")]:
        if (line := _first(raw[column].str.strip() != "")) is not None:
            raise BoxError(
                f"{path}: line {line}: unexpected value {raw.at[line, column]!r} after the "
                f"h column; a box row is: image, finding, x, y, w, h"
            )
        raw = raw.drop(columns=column)
    frame = raw.rename(columns=_RENAME)
    missing = [name for name in ("image_id", "finding", *_COORDS) if name not in frame.columns]
    if missing:
        raise BoxError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the header {NIH_HEADER!r} "
            f"(or 'Image Index,Finding Label,x,y,w,h'), found {list(raw.columns)}"
        )
    frame = frame[["image_id", "finding", *_COORDS]].apply(lambda column: column.str.strip())
    if (line := _first(frame["image_id"] == "")) is not None:
        raise BoxError(f"{path}: line {line}: empty Image Index")
    valid = {**BOX_FINDINGS, **{ours: ours for ours in BOX_FINDINGS.values()}}
    if (line := _first(~frame["finding"].isin(valid))) is not None:
        raise BoxError(
            f"{path}: line {line}: unknown finding {frame.at[line, 'finding']!r}; valid findings: "
            f"{', '.join(BOX_FINDINGS)}"
        )
    frame["finding"] = frame["finding"].map(valid)
    for name in _COORDS:
        text = frame[name]
        values = pd.to_numeric(text, errors="coerce").astype(float)
        if (line := _first(~np.isfinite(values))) is not None:
            raise BoxError(f"{path}: line {line}: {name} = {text[line]!r} is not a finite number")
        frame[name] = values
    if (line := _first((frame["w"] <= 0) | (frame["h"] <= 0))) is not None:
        raise BoxError(
            f"{path}: line {line}: box of size w={frame.at[line, 'w']:g}, h={frame.at[line, 'h']:g}; "
            f"width and height must be > 0"
        )
    return frame


def empty_boxes() -> pd.DataFrame:
    """A frame with the columns of :func:`boxes_in_cache` and no rows."""
    return pd.DataFrame(
        {
            "row": pd.Series(dtype="int64"),
            "image_id": pd.Series(dtype=str),
            "finding": pd.Series(dtype=str),
            **{c: pd.Series(dtype="float64") for c in _COORDS},
        }
    )


def boxes_in_cache(
    raw_dir: Path, cache_dir: Path, image_path: Callable[[str], str | Path], split: str = "test"
) -> pd.DataFrame:
    """The boxes of the images in one cache split, in that cache's pixels.

    The cache resizes every image to S x S without keeping its aspect, so a box scales by
    S / width across and S / height down, with the original size read from the PNG's header
    (the file `image_path(image_id)`). Boxes reaching past the image border are clipped.

    Args:
        raw_dir: the fetch stage's folder (when the source has it, BBox_List_2017.csv).
        cache_dir: the preprocess stage's folder.
        image_path: image id -> its PNG; the stage passes
            `cxr14.data.metadata.image_files(raw_dir).checked_path`, which also verifies NIH files.
        split: which cache split to match ("test": the images evaluation sees).

    Returns:
        Columns row (the image's row in the split, so `images[row]` is its pixels), image_id,
        finding, x, y, w, h (float, cache pixels), sorted by (row, finding, x, y). Empty, with
        these columns, when raw_dir has no BBox_List_2017.csv.

    Raises:
        BoxError: a bad row (see :func:`read_bbox_list`), a box entirely outside its image,
            or an unreadable PNG.
    """
    raw_dir, cache_dir = Path(raw_dir), Path(cache_dir)
    path = raw_dir / BBOX_FILE
    if not path.is_file():
        log.info("%s: absent, localisation skipped", path)
        return empty_boxes()
    boxes = read_bbox_list(path)
    images, index = open_split(cache_dir, split)
    side = int(images.shape[1])
    rows = pd.Series(np.arange(len(index)), index=index["image_id"].to_numpy())
    frame, clipped = _scaled_boxes(path, boxes[boxes["image_id"].isin(rows.index)], rows, side, image_path)
    frame = frame.sort_values(["row", "finding", "x", "y"], kind="stable").reset_index(drop=True)
    log.info(
        "boxes: %d of %d in %s split (%d images, %d px); %d dropped (image not in the split)%s",
        len(frame),
        len(boxes),
        split,
        frame["image_id"].nunique(),
        side,
        len(boxes) - len(frame),
        f"; {clipped} clipped to the image" if clipped else "",
    )
    return frame if len(frame) else empty_boxes()


def _scaled_boxes(
    path: Path, kept: pd.DataFrame, rows: pd.Series, side: int, image_path: Callable[[str], str | Path]
) -> tuple[pd.DataFrame, int]:
    """(boxes clipped to their image and scaled to side x side cache pixels, how many were clipped)."""
    sizes = {image_id: _png_size(Path(image_path(image_id))) for image_id in kept["image_id"].unique()}
    width = kept["image_id"].map(lambda image_id: sizes[image_id][0]).astype(float)
    height = kept["image_id"].map(lambda image_id: sizes[image_id][1]).astype(float)
    x0, y0 = kept["x"].clip(lower=0), kept["y"].clip(lower=0)
    x1, y1 = np.minimum(kept["x"] + kept["w"], width), np.minimum(kept["y"] + kept["h"], height)
    if (line := _first((x1 <= x0) | (y1 <= y0))) is not None:
        raise BoxError(
            f"{path}: line {line}: box x={kept.at[line, 'x']:g}, y={kept.at[line, 'y']:g}, "
            f"w={kept.at[line, 'w']:g}, h={kept.at[line, 'h']:g} lies entirely outside "
            f"{kept.at[line, 'image_id']} ({width[line]:g} x {height[line]:g} px)"
        )
    clipped = int(
        ((x0 != kept["x"]) | (y0 != kept["y"]) | (x1 != kept["x"] + kept["w"]) | (y1 != kept["y"] + kept["h"])).sum()
    )
    sx, sy = side / width, side / height
    frame = pd.DataFrame(
        {
            "row": kept["image_id"].map(rows).astype("int64"),
            "image_id": kept["image_id"],
            "finding": kept["finding"],
            "x": x0 * sx,
            "y": y0 * sy,
            "w": (x1 - x0) * sx,
            "h": (y1 - y0) * sy,
        }
    )
    return frame, clipped


def write_boxes(frame: pd.DataFrame, path: Path) -> None:
    """Write a box frame as CSV atomically, floats as %.3f (equal boxes give equal bytes)."""
    atomic_write_text(Path(path), frame.to_csv(index=False, float_format="%.3f"))


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError) as error:  # FileNotFoundError, UnidentifiedImageError are OSErrors
        raise BoxError(f"{path}: cannot read the image size ({error}); it has a box in {BBOX_FILE}") from error


def _first(mask: pd.Series) -> int | None:
    """The index label (CSV line) of the first True in `mask`, or None."""
    hits = mask.index[mask.to_numpy()]
    return int(hits[0]) if len(hits) else None
