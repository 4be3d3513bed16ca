"""Shared command-line plumbing for the thin scripts in pipeline/.

    parser = stage_parser("Split the metadata by patient.", __doc__)
    args = parser.parse_args(); cfg = load_config(args.params)

`run_stage` turns the project's own errors (`cxr14.errors.Cxr14Error`: bad input, a missing file,
a bad setting) into a one-line error and exit code 2, so `dvc repro` shows the offending
file/row/key instead of a traceback. Every other exception is a bug: it keeps its traceback (exit 1).

Start-up: a stage is a short process that imports torch, MLflow and pandas (millions of objects)
and then ends. Each script turns the garbage collector off before its imports (`gc.disable()`,
its first statement: collections during the imports cost ~1.5 s on a 2-core CPU) and
`run_stage` then freezes what the imports built (`gc.freeze()`: it lives as long as the
process, so later collections skip it) and turns the collector back on for the stage's own
work. When the work is done it freezes again, so that the interpreter's last collection at exit
does not walk everything once more (another ~1-2 s per stage).

Quiet logs: a stage logs its own INFO lines; the libraries' chatter (MLflow's store set-up and
system-metrics notices, its artifact-download bars, alembic, matplotlib) is held to warnings.
MLflow sets its logger's level when it is first imported, which in most stages happens inside
the work, so `run_stage` also sets MLflow's own variables (`MLFLOW_LOGGING_LEVEL=WARNING`,
`MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false`) unless the user has set them; `-v` keeps MLflow's
INFO lines too.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Callable

from cxr14.errors import Cxr14Error

# What `run_stage` reports in one line; a builtin ValueError or RuntimeError (a torch shape
# error, say) is a bug and must keep its traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (Cxr14Error,)


def stage_parser(description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def quiet_mlflow(verbose: bool) -> None:
    """MLflow's own settings for its INFO lines and artifact-download bars, unless the user set them:
    MLflow (re)sets its logger's level when first imported, usually later than the caller's logging."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def run_stage(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Third-party chatter (alembic migrations, MLflow store set-up) is not what the user ran.
    for noisy in ("alembic", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel("INFO" if args.verbose else "WARNING")
    quiet_mlflow(args.verbose)
    gc.freeze()
    gc.enable()
    try:
        main(args)
    except EXPECTED_ERRORS as error:
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        gc.freeze()
