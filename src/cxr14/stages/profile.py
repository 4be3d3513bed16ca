"""Stage logic of `profile@<model>`: the layer table and the speed/size figures of one trained model.

    table, figures = profile_model(cfg, "cnn", model_dir=Path("models/cnn"))

The model is rebuilt from its `best.pt` at the resolution it was trained at, so FLOPs and
latency describe what was evaluated. Latency depends on the machine: the device is recorded
beside every figure, and `dvc metrics diff` between machines compares hardware, not models.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxr14 import tracking
from cxr14.config import Config
from cxr14.evaluation.efficiency import measure_efficiency
from cxr14.inference import load_trained, select_device
from cxr14.models.structure import layer_table

log = logging.getLogger(__name__)


def profile_model(cfg: Config, model_name: str, model_dir: Path) -> tuple[pd.DataFrame, dict]:
    """Return the per-layer table and the efficiency figures of the trained `model_name`."""
    device = select_device(cfg.profile.device)
    train = cfg.train_for(model_name)
    bundle, image_size = load_trained(model_dir, model_name, device, freeze_backbone=train.freeze_backbone)
    input_size = (bundle.in_chans, image_size, image_size)
    table = layer_table(bundle.model, input_size, model_name)
    settings = cfg.profile
    figures = measure_efficiency(
        bundle.model,
        input_size,
        device,
        warmup=settings.warmup,
        repeats=settings.repeats,
        throughput_batch=settings.throughput_batch,
        throughput_repeats=settings.throughput_repeats,
    )
    figures = {"model": model_name, **figures, "layers": len(table)}
    log.info(
        "%s: %s params, %.3f GFLOPs/image, %.1f MB, %.2f ms/image at batch 1, %.0f img/s at batch %d on %s",
        model_name,
        f"{figures['params_total']:,}",
        figures["flops_per_image"] / 1e9,
        figures["size_mb"],
        figures["latency_ms"],
        figures["throughput_img_s"],
        figures["batch_size_throughput"],
        figures["device"],
    )
    return table, figures


def log_profile(figures: dict, table_csv: Path, run_file: Path) -> None:
    """Add the efficiency figures and the layer table to the model's training run."""
    numeric = {
        f"efficiency_{key}": value
        for key, value in figures.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    with tracking.model_run(figures["model"], run_id=tracking.recorded_run_id(run_file)):
        tracking.log_metrics(numeric)
        tracking.log_artifact(table_csv, artifact_path="structure")
