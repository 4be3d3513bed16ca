"""Data source `phantom` (the default): the embedded, deterministic synthetic ChestX-ray14.

    fetch(cfg, Path("data/raw"))    # images/*.png, Data_Entry_2017.csv, BBox_List_2017.csv, expert_labels.csv

The PNGs themselves are generated (settings: ``data.phantom``, its ``label_noise`` included, and
``seed``) into a staging folder
renamed into place, so an interrupted fetch never leaves a half-populated `out_dir`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr14.config import Config
from cxr14.data.phantom import generate_phantom
from cxr14.io import atomic_directory

log = logging.getLogger(__name__)


def fetch(cfg: Config, out_dir: Path) -> None:
    """Generate the phantom into `out_dir` (byte-identical for a seed, whatever the worker count)."""
    phantom = cfg.data.phantom
    with atomic_directory(out_dir) as staging:
        generate_phantom(
            staging,
            n_patients=phantom.n_patients,
            image_size=phantom.image_size,
            seed=cfg.seed,
            missed=phantom.label_noise.missed,
            spurious=phantom.label_noise.spurious,
        )
    log.info("phantom written to %s (seed %d, %d px)", out_dir, cfg.seed, phantom.image_size)
