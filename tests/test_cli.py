"""The stage scripts as a user runs them: --help, and one-line errors for bad input (exit 2)."""

import json
import os
import re
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


STAGE_SCRIPTS = sorted(path.name for path in (REPO_ROOT / "pipeline").glob("[!_]*.py"))


def test_the_stage_scripts_are_the_ones_dvc_runs():
    commands = json.dumps(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    assert STAGE_SCRIPTS and all(f"pipeline/{script}" in commands for script in STAGE_SCRIPTS)


@pytest.mark.parametrize("script", STAGE_SCRIPTS)
def test_every_stage_script_turns_the_collector_off_and_imports_its_checkout_s_code(script):
    """cxr14.cli's start-up: `import gc; gc.disable()` precede every other statement but the
    docstring, `import _checkout` (this checkout's src/ first) precedes every import of cxr14,
    and the script hands over to `run_stage` (which turns the collector back on)."""
    import ast

    source = (REPO_ROOT / "pipeline" / script).read_text()
    body = ast.parse(source).body
    statements = body[1:] if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body
    assert ast.unparse(statements[0]) == "import gc", f"{script}: first statement is not `import gc`"
    assert ast.unparse(statements[1]) == "gc.disable()", f"{script}: second statement is not `gc.disable()`"
    imports = [ast.unparse(node) for node in statements if isinstance(node, (ast.Import, ast.ImportFrom))]
    project = [line for line in imports if re.match(r"(from|import) cxr14\b", line)]
    assert "import _checkout" in imports, f"{script} does not import _checkout"
    assert imports.index("import _checkout") < imports.index(project[0]), f"{script} imports cxr14 before _checkout"
    assert "run_stage(main, parser)" in source, f"{script} does not end in run_stage"


def test_run_stage_collects_during_the_work_and_freezes_around_it():
    """Inside `main` the collector is on and the imports are frozen; after it, main's objects too."""
    program = (
        "import gc, json\n"
        "gc.disable()\n"
        "from cxr14.cli import run_stage, stage_parser\n"
        "seen = {}\n"
        "def main(args):\n"
        "    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())\n"
        "    seen['made'] = [[i] for i in range(5000)]\n"
        "run_stage(main, stage_parser('test'))\n"
        "print(json.dumps({'enabled': seen['enabled'], 'frozen_in_main': seen['frozen'],"
        " 'frozen_after': gc.get_freeze_count()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    state = yaml.safe_load(result.stdout.strip().splitlines()[-1])
    assert state["enabled"] is True
    assert state["frozen_in_main"] > 1000  # the imports
    assert state["frozen_after"] > state["frozen_in_main"] + 4000  # main's 5,000 lists, frozen before exit


@pytest.mark.parametrize("verbose", [False, True])
def test_run_stage_holds_mlflow_to_warnings_even_when_imported_during_the_work(verbose):
    """MLflow sets its logger's level when first imported, which in a stage happens inside the work."""
    program = (
        "import gc, json, logging, os, sys\n"
        "gc.disable()\n"
        "from cxr14.cli import run_stage, stage_parser\n"
        "assert 'mlflow' not in sys.modules\n"
        "def main(args):\n"
        "    import mlflow  # noqa\n"
        "    logging.getLogger('mlflow.system_metrics').info('mlflow chatter')\n"
        "    logging.getLogger('mlflow.store').warning('mlflow warning')\n"
        "    logging.getLogger('cxr14.stages.test').info('stage line')\n"
        "    print(os.environ['MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR'])\n"
        "run_stage(main, stage_parser('test'))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(REPO_ROOT / "src")
    command = [sys.executable, "-c", program, *(["-v"] if verbose else [])]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "stage line" in result.stderr and "mlflow warning" in result.stderr
    assert ("mlflow chatter" in result.stderr) is verbose
    assert result.stdout.strip().splitlines()[-1] == "false"
