"""Use a local NIH ChestX-ray14 download in place: detect its layout, record it, never copy it.

    layout = detect_layout(Path("/data/ChestX-ray14"))  # official, Kaggle or sample layout
    n_images = index_raw(layout, Path("data/raw"))       # data/raw/images.csv: where each image is

Three layouts are recognised under `data.nih.path`:

- official (NIH Box): `images/*.png` + `Data_Entry_2017_v2020.csv` or `Data_Entry_2017.csv`;
- Kaggle (nih-chest-xrays/data): `images_001/images/*.png` ... `images_012/images/*.png`
  + `Data_Entry_2017.csv`;
- sample (nih-chest-xrays/sample, 5,606 images): `sample/images/*.png` + `sample_labels.csv`,
  the CSV either next to `sample/` or inside it (both occur, depending on how the archive was
  unpacked); a folder holding `images/` + `sample_labels.csv` directly is accepted too.

`index_raw` gives the rest of the pipeline the one layout it reads, whatever the download's:
a `Data_Entry_2017.csv` and the manifest `images.csv`, one row per image with the absolute path
of the user's file, its size and its mtime (see cxr14.data.metadata, which reads it for every
stage). The images stay where they are; `data/raw` is a few MB that DVC caches and restores in
a queued experiment without looking at the 42 GB again. The metadata CSV is copied, because it
is small and the pipeline must be able to trust it not to change; so is NIH's
`BBox_List_2017.csv` when the download has it (in the root folder or beside the CSV).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cxr14.data.boxes import BBOX_FILE
from cxr14.data.metadata import IMAGES_MANIFEST, METADATA_NAMES, write_manifest
from cxr14.errors import Cxr14Error
from cxr14.io import atomic_directory, progress

log = logging.getLogger(__name__)

KAGGLE_METADATA = "Data_Entry_2017.csv"
SAMPLE_METADATA = "sample_labels.csv"
# The name the rest of the pipeline reads (cxr14.data.metadata.find_metadata_csv accepts it).
RAW_METADATA = "Data_Entry_2017.csv"
_KAGGLE_FOLDER = re.compile(r"images_\d{3}")

_EXPECTED = (
    "official: images/*.png + Data_Entry_2017_v2020.csv or Data_Entry_2017.csv; "
    "Kaggle: images_001/images/*.png ... images_012/images/*.png + Data_Entry_2017.csv; "
    "sample: sample/images/*.png + sample_labels.csv (or sample/sample_labels.csv)"
)


class NihLayoutError(Cxr14Error, ValueError):
    """`data.nih.path` does not hold a usable NIH ChestX-ray14 layout, or recording it failed."""


@dataclass(frozen=True)
class NihLayout:
    """Where a local NIH download keeps its metadata and images.

    Attributes:
        kind: "official", "kaggle" or "sample" (see the module docstring).
        root: the folder the user configured as `data.nih.path`.
        metadata_csv: the Data_Entry-style CSV (Image Index, Finding Labels, Patient ID, ...).
        image_dirs: folders whose `*.png` files are the images; several for Kaggle.
    """

    kind: str
    root: Path
    metadata_csv: Path
    image_dirs: tuple[Path, ...]

    def describe(self, n_images: int | None = None) -> str:
        """One line for the log, e.g. 'Kaggle layout: 12 image folders, 112,120 PNGs, ...'."""
        name = {"official": "official", "kaggle": "Kaggle", "sample": "NIH sample"}[self.kind]
        folders = f"{len(self.image_dirs)} image folder{'s' if len(self.image_dirs) != 1 else ''}"
        count = f", {n_images:,} PNGs" if n_images is not None else ""
        return f"{name} layout: {folders}{count}, metadata {self.metadata_csv.name}"


def detect_layout(root: Path) -> NihLayout:
    """Recognise which NIH layout `root` holds, looking only at folder names (no image scan).

    Args:
        root: the configured `data.nih.path`.

    Raises:
        NihLayoutError: nothing matches (the message lists what was looked for and what is
            there), or both the official and the Kaggle layout are present, in which case
            picking one silently could drop half of the images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise NihLayoutError(
            f"data.nih.path: {root} is not a folder; point it at the unpacked NIH ChestX-ray14 download ({_EXPECTED})"
        )
    candidates = [layout for layout in (_official(root), _kaggle(root), _sample(root)) if layout is not None]
    kinds = [layout.kind for layout in candidates]
    if "official" in kinds and "kaggle" in kinds:
        raise NihLayoutError(
            f"data.nih.path: {root} holds both the official layout (images/) and the Kaggle layout "
            f"(images_001/images/ ...); move one of them away or point data.nih.path at a folder with only one"
        )
    if candidates:
        layout = candidates[0]
        log.debug("%s: detected %s", root, layout.describe())
        return layout
    raise NihLayoutError(
        f"data.nih.path: {root} holds no NIH ChestX-ray14 layout. Looked for {_EXPECTED}. Found: {_list_folder(root)}"
    )


