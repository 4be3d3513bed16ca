"""The fetch stage's sources: the embedded phantom, or real NIH data.

    fetch(cfg, Path("data/raw"))    # writes data/raw/images/*.png + Data_Entry_2017.csv

The output folder is staged and renamed into place, so an interrupted fetch never leaves a
half-populated data/raw for the split stage to trust.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr14.config import Config
from cxr14.io import atomic_directory

log = logging.getLogger(__name__)


class SourceNotAvailableError(RuntimeError):
    """The configured data source cannot be used (yet)."""


def fetch(cfg: Config, out_dir: Path) -> None:
    if cfg.data.source == "phantom":
        from cxr14.data.phantom import generate_phantom

        phantom = cfg.data.phantom
        with atomic_directory(out_dir) as staging:
            generate_phantom(staging, n_patients=phantom.n_patients, image_size=phantom.image_size, seed=cfg.seed)
        return
    raise SourceNotAvailableError(
        "data.source: nih -- ingesting the real NIH ChestX-ray14 (local layouts, download, official "
        "split) is not implemented yet (tracked in issue 3); use data.source: phantom for now"
    )
