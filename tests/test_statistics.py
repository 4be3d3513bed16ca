import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr14.evaluation.metrics import macro_auroc
from cxr14.evaluation.statistics import (
    bootstrap_intervals,
    calibration,
    delong_ci,
    delong_test,
    paired_bootstrap,
    seed_accuracy,
    seed_summary,
    sensitivity_thresholds,
    threshold_metrics,
    weighted_auroc,
    weighted_average_precision,
)
from cxr14.labels import LABELS


def synthetic(n: int, seed: int = 0, prevalence: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Positives ~ N(1, 1), negatives ~ N(0, 1), squashed by a logistic into (0, 1)."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 15)) < prevalence).astype(np.uint8)
    return targets, 1 / (1 + np.exp(-(targets + rng.normal(size=(n, 15)))))


def width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_weighted_auroc_and_ap_equal_sklearn_with_ties_and_weights():
    # weighted_auroc / weighted_average_precision run no stage: they expose, on one class, the
    # engine the bootstrap runs for every resample (_SortedClass), so it can be checked here.
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(10, 80))
        targets = rng.integers(0, 2, n)
        scores = rng.integers(0, 5, n) / 4  # few distinct values: many ties
        weights = rng.integers(0, 4, n)  # bootstrap multiplicities, zeros included
        if weights[targets == 1].sum() == 0 or weights[targets == 0].sum() == 0:
            continue
        assert weighted_auroc(targets, scores, weights) == pytest.approx(
            roc_auc_score(targets, scores, sample_weight=weights), abs=1e-12
        )
        assert weighted_average_precision(targets, scores, weights) == pytest.approx(
            average_precision_score(targets, scores, sample_weight=weights), abs=1e-12
        )


def test_weighted_auroc_undefined_is_none():
    targets, scores = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.4, 0.3])
    assert weighted_auroc(targets, scores, np.array([1, 0, 2, 0])) is None  # no positive weight
    assert weighted_auroc(np.zeros(4), scores, np.ones(4)) is None
    assert weighted_average_precision(np.zeros(4), scores) is None
    with pytest.raises(ValueError, match="non-negative"):
        weighted_auroc(targets, scores, np.array([1, -1, 1, 1]))


def test_interval_shrinks_with_more_images():
    small = bootstrap_intervals(*synthetic(200), resamples=300)
    large = bootstrap_intervals(*synthetic(2000, seed=1), resamples=300)
    assert width(large["macro_auroc"]) < 0.5 * width(small["macro_auroc"])
    assert width(large["auroc"]["Effusion"]) < 0.5 * width(small["auroc"]["Effusion"])


def test_patient_bootstrap_wider_than_image_bootstrap_on_correlated_images():
    rng = np.random.default_rng(5)
    n_patients, images_each = 80, 5
    patient_targets = (rng.random((n_patients, 15)) < 0.4).astype(np.uint8)
    patient_effect = patient_targets + rng.normal(size=(n_patients, 15))
    targets = np.repeat(patient_targets, images_each, axis=0)  # near duplicates: same label
    scores = np.repeat(patient_effect, images_each, axis=0) + rng.normal(scale=0.01, size=targets.shape)
    patient_ids = np.repeat([f"p{i:05d}" for i in range(n_patients)], images_each)
    by_patient = bootstrap_intervals(targets, scores, patient_ids, resamples=400)
    by_image = bootstrap_intervals(targets, scores, resamples=400)
    assert (by_patient["unit"], by_image["unit"]) == ("patient", "image")
    assert width(by_patient["macro_auroc"]) > 1.5 * width(by_image["macro_auroc"])
    assert width(by_patient["auroc"]["Mass"]) > 1.5 * width(by_image["auroc"]["Mass"])


def test_interval_contains_observed_level_and_seed():
    targets, scores = synthetic(300)
    targets[:, LABELS.index("Hernia")] = 0  # undefined class: None, left out of the macro
    result = bootstrap_intervals(targets, scores, resamples=400, seed=7)
    low, high = result["macro_auroc"]
    assert low < macro_auroc(targets, scores) < high
    assert result["micro_auroc"][0] < roc_auc_score(targets.ravel(), scores.ravel()) < result["micro_auroc"][1]
    assert result["auroc"]["Hernia"] is None and result["ap"]["Hernia"] is None
    assert result["auroc"]["Edema"][0] < roc_auc_score(targets[:, 9], scores[:, 9]) < result["auroc"]["Edema"][1]
    assert result["resamples"] == 400
    narrower = bootstrap_intervals(targets, scores, resamples=400, seed=7, level=0.5)
    assert width(narrower["macro_auroc"]) < width(result["macro_auroc"])
    assert bootstrap_intervals(targets, scores, resamples=400, seed=7) == result
    assert bootstrap_intervals(targets, scores, resamples=400, seed=8)["macro_auroc"] != result["macro_auroc"]


