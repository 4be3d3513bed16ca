"""Batches of uint8 straight from the memory-mapped cache, then augmentation on the device.

    loader = make_loader(images, labels, batch_size=32, shuffle=True, seed=42, epoch=0)
    for pixels, targets in loader:          # pixels: uint8 [B, 1, S, S] (pinned on CUDA)
        inputs = prepare_batch(pixels.to(device), bundle, augment_cfg, image_size, generator)

The host only gathers rows of a memory map (no decoding, no per-image Python transforms), so
a few CPU cores can feed a GPU; flips, affine jitter, resizing and normalisation run as batched
tensor ops on whatever device the model lives on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from cxr14.config import AugmentConfig


class CacheBatches(Dataset):
    """Indexable by a *list* of rows: returns the whole batch in one memmap gather."""

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
) -> DataLoader:
    """A DataLoader yielding (uint8 [B,1,S,S], float32 [B,15]); order seeded by (seed, epoch)."""
    dataset = CacheBatches(images, labels)
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    batches = list(BatchSampler(sampler, batch_size, drop_last=False))
    if max_batches:
        batches = batches[:max_batches]
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)


def _random_affine(batch: int, cfg: AugmentConfig, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """[B, 2, 3] affine matrices (rotation, zoom, shift, flip) for F.affine_grid."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator, device=device) * (high - low) + low

    angle = uniform(-cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180.0)
    scale = uniform(1.0 - cfg.zoom, 1.0 + cfg.zoom)  # >1 samples a larger area = zoom out
    shift_x = uniform(-cfg.shift_x, cfg.shift_x) * 2.0  # grid units span [-1, 1]
    shift_y = uniform(-cfg.shift_y, cfg.shift_y) * 2.0
    flip = torch.ones(batch, device=device)
    if cfg.hflip:
        flip = torch.where(torch.rand(batch, generator=generator, device=device) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift_x], dim=1), torch.stack([sin * flip, cos, shift_y], dim=1)], dim=1
    )
    return theta


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
        augment: None for evaluation; otherwise the seed-style random flip/rotate/shift/zoom
            with reflect fill (so no black corners appear that a model could key on).
        generator: a device generator, seeded by the engine, so augmentation is reproducible.
    """
    images = pixels.float().div_(255.0)
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
