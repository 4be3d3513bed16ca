"""Benchmark: training throughput -- the device-only step, the full step with the real loader, the loader
alone, step variants (torch.compile, bf16 autocast, channels-last) and inference, side by side.

    python benchmarks/throughput.py                                   # params.yaml's models, as training runs them
    python benchmarks/throughput.py --models cnn resnet18 --device cuda --image-size 224 --batch-size 64 \\
        --cache data/cache --json throughput.json
    python benchmarks/throughput.py --models cnn --device cpu --image-size 32 --batch-size 4 --warmup 1 \\
        --steps 2 --repeats 1 --variants bf16 --cache-images 16 --cache-side 64   # a smoke run, as the test

Every model is built and trained the way `train@<model>` does it (cxr14.training.engine): its
`train.*` settings with its `train.overrides` applied (`--image-size`, `--batch-size` and
`--num-workers` replace them when given), `build_for_training` (weights, freezing), the model's own
registered normalisation, optimizer, schedule and loss all from `engine.assemble_training`, and the
engine's own step functions `forward_backward` (prepare_batch's on-device augmentation and
normalisation, autocast, loss, backward) and `optimizer_step` (clipping, step, zero_grad, schedule),
one optimizer step per batch (`train.grad_accum_steps` is set to 1). On CUDA, as in training, the
weights are channels-last, cuDNN autotunes and the forward pass runs under bf16 autocast (fp32 on a
GPU without native bf16); on the CPU neither. Each measurement builds its model afresh from
`--seed`, runs `--warmup` untimed steps, then times `--repeats` blocks of `--steps` steps, each
block between device synchronisations (torch.cuda.synchronize), and reports the median block's
img/s (every block's is in the JSON):

1. device-only step: uint8 batches [B, 1, S, S] of seeded random cache rows (images and labels)
   already on the device (real radiographs: random pixels would put some models' CPU step into
   denormal floats, which training never sees). img/s and peak memory: on CUDA
   `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` at the start of the timed steps;
   on the CPU the peak RSS during the timed steps (VmHWM, reset through /proc/self/clear_refs) above
   the RSS before the model was built; the JSON's `peak_memory` says which (null where unavailable).
2. full step: the same with the engine's loader (`epoch_batches` + `epoch_loader`: `make_loader`
   over the cache's train split, pinned memory and non-blocking copies on CUDA, `train.num_workers`),
   epoch after epoch. `--cache DIR` reads a preprocessed cache (e.g. data/cache); without it a small
   cache of `--cache-images` phantom radiographs is built in a temp folder with the project's
   `build_cache` (PNGs from benchmarks/loader.py's `write_pngs`, NIH-like labels and attributes
   from benchmarks/memory.py's `split_index`). With `--num-workers` > 0 every epoch starts its
   worker processes, which a small cache pays every few batches: judge workers on a real cache.
3. loader only: the same loader iterated on the host, no model, no copy to the device; then the
   ratio full / device-only with the verdict (>= 0.95: the loader keeps up), whatever it is; and the
   device-only step with one setting flipped from what training uses, per `--variants`: `compile`
   (torch.compile through the engine's `training_network`, as `train.compile` does), `bf16` (autocast on
   or off) and `channels_last` (weights channels-last or not). A variant that fails (torch.compile
   without a working C++ toolchain, bf16 on a GPU without it) is skipped with one printed line and
   `"skipped": "<reason>"` in the JSON; the run goes on.
4. inference: a fresh model in eval mode under torch.inference_mode, as evaluation runs it
   (`cxr14.inference.autocast`: bf16 on CUDA with native bf16, else fp32; contiguous weights), at batch 1 and at
   `--inference-batch`, timed by `cxr14.evaluation.efficiency.median_forward_seconds` (median of
   `--inference-repeats` forward passes after `--warmup`), to sit beside timm's published tables.

Output: a table on stdout (one row per model and measurement or variant, with the ratio to the
device-only step) and, with --json, every number plus the machine (CPU model, torch and timm
versions, device name, threads) and the settings, written atomically. Timings are wall-clock:
other jobs on the same machine make them slower and noisier.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import itertools
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script, Python puts benchmarks/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

from benchmarks import loader as loader_benchmark  # noqa: E402
from benchmarks import memory as memory_benchmark  # noqa: E402
from cxr14.config import Config, TrainConfig, load_config  # noqa: E402
from cxr14.data.attributes import ATTRIBUTE_COLUMNS  # noqa: E402
from cxr14.data.cache import build_cache, check_cache_size, open_split, split_labels  # noqa: E402
from cxr14.data.loader import prepare_batch  # noqa: E402
from cxr14.errors import Cxr14Error  # noqa: E402
from cxr14.evaluation.efficiency import count_parameters, median_forward_seconds  # noqa: E402
from cxr14.inference import autocast, select_device, uses_bf16  # noqa: E402
from cxr14.io import atomic_write_json  # noqa: E402
from cxr14.labels import LABELS, NUM_CLASSES  # noqa: E402
from cxr14.models import ModelBundle, build_model, set_train_mode  # noqa: E402
from cxr14.models.registry import check_model_names  # noqa: E402
from cxr14.training import engine  # noqa: E402
from cxr14.training.distributed import DistributedContext  # noqa: E402

VARIANTS = ("compile", "bf16", "channels_last")
KEEPS_UP = 0.95  # full step / device-only step at or above this: the loader keeps up
DEVICE_BATCHES = 4  # distinct batches of cache rows the device-only step cycles through
MEMORY_KINDS = {
    "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated after reset_peak_memory_stats at the start of the "
    "timed steps: every tensor alive during them (weights, gradients, optimizer state, activations, batches)",
    "cpu_peak_rss_growth": "peak resident set size of this process during the timed steps (VmHWM, reset through "
    "/proc/self/clear_refs) minus its RSS just before the model was built: weights, gradients, optimizer state, "
    "activations and the allocator's slack",
}


@dataclass(frozen=True)
class StepSettings:
    """How the training step runs: torch.compile, bf16 autocast, channels-last weights."""

    compile: bool
    bf16: bool
    channels_last: bool

    def flipped(self, name: str) -> StepSettings:
        return dataclasses.replace(self, **{name: not getattr(self, name)})

    def describe(self) -> str:
        return ", ".join(f"{name} {'on' if value else 'off'}" for name, value in dataclasses.asdict(self).items())


def training_settings(train: TrainConfig, device: torch.device) -> StepSettings:
    """What the engine does on `device`: torch.compile if train.compile; bf16 autocast where the GPU
    has it (cxr14.inference.uses_bf16) and channels-last weights (engine.assemble_training) on CUDA."""
    return StepSettings(compile=train.compile, bf16=uses_bf16(device), channels_last=device.type == "cuda")


@dataclass
class Bench:
    """What every measurement of one run shares: options, params, device, the cache's train split."""

    args: argparse.Namespace
    cfg: Config
    device: torch.device
    cache_dir: Path
    cache_side: int
    images: np.ndarray
    labels: np.ndarray
    scratch: Path
    memory_kind: str | None


