import math
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from cxr14.config import AugmentConfig
from cxr14.data.loader import CacheBatches, _random_affine, make_loader, prepare_batch
from tests.conftest import REPO_ROOT


def gradient_images(n=8, size=32):
    ramp = np.tile(np.arange(size, dtype=np.uint8) * 8, (size, 1))
    return np.stack([ramp] * n), np.eye(15, dtype=np.float32)[np.arange(n) % 15]


def test_loader_yields_uint8_batches_in_seeded_order():
    images, labels = gradient_images()
    images = images + np.arange(8, dtype=np.uint8)[:, None, None]  # tell rows apart
    batches = list(make_loader(images, labels, batch_size=3, shuffle=True, seed=1, epoch=0))
    assert [tuple(b[0].shape) for b in batches] == [(3, 1, 32, 32), (3, 1, 32, 32), (2, 1, 32, 32)]
    assert batches[0][0].dtype == torch.uint8
    # labels travel with their images
    for pixels, targets in batches:
        rows = pixels[:, 0, 0, 0].numpy().astype(int)  # pixel (0, 0) holds the row number
        assert np.array_equal(targets.numpy(), labels[rows])
    again = [b[0] for b in make_loader(images, labels, 3, shuffle=True, seed=1, epoch=0)]
    other = [b[0] for b in make_loader(images, labels, 3, shuffle=True, seed=1, epoch=1)]
    assert all(torch.equal(a, b[0]) for a, b in zip(again, batches))
    assert not all(torch.equal(a, b) for a, b in zip(again, other))


