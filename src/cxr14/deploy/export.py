"""Export a trained model as TorchScript and ONNX, with its preprocessing written down as data.

    bundle, image_size = load_trained(Path("models/resnet18/seed-42"), "resnet18", torch.device("cpu"))
    images, _ = open_split(Path("data/cache"), "test")
    record = export_model(bundle, image_size, preprocess_size=224, out_dir=Path("export/resnet18"),
                          check_images=images[:8])
    # export/resnet18/: model.ts, model.onnx, preprocessing.json, export.json

The exported files hold the network only: float32 ``[batch, in_chans, image_size, image_size]``
in, 15 logits in :data:`cxr14.labels.LABELS` order out; the batch size is free, the image size is
the one the model was trained at. Everything before the network (decoding, the cache's resize,
scaling, the second resize, channel repetition, normalisation) is `preprocessing.json`, written
by :func:`preprocessing_contract` from the same values :func:`cxr14.data.loader.prepare_batch`
uses; both model files carry a copy too (ONNX metadata ``cxr14.preprocessing``, TorchScript extra
file ``preprocessing.json``), so a model file alone is enough to use it.

:func:`export_model` writes all four files or none (a staging folder renamed into place). Given
cache pixels it first proves the files compute what the PyTorch model computes: TorchScript
(``torch.jit.load``) and onnxruntime (CPU) score the images at two batch sizes, through
``prepare_batch``, and a logit further from PyTorch's than :data:`LOGIT_TOLERANCE` x max(1,
largest |logit|) raises :class:`ExportParityError`, leaving no export behind.

Every registered model exports in both formats (checked at 64 px and at 224 px, EfficientNet-B4
at 380 px). A model that does not (an arbitrary timm name, or one whose weights exceed ONNX's
2 GB file limit, such as ``cnn`` at 1024 px) raises :class:`ExportError` naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr14.config import ConfigError
from cxr14.data.loader import prepare_batch
from cxr14.errors import Cxr14Error, InputDataError
from cxr14.io import atomic_directory, atomic_write_bytes, atomic_write_json
from cxr14.labels import LABELS, NUM_CLASSES
from cxr14.models import ModelBundle

__all__ = [
    "CONTRACT_FORMAT",
    "CONTRACT_VERSION",
    "LOGIT_TOLERANCE",
    "ExportError",
    "ExportParityError",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "check_parity",
    "preprocessing_contract",
]

log = logging.getLogger(__name__)

CONTRACT_FORMAT = "cxr14-preprocessing"
CONTRACT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
ONNX_METADATA_KEY = "cxr14.preprocessing"
TORCHSCRIPT_EXTRA_FILE = "preprocessing.json"
FILES = {"torchscript": "model.ts", "onnx": "model.onnx", "contract": "preprocessing.json", "record": "export.json"}
# The batch the models are traced with: not 1, which torch.export would fix as a constant.
_EXAMPLE_BATCH = 2
# Logs every data-dependent value torch.export meets, with the graph, at WARNING.
_SYMBOLIC_SHAPES = "torch.fx.experimental.symbolic_shapes"
# protobuf cannot serialise an ONNX file of 2 GiB or more with the weights inside.
_ONNX_MAX_BYTES = 2**31 - 1

# Allowed |logit difference| between an exported file and the PyTorch model, per unit of the
# largest |PyTorch logit| (absolute below 1): the formats run the same float32 maths, but
# onnxruntime's fused and reordered kernels (convolutions, GEMMs, LayerNorm, erf) round
# differently, and rounding errors grow with the values. Measured by export_model on 8 phantom
# radiographs (batches 8 and 1, CPU, torch 2.14.1, onnxruntime 1.32.0, opset 20), every
# registered model at 128 px (five also at 64 px: alike), random weights (torch seed 0) and again with the
# classifier weights x30 for trained-like logits up to +-39:
#   TorchScript: 0.0 for every model (the same kernels as PyTorch);
#   onnxruntime, |logit| <= 1.3: at most 2.0e-6 (vit_b16; mobilenetv2_100 1.6e-6; all others <= 5e-7);
#   onnxruntime, large logits: vit_b16 4.9e-5 at 38.9, mobilenetv2_100 4.4e-5 at 38.1, densenet121
#   1.9e-5 at 25.9, convnextv2_seed 5.3e-6 at 10.3; at most 1.6e-6 per unit of the largest logit.
# An absolute 1e-4 would leave confident models a margin of 2; 1e-4 x max(1, largest |logit|)
# leaves at least 60, and one altered classifier weight (the smallest real fault) is far beyond it.
LOGIT_TOLERANCE = 1e-4


class ExportError(Cxr14Error, RuntimeError):
    """A model cannot be exported in a format; the message names the model and what to do."""


class ExportParityError(ExportError):
    """An exported file computes logits further from the PyTorch model's than the tolerance."""


