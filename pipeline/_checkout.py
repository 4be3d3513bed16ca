"""Make a stage script run the cxr14 code of the checkout it belongs to.

Every script in pipeline/ imports this module first. `make install` installs the package in
editable mode, which points the environment at *one* folder's `src/` -- the workspace's. DVC runs
a queued or `--temp` experiment in a copy of the repository (`.dvc/tmp/exps/<name>/`, the code as
it was when the experiment was queued), and its dvc.lock records the hashes of that copy's
`src/cxr14` files. Without this module the copy's stages would import the workspace's code as it
is when the queue worker gets to them: an edit made after `dvc exp run --queue` would run in the
experiment (or break it) while its lock vouched for the old code. Putting the checkout's own `src/`
first on the module search path (just after the script's folder) makes the code that runs the
code that DVC hashed, in the workspace, in DVC's copies, and in a second clone sharing a venv.
The warm stage server (cxr14.warm) starts with its caller's search path, so it imports the same.
"""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

if (SRC / "cxr14" / "__init__.py").is_file():
    if sys.path[1:2] != [str(SRC)]:
        sys.path.insert(1, str(SRC))
    loaded = sys.modules.get("cxr14")
    if loaded is not None and Path(loaded.__file__ or "").resolve().parent != SRC / "cxr14":
        raise ImportError(f"cxr14 was imported from {loaded.__file__} before {SRC} was put first on the search path")
