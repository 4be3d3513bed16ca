"""Stage `export@<model>`: TorchScript + ONNX, MLflow model in the registry, model card.

    python pipeline/export.py resnet18 --model-dir models/resnet18 --cache data/cache --metrics metrics \
        --out exports/resnet18 --card metrics/cards/resnet18.md

Uses the first training seed's model (train_seeds[0]). The exported files must reproduce the
PyTorch model's logits on test images of the cache (the stage fails otherwise); the MLflow model
is logged in that seed's training run and registered as `cxr14-<model>`; both outputs are
written all or none (see cxr14.stages.export).
"""

import gc

gc.disable()  # no collections during the imports below: cxr14.cli.run_stage turns it back on

import _checkout  # noqa: F401  (this checkout's src/ first: pipeline/_checkout.py)

from cxr14.warm import delegate

delegate()  # in a fork of the warm stage server, which has imported torch & co. once (cxr14.warm)

import logging
from pathlib import Path

from cxr14 import tracking
from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.io import staged_outputs
from cxr14.models.registry import check_model_names
from cxr14.stages.export import export_trained

log = logging.getLogger("cxr14.stages.export")


def main(args) -> None:
    cfg = load_config(args.params)
    check_model_names([args.model], "models", args.params)
    model_dir = Path(args.model_dir)
    tracking.require_store(model_dir / f"seed-{cfg.train_seeds[0]}" / "mlflow_run.json", args.model)
    out, card = Path(args.out), Path(args.card)
    with staged_outputs([out, card]) as stage:
        record = export_trained(
            cfg, args.model, model_dir, Path(args.cache), Path(args.metrics), stage.path(out), stage.path(card)
        )
    log.info("%s: exported to %s, card %s, registered as %s", args.model, out, card, record["registry"]["version_uri"])


if __name__ == "__main__":
    parser = stage_parser("Export one trained model (TorchScript, ONNX, MLflow model registry, model card).", __doc__)
    parser.add_argument("model", help="model name (as in params.yaml models:)")
    parser.add_argument("--model-dir", required=True, help="models/<model> (its train_seeds[0] model is exported)")
    parser.add_argument("--cache", required=True, help="the cache (test images check the exported files)")
    parser.add_argument("--metrics", required=True, help="the metrics folder (evaluate@ and profile@ outputs)")
    parser.add_argument("--out", required=True, help="export folder: network/ (TorchScript, ONNX), package/ (MLflow)")
    parser.add_argument("--card", required=True, help="model card (Markdown)")
    run_stage(main, parser)
