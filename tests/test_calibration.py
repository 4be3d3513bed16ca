import json

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import log_loss, roc_auc_score

from cxr14.evaluation.calibration import (
    apply_temperatures,
    brier_scores,
    calibrate,
    fit_temperature,
    per_finding_ece,
)
from cxr14.labels import LABELS


def miscalibrated(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets drawn from sigmoid(z) (the truth), scores sigmoid(z / temperature) as float32:
    temperature < 1 is over-confident (scores too extreme), > 1 under-confident; the correct
    fit is T = that temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(-1.0, 2.0, size=(n, len(LABELS)))
    targets = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.uint8)
    return targets, (1 / (1 + np.exp(-logits / temperature))).astype(np.float32)


def test_temperature_scaling_lowers_validation_nll_and_recovers_the_temperature():
    val_targets, val_scores = miscalibrated(4000, 1 / 3, seed=1)  # logits 3x too large: T = 3
    test_targets, test_scores = miscalibrated(4000, 1 / 3, seed=2)
    _, summary = calibrate(val_targets, val_scores, test_targets, test_scores, bins=10)
    before, after = summary["before"], summary["after"]
    for name in LABELS:
        assert after["val_nll"][name] < before["val_nll"][name] - 0.05, name
        assert summary["temperatures"][name] == pytest.approx(3.0, rel=0.15), name
    assert summary["unfitted"] == {}
    # and it transfers to held-out data: NLL, ECE and Brier all improve on the test split
    assert after["macro_test_nll"] < before["macro_test_nll"] - 0.05
    assert after["macro_ece"] < 0.5 * before["macro_ece"]
    assert after["pooled_ece"] < 0.5 * before["pooled_ece"]
    assert after["macro_brier"] < before["macro_brier"]


def test_under_confident_scores_get_a_temperature_below_one():
    targets, scores = miscalibrated(4000, 2.0, seed=3)
    temperature, reason = fit_temperature(targets[:, 0], scores[:, 0])
    assert reason is None and temperature == pytest.approx(0.5, rel=0.15)


def test_well_calibrated_scores_keep_a_temperature_near_one():
    targets, scores = miscalibrated(6000, 1.0, seed=4)
    temperatures = [fit_temperature(targets[:, i], scores[:, i])[0] for i in range(len(LABELS))]
    assert np.allclose(temperatures, 1.0, atol=0.12)


def test_temperature_scaling_never_changes_auroc_or_ranking():
    val_targets, val_scores = miscalibrated(1500, 0.3, seed=5)
    test_targets, test_scores = miscalibrated(1500, 0.3, seed=6)
    # ties, exact 0 and 1 (float32 sigmoid saturates) and scores inside the NLL clip
    test_scores[:50] = np.round(test_scores[:50], 1)
    test_scores[50:60], test_scores[60:70] = 0.0, 1.0
    test_scores[70:80] = np.float32(1e-9) * np.arange(1, 11, dtype=np.float32)[:, None]
    calibrated, summary = calibrate(val_targets, val_scores, test_targets, test_scores)
    assert all(value != 1.0 for value in summary["temperatures"].values())  # the map did change
    assert not np.allclose(calibrated, test_scores, atol=1e-3)
    for column, name in enumerate(LABELS):
        assert np.array_equal(rankdata(calibrated[:, column]), rankdata(test_scores[:, column])), name
        assert roc_auc_score(test_targets[:, column], calibrated[:, column]) == roc_auc_score(
            test_targets[:, column], test_scores[:, column]
        ), name
    assert all(summary["rank_preserved"].values())


def test_single_class_finding_in_validation_keeps_temperature_one():
    val_targets, val_scores = miscalibrated(800, 1 / 3, seed=7)
    test_targets, test_scores = miscalibrated(800, 1 / 3, seed=8)
    hernia, edema = LABELS.index("Hernia"), LABELS.index("Edema")
    val_targets[:, hernia] = 0  # no validation positives
    val_targets[:, edema] = 1  # no validation negatives
    calibrated, summary = calibrate(val_targets, val_scores, test_targets, test_scores)
    assert summary["temperatures"]["Hernia"] == summary["temperatures"]["Edema"] == 1.0
    assert summary["unfitted"] == {
        "Hernia": "validation has only negatives",
        "Edema": "validation has only positives",
    }
    assert summary["temperatures"]["Mass"] > 2
    np.testing.assert_allclose(calibrated[:, hernia], test_scores[:, hernia], rtol=1e-6, atol=1e-12)
    assert fit_temperature(np.zeros(0), np.zeros(0)) == (1.0, "no validation images")


