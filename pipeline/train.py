"""Stage `train@<model>`: train one registered model on the cache.

    python pipeline/train.py cnn --cache data/cache --out models/cnn

Re-running after an interruption resumes from models/<model>/last.pt.
"""

from pathlib import Path

from cxr14.cli import run_stage, stage_parser
from cxr14.config import load_config
from cxr14.models import available_models
from cxr14.training.engine import train_model


def main(args) -> None:
    cfg = load_config(args.params)
    train_model(cfg, args.model, Path(args.cache), Path(args.out or f"models/{args.model}"))


if __name__ == "__main__":
    parser = stage_parser("Train one model.", __doc__)
    parser.add_argument("model", help=f"registered name ({', '.join(available_models())}) or a timm name")
    parser.add_argument("--cache", default="data/cache", help="cache folder (default: %(default)s)")
    parser.add_argument("--out", default=None, help="checkpoint folder (default: models/<model>)")
    run_stage(main, parser)
