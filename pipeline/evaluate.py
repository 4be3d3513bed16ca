"""Stage `evaluate@<model>`: test-split metrics with validation-tuned thresholds, for every training
seed of the model (models/<model>/seed-<seed>, one per entry of params.yaml's `train_seeds`).

    python pipeline/evaluate.py cnn --cache data/cache --model-dir models/cnn \
        --metrics metrics/cnn.json --details metrics/details/cnn.json \
        --roc metrics/roc/cnn.csv --curves metrics/curves/cnn.csv \
        --predictions metrics/predictions/cnn.csv --figures metrics/figures/cnn \
        --subgroups metrics/subgroups/cnn.json --expert-labels data/expert_labels.csv
"""

import gc

gc.disable()  # no collections during the imports below: cxr14.cli.run_stage turns it back on

import _checkout  # noqa: F401  (this checkout's src/ first: pipeline/_checkout.py)

from cxr14.warm import delegate

delegate()  # in a fork of the warm stage server, which has imported torch & co. once (cxr14.warm)

from pathlib import Path

import pandas as pd

from cxr14 import tracking
from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.data.cache import check_cache_for_trained_model
from cxr14.errors import MissingInputError
from cxr14.io import atomic_write_json, atomic_write_text, staged_outputs
from cxr14.models.registry import check_model_names
from cxr14.stages.evaluate import (
    combine_seeds,
    compact_metrics,
    evaluate_model,
    log_to_run,
    seed_dirs,
    write_figures,
)


def main(args) -> None:
    cfg = load_config(args.params)
    model_dir = Path(args.model_dir or f"models/{args.model}")
    check_model_names([args.model], "models", args.params)
    folders = seed_dirs(model_dir, cfg.train_seeds)
    for folder in folders.values():
        check_cache_for_trained_model(Path(args.cache), folder)  # a cache rebuilt smaller since training
        # Store, then output folders, before the work; every output is renamed into place only
        # after all are written and logged (cxr14.io: all outputs or none).
        tracking.require_store(folder / "mlflow_run.json", args.model)
    expert = _expert_table(Path(args.expert_labels)) if args.expert_labels else None
    outputs = [
        Path(path)
        for path in (args.metrics, args.details, args.roc, args.curves, args.predictions, args.figures, args.subgroups)
        if path
    ]
    with staged_outputs(outputs) as stage:
        records = [evaluate_model(cfg, args.model, Path(args.cache), folder, expert) for folder in folders.values()]
        record = combine_seeds(cfg, records, list(folders))
        atomic_write_json(stage.path(Path(args.metrics)), compact_metrics(record))
        details = {key: record[key] for key in ("model", "metrics", "training", "seed", "seeds")}
        atomic_write_json(stage.path(Path(args.details)), details)
        atomic_write_text(
            stage.path(Path(args.roc)), pd.DataFrame(record["roc"], columns=["fpr", "tpr"]).to_csv(index=False)
        )
        atomic_write_text(stage.path(Path(args.curves)), record["history"].to_csv(index=False))
        if args.predictions:
            atomic_write_text(
                stage.path(Path(args.predictions)),
                record["all_predictions"].to_csv(index=False, float_format="%.5f"),
            )
        figures = write_figures(record, stage.path(Path(args.figures))) if args.figures else []
        files = []
        if args.subgroups:  # the first seed's, like the other detailed tables
            files.append(stage.path(Path(args.subgroups)))
            atomic_write_json(files[0], {"model": args.model, "seed": record["seed"], **record["subgroups"]})
        for index, (folder, seed_record) in enumerate(zip(folders.values(), records)):
            # Each seed's test metrics to its own training run; figures and tables (first seed's) to the first.
            first = index == 0
            log_to_run(
                seed_record,
                folder / "mlflow_run.json",
                figures if first else [],
                Path(args.cache),
                files if first else [],
            )


def _expert_table(path: Path) -> pd.DataFrame:
    """data/expert_labels.csv (the expert_labels stage): the radiologists' labels of test images."""
    if not path.is_file():
        raise MissingInputError(f"{path}: no expert-label table; run `dvc repro expert_labels`")
    return pd.read_csv(path, dtype={"image_id": str, "patient_id": str})


if __name__ == "__main__":
    parser = stage_parser("Evaluate one trained model on the test split.", __doc__)
    parser.add_argument("model", help="model name (as in params.yaml models:)")
    parser.add_argument("--cache", default="data/cache", help="cache folder (default: %(default)s)")
    parser.add_argument(
        "--model-dir", default=None, help="folder of the seed-<seed> checkpoint folders (default: models/<model>)"
    )
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
    parser.add_argument(
        "--subgroups", default=None, help="optional subgroup tables JSON (sex, age, view, follow-up; first seed)"
    )
    parser.add_argument(
        "--expert-labels",
        default=None,
        help="optional radiologists' labels of test images (the expert_labels stage's data/expert_labels.csv)",
    )
    run_stage(main, parser)
