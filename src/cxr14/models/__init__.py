"""Model registry: every architecture is built by name through :func:`build_model`.

    from cxr14.models import build_model, set_train_mode
    bundle = build_model("densenet121", num_classes=15, image_size=224, pretrained="auto")

Importing this package imports every model module, which registers its builders.
"""

from cxr14.models.registry import (
    ModelBundle,
    PretrainedWeightsError,
    UnknownModelError,
    available_models,
    build_model,
    describe_model,
    freeze_all_but_head,
    register,
    resolve_pretrained,
    set_train_mode,
)

# Importing a module runs its @register decorators.
from cxr14.models import convnext_seed, resmobilenet, seed, transfer  # noqa: F401  isort: skip

__all__ = [
    "ModelBundle",
    "PretrainedWeightsError",
    "UnknownModelError",
    "available_models",
    "build_model",
    "describe_model",
    "freeze_all_but_head",
    "register",
    "resolve_pretrained",
    "set_train_mode",
]
