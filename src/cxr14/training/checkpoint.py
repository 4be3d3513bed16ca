"""Checkpoints that are data, never code, and hold everything a killed run needs to continue bit-for-bit.

    save_checkpoint(path, {"model": ..., "rng": capture_rng(generator), ...})
    checkpoint = load_checkpoint(path)            # tensors and plain Python data only
    restore_rng(checkpoint["rng"][rank], generator)

Loading: every checkpoint (best.pt, last.pt) is read with ``torch.load(weights_only=True)``, so a
file from elsewhere (a shared model folder, a DVC remote) cannot run code when it is opened: a
pickled object other than tensors, numbers, strings, lists, tuples and dicts is refused with
:class:`CheckpointError` naming the file, before anything is built from it. Writing keeps to
those types (NumPy's RNG state is stored as a tensor and plain numbers, metrics as floats), so
the project's own checkpoints always load this way.

Writing: ``torch.save`` into memory, then an atomic rename in the same folder (a kill never leaves
half a checkpoint). The rename's temporary sibling (``.last.pt.<random>.tmp``) is the only thing
a kill during the write can leave behind; :func:`remove_stale_temporaries` deletes such leftovers
when training starts again.

Random state is part of the checkpoint: the global torch RNG (dropout, drop-path), the
augmentation generator on the device, CUDA's, NumPy's and Python's. Restoring them makes the
steps after a resume draw exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import io
import logging
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from cxr14.errors import Cxr14Error
from cxr14.io import atomic_write_bytes
from cxr14.models.registry import NUMPY_SCALAR_GLOBALS

log = logging.getLogger(__name__)


class CheckpointError(Cxr14Error, ValueError):
    """A checkpoint file that cannot be loaded safely: foreign objects, truncated or not a checkpoint."""


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save into memory, then an atomic rename: a kill never leaves half a file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint in `path`, read as data only (``weights_only=True``): never runs code.

    Raises:
        CheckpointError: `path` holds objects other than tensors and plain data (the unpickler
            refuses them before creating anything), is truncated or empty, or is not a mapping;
            the message names the file and what to do.
    """
    path = Path(path)
    try:
        # NumPy scalars (metrics in checkpoints of earlier versions) are data too.
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"(Unsupported global|unsupported GLOBAL)[^\n]*", str(error))
        detail = f" ({found.group(0).strip()})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects other than tensors and plain data{detail}, "
            "which could run code when unpickled. Checkpoints written by this project never do; delete the "
            "file and re-create it (`dvc repro` re-trains, `dvc checkout` restores the recorded one)"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        reason = str(error).splitlines()[0] if str(error) else "empty or truncated file"
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {reason}); "
            "delete it and re-run the stage that writes it"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: expected a checkpoint dict, found {type(checkpoint).__name__}; "
            "delete it and re-run the stage that writes it"
        )
    return checkpoint


def remove_stale_temporaries(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary siblings (``.<name>.*.tmp``) that a kill during an atomic write of one of
    `names` left in `folder`; returns what was removed (logged with its size).

    Only call this where no other process is writing these files (one training per model folder).
    """
    removed = []
    for name in names:
        for leftover in sorted(Path(folder).glob(f".{name}.*.tmp")):
            size = leftover.stat().st_size
            leftover.unlink(missing_ok=True)
            log.info("removed %s (%.1f MB), left by a run killed while writing %s", leftover, size / 1e6, name)
            removed.append(leftover)
    return removed


def capture_rng(generator: torch.Generator) -> dict:
    """Every random state a training step draws from, as tensors and plain numbers."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "augment": generator.get_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["augment"].cpu())
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].cpu().numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
