"""Stage `train@<model>-<seed>`: train one registered model on the cache with one training seed.

    python pipeline/train.py cnn --seed 42 --cache data/cache --out models/cnn/seed-42

The training seeds are params.yaml's `train_seeds` (dvc.yaml runs one stage per model and seed).
Re-running after an interruption resumes from models/<model>/seed-<seed>/last.pt. Data-parallel
on 4 GPUs:

    torchrun --standalone --nproc_per_node=4 pipeline/train.py densenet121 --seed 42
"""

import gc

gc.disable()  # no collections during the imports below: cxr14.cli.run_stage turns it back on

import _checkout  # noqa: F401  (this checkout's src/ first: pipeline/_checkout.py)

from cxr14.warm import delegate

delegate()  # in a fork of the warm stage server, which has imported torch & co. once (cxr14.warm)

from pathlib import Path

from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.data.cache import check_cache_size
from cxr14.models import available_models, describe_model
from cxr14.models.registry import check_model_names
from cxr14.training.engine import train_model


def main(args) -> None:
    cfg = load_config(args.params)
    # Names and the cache on disk, before any work (config validation compares params with params).
    check_model_names([args.model], "models", args.params)
    check_model_names(cfg.train.overrides, "train.overrides", args.params)
    check_cache_size(
        Path(args.cache),
        cfg.train_for(args.model).image_size,
        cfg.preprocess.size,
        model=args.model,
        source=args.params,
    )
    out = Path(args.out or f"models/{args.model}/seed-{args.seed}")
    train_model(cfg, args.model, Path(args.cache), out, seed=args.seed)


if __name__ == "__main__":
    catalogue = "\n".join(f"  {name:<17} {describe_model(name)}" for name in available_models())
    epilog = f"{__doc__}\nregistered models (any other timm name works too, e.g. timm:convnext_tiny):\n{catalogue}"
    parser = stage_parser("Train one model.", epilog)
    parser.add_argument("model", help="a registered name (listed below) or a timm name")
    parser.add_argument("--cache", default="data/cache", help="cache folder (default: %(default)s)")
    parser.add_argument(
        "--seed",
        type=int,
        required=True,
        help="training seed (init, augmentation, batch order): one of params.yaml's train_seeds in the pipeline",
    )
    parser.add_argument("--out", default=None, help="checkpoint folder (default: models/<model>/seed-<seed>)")
    run_stage(main, parser)
