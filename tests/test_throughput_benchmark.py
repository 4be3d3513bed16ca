"""benchmarks/throughput.py: a tiny real run (the seed CNN on the CPU, a phantom cache the script
builds) writes a complete JSON report with positive, finite rates and ratios; a failing variant is
skipped with its reason instead of ending the run; bad input is refused with a message naming it.
No wall-time assertions: the timings depend on the machine and its load."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import throughput
from cxr14.config import Config, TrainConfig
from cxr14.labels import NUM_CLASSES

TINY = [
    *("--models", "cnn", "--device", "cpu", "--image-size", "32", "--batch-size", "4"),
    *("--warmup", "1", "--steps", "2", "--repeats", "2", "--variants", "bf16"),
    *("--cache-images", "12", "--cache-side", "48", "--inference-batch", "4", "--inference-repeats", "2"),
]


def _rates(node: object, path: str = "") -> list[tuple[str, float]]:
    """Every img/s in the report: (where, value)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "images_per_second":
                found.append((f"{path}.{key}", value))
            elif key == "block_images_per_second":
                found += [(f"{path}.{key}[{i}]", rate) for i, rate in enumerate(value)]
            else:
                found += _rates(value, f"{path}.{key}")
    return found


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> tuple[dict, dict, str]:
    """(report returned, report written, stdout) of one tiny run, shared by the tests below."""
    json_path = tmp_path_factory.mktemp("throughput") / "out" / "throughput.json"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setenv("CXR14_NO_PROGRESS", "1")
        returned = throughput.main([*TINY, "--json", str(json_path)])
    return returned, json.loads(json_path.read_text(encoding="utf-8")), stdout.getvalue()


def test_tiny_run_writes_the_report_it_returns(tiny_report):
    returned, written, _ = tiny_report
    assert written == json.loads(json.dumps(returned))  # the JSON file holds exactly the returned report
    assert set(written) == {"benchmark", "machine", "settings", "peak_memory", "models"}
    assert written["benchmark"] == "throughput"


def test_report_records_machine_settings_and_memory_kind(tiny_report):
    _, report, _ = tiny_report
    machine = report["machine"]
    for key in ("cpu_model", "cpu_count", "threads", "device", "device_name", "torch", "timm", "python"):
        assert machine[key] not in (None, ""), key
    assert machine["device"] == "cpu" and machine["torch"] == torch.__version__
    settings = report["settings"]
    assert settings["models"] == ["cnn"] and settings["device"] == "cpu"
    assert (settings["image_size"], settings["batch_size"], settings["seed"]) == (32, 4, 42)
    assert (settings["warmup"], settings["steps"], settings["repeats"]) == (1, 2, 2)
    assert settings["cache_built"] and settings["cache_images"] == 12 and settings["cache_side"] == 48
    assert settings["variants"] == ["bf16"]
    memory = report["peak_memory"]
    assert memory["kind"] in (None, "cpu_peak_rss_growth") and memory["description"]


def test_every_measurement_of_the_model_is_there_with_sane_numbers(tiny_report):
    _, report, _ = tiny_report
    assert list(report["models"]) == ["cnn"]
    cnn = report["models"]["cnn"]
    assert (cnn["image_size"], cnn["batch_size"]) == (32, 4)
    assert cnn["params_total"] >= cnn["params_trainable"] > 0
    # On the CPU training neither compiles, nor autocasts, nor uses channels-last weights.
    training = {"compile": False, "bf16": False, "channels_last": False}
    assert cnn["training_settings"] == training
    assert cnn["device_step"]["settings"] == cnn["full_step"]["settings"] == training
    for name in ("device_step", "full_step", "loader"):
        measurement = cnn[name]
        assert measurement["images"] == 4 * 2 * 2, name  # batch 4, 2 steps, 2 repeats
        assert len(measurement["block_images_per_second"]) == 2 and measurement["seconds"] > 0
    for name in ("device_step", "full_step"):
        peak = cnn[name]["peak_memory_bytes"]
        assert peak is None if report["peak_memory"]["kind"] is None else peak >= 0
    assert cnn["loader"]["pinned"] is False and cnn["loader"]["num_workers"] == 0
    assert cnn["loader"]["epochs_started"] >= 2  # 12 images = 3 batches per epoch, 6 batches read
    ratio = cnn["full_over_device"]
    assert math.isfinite(ratio) and ratio > 0
    assert cnn["loader_keeps_up"] == (ratio >= throughput.KEEPS_UP)
    inference = cnn["inference"]
    assert inference["precision"] == "fp32" and inference["image_size"] == 32
    assert [inference[key]["batch_size"] for key in ("batch_1", "batch_4")] == [1, 4]
    rates = _rates(report)
    assert len(rates) >= 3 * 3 + 2  # 3 step measurements with 2 blocks each, 2 inference batches
    for where, rate in rates:
        assert isinstance(rate, float) and math.isfinite(rate) and rate > 0, where


