"""One registry for every model: project builders by name, anything else through timm.

    bundle = build_model("densenet121", num_classes=15, image_size=224, pretrained="auto")
    bundle.model, bundle.in_chans, bundle.mean, bundle.std, bundle.weights

    bundle = build_model("efficientnet_b4", 15, 380, pretrained_path="/data/b4.safetensors",
                         freeze_backbone=True)
    set_train_mode(bundle.model)  # instead of model.train(): frozen BatchNorms keep their statistics

A project architecture is one decorated builder::

    @register("cnn_gap", description="seed CNN with global average pooling")
    def cnn_gap(num_classes: int, image_size: int) -> nn.Module: ...

A builder registered with ``timm_weights=True`` instead takes
``(num_classes, image_size, pretrained, pretrained_file)`` and lets timm fetch or read its
weights. ``timm:<name>`` (which always bypasses the registry) goes straight to
``timm.create_model``; so does any other timm name, with a logged warning, because a project model
whose module is missing from the imports in ``cxr14.models`` would otherwise silently become
timm's model of the same name. Normalisation is either declared at registration (``mean``/``std`` in
[0, 1] pixel units) or, with ``mean=None``, read from ``timm.data.resolve_model_data_config``,
never a hard-coded ImageNet constant.

Where weights come from (``ModelBundle.weights`` records it; None means random init):

* ``pretrained_path`` given: that file, for any model. A checkpoint of this very model (our
  ``best.pt`` is ``{"model": state_dict, ...}``) is loaded strictly, head included; for
  timm-backed models any other file goes to timm, which drops a classifier of the wrong size and
  adapts position embeddings, once the file is known to fit: every tensor of the model outside
  its classifier head must be in the file under timm's name, otherwise
  :class:`PretrainedWeightsError` (a file of another architecture, or a resnet18 file for a
  resnet34, would leave layers at random init while the run records the file as its weights).
* otherwise ``pretrained`` (true, false or "auto" = what the design calls for, see
  :func:`resolve_pretrained`): timm's published weights, from its Hugging Face cache or the
  network. Project models trained from scratch have none to fetch.

Every model takes 3 input channels although the images are grayscale; the loader expands the
1-channel cache on the device. A gray image expanded to R=G=B and normalised per channel is
exactly what the ImageNet stems were trained on, the published weights stay untouched (so results
remain comparable with other work), and the exported model takes ordinary 3-channel input. The
price is a first convolution over 3 channels instead of 1.
"""

from __future__ import annotations

import difflib
import logging
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cxr14.config import ConfigError
from cxr14.errors import Cxr14Error
from cxr14.model_names import REGISTERED_MODELS, UnknownModelError

log = logging.getLogger(__name__)

ModelBuilder = Callable[..., nn.Module]

# timm raises these when weights cannot be fetched (no network, offline hub, no weights published).
_FETCH_ERRORS = (OSError, RuntimeError, ValueError)
# Our checkpoints store metrics such as a numpy float next to the weights; allowing the numpy
# scalar types keeps torch.load in its safe weights_only mode for them.
NUMPY_SCALAR_GLOBALS = [
    np._core.multiarray.scalar,  # type: ignore[attr-defined]  # numpy's stubs omit _core
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
    np.dtypes.Int32DType,
    np.dtypes.BoolDType,
]
# Prefixes that wrappers add to parameter names: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class ModelSpec:
    """How a registered builder is called and how it wants its input."""

    builder: ModelBuilder
    in_chans: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    pretrained: bool
    timm_weights: bool
    description: str


