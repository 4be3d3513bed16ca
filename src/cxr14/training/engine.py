"""Train one registered model on the cache: validation, early stopping, resume, DDP.

    result = train_model(cfg, "cnn", cache_dir=Path("data/cache"), out_dir=Path("models/cnn/seed-42"), seed=42)
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
Early stopping: after `train.patience` epochs in a row without a better one, but never before
epoch `train.min_epochs`; the best epoch may still be one of the first.

A run killed at any point resumes from `last.pt` when re-run with the same params, the same
data (the cache's `tracking.data_fingerprint`), the same number of processes and the same code
(the modules train@ declares, torch/timm/numpy versions: `cxr14.training.code`), skipping the
batches already trained and restoring the random states, so it ends exactly where an
uninterrupted run would (on the CPU: identical metrics), in the same MLflow run. An unfinished
`last.pt` that differs in any of these is not resumed: a warning names what changed (which
params, the old and new data fingerprint, the world size, which modules or library versions),
training starts over in a new MLflow run tagged `resume_refused` and `restarted_from` (the old
run id), and the old run gets the tags `abandoned` and `superseded_by` and, if still RUNNING,
the status KILLED. Under torchrun every process trains its shard of each epoch; only rank 0
validates and writes.

Structure: `_train` runs `_prepare` (data opened, then `assemble_training`: model, optimizer,
schedule, losses), `_resume` (last.pt loaded or refused), `_tracked_run` (the MLflow run: new or
resumed, orphaned and abandoned runs ended), then per epoch `train_one_epoch` (with mid-epoch
checkpoints) and `end_epoch` (`_validate`, history, early stopping, best.pt, last.pt), and
`_finish` (history.csv, train.json, artifacts).
What a checkpoint carries between processes is a `TrainingState` (with a `Partial` mid-epoch),
stored as plain data. One step is `forward_backward` then `optimizer_step`, fed by `epoch_loader`;
benchmarks/throughput.py times these same functions.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxr14 import tracking
from cxr14.config import Config, ConfigError, TrainConfig, config_to_dict, flatten
from cxr14.data.cache import open_split, split_labels
from cxr14.data.loader import make_loader, prepare_batch
from cxr14.errors import InputDataError
from cxr14.evaluation.metrics import macro_auroc, operating_points
from cxr14.inference import autocast as _autocast
from cxr14.inference import predict
from cxr14.io import atomic_write_json, atomic_write_text, progress
from cxr14.labels import NUM_CLASSES
from cxr14.models import ModelBundle, build_model, set_train_mode
from cxr14.training.checkpoint import (
    capture_rng,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
)
from cxr14.training.code import code_state
from cxr14.training.distributed import (
    DistributedContext,
    barrier,
    close_distributed,
    from_main,
    gather_to_all,
    init_distributed,
    sum_across,
)
from cxr14.training.losses import make_loss
from cxr14.training.sampling import finding_weights, weighted_batches
from cxr14.training.schedule import LearningRateSchedule, make_optimizer

log = logging.getLogger(__name__)

__all__ = [
    "TrainResult",
    "Training",
    "assemble_training",
    "epoch_batches",
    "epoch_loader",
    "forward_backward",
    "make_optimizer",
    "optimizer_step",
    "save_checkpoint",
    "train_model",
    "training_network",
    "validation_loss",
]


@dataclass
class TrainResult:
    best_epoch: int
    best_val_auroc: float
    epochs_run: int
    train_seconds: float
    run_id: str
    history: list[dict] = field(default_factory=list)


@dataclass
class Partial:
    """How far an unfinished epoch got, as a mid-epoch `last.pt` records it: the batches trained
    and optimizer steps taken, the running train-loss sum over the `seen` images, the seconds."""

    batches: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0


@dataclass
class TrainingState:
    """What `last.pt` carries from one process to the next besides weights, optimizer and schedule:
    the last finished epoch, early stopping (best AUROC and epoch, bad epochs in a row), the
    history rows, the MLflow run id, the training seconds and, mid-epoch, the `Partial` epoch.

    A checkpoint stores it as plain data (`to_dict`), so it loads with torch.load(weights_only=True).
    """

    epoch: int = 0
    best_auroc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    run_id: str | None = None
    train_seconds: float = 0.0
    partial: Partial | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingState:
        partial = data["partial"]
        return cls(**{**data, "partial": None if partial is None else Partial(**partial)})

    def record_epoch(self, row: dict, seconds: float) -> bool:
        """Record the finished epoch's history `row` and its training `seconds`; returns whether it
        is the new best. An undefined (NaN) AUROC is never the best and counts as a bad epoch."""
        self.history.append(row)
        self.train_seconds += seconds
        self.epoch = row["epoch"]
        auroc = row["val_macro_auroc"]
        improved = bool(np.isfinite(auroc)) and (self.best_epoch == 0 or auroc > self.best_auroc)
        if improved:
            self.best_auroc, self.best_epoch, self.bad_epochs = auroc, self.epoch, 0
        else:
            self.bad_epochs += 1
        return improved


def resume_key(cfg: Config, model_name: str, world_size: int, data: str, seed: int, code: dict) -> dict:
    """What must match for a checkpoint to be resumed, by component: this model's resolved
    params, the data (`tracking.data_fingerprint` of the cache), the number of processes
    (which decides how each epoch's batches are sharded) and the code (`cxr14.training.code`:
    the modules train@ declares and the libraries' versions; a run finished by other code than the one
    that began it would match neither). Stored in every last.pt, so a refusal can say which
    component changed. `seed`: the training seed."""
    params = {"seed": seed, "train": dataclasses.asdict(cfg.train_for(model_name)), "model": model_name}
    return {"params": params, "data": data, "world_size": world_size, "code": code}


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
        reasons.append(f"other params ({_listed([f'{n} {before.get(n)!r} -> {after.get(n)!r}' for n in changed])})")
    if old.get("data") != key["data"]:
        reasons.append(f"other data (data fingerprint {old.get('data')} -> {key['data']})")
    if old.get("world_size") != key["world_size"]:
        reasons.append(f"another world size ({old.get('world_size')} -> {key['world_size']} processes)")
    if old.get("code") != key["code"]:
        reasons.append(_code_change(old.get("code"), key["code"]))
    return "it was trained with " + ("; ".join(reasons) or "other settings")


def _code_change(old: Any, new: dict) -> str:
    """ "other code (...)": the library versions that differ and the modules added, removed or edited."""
    if not isinstance(old, dict):
        return "other code (the checkpoint records none)"
    changes = []
    before, after = old.get("libraries") or {}, new["libraries"]
    changes += [
        f"{name} {before.get(name)} -> {after.get(name)}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]
    before, after = old.get("files") or {}, new["files"]
    for name in sorted(set(before) | set(after)):
        if name not in before:
            changes.append(f"{name} added")
        elif name not in after:
            changes.append(f"{name} removed")
        elif before[name] != after[name]:
            changes.append(f"{name} edited")
    return f"other code ({_listed(changes)})"


def _listed(changes: list[str], shown: int = 5) -> str:
    """The first `shown` changes, then how many more."""
    more = f" and {len(changes) - shown} more" if len(changes) > shown else ""
    return ", ".join(changes[:shown]) + more


def validation_loss(train: TrainConfig, train_labels: np.ndarray) -> torch.nn.Module:
    """The loss the validation reports: the configured training loss (same kind, pos_weight from
    the train split, focal alpha/gamma) without label smoothing, so the val curve measures the
    training objective against the true labels and stays comparable to the train curve."""
    return make_loss(
        train.loss,
        train_labels=train_labels,
        focal_alpha=train.focal_alpha,
        focal_gamma=train.focal_gamma,
        label_smoothing=0.0,
    )


def _validate(
    bundle, images, labels, train: TrainConfig, device, loss_fn: torch.nn.Module
) -> tuple[float, float, np.ndarray]:
    """(loss_fn on the logits, mean over all elements; macro AUROC of the sigmoid scores; the
    scores [N, 15]); CPU loss_fn."""
    logits = torch.from_numpy(
        predict(bundle, images, labels, train.batch_size, train.image_size, device, desc="validate", logits=True)
    )
    loss = float(loss_fn(logits, torch.from_numpy(np.asarray(labels, np.float32)))) if len(logits) else math.nan
    scores = torch.sigmoid(logits).numpy()
    return loss, float(macro_auroc(labels, scores)), scores


def build_for_training(model_name: str, train: TrainConfig) -> ModelBundle:
    """The model with the weights and freezing `train` asks for; fails before any training."""
    bundle = build_model(
        model_name,
        NUM_CLASSES,
        train.image_size,
        pretrained=train.pretrained,
        pretrained_path=train.pretrained_path,
        freeze_backbone=train.freeze_backbone,
    )
    if train.freeze_backbone and bundle.weights is None:
        raise ConfigError(
            f"{model_name}: train.freeze_backbone is true but the backbone has no pretrained weights "
            "(set train.pretrained: true or train.overrides.<model>.pretrained_path)"
        )
    return bundle


def epoch_batches(
    train: TrainConfig, images: np.ndarray, labels: np.ndarray, seed: int, epoch: int, context: DistributedContext
) -> list[list[int]]:
    """This process's row batches for `epoch`: a function of (seed, epoch, rank) only, so a
    resumed run can skip exactly the batches it already trained."""
    if train.sampling == "findings":
        batches = weighted_batches(
            finding_weights(labels), train.batch_size, seed, epoch, rank=context.rank, world_size=context.world_size
        )
    else:
        loader = make_loader(
            images,
            labels,
            train.batch_size,
            shuffle=True,
            seed=seed,
            epoch=epoch,
            rank=context.rank,
            world_size=context.world_size,
        )
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
            notes.append(
                f"{model_name}: train.overrides.{model_name}.{name} = {value!r} replaces train.{name} = "
                f"{general!r} (set -S train.overrides.{model_name}.{name}=... to change it)"
            )
    return notes


_OUTPUT_FILES = ("last.pt", "best.pt", "history.csv", "train.json", "config.json", "mlflow_run.json")


def _recorded_run(out_dir: Path) -> str | None:
    """The MLflow run id an earlier training recorded in `out_dir`, if any."""
    try:
        return json.loads((out_dir / "mlflow_run.json").read_text(encoding="utf-8")).get("run_id")
    except (FileNotFoundError, ValueError, AttributeError):
        return None


def train_model(cfg: Config, model_name: str, cache_dir: Path, out_dir: Path, seed: int) -> TrainResult:
    """Train `model_name` and write best.pt, last.pt, history.csv, train.json into `out_dir`.

    `seed`: the training seed (initialisation, augmentation, batch order), one of `train_seeds`
    in the pipeline. The data seed `cfg.seed` played its part when the split was drawn.
    """
    train = cfg.train_for(model_name)
    context = init_distributed(train.device)
    try:
        return _train(cfg, model_name, train, context, cache_dir, out_dir, seed)
    finally:
        close_distributed(context)


@dataclass
class Training:
    """One training in this process: its settings, data, model and optimizer (fixed once prepared)
    and what changes as it runs: the `TrainingState`, the best weights so far (rank 0) and, until
    the first resumed epoch starts, the random states a mid-epoch `last.pt` saved for this rank."""

    seed: int
    model_name: str
    train: TrainConfig
    context: DistributedContext
    cache_dir: Path
    out_dir: Path
    uri: str
    key: dict
    resolved: dict  # the config as this model sees it (overrides applied), saved as config.json
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    bundle: ModelBundle
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LearningRateSchedule
    loss_fn: torch.nn.Module
    val_loss_fn: torch.nn.Module
    network: Any = None  # the model as trained: DDP-wrapped (no_sync) and/or compiled; set by _prepare
    state: TrainingState = field(default_factory=TrainingState)
    best_weights: dict | None = None
    val_scores: np.ndarray | None = None  # the last validation's scores (rank 0)
    resume_rng: dict | None = None
    # The forward pass's mixed precision on a device (cxr14.inference.autocast: bf16 on CUDA).
    autocast: Callable[[torch.device], Any] = _autocast

    @property
    def main(self) -> bool:
        return self.context.is_main

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def fingerprint(self) -> str:
        return training_fingerprint(self.key)


def _train(
    cfg: Config,
    model_name: str,
    train: TrainConfig,
    context: DistributedContext,
    cache_dir: Path,
    out_dir: Path,
    seed: int,
) -> TrainResult:
    """Prepare, resume (or refuse to), then inside the MLflow run each epoch's training and its
    end-of-epoch bookkeeping until early stopping or the last epoch, and the final outputs."""
    run = _prepare(cfg, model_name, train, context, cache_dir, out_dir, seed)
    abandoned = _resume(run)
    # A run recorded here that no checkpoint continues (its process died before the first
    # last.pt): it can never be resumed, so it must not stay RUNNING in MLflow.
    orphan = _recorded_run(out_dir) if run.main and run.state.run_id is None else None
    # best_epoch 0: no epoch selected yet, so a best.pt there belongs to an earlier run.
    if run.main and run.state.best_epoch and (out_dir / "best.pt").is_file():
        run.best_weights = load_checkpoint(out_dir / "best.pt")["model"]
    run.network = training_network(run.model, context, train)
    with _tracked_run(run, abandoned, orphan):
        for epoch in range(run.state.epoch + 1, train.epochs + 1):
            loss_sum, seen, seconds = train_one_epoch(run, epoch)
            if end_epoch(run, epoch, loss_sum, seen, seconds):
                break
        _finish(run)
    barrier(context)
    state = run.state
    return TrainResult(
        state.best_epoch, state.best_auroc, state.epoch, state.train_seconds, state.run_id or "", state.history
    )


def _prepare(
    cfg: Config,
    model_name: str,
    train: TrainConfig,
    context: DistributedContext,
    cache_dir: Path,
    out_dir: Path,
    seed: int,
) -> Training:
    """Everything before resuming: the tracking store checked, stale temporaries removed, the data
    opened, the model built (seeded), the optimizer, schedule and losses; a fresh state."""
    main = context.is_main
    uri = tracking.tracking_uri()
    if main:
        tracking.check_reachable(uri)
        for note in shadowed_settings(cfg, model_name):
            log.info("%s", note)
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:  # what a kill during an atomic write left behind (one training per model folder)
        remove_stale_temporaries(out_dir, _OUTPUT_FILES)
    data_key = tracking.data_fingerprint(cache_dir)
    key = resume_key(cfg, model_name, context.world_size, data_key, seed, code_state())

    data = _open_training_data(cache_dir)
    resolved = {**config_to_dict(cfg), "train": dataclasses.asdict(train), "model": model_name, "train_seed": seed}
    resolved["world_size"] = context.world_size
    return assemble_training(
        model_name, train, context, data, seed, cache_dir, out_dir, uri=uri, key=key, resolved=resolved
    )


def assemble_training(
    model_name: str,
    train: TrainConfig,
    context: DistributedContext,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    seed: int,
    cache_dir: Path,
    out_dir: Path,
    *,
    bundle: ModelBundle | None = None,
    uri: str = "",
    key: dict | None = None,
    resolved: dict | None = None,
) -> Training:
    """The model built (seeded; channels-last on CUDA), the optimizer, schedule and losses for
    `data` = (train images, train labels, val images, val labels); a fresh state. What
    `train_model` trains, and what benchmarks/throughput.py times step by step.

    Args:
        bundle: an already built model (default: built here from `train`).
        uri, key, resolved: what `train_model` records: the MLflow store, the run's key in it, and
            the config as this model sees it (empty when nothing is recorded).
    """
    device = context.device
    train_images, train_labels, val_images, val_labels = data
    torch.manual_seed(seed)
    bundle = bundle or build_for_training(model_name, train)
    model = bundle.model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = make_optimizer(model, train)
    batches_per_epoch = len(epoch_batches(train, train_images, train_labels, seed, 1, context))
    schedule = LearningRateSchedule(optimizer, train, math.ceil(batches_per_epoch / train.grad_accum_steps))
    loss_fn, val_loss_fn = training_losses(train, train_labels, device)
    return Training(
        seed=seed,
        model_name=model_name,
        train=train,
        context=context,
        cache_dir=cache_dir,
        out_dir=out_dir,
        train_images=train_images,
        train_labels=train_labels,
        val_images=val_images,
        val_labels=val_labels,
        bundle=bundle,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        uri=uri,
        key=key or {},
        resolved=resolved or {},
    )


def training_losses(
    train: TrainConfig, train_labels: np.ndarray, device: torch.device
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(training loss on `device`, validation loss on the CPU, beside the gathered logits)."""
    loss_fn = make_loss(
        train.loss,
        train_labels=train_labels,
        focal_alpha=train.focal_alpha,
        focal_gamma=train.focal_gamma,
        label_smoothing=train.label_smoothing,
    ).to(device)
    return loss_fn, validation_loss(train, train_labels)


