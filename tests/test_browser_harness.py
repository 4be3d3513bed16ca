"""The headless-Chromium harness (tests/browser.py) measures real rendering and can fail.

Each page is a small HTML file written here and opened in Debian's chromium; without a
browser these tests fail with install advice (or skip with CXR14_SKIP_BROWSER_TESTS=1).
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.browser import ChromiumNotFound, find_chromium, page_problems, render_page, require_chromium
from tests.conftest import REPO_ROOT

RED_BGR = (0, 0, 255)


def png_data_uri(width: int, height: int) -> str:
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = RED_BGR
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def write_page(tmp_path: Path, body: str, name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>harness</title></head>"
        f"<body style='margin:0'>{body}</body></html>",
        encoding="utf-8",
    )
    return path


TABLE = (
    "<table><thead><tr><th>model</th><th>AUROC</th><th>params</th></tr></thead>"
    "<tbody><tr><td>cnn</td><td>0.71</td><td>1.2M</td></tr>"
    "<tr><td>resnet18</td><td>0.80</td><td>11.2M</td></tr></tbody></table>"
)


def test_good_page_renders_table_and_embedded_image(tmp_path):
    require_chromium()
    page = write_page(tmp_path, TABLE + f"<img alt='roc' style='width:200px' src='{png_data_uri(40, 30)}'>")
    facts = render_page(page, screenshot=tmp_path / "shot.png", width=1000)

    assert page_problems(facts) == []
    assert facts["title"] == "harness"
    [image] = facts["images"]
    assert image["src"].startswith("data:image/png;base64,")
    assert image["complete"] and (image["naturalWidth"], image["naturalHeight"]) == (40, 30)
    assert image["width"] == 200 and image["height"] == 150  # laid out, scaled by CSS
    [table] = facts["tables"]
    assert (table["rows"], table["body_rows"], table["header_cells"]) == (3, 2, 3)
    assert table["header"] == ["model", "AUROC", "params"]
    assert table["width"] > 0 and table["height"] > 0

    # The screenshot shows the image painted where the layout says it is.
    with Image.open(tmp_path / "shot.png") as shot:
        assert shot.width == 1000
        centre = (int(image["x"] + image["width"] / 2), int(image["y"] + image["height"] / 2))
        assert shot.convert("RGB").getpixel(centre) == (255, 0, 0)


def test_broken_data_image_has_zero_natural_width(tmp_path):
    require_chromium()
    broken = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB" + "A" * 16  # truncated PNG
    facts = render_page(write_page(tmp_path, f"<img src='{broken}'>{TABLE}"))
    [image] = facts["images"]
    assert image["naturalWidth"] == 0
    assert any("did not decode" in problem for problem in page_problems(facts))
    assert facts["external_requests"] == []


def test_external_request_is_recorded_and_blocked(tmp_path):
    require_chromium()
    facts = render_page(write_page(tmp_path, "<img src='http://127.0.0.1:9/x.png'>"))
    assert facts["external_requests"] == ["http://127.0.0.1:9/x.png"]
    assert facts["images"][0]["naturalWidth"] == 0
    assert "external request: http://127.0.0.1:9/x.png" in page_problems(facts)


def test_local_file_reference_is_recorded(tmp_path):
    require_chromium()
    ok, encoded = cv2.imencode(".png", np.full((8, 8, 3), 255, np.uint8))
    (tmp_path / "side.png").write_bytes(encoded.tobytes())
    facts = render_page(write_page(tmp_path, "<img src='side.png'>"))
    assert facts["images"][0]["naturalWidth"] == 8  # it loads, but the page is not self-contained
    assert facts["file_requests"] == [(tmp_path / "side.png").resolve().as_uri()]
    assert facts["external_requests"] == []


def test_javascript_errors_are_reported(tmp_path):
    require_chromium()
    facts = render_page(write_page(tmp_path, "<script>console.error('boom'); notDefined();</script>"))
    assert facts["console_errors"] == ["boom"]
    assert facts["page_errors"] == ["ReferenceError: notDefined is not defined"]


def test_missing_chromium_fails_with_advice_or_skips_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR14_CHROMIUM", str(tmp_path / "no-such-chromium"))
    monkeypatch.delenv("CXR14_SKIP_BROWSER_TESTS", raising=False)
    with pytest.raises(ChromiumNotFound, match="apt-get install"):
        find_chromium()
    with pytest.raises(pytest.fail.Exception, match="CXR14_SKIP_BROWSER_TESTS=1"):
        require_chromium()
    monkeypatch.setenv("CXR14_SKIP_BROWSER_TESTS", "1")
    with pytest.raises(pytest.skip.Exception, match="no-such-chromium"):
        require_chromium()


def test_ensure_chromium_script_uses_the_same_lookup(tmp_path):
    script = REPO_ROOT / "scripts" / "ensure-chromium"
    assert os.access(script, os.X_OK)
    env = {**os.environ, "CXR14_CHROMIUM": "/bin/true"}
    env.pop("CXR14_SKIP_BROWSER_TESTS", None)
    found = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert found.returncode == 0 and "/bin/true" in found.stdout
    # An explicit but wrong CXR14_CHROMIUM is an error, never an apt-get run.
    env["CXR14_CHROMIUM"] = str(tmp_path / "no-such-chromium")
    wrong = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert wrong.returncode != 0 and "CXR14_CHROMIUM" in wrong.stderr
    env["CXR14_SKIP_BROWSER_TESTS"] = "1"
    skipped = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert skipped.returncode == 0 and "skip" in skipped.stdout.lower()
