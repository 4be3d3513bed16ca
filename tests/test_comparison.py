"""The report's paired comparisons and the CheXNet reference."""

import numpy as np
import pandas as pd
import pytest

from cxr14.labels import LABELS
from cxr14.reporting.comparison import CHEXNET_AUROC, ComparisonError, chexnet_lines, paired_comparisons


def _predictions(scores: np.ndarray, targets: np.ndarray, image_ids: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(scores, columns=list(LABELS))
    frame.insert(0, "image_id", image_ids)
    frame.insert(1, "patient_id", [name.split("_")[0] for name in image_ids])
    for column, name in enumerate(LABELS):
        frame[f"true_{name}"] = targets[:, column]
    return frame


def test_a_clearly_better_model_wins_and_a_copy_does_not():
    rng = np.random.default_rng(0)
    targets = (rng.random((300, len(LABELS))) < 0.3).astype(int)
    ids = [f"{i // 3:05d}_{i % 3:03d}.png" for i in range(300)]
    good = np.clip(targets * 0.6 + rng.random(targets.shape) * 0.4, 0, 1)
    noise = rng.random(targets.shape)
    frames = {
        "good": _predictions(good, targets, ids),
        "noise": _predictions(noise, targets, ids),
        "copy": _predictions(good, targets, ids),
    }
    rows = {row["worse"]: row for row in paired_comparisons(frames, ["good", "noise", "copy"], 200, seed=1)}
    assert rows["noise"]["difference"] > 0.3 and rows["noise"]["ci"][0] > 0 and rows["noise"]["p_value"] < 0.05
    assert rows["copy"]["difference"] == pytest.approx(0.0) and rows["copy"]["p_value"] > 0.5


def test_models_scored_on_different_images_are_refused():
    targets = np.zeros((4, len(LABELS)), dtype=int)
    targets[:2] = 1
    scores = np.full(targets.shape, 0.5)
    frames = {
        "a": _predictions(scores, targets, ["1_0", "1_1", "2_0", "2_1"]),
        "b": _predictions(scores, targets, ["1_0", "1_1", "2_0", "3_0"]),
    }
    with pytest.raises(ComparisonError, match="different test images"):
        paired_comparisons(frames, ["a", "b"], 100, seed=0)


def test_chexnet_reference_lists_the_fourteen_published_values():
    record = {"model": "densenet121", "metrics": {"auroc": dict.fromkeys(LABELS, 0.5)}}
    text = "\n".join(chexnet_lines(record))
    assert len(CHEXNET_AUROC) == 14 and "| Hernia | 0.500 | 0.9164 |" in text and "different split" in text


def test_missing_predictions_name_the_stage_to_run(tmp_path):
    from cxr14.reporting.comparison import load_predictions
    from cxr14.reporting.files import ReportError

    with pytest.raises(ReportError, match=r"cnn.csv: no output of evaluate@cnn; run `dvc repro evaluate@cnn`"):
        load_predictions(tmp_path, ["cnn"])