def preprocessing_contract(bundle: ModelBundle, image_size: int, preprocess_size: int) -> dict[str, Any]:
    """What a consumer must do to feed the exported network, as JSON-ready data.

    The steps are exactly those of the cache (``cxr14.data.cache``) followed by
    :func:`cxr14.data.loader.prepare_batch` without augmentation, with this model's values.

    Args:
        bundle: the model; its name, input channels and normalisation are recorded.
        image_size: the side of the network's input (the size the model was trained at).
        preprocess_size: the side of the cached images (``preprocess.size``).

    Raises:
        ConfigError: `image_size` exceeds `preprocess_size` (the project never upsamples).
    """
    _check_sizes(bundle.name, image_size, preprocess_size)
    mean, std = _per_channel(bundle.mean, bundle.in_chans), _per_channel(bundle.std, bundle.in_chans)
    return {
        "format": CONTRACT_FORMAT,
        "format_version": CONTRACT_VERSION,
        "architecture": bundle.name,
        "weights": bundle.weights,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", bundle.in_chans, image_size, image_size],
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", NUM_CLASSES],
            "kind": "logits",
            "labels": list(LABELS),
            "probabilities": "sigmoid(logits), independently per label (multi-label)",
        },
        "preprocessing": _steps(image_size, preprocess_size, bundle.in_chans, mean, std),
    }


def _check_sizes(name: str, image_size: int, preprocess_size: int) -> None:
    if image_size > preprocess_size:
        raise ConfigError(
            f"{name}: image_size {image_size} exceeds the cache size (preprocess.size) {preprocess_size}; the model "
            "would see upsampled images; export with the preprocess.size the model was trained on"
        )


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    """`values` for each of `channels` (one value is broadcast to all, as prepare_batch does)."""
    if len(values) == channels:
        return [float(value) for value in values]
    if len(values) == 1:
        return [float(values[0])] * channels
    raise ValueError(f"{len(values)} normalisation values for {channels} input channels")


def _steps(image_size: int, preprocess_size: int, in_chans: int, mean: list[float], std: list[float]) -> list[dict]:
    steps: list[dict[str, Any]] = [
        {
            "op": "decode_gray8",
            "description": "read the radiograph as one 8-bit gray channel: a colour image becomes gray by "
            "cv2.cvtColor (COLOR_BGR2GRAY, or COLOR_BGRA2GRAY with alpha); a 16-bit image keeps its high byte "
            "(value >> 8)",
        },
        {
            "op": "resize",
            "size": [preprocess_size, preprocess_size],
            "method": "cv2.INTER_AREA",
            "description": f"cv2.resize(image, ({preprocess_size}, {preprocess_size}), interpolation=cv2.INTER_AREA) "
            "unless already that size; the aspect ratio is not kept; the result stays uint8 (the cache)",
        },
        {"op": "scale", "divide_by": 255.0, "dtype": "float32", "description": "float32(pixel) / 255 -> [0, 1]"},
    ]
    if image_size != preprocess_size:
        steps.append(
            {
                "op": "resize",
                "size": [image_size, image_size],
                "method": "torch.nn.functional.interpolate(mode='area')",
                "description": "adaptive average pooling: output pixel i (per axis) is the plain mean of input "
                f"pixels floor(i * {preprocess_size} / {image_size}) .. ceil((i + 1) * {preprocess_size} / "
                f"{image_size}) - 1",
            }
        )
    if in_chans != 1:
        steps.append(
            {"op": "repeat_channels", "channels": in_chans, "description": f"copy the gray channel {in_chans} times"}
        )
    steps.append({"op": "normalize", "mean": mean, "std": std, "description": "per channel c: (x - mean[c]) / std[c]"})
    return steps


