"""One error base: every error a user can cause is a `Cxr14Error` (one `error:` line, exit 2);
anything else escaping a stage is a bug and keeps its traceback (exit 1)."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import textwrap

import pytest
import yaml

import cxr14
from cxr14.errors import Cxr14Error, MissingInputError
from tests.conftest import REPO_ROOT, tiny_params

# Public exception classes that are deliberately not user errors, with the reason.
NOT_USER_ERRORS: dict[str, str] = {}


def _project_exceptions() -> list[type[BaseException]]:
    found = {}
    for info in pkgutil.walk_packages(cxr14.__path__, prefix="cxr14."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not name.startswith("_")
            ):
                found[f"{info.name}.{name}"] = value
    return list(found.values())


def test_every_public_project_exception_is_a_cxr14_error():
    classes = _project_exceptions()
    assert len(classes) >= 20, [cls.__qualname__ for cls in classes]  # the walk found the modules
    stray = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in classes
        if not issubclass(cls, Cxr14Error) and f"{cls.__module__}.{cls.__qualname__}" not in NOT_USER_ERRORS
    ]
    assert not stray, (
        f"derive these from cxr14.errors.Cxr14Error (or list them in NOT_USER_ERRORS with a reason): {stray}"
    )


def test_user_errors_keep_their_builtin_types():
    from cxr14.config import ConfigError
    from cxr14.data.metadata import MetadataError
    from cxr14.data.split import LeakageError

    assert issubclass(MissingInputError, FileNotFoundError)
    assert issubclass(ConfigError, ValueError) and issubclass(MetadataError, ValueError)
    assert issubclass(LeakageError, Cxr14Error) and not issubclass(LeakageError, AssertionError)


def _run(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "CXR14_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _script(tmp_path, body: str) -> str:
    script = tmp_path / "stage.py"
    script.write_text(
        textwrap.dedent(f"""
        from cxr14.cli import run_stage, stage_parser
        from cxr14.errors import MissingInputError

        def main(args):
        {textwrap.indent(textwrap.dedent(body), "    ")}

        run_stage(main, stage_parser("a tiny stage"))
    """)
    )
    return str(script)


def test_a_user_error_is_one_line_and_exit_2(tmp_path):
    script = _script(tmp_path, 'raise MissingInputError("data/splits.csv: missing; run `dvc repro split`")')
    result = _run(script)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: data/splits.csv: missing; run `dvc repro split`"
    verbose = _run(script, "-v")  # -v shows where it came from
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "MissingInputError" in verbose.stderr


@pytest.mark.parametrize(
    "error",
    ['RuntimeError("shape mismatch")', 'ValueError("bad reshape")', 'FileNotFoundError("x")', 'KeyError("column")'],
)
def test_a_bug_keeps_its_traceback_and_exit_1(tmp_path, error):
    result = _run(_script(tmp_path, f"raise {error}"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" in result.stderr and error.split("(")[0] in result.stderr
    assert not any(line.startswith("error:") for line in result.stderr.splitlines())


def test_a_stage_missing_its_input_says_which_stage_makes_it(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    result = _run(
        str(REPO_ROOT / "pipeline" / "train.py"),
        "--params",
        str(tmp_path / "params.yaml"),
        "cnn",
        "--seed",
        "42",
        "--cache",
        str(tmp_path / "no_cache"),
        "--out",
        str(tmp_path / "models" / "cnn"),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "no_cache") in errors[0] and "preprocess" in errors[0], result.stderr