@dataclass
class ModelBundle:
    """A built model plus what the loader needs to feed it (channels and normalisation).

    Attributes:
        weights: where the loaded weights came from (``"timm:<architecture>.<tag>"`` or a file
            path); None when the model is randomly initialised.
    """

    name: str
    model: nn.Module
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str | None = None

    def input_record(self) -> dict:
        """How the model's input is prepared (channels, per-channel mean and std in [0, 1] pixel
        units), as train@ stores it in best.pt beside the weights: an architecture's normalisation
        may change between versions (cnn's did, 2026-12-03), and weights only work with theirs."""
        return {"in_chans": self.in_chans, "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}


_REGISTRY: dict[str, ModelSpec] = {}
_WARNED_UNREGISTERED: set[str] = set()


class PretrainedWeightsError(Cxr14Error, RuntimeError):
    """Requested weights could not be fetched or loaded; the message says how to provide them."""


def register(
    name: str,
    *,
    in_chans: int = 3,
    mean: tuple[float, ...] | None = (0.0,),
    std: tuple[float, ...] | None = (1.0,),
    pretrained: bool = False,
    timm_weights: bool = False,
    description: str = "",
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a model builder under `name`.

    Args:
        name: the name used in params.yaml ``models`` and on the command line.
        in_chans: input channels the model expects.
        mean: per-channel mean in [0, 1] pixel units; the default (0, 1) is the seed's plain
            rescale by 1/255. None takes mean and std from timm's pretrained config of the model.
        std: per-channel standard deviation, as `mean`.
        pretrained: the design is ImageNet-pretrained, so ``pretrained: auto`` fetches weights.
        timm_weights: the builder is ``fn(num_classes, image_size, pretrained, pretrained_file)``
            and loads weights through timm; otherwise it is ``fn(num_classes, image_size)``.
        description: one line for ``--help``; defaults to the builder's docstring summary.
    """
    if (mean is None) != (std is None):
        raise ValueError(f"register({name!r}): give both mean and std, or neither (None = from timm)")

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if name not in REGISTERED_MODELS:
            raise ValueError(
                f"model {name!r} is not in cxr14.model_names.REGISTERED_MODELS; add it there (the "
                "report stage knows registered names from that list, without importing torch)"
            )
        summary = description or (builder.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = ModelSpec(builder, in_chans, mean, std, pretrained, timm_weights, summary)
        return builder

    return decorate


def available_models() -> list[str]:
    """Registered model names, sorted (timm names are accepted too, see build_model)."""
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    """The one-line description of registered model `name`."""
    return _spec_for(name).description


def resolve_pretrained(name: str, pretrained: bool | str) -> bool:
    """Whether `name` should start from published weights.

    Args:
        name: a registered or timm model name.
        pretrained: True, False, or "auto" for the design default (registered ``pretrained``;
            False for plain timm names, which are trained from scratch unless asked).

    Raises:
        ConfigError: `pretrained` is anything else.
    """
    if pretrained is True or pretrained is False:
        return pretrained
    if pretrained == "auto":
        spec = _REGISTRY.get(name)
        return spec.pretrained if spec is not None else False
    raise ConfigError(f"train.pretrained must be true, false or 'auto', got {pretrained!r}")


def create_timm_model(architecture: str, pretrained: bool, pretrained_file: str | None, **kwargs) -> nn.Module:
    """``timm.create_model`` reading weights from `pretrained_file` when given, else timm's source.

    Args:
        architecture: timm name, optionally with a pretrained tag ("resnet50.a1_in1k").
        pretrained: load weights at all.
        pretrained_file: local .pth/.safetensors state dict replacing timm's download.
        **kwargs: passed to timm (num_classes, img_size, global_pool, ...).
    """
    import timm

    overlay = dict(file=pretrained_file) if pretrained_file else None
    return timm.create_model(architecture, pretrained=pretrained, pretrained_cfg_overlay=overlay, in_chans=3, **kwargs)


def _create_plain_timm(
    architecture: str, num_classes: int, image_size: int, pretrained: bool, pretrained_file: str | None
) -> nn.Module:
    return create_timm_model(architecture, pretrained, pretrained_file, num_classes=num_classes)


def _is_known(name: str) -> bool:
    if name in _REGISTRY:
        return True
    import timm

    return timm.is_model(name.removeprefix("timm:"))


def _with_close_match(name: str) -> str:
    """'name' (did you mean 'closest'?): the closest registered name, else the closest timm name."""
    import timm

    close = difflib.get_close_matches(name, available_models(), n=1)
    if not close:
        prefix = "timm:" if name.startswith("timm:") else ""
        close = [
            prefix + match for match in difflib.get_close_matches(name.removeprefix("timm:"), timm.list_models(), n=1)
        ]
    return f"{name!r} (did you mean '{close[0]}'?)" if close else repr(name)


def _valid_names() -> str:
    return (
        f"valid names: {', '.join(available_models())}, or any timm model name, e.g. timm:convnext_tiny "
        "(see timm.list_models())"
    )


def check_model_names(names: Iterable[str], key: str = "models", source: str | None = None) -> None:
    """Refuse names that are neither registered nor timm architectures, before any work starts.

    Args:
        names: model names, e.g. ``cfg.models``, the keys of ``cfg.train.overrides`` or a
            stage's model argument.
        key: the params key the names come from (``models`` or ``train.overrides``), for the message.
        source: the params file, for the message.

    Raises:
        UnknownModelError: a ConfigError naming every unknown name with a close match, and the valid names.
    """
    unknown = [str(name) for name in names if not _is_known(str(name))]
    if unknown:
        where = f"{source}: " if source else ""
        raise UnknownModelError(
            f"{where}{key}: unknown model {', '.join(map(_with_close_match, unknown))}; {_valid_names()}"
        )


def _spec_for(name: str) -> ModelSpec:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if not _is_known(name):
        raise UnknownModelError(f"unknown model {_with_close_match(name)}; {_valid_names()}")
    architecture = name.removeprefix("timm:")
    if not name.startswith("timm:") and name not in _WARNED_UNREGISTERED:
        # A project model whose module cxr14.models forgets to import would land here silently.
        # Once per process and name: a stage or benchmark builds the same model several times.
        _WARNED_UNREGISTERED.add(name)
        log.warning(
            "model %r is not registered; building timm's architecture of that name. If it is a project "
            "model, import its module in cxr14.models; if timm's is meant, write timm:%s",
            name,
            name,
        )
    return ModelSpec(
        partial(_create_plain_timm, architecture),
        in_chans=3,
        mean=None,
        std=None,
        pretrained=False,
        timm_weights=True,
        description=f"timm architecture {architecture}",
    )


def build_model(
    name: str,
    num_classes: int,
    image_size: int,
    pretrained: bool | str = "auto",
    pretrained_path: str | None = None,
    freeze_backbone: bool = False,
) -> ModelBundle:
    """Build `name`: a registered project model, or a timm architecture (``timm:`` optional).

    Args:
        name: registered name, timm architecture, or ``timm:<architecture>``.
        num_classes: logits the model outputs.
        image_size: square input side in pixels.
        pretrained: True, False or "auto" (see :func:`resolve_pretrained`).
        pretrained_path: weights file to start from; takes precedence over `pretrained`.
        freeze_backbone: train only the classifier head (see :func:`freeze_all_but_head`).

    Raises:
        UnknownModelError: neither registered nor known to timm; lists the valid names.
        ValueError: `pretrained` is not True, False or "auto".
        PretrainedWeightsError: the weights file is missing or does not fit, or published weights
            cannot be fetched; the message says how to provide them.
    """
    spec = _spec_for(name)
    want_published = resolve_pretrained(name, pretrained)
    weights_file = None
    if pretrained_path is not None:
        weights_file = Path(pretrained_path)
        if not weights_file.is_file():
            raise PretrainedWeightsError(
                f"{name}: pretrained weights file {str(weights_file)!r} does not exist "
                "(check train.pretrained_path, or its train.overrides.<model>.pretrained_path)"
            )
    if spec.timm_weights:
        model, weights = _build_timm_backed(name, spec, num_classes, image_size, want_published, weights_file)
    else:
        model, weights = _build_from_scratch(name, spec, num_classes, image_size, want_published, weights_file)
    if freeze_backbone:
        freeze_all_but_head(model, name)
    mean, std = spec.mean, spec.std
    if mean is None or std is None:
        import timm

        data_config = timm.data.resolve_model_data_config(model)
        mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    bundle = ModelBundle(name, model, spec.in_chans, tuple(mean), tuple(std), weights)
    if weights_file is not None:
        _check_recorded_input(bundle, weights_file)
    return bundle


def _check_recorded_input(bundle: ModelBundle, path: Path) -> None:
    """Refuse one of our checkpoints whose weights learned on other input than `bundle` is fed.

    train@'s best.pt records it (ModelBundle.input_record); timm/torchvision files carry none.
    The file is memory-mapped, so reading the record again costs no weights.
    """
    if path.suffix == ".safetensors":
        return
    try:
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # torch's legacy (non-zip) format cannot be mapped: not one of ours
        return
    recorded = checkpoint.get("input") if isinstance(checkpoint, Mapping) else None
    expected = bundle.input_record()
    if isinstance(recorded, Mapping) and dict(recorded) != expected:
        raise PretrainedWeightsError(
            f"{bundle.name}: the weights in {str(path)!r} were trained on input with in_chans/mean/std "
            f"{recorded.get('in_chans')}/{recorded.get('mean')}/{recorded.get('std')}, but this version feeds "
            f"{bundle.name} {expected['in_chans']}/{expected['mean']}/{expected['std']}: every layer would see "
            "input unlike what it learned on. Retrain them with this version, or train from scratch "
            "(train.pretrained_path)"
        )


def _build_from_scratch(
    name: str, spec: ModelSpec, num_classes: int, image_size: int, want_published: bool, weights_file: Path | None
) -> tuple[nn.Module, str | None]:
    if weights_file is None and want_published:
        raise PretrainedWeightsError(
            f"no published weights exist for {name}; give train.pretrained_path or set train.pretrained: false"
        )
    model = spec.builder(num_classes=num_classes, image_size=image_size)
    if weights_file is None:
        return model, None
    _load_exactly(model, read_state_dict(weights_file), name, weights_file)
    return model, str(weights_file)


def _build_timm_backed(
    name: str, spec: ModelSpec, num_classes: int, image_size: int, want_published: bool, weights_file: Path | None
) -> tuple[nn.Module, str | None]:
    build = partial(spec.builder, num_classes=num_classes, image_size=image_size)
    if weights_file is not None:
        state_dict = read_state_dict(weights_file)
        model = build(pretrained=False, pretrained_file=None)
        if _fits_exactly(model, state_dict):
            # A checkpoint of this very model (e.g. an earlier run's best.pt): keep its head too.
            model.load_state_dict(state_dict)
            return model, str(weights_file)
        _refuse_unless_backbone_fits(model, state_dict, name, weights_file)
        try:
            model = build(pretrained=True, pretrained_file=str(weights_file))
        except _FETCH_ERRORS as error:
            raise PretrainedWeightsError(
                f"{name}: timm could not load {str(weights_file)!r} ({error}); the file must hold "
                f"weights of the {name} architecture (train.pretrained_path)"
            ) from error
        return model, str(weights_file)
    if not want_published:
        return build(pretrained=False, pretrained_file=None), None
    try:
        model = build(pretrained=True, pretrained_file=None)
    except _FETCH_ERRORS as error:
        raise PretrainedWeightsError(
            f"{name}: could not fetch its pretrained weights through timm ({type(error).__name__}: {error}). "
            "Provide them in one of three ways: (1) run once on a machine with internet so timm caches "
            "them in the Hugging Face cache (HF_HOME, default ~/.cache/huggingface) and copy that cache "
            f"here; (2) set train.overrides.{name}.pretrained_path: /path/to/weights.(pth|safetensors); "
            "(3) set train.pretrained: false to train from scratch."
        ) from error
    return model, _published_tag(model)


def _published_tag(model: nn.Module) -> str:
    config = getattr(model, "pretrained_cfg", None) or {}
    architecture = config.get("architecture", type(model).__name__)
    tag = config.get("tag")
    return f"timm:{architecture}.{tag}" if tag else f"timm:{architecture}"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights in `path`: a raw state dict, or a checkpoint holding one under "model"/"state_dict".

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load`` in
    weights-only mode. Wrapper prefixes ("module.", "_orig_mod.") are stripped.

    Raises:
        PretrainedWeightsError: the file cannot be read safely or holds no state dict.
    """
    path = Path(path)
    checkpoint: object
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint = load_file(str(path))
        else:
            with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise PretrainedWeightsError(
            f"cannot read weights from {str(path)!r} ({type(error).__name__}: {error}); save them with "
            "torch.save(model.state_dict(), path) or as .safetensors (train.pretrained_path)"
        ) from error
    if isinstance(checkpoint, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise PretrainedWeightsError(
            f"{str(path)!r} holds no state dict (expected name -> tensor, possibly under 'model' or "
            "'state_dict'); check train.pretrained_path"
        )
    state_dict = {}
    for key, tensor in checkpoint.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        state_dict[key] = tensor
    return state_dict


def _key_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    return missing, unexpected, wrong_shape


def _fits_exactly(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    return not any(_key_mismatch(model, state_dict))


def _load_exactly(model: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str, path: Path) -> None:
    missing, unexpected, wrong_shape = _key_mismatch(model, state_dict)
    if missing or unexpected or wrong_shape:
        shown = 4
        raise PretrainedWeightsError(
            f"{name}: weights in {str(path)!r} do not fit the model ({len(missing)} missing keys, e.g. "
            f"{missing[:shown]}; {len(unexpected)} unexpected, e.g. {unexpected[:shown]}; {len(wrong_shape)} "
            f"of the wrong shape, e.g. {wrong_shape[:shown]}). train.pretrained_path must come from the same "
            "architecture, built with the same image_size and number of classes"
        )
    model.load_state_dict(state_dict)


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier that timm drops from a file of another class count.

    They are the modules named by the model's ``pretrained_cfg["classifier"]`` ("fc" for ResNets,
    "head.fc" for ConvNeXt, ...), else the module returned by ``get_classifier()``.
    """
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        get_classifier = getattr(model, "get_classifier", None)
        classifier = get_classifier() if callable(get_classifier) else None
        names = tuple(
            module_name
            for module_name, module in model.named_modules()
            if classifier is not None and module is classifier and module_name
        )
    return {key for key in model.state_dict() if any(key.startswith(f"{name}.") for name in names)}


def _refuse_unless_backbone_fits(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str, path: Path
) -> None:
    """Raise PretrainedWeightsError unless the file holds every tensor of the model's body.

    timm loads non-strictly once it has dropped a classifier, so a file of another architecture
    (or of a smaller sibling, resnet18 for resnet34) would leave some or all layers at their random
    init while the run records the file as its weights. Only the classifier head may be absent
    (it is replaced for our classes); the file may hold more (its own head, timm's pre-logits).
    Tensors present under the right name but with another shape make timm's load fail, unless
    timm adapts them (ViT position embeddings at another image size).
    """
    target = getattr(model, "backbone", model)  # TransferNet: timm loads the file into its backbone
    head = _classifier_keys(target)
    body = [key for key in target.state_dict() if key not in head and not key.endswith("num_batches_tracked")]
    missing = [key for key in body if key not in state_dict]
    if not missing and body:
        return
    shown = 3
    matched = len(body) - len(missing)
    raise PretrainedWeightsError(
        f"{name}: weights in {str(path)!r} do not fit the model: {len(missing)} of its {len(body)} tensors "
        f"outside the classifier head are missing from the file (e.g. {missing[:shown]}), {matched} "
        f"found; the file holds {len(state_dict)} tensors, e.g. {list(state_dict)[:shown]}. "
        f"train.pretrained_path (or train.overrides.{name}.pretrained_path) must hold {name} weights under "
        "timm's parameter names; only the classifier head may differ"
    )


def _head_of(model: nn.Module, name: str) -> nn.Module:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        return head
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier) and isinstance(get_classifier(), nn.Module):
        return get_classifier()
    raise ConfigError(
        f"{name}: freeze_backbone needs a classifier head (model.head or timm's get_classifier()) and "
        f"{type(model).__name__} has neither; set train.freeze_backbone: false for this model"
    )


def freeze_all_but_head(model: nn.Module, name: str) -> None:
    """Set ``requires_grad=False`` on every parameter outside the head.

    The head is ``model.head`` when it is a module, else timm's ``model.get_classifier()``.

    Raises:
        ValueError: the model has no recognisable head.
    """
    head_parameters = {id(parameter) for parameter in _head_of(model, name).parameters()}
    for parameter in model.parameters():
        if id(parameter) not in head_parameters:
            parameter.requires_grad_(False)


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except that BatchNorms whose parameters are all frozen stay in eval mode.

    A frozen BatchNorm then normalises with its stored running statistics, as Keras does for
    non-trainable layers; updating those statistics from X-ray batches would shift the features
    the frozen layers after it were trained on. BatchNorms without affine parameters cannot be
    told apart and stay in train mode.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            parameters = list(module.parameters())
            if parameters and not any(parameter.requires_grad for parameter in parameters):
                module.eval()