def test_variants_are_measured_or_skipped_with_a_reason(tiny_report):
    _, report, _ = tiny_report
    variants = report["models"]["cnn"]["variants"]
    assert list(variants) == ["bf16"]
    bf16 = variants["bf16"]
    assert bf16["label"] == "bf16 on"
    assert bf16["settings"] == {"compile": False, "bf16": True, "channels_last": False}
    if "skipped" in bf16:  # bf16 autocast runs on the CPU in this torch, but a build may lack it
        assert isinstance(bf16["skipped"], str) and bf16["skipped"].strip()
    else:
        assert math.isfinite(bf16["over_device_step"]) and bf16["over_device_step"] > 0


def test_table_and_verdict_are_printed(tiny_report):
    _, report, out = tiny_report
    expected = [
        "device-only step (compile off, bf16 off, channels_last off)",
        "full step (loader, not pinned, 0 workers)",
        "loader only (host side, no model)",
        "device-only step, bf16 ",  # "on" with a rate, or "on" skipped with its reason
        "inference batch 1 (eval, fp32)",
        "inference batch 4 (eval, fp32)",
    ]
    for text in expected:
        assert text in out, text
    keeps_up = report["models"]["cnn"]["loader_keeps_up"]
    assert (
        "cnn: the loader keeps up" if keeps_up else "the device-only step (< 0.95): the loader does not keep up"
    ) in out


def _bench(folder: Path, images: np.ndarray, labels: np.ndarray, seed: int) -> throughput.Bench:
    """A CPU Bench over an in-memory cache, for the functions that take one."""
    return throughput.Bench(
        args=argparse.Namespace(seed=seed),
        cfg=Config(),
        device=torch.device("cpu"),
        cache_dir=folder,
        cache_side=images.shape[-1],
        images=images,
        labels=labels,
        scratch=folder,
        memory_kind=None,
    )


def test_a_failing_variant_is_skipped_with_its_reason_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    def fail(*_args, **_kwargs):
        raise RuntimeError("Compiler: cc not found\nfull traceback follows")

    monkeypatch.setattr(throughput, "measure_device_step", fail)
    bench = _bench(tmp_path, np.zeros((1, 32, 32), np.uint8), np.zeros((1, NUM_CLASSES), np.float32), seed=0)
    baseline = throughput.StepSettings(compile=False, bf16=False, channels_last=False)
    record = throughput.run_variant(bench, "cnn", TrainConfig(), "compile", baseline)
    assert record == {
        "label": "compile on",
        "settings": {"compile": True, "bf16": False, "channels_last": False},
        "skipped": "RuntimeError: Compiler: cc not found",
    }
    assert capsys.readouterr().out.strip() == "cnn: variant compile on skipped (RuntimeError: Compiler: cc not found)"


def test_device_only_batches_are_seeded_cache_rows_with_their_labels(tmp_path):
    # Random pixels would time a different computation on the CPU (denormal floats in the seed CNN).
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 2, (10, NUM_CLASSES)).astype(np.float32)
    bench = _bench(tmp_path, images, labels, seed=3)
    batches = throughput.device_batches(bench, 6)
    assert len(batches) == throughput.DEVICE_BATCHES
    for pixels, targets in batches:
        assert pixels.dtype == torch.uint8 and pixels.shape == (6, 1, 16, 16)
        for image, target in zip(pixels[:, 0].numpy(), targets.numpy()):
            row = next(i for i in range(len(images)) if np.array_equal(images[i], image))
            assert np.array_equal(labels[row], target)
    again = throughput.device_batches(bench, 6)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))


def test_an_unknown_model_name_is_refused_with_the_valid_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        throughput.main(["--models", "cnn", "resnet18x", "--device", "cpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--models: unknown model 'resnet18x' (did you mean" in error
    assert "valid names: " in error and "cnn" in error and "convnextv2_seed" in error


def test_a_missing_cache_folder_is_named(tmp_path, capsys):
    missing = tmp_path / "no-cache-here"
    with pytest.raises(SystemExit) as exit_info:
        throughput.main(["--models", "cnn", "--device", "cpu", "--cache", str(missing)])
    assert exit_info.value.code == 2
    assert f"--cache {missing}: no such folder" in capsys.readouterr().err


def test_a_cache_folder_without_a_cache_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        throughput.main(["--models", "cnn", "--device", "cpu", "--image-size", "32", "--cache", str(tmp_path)])
    error = capsys.readouterr().err
    assert str(Path(tmp_path) / "cache.json") in error and "cache file missing" in error
