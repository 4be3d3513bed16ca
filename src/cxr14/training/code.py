"""The code a training run depends on, recorded in its resume key (`engine.resume_key`).

    state = code_state()   # {"files": {"cxr14/training/engine.py": "<sha256[:16]>", ...},
                           #  "libraries": {"torch": "2.14.1", "timm": ..., "numpy": ...}}

A killed run resumes from `last.pt` only under the code that began it: `train@`'s model folder is
`persist`ed in dvc.yaml, so when DVC re-runs the stage because its code changed, the old code's
unfinished `last.pt` is still there, and continuing it would leave a model that neither version
trains while `dvc.lock` names the new code for it. `TRAINING_CODE` is the part of the package
that `train@` declares as its deps (tests/test_dvc_dependencies.py keeps the two equal), so a
resume is refused exactly when DVC re-runs the stage for a code change, and the state is read
from files the stage declares. Contents, not modification times: a fresh checkout of the same
commit gives the same state.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

# Relative to the cxr14 package: the code train@ declares in dvc.yaml (folders: every module in them).
TRAINING_CODE = (
    "cli.py",
    "config.py",
    "data/attributes.py",
    "data/cache.py",
    "data/images.py",
    "data/loader.py",
    "data/parallel.py",
    "errors.py",
    "evaluation/metrics.py",
    "inference.py",
    "io.py",
    "labels.py",
    "model_names.py",
    "models",
    "tracking.py",
    "training",
    "warm.py",
)
# Libraries whose kernels, defaults and random streams shape a training run besides our own code.
LIBRARIES = ("torch", "timm", "numpy")


def code_state() -> dict[str, dict[str, str]]:
    """A content hash of every module in `TRAINING_CODE` (keyed "cxr14/<path>"; "missing" for
    one that is not there) and the installed versions of `LIBRARIES`."""
    package = Path(__file__).resolve().parent.parent
    files = {}
    for entry in TRAINING_CODE:
        path = package / entry
        modules = sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts) if path.is_dir() else [path]
        for module in modules:
            name = module.relative_to(package.parent).as_posix()
            files[name] = hashlib.sha256(module.read_bytes()).hexdigest()[:16] if module.is_file() else "missing"
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = "not installed"
    return {"files": files, "libraries": libraries}
