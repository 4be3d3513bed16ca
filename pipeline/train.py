"""Stage `train@<model>`: train one registered model on the cache.

    python pipeline/train.py cnn --cache data/cache --out models/cnn

Re-running after an interruption resumes from models/<model>/last.pt. Data-parallel on 4 GPUs:

    torchrun --standalone --nproc_per_node=4 pipeline/train.py densenet121
"""

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
    train_model(cfg, args.model, Path(args.cache), Path(args.out or f"models/{args.model}"))


if __name__ == "__main__":
    catalogue = "\n".join(f"  {name:<17} {describe_model(name)}" for name in available_models())
    epilog = f"{__doc__}\nregistered models (any other timm name works too, e.g. timm:convnext_tiny):\n{catalogue}"
    parser = stage_parser("Train one model.", epilog)
    parser.add_argument("model", help="a registered name (listed below) or a timm name")
    parser.add_argument("--cache", default="data/cache", help="cache folder (default: %(default)s)")
    parser.add_argument("--out", default=None, help="checkpoint folder (default: models/<model>)")
    run_stage(main, parser)