def test_rare_class_interval_uses_resamples_where_it_is_defined():
    targets, scores = synthetic(200)
    targets[:, 3] = 0
    targets[0, 3] = 1  # one positive: absent from ~37% of resamples
    result = bootstrap_intervals(targets, scores, resamples=300)
    assert 0 < result["auroc_resamples"]["Hernia"] < 300
    assert result["auroc_resamples"]["Effusion"] == 300


def test_paired_bootstrap_identical_and_clearly_better():
    targets, scores = synthetic(300)
    same = paired_bootstrap(targets, scores, scores.copy(), resamples=300)
    assert same["difference"] == 0 and same["p_value"] == 1.0 and same["ci"] == (0.0, 0.0)
    noise = np.random.default_rng(9).random(scores.shape)
    better = paired_bootstrap(targets, scores, noise, np.arange(300) // 2, resamples=300)
    assert better["difference"] == pytest.approx(macro_auroc(targets, scores) - macro_auroc(targets, noise))
    assert better["p_value"] < 0.05 and better["ci"][0] > 0


def test_paired_p_value_matches_the_interval_that_just_reaches_zero():
    # Percentile-bootstrap duality: 0 lies inside the level-(1 - p) interval's lower end.
    rng = np.random.default_rng(3)
    targets = (rng.random((150, 15)) < 0.3).astype(np.uint8)
    base = targets + rng.normal(size=targets.shape)
    scores_a = base + rng.normal(scale=0.5, size=targets.shape)
    scores_b = base + rng.normal(scale=0.8, size=targets.shape)
    p_value = paired_bootstrap(targets, scores_a, scores_b, resamples=400)["p_value"]
    assert 0.02 < p_value < 0.5
    wider = paired_bootstrap(targets, scores_a, scores_b, resamples=400, level=1 - 0.8 * p_value)["ci"]
    narrower = paired_bootstrap(targets, scores_a, scores_b, resamples=400, level=1 - 1.2 * p_value)["ci"]
    assert wider[0] < 0 < narrower[0]


def test_delong_identical_different_and_sklearn():
    # DeLong's test and interval run in no stage (the report uses the patient bootstrap); they
    # are offered as a library function (README, "Evaluation") for image-independent data.
    targets, scores = synthetic(400)
    y, a = targets[:, 0], scores[:, 0]
    same = delong_test(y, a, a.copy())
    assert same["z"] == 0 and same["p_value"] == 1.0 and same["difference"] == 0
    noise = np.random.default_rng(2).random(len(y))
    different = delong_test(y, a, noise)
    assert different["auroc_a"] == pytest.approx(roc_auc_score(y, a))
    assert different["auroc_b"] == pytest.approx(roc_auc_score(y, noise))
    assert different["z"] > 0 and different["p_value"] < 0.01
    tied = np.round(a, 1)  # ties handled like sklearn
    assert delong_test(y, tied, a)["auroc_a"] == pytest.approx(roc_auc_score(y, tied))


def test_delong_ci_contains_auroc_and_narrows_with_n():
    small_targets, small_scores = synthetic(200)
    large_targets, large_scores = synthetic(2000, seed=1)
    small = delong_ci(small_targets[:, 0], small_scores[:, 0])
    large = delong_ci(large_targets[:, 0], large_scores[:, 0])
    assert small[0] < roc_auc_score(small_targets[:, 0], small_scores[:, 0]) < small[1]
    assert width(large) < 0.5 * width(small)
    assert width(delong_ci(small_targets[:, 0], small_scores[:, 0], level=0.5)) < width(small)
    with pytest.raises(ValueError, match="2 positives"):
        delong_ci(np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3]))


def test_threshold_metrics_hand_example():
    targets = np.zeros((6, 15), np.uint8)
    scores = np.zeros((6, 15))
    targets[:, 2] = [1, 1, 1, 0, 0, 0]
    scores[:, 2] = [0.9, 0.6, 0.2, 0.7, 0.1, 0.3]
    out = threshold_metrics(targets, scores, dict.fromkeys(LABELS, 0.5))
    # Predicted positive: 0.9, 0.6 (true) and 0.7 (false) -> tp 2, fp 1, fn 1, tn 2.
    assert out["Effusion"] == pytest.approx({"sensitivity": 2 / 3, "specificity": 2 / 3, "ppv": 2 / 3, "f1": 2 / 3})
    # No positives and nothing predicted: only specificity is defined.
    assert out["Hernia"] == {"sensitivity": None, "specificity": 1.0, "ppv": None, "f1": None}
    with pytest.raises(ValueError, match="Hernia"):
        threshold_metrics(targets, scores, {"Effusion": 0.5})


def test_sensitivity_thresholds_reach_target_on_validation():
    targets, scores = synthetic(500)
    targets[:, 3] = 0
    thresholds = sensitivity_thresholds(targets, scores, target=0.9)
    assert thresholds["Hernia"] == 0.5
    metrics = threshold_metrics(targets, scores, thresholds)
    for i, name in enumerate(LABELS):
        if name == "Hernia":
            continue
        assert metrics[name]["sensitivity"] >= 0.9
        # Highest such threshold: any higher score drops below the target.
        higher = scores[:, i][scores[:, i] > thresholds[name]].min()
        assert np.mean(scores[targets[:, i] == 1, i] >= higher) < 0.9
    exact = np.zeros((10, 15), np.uint8)
    exact[:, 0] = 1
    ramp = np.tile(np.linspace(0.05, 0.95, 10)[:, None], (1, 15))
    assert sensitivity_thresholds(exact, ramp, target=0.7)["Cardiomegaly"] == pytest.approx(0.35)  # 7 of 10