# ----------------------------------------------------------------------------- peak memory


def _proc_status_bytes(key: str) -> int | None:
    """A `kB` line of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is no /proc."""
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _reset_rss_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_kind(device: torch.device) -> str | None:
    """How peak memory is measured on `device` (a key of MEMORY_KINDS), or None when it cannot be."""
    if device.type == "cuda":
        return "cuda_max_memory_allocated"
    if _proc_status_bytes("VmHWM") is not None and _reset_rss_peak():
        return "cpu_peak_rss_growth"
    return None


class PeakMemory:
    """Peak memory of one measurement; create it before the model is built (the CPU baseline)."""

    def __init__(self, device: torch.device, kind: str | None) -> None:
        self.device, self.kind = device, kind
        self.baseline = _proc_status_bytes("VmRSS") if kind == "cpu_peak_rss_growth" else None

    def start(self) -> None:
        if self.kind == "cuda_max_memory_allocated":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "cpu_peak_rss_growth":
            _reset_rss_peak()

    def peak(self) -> int | None:
        if self.kind == "cuda_max_memory_allocated":
            return int(torch.cuda.max_memory_allocated(self.device))
        peak = _proc_status_bytes("VmHWM") if self.kind == "cpu_peak_rss_growth" else None
        return None if peak is None or self.baseline is None else max(0, peak - self.baseline)


# ----------------------------------------------------------------------------- the training step


