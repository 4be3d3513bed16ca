"""Train one registered model on the cache, with validation, early stopping and resume.

    result = train_model(cfg, "cnn", cache_dir=Path("data/cache"), out_dir=Path("models/cnn"))

Every epoch ends with validation (loss, macro AUROC) and an atomic `last.pt` holding model,
optimizer, epoch, early-stopping state and the MLflow run id; an improvement also writes
`best.pt`. A stage killed mid-run resumes from `last.pt` when re-run with the same config,
continuing the same MLflow run; a finished or differently-configured `last.pt` is ignored.
Randomness is reseeded from (seed, epoch) at each epoch start, so a resumed run replays the
remaining epochs exactly as an uninterrupted one would.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxr14 import tracking
from cxr14.config import Config, TrainConfig, config_to_dict, flatten
from cxr14.data.cache import open_split, split_labels
from cxr14.data.loader import make_loader, prepare_batch
from cxr14.evaluation.metrics import macro_auroc
from cxr14.io import atomic_write_bytes, atomic_write_json, atomic_write_text, progress
from cxr14.labels import NUM_CLASSES
from cxr14.models import ModelBundle, build_model, set_train_mode

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best_epoch: int
    best_val_auroc: float
    epochs_run: int
    train_seconds: float
    run_id: str
    history: list[dict] = field(default_factory=list)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available on this machine")
    return torch.device(name)


def training_fingerprint(cfg: Config, model_name: str) -> str:
    """What must match for a checkpoint to be resumed: this model's resolved training params."""
    relevant = {"seed": cfg.seed, "train": dataclasses.asdict(cfg.train_for(model_name)), "model": model_name}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@torch.no_grad()
def predict(bundle: ModelBundle, images: np.ndarray, labels: np.ndarray, batch_size: int, image_size: int,
            device: torch.device, desc: str = "predict") -> np.ndarray:
    """Sigmoid scores [N, 15] for a cache split, in its row order (no augmentation)."""
    bundle.model.eval()
    loader = make_loader(images, labels, batch_size, shuffle=False, seed=0)
    outputs = []
    for pixels, _ in progress(loader, desc=desc, unit="batch", leave=False):
        inputs = prepare_batch(pixels.to(device), bundle.in_chans, bundle.mean, bundle.std, image_size)
        with _autocast(device):
            outputs.append(torch.sigmoid(bundle.model(inputs).float()).cpu())
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, NUM_CLASSES), np.float32)


