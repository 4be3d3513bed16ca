"""Shared command-line plumbing for the thin scripts in pipeline/.

    parser = stage_parser("Split the metadata by patient.", __doc__)
    args = parser.parse_args(); cfg = load_config(args.params)

`run_stage` turns the project's own exceptions into a one-line error and exit code 2, so
`dvc repro` shows the offending file/row/key instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from cxr14.config import ConfigError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError, RuntimeError)


def stage_parser(description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def run_stage(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Third-party chatter (alembic migrations, MLflow store set-up) is not what the user ran.
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main(args)
    except EXPECTED_ERRORS as error:
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
