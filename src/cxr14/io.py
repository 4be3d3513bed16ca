"""Atomic file output and the one progress-bar helper.

A stage that dies half-way must not leave a file that the next stage would trust, so every
output is written to a temporary sibling and renamed into place:

    atomic_write_json(Path("metrics/cnn.json"), {"macro_auroc": 0.81})
    with atomic_directory(Path("data/cache")) as staging:
        ...  # fill `staging`; it becomes data/cache only if the block succeeds

A stage with several outputs writes all of them or none (`staged_outputs`): outputs from two
different runs side by side would look like one consistent result.

    with staged_outputs([metrics_json, figure_dir]) as stage:   # fails now if a folder is unwritable
        record = compute()                                       # the expensive part
        atomic_write_json(stage.path(metrics_json), record)      # written beside, under a temp name
        save_figures(figures, stage.path(figure_dir))
        log_to_mlflow(...)                                       # logs the staged files
    # here every output has been renamed into place; on any exception, none was touched

Order in every stage that logs to MLflow: (1) check the tracking store
(`tracking.require_store`), (2) enter `staged_outputs`, which checks that every output's
folder is writable, (3) compute, (4) write every output into its staging folder, (5) log to
MLflow, (6) rename everything into place when the block ends. A store or compute failure
thus changes no file; the renames, checked up front, are what is left to fail, and then
every output that was already swapped is swapped back. Logging before the renames means an
MLflow run can hold the numbers of an attempt whose files were not kept (only if a rename
fails after logging), never files that MLflow was not told about.
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

from cxr14.errors import Cxr14Error

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


class OutputNotWritableError(Cxr14Error, RuntimeError):
    """A stage's output cannot be written where it was asked for (checked before computing)."""


class StagedOutputs:
    """The staging area of one `staged_outputs` block: `path(output)` is where to write `output`."""

    def __init__(self, holders: dict[Path, Path]) -> None:
        self._holders = holders

    def path(self, output: Path) -> Path:
        """Where to write `output` (a file or a folder, not created): same name, in a hidden sibling
        folder, so a file logged from there keeps its name (e.g. as an MLflow artifact)."""
        output = Path(output)
        if output not in self._holders:
            raise KeyError(f"{output} is not one of this stage's declared outputs: {sorted(map(str, self._holders))}")
        return self._holders[output] / output.name


def _unwritable(output: Path, reason: str, folder: Path) -> OutputNotWritableError:
    return OutputNotWritableError(
        f"{output}: cannot write this output: {reason}; nothing was computed and no output of this stage was "
        f"changed; make {folder} a writable folder (e.g. chmod u+w) or choose another output path"
    )


def _reserve(output: Path) -> Path:
    """Check that `output` can be replaced and return its (new, empty) staging folder beside it."""
    parent = output.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _unwritable(output, f"{existing} is a file, not a folder", existing)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        holder = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=parent))
    except OSError as error:
        folder = parent if parent.is_dir() else existing
        raise _unwritable(output, f"folder {folder} is not writable ({error.strerror or error})", folder) from None
    if output.is_dir() and not output.is_symlink():
        # Its old content is moved aside and deleted: every folder in it must be writable.
        for walked, _, _ in os.walk(output):
            if not os.access(walked, os.W_OK | os.X_OK):
                shutil.rmtree(holder, ignore_errors=True)
                raise _unwritable(
                    output, f"folder {walked} is not writable (its old content could not be replaced)", Path(walked)
                )
    return holder


@contextlib.contextmanager
def staged_outputs(outputs: list[Path]) -> Iterator[StagedOutputs]:
    """All of a stage's outputs, or none: each is written into a staging folder beside it, and
    every one is renamed into place only when the block succeeds.

    Entering checks every output's folder (created if missing) and, for an existing folder
    output, its content: one that cannot be written raises `OutputNotWritableError` before the
    stage computes anything. On an exception in the block, or an output the block did not
    write, the staging folders are removed and every old output is left untouched. Should a
    rename fail, the outputs already replaced are put back.
    """
    holders: dict[Path, Path] = {}
    try:
        for output in map(Path, outputs):
            if output in holders:
                raise ValueError(f"{output} is declared twice as an output")
            holders[output] = _reserve(output)
        yield StagedOutputs(holders)
        missing = [str(output) for output, holder in holders.items() if not os.path.lexists(holder / output.name)]
        if missing:
            raise RuntimeError(f"the stage did not write {', '.join(missing)}; no output was changed")
        _swap_into_place(holders)
    finally:
        for holder in holders.values():
            shutil.rmtree(holder, ignore_errors=True)


def _swap_into_place(holders: dict[Path, Path]) -> None:
    """Rename each staged output into place (the old one goes into its staging folder, deleted
    afterwards); on a failure, undo the swaps done so far."""
    done: list[tuple[Path, Path, bool]] = []
    try:
        for output, holder in holders.items():
            staged, old = holder / output.name, holder / f"{output.name}.old"
            had_old = os.path.lexists(output)
            if had_old:
                os.replace(output, old)
            try:
                os.replace(staged, output)
            except BaseException:
                if had_old:
                    os.replace(old, output)
                raise
            done.append((output, holder, had_old))
    except BaseException:
        for output, holder, had_old in reversed(done):
            with contextlib.suppress(OSError):
                os.replace(output, holder / output.name)
                if had_old:
                    os.replace(holder / f"{output.name}.old", output)
        raise


def progress(
    iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", disable_bar: bool = False, **kwargs
):
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