def test_temperatures_are_fitted_on_validation_only():
    val_targets, val_scores = miscalibrated(1000, 1 / 3, seed=9)
    first = calibrate(val_targets, val_scores, *miscalibrated(300, 1 / 3, seed=10))[1]
    second = calibrate(val_targets, val_scores, *miscalibrated(500, 2.0, seed=11))[1]
    assert first["temperatures"] == second["temperatures"]
    assert first["before"]["val_nll"] == second["before"]["val_nll"]


def hand_example() -> tuple[np.ndarray, np.ndarray]:
    """4 images: Atelectasis scores 0.1, 0.4, 0.8, 0.9 for targets 0, 1, 1, 0; every other
    finding scores 0.5 with targets 0, 1, 0, 1."""
    targets = np.tile(np.array([[0], [1], [0], [1]], dtype=np.uint8), (1, len(LABELS)))
    scores = np.full((4, len(LABELS)), 0.5)
    column = LABELS.index("Atelectasis")
    targets[:, column] = [0, 1, 1, 0]
    scores[:, column] = [0.1, 0.4, 0.8, 0.9]
    return targets, scores


def test_brier_and_ece_on_a_hand_checked_example():
    targets, scores = hand_example()
    brier = brier_scores(targets, scores)
    # (0.1^2 + 0.6^2 + 0.2^2 + 0.9^2) / 4 = (0.01 + 0.36 + 0.04 + 0.81) / 4
    assert brier["Atelectasis"] == pytest.approx(0.305)
    assert brier["Mass"] == pytest.approx(0.25)
    ece = per_finding_ece(targets, scores, bins=2)
    # bin [0, 0.5): mean 0.25, rate 0.5, half the images; bin [0.5, 1]: mean 0.85, rate 0.5
    assert ece["Atelectasis"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.35)
    assert ece["Mass"] == pytest.approx(0.0)
    _, summary = calibrate(targets, scores, targets, scores, bins=2)
    before = summary["before"]
    assert before["macro_brier"] == pytest.approx((0.305 + 14 * 0.25) / 15)
    assert before["macro_ece"] == pytest.approx(0.3 / 15)
    # pooled over all 60 entries: bin [0, 0.5) holds 0.1 and 0.4 (one positive) ...
    assert before["pooled_ece"] == pytest.approx((2 * 0.25 + 2 * 0.35) / 60)
    assert before["val_nll"]["Atelectasis"] == pytest.approx(log_loss([0, 1, 1, 0], [0.1, 0.4, 0.8, 0.9]))
    assert before["val_nll"]["Mass"] == pytest.approx(np.log(2))


def test_summary_is_json_ready_with_the_documented_layout():
    targets, scores = miscalibrated(300, 0.5, seed=12)
    calibrated, summary = calibrate(targets, scores, targets, scores, bins=5)
    json.dumps(summary, allow_nan=False)
    assert calibrated.shape == scores.shape and calibrated.dtype == np.float64
    assert set(summary) == {
        "method",
        "clip",
        "bins",
        "val_images",
        "test_images",
        "temperatures",
        "unfitted",
        "rank_preserved",
        "before",
        "after",
    }
    assert (
        set(summary["before"])
        == set(summary["after"])
        == {
            "brier",
            "macro_brier",
            "ece",
            "macro_ece",
            "pooled_ece",
            "reliability",
            "val_nll",
            "macro_val_nll",
            "test_nll",
            "macro_test_nll",
        }
    )
    assert list(summary["temperatures"]) == list(LABELS) and len(summary["after"]["reliability"]["bins"]) == 5
    # "after" scores are what apply_temperatures gives
    np.testing.assert_array_equal(calibrated, apply_temperatures(scores, summary["temperatures"]))


def test_bad_scores_are_rejected():
    targets, scores = miscalibrated(20, 1.0, seed=13)
    with pytest.raises(ValueError, match="probabilities"):
        calibrate(targets, scores * 2, targets, scores)
    with pytest.raises(ValueError, match="shape"):
        calibrate(targets, scores[:, :3], targets, scores)


def test_reliability_figure_before_and_after_is_reproducible(tmp_path):
    from cxr14.reporting.figures import reliability_figure, save_figure

    targets, scores = miscalibrated(500, 1 / 3, seed=14)
    _, summary = calibrate(targets, scores, targets, scores)
    before, after = summary["before"]["reliability"], summary["after"]["reliability"]
    save_figure(reliability_figure(before, "cnn", after), tmp_path / "a.png")
    save_figure(reliability_figure(before, "cnn", after), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
