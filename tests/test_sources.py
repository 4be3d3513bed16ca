"""Data sources: one module per data set behind `fetch(cfg, out_dir)`, selected by data.source."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from cxr14.config import ConfigError, DataConfig, config_from_dict
from cxr14.data import sources
from cxr14.errors import MissingInputError


def test_config_choices_are_the_registered_sources():
    """data.source accepts exactly the names in SOURCES (config.py cannot import the data layer)."""
    choices = typing.get_args(typing.get_type_hints(DataConfig)["source"])
    assert sorted(choices) == sorted(sources.SOURCES)


@pytest.mark.parametrize("name", sorted(sources.SOURCES))
def test_every_source_is_a_module_with_fetch(name):
    source = sources.SOURCES[name]
    assert callable(source.fetch)
    assert source.__name__ == f"cxr14.data.source_{name}"
    assert list(typing.get_type_hints(source.fetch)) == ["cfg", "out_dir", "return"]


def test_unregistered_source_is_a_config_error():
    with pytest.raises(ConfigError, match="data.source"):
        config_from_dict({"data": {"source": "mimic"}})


def test_fetch_dispatches_on_data_source(monkeypatch, tmp_path):
    called = []
    monkeypatch.setattr(sources.source_phantom, "fetch", lambda cfg, out_dir: called.append(("phantom", out_dir)))
    cfg = config_from_dict({"data": {"source": "phantom"}})
    sources.fetch(cfg, tmp_path / "raw")
    assert called == [("phantom", Path(tmp_path / "raw"))]


def _nih_config(root: Path, expert_labels: str | None):
    return config_from_dict({"data": {"source": "nih", "nih": {"path": str(root), "expert_labels": expert_labels}}})


def test_nih_fetch_copies_the_expert_labels_into_the_fetch_output(small_nih, tmp_path):
    released = tmp_path / "four_findings_expert_labels_test_labels.csv"
    released.write_bytes(b"Image Index,Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id\r\n")
    out = tmp_path / "out" / "raw"
    sources.fetch(_nih_config(small_nih, str(released)), out)
    assert (out / "expert_labels.csv").read_bytes() == released.read_bytes()
    assert (out / "Data_Entry_2017.csv").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["raw"]  # no staging copy left behind
    sources.fetch(_nih_config(small_nih, None), out)  # null: no file (the old one does not linger)
    assert not (out / "expert_labels.csv").exists() and (out / "images.csv").is_file()


def test_nih_fetch_with_a_missing_expert_file_names_it_and_changes_nothing(small_nih, tmp_path):
    out = tmp_path / "fetched" / "raw"
    sources.fetch(_nih_config(small_nih, None), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(MissingInputError, match="data.nih.expert_labels: .*nowhere.csv does not exist"):
        sources.fetch(_nih_config(small_nih, str(tmp_path / "nowhere.csv")), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["raw"]