def test_prepare_batch_normalises_expands_and_augments():
    images, _ = gradient_images(4)
    pixels = torch.from_numpy(images).unsqueeze(1)
    plain = prepare_batch(pixels, 3, (0.5,), (0.25,), image_size=16)
    assert plain.shape == (4, 3, 16, 16) and plain.dtype == torch.float32
    assert torch.allclose(plain[:, 0], plain[:, 2])
    # area resizing keeps the mean; normalisation maps it to (mean - 0.5) / 0.25
    expected_mean = (images.astype(np.float32) / 255.0).mean()
    assert abs(plain.mean().item() - (expected_mean - 0.5) / 0.25) < 1e-4
    cfg = AugmentConfig()
    first = prepare_batch(pixels, 1, (0.0,), (1.0,), 32, cfg, torch.Generator().manual_seed(0))
    same = prepare_batch(pixels, 1, (0.0,), (1.0,), 32, cfg, torch.Generator().manual_seed(0))
    other = prepare_batch(pixels, 1, (0.0,), (1.0,), 32, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(first, same) and not torch.equal(first, other)
    assert not torch.equal(first, prepare_batch(pixels, 1, (0.0,), (1.0,), 32))  # augmentation changed pixels
    assert first.min() >= 0 and first.max() <= 1  # reflect fill: no out-of-range pixels


def _smooth_images(n, size):
    """Slowly varying pictures (a bright disc on a ramp): resampling them at another size changes little."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    picture = 0.4 + 0.25 * x + 0.3 * np.exp(-((x - 0.2) ** 2 + (y + 0.1) ** 2) / 0.2)
    return torch.from_numpy(np.round(np.stack([picture] * n) * 255).astype(np.uint8)).unsqueeze(1)


@pytest.mark.parametrize(("cache", "model"), [(64, 16), (16, 32), (32, 32)])
def test_augmentation_warps_at_the_smaller_of_the_cache_and_model_sizes(monkeypatch, cache, model):
    sizes = []
    affine_grid = torch.nn.functional.affine_grid

    def recording(theta, size, **kwargs):
        sizes.append(tuple(size))
        return affine_grid(theta, size, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "affine_grid", recording)
    out = prepare_batch(_smooth_images(3, cache), 1, (0.0,), (1.0,), model, AugmentConfig(), torch.Generator())
    assert out.shape == (3, 1, model, model)
    assert sizes == [(3, 1, min(cache, model), min(cache, model))]


def test_augmenting_before_or_after_shrinking_is_the_same_transform():
    """The affine matrices are in [-1, 1] image coordinates: warping the 64 px picture and then
    shrinking it gives (up to resampling) what shrinking and then warping gives."""
    pixels = _smooth_images(6, 64)
    cfg = AugmentConfig(rotation_deg=20.0, zoom=0.2, shift_x=0.1, shift_y=0.1)
    warped_small = prepare_batch(pixels, 1, (0.0,), (1.0,), 16, cfg, torch.Generator().manual_seed(5))
    theta = _random_affine(6, cfg, torch.Generator().manual_seed(5), torch.device("cpu"))
    full = pixels.float() / 255.0
    functional = torch.nn.functional
    grid = functional.affine_grid(theta, list(full.shape), align_corners=False)
    warped = functional.grid_sample(full, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    warped_full = functional.interpolate(warped, size=(16, 16), mode="area")
    plain = prepare_batch(pixels, 1, (0.0,), (1.0,), 16)
    assert (warped_small - warped_full).abs().mean() < 0.01  # the same transform ...
    assert (plain - warped_full).abs().mean() > 0.03  # ... of a visible size


# ------------------------------------------------------------------------------------ shear
ONLY_SHEAR = AugmentConfig(hflip=False, rotation_deg=0.0, shift_x=0.0, shift_y=0.0, zoom=0.0, shear_deg=20.0)


def test_shear_alone_gives_a_pure_shear_matrix_and_changes_pixels():
    theta = _random_affine(6, ONLY_SHEAR, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.all(theta[:, 0, 1].abs() > 0) and torch.all(theta[:, 0, 1].abs() <= math.tan(math.radians(20.0)))
    assert torch.equal(theta[:, 1, 0], torch.zeros(6)) and torch.equal(theta[:, :, 2], torch.zeros(6, 2))
    assert torch.allclose(theta[:, 0, 0], torch.ones(6)) and torch.allclose(theta[:, 1, 1], torch.ones(6))
    pixels = torch.from_numpy(np.stack([np.tile(np.arange(32, dtype=np.uint8)[:, None] * 8, (1, 32))] * 2)).unsqueeze(1)
    pixels[:, :, :, 16:] = 0  # a vertical edge, which a horizontal shear tilts
    sheared = prepare_batch(pixels, 1, (0.0,), (1.0,), 32, ONLY_SHEAR, torch.Generator().manual_seed(0))
    assert not torch.allclose(sheared, prepare_batch(pixels, 1, (0.0,), (1.0,), 32), atol=1e-3)


def test_shear_default_is_the_seeds_tenth_of_a_degree_and_seeded():
    assert AugmentConfig().shear_deg == 0.1
    cfg = AugmentConfig(hflip=False, rotation_deg=0.0, shift_x=0.0, shift_y=0.0, zoom=0.0)
    theta = _random_affine(16, cfg, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert torch.all(theta[:, 0, 1] != 0) and torch.all(theta[:, 0, 1].abs() <= math.tan(math.radians(0.1)))
    again = _random_affine(16, cfg, torch.Generator().manual_seed(3), torch.device("cpu"))
    other = _random_affine(16, cfg, torch.Generator().manual_seed(4), torch.device("cpu"))
    assert torch.equal(theta, again) and not torch.equal(theta, other)


def test_shear_is_drawn_after_the_other_parameters():
    # Rotation, zoom, shift and flip keep the values they had before shear existed.
    no_shear = AugmentConfig(hflip=True, rotation_deg=5.0, shift_x=0.1, shift_y=0.05, zoom=0.15, shear_deg=0.0)
    theta = _random_affine(8, no_shear, torch.Generator().manual_seed(5), torch.device("cpu"))
    generator = torch.Generator().manual_seed(5)
    draw = [torch.rand(8, generator=generator) for _ in range(5)]  # angle, scale, shift x, shift y, flip
    angle = (draw[0] * 10.0 - 5.0) * math.pi / 180.0  # uniform in [-5, 5] degrees
    scale = draw[1] * 0.3 + 0.85  # uniform in [0.85, 1.15]
    flip = torch.where(draw[4] < 0.5, -1.0, 1.0)
    assert torch.allclose(theta[:, 0, 0], torch.cos(angle) * scale * flip)
    assert torch.allclose(theta[:, 1, 0], torch.sin(angle) * scale * flip)
    assert torch.allclose(theta[:, 0, 2], (draw[2] * 0.2 - 0.1) * 2.0)


# ------------------------------------------------------------------------------ distribution
def shuffled_batches(rows, batch_size, seed, epoch):
    """The order make_loader has always used for world_size=1, built explicitly."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [list(b) for b in BatchSampler(RandomSampler(range(rows), generator=generator), batch_size, False)]


@pytest.mark.parametrize("rows", [10, 37])
def test_single_process_order_is_unchanged(rows):
    images, labels = np.zeros((rows, 4, 4), np.uint8), np.zeros((rows, 15), np.float32)
    for epoch in (0, 3):
        loader = make_loader(images, labels, 4, shuffle=True, seed=42, epoch=epoch)
        assert loader.sampler == shuffled_batches(rows, 4, 42, epoch)
    assert make_loader(images, labels, 4, shuffle=False, seed=42).sampler == [
        list(range(start, min(start + 4, rows))) for start in range(0, rows, 4)
    ]
    assert len(make_loader(images, labels, 4, shuffle=True, seed=42, max_batches=2).sampler) == 2


@pytest.mark.parametrize(("rows", "world_size", "batch_size"), [(24, 4, 3), (10, 3, 2), (37, 4, 5), (2, 3, 4)])
def test_shards_cover_the_permutation_with_equal_batch_counts(rows, world_size, batch_size):
    images, labels = np.zeros((rows, 4, 4), np.uint8), np.zeros((rows, 15), np.float32)

    def shards():
        return [
            make_loader(
                images, labels, batch_size, shuffle=True, seed=7, epoch=1, rank=rank, world_size=world_size
            ).sampler
            for rank in range(world_size)
        ]

    plans = shards()
    assert plans == shards()  # every call (every rank, every resume) agrees
    assert len({len(plan) for plan in plans}) == 1
    assert len({sum(map(len, plan)) for plan in plans}) == 1
    taken = [row for plan in plans for batch in plan for row in batch]
    per_rank = -(-rows // world_size)
    assert len(taken) == per_rank * world_size and set(taken) == set(range(rows))
    assert len(set(taken)) == rows  # disjoint apart from the < world_size wrapped rows
    if rows % world_size == 0:
        assert sorted(taken) == list(range(rows))
    # the shards interleave the same seeded permutation the single process uses
    permutation = [row for batch in shuffled_batches(rows, rows, 7, 1) for row in batch]
    padded = (permutation * world_size)[: per_rank * world_size]
    assert [row for batch in plans[1] for row in batch] == padded[1::world_size]


def test_sharded_max_batches_and_validation():
    images, labels = np.zeros((40, 4, 4), np.uint8), np.zeros((40, 15), np.float32)
    plans = [make_loader(images, labels, 3, True, 0, rank=r, world_size=2, max_batches=2).sampler for r in (0, 1)]
    assert [len(plan) for plan in plans] == [2, 2]
    assert not set(sum(plans[0], [])) & set(sum(plans[1], []))
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, world_size=2\), got 2"):
        make_loader(images, labels, 3, True, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size must be an integer >= 1, got 0"):
        make_loader(images, labels, 3, True, 0, world_size=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        make_loader(images, labels, 0, True, 0)


def test_precomputed_batches_are_read_as_given():
    images, labels = gradient_images(8)
    images = images + np.arange(8, dtype=np.uint8)[:, None, None]
    plan = [[5, 5, 1], [7], [0, 2]]  # repeats allowed (weighted sampling draws with replacement)
    loader = make_loader(images, labels, 99, shuffle=True, seed=1, rank=1, world_size=2, batches=plan)
    assert loader.sampler == plan
    got = [pixels[:, 0, 0, 0].numpy().tolist() for pixels, _ in loader]
    assert got == plan
    assert make_loader(images, labels, 99, True, 1, batches=plan, max_batches=2).sampler == plan[:2]
    with pytest.raises(ValueError, match=r"batches\[1\] holds row 8, outside the 8 cached images"):
        make_loader(images, labels, 4, False, 0, batches=[[0], [8]])
    with pytest.raises(ValueError, match=r"batches\[0\] is empty"):
        make_loader(images, labels, 4, False, 0, batches=[[]])


# ---------------------------------------------------------------------------------- workers
def cached_split(tmp_path, rows=40, size=16):
    """A memory-mapped .npy like the cache's, rows told apart by their pixels."""
    array = np.lib.format.open_memmap(tmp_path / "train.npy", mode="w+", dtype=np.uint8, shape=(rows, size, size))
    array[:] = np.random.default_rng(0).integers(0, 256, size=(rows, size, size), dtype=np.uint8)
    array.flush()
    del array
    labels = np.random.default_rng(1).integers(0, 2, size=(rows, 15)).astype(np.float32)
    return np.load(tmp_path / "train.npy", mmap_mode="r"), labels


def test_workers_give_the_same_batches(tmp_path):
    images, labels = cached_split(tmp_path)
    for kwargs in ({"rank": 1, "world_size": 2}, {"batches": [[3, 1], [39, 0, 0]]}):
        inline = list(make_loader(images, labels, 6, shuffle=True, seed=3, num_workers=0, **kwargs))
        workers = list(make_loader(images, labels, 6, shuffle=True, seed=3, num_workers=2, **kwargs))
        assert len(inline) == len(workers) > 0
        for (pixels_a, targets_a), (pixels_b, targets_b) in zip(inline, workers):
            assert torch.equal(pixels_a, pixels_b) and torch.equal(targets_a, targets_b)


def test_dataset_pickles_the_memmap_by_reference(tmp_path):
    images, labels = cached_split(tmp_path, rows=200, size=64)  # 800 kB of pixels
    for view in (images, images[50:150], images[::3]):
        dataset = CacheBatches(view, labels[: len(view)])
        payload = pickle.dumps(dataset)
        assert len(payload) < 30_000  # the labels and a file reference, not the pixels
        copy = pickle.loads(payload)
        assert np.array_equal(copy.images, view) and not copy.images.flags.writeable
        assert torch.equal(copy[[4, 0, 4]][0], dataset[[4, 0, 4]][0])
    in_memory = np.array(images[:5])
    assert np.array_equal(pickle.loads(pickle.dumps(CacheBatches(in_memory, labels[:5]))).images, in_memory)


# -------------------------------------------------------------------------------- benchmark
def test_loader_benchmark_runs_small():
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "loader.py"),
            "--images",
            "16",
            "--repeats",
            "1",
            "--size",
            "256",
            "--min-seconds",
            "0.05",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "CXR14_NO_PROGRESS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^host-side speed-up: \d+× \(goal >= 50×: (met|NOT met)\)$", result.stdout, re.MULTILINE)
    assert "(c) prepare_batch on cpu" in result.stdout
