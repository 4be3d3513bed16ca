"""The seed project's weighted sampling: images with more findings are drawn more often.

    weights = finding_weights(train_labels)                  # [N] = findings per image + 0.04
    batches = weighted_batches(weights, batch_size=32, seed=42, epoch=3, rank=0, world_size=1)
    for rows in batches: ...                                 # rows: list of train-row indices

An epoch draws N rows with replacement, so multi-finding images repeat and the many
"No Finding" images (over half of NIH) appear less often. The draw is a pure function of
(seed, epoch): every rank draws the same sequence and keeps its own share, and a resumed run
can recompute an epoch's batches and skip the ones it has already trained.
"""

from __future__ import annotations

import numpy as np
import torch

from cxr14.labels import LABEL_INDEX, NO_FINDING, NUM_CLASSES

# The seed's constant: a "No Finding" image (zero findings) keeps a small, non-zero chance,
# about 1/25 of a one-finding image, so the model still sees normal chests.
NO_FINDING_WEIGHT = 0.04


def finding_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling weight of each image: its number of findings + NO_FINDING_WEIGHT.

    The "No Finding" column is not a finding and does not count.

    Args:
        labels: [N, 15] multi-hot matrix in LABELS order (values 0/1; > 0.5 counts as positive).

    Returns:
        float64 [N] weights, each >= NO_FINDING_WEIGHT.

    Raises:
        ValueError: `labels` is not an [N, 15] matrix.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != NUM_CLASSES:
        raise ValueError(f"labels must be an [N, {NUM_CLASSES}] multi-hot matrix, got shape {labels.shape}")
    findings = np.delete(labels > 0.5, LABEL_INDEX[NO_FINDING], axis=1).sum(axis=1)
    return findings.astype(np.float64) + NO_FINDING_WEIGHT


def weighted_batches(
    weights: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    num_samples: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """This rank's batches of row indices, drawn with replacement in proportion to `weights`.

    All ranks draw the same `num_samples` indices from a generator seeded by (seed, epoch).
    The sequence is padded by wrapping around to a multiple of `world_size`, and rank r keeps
    positions r, r + world_size, r + 2 world_size, ... (as DistributedSampler does), so the
    ranks' shares partition the padded sequence and each has the same number of batches.
    Each share is cut into batches of `batch_size`; the last may be shorter.

    Args:
        weights: [N] non-negative weights, not all zero (need not sum to 1).
        batch_size: rows per batch, >= 1.
        seed: run seed.
        epoch: epoch number; a new epoch gives a new draw.
        num_samples: indices drawn per epoch over all ranks, >= 1; default N.
        rank: this process's rank, in [0, world_size).
        world_size: number of processes, >= 1.

    Raises:
        ValueError: an argument out of range; the message names it and its value.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or weights.size == 0:
        raise ValueError(f"weights must be a non-empty 1-D array, got shape {weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"weights must be finite and >= 0, got min {weights.min()} and max {weights.max()}")
    if not weights.sum() > 0:
        raise ValueError(f"weights sum to {weights.sum()}; at least one row needs a positive weight")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}) for world_size {world_size}, got {rank}")
    num_samples = weights.size if num_samples is None else num_samples
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")

    # The uniform loader's (seed, epoch) -> generator rule, so both samplers seed an epoch alike.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    drawn = torch.multinomial(torch.from_numpy(weights), num_samples, replacement=True, generator=generator).numpy()
    per_rank = -(-num_samples // world_size)
    # Modulo wraps more than once when there are fewer draws than ranks.
    padded = drawn[np.arange(per_rank * world_size) % num_samples]
    share = padded[rank::world_size].tolist()
    return [share[start : start + batch_size] for start in range(0, len(share), batch_size)]
