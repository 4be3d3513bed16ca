"""The `cxr14` command (console script, and `python -m cxr14`).

    cxr14 predict --model models/resnet18 scans/ --out predictions.csv
    cxr14 predict --model models/resnet18/seed-42 a.png b.dcm --operating-point sensitivity --gradcam cams/
    cxr14 predict --model models:/cxr14-resnet18/1 scans/      # registered in MLflow by export@

Errors in the input (an unreadable or unsupported file, an image that does not look like a
frontal radiograph) are named one per line on stderr; the other images are still predicted and
the exit code is 1. A bad model folder or setting stops with exit code 2 and one line saying why.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cxr14.cli import quiet_mlflow
from cxr14.deploy.outputs import DEFAULT_SENSITIVITY
from cxr14.errors import Cxr14Error

PREDICT_EPILOG = """\
output columns: image, the 15 findings' probabilities (sigmoid scores), "<finding> positive"
(1/0 at the validation-chosen threshold of the operating point), operating_point, warnings.
The thresholds used are written to <out>.thresholds.json (with --out).

operating points (chosen on the validation split when the model was trained):
  max_f1       per finding, the threshold with the highest validation F1 (default; the report's)
  sensitivity  per finding, the highest threshold finding --sensitivity of the validation positives

exit status: 0 every image scored; 1 some files could not be scored (each named on stderr; the
others are in the table); 2 a bad option, model folder or registered model (nothing scored).

This is a research model: not a medical device, not for diagnosis.
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {value:g}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"cxr14 {version('cxr14')}"
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "cxr14 (not installed: no version)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr14", description="Use the models trained by the cxr14 pipeline.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict",
        help="score new radiographs (PNG, JPEG, DICOM) with a trained model",
        description="Score new chest radiographs (PNG, JPEG or DICOM files, or folders of them) with a trained model.",
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders (recursive)")
    predict.add_argument(
        "--model",
        required=True,
        help="models/<model> (first training seed), models/<model>/seed-<seed>, or a model export@ registered in "
        "MLflow: models:/cxr14-<model>/<version> (or @<alias>), read from $MLFLOW_TRACKING_URI (default: "
        "./mlflow.db)",
    )
    predict.add_argument("--seed", type=int, help="with models/<model>: the training seed to use")
    predict.add_argument("--out", type=Path, help="write the table to this CSV (default: standard output)")
    predict.add_argument("--gradcam", type=Path, metavar="DIR", help="write a Grad-CAM overlay per positive finding")
    predict.add_argument(
        "--operating-point",
        choices=("max_f1", "sensitivity"),
        default="max_f1",
        help="which validation thresholds make the calls (default: %(default)s; see below)",
    )
    predict.add_argument(
        "--sensitivity",
        type=_fraction,
        help=f"target of --operating-point sensitivity, in (0, 1] (default: {DEFAULT_SENSITIVITY})",
    )
    predict.add_argument(
        "--batch-size", type=_positive_int, default=32, help="images per forward pass (default: %(default)s)"
    )
    predict.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    predict.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    return parser


def run_predict(args: argparse.Namespace) -> int:
    from cxr14.deploy.predict import (
        ModelFolderError,
        is_model_uri,
        load_model_folder,
        load_registered_model,
        predict_files,
        write_thresholds,
    )
    from cxr14.inference import select_device
    from cxr14.io import atomic_write_text

    device = select_device(args.device)
    if is_model_uri(args.model):
        if args.seed is not None:
            raise ModelFolderError(f"--seed {args.seed}: a registered model ({args.model}) is one trained seed already")
        model = load_registered_model(args.model, device)
    else:
        model = load_model_folder(Path(args.model), args.seed, device)
    print(
        f"{model.name}: {model.source} (seed {model.seed}), "
        f"input {model.image_size} px from {model.preprocess_size} px",
        file=sys.stderr,
    )
    outcome = predict_files(
        model,
        args.images,
        operating_point=args.operating_point,
        sensitivity=args.sensitivity,
        batch_size=args.batch_size,
        gradcam_dir=args.gradcam,
    )
    csv = outcome.table.to_csv(index=False)
    if args.out is None:
        sys.stdout.write(csv)
    else:
        atomic_write_text(args.out, csv)
        write_thresholds(
            args.out.with_suffix(".thresholds.json"), model, outcome, args.operating_point, args.sensitivity
        )
    for path, message in outcome.warnings:
        print(f"warning: {path}: {message}", file=sys.stderr)
    for path, message in outcome.failures:
        print(f"error: {path}: {message}", file=sys.stderr)
    written = f" to {args.out}" if args.out else ""
    empty = (
        f" ({len(outcome.empty_overlays)} with an empty map: no location raised the score at the model's "
        "Grad-CAM layer, so they show the radiograph only)"
        if outcome.empty_overlays
        else ""
    )
    overlays = f", {len(outcome.overlays)} Grad-CAM overlays in {args.gradcam}{empty}" if args.gradcam else ""
    print(f"{len(outcome.table)} images predicted{written}{overlays}, {len(outcome.failures)} failed", file=sys.stderr)
    return 1 if outcome.failures else 0


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sensitivity is not None and args.operating_point != "sensitivity":
        parser.error("--sensitivity sets the target of --operating-point sensitivity; add that option too")
    if args.sensitivity is None:
        args.sensitivity = DEFAULT_SENSITIVITY
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    quiet_mlflow(args.verbose)  # a registered model comes through MLflow: no store set-up lines, no bar
    try:
        sys.exit(run_predict(args))
    except Cxr14Error as error:
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
