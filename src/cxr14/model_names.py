"""The names of the project's registered models, known without importing torch or timm.

    check_known_model_names(cfg.models, evaluated={"resnet18"}, key="models", source="params.yaml")

:data:`REGISTERED_MODELS` lists every name a ``@register`` builder in ``cxr14.models`` uses; the
registry refuses to register a name missing here, and tests/test_models.py checks that every
listed name is registered, so the two cannot drift apart. Stages that build models check names
against the registry *and* timm (:func:`cxr14.models.registry.check_model_names`); the report
stage, which only reads their outputs, checks them here so that it never imports torch, timm and
the model zoo: a name is known when it is registered, or when it has been evaluated (the stages
upstream accepted it as a timm architecture).

Adding a model: its ``@register("name", ...)`` builder in ``cxr14.models`` plus "name" here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path

from cxr14.config import ConfigError

REGISTERED_MODELS: tuple[str, ...] = (
    # seed designs (models/seed.py, models/convnext_seed.py, models/resmobilenet.py)
    "cnn",
    "cnn_gap",
    "vit_v1",
    "vit_v2",
    "convnextv2_seed",
    "resmobilenet_v1",
    "resmobilenet_v2",
    # seed transfer recipe: ImageNet backbone + Dropout/Dense head (models/transfer.py TRANSFER_BACKBONES)
    "efficientnet_b4",
    "resnet50",
    "densenet169",
    "vgg16",
    "mobilenetv2_100",
    # timm architectures under a project name (models/transfer.py)
    "resnet18",
    "resnet34",
    "vit_b16",
    "densenet121",
)


class UnknownModelError(ConfigError, KeyError):
    """The name is neither registered nor a timm architecture.

    A ConfigError (the name comes from params.yaml or the command line), so stages report it in
    one line; also a KeyError, as a lookup that failed.
    """

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def check_known_model_names(
    names: Iterable[str], evaluated: Iterable[str], key: str = "models", source: str | None = None
) -> None:
    """Refuse names that are neither registered nor among `evaluated`, without importing torch or timm.

    Args:
        names: model names, e.g. ``cfg.models``.
        evaluated: names whose evaluation exists (e.g. the stems of metrics/details/*.json); a
            timm architecture is known here only that way.
        key: the params key the names come from, for the message.
        source: the params file, for the message.

    Raises:
        UnknownModelError: naming every unknown name with the closest registered or evaluated name.
    """
    known = sorted(set(REGISTERED_MODELS) | set(evaluated))
    unknown = [str(name) for name in names if str(name) not in known]
    if unknown:
        where = f"{source}: " if source else ""

        def described(name: str) -> str:
            close = difflib.get_close_matches(name, known, n=1)
            return f"{name!r} (did you mean '{close[0]}'?)" if close else repr(name)

        raise UnknownModelError(
            f"{where}{key}: unknown model {', '.join(map(described, unknown))}: neither registered nor evaluated; "
            f"registered names: {', '.join(sorted(REGISTERED_MODELS))}; a timm model name must be trained "
            "and evaluated first (`dvc repro`)"
        )


def train_stage(model_name: str, model_dir: Path | str | None = None) -> str:
    """The DVC stage that writes a trained model folder: `train@<model>-<seed>` for
    models/<model>/seed-<seed> (the seed read from the folder's name), else with `<seed>` left for
    the reader to fill in from `train_seeds`."""
    found = re.fullmatch(r"seed-(\d+)", Path(model_dir).name) if model_dir is not None else None
    return f"train@{model_name}-{found.group(1) if found else '<seed>'}"
