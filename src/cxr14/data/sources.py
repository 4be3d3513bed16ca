"""The fetch stage's data sources, selected by ``data.source`` in params.yaml.

    fetch(cfg, Path("data/raw"))    # writes Data_Entry_2017.csv + images/*.png or images.csv

A data source is a module with one function, ``fetch(cfg, out_dir)`` (the :class:`DataSource`
protocol), that writes the NIH layout into `out_dir`, which every later stage reads:

* ``Data_Entry_2017.csv``: NIH's metadata columns, one row per image;
* the images: either the PNGs themselves in ``images/`` (written under an atomic staging folder,
  cxr14.io.atomic_directory) or ``images.csv``, a manifest of PNGs that stay where they are
  (cxr14.data.metadata.write_manifest; readers go through cxr14.data.metadata.image_files);
* optionally ``BBox_List_2017.csv``, NIH's bounding boxes.

An interrupted fetch must never leave a half-populated `out_dir`.

Sources: ``phantom`` (cxr14.data.source_phantom, the embedded synthetic data set, the default)
and ``nih`` (cxr14.data.source_nih, the real data from the user's folder, optionally downloaded).

Adding a data set:

1. write ``cxr14/data/source_<name>.py`` with ``fetch(cfg, out_dir)`` writing the layout above;
2. add one line ``"<name>": source_<name>`` to :data:`SOURCES`;
3. add ``"<name>"`` to the choices of ``DataConfig.source`` in config.py (and, if it needs
   settings, a section beside ``data.phantom``/``data.nih``); tests/test_sources.py checks that
   the choices and :data:`SOURCES` agree;
4. list the new module in the fetch stage's ``deps`` in dvc.yaml (tests/test_dvc_dependencies.py
   says so if you forget).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cxr14.config import Config
from cxr14.data import source_nih, source_phantom


class DataSource(Protocol):
    """A module (or object) whose `fetch` writes the NIH layout into `out_dir`."""

    def fetch(self, cfg: Config, out_dir: Path) -> None: ...


# data.source -> the module that fetches it.
SOURCES: dict[str, DataSource] = {
    "phantom": source_phantom,
    "nih": source_nih,
}


def fetch(cfg: Config, out_dir: Path) -> None:
    """Fetch the data set ``cfg.data.source`` names into `out_dir` (the NIH layout)."""
    SOURCES[cfg.data.source].fetch(cfg, out_dir)
