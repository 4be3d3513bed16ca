"""Open an HTML file in headless Chromium and report what actually rendered.

Uses Debian's `chromium` package (`apt-get install chromium`) driven through Playwright's
sync API; Playwright's own browser downloads are never used. Works offline: every request
to a non-`file:`/`data:` URL is recorded in ``external_requests`` and aborted, so a
self-contained page (such as ``metrics/report.html``) must come back with none.

Usage in a test::

    from tests.browser import page_problems, render_page, require_chromium

    def test_page_renders(tmp_path):
        require_chromium()  # fails with install advice; skips if CXR14_SKIP_BROWSER_TESTS=1
        facts = render_page(path, screenshot=tmp_path / "page.png")
        assert page_problems(facts) == []
        assert facts["tables"][0]["header"] == ["model", "AUROC"]

Environment: ``CXR14_CHROMIUM`` names the browser binary (default: ``/usr/bin/chromium``,
then ``chromium`` / ``chromium-browser`` on PATH); ``CXR14_SKIP_BROWSER_TESTS=1`` turns the
failure of `require_chromium` into a skip. ``scripts/ensure-chromium`` (run by ``make test``)
installs the package when it is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

INSTALL_HINT = (
    "Install Debian's chromium package (`sudo apt-get install --no-install-recommends chromium`, "
    "or `bash scripts/ensure-chromium`), or set CXR14_CHROMIUM=/path/to/chromium; "
    "set CXR14_SKIP_BROWSER_TESTS=1 to skip the browser tests instead."
)
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


class ChromiumNotFound(RuntimeError):
    pass


def find_chromium() -> str:
    """Path of the Chromium binary: $CXR14_CHROMIUM, /usr/bin/chromium, or chromium on PATH."""
    configured = os.environ.get("CXR14_CHROMIUM")
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise ChromiumNotFound(f"CXR14_CHROMIUM={configured} is not an executable file. {INSTALL_HINT}")
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumNotFound(f"Chromium not found (/usr/bin/chromium, chromium, chromium-browser). {INSTALL_HINT}")


def require_chromium() -> str:
    """For tests: the Chromium path; else pytest.fail with install advice (skip if CXR14_SKIP_BROWSER_TESTS=1)."""
    import pytest

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "The playwright Python package is missing: pip install -e '.[test]'."
    else:
        try:
            return find_chromium()
        except ChromiumNotFound as error:
            problem = str(error)
    if os.environ.get("CXR14_SKIP_BROWSER_TESTS") == "1":
        pytest.skip(f"CXR14_SKIP_BROWSER_TESTS=1: {problem}")
    pytest.fail(problem, pytrace=False)


# Runs in the page after the load event; collects what was laid out, not what the HTML says.
_FACTS_JS = """
async () => {
  await Promise.all([...document.images].map(img => img.decode().catch(() => null)));
  const box = el => { const r = el.getBoundingClientRect();
                      return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; };
  const text = cell => cell.innerText.trim();
  return {
    title: document.title,
    headings: [...document.querySelectorAll("h1, h2, h3")].filter(h => h.offsetHeight > 0).map(text),
    images: [...document.images].map(img => ({
      src: (img.currentSrc || img.src).slice(0, 30),
      alt: img.alt,
      complete: img.complete,
      naturalWidth: img.naturalWidth,
      naturalHeight: img.naturalHeight,
      ...box(img),
    })),
    tables: [...document.querySelectorAll("table")].map(table => {
      const headerRow = (table.tHead && table.tHead.rows[0])
        || [...table.rows].find(row => row.querySelector("th")) || table.rows[0];
      return {
        rows: table.rows.length,
        body_rows: [...table.tBodies].reduce((n, body) => n + body.rows.length, 0),
        header_cells: table.querySelectorAll("th").length,
        header: headerRow ? [...headerRow.cells].map(text) : [],
        ...box(table),
      };
    }),
  };
}
"""


def render_page(html_path: Path, screenshot: Path | None = None, width: int = 1280, timeout_s: float = 60) -> dict:
    """Load `html_path` in headless Chromium and return what rendered.

    Keys: url, title, browser_version; headings (texts of the visible h1-h3); images (list of {src
    (first 30 chars of the resolved URL), alt, complete, naturalWidth, naturalHeight, x, y, width,
    height}); tables (list of {rows,
    body_rows, header_cells, header (texts of the first header row), x, y, width, height});
    console_errors, page_errors (uncaught JS exceptions), external_requests (URLs that are not
    file:/data:, aborted), file_requests (other local files the page loaded); screenshot (path
    of the full-page PNG, or None). Boxes are CSS pixels in page coordinates.
    """
    from playwright.sync_api import sync_playwright

    page_url = Path(html_path).resolve().as_uri()
    console_errors: list[str] = []
    page_errors: list[str] = []
    external_requests: list[str] = []
    file_requests: list[str] = []

    def on_request(request) -> None:
        url = request.url
        if not url.startswith(LOCAL_SCHEMES):
            external_requests.append(url)
        elif url.startswith("file:") and url != page_url:
            file_requests.append(url)

    def on_route(route) -> None:  # keep the page offline and fast: nothing leaves the machine
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=find_chromium(),
            headless=True,
            # --no-sandbox: Chromium's sandbox refuses to run as root (and in many containers);
            # --disable-dev-shm-usage: containers often have a tiny /dev/shm.
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            timeout=timeout_s * 1000,
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.set_default_timeout(timeout_s * 1000)
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            page.on("pageerror", lambda error: page_errors.append(f"{error.name}: {error.message}"))
            page.on("request", on_request)
            page.route("**/*", on_route)
            page.goto(page_url, wait_until="load")
            facts = page.evaluate(_FACTS_JS)
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            version = browser.version
        finally:
            browser.close()
    return {
        "url": page_url,
        "browser_version": version,
        **facts,
        "console_errors": console_errors,
        "page_errors": page_errors,
        "external_requests": external_requests,
        "file_requests": file_requests,
        "screenshot": str(screenshot) if screenshot is not None else None,
    }


def page_problems(facts: dict) -> list[str]:
    """Human-readable list of what keeps `facts` from being a clean self-contained page; [] if none."""
    problems = [
        f"image {i} ({image['src']}...) did not decode (naturalWidth 0)"
        for i, image in enumerate(facts["images"])
        if not image["complete"] or image["naturalWidth"] == 0
    ]
    problems += [
        f"image {i} ({image['src']}...) is not laid out ({image['width']}x{image['height']} px)"
        for i, image in enumerate(facts["images"])
        if image["width"] == 0 or image["height"] == 0
    ]
    problems += [f"console error: {text}" for text in facts["console_errors"]]
    problems += [f"page error: {text}" for text in facts["page_errors"]]
    problems += [f"external request: {url}" for url in facts["external_requests"]]
    problems += [f"local file request: {url}" for url in facts["file_requests"]]
    return problems