def _autocast(device: torch.device):
    # bf16 on CUDA needs no loss scaler; on the CPU autocast would only slow the seed models.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def _validate(bundle, images, labels, train: TrainConfig, device) -> tuple[float, float]:
    scores = predict(bundle, images, labels, train.batch_size, train.image_size, device, desc="validate")
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    return loss, macro_auroc(labels, scores)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int):
    """Per-step learning-rate schedule (`train.scheduler`)."""
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """`train.optimizer` over the trainable parameters only (a frozen backbone is left out)."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (check train.freeze_backbone)")
    if train.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)


def build_for_training(model_name: str, train: TrainConfig) -> ModelBundle:
    """The model with the weights and freezing `train` asks for; fails before any training."""
    bundle = build_model(model_name, NUM_CLASSES, train.image_size, pretrained=train.pretrained,
                         pretrained_path=train.pretrained_path, freeze_backbone=train.freeze_backbone)
    if train.freeze_backbone and bundle.weights is None:
        raise ValueError(
            f"{model_name}: train.freeze_backbone is true but the backbone has no pretrained weights "
            "(set train.pretrained: true or train.overrides.<model>.pretrained_path)"
        )
    return bundle


def train_model(cfg: Config, model_name: str, cache_dir: Path, out_dir: Path) -> TrainResult:
    """Train `model_name` and write best.pt, last.pt, history.csv, train.json into `out_dir`."""
    train = cfg.train_for(model_name)
    device = select_device(train.device)
    uri = tracking.tracking_uri()
    tracking.check_reachable(uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = training_fingerprint(cfg, model_name)

    train_images, train_index = open_split(cache_dir, "train")
    val_images, val_index = open_split(cache_dir, "val")
    train_labels, val_labels = split_labels(train_index), split_labels(val_index)
    if len(train_images) == 0 or len(val_images) == 0:
        raise ValueError(f"{cache_dir}: the train and val splits must not be empty")

    torch.manual_seed(cfg.seed)
    bundle = build_for_training(model_name, train)
    model = bundle.model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = make_optimizer(model, train)
    steps_per_epoch = math.ceil(len(train_images) / train.batch_size)
    if train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, train.max_steps_per_epoch)
    scheduler = make_scheduler(optimizer, train, total_steps=steps_per_epoch * train.epochs)

    state = {"epoch": 0, "best_auroc": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": [], "run_id": None,
             "train_seconds": 0.0}
    last_path = out_dir / "last.pt"
    if last_path.is_file():
        checkpoint = torch.load(last_path, map_location=device, weights_only=False)
        if checkpoint.get("fingerprint") == fingerprint and not checkpoint.get("finished"):
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            state = checkpoint["state"]
            log.info("resuming %s from %s after epoch %d", model_name, last_path, state["epoch"])
        else:
            log.info("ignoring %s (finished, or trained with other params)", last_path)
    best_weights = None
    if state["epoch"] and (out_dir / "best.pt").is_file():
        best_weights = torch.load(out_dir / "best.pt", map_location=device, weights_only=False)["model"]

    # The resolved config as this model sees it (overrides applied), saved beside its outputs.
    resolved = {**config_to_dict(cfg), "train": dataclasses.asdict(train), "model": model_name}
    atomic_write_json(out_dir / "config.json", resolved)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tags = {"git_commit": tracking.git_commit(), "device": str(device), "weights": bundle.weights or "random init"}
    with tracking.model_run(model_name, run_id=state["run_id"], tags=tags) as run:
        if state["run_id"] is None:
            state["run_id"] = run.info.run_id
            tracking.log_params({**flatten({k: v for k, v in resolved.items() if k != "models"}),
                                 "params_total": n_params, "params_trainable": n_trainable})
            tracking.log_artifact(out_dir / "config.json")
        atomic_write_json(out_dir / "mlflow_run.json", {"run_id": state["run_id"], "tracking_uri": uri})

        for epoch in range(state["epoch"] + 1, train.epochs + 1):
            started = time.perf_counter()
            torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout etc.: same per epoch on resume
            generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch)
            loader = make_loader(train_images, train_labels, train.batch_size, shuffle=True, seed=cfg.seed,
                                 epoch=epoch, num_workers=train.num_workers, pin_memory=device.type == "cuda",
                                 max_batches=train.max_steps_per_epoch)
            set_train_mode(model)  # frozen BatchNorm layers keep their running statistics
            loss_sum, seen = 0.0, 0
            bar = progress(loader, desc=f"{model_name} epoch {epoch}/{train.epochs}", unit="batch", leave=False)
            for pixels, targets in bar:
                inputs = prepare_batch(pixels.to(device, non_blocking=True), bundle.in_chans, bundle.mean,
                                       bundle.std, train.image_size, train.augment, generator)
                targets = targets.to(device, non_blocking=True)
                with _autocast(device):
                    logits = model(inputs)
                loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{model_name}: loss became {loss.item()} at epoch {epoch}; lower train.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(targets)
                seen += len(targets)
                elapsed = time.perf_counter() - started
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{seen / max(elapsed, 1e-9):.0f}", refresh=False)
            train_seconds = time.perf_counter() - started
            val_loss, val_auroc = _validate(bundle, val_images, val_labels, train, device)
            row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_loss": val_loss,
                   "val_macro_auroc": val_auroc, "lr": optimizer.param_groups[0]["lr"],
                   "images_per_second": seen / max(train_seconds, 1e-9)}
            state["history"].append(row)
            state["train_seconds"] += time.perf_counter() - started
            tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            log.info("%s epoch %d: train loss %.4f, val loss %.4f, val macro AUROC %.4f, %.0f img/s",
                     model_name, epoch, row["train_loss"], val_loss, val_auroc, row["images_per_second"])

            state["epoch"] = epoch
            if not np.isfinite(val_auroc):
                log.warning("%s epoch %d: validation AUROC undefined (no class has both outcomes in val)",
                            model_name, epoch)
            if state["best_epoch"] == 0 or val_auroc > state["best_auroc"]:
                state.update(best_auroc=val_auroc, best_epoch=epoch, bad_epochs=0)
                best_weights = copy.deepcopy(model.state_dict())
                save_checkpoint(out_dir / "best.pt", {"model": best_weights, "model_name": model_name,
                                                      "epoch": epoch, "val_macro_auroc": val_auroc,
                                                      "image_size": train.image_size})
            else:
                state["bad_epochs"] += 1
            stop = state["bad_epochs"] >= train.patience or epoch == train.epochs
            save_checkpoint(last_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "state": state, "fingerprint": fingerprint, "finished": stop})
            if stop:
                if epoch < train.epochs:
                    log.info("%s: early stop after epoch %d (best epoch %d)", model_name, epoch, state["best_epoch"])
                break

        if best_weights is not None:
            model.load_state_dict(best_weights)  # early stopping restores the best weights
        history = pd.DataFrame(state["history"])
        atomic_write_text(out_dir / "history.csv", history.to_csv(index=False))
        summary = {"model": model_name, "params_total": n_params, "params_trainable": n_trainable,
                   "weights": bundle.weights, "image_size": train.image_size, "best_epoch": state["best_epoch"],
                   "best_val_macro_auroc": state["best_auroc"], "epochs_run": state["epoch"],
                   "train_seconds": round(state["train_seconds"], 2), "run_id": state["run_id"]}
        atomic_write_json(out_dir / "train.json", summary)
        tracking.log_metrics({"best_val_macro_auroc": state["best_auroc"], "train_seconds": state["train_seconds"]})
        tracking.log_artifact(out_dir / "history.csv")
        tracking.log_artifact(out_dir / "best.pt", artifact_path="checkpoint")
    return TrainResult(state["best_epoch"], state["best_auroc"], state["epoch"], state["train_seconds"],
                       state["run_id"], state["history"])
