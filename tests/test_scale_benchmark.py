"""benchmarks/scale.py: the NIH-sized folder it builds is what `data.source: nih` reads, the
per-process measurement attributes time and memory to the right process, and a tiny real run
(DVC, every stage) writes a complete, sane JSON report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import scale
from cxr14.data.boxes import BOX_FINDINGS, read_bbox_list
from cxr14.data.metadata import load_metadata
from cxr14.data.nih_layout import detect_layout, index_raw
from cxr14.data.official_split import official_split, official_test_images
from cxr14.labels import LABEL_INDEX
from tests.conftest import REPO_ROOT


def test_generated_folder_is_an_official_nih_layout_with_the_official_split(tmp_path):
    summary = scale.build_nih_folder(tmp_path, images=300, distinct=5, size=64, seed=1, workers=1)
    layout = detect_layout(tmp_path / "nih")
    assert layout.kind == "official"
    assert index_raw(layout, tmp_path / "raw") == 300 == summary["images"]
    metadata = load_metadata(tmp_path / "raw", missing_images="error")
    frame = metadata.frame
    assert len(frame) == 300 and frame["image_id"].is_unique
    # ~30,805 patients per 112,120 images; test patients come whole from the official list.
    assert summary["patients"] == frame["patient_id"].nunique()
    assert abs(summary["patients"] - 300 * 30_805 / 112_120) <= 3
    in_test = frame["image_id"].isin(official_test_images())
    assert in_test.sum() == summary["official_test_images"] > 0
    assert abs(in_test.sum() - 300 * 25_596 / 112_120) <= 20
    assert not set(frame.loc[in_test, "patient_id"]) & set(frame.loc[~in_test, "patient_id"])
    assignment = official_split(frame, metadata.labels, val_fraction=0.1, seed=0)
    assert set(assignment) == {"train", "val", "test"}
    assert ((assignment == "test") == in_test.to_numpy()).all()
    # Every image file is a hard link to one of the 5 distinct PNGs.
    inodes = {(tmp_path / "nih" / "images" / name).stat().st_ino for name in frame["image_id"]}
    assert summary["link"] == "hardlink" and len(inodes) == 5
    # Boxes lie on test images whose labels contain the boxed finding.
    boxes = read_bbox_list(tmp_path / "nih" / "BBox_List_2017.csv")
    assert len(boxes) == summary["boxes"] == round(984 * in_test.sum() / 25_596)
    labels = dict(zip(frame["image_id"], metadata.labels, strict=True))
    assert boxes["image_id"].isin(official_test_images()).all()
    assert set(boxes["finding"]) <= set(BOX_FINDINGS.values())
    for image_id, finding in zip(boxes["image_id"], boxes["finding"], strict=True):
        assert labels[image_id][LABEL_INDEX[finding]] == 1
    assert ((boxes["x"] + boxes["w"] <= 64) & (boxes["y"] + boxes["h"] <= 64)).all()


def test_measure_splits_time_and_memory_between_the_script_and_its_parent(tmp_path):
    """A stand-in for dvc: 1 s of its own work, the stage's command through a shell as DVC runs it, 1 s more."""
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "fake.py").write_text(
        "import time\nimport numpy as np\nblock = np.ones(300_000_000, dtype=np.uint8)\ntime.sleep(0.8)\n"
    )
    (tmp_path / "parent.py").write_text(
        "import subprocess, sys, time\ntime.sleep(1)\n"
        "subprocess.run(['/bin/sh', '-c', sys.executable + ' pipeline/fake.py --out x'], check=True)\ntime.sleep(1)\n"
    )
    command = [sys.executable, "parent.py"]
    result = scale.measure("fake", command, tmp_path, dict(os.environ), "pipeline/fake.py", 0.02, tmp_path / "log")
    assert result.script_seen
    # The sleeps bound the parts from below: 1 s before the script, 0.8 s in it, 1 s after.
    assert result.dvc_before_s >= 0.9 and result.script_s >= 0.7 and result.dvc_after_s >= 0.5
    assert math.isclose(result.wall_s, result.dvc_before_s + result.script_s + result.dvc_after_s, abs_tol=1e-6)
    assert math.isclose(result.dvc_s, result.wall_s - result.script_s, abs_tol=1e-6)
    assert result.rss_max_process_bytes >= 300_000_000
    assert result.rss_tree_peak_bytes >= 300_000_000


def test_measure_names_the_log_of_a_failed_command(tmp_path):
    command = ["/bin/sh", "-c", "echo stage exploded; exit 3"]
    with pytest.raises(scale.BenchmarkError, match=r"(?s)\(exit 3\); log .*broken\.log.*stage exploded"):
        scale.measure("broken", command, tmp_path, dict(os.environ), None, 0.02, tmp_path / "broken.log")


@pytest.mark.slow
def test_tiny_run_reports_every_stage(tmp_path):
    work, report_path = tmp_path / "work", tmp_path / "scale.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "scale.py"),
            *("--images", "60", "--distinct", "6", "--image-size", "64", "--train-steps", "2"),
            *(
                "--set",
                "preprocess.size=64",
                "--set",
                "train.image_size=64",
                "--set",
                "train.batch_size=8",
                "--set",
                "evaluate.batch_size=8",
            ),
            *("--set", "evaluate.bootstrap_resamples=100", "--set", "explain.gradcam_images=2"),
            *("--set", "profile.repeats=1", "--set", "profile.throughput_repeats=1"),
            *("--work", str(work), "--json", str(report_path), "--from-commit", "HEAD"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "CXR14_NO_PROGRESS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not work.exists()  # deleted without --keep
    report = json.loads(report_path.read_text())
    expected = [
        *("fetch", "split", "preprocess", "boxes", "expert_labels", "train@cnn-42"),
        *("evaluate@cnn", "profile@cnn", "explain@cnn", "export@cnn", "report", "no-op dvc repro"),
    ]
    stages = report["stages"]
    assert [stage["stage"] for stage in stages] == expected
    for stage in stages:
        times = [stage[key] for key in ("wall_s", "script_s", "dvc_before_s", "dvc_after_s", "dvc_s")]
        assert all(math.isfinite(value) and value >= 0 for value in times), stage
        assert math.isclose(stage["wall_s"], stage["script_s"] + stage["dvc_s"], abs_tol=1e-6)
        assert stage["rss_max_process_bytes"] > 0 and stage["rss_tree_peak_bytes"] > 0
        assert set(stage["disk_bytes"]) == set(scale.DISK_AREAS)
        assert stage["script_seen"] == (stage["stage"] != "no-op dvc repro")
    by_name = {stage["stage"]: stage for stage in stages}
    assert by_name["preprocess"]["disk_bytes"]["data"] > 0 and by_name["preprocess"]["disk_bytes"][".dvc/cache"] > 0
    assert by_name["train@cnn-42"]["disk_bytes"]["models"] > 0
    assert report["folder"]["images"] == 60 and report["split_method"] == "auto"
    assert report["failure"] is None and report["code"] == "HEAD"
    for line in ("| stage | wall s |", "| no-op dvc repro |", "| export@cnn |"):
        assert line in result.stdout
