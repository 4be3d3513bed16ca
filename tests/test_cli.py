"""The stage scripts as a user runs them: --help, and one-line errors for bad input (exit 2)."""

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT, tiny_params, write_nih_folder


def run_stage(
    script: str, *args: str, cwd=REPO_ROOT, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """pipeline/<script> in a subprocess with the repository's src on PYTHONPATH (`env`: instead of
    this process's environment)."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(REPO_ROOT / "src"), "CXR14_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipeline" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "script",
    [
        "fetch.py",
        "split.py",
        "preprocess.py",
        "expert_labels.py",
        "train.py",
        "evaluate.py",
        "profile_model.py",
        "report.py",
    ],
)
def test_every_stage_has_help(script):
    result = run_stage(script, "--help")
    assert result.returncode == 0 and "--params" in result.stdout


def test_params_typo_stops_the_stage_naming_the_key(tmp_path):
    params = tiny_params()
    params["split"]["test_fraktion"] = 0.2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage("split.py", "--params", str(tmp_path / "params.yaml"), "--raw", str(tmp_path))
    assert result.returncode == 2
    assert "unknown key 'split.test_fraktion' (did you mean 'split.test_fraction'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_finding_stops_split_naming_row(tmp_path):
    raw = write_nih_folder(tmp_path / "raw", [("00000001_000.png", "Effusion", "1"), ("00000002_000.png", "Flu", "2")])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    result = run_stage(
        "split.py",
        "--params",
        str(tmp_path / "params.yaml"),
        "--raw",
        str(raw),
        "--out",
        str(tmp_path / "splits.csv"),
        "--summary",
        str(tmp_path / "split.json"),
    )
    assert result.returncode == 2
    assert "unknown finding 'Flu'" in result.stderr and "line 3 (00000002_000.png)" in result.stderr
    assert not (tmp_path / "splits.csv").exists()


def test_nih_source_without_nih_data_names_the_folder(tmp_path):
    empty = tmp_path / "nih"
    empty.mkdir()
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(tiny_params(**{"data.source": "nih", "data.nih.path": str(empty)}))
    )
    result = run_stage("fetch.py", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "raw"))
    assert result.returncode == 2 and str(empty) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "raw").exists()
