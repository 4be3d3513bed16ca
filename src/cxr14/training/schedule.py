"""Optimizer and learning-rate schedule from `train.*`, resumable mid-epoch.

    optimizer = make_optimizer(model, train)
    schedule = LearningRateSchedule(optimizer, train, steps_per_epoch)
    ... optimizer.step(); schedule.after_step()      # every optimizer step
    schedule.after_epoch(val_macro_auroc)            # once per epoch (reduce-on-plateau)

One object computes lr = base lr x warm-up x schedule x plateau scale, so warm-up, a per-step
schedule and CheXNet's divide-by-ten-on-plateau compose without fighting over the
optimizer's lr, and its whole state is a small dict saved in every checkpoint.
"""

from __future__ import annotations

import math

import torch

from cxr14.config import ConfigError, TrainConfig

WARMUP_START = 0.01  # warm-up ramps the lr from 1 % of its value
PLATEAU_FACTOR = 0.1  # CheXNet: divide by 10 when validation stops improving
PLATEAU_MIN_GAIN = 1e-4


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """`train.optimizer` over the trainable parameters only (a frozen backbone is left out)."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameters (check train.freeze_backbone)")
    fused = fused_update(trainable)
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            trainable, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, fused=fused
        )
    if train.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=train.lr, weight_decay=train.weight_decay, fused=fused)
    return torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay, fused=fused)


FUSED_DEVICES = frozenset({"cpu", "cuda"})


def fused_update(parameters: list[torch.nn.Parameter]) -> bool | None:
    """True (one fused kernel updates every parameter) where torch has it for all of them:
    floating-point parameters on the CPU or CUDA; else None (torch's own choice).

    On the CPU torch's default is a Python loop of small ops per parameter tensor: on a 2-core
    CPU it took 10-16 % of a demo step (AdamW on resnet18 at 64 px: 23 ms of a ~215 ms step,
    fused 7-9 ms); on CUDA fused is the fastest of torch's implementations too. The update computes the
    same formula, in another order of floating-point operations.
    """
    on_supported = all(p.device.type in FUSED_DEVICES and p.dtype.is_floating_point for p in parameters)
    return True if on_supported else None


class LearningRateSchedule:
    """Sets every param group's lr from the optimizer-step count and the validation history."""

    def __init__(self, optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int) -> None:
        self.optimizer = optimizer
        self.kind = train.scheduler
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.total_steps = self.steps_per_epoch * train.epochs
        self.warmup_steps = round(train.warmup_epochs * self.steps_per_epoch)
        self.step_every = train.step_epochs * self.steps_per_epoch
        self.step_gamma = train.step_gamma
        self.plateau_patience = train.plateau_patience
        self.step = 0
        self.plateau_scale = 1.0
        self.best_metric = -math.inf
        self.stalled_epochs = 0
        self._apply()

    def factor(self) -> float:
        warmup = 1.0
        if self.step < self.warmup_steps:
            warmup = WARMUP_START + (1.0 - WARMUP_START) * self.step / self.warmup_steps
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = min(max(self.step - self.warmup_steps, 0), span) / span
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.kind == "step":
            shape = self.step_gamma ** (self.step // self.step_every)
        else:  # none, plateau
            shape = 1.0
        return warmup * shape * self.plateau_scale

    def _apply(self) -> None:
        factor = self.factor()
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor

    def after_step(self) -> None:
        self.step += 1
        self._apply()

    def after_epoch(self, metric: float) -> None:
        """Reduce-on-plateau bookkeeping; a NaN metric (undefined AUROC) counts as no progress."""
        if self.kind != "plateau":
            return
        if metric == metric and metric > self.best_metric + PLATEAU_MIN_GAIN:
            self.best_metric, self.stalled_epochs = metric, 0
        else:
            self.stalled_epochs += 1
            if self.stalled_epochs >= self.plateau_patience:
                self.plateau_scale *= PLATEAU_FACTOR
                self.stalled_epochs = 0
        self._apply()

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "plateau_scale": self.plateau_scale,
            "best_metric": self.best_metric,
            "stalled_epochs": self.stalled_epochs,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.plateau_scale = state["plateau_scale"]
        self.best_metric = state["best_metric"]
        self.stalled_epochs = state["stalled_epochs"]
        self._apply()
