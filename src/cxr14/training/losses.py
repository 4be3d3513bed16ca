"""Multi-label training losses over [B, 15] logits: plain BCE, class-weighted BCE and focal loss.

    loss_fn = make_loss(train.loss, train_labels=train_labels, focal_alpha=train.focal_alpha,
                        focal_gamma=train.focal_gamma, label_smoothing=train.label_smoothing).to(device)
    loss = loss_fn(logits, targets)      # logits [B, 15] any float dtype, targets {0, 1} [B, 15]

Every loss is an `nn.Module` that reduces to the mean over all B x 15 elements and computes in
float32, so a bfloat16/float16 forward pass does not lose the small per-element terms.
Label smoothing is binary and the same for every kind: a target t becomes t(1 - e) + e/2, so
a positive pulls its probability towards 1 - e/2 instead of towards 1 (the NIH labels were
mined from reports and are only about 90 % right, so a finite logit is a better optimum).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOSS_KINDS: tuple[str, ...] = ("bce", "weighted_bce", "focal")


class BinaryCrossEntropy(nn.Module):
    """Mean BCE-with-logits on smoothed targets, optionally with a per-class positive weight.

    Args:
        label_smoothing: e in [0, 0.5); targets become t(1 - e) + e/2.
        pos_weight: [C] multiplier of the positive term per class, or None for plain BCE.
            Kept as a buffer so `.to(device)` moves it with the module.
    """

    pos_weight: torch.Tensor | None  # a buffer (register_buffer), typed for mypy

    def __init__(self, label_smoothing: float = 0.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.label_smoothing = _check_smoothing(label_smoothing)
        self.register_buffer("pos_weight", None if pos_weight is None else pos_weight.float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _prepare(logits, targets, self.label_smoothing)
        if self.pos_weight is not None and self.pos_weight.shape[0] != logits.shape[-1]:
            raise ValueError(
                f"pos_weight has {self.pos_weight.shape[0]} classes but the logits have {logits.shape[-1]}; "
                "build the loss from a train_labels matrix with one column per output"
            )
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)

    def extra_repr(self) -> str:
        weighted = "" if self.pos_weight is None else f", pos_weight=[{self.pos_weight.shape[0]}]"
        return f"label_smoothing={self.label_smoothing}{weighted}"


class FocalLoss(nn.Module):
    """Sigmoid focal loss, mean over elements: alpha_t (1 - p_t)^gamma BCE.

    Which alpha: this is the RetinaNet form (Lin et al. 2017), where alpha_t = alpha on
    positives and 1 - alpha on negatives. The design note writes alpha times every element;
    a constant factor only rescales the loss (the same as scaling the learning rate), so it
    cannot rebalance anything, whereas alpha_t trades positives against negatives. alpha = 0.5
    gives the design note's loss up to that constant factor.
    With the RetinaNet default alpha = 0.25 the positives get the smaller factor, because
    (1 - p_t)^gamma already silences the many easy negatives.

    With smoothed (soft) targets alpha_t = alpha t + (1 - alpha)(1 - t), which equals the rule
    above on hard targets, and p_t = exp(-BCE) is the likelihood the model gives the soft target.

    Args:
        alpha: weight of the positive term, in [0, 1].
        gamma: focusing exponent >= 0; 0 turns this into alpha-weighted BCE.
        label_smoothing: e in [0, 0.5); targets become t(1 - e) + e/2.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal_alpha must be in [0, 1], got {alpha}")
        if not gamma >= 0.0:  # also rejects NaN
            raise ValueError(f"focal_gamma must be >= 0, got {gamma}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.label_smoothing = _check_smoothing(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _prepare(logits, targets, self.label_smoothing)
        # From logits, not from sigmoid probabilities: log(sigmoid(100)) would underflow to log(0).
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_t = torch.exp(-bce)
        # clamp: exp(-bce) can round to a hair above 1 and a fractional gamma would give NaN.
        modulating = (1.0 - p_t).clamp_min(0.0) ** self.gamma
        alpha_t = self.alpha * targets + (1.0 - self.alpha) * (1.0 - targets)
        return (alpha_t * modulating * bce).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, label_smoothing={self.label_smoothing}"


def positive_weights(train_labels: np.ndarray, max_pos_weight: float = 100.0) -> torch.Tensor:
    """Per-class negatives / positives of the train split, capped at `max_pos_weight`.

    A class with no positive in the split gets `max_pos_weight` (its ratio is infinite); the
    cap also bounds rare classes such as Hernia (~0.2 % positive, ratio ~500), whose uncapped
    weight would make a handful of images dominate every gradient. A class with no negative
    gets 0: it has nothing to discriminate.

    Args:
        train_labels: [N, C] multi-hot matrix of the TRAIN split (values 0/1; > 0.5 counts as positive).
        max_pos_weight: upper bound of every weight, > 0.

    Returns:
        float32 [C] tensor.

    Raises:
        ValueError: the matrix is not 2-D with at least one row, or `max_pos_weight` <= 0.
    """
    labels = np.asarray(train_labels)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ValueError(f"train_labels must be an [N, C] multi-hot matrix with N >= 1, got shape {labels.shape}")
    if not max_pos_weight > 0:
        raise ValueError(f"max_pos_weight must be > 0, got {max_pos_weight}")
    positives = (labels > 0.5).sum(axis=0).astype(np.float64)
    negatives = labels.shape[0] - positives
    ratio = np.divide(negatives, positives, out=np.full_like(positives, np.inf), where=positives > 0)
    return torch.from_numpy(np.minimum(ratio, max_pos_weight)).float()


def make_loss(
    kind: str,
    *,
    train_labels: np.ndarray | None = None,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    label_smoothing: float = 0.0,
    max_pos_weight: float = 100.0,
) -> nn.Module:
    """The training loss named by `train.loss`.

    Args:
        kind: one of LOSS_KINDS: "bce", "weighted_bce" (pos_weight = negatives / positives per
            class) or "focal".
        train_labels: [N, C] multi-hot labels of the train split; required by "weighted_bce",
            ignored otherwise. Never pass validation or test labels: the weights would leak them.
        focal_alpha: positive-term weight of the focal loss (see FocalLoss for the convention).
        focal_gamma: focusing exponent of the focal loss.
        label_smoothing: binary smoothing e in [0, 0.5), applied to every kind.
        max_pos_weight: cap of the weighted-BCE positive weights, and the weight of a class
            without positives.

    Raises:
        ValueError: unknown `kind` (the message lists LOSS_KINDS), "weighted_bce" without
            `train_labels`, or a parameter out of range (the message names it).
    """
    _check_smoothing(label_smoothing)
    if kind == "bce":
        return BinaryCrossEntropy(label_smoothing)
    if kind == "weighted_bce":
        if train_labels is None:
            raise ValueError(
                "loss 'weighted_bce' needs train_labels (the [N, C] train-split label matrix) "
                "to compute pos_weight = negatives / positives"
            )
        return BinaryCrossEntropy(label_smoothing, positive_weights(train_labels, max_pos_weight))
    if kind == "focal":
        return FocalLoss(focal_alpha, focal_gamma, label_smoothing)
    raise ValueError(f"unknown loss kind {kind!r}; valid kinds: {', '.join(LOSS_KINDS)}")


def _check_smoothing(label_smoothing: float) -> float:
    # 0.5 would map both classes to the target 1/2 and erase the labels.
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    return float(label_smoothing)


def _prepare(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits and smoothed float32 targets of the same shape."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != targets shape {tuple(targets.shape)}")
    logits, targets = logits.float(), targets.float()
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return logits, targets
