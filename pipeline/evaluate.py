"""Stage `evaluate@<model>`: test-split metrics with validation-tuned thresholds.

    python pipeline/evaluate.py cnn --cache data/cache --model-dir models/cnn \
        --metrics metrics/cnn.json --details metrics/details/cnn.json \
        --roc metrics/roc/cnn.csv --curves metrics/curves/cnn.csv \
        --predictions metrics/predictions/cnn.csv --figures metrics/figures/cnn
"""

from pathlib import Path

import pandas as pd

from cxr14 import tracking
from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.data.cache import check_cache_for_trained_model
from cxr14.io import atomic_write_json, atomic_write_text, staged_outputs
from cxr14.models.registry import check_model_names
from cxr14.stages.evaluate import compact_metrics, evaluate_model, log_to_run, write_figures


def main(args) -> None:
    cfg = load_config(args.params)
    model_dir = Path(args.model_dir or f"models/{args.model}")
    check_model_names([args.model], "models", args.params)
    check_cache_for_trained_model(Path(args.cache), model_dir)  # a cache rebuilt smaller since training
    # Store, then output folders, before the work; every output is renamed into place only
    # after all are written and logged (cxr14.io: all outputs or none).
    tracking.require_store(model_dir / "mlflow_run.json", args.model)
    outputs = [
        Path(path)
        for path in (args.metrics, args.details, args.roc, args.curves, args.predictions, args.figures)
        if path
    ]
    with staged_outputs(outputs) as stage:
        record = evaluate_model(cfg, args.model, Path(args.cache), model_dir)
        atomic_write_json(stage.path(Path(args.metrics)), compact_metrics(record))
        details = {key: record[key] for key in ("model", "metrics", "training")}
        atomic_write_json(stage.path(Path(args.details)), details)
        atomic_write_text(
            stage.path(Path(args.roc)), pd.DataFrame(record["roc"], columns=["fpr", "tpr"]).to_csv(index=False)
        )
        atomic_write_text(stage.path(Path(args.curves)), record["history"].to_csv(index=False))
        if args.predictions:
            atomic_write_text(
                stage.path(Path(args.predictions)), record["predictions"].to_csv(index=False, float_format="%.5f")
            )
        figures = write_figures(record, stage.path(Path(args.figures))) if args.figures else []
        log_to_run(record, model_dir / "mlflow_run.json", figures, cache_dir=Path(args.cache))


if __name__ == "__main__":
    parser = stage_parser("Evaluate one trained model on the test split.", __doc__)
    parser.add_argument("model", help="model name (as in params.yaml models:)")
    parser.add_argument("--cache", default="data/cache", help="cache folder (default: %(default)s)")
    parser.add_argument("--model-dir", default=None, help="checkpoint folder (default: models/<model>)")
    parser.add_argument("--metrics", required=True, help="headline metrics JSON (for dvc metrics)")
    parser.add_argument("--details", required=True, help="full evaluation record JSON (read by report)")
    parser.add_argument("--roc", required=True, help="micro-averaged ROC points CSV (for dvc plots)")
    parser.add_argument("--curves", required=True, help="training curves CSV (for dvc plots)")
    parser.add_argument("--predictions", default=None, help="optional test scores CSV")
    parser.add_argument(
        "--figures",
        default=None,
        help="optional folder for roc_pr.png, reliability.png, training.png (also logged to MLflow)",
    )
    run_stage(main, parser)