def index_raw(layout: NihLayout, out_dir: Path) -> int:
    """Write `out_dir/images.csv` (the manifest) + `out_dir/Data_Entry_2017.csv` (a copy).

    The manifest has one row per PNG: `Image Index` (the file name), `path` (the absolute path
    of the user's file, symlinks resolved), `bytes` and `mtime_ns` (from one stat per file),
    sorted by name, so an unchanged folder gives a byte-identical manifest. `BBox_List_2017.csv`,
    when it lies in the layout's root folder or beside the metadata CSV, is copied next to
    `Data_Entry_2017.csv` too.

    The folder is built in a staging sibling and renamed into place, so an interrupted run never
    leaves a half-written `out_dir`; it holds no image, so replacing it never touches the
    user's files.

    Args:
        layout: from :func:`detect_layout`.
        out_dir: the fetch stage's output, e.g. data/raw.

    Returns:
        The number of images recorded.

    Raises:
        NihLayoutError: an image folder holds no PNG, two folders hold the same image name
            (both paths are named), `out_dir` would overwrite the user's data, or an image
            cannot be stat'ed.
    """
    out_dir = Path(out_dir)
    _check_out_dir(layout, out_dir)
    entries = _scan_images(layout)
    log.info("found %s", layout.describe(len(entries)))
    rows = []
    with progress(total=len(entries), desc="recording NIH images", unit="img") as bar:
        for name, entry in entries.items():
            try:
                stat = entry.stat()  # follows a symlink to the file it names
                path = os.path.realpath(entry.path) if entry.is_symlink() else entry.path
            except OSError as error:
                raise NihLayoutError(f"cannot read {entry.path}: {error}") from error
            rows.append((name, path, stat.st_size, stat.st_mtime_ns))
            bar.update()
    with atomic_directory(out_dir) as staging:
        write_manifest(staging / IMAGES_MANIFEST, rows)
        shutil.copyfile(layout.metadata_csv, staging / RAW_METADATA)
        boxes = _bbox_list(layout)
        if boxes is not None:
            shutil.copyfile(boxes, staging / BBOX_FILE)
    copied = layout.metadata_csv.name + (f" and {boxes.name}" if boxes is not None else f" (no {BBOX_FILE})")
    log.info(
        "recorded %s images (%.1f GB) in %s and copied %s",
        f"{len(rows):,}",
        sum(row[2] for row in rows) / 1e9,
        out_dir / IMAGES_MANIFEST,
        copied,
    )
    return len(rows)


# ------------------------------------------------------------------------------------ detection
def _official(root: Path) -> NihLayout | None:
    images = root / "images"
    csv = next((root / name for name in METADATA_NAMES if (root / name).is_file()), None)
    if not images.is_dir() or csv is None:
        return None
    return NihLayout("official", root, csv, (images,))


