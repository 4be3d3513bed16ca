"""Stage `explain@<model>`: Grad-CAM overlays, box localisation, embedding retrieval and t-SNE.

    python pipeline/explain.py cnn --cache data/cache --model-dir models/cnn/seed-42 --boxes data/boxes.csv \
        --summary metrics/explain/cnn.json --figures metrics/explain/cnn
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
from cxr14.data.boxes import BOX_COLUMNS, BoxError
from cxr14.data.cache import check_cache_for_trained_model
from cxr14.io import staged_outputs
from cxr14.models.registry import check_model_names
from cxr14.stages.explain import explain_model, log_explanation, write_explanation


def main(args) -> None:
    cfg = load_config(args.params)
    model_dir = Path(args.model_dir)
    check_model_names([args.model], "models", args.params)
    check_cache_for_trained_model(Path(args.cache), model_dir)  # a cache rebuilt smaller since training
    boxes = pd.read_csv(args.boxes, dtype={"image_id": str}) if args.boxes else pd.DataFrame(columns=list(BOX_COLUMNS))
    missing = [column for column in BOX_COLUMNS if column not in boxes.columns]
    if missing:
        raise BoxError(f"{args.boxes}: missing column(s) {missing}; rebuild it with `dvc repro boxes`")
    # Store and output folders first; both outputs are renamed into place together, after logging.
    tracking.require_store(model_dir / "mlflow_run.json", args.model)
    summary, figure_dir = Path(args.summary), Path(args.figures)
    with staged_outputs([summary, figure_dir]) as stage:
        record = explain_model(cfg, args.model, Path(args.cache), model_dir, boxes)
        figures = write_explanation(record, boxes, stage.path(summary), stage.path(figure_dir))
        log_explanation(record, figures, model_dir / "mlflow_run.json")


if __name__ == "__main__":
    parser = stage_parser("Explain one trained model: Grad-CAM, localisation, embeddings.", __doc__)
    parser.add_argument("model", help="model name (as in params.yaml models:)")
    parser.add_argument("--cache", default="data/cache", help="cache folder (default: %(default)s)")
    parser.add_argument(
        "--model-dir",
        required=True,
        help="one trained model's folder, e.g. models/<model>/seed-42 (dvc.yaml: the first seed)",
    )
    parser.add_argument(
        "--boxes",
        default=None,
        help="test-split boxes in cache pixels (pipeline/boxes.py output); none = no localisation",
    )
    parser.add_argument("--summary", required=True, help="retrieval + localisation JSON (for dvc metrics)")
    parser.add_argument("--figures", required=True, help="folder for gradcam/tsne PNGs and their CSVs")
    run_stage(main, parser)
