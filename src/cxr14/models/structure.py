"""Per-layer structure tables of PyTorch models, written to CSV (cxr14.reporting.workbook: XLSX).

    table = layer_table(timm.create_model("resnet18", num_classes=15), (3, 224, 224), "resnet18")
    write_layer_csv(table, Path("reports/structure/resnet18.csv"))

A table has one row per module that is a leaf or holds parameters of its own (for example a
class token registered directly on the model), in `named_modules()` order; parameter-free
nn.Identity placeholders are left out. Shapes come from
forward hooks during a single forward pass of a zero batch of one image and are written the
way Keras summaries write them, with the batch dimension as None: `(None, 64, 56, 56)`.
Because the first dimension is always written as None, a module whose input is not
batch-first (nn.MultiheadAttention with batch_first=False) shows None in its sequence position.

The `parameters` column counts each parameter once, at the first module that owns it, so the
column sums to the model's parameter count even when weights are tied between layers.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.modules import activation as torch_activation
from torch.nn.modules.dropout import _DropoutNd

from cxr14.io import atomic_write_text

COLUMNS = [
    "model",
    "layer_name",
    "layer_type",
    "input_shape",
    "output_shape",
    "parameters",
    "trainable",
    "kernel_size",
    "stride",
    "padding",
    "activation",
    "dropout_rate",
    "bias",
]
ROOT_LAYER_NAME = "(root)"

# Every activation class torch defines; MultiheadAttention lives in the same file but is a layer
# with weights, not an elementwise activation.
_TORCH_ACTIVATIONS = tuple(
    cls
    for _, cls in inspect.getmembers(torch_activation, inspect.isclass)
    if issubclass(cls, nn.Module) and cls.__module__ == torch_activation.__name__ and cls is not nn.MultiheadAttention
)
# timm keeps its own activation classes (Swish, HardSwish, GELUTanh, ...) in these modules; they
# are matched by module name so that this file does not need timm to be importable.
_TIMM_ACTIVATION_MODULES = ("timm.layers.activations",)


def layer_table(model: nn.Module, input_size: Sequence[int], model_name: str) -> pd.DataFrame:
    """One row per leaf module or module with its own parameters (nn.Identity placeholders skipped).

    Args:
        model: The network; it is run once in eval mode without gradients, and every module's
            training flag is put back afterwards.
        input_size: Shape of one input without the batch, usually (channels, height, width).
        model_name: Written into the `model` column of every row.

    Returns:
        A DataFrame with the columns in `COLUMNS`. Modules that the forward pass never called
        (for example the `out_proj` of nn.MultiheadAttention, whose weight is used through a
        functional call) have empty shape cells.

    Raises:
        ValueError: If `input_size` is empty or holds a non-positive or non-integer size.
        RuntimeError: If the forward pass fails (chained to the model's own error).
    """
    input_size = _validated_input_size(input_size)
    first_call_shapes = _record_first_call_shapes(model, input_size)
    counted_parameter_ids: set[int] = set()
    rows = []
    for name, module in model.named_modules():
        own_parameters = list(module.parameters(recurse=False))
        is_leaf = next(module.children(), None) is None
        if not (is_leaf or own_parameters):
            continue
        # Placeholders (timm puts nn.Identity where an optional norm/drop-path is switched off)
        # compute nothing; listing them would bury the real layers.
        if isinstance(module, nn.Identity) and not own_parameters:
            continue
        # A tied parameter belongs to the first module that owns it; later owners show 0.
        new_parameters = [p for p in own_parameters if id(p) not in counted_parameter_ids]
        counted_parameter_ids.update(id(p) for p in new_parameters)
        input_shape, output_shape = first_call_shapes.get(module, ("", ""))
        rows.append(
            {
                "model": model_name,
                "layer_name": name or ROOT_LAYER_NAME,
                "layer_type": type(module).__name__,
                "input_shape": input_shape,
                "output_shape": output_shape,
                "parameters": sum(p.numel() for p in new_parameters),
                "trainable": _trainable_state(own_parameters),
                "kernel_size": _size_text(module, "kernel_size"),
                "stride": _size_text(module, "stride"),
                "padding": _size_text(module, "padding"),
                "activation": _activation_name(module),
                "dropout_rate": _dropout_rate(module),
                "bias": _has_bias(module),
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["parameters"] = table["parameters"].astype("int64")
    table["dropout_rate"] = table["dropout_rate"].astype("float64")
    return table


def write_layer_csv(table: pd.DataFrame, path: Path) -> None:
    """Write one structure table to `path` as CSV (atomically; missing values become empty cells)."""
    atomic_write_text(Path(path), table.to_csv(index=False))


def _validated_input_size(input_size: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(input_size)
    if not sizes or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in sizes):
        raise ValueError(f"input_size must be positive integers such as (3, 224, 224), got {input_size!r}")
    return sizes


def _record_first_call_shapes(model: nn.Module, input_size: tuple[int, ...]) -> dict[nn.Module, tuple[str, str]]:
    """Run one forward pass and return (input shapes, output shapes) of each module's first call."""
    shapes: dict[nn.Module, tuple[str, str]] = {}

    def remember_first_call(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if module not in shapes:
            shapes[module] = (_shapes_text((args, kwargs)), _shapes_text(output))

    training_flags = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(remember_first_call, with_kwargs=True) for module in model.modules()]
    try:
        model.eval()
        reference = next(iter(_floating_tensors(model)), None)
        batch = torch.zeros(
            (1, *input_size),
            device=reference.device if reference is not None else None,
            dtype=reference.dtype if reference is not None else None,
        )
        with torch.no_grad():
            try:
                model(batch)
            except Exception as error:
                raise RuntimeError(
                    f"{type(model).__name__} failed on a zero batch of shape {tuple(batch.shape)}; layer_table "
                    f"calls model(batch) with one tensor, so pass input_size without the batch dimension"
                ) from error
    finally:
        for handle in handles:
            handle.remove()
        for module, was_training in training_flags.items():
            module.training = was_training
    return shapes


def _floating_tensors(model: nn.Module) -> Iterable[torch.Tensor]:
    """Parameters then buffers that are floating point: their device and dtype are the model's."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            yield tensor


def _shapes_text(value: Any) -> str:
    return "; ".join(_shape_text(tensor.shape) for tensor in _tensors_in(value))


def _tensors_in(value: Any) -> Iterable[torch.Tensor]:
    """Tensors inside nested tuples, lists and dicts, in order; None and other values are skipped."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors_in(item)


def _shape_text(shape: torch.Size) -> str:
    if len(shape) == 0:
        return "()"
    return "(" + ", ".join(["None", *(str(size) for size in shape[1:])]) + ")"


def _trainable_state(parameters: list[nn.Parameter]) -> bool | str | None:
    if not parameters:
        return None
    requiring_grad = sum(p.requires_grad for p in parameters)
    if requiring_grad == len(parameters):
        return True
    return False if requiring_grad == 0 else "partial"


def _size_text(module: nn.Module, attribute: str) -> str:
    """`kernel_size`/`stride`/`padding` as text: (3, 3) -> "3x3", "same" stays "same"."""
    value = getattr(module, attribute, None)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # MaxPool2d(3) stores the int 3 for a 3x3 window; repeat it by the dimensionality in the name.
        dimensions = re.search(r"([123])d", type(module).__name__, flags=re.IGNORECASE)
        return "x".join([str(value)] * int(dimensions.group(1))) if dimensions else str(value)
    if isinstance(value, (tuple, list)) and value and all(isinstance(item, int) for item in value):
        return "x".join(str(item) for item in value)
    return ""


def _activation_name(module: nn.Module) -> str:
    is_torch_activation = isinstance(module, _TORCH_ACTIVATIONS)
    is_timm_activation = type(module).__module__.startswith(_TIMM_ACTIVATION_MODULES)
    return type(module).__name__.lower() if is_torch_activation or is_timm_activation else ""


def _dropout_rate(module: nn.Module) -> float | None:
    if isinstance(module, _DropoutNd):
        return float(module.p)
    drop_probability = getattr(module, "drop_prob", None)  # timm DropPath / DropBlock
    if isinstance(drop_probability, (int, float)) and not isinstance(drop_probability, bool):
        return float(drop_probability)
    return None


def _has_bias(module: nn.Module) -> bool | None:
    """True/False for layers with a bias slot (Conv, Linear, norms); None for layers without one."""
    if not hasattr(module, "bias"):
        return None
    bias = module.bias
    if bias is None:
        return False
    return True if isinstance(bias, torch.Tensor) else None
