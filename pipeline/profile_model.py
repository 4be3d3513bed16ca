"""Stage `profile@<model>`: layer table and efficiency figures of one trained model.

    python pipeline/profile_model.py cnn --model-dir models/cnn/seed-42 \
        --structure metrics/structure/cnn.csv --efficiency metrics/efficiency/cnn.json

The layer table has one row per layer (name, type, input/output shape, params, trainable,
kernel, stride, padding, activation, dropout, bias), like the design notes' Keras export;
the report gathers every table into metrics/structure.xlsx. Efficiency: params, FLOPs per
image, size on disk, batch-1 latency and batched throughput on `profile.device`.
"""

import gc

gc.disable()  # no collections during the imports below: cxr14.cli.run_stage turns it back on

import _checkout  # noqa: F401  (this checkout's src/ first: pipeline/_checkout.py)

from cxr14.warm import delegate

delegate()  # in a fork of the warm stage server, which has imported torch & co. once (cxr14.warm)

from pathlib import Path

from cxr14 import tracking
from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.io import atomic_write_json, staged_outputs
from cxr14.models.registry import check_model_names
from cxr14.models.structure import write_layer_csv
from cxr14.stages.profile import log_profile, profile_model


def main(args) -> None:
    cfg = load_config(args.params)
    model_dir = Path(args.model_dir)
    check_model_names([args.model], "models", args.params)  # (train@ checked train.overrides)
    # Store and output folders first; both outputs are renamed into place together, after logging.
    tracking.require_store(model_dir / "mlflow_run.json", args.model)
    structure, efficiency = Path(args.structure), Path(args.efficiency)
    with staged_outputs([structure, efficiency]) as stage:
        table, figures = profile_model(cfg, args.model, model_dir)
        write_layer_csv(table, stage.path(structure))
        atomic_write_json(stage.path(efficiency), figures)
        log_profile(figures, stage.path(structure), model_dir / "mlflow_run.json")


if __name__ == "__main__":
    parser = stage_parser("Write the layer table and efficiency figures of one trained model.", __doc__)
    parser.add_argument("model", help="model name (as in params.yaml models:)")
    parser.add_argument(
        "--model-dir",
        required=True,
        help="one trained model's folder, e.g. models/<model>/seed-42 (dvc.yaml: the first seed)",
    )
    parser.add_argument("--structure", required=True, help="layer table CSV")
    parser.add_argument("--efficiency", required=True, help="efficiency figures JSON (for dvc metrics)")
    run_stage(main, parser)
