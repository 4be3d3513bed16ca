"""Learning-rate schedules, warm-up, plateau and gradient accumulation."""

import math

import pytest
import torch

from cxr14.config import config_from_dict
from cxr14.training.schedule import LearningRateSchedule
from tests.conftest import tiny_params


def _schedule(steps_per_epoch: int = 10, **train) -> tuple[torch.optim.Optimizer, LearningRateSchedule]:
    cfg = config_from_dict(tiny_params(**{f"train.{key}": value for key, value in train.items()}))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    return optimizer, LearningRateSchedule(optimizer, cfg.train, steps_per_epoch)


def _lrs(optimizer, schedule, steps: int) -> list[float]:
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        schedule.after_step()
    return values


def test_cosine_matches_the_closed_form_and_ends_at_zero():
    optimizer, schedule = _schedule(scheduler="cosine", epochs=2, lr=0.1)
    lrs = _lrs(optimizer, schedule, 21)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 5 / 20)))
    assert lrs[20] == pytest.approx(0.0, abs=1e-12)


def test_warmup_ramps_linearly_then_hands_over_to_the_schedule():
    optimizer, schedule = _schedule(scheduler="none", warmup_epochs=0.5, epochs=2, lr=0.1)
    lrs = _lrs(optimizer, schedule, 8)
    assert lrs[0] == pytest.approx(0.001)  # 1 % of lr
    assert lrs[:5] == sorted(lrs[:5]) and lrs[4] < 0.1
    assert lrs[5:] == pytest.approx([0.1] * 3)


def test_step_schedule_multiplies_by_gamma_every_step_epochs():
    optimizer, schedule = _schedule(scheduler="step", step_epochs=1, step_gamma=0.5, epochs=3, lr=0.1)
    lrs = _lrs(optimizer, schedule, 30)
    assert (lrs[9], lrs[10], lrs[20]) == pytest.approx((0.1, 0.05, 0.025))


def test_plateau_divides_by_ten_when_validation_stalls():
    optimizer, schedule = _schedule(scheduler="plateau", plateau_patience=2, lr=0.1)
    for auroc, expected in [(0.6, 0.1), (0.7, 0.1), (0.7, 0.1), (0.69, 0.01), (0.8, 0.01), (float("nan"), 0.01)]:
        schedule.after_epoch(auroc)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_schedule_state_round_trips_through_a_checkpoint():
    optimizer, schedule = _schedule(scheduler="plateau", warmup_epochs=1, lr=0.1)
    _lrs(optimizer, schedule, 7)
    schedule.after_epoch(0.5)
    schedule.after_epoch(0.4)
    fresh_optimizer, fresh = _schedule(scheduler="plateau", warmup_epochs=1, lr=0.1)
    fresh.load_state_dict(schedule.state_dict())
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    assert _lrs(fresh_optimizer, fresh, 5) == pytest.approx(_lrs(optimizer, schedule, 5))


def test_bad_schedule_values_name_the_key():
    from cxr14.config import ConfigError

    for key, value in [("grad_accum_steps", 0), ("label_smoothing", 0.5), ("warmup_epochs", -1.0), ("step_gamma", 0.0)]:
        with pytest.raises(ConfigError, match=f"train.{key}"):
            config_from_dict(tiny_params(**{f"train.{key}": value}))
