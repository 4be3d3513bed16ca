"""Inference: choose the device, load a trained model safely, score cache pixels.

    device = select_device("auto")
    bundle, image_size = load_trained(Path("models/cnn/seed-42"), "cnn", device)
    scores = predict(bundle, images, labels, batch_size=64, image_size=image_size, device=device)

A library below training and evaluation: the evaluate, explain and profile stages and the
training engine's validation all score images through these functions, so a model is scored the
same way everywhere (eval mode, no augmentation, bf16 autocast on CUDA only). Reading a
memory-mapped split batch by batch, `predict` hands each batch's pages back to the OS page cache
(`release_mapped_pages`), so its resident memory is that of a batch, not of the split. `load_trained`
reads `best.pt` as data only (`cxr14.training.checkpoint.load_checkpoint`, the checkpoint file
format), so a shared model folder cannot run code.
"""

from __future__ import annotations

import logging
import mmap
from pathlib import Path

import numpy as np
import torch

from cxr14.config import ConfigError
from cxr14.data.loader import make_loader, prepare_batch
from cxr14.errors import InputDataError, MissingInputError
from cxr14.io import progress
from cxr14.labels import NUM_CLASSES
from cxr14.model_names import train_stage
from cxr14.models import ModelBundle, build_model
from cxr14.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

__all__ = ["select_device", "load_trained", "load_operating_points", "predict", "autocast", "release_mapped_pages"]


class DeviceUnavailableError(ConfigError, RuntimeError):
    """train.device names a device this machine does not have."""