def _open_training_data(cache_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, val images, val labels) of the cache; both splits must have images."""
    train_images, train_index = open_split(cache_dir, "train")
    val_images, val_index = open_split(cache_dir, "val")
    train_labels, val_labels = split_labels(train_index), split_labels(val_index)
    if len(train_images) == 0 or len(val_images) == 0:
        raise InputDataError(
            f"{cache_dir}: the train and val splits must not be empty; lower split.test_fraction or use more images"
        )
    return train_images, train_labels, val_images, val_labels


def _resume(run: Training) -> tuple[str | None, str] | None:
    """Continue from `last.pt` if it holds an unfinished run with this resume key: load the model,
    optimizer, schedule and state (mid-epoch also this rank's random states). A finished one is
    ignored; for a refused one, returns (its MLflow run id, why it is not resumed), else None."""
    if not run.last_path.is_file():
        return None
    checkpoint = load_checkpoint(run.last_path)
    if checkpoint.get("finished"):
        if run.main:
            log.info("%s: %s holds a finished run; training from scratch", run.model_name, run.last_path)
        return None
    refusal = resume_refusal(checkpoint, run.key)
    if refusal is not None:
        old_run = (checkpoint.get("state") or {}).get("run_id")
        if run.main:
            log.warning(
                "%s: not resuming the unfinished %s: %s; starting over at epoch 1 in a new MLflow run "
                "(the old run %s is marked abandoned)",
                run.model_name,
                run.last_path,
                refusal,
                old_run,
            )
        return old_run, refusal
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.schedule.load_state_dict(checkpoint["schedule"])
    run.state = state = TrainingState.from_dict(checkpoint["state"])
    if state.partial is not None:
        run.resume_rng = checkpoint["rng"][run.context.rank]
    if run.main:
        where = (
            f"epoch {state.epoch + 1}, batch {state.partial.batches}"
            if state.partial
            else f"the end of epoch {state.epoch}"
        )
        log.info("resuming %s from %s at %s", run.model_name, run.last_path, where)
    return None


def training_network(model: torch.nn.Module, context: DistributedContext, train: TrainConfig) -> torch.nn.Module:
    """`model` as trained: wrapped for DDP under torchrun, compiled if `train.compile`."""
    network = model
    if context.enabled:
        device = context.device
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if train.compile:
        network = cast(torch.nn.Module, torch.compile(network))  # an OptimizedModule
    return network


def _param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def _tracked_run(run: Training, abandoned: tuple[str | None, str] | None, orphan: str | None) -> Iterator[None]:
    """The open MLflow run of this training (rank 0 only; elsewhere nothing): the resumed run, or a
    new one that ends the `orphan` and `abandoned` earlier runs and logs params, config and data.
    Writes config.json before and mlflow_run.json once the run is known."""
    if not run.main:
        yield
        return
    resolved = run.resolved
    atomic_write_json(run.out_dir / "config.json", resolved)
    tags = tracking.run_tags(run.model_name, run.cache_dir, str(run.device), run.bundle.weights)
    if abandoned is not None:
        tags.update(
            resume_refused=f"{run.last_path.name} not resumed: {abandoned[1]}"[:5000], restarted_from=str(abandoned[0])
        )
    with tracking.model_run(
        run.model_name, run_id=run.state.run_id, tags=tags, system_metrics=True, seed=run.seed
    ) as mlflow_run:
        if run.state.run_id is None:
            run_id = run.state.run_id = mlflow_run.info.run_id
            if orphan and orphan != (abandoned or (None,))[0]:
                tracking.end_orphaned_run(
                    orphan,
                    f"its process died before writing {run.last_path}; training restarted in run {run_id}",
                    superseded_by=run_id,
                )
            if abandoned is not None and abandoned[0]:
                tracking.end_abandoned_run(
                    abandoned[0],
                    f"{run.last_path} not resumed: {abandoned[1]}; training restarted in run {run_id}",
                    superseded_by=run_id,
                )
            n_params, n_trainable = _param_counts(run.model)
            tracking.log_params(
                {
                    **flatten({k: v for k, v in resolved.items() if k != "models"}),
                    "params_total": n_params,
                    "params_trainable": n_trainable,
                }
            )
            tracking.log_artifact(run.out_dir / "config.json")
            tracking.log_cache_inputs(run.cache_dir, {"train": "training", "val": "validation"})
        atomic_write_json(run.out_dir / "mlflow_run.json", {"run_id": run.state.run_id, "tracking_uri": run.uri})
        yield


def train_one_epoch(run: Training, epoch: int) -> tuple[float, int, float]:
    """Train this process's batches of `epoch`, from where its `Partial` left off (if resumed
    there), with gradient accumulation and a mid-epoch `last.pt` every
    `train.checkpoint_every_steps` optimizer steps. Returns this process's train-loss sum, images
    seen and seconds for the whole epoch (a resumed part included)."""
    train, context, seed = run.train, run.context, run.seed
    started = time.perf_counter()
    generator = _epoch_generator(run, epoch)
    partial = run.state.partial or Partial()
    run.state.partial = None
    if run.resume_rng is not None:
        restore_rng(run.resume_rng, generator)
        run.resume_rng = None
    batches = epoch_batches(train, run.train_images, run.train_labels, seed, epoch, context)
    done = partial.batches
    loader = epoch_loader(run, batches[done:])
    set_train_mode(run.model)  # frozen BatchNorm layers keep their running statistics
    loss_sum, seen, steps = partial.loss_sum, partial.seen, partial.steps
    seen_before, seconds_before = seen, partial.seconds
    bar = progress(
        loader,
        desc=f"{run.model_name} epoch {epoch}/{train.epochs}",
        unit="batch",
        leave=False,
        total=len(batches) - done,
        disable_bar=not run.main,
    )
    for index, (pixels, targets) in enumerate(bar, start=done):
        group_start = index - index % train.grad_accum_steps
        group_size = min(train.grad_accum_steps, len(batches) - group_start)
        boundary = index + 1 == group_start + group_size
        loss = forward_backward(run, epoch, pixels, targets, generator, group_size, boundary)
        loss_sum += loss.item() * len(targets)
        seen += len(targets)
        if boundary:
            optimizer_step(run)
            steps += 1
            every = train.checkpoint_every_steps
            if every and steps % every == 0 and index + 1 < len(batches):
                _save_partial(
                    run,
                    generator,
                    Partial(
                        batches=index + 1,
                        steps=steps,
                        loss_sum=loss_sum,
                        seen=seen,
                        seconds=seconds_before + time.perf_counter() - started,
                    ),
                )
        elapsed = time.perf_counter() - started
        bar.set_postfix(
            loss=f"{loss_sum / max(seen, 1):.4f}",
            img_s=f"{(seen - seen_before) / max(elapsed, 1e-9):.0f}",
            refresh=False,
        )
    return loss_sum, seen, seconds_before + time.perf_counter() - started


def _epoch_generator(run: Training, epoch: int) -> torch.Generator:
    """Seed torch and return the augmentation generator for `epoch` on this rank: per (seed, epoch,
    rank), so a resumed or sharded run draws what an uninterrupted one would."""
    epoch_seed = run.seed * 1000 + epoch + 7919 * run.context.rank
    torch.manual_seed(epoch_seed)
    return torch.Generator(device=run.device).manual_seed(epoch_seed)


def epoch_loader(run: Training, batches: list[list[int]]) -> DataLoader:
    """A loader over this process's remaining `batches` of the epoch, in order."""
    train = run.train
    return make_loader(
        run.train_images,
        run.train_labels,
        train.batch_size,
        shuffle=False,
        seed=run.seed,
        num_workers=train.num_workers,
        pin_memory=run.device.type == "cuda",
        batches=batches,
    )


