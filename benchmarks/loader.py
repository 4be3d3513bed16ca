"""Benchmark: the cache loader against a seed-style per-image loader, on one thread.

    python benchmarks/loader.py --images 256 --json loader.json

Renders --images phantom radiographs as --size px grayscale PNGs into a temp folder, builds
their 224 px cache with `build_cache`, and then, in one run with torch and OpenCV limited to one
thread, measures images/s of:

  (a) the seed-style loader: a Dataset over the PNG paths doing, per image, cv2.imread ->
      ToPILImage -> Resize(224) -> RandomHorizontalFlip -> RandomRotation(5) -> ToTensor ->
      Normalize, batched by a DataLoader (num_workers=0, shuffled);
  (b) our host side: `make_loader` over the memory-mapped cache (num_workers=0, shuffled) up to
      the uint8 batch that goes to the device (pinned when CUDA is available);
  (c) our device side: `prepare_batch` (augmentation with the AugmentConfig defaults, i.e. the
      seed's settings, 3-channel expansion, normalisation) at 224 px on --device.

(a) is all the seed's host did per training epoch and (b) all ours does (decoding and resizing
happened once, in preprocess; augmentation moved to the device), so (b)/(a) is printed as the
host-side speed-up, with whether it meets the goal of 50x; (c) is printed on its own because it
runs where the model runs. Each measurement covers whole epochs, repeated until it lasts at
least --min-seconds, and is taken --repeats times; the median is reported. The PNGs are read once
before timing so (a) sees a warm page cache, like (b). Timings are wall-clock and only as quiet as
the machine: other jobs on the same cores make them noisy.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cxr14.config import AugmentConfig
from cxr14.data.cache import build_cache, open_split, split_labels
from cxr14.data.loader import make_loader, prepare_batch
from cxr14.data.phantom import PNG_PARAMS, make_anatomy, render_image
from cxr14.io import atomic_write_json
from cxr14.labels import NUM_CLASSES

CACHE_SIZE = 224
# ImageNet statistics, as an ImageNet-pretrained model's config gives them; only the arithmetic
# matters here (importing timm for them would double this script's start-up time).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPEEDUP_GOAL = 50.0


class SeedStyleImages(Dataset):
    """The seed's way in: one PNG decode and a chain of PIL transforms per image."""

    def __init__(self, paths: list[Path], labels: np.ndarray, channels: int) -> None:
        self.paths, self.labels = paths, labels
        self.read_flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
        mean = IMAGENET_MEAN if channels == 3 else (float(np.mean(IMAGENET_MEAN)),)
        std = IMAGENET_STD if channels == 3 else (float(np.mean(IMAGENET_STD)),)
        self.transform = transforms.Compose(
            [
                transforms.ToPILImage(),
                transforms.Resize(CACHE_SIZE),
                transforms.RandomHorizontalFlip(),
                transforms.RandomRotation(5),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = cv2.imread(str(self.paths[row]), self.read_flag)
        return self.transform(image), torch.from_numpy(self.labels[row])


def write_pngs(images_dir: Path, count: int, size: int) -> list[Path]:
    """`count` phantom radiographs (no findings, one patient each) as 8-bit grayscale PNGs."""
    images_dir.mkdir(parents=True)
    paths = []
    for number in range(1, count + 1):
        image = render_image(make_anatomy(0, number), [], np.random.default_rng(number), size)
        path = images_dir / f"{number:08d}_000.png"
        if not cv2.imwrite(str(path), image, PNG_PARAMS):
            raise RuntimeError(f"{path}: PNG could not be written")
        paths.append(path)
    return paths


def images_per_second(epoch: Callable[[], int], min_seconds: float) -> float:
    """Run whole epochs (each returning the images it produced) for at least `min_seconds`."""
    images, started = 0, time.perf_counter()
    while True:
        images += epoch()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return images / elapsed


def measure(
    args: argparse.Namespace, paths: list[Path], cache_dir: Path, device: torch.device, pin_memory: bool
) -> dict[str, list[float]]:
    """images/s of (a), (b) and (c), --repeats times each (the cache is unmapped on return)."""
    images, index = open_split(cache_dir, "train")
    labels = split_labels(index)

    seed_loader = DataLoader(
        SeedStyleImages(paths, labels, args.seed_channels),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(0),
    )
    epoch_numbers = itertools.count()  # a fresh shuffle each epoch, as in training

    def seed_epoch() -> int:
        return sum(len(targets) for _, targets in seed_loader)

    def host_epoch() -> int:
        loader = make_loader(
            images, labels, args.batch_size, shuffle=True, seed=0, epoch=next(epoch_numbers), pin_memory=pin_memory
        )
        return sum(len(pixels) for pixels, _ in loader)

    batches = make_loader(images, labels, args.batch_size, shuffle=True, seed=0)
    on_device = [pixels.to(device) for pixels, _ in batches]
    augment, generator = AugmentConfig(), torch.Generator(device=device).manual_seed(0)

    def device_epoch() -> int:
        for pixels in on_device:
            prepare_batch(pixels, 3, IMAGENET_MEAN, IMAGENET_STD, CACHE_SIZE, augment, generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return len(images)

    runs: dict[str, list[float]] = {"seed_style": [], "host": [], "device": []}
    # Warm-up, untimed: lazy imports, first-call setup, the allocator.
    next(iter(seed_loader))
    host_epoch()
    device_epoch()
    for _ in range(args.repeats):
        runs["seed_style"].append(images_per_second(seed_epoch, args.min_seconds))
        runs["host"].append(images_per_second(host_epoch, args.min_seconds))
        runs["device"].append(images_per_second(device_epoch, args.min_seconds))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="number of PNGs (default: %(default)s)")
    parser.add_argument("--size", type=int, default=1024, help="PNG side in pixels (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of every loader (default: %(default)s)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="measurements of each rate; the median is reported (default: %(default)s)",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=0.5,
        help="each measurement repeats whole epochs until it lasts this long (default: %(default)s)",
    )
    parser.add_argument(
        "--seed-channels",
        type=int,
        choices=(1, 3),
        default=3,
        help="channels the seed-style loader "
        "reads: 3 = cv2.imread's default BGR, as for an ImageNet model (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device for (c) (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1 or args.batch_size < 1:
        parser.error("--images, --repeats and --batch-size must be at least 1")

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    torch.manual_seed(0)  # the seed-style flips and rotations draw from the global generator
    device = torch.device(args.device)
    pin_memory = torch.cuda.is_available()

    with tempfile.TemporaryDirectory(prefix="cxr14-loader-bench-") as scratch:
        paths = write_pngs(Path(scratch) / "images", args.images, args.size)
        for path in paths:  # warm the page cache, as the memmap will be after the cache build
            path.read_bytes()
        metadata = pd.DataFrame(
            {"image_id": [p.name for p in paths], "patient_id": [p.name[:8] for p in paths], "split": "train"}
        )
        build_cache(
            metadata,
            np.zeros((len(paths), NUM_CLASSES), dtype=np.uint8),
            {p.name: p for p in paths},
            Path(scratch) / "cache",
            size=CACHE_SIZE,
            workers=1,
        )
        runs = measure(args, paths, Path(scratch) / "cache", device, pin_memory)

    rates = {name: statistics.median(values) for name, values in runs.items()}
    speedup = rates["host"] / rates["seed_style"]
    met = speedup >= SPEEDUP_GOAL
    print(
        f"images: {args.images} PNGs of {args.size} px, cache at {CACHE_SIZE} px, batch {args.batch_size}, "
        f"1 thread, median of {args.repeats}"
    )
    print(f"{'measurement':<58}{'img/s':>12}")
    print(f"{'(a) seed-style per-image loader (cv2 + PIL transforms)':<58}{rates['seed_style']:12.1f}")
    print(
        f"{'(b) make_loader host side (memmap gather' + (', pinned)' if pin_memory else ')'):<58}{rates['host']:12.1f}"
    )
    print(f"{f'(c) prepare_batch on {device} (augment, 3 channels, normalise)':<58}{rates['device']:12.1f}")
    print(f"host-side speed-up: {speedup:.0f}× (goal >= {SPEEDUP_GOAL:.0f}×: {'met' if met else 'NOT met'})")
    print(
        f"on-device preparation (c): {rates['device']:.1f} img/s on {device} "
        f"({rates['device'] / rates['seed_style']:.1f}× the seed-style loader)"
    )
    if args.json:
        atomic_write_json(
            args.json,
            {
                "images": args.images,
                "png_size": args.size,
                "cache_size": CACHE_SIZE,
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "min_seconds": args.min_seconds,
                "seed_channels": args.seed_channels,
                "device": str(device),
                "pinned": pin_memory,
                "threads": 1,
                "images_per_second": rates,
                "runs": runs,
                "host_speedup": speedup,
                "host_speedup_goal": SPEEDUP_GOAL,
                "host_speedup_goal_met": met,
            },
        )


if __name__ == "__main__":
    main()