def select_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """ "auto" = CUDA when present; under torchrun each process takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"train.device is {name!r} but CUDA is not available on this machine; set train.device: auto or cpu"
            )
        if world_size > 1:  # one GPU per process, chosen by torchrun's LOCAL_RANK
            name = f"cuda:{local_rank}"
    return torch.device(name)


def check_input_record(checkpoint: dict, bundle: ModelBundle, path: Path) -> None:
    """Refuse weights trained on other input than this installation prepares for the architecture.

    A checkpoint without the record (written before 2026-12-03) cannot be checked: a warning says so.

    Raises:
        InputDataError: the recorded channels, mean or std differ from the model's; names the file.
    """
    recorded, expected = checkpoint.get("input"), bundle.input_record()
    if recorded is None:
        log.warning(
            "%s: written before checkpoints recorded their input normalisation; using this installation's "
            "(in_chans %d, mean %s, std %s) unchecked. A cnn trained before 2026-12-03 saw mean 0, std 1: "
            "retrain it (dvc repro)",
            path,
            expected["in_chans"],
            expected["mean"],
            expected["std"],
        )
        return
    if recorded != expected:
        raise InputDataError(
            f"{path}: these weights were trained on input with in_chans/mean/std {recorded['in_chans']}/"
            f"{recorded['mean']}/{recorded['std']}, but this installation prepares {bundle.name} input with "
            f"{expected['in_chans']}/{expected['mean']}/{expected['std']}; retrain the model (dvc repro) or "
            "install the cxr14 version it was trained with"
        )


def load_trained(
    model_dir: Path,
    model_name: str,
    device: torch.device,
    freeze_backbone: bool = False,
    checkpoint: dict | None = None,
):
    """Rebuild the architecture and load `best.pt` (the early-stopping choice).

    `freeze_backbone` only restores which parameters were trainable (for the layer table). Pass
    `checkpoint` when best.pt is already loaded, so that it is not read again.
    """
    checkpoint_path = model_dir / "best.pt"
    if checkpoint is None:
        if not checkpoint_path.is_file():
            raise MissingInputError(
                f"{checkpoint_path}: no trained checkpoint; run `dvc repro {train_stage(model_name, model_dir)}`"
            )
        checkpoint = load_checkpoint(checkpoint_path)  # data only: a shared model folder cannot run code
    # The checkpoint holds every weight: never fetch pretrained ones here.
    bundle = build_model(
        model_name, NUM_CLASSES, checkpoint["image_size"], pretrained=False, freeze_backbone=freeze_backbone
    )
    check_input_record(checkpoint, bundle, checkpoint_path)
    bundle.model.load_state_dict(checkpoint["model"])
    bundle.model.to(device)
    return bundle, checkpoint["image_size"]


def load_operating_points(model_dir: Path, model_name: str, checkpoint: dict | None = None) -> dict:
    """The validation operating points training stored in `best.pt` with the weights
    (cxr14.evaluation.metrics.operating_points): the one source of every threshold. Pass
    `checkpoint` when best.pt is already loaded, so that it is not read again."""
    checkpoint_path = model_dir / "best.pt"
    points = (checkpoint if checkpoint is not None else load_checkpoint(checkpoint_path)).get("operating_points")
    if not points:
        raise MissingInputError(
            f"{checkpoint_path}: holds no validation thresholds (trained before they were stored with the "
            f"weights); train it again: `dvc repro -f {train_stage(model_name, model_dir)}`"
        )
    return points


@torch.no_grad()
def predict(
    bundle: ModelBundle,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    image_size: int,
    device: torch.device,
    desc: str = "predict",
    *,
    logits: bool = False,
    show_progress: bool = True,
) -> np.ndarray:
    """Sigmoid scores [N, 15] for a cache split, in its row order (no augmentation); with `logits`,
    the float32 logits instead (the training engine's validation loss needs them). `show_progress`
    False: no bar of batches (a caller that shows its own, over more work).

    Memory stays at one batch whatever N is: a memory-mapped split's pages are handed back after
    each batch, and each batch's scores are copied into the one output array at once. (Keeping a
    small tensor per batch alive between the batches' large temporaries fragments the C heap,
    which then grew by ~1 GB over NIH's 25,596 test images.)
    """
    bundle.model.eval()
    loader = make_loader(images, labels, batch_size, shuffle=False, seed=0, pin_memory=device.type == "cuda")
    outputs = np.zeros((0, NUM_CLASSES), np.float32)
    done = 0
    for pixels, _ in progress(loader, desc=desc, unit="batch", leave=False, disable_bar=not show_progress):
        inputs = prepare_batch(
            pixels.to(device, non_blocking=True), bundle.in_chans, bundle.mean, bundle.std, image_size
        )
        with autocast(device):
            batch_logits = bundle.model(inputs).float()
            values = (batch_logits if logits else torch.sigmoid(batch_logits)).cpu().numpy()
        if not done:  # the width is the model's output's
            outputs = np.empty((len(images), values.shape[1]), np.float32)
        outputs[done : done + len(values)] = values
        done += len(values)
        release_mapped_pages(images)
    return outputs


def autocast(device: torch.device):
    """The mixed precision of every forward pass (training and inference) on `device`."""
    # bf16 on a CUDA GPU that computes in it (Ampere and later): it keeps fp32's range, so no loss
    # scaler is needed. Older GPUs (V100, T4) and the CPU run in fp32: fp16 would need a loss
    # scaler, emulated bf16 is slower than fp32, and on the CPU autocast only slows the seed models.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device))


def uses_bf16(device: torch.device) -> bool:
    """Whether `autocast` runs the forward pass in bf16 on `device`."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def release_mapped_pages(images: np.ndarray) -> None:
    """Take a read-only memory-mapped array's pages out of this process's resident memory.

    Pages of a mapped file that the process has read count in its RSS until they are unmapped,
    so reading a whole cache split (1.3 GB for NIH's 25,596 test images at 224 px) would leave
    all of it resident. `madvise(MADV_DONTNEED)` drops them from the process only: the file's
    data stay in the OS page cache, and reading a row again maps it again, with the same bytes.
    Arrays in memory, views of other buffers, and writable or copy-on-write maps (whose pages
    must not be dropped) are left alone; so is everything where `madvise` is unavailable.
    """
    root: object = images
    while isinstance(root, np.ndarray) and not isinstance(root.base, mmap.mmap):
        root = root.base
    if not isinstance(root, np.memmap) or root.mode != "r" or not hasattr(mmap, "MADV_DONTNEED"):
        return
    assert isinstance(root.base, mmap.mmap)  # the loop stopped at the array that owns the map
    root.base.madvise(mmap.MADV_DONTNEED)