def forward_backward(
    run: Training,
    epoch: int,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    group_size: int,
    boundary: bool,
) -> torch.Tensor:
    """One batch: augment, forward, loss, and its share (1/`group_size`) of the accumulated
    gradient; under DDP the gradients are synchronised only at an accumulation `boundary`."""
    device, bundle, train = run.device, run.bundle, run.train
    inputs = prepare_batch(
        pixels.to(device, non_blocking=True),
        bundle.in_chans,
        bundle.mean,
        bundle.std,
        train.image_size,
        train.augment,
        generator,
    )
    targets = targets.to(device, non_blocking=True)
    no_sync = run.network.no_sync() if run.context.enabled and not boundary else contextlib.nullcontext()
    with no_sync:
        with run.autocast(device):
            logits = run.network(inputs)
        loss = run.loss_fn(logits.float(), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{run.model_name}: loss became {loss.item()} at epoch {epoch}; lower train.lr")
        (loss / group_size).backward()
    return loss


def optimizer_step(run: Training) -> None:
    """Clip the accumulated gradients (if `train.grad_clip`), step, clear them, advance the schedule."""
    if run.train.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], run.train.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.schedule.after_step()


def _last_checkpoint(run: Training, state: TrainingState, finished: bool, rng: list | None = None) -> dict:
    """The contents of `last.pt`: model, optimizer, schedule, (mid-epoch) every rank's random
    states, the state as plain data, and what a resume must match."""
    payload: dict[str, Any] = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
    }
    if rng is not None:
        payload["rng"] = rng
    payload.update(state=state.to_dict(), fingerprint=run.fingerprint, resume_key=run.key, finished=finished)
    return payload