def training_config(cfg: Config, model_name: str, args: argparse.Namespace) -> TrainConfig:
    """`train.*` with the model's overrides, as train@ uses them, and the command line's replacements."""
    train = cfg.train_for(model_name)
    changes: dict[str, Any] = {"max_steps_per_epoch": 0, "grad_accum_steps": 1}
    for key in ("image_size", "batch_size", "num_workers"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.random_init:
        changes.update(pretrained=False, pretrained_path=None)
    return dataclasses.replace(train, **changes)


def build_bundle(model_name: str, train: TrainConfig, random_init: bool) -> ModelBundle:
    """The model as training builds it; with `random_init` without weights (freezing as configured)."""
    if not random_init:
        return engine.build_for_training(model_name, train)
    return build_model(
        model_name, NUM_CLASSES, train.image_size, pretrained=False, freeze_backbone=train.freeze_backbone
    )


def build_run(bench: Bench, model_name: str, train: TrainConfig, settings: StepSettings) -> engine.Training:
    """A one-process training of `model_name` assembled as train@ assembles it, with `settings` applied:
    torch.compile through train.compile, the memory format of the weights, the forward's autocast."""
    device, seed = bench.device, bench.args.seed
    train = dataclasses.replace(train, compile=settings.compile)
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    bundle = None
    if bench.args.random_init:
        torch.manual_seed(seed)
        bundle = build_bundle(model_name, train, random_init=True)
    data = (bench.images, bench.labels, bench.images[:0], bench.labels[:0])
    # out_dir: nothing is written there (no checkpoint, no MLflow run); only the step's parts are used.
    run = engine.assemble_training(
        model_name, train, context, data, seed, bench.cache_dir, bench.scratch, bundle=bundle
    )
    run.model.to(memory_format=torch.channels_last if settings.channels_last else torch.contiguous_format)
    if settings.bf16 != uses_bf16(device):  # training has no setting for it: replace its autocast
        run.autocast = lambda on: torch.autocast(on.type, dtype=torch.bfloat16, enabled=settings.bf16)
    run.network = engine.training_network(run.model, context, train)
    set_train_mode(run.model)  # as train_one_epoch: frozen BatchNorm layers keep their statistics
    return run


def training_step(run: engine.Training) -> Callable[[torch.Tensor, torch.Tensor], int]:
    """One training step on a batch, by the engine's own functions; returns the batch's images."""
    generator = torch.Generator(device=run.device).manual_seed(run.seed)

    def step(pixels: torch.Tensor, targets: torch.Tensor) -> int:
        engine.forward_backward(run, 1, pixels, targets, generator, group_size=1, boundary=True)
        engine.optimizer_step(run)
        return len(targets)

    return step


class TrainingBatches:
    """The engine's loader (epoch_batches + epoch_loader), epoch after epoch, as one endless iterator."""

    def __init__(self, run: engine.Training) -> None:
        self.run, self.epochs, self.pinned = run, 0, False
        self._batches = self._iterate()

    def _iterate(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        run = self.run
        for epoch in itertools.count(1):
            plan = engine.epoch_batches(run.train, run.train_images, run.train_labels, run.seed, epoch, run.context)
            loader = engine.epoch_loader(run, plan)
            self.epochs, self.pinned = epoch, bool(loader.pin_memory)
            yield from loader

    def __iter__(self) -> TrainingBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self._batches)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(bench: Bench, step: Callable[[], int], memory: PeakMemory | None) -> dict:
    """`--warmup` untimed calls of `step`, then `--repeats` blocks of `--steps` timed calls, each block
    between device synchronisations; the rate is the median block's (robust to a stalled block)."""
    args = bench.args
    for _ in range(args.warmup):
        step()
    synchronize(bench.device)
    if memory is not None:
        memory.start()
    rates, seconds, images = [], 0.0, 0
    for _ in range(args.repeats):
        started = time.perf_counter()
        block = sum(step() for _ in range(args.steps))
        synchronize(bench.device)
        elapsed = time.perf_counter() - started
        rates.append(block / elapsed)
        seconds, images = seconds + elapsed, images + block
    result = {"steps": args.steps, "repeats": args.repeats, "images": images, "seconds": seconds}
    result.update(images_per_second=statistics.median(rates), block_images_per_second=rates)
    if memory is not None:
        result["peak_memory_bytes"] = memory.peak()
    return result


def release(device: torch.device) -> None:
    """Give the memory of the finished measurement back before the next one builds its model (on the
    CPU glibc's malloc_trim returns freed heap to the OS, so the next RSS baseline does not hold it)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ----------------------------------------------------------------------------- measurements


def device_batches(bench: Bench, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded random rows of the cache (uint8 [B, 1, S, S] radiographs and their labels), already on the
    device. Real images, not random pixels: on the CPU, noise drives some models into denormal floats
    (the seed CNN's step ran at ~0.6x its speed on radiographs), which no training batch does."""
    generator = torch.Generator().manual_seed(bench.args.seed)
    batches = []
    for _ in range(DEVICE_BATCHES):
        rows = np.sort(torch.randint(0, len(bench.labels), (batch_size,), generator=generator).numpy())
        pixels = torch.from_numpy(np.ascontiguousarray(bench.images[rows])).unsqueeze(1)
        targets = torch.from_numpy(np.ascontiguousarray(bench.labels[rows]))
        batches.append((pixels.to(bench.device), targets.to(bench.device)))
    return batches


def measure_device_step(bench: Bench, model_name: str, train: TrainConfig, settings: StepSettings) -> dict:
    """img/s and peak memory of the training step on batches already on the device."""
    release(bench.device)
    memory = PeakMemory(bench.device, bench.memory_kind)
    run = build_run(bench, model_name, train, settings)
    step, batches = training_step(run), itertools.cycle(device_batches(bench, train.batch_size))
    timing = time_steps(bench, lambda: step(*next(batches)), memory)
    return {"settings": dataclasses.asdict(settings), **timing}


def measure_with_loader(bench: Bench, model_name: str, train: TrainConfig, settings: StepSettings) -> dict:
    """The loader alone (host side) and then the full step: the engine's loader feeding the step."""
    release(bench.device)
    memory = PeakMemory(bench.device, bench.memory_kind)
    run = build_run(bench, model_name, train, settings)
    batches, step = TrainingBatches(run), training_step(run)
    loader = time_steps(bench, lambda: len(next(batches)[1]), None)
    full = time_steps(bench, lambda: step(*next(batches)), memory)
    details = {"pinned": batches.pinned, "num_workers": train.num_workers, "epochs_started": batches.epochs}
    return {"loader": {**loader, **details}, "full_step": {"settings": dataclasses.asdict(settings), **full}}


def failure_reason(error: BaseException) -> str:
    """The exception's type and the first line of its message, short enough for a table."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else '(no message)'}"


def run_variant(bench: Bench, model_name: str, train: TrainConfig, name: str, baseline: StepSettings) -> dict:
    """The device-only step with setting `name` flipped; a failure is recorded as skipped, not raised."""
    settings = baseline.flipped(name)
    record: dict[str, Any] = {"label": f"{name} {'on' if getattr(settings, name) else 'off'}"}
    try:
        record.update(measure_device_step(bench, model_name, train, settings))
    except Exception as error:  # any failure of a variant skips it, never the whole run
        record.update(settings=dataclasses.asdict(settings), skipped=failure_reason(error))
        print(f"{model_name}: variant {record['label']} skipped ({record['skipped']})", flush=True)
    finally:
        if settings.compile:
            torch._dynamo.reset()  # drop the compiled graphs and their guards
    release(bench.device)  # after the except block: a failure's traceback no longer holds the model
    return record


def measure_inference(bench: Bench, model_name: str, train: TrainConfig) -> dict:
    """Forward img/s in eval and inference mode at batch 1 and --inference-batch, as evaluation runs it."""
    torch.manual_seed(bench.args.seed)
    bundle = build_bundle(model_name, train, bench.args.random_init)
    model = bundle.model.to(bench.device)
    generator = torch.Generator().manual_seed(bench.args.seed)
    result: dict[str, Any] = {
        "precision": "bf16 autocast" if uses_bf16(bench.device) else "fp32",
        "memory_format": "contiguous",
        "image_size": train.image_size,
    }
    for batch in dict.fromkeys((1, bench.args.inference_batch)):
        shape = (batch, 1, bench.cache_side, bench.cache_side)
        pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        inputs = prepare_batch(pixels.to(bench.device), bundle.in_chans, bundle.mean, bundle.std, train.image_size)
        with autocast(bench.device):
            seconds = median_forward_seconds(
                model, inputs, bench.device, warmup=bench.args.warmup, repeats=bench.args.inference_repeats
            )
        result[f"batch_{batch}"] = {
            "batch_size": batch,
            "median_seconds": seconds,
            "latency_ms": seconds * 1000.0,
            "images_per_second": batch / seconds,
        }
    del model, bundle
    release(bench.device)
    return result


def model_summary(bench: Bench, model_name: str, train: TrainConfig) -> dict:
    """The model's training settings and sizes, as recorded beside its measurements."""
    torch.manual_seed(bench.args.seed)
    bundle = build_bundle(model_name, train, bench.args.random_init)
    total, trainable = count_parameters(bundle.model)
    return {
        "image_size": train.image_size,
        "batch_size": train.batch_size,
        "optimizer": train.optimizer,
        "loss": train.loss,
        "sampling": train.sampling,
        "freeze_backbone": train.freeze_backbone,
        "weights": bundle.weights,
        "params_total": total,
        "params_trainable": trainable,
        "training_settings": dataclasses.asdict(training_settings(train, bench.device)),
    }


def measure_model(bench: Bench, model_name: str, train: TrainConfig) -> dict:
    """Every measurement of one model, printing a line as each one ends."""
    record = model_summary(bench, model_name, train)
    baseline = training_settings(train, bench.device)
    record["device_step"] = measure_device_step(bench, model_name, train, baseline)
    release(bench.device)
    device_rate = record["device_step"]["images_per_second"]
    print(f"{model_name}: device-only step {device_rate:.1f} img/s", flush=True)
    record.update(measure_with_loader(bench, model_name, train, baseline))
    release(bench.device)
    ratio = record["full_step"]["images_per_second"] / device_rate
    record["full_over_device"] = ratio
    record["loader_keeps_up"] = ratio >= KEEPS_UP
    print(f"{model_name}: full step {record['full_step']['images_per_second']:.1f} img/s ({ratio:.2f}x)", flush=True)
    record["variants"] = {}
    for name in bench.args.variants:
        variant = run_variant(bench, model_name, train, name, baseline)
        if "skipped" not in variant:
            variant["over_device_step"] = variant["images_per_second"] / device_rate
            print(f"{model_name}: variant {variant['label']} {variant['images_per_second']:.1f} img/s", flush=True)
        record["variants"][name] = variant
    record["inference"] = measure_inference(bench, model_name, train)
    return record


# ----------------------------------------------------------------------------- cache, machine, table


def build_phantom_cache(folder: Path, count: int, side: int, seed: int) -> Path:
    """A train-only cache of `count` phantom radiographs at `side` px, through the project's build_cache:
    PNGs by benchmarks/loader.py's write_pngs, NIH-like labels and attributes by benchmarks/memory.py's
    split_index (about 3.6 images per patient, as in NIH)."""
    index = memory_benchmark.split_index(count, max(1, round(count / 3.6)), np.random.default_rng(seed))
    paths = loader_benchmark.write_pngs(folder / "images", count, side)
    metadata = index[["image_id", "patient_id", *ATTRIBUTE_COLUMNS]].assign(split="train")
    labels = index[list(LABELS)].to_numpy(dtype=np.uint8)
    build_cache(metadata, labels, dict(zip(index["image_id"], paths)), folder / "cache", size=side, workers=1)
    return folder / "cache"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """What the numbers depend on: CPU, accelerator, versions, threads."""
    import timm

    cuda = device.type == "cuda"
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _rate(record: dict) -> str:
    return f"{record['images_per_second']:.1f}"


def _megabytes(record: dict) -> str:
    value = record.get("peak_memory_bytes")
    return "-" if value is None else f"{value / 1e6:.1f}"


def table_rows(name: str, record: dict) -> list[tuple[str, ...]]:
    """(model, measurement, img/s, x device-only, peak MB) rows of one model."""
    device = record["device_step"]
    rows = [(name, f"device-only step ({StepSettings(**device['settings']).describe()})", _rate(device), "1.00")]
    rows[0] += (_megabytes(device),)
    full, loader = record["full_step"], record["loader"]
    pinned = "pinned" if loader["pinned"] else "not pinned"
    rows.append((name, f"full step (loader, {pinned}, {loader['num_workers']} workers)", _rate(full)))
    rows[-1] += (f"{record['full_over_device']:.2f}", _megabytes(full))
    ratio = loader["images_per_second"] / device["images_per_second"]
    rows.append((name, "loader only (host side, no model)", _rate(loader), f"{ratio:.2f}", "-"))
    for variant in record["variants"].values():
        label = f"device-only step, {variant['label']}"
        if "skipped" in variant:
            rows.append((name, label, f"skipped: {variant['skipped'][:60]}", "", ""))
        else:
            rows.append((name, label, _rate(variant), f"{variant['over_device_step']:.2f}", _megabytes(variant)))
    inference = record["inference"]
    for key, value in inference.items():
        if key.startswith("batch_"):
            label = f"inference batch {value['batch_size']} (eval, {inference['precision']})"
            rows.append((name, label, _rate(value), "", ""))
    return rows


def format_table(models: dict[str, dict]) -> str:
    header = ("model", "measurement", "img/s", "x device-only", "peak MB")
    rows = [header] + [row for name, record in models.items() for row in table_rows(name, record)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def verdict(name: str, record: dict, device: torch.device) -> str:
    """The loader verdict of one model, whatever it is, with what the loader alone says about it."""
    ratio = record["full_over_device"]
    headroom = record["loader"]["images_per_second"] / record["device_step"]["images_per_second"]
    if ratio >= KEEPS_UP:
        text = f"{name}: the loader keeps up: the full step runs at {ratio:.2f}x the device-only step (>= {KEEPS_UP})"
    else:
        text = (
            f"{name}: the full step runs at {ratio:.2f}x the device-only step (< {KEEPS_UP}): the loader does not "
            "keep up"
        )
        if headroom >= 10:
            text += (
                f", although alone it delivers {headroom:.0f}x the step's images: the loss comes from feeding the "
                "step (copies, cold memory, shared cores), not from the loader's rate"
            )
    if device.type == "cpu":
        text += " (on the CPU the loader shares the cores with the model)"
    return text


# ----------------------------------------------------------------------------- command line


def _device_name(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not one of auto, cpu, cuda, cuda:N")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not re.fullmatch(r"\d+", value) or int(value) < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value!r}")
        return int(value)

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/throughput.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--models", nargs="+", default=None, help="registered (or timm) model names (default: params.yaml's models)")
    add("--params", type=Path, default=ROOT / "params.yaml", help="params file with the train settings (%(default)s)")
    add("--device", type=_device_name, default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    add("--image-size", type=_count(1), default=None, help="side the models see (default: each model's train setting)")
    add("--batch-size", type=_count(1), default=None, help="training batch size (default: each model's train setting)")
    add("--num-workers", type=_count(0), default=None, help="loader worker processes (default: train.num_workers)")
    add("--warmup", type=_count(0), default=5, help="untimed steps (and forward passes) first (default: %(default)s)")
    add("--steps", type=_count(1), default=20, help="timed steps per block (default: %(default)s)")
    add("--repeats", type=_count(1), default=3, help="timed blocks; the median block's img/s (%(default)s)")
    add(
        "--variants",
        nargs="+",
        choices=[*VARIANTS, "none"],
        default=list(VARIANTS),
        help="settings to flip in the device-only step: compile, bf16, channels_last, or none (default: all)",
    )
    add("--inference-batch", type=_count(1), default=64, help="the large inference batch (default: %(default)s)")
    add("--inference-repeats", type=_count(1), default=10, help="timed forward passes, median (%(default)s)")
    add("--cache", type=Path, default=None, help="a preprocessed cache folder, e.g. data/cache (default: build one)")
    add("--cache-images", type=_count(1), default=256, help="images of the built cache, without --cache (%(default)s)")
    add(
        "--cache-side",
        type=_count(1),
        default=None,
        help="side of the built cache, without --cache (default: preprocess.size)",
    )
    add("--random-init", action="store_true", help="no pretrained weights (freezing as configured): offline use")
    add("--threads", type=_count(0), default=0, help="torch CPU threads (default: 0 = torch's choice)")
    add("--seed", type=int, default=42, help="seed of models, data and augmentation (default: %(default)s)")
    add("--json", type=Path, default=None, help="also write every number to this JSON file (atomically)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, cfg: Config) -> None:
    """Refuse bad input before any work, with messages that name it."""
    args.models = list(dict.fromkeys(args.models or cfg.models))
    args.variants = [] if "none" in args.variants else list(dict.fromkeys(args.variants))
    check_model_names(args.models, key="--models")
    if args.cache is not None and not args.cache.is_dir():
        parser.error(
            f"--cache {args.cache}: no such folder (give a preprocessed cache such as data/cache, "
            "or leave --cache out to build a small phantom cache)"
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine; use --device auto or cpu")


def open_cache(bench_args: argparse.Namespace, cfg: Config, trains: dict[str, TrainConfig], scratch: Path) -> Path:
    """The cache to read: --cache, or a phantom cache built in `scratch` at a side every model fits."""
    if bench_args.cache is not None:
        return bench_args.cache
    needed = max(train.image_size for train in trains.values())
    side = bench_args.cache_side or max(cfg.preprocess.size, needed)
    if side < needed:
        raise Cxr14Error(
            f"--cache-side {side} is below the largest image size {needed}: the models would see upsampled images"
        )
    started = time.perf_counter()
    cache = build_phantom_cache(scratch, bench_args.cache_images, side, bench_args.seed)
    print(
        f"built a phantom cache of {bench_args.cache_images} images at {side} px in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return cache


def prepare(args: argparse.Namespace, cfg: Config, scratch: Path) -> tuple[Bench, dict[str, TrainConfig]]:
    """Seeds, threads, device, the models' training settings, the cache (checked against every model)."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    trains = {name: training_config(cfg, name, args) for name in args.models}
    cache_dir = open_cache(args, cfg, trains, scratch)
    for name, train in trains.items():
        side = check_cache_size(cache_dir, train.image_size, model=name, source=f"{args.params} or --image-size")
    images, index = open_split(cache_dir, "train")
    if len(images) == 0:
        raise Cxr14Error(f"{cache_dir}: the train split holds no images")
    bench = Bench(args, cfg, device, cache_dir, side, images, split_labels(index), scratch, memory_kind(device))
    return bench, trains


def settings_record(bench: Bench) -> dict:
    args = bench.args
    return {
        "models": args.models,
        "params": str(args.params),
        "device": str(bench.device),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "warmup": args.warmup,
        "steps": args.steps,
        "repeats": args.repeats,
        "variants": args.variants,
        "inference_batch": args.inference_batch,
        "inference_repeats": args.inference_repeats,
        "cache": str(args.cache) if args.cache is not None else None,
        "cache_built": args.cache is None,
        "cache_images": len(bench.images),
        "cache_side": bench.cache_side,
        "random_init": args.random_init,
        "seed": args.seed,
        "keeps_up_threshold": KEEPS_UP,
    }


def run(args: argparse.Namespace, cfg: Config) -> dict:
    """Measure every model; returns the report (also printed as a table, and written with --json)."""
    with tempfile.TemporaryDirectory(prefix="cxr14-throughput-") as scratch:
        bench, trains = prepare(args, cfg, Path(scratch))
        print(
            f"{len(args.models)} model(s) on {bench.device}, cache {bench.cache_dir} ({len(bench.images)} train "
            f"images at {bench.cache_side} px), warm-up {args.warmup}, {args.repeats} x {args.steps} timed steps",
            flush=True,
        )
        models = {name: measure_model(bench, name, train) for name, train in trains.items()}
        kind = bench.memory_kind
        report = {
            "benchmark": "throughput",
            "machine": machine_info(bench.device),
            "settings": settings_record(bench),
            "peak_memory": {"kind": kind, "description": MEMORY_KINDS.get(kind or "", "not measured on this machine")},
            "models": models,
        }
    print()
    print(format_table(models))
    for name, record in models.items():
        print(verdict(name, record, bench.device))
    if args.json is not None:
        atomic_write_json(args.json, report)
        print(f"written {args.json}")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.params)
        check_args(parser, args, cfg)
        return run(args, cfg)
    except Cxr14Error as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
