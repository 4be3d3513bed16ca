import numpy as np
import torch

from cxr14.config import AugmentConfig
from cxr14.data.loader import make_loader, prepare_batch


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