def _save_partial(run: Training, generator: torch.Generator, partial: Partial) -> None:
    """A mid-epoch `last.pt` (rank 0) with every rank's random states, so a kill resumes here."""
    rng_states = gather_to_all(run.context, capture_rng(generator))
    if run.main:
        save_checkpoint(
            run.last_path,
            _last_checkpoint(run, dataclasses.replace(run.state, partial=partial), finished=False, rng=rng_states),
        )


def end_epoch(run: Training, epoch: int, loss_sum: float, seen: float, seconds: float) -> bool:
    """After `epoch`'s training: validation (rank 0), the schedule's epoch step, the history row,
    early stopping, metrics and log lines, best.pt on an improvement and last.pt. Returns whether
    training stops here (patience used up after `min_epochs`, or the last epoch)."""
    loss_sum, seen = sum_across(run.context, loss_sum, seen)
    validation = None
    if run.main:
        *validation, run.val_scores = _validate(
            run.bundle, run.val_images, run.val_labels, run.train, run.device, run.val_loss_fn
        )
    val_loss, val_auroc = from_main(run.context, validation)
    run.schedule.after_epoch(val_auroc)
    row = {
        "epoch": epoch,
        "train_loss": loss_sum / max(seen, 1),
        "val_loss": val_loss,
        "val_macro_auroc": val_auroc,
        "lr": run.optimizer.param_groups[0]["lr"],
        "images_per_second": seen / max(seconds, 1e-9),
    }
    improved = run.state.record_epoch(row, seconds)
    patience_used_up = run.state.bad_epochs >= run.train.patience and epoch >= run.train.min_epochs
    stop = patience_used_up or epoch == run.train.epochs
    if run.main:
        _log_epoch(run, row)
        if improved:
            run.best_weights = copy.deepcopy(run.model.state_dict())
            save_checkpoint(
                run.out_dir / "best.pt",
                {
                    "model": run.best_weights,
                    "model_name": run.model_name,
                    "epoch": epoch,
                    "val_macro_auroc": float(val_auroc),
                    "image_size": run.train.image_size,
                    "input": run.bundle.input_record(),
                    "selected": True,
                    # The validation-chosen thresholds travel with the weights (cxr14 predict).
                    "operating_points": operating_points(run.val_labels, _last_validation_scores(run)),
                },
            )
        save_checkpoint(run.last_path, _last_checkpoint(run, run.state, finished=stop))
    if stop and epoch < run.train.epochs and run.main:
        log.info("%s: early stop after epoch %d (best epoch %d)", run.model_name, epoch, run.state.best_epoch)
    return stop