@contextlib.contextmanager
def _on_cpu_for_export(model: nn.Module) -> Iterator[nn.Module]:
    """`model` on the CPU in eval mode, under no_grad; afterwards its device and every module's
    train/eval flag are restored (set_train_mode keeps frozen BatchNorms in eval mode)."""
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    modes = {module: module.training for module in model.modules()}
    model.cpu().eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.to(device)
        for module, training in modes.items():
            module.training = training


def _example_input(bundle: ModelBundle, image_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(_EXAMPLE_BATCH, bundle.in_chans, image_size, image_size, generator=generator)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporters: deprecation notes, tracer warnings, progress logging, and the graphs
    torch.export prints to stderr when a capture strategy fails before another succeeds (logged at
    DEBUG level instead)."""
    names = (
        *("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", _SYMBOLIC_SHAPES),
        *("onnxscript", "onnx_ir"),  # onnx_ir: the optimiser's passes log every initializer they merge
    )
    noisy = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in noisy]
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        warnings.simplefilter("ignore")
        for logger in noisy:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(noisy, levels):
                logger.setLevel(level)
            if printed.getvalue().strip():
                log.debug("exporter output:\n%s", printed.getvalue())


def export_torchscript(bundle: ModelBundle, image_size: int, path: Path, *, contract: dict | None = None) -> Path:
    """Trace the model on the CPU in eval mode and save it atomically as TorchScript.

    Args:
        bundle: the model (left on its device and in its mode).
        image_size: input side; the traced model takes any batch size at this size.
        path: the file to write (written under a temporary name, then renamed).
        contract: :func:`preprocessing_contract`, stored as the extra file ``preprocessing.json``.

    Raises:
        ExportError: tracing fails; names the model.
    """
    example = _example_input(bundle, image_size)
    with _on_cpu_for_export(bundle.model) as model, _quiet_export():
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as error:  # the tracer raises anything the model code can
            raise ExportError(
                f"{bundle.name}: TorchScript tracing failed ({type(error).__name__}: {_first_line(error)}); "
                "use the ONNX export, or make the model traceable"
            ) from error
    extra = {TORCHSCRIPT_EXTRA_FILE: json.dumps(contract, sort_keys=True)} if contract is not None else {}
    buffer = io.BytesIO()
    with _quiet_export():
        torch.jit.save(traced, buffer, _extra_files=extra)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no message"


def export_onnx(
    bundle: ModelBundle, image_size: int, path: Path, opset: int | None = None, *, contract: dict | None = None
) -> Path:
    """Export through ``torch.onnx.export(dynamo=True)`` with a free batch dimension, weights inside.

    The graph's input is ``image`` (float32 [batch, in_chans, image_size, image_size]), its
    output ``logits`` (float32 [batch, 15]).

    Args:
        bundle: the model (left on its device and in its mode).
        image_size: input side (fixed in the graph).
        path: the file to write (atomically).
        opset: ONNX opset; None takes the exporter's default (recorded in the file).
        contract: :func:`preprocessing_contract`, stored as metadata ``cxr14.preprocessing``.

    Raises:
        ExportError: the exporter fails, the weights exceed ONNX's 2 GB limit, or the graph does
            not have the expected input, output or free batch dimension; names the model.
    """
    _check_onnx_size(bundle)
    example = _example_input(bundle, image_size)
    batch = torch.export.Dim("batch", min=1)
    with _on_cpu_for_export(bundle.model) as model, _quiet_export():
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
        except Exception as error:  # torch.export and the translation raise many types
            raise ExportError(
                f"{bundle.name}: ONNX export failed ({type(error).__name__}: {_first_line(error)}); use the "
                "TorchScript export, or another opset (export_onnx(opset=...))"
            ) from error
    if program is None:  # only the legacy exporter returns None
        raise ExportError(f"{bundle.name}: torch.onnx.export returned no ONNX program")
    proto = program.model_proto
    _check_onnx_graph(bundle.name, proto)
    if contract is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(contract, sort_keys=True)
    atomic_write_bytes(Path(path), proto.SerializeToString())
    return Path(path)


def _check_onnx_size(bundle: ModelBundle) -> None:
    tensors = [*bundle.model.parameters(), *bundle.model.buffers()]
    size = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    if size >= _ONNX_MAX_BYTES:
        raise ExportError(
            f"{bundle.name}: its weights take {size / 1e9:.2f} GB, beyond the 2 GB an ONNX file can hold; "
            "use the TorchScript export (a smaller image_size shrinks models whose layers grow with it, e.g. cnn)"
        )


def _check_onnx_graph(name: str, proto: Any) -> None:
    """The graph takes `image` with a free batch axis and returns `logits` [batch, 15]."""
    inputs, outputs = list(proto.graph.input), list(proto.graph.output)
    if [value.name for value in inputs] != [INPUT_NAME] or [value.name for value in outputs] != [OUTPUT_NAME]:
        raise ExportError(
            f"{name}: the ONNX graph has inputs {[value.name for value in inputs]} and outputs "
            f"{[value.name for value in outputs]}, not ['{INPUT_NAME}'] and ['{OUTPUT_NAME}']"
        )
    batch_axis = inputs[0].type.tensor_type.shape.dim[0]
    if not batch_axis.dim_param:
        raise ExportError(
            f"{name}: the exporter fixed the ONNX batch size to {batch_axis.dim_value}; the model's forward "
            "must not depend on the batch size to be exported"
        )


def export_model(
    bundle: ModelBundle,
    image_size: int,
    preprocess_size: int,
    out_dir: Path,
    check_images: np.ndarray | None = None,
    tolerance: float = LOGIT_TOLERANCE,
    opset: int | None = None,
) -> dict[str, Any]:
    """Write ``model.ts``, ``model.onnx``, ``preprocessing.json`` and ``export.json`` into `out_dir`,
    all or none, after checking the exported files against the PyTorch model on `check_images`.

    Args:
        bundle: the trained model (left on its device and in its mode).
        image_size: the network's input side (the size it was trained at).
        preprocess_size: the cache's image side (``preprocess.size``).
        out_dir: the export folder; an earlier export there is replaced, any other content is refused.
        check_images: cache pixels, uint8 [N, preprocess_size, preprocess_size] (a few suffice), or
            None to skip the parity check (``export.json`` then records ``parity: null``).
        tolerance: allowed |logit difference| per unit of the largest |logit| (see LOGIT_TOLERANCE).
        opset: ONNX opset (None: the exporter's default).

    Returns:
        The record written as ``export.json``: architecture, sizes, file hashes, versions, parity.

    Raises:
        ExportParityError: an exported file's logits differ by more than the tolerance; no
            folder is written.
        ExportError: a format cannot be exported, or `out_dir` holds something else than an export.
        ConfigError: `image_size` exceeds `preprocess_size`.
        InputDataError: `check_images` is not uint8 [N, preprocess_size, preprocess_size].
    """
    contract = preprocessing_contract(bundle, image_size, preprocess_size)
    if check_images is not None:
        _check_images(bundle.name, check_images, preprocess_size)
    out_dir = Path(out_dir)
    _refuse_foreign_folder(out_dir)
    with atomic_directory(out_dir) as staging:
        export_torchscript(bundle, image_size, staging / FILES["torchscript"], contract=contract)
        export_onnx(bundle, image_size, staging / FILES["onnx"], opset, contract=contract)
        atomic_write_json(staging / FILES["contract"], contract)
        parity = None
        if check_images is not None:
            parity = check_parity(bundle, image_size, staging, check_images, tolerance)
        record = _record(bundle, image_size, preprocess_size, staging, parity)
        atomic_write_json(staging / FILES["record"], record)
    log.debug("exported %s to %s", bundle.name, out_dir)  # a stage's staging folder: it logs the final one
    return record


def _check_images(name: str, images: np.ndarray, preprocess_size: int) -> None:
    expected = f"uint8 [N, {preprocess_size}, {preprocess_size}] cache pixels"
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise InputDataError(f"{name}: check_images must be {expected}, got {got}; pass rows of the cache split")
    if images.ndim != 3 or images.shape[1:] != (preprocess_size, preprocess_size) or not len(images):
        raise InputDataError(
            f"{name}: check_images must be {expected}, got shape {list(images.shape)}; pass rows of a cache "
            "built at preprocess.size"
        )


def _refuse_foreign_folder(out_dir: Path) -> None:
    """The export replaces `out_dir` whole: only an earlier export (or nothing) may be there."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir}: exists and is not a folder; choose a new folder for the export")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / FILES["record"]).is_file():
        raise ExportError(
            f"{out_dir}: not empty and not an earlier export (no {FILES['record']}); exporting would delete its "
            "contents; choose an empty or new folder"
        )


