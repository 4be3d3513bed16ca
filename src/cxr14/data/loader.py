"""Batches of uint8 straight from the memory-mapped cache, then augmentation on the device.

    loader = make_loader(images, labels, batch_size=32, shuffle=True, seed=42, epoch=0,
                         rank=context.rank, world_size=context.world_size)
    for pixels, targets in loader:          # pixels: uint8 [B, 1, S, S] (pinned on CUDA)
        inputs = prepare_batch(pixels.to(device), in_chans, mean, std, image_size, augment_cfg, generator)

The host only gathers rows of a memory map (no decoding, no per-image Python transforms), so
a few CPU cores can feed a GPU; flips, affine jitter, resizing and normalisation run as batched
tensor ops on whatever device the model lives on. `python benchmarks/loader.py` measures both
halves against a per-image PIL pipeline.
"""

from __future__ import annotations

import math
import mmap
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from cxr14.config import AugmentConfig


@dataclass(frozen=True)
class _MappedView:
    """How to reopen a view of a memory-mapped file in another process (instead of copying it)."""

    filename: str
    file_offset: int  # where the mapped array starts in the file (the .npy header is skipped)
    dtype: str
    file_shape: tuple[int, ...]
    file_order: Literal["C", "F"]
    view_offset: int  # bytes from the start of the mapped array to the view's first element
    view_shape: tuple[int, ...]
    view_strides: tuple[int, ...]

    def open(self) -> np.ndarray:
        mapped = np.memmap(
            self.filename,
            dtype=self.dtype,
            mode="r",
            offset=self.file_offset,
            shape=self.file_shape,
            order=self.file_order,
        )
        return np.ndarray(
            self.view_shape, dtype=mapped.dtype, buffer=mapped, offset=self.view_offset, strides=self.view_strides
        )


def _mapped_view(array: np.ndarray) -> _MappedView | None:
    """Describe `array` as a view of a memory-mapped file, or None when it lives in memory."""
    root: np.ndarray | None = array
    while isinstance(root, np.ndarray) and not isinstance(root.base, mmap.mmap):
        root = root.base
    if not isinstance(root, np.memmap) or root.filename is None:
        return None
    order: Literal["C", "F"] = "F" if root.flags.f_contiguous and not root.flags.c_contiguous else "C"
    start = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return _MappedView(
        str(root.filename),
        int(root.offset),
        root.dtype.str,
        tuple(root.shape),
        order,
        int(start),
        tuple(array.shape),
        tuple(array.strides),
    )