def _log_epoch(run: Training, row: dict) -> None:
    """The epoch's metrics to MLflow and a log line; a warning when its AUROC is undefined."""
    tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    log.info(
        "%s epoch %d: train loss %.4f, val loss %.4f, val macro AUROC %.4f, %.0f img/s",
        run.model_name,
        row["epoch"],
        row["train_loss"],
        row["val_loss"],
        row["val_macro_auroc"],
        row["images_per_second"],
    )
    if not np.isfinite(row["val_macro_auroc"]):
        log.warning(
            "%s epoch %d: validation AUROC undefined (no class has both outcomes in val, or non-finite "
            "scores); not a candidate for best, counts as a bad epoch",
            run.model_name,
            row["epoch"],
        )


def _last_validation_scores(run: Training) -> np.ndarray:
    """The last epoch's validation scores (validated again when a resumed run had no epoch left)."""
    if run.val_scores is not None:
        return run.val_scores
    return _validate(run.bundle, run.val_images, run.val_labels, run.train, run.device, run.val_loss_fn)[2]


def _log_result(run: Training) -> None:
    """train@'s closing line: how long, and which epoch was kept with what validation AUROC."""
    state = run.state
    log.info(
        "%s: %d epochs in %.1f s; best epoch %d (validation macro AUROC %.4f) in %s",
        run.model_name,
        state.epoch,
        state.train_seconds,
        state.best_epoch,
        state.best_auroc,
        run.out_dir / "best.pt",
    )