def check_parity(
    bundle: ModelBundle, image_size: int, folder: Path, images: np.ndarray, tolerance: float = LOGIT_TOLERANCE
) -> dict[str, Any]:
    """Score `images` (uint8 cache pixels) with the PyTorch model, ``folder/model.ts`` and
    ``folder/model.onnx`` (onnxruntime, CPU), at batch N and batch 1, through ``prepare_batch``.

    Returns:
        Per format the largest |difference| of logits and of probabilities from PyTorch's, the
        tolerance, and the allowed logit difference: tolerance x max(1, largest |PyTorch logit|).

    Raises:
        ExportParityError: a format's logits differ by more than allowed (or are not finite).
    """
    pixels = torch.from_numpy(np.array(images)).unsqueeze(1)  # a copy: rows of the read-only cache map
    inputs = prepare_batch(pixels, bundle.in_chans, bundle.mean, bundle.std, image_size)
    batches = [inputs, inputs[:1]] if len(inputs) > 1 else [inputs]
    with _on_cpu_for_export(bundle.model) as model:
        references = [model(batch).float().numpy() for batch in batches]
    runners = {"torchscript": _torchscript_runner(folder / FILES["torchscript"]), "onnx": _onnx_runner(folder)}
    largest = max(float(np.abs(reference).max()) for reference in references)
    allowed = tolerance * max(1.0, largest)
    parity: dict[str, Any] = {
        "images": len(inputs),
        "batch_sizes": [len(batch) for batch in batches],
        "tolerance": tolerance,
        "reference_max_abs_logit": largest,
        "allowed_logit_difference": allowed,
    }
    for name, run in runners.items():
        outputs = [run(batch) for batch in batches]
        parity[name] = {
            "max_abs_logit_difference": _max_difference(outputs, references, lambda logits: logits),
            "max_abs_probability_difference": _max_difference(outputs, references, _sigmoid),
        }
    _raise_if_apart(bundle.name, parity, allowed)
    return parity


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def _max_difference(outputs: list[np.ndarray], references: list[np.ndarray], transform) -> float:
    differences = []
    for output, reference in zip(outputs, references):
        if output.shape != reference.shape:
            return float("inf")
        differences.append(float(np.abs(transform(output) - transform(reference)).max()))
    return max(differences)


