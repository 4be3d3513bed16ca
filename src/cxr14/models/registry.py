"""One registry for every model: project builders by name, anything else through timm.

    bundle = build_model("vit_v1", num_classes=15, image_size=224)
    bundle.model, bundle.in_chans, bundle.mean, bundle.std

Project architectures register with ``@register("name")``. Any other name (or ``timm:<name>``)
goes to ``timm.create_model``; its normalisation comes from timm's pretrained config, never a
hard-coded constant. An unknown name fails with the list of valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """How a registered builder wants its input."""

    builder: ModelBuilder
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class ModelBundle:
    """A built model plus what the loader needs to feed it (channels and normalisation)."""

    name: str
    model: nn.Module
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_REGISTRY: dict[str, ModelSpec] = {}


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def register(
    name: str, in_chans: int = 3, mean: tuple[float, ...] = (0.0,), std: tuple[float, ...] = (1.0,)
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder ``fn(num_classes, image_size) -> nn.Module`` under `name`.

    `mean`/`std` are in [0, 1] pixel units; the default (0, 1) is the seed's rescale-by-1/255.
    """

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(builder, in_chans, mean, std)
        return builder

    return decorate


def available_models() -> list[str]:
    """Project model names (timm names are accepted too, see build_model)."""
    return sorted(_REGISTRY)


def _timm_names() -> set[str]:
    import timm

    return set(timm.list_models())


def build_model(name: str, num_classes: int, image_size: int, pretrained: bool = False) -> ModelBundle:
    """Build `name`: a registered project model, or a timm architecture (``timm:`` optional).

    Raises:
        UnknownModelError: neither registered nor known to timm; lists the valid names.
    """
    if name in _REGISTRY:
        spec = _REGISTRY[name]
        model = spec.builder(num_classes=num_classes, image_size=image_size)
        return ModelBundle(name, model, spec.in_chans, spec.mean, spec.std)
    timm_name = name.removeprefix("timm:")
    if timm_name not in _timm_names():
        raise UnknownModelError(
            f"unknown model {name!r}: use one of {', '.join(available_models())} "
            "or a timm architecture name (see timm.list_models(), e.g. 'resnet34')"
        )
    import timm

    # Three input channels keep pretrained stems intact; the grayscale cache is expanded
    # 1 -> 3 on the device, which costs nothing next to the first convolution.
    model = timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=3)
    data_config = timm.data.resolve_model_data_config(model)
    return ModelBundle(name, model, 3, tuple(data_config["mean"]), tuple(data_config["std"]))