def _finish(run: Training) -> None:
    """After the last epoch: the best weights restored and (rank 0) best.pt when no epoch was
    selected, history.csv, train.json and the final metrics and artifacts in MLflow."""
    state = run.state
    selected = state.best_epoch > 0
    if not selected:
        state.best_auroc = math.nan
    if not run.main:
        return
    if run.best_weights is not None:
        run.model.load_state_dict(run.best_weights)  # early stopping restores the best weights
    if selected:
        selection = "epoch with the highest validation macro AUROC"
    else:
        # Nothing to select on: best.pt (which evaluate needs) holds the last epoch's weights,
        # marked as not selected; train.json says so and best_epoch stays 0.
        selection = (
            f"none: validation macro AUROC undefined in all {state.epoch} epochs; "
            "best.pt holds the last epoch's weights"
        )
        log.warning("%s: %s", run.model_name, selection)
        save_checkpoint(
            run.out_dir / "best.pt",
            {
                "model": run.model.state_dict(),
                "model_name": run.model_name,
                "epoch": state.epoch,
                "val_macro_auroc": math.nan,
                "image_size": run.train.image_size,
                "input": run.bundle.input_record(),
                "selected": False,
                "operating_points": operating_points(run.val_labels, _last_validation_scores(run)),
            },
        )
    atomic_write_text(run.out_dir / "history.csv", pd.DataFrame(state.history).to_csv(index=False))
    n_params, n_trainable = _param_counts(run.model)
    summary = {
        "model": run.model_name,
        "params_total": n_params,
        "params_trainable": n_trainable,
        "weights": run.bundle.weights,
        "image_size": run.train.image_size,
        "world_size": run.context.world_size,
        "best_epoch": state.best_epoch,
        "best_val_macro_auroc": state.best_auroc if selected else None,
        "selection": selection,
        "epochs_run": state.epoch,
        "train_seconds": round(state.train_seconds, 2),
        "run_id": state.run_id,
    }
    atomic_write_json(run.out_dir / "train.json", summary)
    if selected:
        _log_result(run)
    tracking.log_metrics({"best_val_macro_auroc": state.best_auroc, "train_seconds": state.train_seconds})
    tracking.log_artifact(run.out_dir / "history.csv")
    tracking.log_artifact(run.out_dir / "best.pt", artifact_path="checkpoint")
