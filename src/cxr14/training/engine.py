"""Train one registered model on the cache: validation, early stopping, resume, DDP.

    result = train_model(cfg, "cnn", cache_dir=Path("data/cache"), out_dir=Path("models/cnn"))
    torchrun --nproc_per_node=4 pipeline/train.py resnet50      # data-parallel, same outputs

Every epoch ends with validation (loss, macro AUROC) and an atomic `last.pt` holding model,
optimizer, schedule, random states, epoch/step and early-stopping state (also every
`train.checkpoint_every_steps` optimizer steps); an improvement also writes `best.pt`. The
validation loss is the configured training loss (bce | weighted_bce | focal, same pos_weight
and focal parameters) without label smoothing, so the train and val curves measure the same
objective.

Best epoch: the highest validation macro AUROC; an epoch whose AUROC is undefined (NaN) is
never the best and counts as a bad epoch for patience. If no epoch has a defined AUROC,
nothing is selected: best.pt holds the last epoch's weights with "selected": False, and
train.json has best_epoch 0, best_val_macro_auroc null and a "selection" note (also logged).

A run killed at any point resumes from `last.pt` when re-run with the same params, the same
data (the cache's `tracking.data_fingerprint`) and the same number of processes, skipping the
batches already trained and restoring the random states, so it ends exactly where an
uninterrupted run would (on the CPU: identical metrics), in the same MLflow run. An unfinished
`last.pt` that differs in any of these is not resumed: a warning names what changed (which
params, the old and new data fingerprint, the world size), training starts over in a new
MLflow run tagged `resume_refused` and `restarted_from` (the old run id), and the old run gets
the tags `abandoned` and `superseded_by` and, if still RUNNING, the status KILLED. Under
torchrun every process trains its shard of each epoch; only rank 0 validates and writes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr14 import tracking
from cxr14.config import Config, ConfigError, TrainConfig, config_to_dict, flatten
from cxr14.data.cache import open_split, split_labels
from cxr14.data.loader import make_loader, prepare_batch
from cxr14.errors import InputDataError
from cxr14.evaluation.metrics import macro_auroc
from cxr14.inference import autocast as _autocast
from cxr14.inference import predict_logits
from cxr14.io import atomic_write_json, atomic_write_text, progress
from cxr14.labels import NUM_CLASSES
from cxr14.models import ModelBundle, build_model, set_train_mode
from cxr14.training.checkpoint import (
    capture_rng, load_checkpoint, remove_stale_temporaries, restore_rng, save_checkpoint,
)
from cxr14.training.distributed import (
    DistributedContext, barrier, close_distributed, from_main, gather_to_all, init_distributed,
    sum_across,
)
from cxr14.training.losses import make_loss
from cxr14.training.sampling import finding_weights, weighted_batches
from cxr14.training.schedule import LearningRateSchedule, make_optimizer

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "train_model", "validation_loss",
           "make_optimizer", "save_checkpoint"]


@dataclass
class TrainResult:
    best_epoch: int
    best_val_auroc: float
    epochs_run: int
    train_seconds: float
    run_id: str
    history: list[dict] = field(default_factory=list)


def resume_key(cfg: Config, model_name: str, world_size: int, data: str) -> dict:
    """What must match for a checkpoint to be resumed, by component: this model's resolved
    params, the data (`tracking.data_fingerprint` of the cache) and the number of processes
    (which decides how each epoch's batches are sharded). Stored in every last.pt, so a refusal
    can say which component changed."""
    params = {"seed": cfg.seed, "train": dataclasses.asdict(cfg.train_for(model_name)), "model": model_name}
    return {"params": params, "data": data, "world_size": world_size}


def training_fingerprint(key: dict) -> str:
    """The hash of a `resume_key`: a checkpoint resumes only when its fingerprint equals this."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def resume_refusal(checkpoint: dict, key: dict) -> str | None:
    """Why the unfinished `checkpoint` must not be resumed under `key`, or None when it may.

    The reason names what changed: which params (old -> new), the data fingerprints, the world
    size. A checkpoint from before the key was stored only says "other settings".
    """
    if checkpoint.get("fingerprint") == training_fingerprint(key):
        return None
    old = checkpoint.get("resume_key")
    if not isinstance(old, dict):
        return "it was trained with other settings (the checkpoint records no resume key)"
    reasons = []
    if old.get("params") != key["params"]:
        before, after = flatten(old.get("params") or {}), flatten(key["params"])
        changed = [name for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
        shown = ", ".join(f"{name} {before.get(name)!r} -> {after.get(name)!r}" for name in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        reasons.append(f"other params ({shown}{more})")
    if old.get("data") != key["data"]:
        reasons.append(f"other data (data fingerprint {old.get('data')} -> {key['data']})")
    if old.get("world_size") != key["world_size"]:
        reasons.append(f"another world size ({old.get('world_size')} -> {key['world_size']} processes)")
    return "it was trained with " + ("; ".join(reasons) or "other settings")


def validation_loss(train: TrainConfig, train_labels: np.ndarray) -> torch.nn.Module:
    """The loss the validation reports: the configured training loss (same kind, pos_weight from
    the train split, focal alpha/gamma) without label smoothing, so the val curve measures the
    training objective against the true labels and stays comparable to the train curve."""
    return make_loss(train.loss, train_labels=train_labels, focal_alpha=train.focal_alpha,
                     focal_gamma=train.focal_gamma, label_smoothing=0.0)


def _validate(bundle, images, labels, train: TrainConfig, device, loss_fn: torch.nn.Module) -> tuple[float, float]:
    """(loss_fn on the logits, mean over all elements; macro AUROC of the sigmoid scores); CPU loss_fn."""
    logits = torch.from_numpy(predict_logits(bundle, images, labels, train.batch_size, train.image_size, device,
                                             desc="validate"))
    loss = float(loss_fn(logits, torch.from_numpy(np.asarray(labels, np.float32)))) if len(logits) else math.nan
    return loss, float(macro_auroc(labels, torch.sigmoid(logits).numpy()))


def build_for_training(model_name: str, train: TrainConfig) -> ModelBundle:
    """The model with the weights and freezing `train` asks for; fails before any training."""
    bundle = build_model(model_name, NUM_CLASSES, train.image_size, pretrained=train.pretrained,
                         pretrained_path=train.pretrained_path, freeze_backbone=train.freeze_backbone)
    if train.freeze_backbone and bundle.weights is None:
        raise ConfigError(
            f"{model_name}: train.freeze_backbone is true but the backbone has no pretrained weights "
            "(set train.pretrained: true or train.overrides.<model>.pretrained_path)"
        )
    return bundle


def epoch_batches(train: TrainConfig, images: np.ndarray, labels: np.ndarray, seed: int, epoch: int,
                  context: DistributedContext) -> list[list[int]]:
    """This process's row batches for `epoch`: a function of (seed, epoch, rank) only, so a
    resumed run can skip exactly the batches it already trained."""
    if train.sampling == "findings":
        batches = weighted_batches(finding_weights(labels), train.batch_size, seed, epoch,
                                   rank=context.rank, world_size=context.world_size)
    else:
        loader = make_loader(images, labels, train.batch_size, shuffle=True, seed=seed, epoch=epoch,
                             rank=context.rank, world_size=context.world_size)
        batches = [list(map(int, batch)) for batch in loader.sampler]
    return batches[: train.max_steps_per_epoch] if train.max_steps_per_epoch else batches


def shadowed_settings(cfg: Config, model_name: str) -> list[str]:
    """One line per `train.overrides.<model>` value that replaces a different `train.*` value, so
    that a sweep of `-S train.lr=...` over a model with its own lr says why nothing changed."""
    override = cfg.train.overrides.get(model_name)
    if override is None:
        return []
    notes = []
    for name, value in dataclasses.asdict(override).items():
        general = getattr(cfg.train, name)
        if value is not None and value != general:
            notes.append(f"{model_name}: train.overrides.{model_name}.{name} = {value!r} replaces train.{name} = "
                         f"{general!r} (set -S train.overrides.{model_name}.{name}=... to change it)")
    return notes


_OUTPUT_FILES = ("last.pt", "best.pt", "history.csv", "train.json", "config.json", "mlflow_run.json")


def _recorded_run(out_dir: Path) -> str | None:
    """The MLflow run id an earlier training recorded in `out_dir`, if any."""
    try:
        return json.loads((out_dir / "mlflow_run.json").read_text(encoding="utf-8")).get("run_id")
    except (FileNotFoundError, ValueError, AttributeError):
        return None


def train_model(cfg: Config, model_name: str, cache_dir: Path, out_dir: Path) -> TrainResult:
    """Train `model_name` and write best.pt, last.pt, history.csv, train.json into `out_dir`."""
    train = cfg.train_for(model_name)
    context = init_distributed(train.device)
    try:
        return _train(cfg, model_name, train, context, cache_dir, out_dir)
    finally:
        close_distributed(context)


def _train(cfg: Config, model_name: str, train: TrainConfig, context: DistributedContext, cache_dir: Path,
           out_dir: Path) -> TrainResult:
    device, main = context.device, context.is_main
    uri = tracking.tracking_uri()
    if main:
        tracking.check_reachable(uri)
        for note in shadowed_settings(cfg, model_name):
            log.info("%s", note)
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:  # what a kill during an atomic write left behind (one training per model folder)
        remove_stale_temporaries(out_dir, _OUTPUT_FILES)
    key = resume_key(cfg, model_name, context.world_size, tracking.data_fingerprint(cache_dir))
    fingerprint = training_fingerprint(key)

    train_images, train_index = open_split(cache_dir, "train")
    val_images, val_index = open_split(cache_dir, "val")
    train_labels, val_labels = split_labels(train_index), split_labels(val_index)
    if len(train_images) == 0 or len(val_images) == 0:
        raise InputDataError(f"{cache_dir}: the train and val splits must not be empty; lower split.test_fraction "
                             "or use more images")

    torch.manual_seed(cfg.seed)
    bundle = build_for_training(model_name, train)
    model = bundle.model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = make_optimizer(model, train)
    batches_per_epoch = len(epoch_batches(train, train_images, train_labels, cfg.seed, 1, context))
    steps_per_epoch = math.ceil(batches_per_epoch / train.grad_accum_steps)
    schedule = LearningRateSchedule(optimizer, train, steps_per_epoch)
    loss_fn = make_loss(train.loss, train_labels=train_labels, focal_alpha=train.focal_alpha,
                        focal_gamma=train.focal_gamma, label_smoothing=train.label_smoothing).to(device)
    val_loss_fn = validation_loss(train, train_labels)  # on the CPU, beside the gathered logits

    state = {"epoch": 0, "best_auroc": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": [], "run_id": None,
             "train_seconds": 0.0, "partial": None}
    last_path = out_dir / "last.pt"
    resume_rng = None
    abandoned = None  # (old run id, reason) of an unfinished checkpoint that is not resumed
    if last_path.is_file():
        checkpoint = load_checkpoint(last_path)
        finished = bool(checkpoint.get("finished"))
        refusal = None if finished else resume_refusal(checkpoint, key)
        if finished:
            if main:
                log.info("%s: %s holds a finished run; training from scratch", model_name, last_path)
        elif refusal is None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            schedule.load_state_dict(checkpoint["schedule"])
            state = checkpoint["state"]
            if state["partial"] is not None:
                resume_rng = checkpoint["rng"][context.rank]
            if main:
                where = f"epoch {state['epoch'] + 1}, batch {state['partial']['batches']}" if state["partial"] \
                    else f"the end of epoch {state['epoch']}"
                log.info("resuming %s from %s at %s", model_name, last_path, where)
        else:
            old_run = (checkpoint.get("state") or {}).get("run_id")
            abandoned = (old_run, refusal)
            if main:
                log.warning("%s: not resuming the unfinished %s: %s; starting over at epoch 1 in a new MLflow run "
                            "(the old run %s is marked abandoned)", model_name, last_path, refusal, old_run)
    # A run recorded here that no checkpoint continues (its process died before the first
    # last.pt): it can never be resumed, so it must not stay RUNNING in MLflow.
    orphan = _recorded_run(out_dir) if main and state["run_id"] is None else None
    best_weights = None
    # best_epoch 0: no epoch selected yet, so a best.pt there belongs to an earlier run.
    if main and state["best_epoch"] and (out_dir / "best.pt").is_file():
        best_weights = load_checkpoint(out_dir / "best.pt")["model"]

    network: torch.nn.Module = model
    if context.enabled:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if train.compile:
        network = torch.compile(network)

    resolved = {**config_to_dict(cfg), "train": dataclasses.asdict(train), "model": model_name,
                "world_size": context.world_size}
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run_context = contextlib.nullcontext()
    if main:
        # The resolved config as this model sees it (overrides applied), saved beside its outputs.
        atomic_write_json(out_dir / "config.json", resolved)
        tags = tracking.run_tags(model_name, cache_dir, str(device), bundle.weights)
        if abandoned is not None:
            tags.update(resume_refused=f"{last_path.name} not resumed: {abandoned[1]}"[:5000],
                        restarted_from=str(abandoned[0]))
        run_context = tracking.model_run(model_name, run_id=state["run_id"], tags=tags, system_metrics=True)
    with run_context as run:
        if main and state["run_id"] is None:
            state["run_id"] = run.info.run_id
            if orphan and orphan != (abandoned or (None,))[0]:
                tracking.end_orphaned_run(orphan, f"its process died before writing {last_path}; training restarted "
                                          f"in run {run.info.run_id}", superseded_by=run.info.run_id)
            if abandoned is not None and abandoned[0]:
                tracking.end_abandoned_run(
                    abandoned[0], f"{last_path} not resumed: {abandoned[1]}; training restarted in run "
                    f"{run.info.run_id}", superseded_by=run.info.run_id)
            tracking.log_params({**flatten({k: v for k, v in resolved.items() if k != "models"}),
                                 "params_total": n_params, "params_trainable": n_trainable})
            tracking.log_artifact(out_dir / "config.json")
            tracking.log_cache_inputs(cache_dir, {"train": "training", "val": "validation"})
        if main:
            atomic_write_json(out_dir / "mlflow_run.json", {"run_id": state["run_id"], "tracking_uri": uri})

        for epoch in range(state["epoch"] + 1, train.epochs + 1):
            started = time.perf_counter()
            # Per (seed, epoch, rank): a resumed or sharded run draws what an uninterrupted one would.
            torch.manual_seed(cfg.seed * 1000 + epoch + 7919 * context.rank)
            generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch + 7919 * context.rank)
            partial = state["partial"] or {"batches": 0, "steps": 0, "loss_sum": 0.0, "seen": 0, "seconds": 0.0}
            state["partial"] = None
            if resume_rng is not None:
                restore_rng(resume_rng, generator)
                resume_rng = None
            batches = epoch_batches(train, train_images, train_labels, cfg.seed, epoch, context)
            done = partial["batches"]
            loader = make_loader(train_images, train_labels, train.batch_size, shuffle=False, seed=cfg.seed,
                                 num_workers=train.num_workers, pin_memory=device.type == "cuda",
                                 batches=batches[done:])
            set_train_mode(model)  # frozen BatchNorm layers keep their running statistics
            loss_sum, seen, steps = partial["loss_sum"], partial["seen"], partial["steps"]
            seen_before, seconds_before = seen, partial["seconds"]
            bar = progress(loader, desc=f"{model_name} epoch {epoch}/{train.epochs}", unit="batch", leave=False,
                           total=len(batches) - done, disable_bar=not main)
            for index, (pixels, targets) in enumerate(bar, start=done):
                group_start = index - index % train.grad_accum_steps
                group_size = min(train.grad_accum_steps, len(batches) - group_start)
                boundary = index + 1 == group_start + group_size
                inputs = prepare_batch(pixels.to(device, non_blocking=True), bundle.in_chans, bundle.mean,
                                       bundle.std, train.image_size, train.augment, generator)
                targets = targets.to(device, non_blocking=True)
                no_sync = network.no_sync() if context.enabled and not boundary else contextlib.nullcontext()
                with no_sync:
                    with _autocast(device):
                        logits = network(inputs)
                    loss = loss_fn(logits.float(), targets)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"{model_name}: loss became {loss.item()} at epoch {epoch}; lower train.lr")
                    (loss / group_size).backward()
                loss_sum += loss.item() * len(targets)
                seen += len(targets)
                if boundary:
                    if train.grad_clip:
                        torch.nn.utils.clip_grad_norm_(
                            [p for p in model.parameters() if p.requires_grad], train.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    schedule.after_step()
                    steps += 1
                    every = train.checkpoint_every_steps
                    if every and steps % every == 0 and index + 1 < len(batches):
                        partial = {"batches": index + 1, "steps": steps, "loss_sum": loss_sum, "seen": seen,
                                   "seconds": seconds_before + time.perf_counter() - started}
                        rng_states = gather_to_all(context, capture_rng(generator))
                        if main:
                            save_checkpoint(last_path, {
                                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "schedule": schedule.state_dict(), "rng": rng_states,
                                "state": {**state, "partial": partial}, "fingerprint": fingerprint,
                                "resume_key": key, "finished": False})
                elapsed = time.perf_counter() - started
                bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}",
                                img_s=f"{(seen - seen_before) / max(elapsed, 1e-9):.0f}", refresh=False)
            train_seconds = seconds_before + time.perf_counter() - started
            loss_sum, seen = sum_across(context, loss_sum, seen)
            validation = _validate(bundle, val_images, val_labels, train, device, val_loss_fn) if main else None
            val_loss, val_auroc = from_main(context, validation)
            schedule.after_epoch(val_auroc)
            row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_loss": val_loss,
                   "val_macro_auroc": val_auroc, "lr": optimizer.param_groups[0]["lr"],
                   "images_per_second": seen / max(train_seconds, 1e-9)}
            state["history"].append(row)
            state["train_seconds"] += train_seconds
            state["epoch"] = epoch
            # An undefined (NaN) AUROC is never the best and counts as a bad epoch for patience.
            improved = bool(np.isfinite(val_auroc)) and (state["best_epoch"] == 0 or val_auroc > state["best_auroc"])
            if improved:
                state.update(best_auroc=val_auroc, best_epoch=epoch, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            stop = state["bad_epochs"] >= train.patience or epoch == train.epochs
            if main:
                tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
                log.info("%s epoch %d: train loss %.4f, val loss %.4f, val macro AUROC %.4f, %.0f img/s",
                         model_name, epoch, row["train_loss"], val_loss, val_auroc, row["images_per_second"])
                if not np.isfinite(val_auroc):
                    log.warning("%s epoch %d: validation AUROC undefined (no class has both outcomes in val, or "
                                "non-finite scores); not a candidate for best, counts as a bad epoch",
                                model_name, epoch)
                if improved:
                    best_weights = copy.deepcopy(model.state_dict())
                    save_checkpoint(out_dir / "best.pt", {"model": best_weights, "model_name": model_name,
                                                          "epoch": epoch, "val_macro_auroc": float(val_auroc),
                                                          "image_size": train.image_size, "selected": True})
                save_checkpoint(last_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                            "schedule": schedule.state_dict(), "state": state,
                                            "fingerprint": fingerprint, "resume_key": key, "finished": stop})
            if stop:
                if epoch < train.epochs and main:
                    log.info("%s: early stop after epoch %d (best epoch %d)", model_name, epoch, state["best_epoch"])
                break

        selected = state["best_epoch"] > 0
        if not selected:
            state["best_auroc"] = math.nan
        if main:
            if best_weights is not None:
                model.load_state_dict(best_weights)  # early stopping restores the best weights
            if selected:
                selection = "epoch with the highest validation macro AUROC"
            else:
                # Nothing to select on: best.pt (which evaluate needs) holds the last epoch's weights,
                # marked as not selected; train.json says so and best_epoch stays 0.
                selection = (f"none: validation macro AUROC undefined in all {state['epoch']} epochs; "
                             "best.pt holds the last epoch's weights")
                log.warning("%s: %s", model_name, selection)
                save_checkpoint(out_dir / "best.pt", {"model": model.state_dict(), "model_name": model_name,
                                                      "epoch": state["epoch"], "val_macro_auroc": math.nan,
                                                      "image_size": train.image_size, "selected": False})
            atomic_write_text(out_dir / "history.csv", pd.DataFrame(state["history"]).to_csv(index=False))
            summary = {"model": model_name, "params_total": n_params, "params_trainable": n_trainable,
                       "weights": bundle.weights, "image_size": train.image_size, "world_size": context.world_size,
                       "best_epoch": state["best_epoch"],
                       "best_val_macro_auroc": state["best_auroc"] if selected else None,
                       "selection": selection, "epochs_run": state["epoch"],
                       "train_seconds": round(state["train_seconds"], 2), "run_id": state["run_id"]}
            atomic_write_json(out_dir / "train.json", summary)
            tracking.log_metrics({"best_val_macro_auroc": state["best_auroc"], "train_seconds": state["train_seconds"]})
            tracking.log_artifact(out_dir / "history.csv")
            tracking.log_artifact(out_dir / "best.pt", artifact_path="checkpoint")
    barrier(context)
    return TrainResult(state["best_epoch"], state["best_auroc"], state["epoch"], state["train_seconds"],
                       state["run_id"] or "", state["history"])
