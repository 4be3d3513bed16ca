"""The report stage writes markdown, HTML and an .xlsx: it must not load torch, timm and the model zoo.

Its name check uses cxr14.model_names, which the registry is checked against (no drift).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_dvc_dependencies import closure

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "cxr14.models")


def _loaded_after(code: str) -> list[str]:
    probe = code + f"\nimport sys\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1].split()[1:]


def test_report_script_does_not_import_torch_or_timm():
    code = (
        "import runpy, sys\nsys.argv = ['pipeline/report.py', '--help']\nsys.path[0] = 'pipeline'\n"
        "try:\n    runpy.run_path('pipeline/report.py', run_name='__main__')\nexcept SystemExit:\n    pass"
    )
    assert _loaded_after(code) == []


def test_report_import_closure_does_not_import_torch_or_timm():
    """Every project module the script may execute, lazy imports inside functions included."""
    parent, _ = closure("pipeline/report.py")
    modules = sorted(parent)
    assert "cxr14.reporting.workbook" in modules and "cxr14.model_names" in modules
    assert _loaded_after("\n".join(f"import {module}" for module in modules)) == []


def test_registered_models_match_the_light_list():
    from cxr14.model_names import REGISTERED_MODELS
    from cxr14.models import available_models

    assert len(set(REGISTERED_MODELS)) == len(REGISTERED_MODELS)
    assert sorted(REGISTERED_MODELS) == available_models()


def test_registering_an_unlisted_name_is_refused():
    from cxr14.models import register

    with pytest.raises(ValueError, match=r"not in cxr14.model_names.REGISTERED_MODELS"):
        register("not_a_listed_model")(lambda num_classes, image_size: None)


def test_light_name_check():
    from cxr14.config import ConfigError
    from cxr14.model_names import UnknownModelError, check_known_model_names
    from cxr14.models import UnknownModelError as RegistryUnknownModelError

    assert UnknownModelError is RegistryUnknownModelError
    check_known_model_names(["cnn", "convnextv2_seed", "resnet101"], evaluated=["resnet101"])  # registered or evaluated
    with pytest.raises(
        ConfigError,
        match=r"^params.yaml: models: unknown model 'resnet101' \(did you mean 'resnet50'"
        r"\?\): neither registered nor evaluated; registered names: cnn, ",
    ):
        check_known_model_names(["cnn", "resnet101"], evaluated=[], source="params.yaml")
    with pytest.raises(ConfigError, match=r"'cnx' \(did you mean 'cnn'\?\)"):
        check_known_model_names(["cnx"], evaluated=["timm:convnext_tiny"])
