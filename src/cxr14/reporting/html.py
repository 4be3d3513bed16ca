"""metrics/report.html: the markdown report as one self-contained page (figures embedded).

    html = render_html(markdown_text, report_dir=Path("metrics"), title="cxr14 — model comparison")

The HTML is made from the same markdown as report.md, so the two cannot disagree. Every
local image becomes a data: URI, so the file can be mailed or attached to a paper's
supplement and still show its figures; links to CSV files stay relative links (they are
navigation, not content). A missing image is an error, never a broken picture.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

from cxr14.reporting.files import ReportError

_IMAGE_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]+)(")')

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1.5em; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .15em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .88em; }
th, td { border: 1px solid #d0d0d0; padding: .3em .6em; }
th { background: #f0f0f3; }
tr:nth-child(even) td { background: #fafafa; }
td[style*="right"], th[style*="right"] { font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .3em 0; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; font-size: .92em; }
"""


def _data_uri(source: str, report_dir: Path) -> str:
    if source.startswith(("data:", "http://", "https://")):
        return source
    path = report_dir / html.unescape(source)
    if not path.is_file():
        raise ReportError(f"{path}: the report refers to this figure but it does not exist; run `dvc repro`")
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
        path.suffix.lower()
    )
    if mime is None:
        raise ReportError(f"{path}: cannot embed a {path.suffix} file as a figure")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render_html(markdown_text: str, report_dir: Path, title: str) -> str:
    """A complete HTML document with inline CSS and every local image embedded."""
    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    body = _IMAGE_SRC.sub(lambda match: match.group(1) + _data_uri(match.group(2), report_dir) + match.group(3), body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
