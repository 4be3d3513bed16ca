"""Data sources: one module per data set behind `fetch(cfg, out_dir)`, selected by data.source."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from cxr14.config import ConfigError, DataConfig, config_from_dict
from cxr14.data import sources


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
