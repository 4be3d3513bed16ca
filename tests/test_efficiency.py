"""Model cost measurements: parameter counts, exact FLOPs of known layers, size, timing, argument checks."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from cxr14.evaluation.efficiency import (
    count_flops,
    count_parameters,
    measure_efficiency,
    median_forward_seconds,
    state_dict_megabytes,
)

CPU = torch.device("cpu")
FAST = {"warmup": 1, "repeats": 2, "throughput_batch": 4, "throughput_repeats": 1}


def conv_net(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 15),
    )


class SelfAttention(nn.Module):
    """nn.MultiheadAttention over (batch, tokens, features) input."""

    def __init__(self, features: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(features, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.attention(tokens, tokens, tokens, need_weights=False)[0]


def test_parameter_counts_with_a_frozen_part():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    model[0].requires_grad_(False)
    assert count_parameters(model) == (10 * 20 + 20 + 20 * 5 + 5, 20 * 5 + 5)
    report = measure_efficiency(model, (10,), CPU, **FAST)
    assert (report["params_total"], report["params_trainable"]) == (325, 105)


def test_linear_flops_are_two_per_multiply_accumulate():
    assert count_flops(nn.Linear(10, 20, bias=False), (10,), CPU) == 2 * 10 * 20


@pytest.mark.parametrize("stride, output_side", [(1, 16), (2, 8)])
def test_conv_flops_match_hand_count(stride, output_side):
    conv = nn.Conv2d(3, 8, 3, stride=stride, padding=1, bias=False)
    multiply_accumulates = 8 * output_side * output_side * (3 * 3 * 3)  # per output value: 3x3 window x 3 channels
    assert count_flops(conv, (3, 16, 16), CPU) == 2 * multiply_accumulates


def test_attention_flops_are_counted_despite_fused_kernels():
    tokens, features = 10, 32
    projections = 4 * 2 * tokens * features * features  # q, k, v in one matrix, then out_proj
    scores_and_mixing = 2 * 2 * tokens * tokens * features  # QK^T and attention x V over all heads
    fast_path_before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(True)  # PyTorch's default; counting must switch it off and back on
    try:
        assert count_flops(SelfAttention(features, 4), (tokens, features), CPU) == projections + scores_and_mixing
        assert torch.backends.mha.get_fastpath_enabled()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path_before)


def test_wider_model_has_more_flops():
    assert count_flops(conv_net(16), (3, 16, 16), CPU) > count_flops(conv_net(8), (3, 16, 16), CPU)


def test_size_is_close_to_four_bytes_per_float32_parameter():
    model = nn.Linear(500, 400)
    parameter_megabytes = sum(p.numel() for p in model.parameters()) * 4 / 1e6
    assert state_dict_megabytes(model) == pytest.approx(parameter_megabytes, abs=0.01)  # pickle overhead < 10 kB


def test_full_report_and_training_mode_restored():
    model = conv_net(8).train()
    model[1].eval()  # frozen BatchNorm must stay in eval after measuring
    report = measure_efficiency(model, (3, 16, 16), CPU, **FAST)
    assert set(report) == {
        "params_total",
        "params_trainable",
        "flops_per_image",
        "gmacs_per_image",
        "size_mb",
        "latency_ms",
        "throughput_img_s",
        "device",
        "input_size",
        "batch_size_throughput",
    }
    assert report["latency_ms"] > 0 and report["throughput_img_s"] > 0
    assert report["flops_per_image"] > 0
    assert report["gmacs_per_image"] == round(report["flops_per_image"] / 2 / 1e9, 4)
    assert (report["device"], report["input_size"], report["batch_size_throughput"]) == ("cpu", "3x16x16", 4)
    assert model.training and model[0].training and not model[1].training


class SlowIdentity(nn.Module):
    """Takes at least `seconds` per call, so measured times have a known lower bound."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return batch


def test_timings_reflect_the_time_a_pass_takes():
    assert median_forward_seconds(SlowIdentity(0.005), torch.zeros(1, 3), CPU, warmup=0, repeats=3) >= 0.005
    report = measure_efficiency(SlowIdentity(0.005), (3,), CPU, **FAST)
    assert report["latency_ms"] >= 5.0
    assert report["throughput_img_s"] <= FAST["throughput_batch"] / 0.005


def test_median_forward_seconds_is_positive_and_restores_mode():
    model = conv_net(4).train()
    seconds = median_forward_seconds(model, torch.zeros(2, 3, 8, 8), CPU, warmup=0, repeats=3)
    assert seconds > 0
    assert model.training


@pytest.mark.parametrize(
    "argument, value",
    [
        ("warmup", -1),
        ("repeats", 0),
        ("throughput_batch", 0),
        ("throughput_repeats", 0),
        ("repeats", 2.5),
    ],
)
def test_bad_arguments_name_the_argument(argument, value):
    with pytest.raises(ValueError, match=argument):
        measure_efficiency(conv_net(4), (3, 8, 8), CPU, **{**FAST, argument: value})


@pytest.mark.parametrize("bad_size", [(), (3, 0, 8), (3, -8, 8)])
def test_bad_input_size_is_rejected(bad_size):
    with pytest.raises(ValueError, match="input_size"):
        measure_efficiency(conv_net(4), bad_size, CPU, **FAST)


def test_resnet_stem_costs_resmobilenet_v2_more_flops_than_v1():
    """Design note 002: V2's 7x7/64 ResNet stem is the heavier one, at the same feature-map sizes."""
    from cxr14.models import build_model

    flops = {
        name: count_flops(build_model(name, 15, 224).model, (3, 224, 224), torch.device("cpu"))
        for name in ("resmobilenet_v1", "resmobilenet_v2")
    }
    assert flops["resmobilenet_v2"] > flops["resmobilenet_v1"] > 0
