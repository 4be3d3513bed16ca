import numpy as np
import pytest

from cxr14.evaluation.metrics import max_f1_thresholds, per_class_auroc
from cxr14.evaluation.metrics import test_metrics as compute_test_metrics
from cxr14.labels import LABELS


def test_perfect_and_random_scores():
    rng = np.random.default_rng(0)
    targets = (rng.random((400, 15)) < 0.3).astype(np.float32)
    perfect = compute_test_metrics(targets, targets * 0.8 + 0.1, dict.fromkeys(LABELS, 0.5))
    assert perfect["macro_auroc"] == pytest.approx(1.0) and perfect["macro_f1"] == pytest.approx(1.0)
    noise = compute_test_metrics(targets, rng.random((400, 15)), dict.fromkeys(LABELS, 0.5))
    assert 0.4 < noise["macro_auroc"] < 0.6


def test_class_without_positives_is_left_out_not_counted():
    targets = np.zeros((10, 15), np.float32)
    targets[:5, 0] = 1
    auroc = per_class_auroc(targets, np.tile(np.linspace(0, 1, 10)[::-1, None], (1, 15)))
    assert auroc["Cardiomegaly"] == pytest.approx(1.0)
    assert auroc["Hernia"] is None
    assert compute_test_metrics(targets, np.zeros((10, 15)), dict.fromkeys(LABELS, 0.5))["classes_in_macro_auroc"] == 1


def test_max_f1_threshold_separates_classes():
    targets = np.zeros((6, 15), np.float32)
    targets[[3, 4, 5], 2] = 1
    scores = np.zeros((6, 15), np.float32)
    scores[:, 2] = [0.1, 0.2, 0.3, 0.6, 0.7, 0.9]
    thresholds = max_f1_thresholds(targets, scores)
    assert thresholds["Effusion"] == pytest.approx(0.6)
    assert thresholds["Hernia"] == 0.5
