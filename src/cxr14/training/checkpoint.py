"""Atomic checkpoints that hold everything a killed run needs to continue bit-for-bit.

    save_checkpoint(path, {"model": ..., "rng": capture_rng(generator), ...})
    restore_rng(checkpoint["rng"], generator)

Random state is part of the checkpoint: the global torch RNG (dropout, drop-path), the
augmentation generator on the device, CUDA's, NumPy's and Python's. Restoring them makes the
steps after a resume draw exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from cxr14.io import atomic_write_bytes


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save into memory, then an atomic rename: a kill never leaves half a file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def capture_rng(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "augment": generator.get_state(),
             "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
