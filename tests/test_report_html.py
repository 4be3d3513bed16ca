"""The report's figures and its self-contained HTML twin."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest

from cxr14.labels import LABELS
from cxr14.reporting.figures import auroc_heatmap, reliability_figure, roc_pr_figure, save_figure, tsne_figure
from cxr14.reporting.files import ReportError
from cxr14.reporting.html import render_html
from tests.browser import page_problems, render_page, require_chromium


def scores_and_targets(seed: int = 0, n: int = 120):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, len(LABELS))) < 0.2).astype(int)
    scores = np.clip(0.3 * targets + rng.random(targets.shape) * 0.7, 0, 1)
    return targets, scores


def test_figures_are_byte_reproducible_and_carry_no_version_stamp(tmp_path):
    targets, scores = scores_and_targets()
    save_figure(roc_pr_figure(targets, scores, "m"), tmp_path / "a.png")
    save_figure(roc_pr_figure(targets, scores, "m"), tmp_path / "b.png")
    first = (tmp_path / "a.png").read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and first == (tmp_path / "b.png").read_bytes()
    assert b"matplotlib" not in first.lower()


def test_each_figure_kind_draws(tmp_path):
    table = pd.DataFrame(
        {"a": np.linspace(0.5, 0.9, len(LABELS)), "b": [np.nan] + [0.7] * (len(LABELS) - 1)}, index=list(LABELS)
    )
    calibration = {
        "ece": 0.05,
        "bins": [
            {
                "bin_low": b / 4,
                "bin_high": (b + 1) / 4,
                "count": 10 * (b + 1),
                "mean_score": b / 4 + 0.1,
                "observed_rate": b / 4 + 0.05,
            }
            for b in range(4)
        ],
    }
    xy = np.random.default_rng(1).normal(size=(30, 2))
    groups = ["Mass"] * 10 + ["several findings"] * 10 + ["No Finding"] * 10
    for name, figure in {
        "heat": auroc_heatmap(table),
        "rel": reliability_figure(calibration, "m"),
        "tsne": tsne_figure(xy, groups, "m"),
    }.items():
        save_figure(figure, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 5000


def write_report(tmp_path):
    targets, scores = scores_and_targets()
    (tmp_path / "figures").mkdir()
    save_figure(roc_pr_figure(targets, scores, "m"), tmp_path / "figures" / "roc.png")
    markdown = (
        "# Title\n\nSome `code` and a [link](structure/m.csv).\n\n| model | AUROC |\n|---|---:|\n"
        "| `m` | 0.812 |\n| `n` | 0.700 |\n\n![ROC of m](figures/roc.png)\n"
    )
    (tmp_path / "report.html").write_text(render_html(markdown, tmp_path, "Report"), encoding="utf-8")
    return tmp_path / "report.html", (tmp_path / "figures" / "roc.png").read_bytes()


def test_html_embeds_every_figure_and_keeps_the_tables(tmp_path):
    path, png = write_report(tmp_path)
    html = path.read_text(encoding="utf-8")
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html
    assert "<table>" in html and '<td style="text-align: right;">0.812</td>' in html
    assert 'href="structure/m.csv"' in html and "figures/roc.png" not in html


def test_html_refuses_a_missing_figure(tmp_path):
    with pytest.raises(ReportError, match="missing.png"):
        render_html("![x](missing.png)\n", tmp_path, "Report")


def test_html_renders_in_headless_chromium(tmp_path):
    require_chromium()
    path, _ = write_report(tmp_path)
    facts = render_page(path, screenshot=tmp_path / "shot.png")
    assert page_problems(facts) == []
    assert facts["title"] == "Report"
    (table,) = facts["tables"]
    assert table["header"] == ["model", "AUROC"] and table["body_rows"] == 2 and table["height"] > 0
    (image,) = facts["images"]
    assert image["naturalWidth"] > 500 and image["width"] > 300