def _kaggle(root: Path) -> NihLayout | None:
    with os.scandir(root) as entries:
        folders = sorted(entry.name for entry in entries if entry.is_dir() and _KAGGLE_FOLDER.fullmatch(entry.name))
    if not folders or not (root / KAGGLE_METADATA).is_file():
        return None
    missing = [name for name in folders if not (root / name / "images").is_dir()]
    if missing:
        raise NihLayoutError(
            f"data.nih.path: {root} looks like the Kaggle layout but {', '.join(missing)} "
            f"{'has' if len(missing) == 1 else 'have'} no images/ subfolder; unpack each images_NNN archive "
            f"so that its PNGs are in images_NNN/images/"
        )
    return NihLayout("kaggle", root, root / KAGGLE_METADATA, tuple(root / name / "images" for name in folders))


def _sample(root: Path) -> NihLayout | None:
    # nih-chest-xrays/sample unpacks as sample/images + sample_labels.csv next to or inside sample/;
    # a user may also point data.nih.path at the inner folder (images/ + sample_labels.csv).
    for images, csvs in (
        (root / "sample" / "images", (root / SAMPLE_METADATA, root / "sample" / SAMPLE_METADATA)),
        (root / "images", (root / SAMPLE_METADATA,)),
    ):
        csv = next((path for path in csvs if path.is_file()), None)
        if images.is_dir() and csv is not None:
            return NihLayout("sample", root, csv, (images,))
    return None


def _list_folder(root: Path, limit: int = 12) -> str:
    with os.scandir(root) as entries:
        names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in entries)
    if not names:
        return "an empty folder"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} entries)" if len(names) > limit else "")


# ----------------------------------------------------------------------------------- recording
def _scan_images(layout: NihLayout) -> dict[str, os.DirEntry]:
    """Image name -> directory entry of every PNG, using only what os.scandir already knows."""
    sources: dict[str, os.DirEntry] = {}
    for folder in layout.image_dirs:
        folder_abs = folder.resolve()  # one resolve per folder, not per file
        found = 0
        with os.scandir(folder_abs) as entries:
            for entry in entries:
                # is_file() answers from the directory entry's type; it stats only symlinks. Dot files
                # are skipped: macOS unpacking leaves "._<name>.png" resource forks next to the images.
                if not entry.name.endswith(".png") or entry.name.startswith(".") or not entry.is_file():
                    continue
                previous = sources.setdefault(entry.name, entry)
                if previous.path != entry.path:
                    raise NihLayoutError(
                        f"image {entry.name} is in two folders: {previous.path} and {entry.path}; NIH image names "
                        f"are unique, so one of the folders is a duplicate or a different data set -- remove it"
                    )
                found += 1
        if not found:
            raise NihLayoutError(f"{folder}: no *.png images; the {layout.kind} layout expects the PNGs there")
    return sources


def _bbox_list(layout: NihLayout) -> Path | None:
    """NIH's box file, in the root folder or beside the metadata CSV, if the download has it."""
    return next(
        (path for path in (layout.root / BBOX_FILE, layout.metadata_csv.parent / BBOX_FILE) if path.is_file()), None
    )


def _check_out_dir(layout: NihLayout, out_dir: Path) -> None:
    """Refuse an `out_dir` whose replacement would delete the user's download."""
    out_abs, root_abs = out_dir.resolve(), layout.root.resolve()
    if out_abs == root_abs or out_abs in root_abs.parents:
        raise NihLayoutError(
            f"output folder {out_dir} contains data.nih.path {layout.root}; it is replaced on every fetch, "
            f"which would delete the download. Keep the NIH download outside the project's data/raw"
        )
    for folder in layout.image_dirs:
        folder_abs = folder.resolve()
        if out_abs == folder_abs or folder_abs in out_abs.parents:
            raise NihLayoutError(f"output folder {out_dir} is inside the image folder {folder}; choose another output")