def test_seed_accuracy_hand_example():
    targets = np.zeros((2, 15), np.uint8)
    targets[0, 0] = 1
    scores = np.zeros((2, 15))
    scores[1, 1] = 0.5  # false positive at exactly the threshold
    assert seed_accuracy(targets, scores) == pytest.approx(28 / 30)  # missed 1 positive + 1 false positive
    assert seed_accuracy(targets, scores, threshold=0.6) == pytest.approx(29 / 30)


def test_calibration_ece_small_when_calibrated_larger_when_not():
    rng = np.random.default_rng(4)
    scores = rng.random((20000, 15))
    calibrated = calibration((rng.random(scores.shape) < scores).astype(np.uint8), scores)
    miscalibrated = calibration((rng.random(scores.shape) < scores**2).astype(np.uint8), scores)
    assert calibrated["ece"] < 0.03
    assert miscalibrated["ece"] > 0.1
    assert sum(row["count"] for row in calibrated["bins"]) == scores.size and len(calibrated["bins"]) == 10
    top = calibrated["bins"][-1]
    assert (top["bin_low"], top["bin_high"]) == (0.9, 1.0) and top["observed_rate"] == pytest.approx(0.95, abs=0.01)
    empty = calibration(np.zeros((1, 15), np.uint8), np.full((1, 15), 0.05), bins=4)
    assert empty["bins"][1]["count"] == 0 and empty["bins"][1]["mean_score"] is None
    assert empty["ece"] == pytest.approx(0.05)
    # Over- and under-confidence must not cancel: |0.05 - 1| and |0.95 - 0| both count.
    opposite = np.zeros((2, 15), np.uint8)
    opposite[0] = 1
    assert calibration(opposite, np.array([[0.05] * 15, [0.95] * 15]))["ece"] == pytest.approx(0.95)


def test_bad_inputs_name_the_problem():
    targets, scores = synthetic(20)
    with pytest.raises(ValueError, match="shape"):
        bootstrap_intervals(targets[:, :14], scores[:, :14])
    with pytest.raises(ValueError, match="patient_ids"):
        bootstrap_intervals(targets, scores, ["a"] * 19)
    with pytest.raises(ValueError, match="level"):
        bootstrap_intervals(targets, scores, level=95)


# ------------------------------------------------------------------ several training seeds


def _seeded_case(n_patients: int = 60, seed: int = 3):
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), 2)
    targets = (rng.random((len(patients), 15)) < 0.3).astype(int)
    good = targets + rng.normal(0, 0.6, targets.shape)
    poor = targets + rng.normal(0, 2.0, targets.shape)
    return targets, good, poor, patients


def test_one_seed_summary_is_the_ordinary_interval():
    targets, good, _, patients = _seeded_case()
    summary = seed_summary(targets, good[None], patients, resamples=200, seed=5)
    ordinary = bootstrap_intervals(targets, good, patients, resamples=200, seed=5)
    assert summary["ci"] == pytest.approx(ordinary["macro_auroc"], abs=1e-12)
    assert summary["sd"] is None and summary["mean"] == summary["min"] == summary["max"]


def test_seed_summary_spread_and_mean():
    targets, good, poor, patients = _seeded_case()
    summary = seed_summary(targets, np.stack([good, poor]), patients, resamples=200, seed=5)
    alone = [seed_summary(targets, scores[None], patients, resamples=200, seed=5)["mean"] for scores in (good, poor)]
    assert summary["macro_auroc"] == pytest.approx(alone)
    assert summary["mean"] == pytest.approx(np.mean(alone))
    assert summary["sd"] == pytest.approx(np.std(alone, ddof=1))
    assert summary["min"] < summary["mean"] < summary["max"]
    assert summary["ci"][0] < summary["mean"] < summary["ci"][1]


def test_paired_bootstrap_over_seeds_compares_seed_means():
    targets, good, poor, patients = _seeded_case()
    single = paired_bootstrap(targets, good, poor, patients, resamples=200, seed=1)
    stacked = paired_bootstrap(targets, good[None], poor[None], patients, resamples=200, seed=1)
    assert stacked == single  # a one-seed stack is the plain comparison
    # A: seeds good and poor; B: poor twice. The difference is half of good - poor.
    both = paired_bootstrap(targets, np.stack([good, poor]), np.stack([poor, poor]), patients, resamples=200, seed=1)
    assert both["difference"] == pytest.approx(single["difference"] / 2)
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(targets, np.stack([good, good])[:, :-2], poor, patients)  # seeds scored other images
