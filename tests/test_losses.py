"""Training losses: agreement with torch's BCE, pos_weight counts, focal weighting, smoothing, stability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr14.labels import NUM_CLASSES
from cxr14.training.losses import LOSS_KINDS, make_loss

# Each class's positives among 5 rows; the last class has none.
TRAIN_LABELS = np.zeros((5, NUM_CLASSES), dtype=np.float32)
TRAIN_LABELS[:1, 0] = 1  # 1 positive, 4 negatives
TRAIN_LABELS[:2, 1] = 1  # 2 vs 3
TRAIN_LABELS[:, 2] = 1  # 5 vs 0
TRAIN_LABELS[:4, 3 : NUM_CLASSES - 1] = 1  # 4 vs 1


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, NUM_CLASSES, generator=generator) * 3
    targets = (torch.rand(4, NUM_CLASSES, generator=generator) < 0.3).float()
    return logits, targets


def test_bce_equals_torch():
    logits, targets = batch()
    loss = make_loss("bce")(logits, targets)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, targets))


def test_weighted_bce_pos_weight_is_the_negative_to_positive_ratio():
    loss_fn = make_loss("weighted_bce", train_labels=TRAIN_LABELS, max_pos_weight=50.0)
    expected = [4 / 1, 3 / 2, 0 / 5] + [1 / 4] * (NUM_CLASSES - 4) + [50.0]
    torch.testing.assert_close(loss_fn.pos_weight, torch.tensor(expected))
    logits, targets = batch()
    torch.testing.assert_close(
        loss_fn(logits, targets),
        F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor(expected)),
    )


def test_weighted_bce_cap_applies_to_every_class():
    loss_fn = make_loss("weighted_bce", train_labels=TRAIN_LABELS, max_pos_weight=2.0)
    assert loss_fn.pos_weight[0] == 2.0  # 4 capped
    assert loss_fn.pos_weight[1] == 1.5
    assert loss_fn.pos_weight[-1] == 2.0  # no positives


def test_weighted_bce_pos_weight_is_a_buffer_that_moves():
    loss_fn = make_loss("weighted_bce", train_labels=TRAIN_LABELS)
    assert "pos_weight" in dict(loss_fn.named_buffers())
    moved = loss_fn.to(torch.float64)  # no GPU needed: a dtype move goes through the same buffer path
    assert moved.pos_weight.dtype == torch.float64
    meta = make_loss("weighted_bce", train_labels=TRAIN_LABELS).to("meta")
    assert meta.pos_weight.device.type == "meta"


def test_focal_with_gamma_zero_and_half_alpha_is_half_bce():
    logits, targets = batch()
    loss = make_loss("focal", focal_alpha=0.5, focal_gamma=0.0)(logits, targets)
    torch.testing.assert_close(loss, 0.5 * F.binary_cross_entropy_with_logits(logits, targets))


def test_focal_uses_alpha_for_positives_and_one_minus_alpha_for_negatives():
    loss_fn = make_loss("focal", focal_alpha=0.25, focal_gamma=0.0)
    logits = torch.tensor([[0.3, -1.2]])
    targets = torch.tensor([[1.0, 0.0]])
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(loss_fn(logits, targets), (bce * torch.tensor([[0.25, 0.75]])).mean())


def test_focal_down_weights_easy_examples_more_than_hard_ones():
    focal = make_loss("focal", focal_alpha=0.5, focal_gamma=2.0)
    bce = make_loss("bce")
    target = torch.ones(1, 1)
    easy, hard = torch.tensor([[4.0]]), torch.tensor([[-2.0]])
    focal_ratio = focal(easy, target) / focal(hard, target)
    bce_ratio = bce(easy, target) / bce(hard, target)
    assert focal_ratio < bce_ratio / 10


def test_label_smoothing_puts_the_optimum_at_a_finite_logit():
    target = torch.ones(1, 1)
    for kind in LOSS_KINDS:
        plain = make_loss(kind, train_labels=TRAIN_LABELS[:, :1])
        smoothed = make_loss(kind, train_labels=TRAIN_LABELS[:, :1], label_smoothing=0.1)
        logit = torch.full((1, 1), 5.0, requires_grad=True)
        (gradient,) = torch.autograd.grad(plain(logit, target), logit)
        assert gradient.item() < 0, kind  # without smoothing a larger logit is always better
        (gradient,) = torch.autograd.grad(smoothed(logit, target), logit)
        assert gradient.item() > 0, kind  # with smoothing 5 overshoots logit(0.95) ~ 2.94


def test_label_smoothing_target_value():
    logits, targets = batch()
    loss = make_loss("bce", label_smoothing=0.2)(logits, targets)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, targets * 0.8 + 0.1))


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extreme_logits_give_finite_loss_and_gradient(kind, dtype):
    loss_fn = make_loss(kind, train_labels=TRAIN_LABELS, label_smoothing=0.05)
    logits = torch.tensor([[100.0, -100.0] * 7 + [100.0]] * 2, dtype=dtype, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0] * 7 + [0.0], [0.0, 1.0] * 7 + [1.0]])
    loss = loss_fn(logits, targets)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad.float()).all()


def test_unknown_kind_lists_the_valid_kinds():
    with pytest.raises(ValueError, match="'dice'.*bce, weighted_bce, focal"):
        make_loss("dice")


def test_weighted_bce_without_train_labels_is_rejected():
    with pytest.raises(ValueError, match="train_labels"):
        make_loss("weighted_bce")


@pytest.mark.parametrize("epsilon", [-0.1, 0.5, 0.7])
def test_bad_label_smoothing_is_rejected(epsilon):
    for kind in LOSS_KINDS:
        with pytest.raises(ValueError, match=f"label_smoothing.*{epsilon}"):
            make_loss(kind, train_labels=TRAIN_LABELS, label_smoothing=epsilon)


@pytest.mark.parametrize(
    "arguments, name",
    [
        ({"focal_alpha": 1.5}, "focal_alpha"),
        ({"focal_gamma": -1.0}, "focal_gamma"),
    ],
)
def test_bad_focal_parameters_are_rejected(arguments, name):
    with pytest.raises(ValueError, match=name):
        make_loss("focal", **arguments)


def test_bad_train_labels_and_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="train_labels"):
        make_loss("weighted_bce", train_labels=np.zeros(NUM_CLASSES))
    with pytest.raises(ValueError, match="max_pos_weight"):
        make_loss("weighted_bce", train_labels=TRAIN_LABELS, max_pos_weight=0.0)
    with pytest.raises(ValueError, match="pos_weight has 3 classes"):
        make_loss("weighted_bce", train_labels=TRAIN_LABELS[:, :3])(*batch())
    with pytest.raises(ValueError, match="shape"):
        make_loss("bce")(torch.zeros(2, NUM_CLASSES), torch.zeros(2, 3))
