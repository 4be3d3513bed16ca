"""Model registry: every architecture is built by name through :func:`build_model`."""

from cxr14.models.registry import ModelBundle, available_models, build_model, register

# Importing the module runs its @register decorators.
from cxr14.models import seed  # noqa: E402,F401  isort: skip

__all__ = ["ModelBundle", "available_models", "build_model", "register"]
