"""Atomic file output and the one progress-bar helper.

A stage that dies half-way must not leave a file that the next stage would trust, so every
output is written to a temporary sibling and renamed into place:

    atomic_write_json(Path("metrics/cnn.json"), {"macro_auroc": 0.81})
    with atomic_directory(Path("data/cache")) as staging:
        ...  # fill `staging`; it becomes data/cache only if the block succeeds
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

# mkstemp creates 0600 files; outputs should get the usual mode the umask allows.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def atomic_write_bytes(path: Path, payload: bytes, durable: bool = True) -> None:
    """Write `payload` to `path` via a temp file in the same folder and os.replace.

    `durable=False` skips the fsync: for thousands of files inside a staging folder that is
    itself renamed into place at the end, per-file durability only costs time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.chmod(temp_name, _FILE_MODE)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    """JSON with sorted keys and a trailing newline, so equal data gives equal bytes."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {value!r}")


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a staging folder that replaces `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp made it 0700
    if path.exists():
        shutil.rmtree(path)
    os.replace(staging, path)


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", disable_bar: bool = False,
             **kwargs):
    """The project's progress bar: live on a terminal, a few lines a minute in CI logs.

    `CXR14_NO_PROGRESS=1` silences every bar (tests); `disable_bar` silences this one.
    """
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        mininterval=0.2 if interactive else 30.0,
        disable=disable_bar or os.environ.get("CXR14_NO_PROGRESS") == "1",
        **kwargs,
    )