class CacheBatches(Dataset):
    """Indexable by a *list* of rows: returns the whole batch in one memmap gather.

    Pickles a memory-mapped `images` as its file name and position, so DataLoader workers
    started with spawn or forkserver map the same file instead of receiving a copy of the cache.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} label rows")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows_sorted = np.sort(np.asarray(rows))  # sequential reads from the memmap
        order = np.argsort(np.argsort(np.asarray(rows)))
        pixels = np.ascontiguousarray(self.images[rows_sorted][order])
        return torch.from_numpy(pixels).unsqueeze(1), torch.from_numpy(self.labels[np.asarray(rows)])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["images"] = _mapped_view(self.images) or self.images
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["images"], _MappedView):
            state["images"] = state["images"].open()
        self.__dict__.update(state)


def shard(order: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of `order` (the same list on every rank): every world_size-th element.

    The order is first extended by wrapping around to a multiple of world_size, so every rank
    gets the same number of rows (DDP needs equal step counts); shards are disjoint except for
    those fewer than world_size repeated rows. world_size=1 returns `order` unchanged.
    """
    if not order:
        return []
    padded = np.resize(np.asarray(order, dtype=np.int64), -(-len(order) // world_size) * world_size)
    return padded[rank::world_size].tolist()


def _check_distributed(rank: int, world_size: int) -> None:
    if not isinstance(world_size, numbers.Integral) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    if not isinstance(rank, numbers.Integral) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")


def _check_batches(batches: list[list[int]], rows: int) -> list[list[int]]:
    checked = []
    for position, batch in enumerate(batches):
        batch = [int(row) for row in batch]
        if not batch:
            raise ValueError(f"batches[{position}] is empty; drop empty batches before calling make_loader")
        if min(batch) < 0 or max(batch) >= rows:
            bad = next(row for row in batch if not 0 <= row < rows)
            raise ValueError(f"batches[{position}] holds row {bad}, outside the {rows} cached images")
        checked.append(batch)
    return checked


def make_loader(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    max_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
    batches: list[list[int]] | None = None,
) -> DataLoader:
    """A DataLoader yielding (uint8 [B,1,S,S], float32 [B,15]); order seeded by (seed, epoch).

    `loader.sampler` is the list of row batches it will read, in order.

    Args:
        shuffle: a permutation seeded by (seed, epoch), the same on every rank; otherwise row order.
        num_workers: processes gathering batches (0 = in this process); any count gives the
            same batches in the same order.
        max_batches: keep only the first this many batches of this rank (0 = all).
        rank, world_size: with world_size > 1 this process reads only its `shard` of the order,
            padded by wrapping so all ranks take the same number of steps. The padding repeats a
            few rows, so a sharded loader is for training only: evaluation runs on rank 0 with
            world_size=1, which reads every row exactly once.
        batches: precomputed row batches (e.g. from weighted sampling, already drawn for this
            rank); read as given, without shuffling or sharding them again.
    """
    _check_distributed(rank, world_size)
    dataset = CacheBatches(images, labels)
    if batches is not None:
        plan = _check_batches(batches, len(dataset))
    else:
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if shuffle and len(dataset):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = list(RandomSampler(dataset, generator=generator))
        else:
            order = list(range(len(dataset)))
        order = shard(order, rank, world_size)
        plan = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if max_batches:
        plan = plan[:max_batches]
    # Its own generator: starting an iteration draws a base seed (for worker processes), which
    # from the global torch RNG would shift dropout after a resume restored that RNG mid-epoch.
    private = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(
        dataset, sampler=plan, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, generator=private
    )


def _random_affine(
    batch: int, cfg: AugmentConfig, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """[B, 2, 3] affine matrices (rotation, zoom, shear, shift, flip) for F.affine_grid."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator, device=device) * (high - low) + low

    angle = uniform(-cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180.0)
    scale = uniform(1.0 - cfg.zoom, 1.0 + cfg.zoom)  # >1 samples a larger area = zoom out
    shift_x = uniform(-cfg.shift_x, cfg.shift_x) * 2.0  # grid units span [-1, 1]
    shift_y = uniform(-cfg.shift_y, cfg.shift_y) * 2.0
    flip = torch.ones(batch, device=device)
    if cfg.hflip:
        flip = torch.where(torch.rand(batch, generator=generator, device=device) < 0.5, -1.0, 1.0)
    # Drawn last, so the other parameters are the ones earlier versions drew for the same seed.
    shear = uniform(-cfg.shear_deg, cfg.shear_deg) * (math.pi / 180.0)
    zeros, ones = torch.zeros(batch, device=device), torch.ones(batch, device=device)

    def matrices(rows: list[list[torch.Tensor]]) -> torch.Tensor:  # [B, 2, 2] from per-sample entries
        return torch.stack([torch.stack(row, dim=1) for row in rows], dim=1)

    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    rotate_zoom = matrices([[cos, -sin], [sin, cos]])
    shear_x = matrices([[ones, torch.tan(shear)], [zeros, ones]])  # x moves in proportion to y
    mirror = matrices([[flip, zeros], [zeros, ones]])
    linear = rotate_zoom @ shear_x @ mirror
    return torch.cat([linear, torch.stack([shift_x, shift_y], dim=1).unsqueeze(2)], dim=2)


def prepare_batch(
    pixels: torch.Tensor,
    in_chans: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: int,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 [B,1,S,S] on the device -> normalised float [B,in_chans,image_size,image_size].

    Args:
        augment: None for evaluation; otherwise the seed-style random flip/rotate/shear/shift/zoom
            with reflect fill (so no black corners appear that a model could key on). The warp runs
            at the smaller of the cache's and the model's resolution (a cache shrunk to the model's
            size first, enlarged after): its matrices are in the image's [-1, 1] coordinates, so the
            transform is the same, and a 224 px cache seen at 64 px warps 12x fewer pixels.
        generator: a device generator, seeded by the engine, so augmentation is reproducible.
    """
    images = pixels.float().div_(255.0)
    if images.shape[-1] > image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="area")
    if augment is not None:
        theta = _random_affine(images.shape[0], augment, generator, images.device)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if images.shape[-1] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="area")
    if in_chans != 1:
        images = images.expand(-1, in_chans, -1, -1)
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return ((images - mean_t) / std_t).contiguous()
