"""The fetch stage's sources: the embedded phantom, or real NIH data.

    fetch(cfg, Path("data/raw"))    # writes Data_Entry_2017.csv + images/*.png or images.csv

Phantom: the PNGs themselves, generated into `images/` of a staging folder renamed into place.
NIH: the user's folder (official, Kaggle or sample layout; optionally downloaded first) stays
where it is; `images.csv` records the path, size and mtime of each of its PNGs, so the ~42 GB
are never copied and DVC caches (and hashes) only a few MB. Readers find the images of either
through cxr14.data.metadata.image_files. An interrupted fetch never leaves a half-populated
data/raw.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from cxr14.config import Config
from cxr14.errors import MissingInputError
from cxr14.io import atomic_directory

log = logging.getLogger(__name__)

METADATA_NAME = "Data_Entry_2017.csv"


def fetch(cfg: Config, out_dir: Path) -> None:
    if cfg.data.source == "phantom":
        from cxr14.data.phantom import generate_phantom

        phantom = cfg.data.phantom
        with atomic_directory(out_dir) as staging:
            generate_phantom(staging, n_patients=phantom.n_patients, image_size=phantom.image_size, seed=cfg.seed)
        return
    fetch_nih(cfg, out_dir)


def fetch_nih(cfg: Config, out_dir: Path) -> None:
    """Download (when asked) and record the NIH data set in `out_dir`: metadata + image manifest."""
    from cxr14.data.nih_download import download_nih, fetch_metadata, official_archives
    from cxr14.data.nih_layout import detect_layout, index_raw

    nih = cfg.data.nih
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
    count = index_raw(layout, out_dir)
    log.info("%s: %s NIH images recorded from %s (%s layout)", out_dir, f"{count:,}", root, layout.kind)
