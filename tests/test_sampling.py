"""Findings-weighted sampling: the weight formula, determinism, draw frequencies, rank shares."""

from __future__ import annotations

import numpy as np
import pytest

from cxr14.labels import LABEL_INDEX, NO_FINDING, NUM_CLASSES
from cxr14.training.sampling import finding_weights, weighted_batches


def multi_hot(*names: str) -> np.ndarray:
    row = np.zeros(NUM_CLASSES, dtype=np.float32)
    for name in names:
        row[LABEL_INDEX[name]] = 1
    return row


def test_weight_is_number_of_findings_plus_a_small_constant():
    labels = np.stack(
        [
            multi_hot(NO_FINDING),
            multi_hot("Hernia"),
            multi_hot("Effusion", "Mass", "Pneumonia"),
            multi_hot(*[name for name in LABEL_INDEX if name != NO_FINDING]),
        ]
    )
    weights = finding_weights(labels)
    assert weights.dtype == np.float64
    np.testing.assert_allclose(weights, [0.04, 1.04, 3.04, 14.04])


def test_finding_weights_rejects_a_matrix_without_15_columns():
    with pytest.raises(ValueError, match=r"\[N, 15\].*\(4, 14\)"):
        finding_weights(np.zeros((4, 14)))


def test_same_seed_and_epoch_give_the_same_batches_and_a_new_epoch_does_not():
    weights = np.linspace(0.04, 5.0, 50)
    first = weighted_batches(weights, batch_size=8, seed=7, epoch=1)
    assert first == weighted_batches(weights, batch_size=8, seed=7, epoch=1)
    assert first != weighted_batches(weights, batch_size=8, seed=7, epoch=2)
    assert first != weighted_batches(weights, batch_size=8, seed=8, epoch=1)


def test_batch_sizes_and_default_num_samples():
    batches = weighted_batches(np.ones(10), batch_size=4, seed=0, epoch=0)
    assert [len(rows) for rows in batches] == [4, 4, 2]
    assert all(isinstance(row, int) and 0 <= row < 10 for rows in batches for row in rows)


def test_draw_frequency_follows_the_weights():
    weights = np.array([3.04, 1.04, 0.04])
    batches = weighted_batches(weights, batch_size=1000, seed=3, epoch=1, num_samples=20_000)
    counts = np.bincount(np.concatenate(batches), minlength=3)
    assert counts.sum() == 20_000
    assert counts[0] / counts[1] == pytest.approx(3.04 / 1.04, rel=0.05)
    assert counts[2] / counts.sum() == pytest.approx(0.04 / 4.12, abs=0.003)


def test_zero_weight_rows_are_never_drawn():
    weights = np.array([0.0, 1.0, 0.0, 2.0])
    drawn = np.concatenate(weighted_batches(weights, batch_size=64, seed=1, epoch=1, num_samples=500))
    assert set(drawn.tolist()) <= {1, 3}


@pytest.mark.parametrize("num_samples, world_size", [(23, 4), (24, 4), (3, 5), (10, 1)])
def test_rank_shares_partition_the_drawn_sequence(num_samples, world_size):
    weights = np.linspace(0.04, 3.0, 30)
    whole = [row for rows in weighted_batches(weights, num_samples, 11, 2, num_samples) for row in rows]
    assert len(whole) == num_samples
    shares = [
        weighted_batches(
            weights, batch_size=2, seed=11, epoch=2, num_samples=num_samples, rank=rank, world_size=world_size
        )
        for rank in range(world_size)
    ]
    assert len({len(batches) for batches in shares}) == 1  # every rank runs the same number of steps
    flat = [[row for rows in batches for row in rows] for batches in shares]
    per_rank = -(-num_samples // world_size)
    assert all(len(share) == per_rank for share in flat)
    # Interleaving the shares back gives the drawn sequence, wrapped round to fill the last slots.
    interleaved = [flat[position % world_size][position // world_size] for position in range(per_rank * world_size)]
    assert interleaved == [whole[position % num_samples] for position in range(per_rank * world_size)]


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"weights": np.zeros(5)}, "weights sum to 0"),
        ({"weights": np.array([1.0, -0.5])}, "weights must be finite and >= 0"),
        ({"weights": np.array([1.0, np.nan])}, "weights must be finite"),
        ({"weights": np.ones((2, 2))}, r"weights must be a non-empty 1-D array.*\(2, 2\)"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"rank": 2, "world_size": 2}, r"rank must be in \[0, 2\).*got 2"),
        ({"rank": -1}, "rank must be in .*got -1"),
        ({"world_size": 0}, "world_size must be >= 1, got 0"),
        ({"num_samples": 0}, "num_samples must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_rejected(arguments, message):
    call = {"weights": np.ones(5), "batch_size": 2, "seed": 0, "epoch": 0} | arguments
    with pytest.raises(ValueError, match=message):
        weighted_batches(**call)