_PARITY_HINTS = {
    "torchscript": "tracing fixed a value the model's Python code derives from its input (a branch on the data or "
    "the batch size): make the forward traceable, or use the ONNX file alone",
    "onnx": "the ONNX graph computes otherwise (an operator translated differently, or a value fixed at export): "
    "try another opset (export_onnx(opset=...)) or report it naming the model",
}


def _raise_if_apart(name: str, parity: dict[str, Any], allowed: float) -> None:
    for format_name in ("torchscript", "onnx"):
        difference = parity[format_name]["max_abs_logit_difference"]
        if not difference <= allowed:  # also catches NaN
            raise ExportParityError(
                f"{name}: the {format_name} export's logits differ from the PyTorch model's by up to {difference:.3g} "
                f"on {parity['images']} check images (allowed {allowed:.3g}: tolerance {parity['tolerance']:g} "
                f"x max(1, largest |logit|)); nothing was exported; {_PARITY_HINTS[format_name]}"
            )


def _torchscript_runner(path: Path):
    with _quiet_export():
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(batch).float().numpy()

    return run


def _onnx_runner(folder: Path):
    import onnxruntime  # type: ignore[import-untyped]  # ships no type information

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(folder / FILES["onnx"]), options, providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]

    return run


def _record(
    bundle: ModelBundle, image_size: int, preprocess_size: int, folder: Path, parity: dict | None
) -> dict[str, Any]:
    import onnx

    opsets = {entry.domain or "ai.onnx": entry.version for entry in onnx.load(str(folder / FILES["onnx"])).opset_import}
    files = {}
    for key in ("torchscript", "onnx", "contract"):
        payload = (folder / FILES[key]).read_bytes()
        files[FILES[key]] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    return {
        "architecture": bundle.name,
        "weights": bundle.weights,
        "image_size": image_size,
        "preprocess_size": preprocess_size,
        "contract_version": CONTRACT_VERSION,
        "files": files,
        "onnx_opset": opsets.get("ai.onnx"),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": version("onnxruntime")},
        "parity": parity,
    }
