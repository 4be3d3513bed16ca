"""Data source `nih`: the real NIH ChestX-ray14, from the user's folder (optionally downloaded first).

    fetch(cfg, Path("data/raw"))    # Data_Entry_2017.csv, images.csv (+ BBox_List_2017.csv, expert_labels.csv)

The user's folder (official, Kaggle or sample layout; settings: ``data.nih``) stays where it is;
`images.csv` records the path, size and mtime of each of its PNGs, so the ~42 GB are never copied
and DVC caches (and hashes) only a few MB. Readers find the images through
cxr14.data.metadata.image_files.

``data.nih.expert_labels`` (a path or URL of Google's radiologist-label CSV) is copied or
downloaded to `expert_labels.csv` in `out_dir` (cxr14.data.expert_labels reads it); it is fetched
before the images are recorded, so a bad path or a failed download leaves `out_dir` as it was,
and null leaves no such file (the recorded folder replaces `out_dir` whole).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cxr14.config import Config
from cxr14.data.expert_labels import EXPERT_FILE
from cxr14.errors import MissingInputError

log = logging.getLogger(__name__)

METADATA_NAME = "Data_Entry_2017.csv"


@contextlib.contextmanager
def _fetched_expert_labels(source: str | None, out_dir: Path) -> Iterator[Path | None]:
    """Copy or download the expert-label CSV beside `out_dir` (None: no file); removed if unused."""
    if source is None:
        yield None
        return
    from cxr14.data.nih_download import fetch_metadata

    if not source.startswith(("http://", "https://")) and not Path(source).expanduser().is_file():
        raise MissingInputError(
            f"data.nih.expert_labels: {source} does not exist; give the path or http(s) URL of the radiologist-label "
            f"CSV (Majkowska et al. 2020), or set data.nih.expert_labels: null"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.expert.", dir=out_dir.parent) as folder:
        yield fetch_metadata(source, Path(folder) / EXPERT_FILE)


def fetch(cfg: Config, out_dir: Path) -> None:
    """Download (when asked) and record the NIH data set in `out_dir`: metadata + image manifest."""
    # Looked up at call time: the phantom's fetch needs neither (and tests swap official_archives).
    from cxr14.data.nih_download import download_nih, fetch_metadata, official_archives
    from cxr14.data.nih_layout import detect_layout, index_raw

    nih = cfg.data.nih
    assert nih.path, "config validation requires data.nih.path when data.source is nih"
    root = Path(nih.path).expanduser().resolve()
    if nih.download:
        root.mkdir(parents=True, exist_ok=True)
        download_nih(official_archives(nih.base_url), download_dir=root / "archives", extract_dir=root)
    elif not root.is_dir():
        raise MissingInputError(
            f"data.nih.path {root} is not a folder; point it at the NIH images or set data.nih.download: true"
        )
    layout_metadata = None
    if nih.metadata:
        # A CSV given by path or URL is stored beside the images, where the layout is read.
        layout_metadata = fetch_metadata(nih.metadata, root / METADATA_NAME)
    layout = detect_layout(root)
    if layout_metadata is not None:
        layout = dataclasses.replace(layout, metadata_csv=layout_metadata)
    with _fetched_expert_labels(nih.expert_labels, Path(out_dir)) as expert:
        count = index_raw(layout, out_dir)
        if expert is not None:  # same file system: an atomic rename into the recorded folder
            os.replace(expert, Path(out_dir) / EXPERT_FILE)
            log.info("expert labels %s -> %s", nih.expert_labels, Path(out_dir) / EXPERT_FILE)
    log.info("%s: %s NIH images recorded from %s (%s layout)", out_dir, f"{count:,}", root, layout.kind)
