"""Cost of a model: parameters, FLOPs, size on disk, latency and throughput.

    report = measure_efficiency(model, (3, 224, 224), torch.device("cuda"))
    report["gmacs_per_image"], report["latency_ms"], report["throughput_img_s"]

Units and conventions, so that numbers from different runs compare:

* FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on one image and are
  2 x multiply-accumulates (a k-long dot product is 2k FLOPs); `gmacs_per_image` is
  FLOPs / 2 / 1e9. The counter only knows matrix products, convolutions and attention kernels:
  bias additions, normalisation, activations, pooling, softmax and other elementwise work are
  not counted, which is the usual convention of papers that report MACs.
* `size_mb` is the length of `torch.save(model.state_dict())` in megabytes of 10^6 bytes; it
  includes buffers such as BatchNorm running statistics.
* `latency_ms` is the median wall time of one batch-of-1 forward pass; `throughput_img_s` is
  the batch size divided by the median time of a `throughput_batch` forward pass. Both run in
  inference mode, after warm-up passes, with CUDA synchronised around every timed pass.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# Inputs are random rather than zeros so that data-dependent kernels take their usual path; the
# fixed seed makes every measurement see the same batch.
_INPUT_SEED = 0


def measure_efficiency(
    model: nn.Module,
    input_size: Sequence[int],
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 10,
    throughput_batch: int = 32,
    throughput_repeats: int = 3,
) -> dict:
    """Parameters, FLOPs, state-dict size, latency and throughput of `model` on `device`.

    The model is moved to `device` in place (as `nn.Module.to` does); every module's training
    flag is the same afterwards as before.

    Long because of this docstring and the flat dict it returns: the body is one straight
    sequence of calls to the measuring helpers below, clearer whole than split.

    Args:
        model: The network; called with one tensor of shape (batch, *input_size).
        input_size: One input without the batch, usually (channels, height, width).
        device: Where the passes run.
        warmup: Untimed batch-of-1 passes before the latency passes (lazy init, cuDNN autotune).
        repeats: Timed batch-of-1 passes; the median is reported.
        throughput_batch: Batch size of the throughput passes.
        throughput_repeats: Timed throughput passes, after one untimed pass; the median is used.

    Returns:
        A flat dict: params_total, params_trainable, flops_per_image, gmacs_per_image, size_mb,
        latency_ms, throughput_img_s, device, input_size (e.g. "3x224x224") and
        batch_size_throughput.

    Raises:
        ValueError: If an argument is out of range; the message names it.
    """
    input_size = _validated_input_size(input_size)
    _require_at_least("warmup", warmup, 0)
    _require_at_least("repeats", repeats, 1)
    _require_at_least("throughput_batch", throughput_batch, 1)
    _require_at_least("throughput_repeats", throughput_repeats, 1)
    device = torch.device(device)
    model.to(device)

    params_total, params_trainable = count_parameters(model)
    flops_per_image = count_flops(model, input_size, device)
    latency_seconds = median_forward_seconds(
        model, _random_batch(model, 1, input_size, device), device, warmup=warmup, repeats=repeats
    )
    throughput_seconds = median_forward_seconds(
        model,
        _random_batch(model, throughput_batch, input_size, device),
        device,
        warmup=1,
        repeats=throughput_repeats,
    )
    return {
        "params_total": params_total,
        "params_trainable": params_trainable,
        "flops_per_image": flops_per_image,
        "gmacs_per_image": round(flops_per_image / 2 / 1e9, 4),
        "size_mb": state_dict_megabytes(model),
        "latency_ms": latency_seconds * 1000.0,
        "throughput_img_s": throughput_batch / throughput_seconds,
        "device": str(device),
        "input_size": "x".join(str(size) for size in input_size),
        "batch_size_throughput": throughput_batch,
    }


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, parameters that require grad); tied parameters are counted once."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


def count_flops(model: nn.Module, input_size: Sequence[int], device: torch.device) -> int:
    """FLOPs (2 x multiply-accumulates) of one forward pass on a single image.

    Fused attention kernels hide their matrix products from the counter (PyTorch's CPU flash
    kernel and nn.MultiheadAttention's inference fast path are counted as zero), so the pass
    runs with the math attention backend and the fast path off; the arithmetic is the same.

    Args:
        model: The network, already on `device`.
        input_size: One input without the batch.
        device: Where the counting pass runs.
    """
    input_size = _validated_input_size(input_size)
    batch = _random_batch(model, 1, input_size, device)
    fast_path_was_enabled = torch.backends.mha.get_fastpath_enabled()
    counter = FlopCounterMode(display=False)
    with _eval_mode(model):
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
                model(batch)
        finally:
            torch.backends.mha.set_fastpath_enabled(fast_path_was_enabled)
    return int(counter.get_total_flops())


def state_dict_megabytes(model: nn.Module) -> float:
    """Size of `torch.save(model.state_dict())` in MB of 10^6 bytes (parameters and buffers)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def median_forward_seconds(
    model: nn.Module, batch: torch.Tensor, device: torch.device, warmup: int, repeats: int
) -> float:
    """Median wall time in seconds of `repeats` forward passes on `batch`, after `warmup` passes.

    Args:
        model: The network, already on `device`; run in eval and inference mode.
        batch: The input, already on `device`.
        device: On CUDA the device is synchronised before and after each timed pass, because
            kernels launch asynchronously and the clock would otherwise stop too early.
        warmup: Untimed passes first.
        repeats: Timed passes.

    Raises:
        ValueError: If `warmup` is negative or `repeats` is below 1.
    """
    _require_at_least("warmup", warmup, 0)
    _require_at_least("repeats", repeats, 1)
    device = torch.device(device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    durations = []
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            model(batch)
            synchronize()
            durations.append(time.perf_counter() - start)
    return statistics.median(durations)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode, then give every module its own training flag back.

    `model.train(previous)` would not do: a model may keep some modules (frozen BatchNorm) in
    eval while the rest trains.
    """
    training_flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in training_flags.items():
            module.training = was_training


def _random_batch(model: nn.Module, batch_size: int, input_size: Sequence[int], device: torch.device) -> torch.Tensor:
    """Seeded standard-normal batch in the model's floating dtype (drawn on CPU: same values on any device)."""
    floating = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    dtype = floating[0].dtype if floating else torch.get_default_dtype()
    generator = torch.Generator().manual_seed(_INPUT_SEED)
    return torch.randn((batch_size, *input_size), generator=generator).to(device=device, dtype=dtype)


def _validated_input_size(input_size: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(input_size)
    if not sizes or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in sizes):
        raise ValueError(f"input_size must be positive integers such as (3, 224, 224), got {input_size!r}")
    return sizes


def _require_at_least(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
