"""Grad-CAM for any model in the registry, and how well its maps point at NIH boxes.

    taps = find_taps(bundle, image_size, device)          # which layer, which classifier
    maps = grad_cam(bundle, taps, pixels, classes, image_size, device)   # [n, S, S] in 0..1
    scores = localisation_scores(maps_by_box, boxes, threshold=0.5)

Grad-CAM (Selvaraju et al., 2017) weights the channels of the last spatial feature map by the
mean gradient of the class logit and keeps the positive part. No model is edited for it. Every
registered model, and every timm model, has timm's interface: ``forward_features`` gives the
last feature map — channels-first [N, C, h, w] (CNNs, ConvNeXt, the transfer backbones) or a
token sequence [N, T, C] whose last g*g tokens form a grid (ViTs; leading class/register tokens
are dropped) — ``forward_head`` turns it into the logits, and ``forward_head(pre_logits=True)``
gives the penultimate embedding, the input of ``get_classifier()`` (see
cxr14.evaluation.embeddings). Two cases fall back to hooks on every module: models without the
interface, and models whose forward_features output does not reach the logits at its image
positions (a ViT that pools its class token); the hooks find, by execution order, the last
spatial module output the logits depend on, and the last Linear with the class logits. Maps
are returned at the cache resolution S, so they compare directly with boxes in cache pixels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cxr14.data.loader import prepare_batch
from cxr14.errors import Cxr14Error
from cxr14.labels import LABELS, NUM_CLASSES
from cxr14.models import ModelBundle

MAX_PREFIX_TOKENS = 8  # class + register tokens a ViT may put before its patch tokens


class ExplainError(Cxr14Error, RuntimeError):
    """The model has no layer Grad-CAM or the embedding extraction can use."""


@dataclass(frozen=True)
class ModelTaps:
    """Where to read a model: its last spatial layer and its output Linear.

    Attributes:
        feature_layer: module name whose output Grad-CAM weights.
        layout: "channels_first" ([N, C, h, w]) or "tokens" ([N, T, C]).
        prefix_tokens: leading non-patch tokens to drop (tokens layout only).
        classifier_layer: the Linear producing the logits; its input is the embedding.
        embedding_dim: width of that input.
        from_interface: the feature map is ``model.forward_features(x)`` and the logits are
            ``model.forward_head`` of it (`feature_layer` then names the module whose output that
            map is); otherwise a hook on `feature_layer` reads it.
    """

    feature_layer: str
    layout: str
    prefix_tokens: int
    classifier_layer: str
    embedding_dim: int
    from_interface: bool = False


def has_model_interface(model: nn.Module) -> bool:
    """The model has timm's ``forward_features`` and ``forward_head(x, pre_logits)``."""
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


def _token_prefix(tokens: int) -> int | None:
    """Leading tokens before a square patch grid, or None when no grid fits."""
    grid = math.isqrt(tokens)
    prefix = tokens - grid * grid
    return prefix if grid > 1 and prefix <= MAX_PREFIX_TOKENS else None


def _spatial_kind(output) -> tuple[str, int] | None:
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    if output.ndim == 4 and output.shape[2] == output.shape[3] > 1:  # inputs are square, so are maps
        return "channels_first", 0
    if output.ndim == 3:
        prefix = _token_prefix(output.shape[1])
        if prefix is not None:
            return "tokens", prefix
    return None


def _inside_attention(name: str, modules: dict[str, nn.Module]) -> bool:
    """True for the internals of an attention module (its [heads, tokens, tokens] maps are not images)."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        parent = modules.get(".".join(parts[:depth]))
        if isinstance(parent, nn.MultiheadAttention) or "Attention" in type(parent).__name__:
            return True
    return False


def _spatial_gradient(gradient: torch.Tensor | None, kind: str, prefix: int) -> float:
    if gradient is None:
        return 0.0
    return float(gradient[:, prefix:].abs().sum() if kind == "tokens" else gradient.abs().sum())


def _noise_inputs(bundle: ModelBundle, image_size: int, device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (1, 1, image_size, image_size), generator=generator, dtype=torch.uint8)
    return prepare_batch(noise.to(device), bundle.in_chans, bundle.mean, bundle.std, image_size)


def find_taps(bundle: ModelBundle, image_size: int, device: torch.device, seed: int = 0) -> ModelTaps:
    """Choose where to read the model, from one noise image.

    With timm's interface the feature map is ``forward_features``, provided its image positions
    move the logits, and the embedding is ``forward_head(pre_logits=True)``. Otherwise (see
    :func:`_find_taps_by_hooks`) hooks on every module choose.

    Raises:
        ExplainError: no spatial layer the logits depend on, or no classifier with NUM_CLASSES outputs.
    """
    if has_model_interface(bundle.model):
        taps = _find_taps_by_interface(bundle, image_size, device, seed)
        if taps is not None:
            return taps
    return _find_taps_by_hooks(bundle, image_size, device, seed)


@contextlib.contextmanager
def _recording(model: nn.Module) -> Iterator[tuple[list[tuple[str, nn.Module, Any]], Callable[[], None]]]:
    """`model` in eval mode with a forward hook on every named module: yields the list the hooks fill
    with (name, module, output) in completion order, and a function that removes the hooks early.
    Hooks and the training mode are restored on exit, whatever happens."""
    completed: list[tuple[str, nn.Module, Any]] = []
    hooks = [
        module.register_forward_hook(lambda mod, args, out, name=name: completed.append((name, mod, out)))
        for name, module in model.named_modules()
        if name
    ]

    def stop() -> None:
        for hook in hooks:
            hook.remove()

    was_training = model.training
    model.eval()
    try:
        yield completed, stop
    finally:
        stop()
        model.train(was_training)


def _find_taps_by_interface(bundle: ModelBundle, image_size: int, device: torch.device, seed: int) -> ModelTaps | None:
    """Taps on ``forward_features``/``forward_head``; None when that map is not spatial or the
    logits do not depend on its image positions."""
    model: Any = bundle.model  # timm's forward_features/forward_head are not on nn.Module's type
    # Hooks only name the module whose output the feature map is (for the record), they choose nothing.
    with _recording(model) as (completed, stop_recording):
        inputs = _noise_inputs(bundle, image_size, device, seed)
        with torch.enable_grad():
            features = model.forward_features(inputs.requires_grad_(True))
            stop_recording()
            kind = _spatial_kind(features)
            if kind is None or not features.requires_grad:
                return None
            embedding = model.forward_head(features, pre_logits=True)
            logits = model.forward_head(features).float()
            (gradient,) = torch.autograd.grad(logits.sum(), features, allow_unused=True)
    if _spatial_gradient(gradient, *kind) == 0:
        return None
    if logits.shape[-1] != NUM_CLASSES:
        raise ExplainError(f"{bundle.name}: forward_head gives {logits.shape[-1]} outputs, not {NUM_CLASSES}")
    feature_layer = next((name for name, _, out in reversed(completed) if out is features), "forward_features")
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    classifier_layer = next(
        (name for name, module in model.named_modules() if name and module is classifier), "forward_head"
    )
    layout, prefix = kind
    return ModelTaps(
        feature_layer, layout, prefix, classifier_layer, embedding.flatten(1).shape[1], from_interface=True
    )


def _find_taps_by_hooks(bundle: ModelBundle, image_size: int, device: torch.device, seed: int) -> ModelTaps:
    """Run one noise image through the model with hooks on every module and choose the taps.

    The feature layer is the last spatial output (in completion order, attention internals
    excluded) whose image positions still move the logits: in a ViT that pools its class
    token, the patch tokens after the last attention no longer matter, so the choice falls
    on the last block's attention input, where Grad-CAM on ViTs is usually taken. The
    classifier is the last Linear run with NUM_CLASSES outputs.
    """
    model = bundle.model
    modules = dict(model.named_modules())
    with _recording(model) as (completed, _):
        inputs = _noise_inputs(bundle, image_size, device, seed)
        with torch.enable_grad():
            logits = model(inputs.requires_grad_(True)).float()
            candidates = [
                (name, out, kind)
                for name, _, out in completed
                if (kind := _spatial_kind(out)) is not None
                and not _inside_attention(name, modules)
                and out.requires_grad
            ]
            gradients = (
                torch.autograd.grad(logits.sum(), [out for _, out, _ in candidates], allow_unused=True)
                if candidates
                else ()
            )
    spatial = [
        (name, kind)
        for (name, _, kind), gradient in zip(candidates, gradients)
        if _spatial_gradient(gradient, *kind) > 0
    ]
    classifiers = [
        (name, module)
        for name, module, _ in completed
        if isinstance(module, nn.Linear) and module.out_features == NUM_CLASSES
    ]
    if not spatial:
        raise ExplainError(
            f"{bundle.name}: no layer with a spatial output (feature map or patch tokens) that the logits depend on"
        )
    if not classifiers:
        raise ExplainError(f"{bundle.name}: no Linear layer with {NUM_CLASSES} outputs (the classifier) was run")
    (feature_layer, (layout, prefix)), (classifier_layer, classifier) = spatial[-1], classifiers[-1]
    return ModelTaps(feature_layer, layout, prefix, classifier_layer, classifier.in_features)


def _module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def _as_grid(activations: torch.Tensor, taps: ModelTaps) -> torch.Tensor:
    """[N, C, h, w] whatever the layer's layout."""
    if taps.layout == "channels_first":
        return activations
    patches = activations[:, taps.prefix_tokens :, :]
    side = math.isqrt(patches.shape[1])
    return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


def grad_cam(
    bundle: ModelBundle, taps: ModelTaps, pixels: np.ndarray, classes: list[int], image_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps, one per image for the class given beside it, and that class's probability.

    Args:
        pixels: uint8 [n, S, S] cache images.
        classes: index into LABELS per image.

    Returns:
        (maps float32 [n, S, S], each scaled to a maximum of 1 (all zero when no location
        raises the logit); probabilities float32 [n]).
    """
    if len(pixels) != len(classes):
        raise ValueError(f"grad_cam: {len(pixels)} images but {len(classes)} classes")
    if len(pixels) == 0:
        return np.zeros((0,) + tuple(pixels.shape[1:]), np.float32), np.zeros(0, np.float32)
    model: Any = bundle.model  # timm's forward_features/forward_head are not on nn.Module's type
    model.eval()
    captured: dict[str, torch.Tensor] = {}
    hook = (
        None
        if taps.from_interface
        else _module(model, taps.feature_layer).register_forward_hook(
            lambda mod, args, out: captured.__setitem__("activations", out)
        )
    )
    side = pixels.shape[-1]
    try:
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(1).to(device)
        inputs = prepare_batch(batch, bundle.in_chans, bundle.mean, bundle.std, image_size)
        with torch.enable_grad():  # the input needs a gradient when the backbone is frozen
            if taps.from_interface:
                activations = model.forward_features(inputs.requires_grad_(True))
                logits = model.forward_head(activations).float()
            else:
                logits = model(inputs.requires_grad_(True)).float()
                activations = captured["activations"]
            chosen = logits[torch.arange(len(classes)), torch.as_tensor(classes, device=logits.device)]
            # Samples do not interact in eval mode, so one backward pass serves the batch.
            (gradients,) = torch.autograd.grad(chosen.sum(), activations)
    finally:
        if hook is not None:
            hook.remove()
    feature_grid, gradient_grid = _as_grid(activations.detach().float(), taps), _as_grid(gradients.float(), taps)
    weights = gradient_grid.mean(dim=(2, 3), keepdim=True)
    maps = F.relu((weights * feature_grid).sum(dim=1, keepdim=True))
    maps = F.interpolate(maps, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    peaks = maps.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    probabilities = torch.sigmoid(chosen.detach()).cpu().numpy().astype(np.float32)
    return (maps / peaks).clamp_(0, 1).cpu().numpy().astype(np.float32), probabilities


def _box_mask(box: pd.Series, side: int) -> np.ndarray:
    """Pixels whose centres lie inside the box (cache pixel coordinates)."""
    centres = np.arange(side) + 0.5
    inside_x = (centres >= box["x"]) & (centres <= box["x"] + box["w"])
    inside_y = (centres >= box["y"]) & (centres <= box["y"] + box["h"])
    return inside_y[:, None] & inside_x[None, :]


def is_empty_map(cam: np.ndarray) -> bool:
    """No location raises the logit: Grad-CAM's ReLU left nothing (the map is zero everywhere)."""
    return not cam.max() > 0


def box_scores(cam: np.ndarray, box: pd.Series, threshold: float) -> dict[str, float]:
    """Pointing game hit (the map's peak inside the box) and IoU of {cam >= threshold} with the box."""
    mask = _box_mask(box, cam.shape[0])
    peak_y, peak_x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    region = np.zeros_like(mask) if is_empty_map(cam) else cam >= threshold
    union = np.logical_or(region, mask).sum()
    return {
        "hit": float(mask[peak_y, peak_x]),
        "iou": float(np.logical_and(region, mask).sum() / union) if union else 0.0,
    }


def centre_baseline(box: pd.Series, side: int) -> float:
    """The pointing game of a model that always points at the image centre (the chance level to beat)."""
    return float(_box_mask(box, side)[side // 2, side // 2])


def localisation_scores(cams: np.ndarray, boxes: pd.DataFrame, threshold: float) -> dict:
    """Per finding and overall: pointing-game hit rate, mean IoU, centre-point baseline, box count,
    and how many maps were empty (no location raises the logit: a miss with IoU 0).

    Args:
        cams: [len(boxes), S, S], the map for each box's finding on its image.
        boxes: columns finding, x, y, w, h (cache pixels), one row per box.
    """
    if len(cams) != len(boxes):
        raise ValueError(f"localisation_scores: {len(cams)} maps for {len(boxes)} boxes")
    rows = []
    for cam, (_, box) in zip(cams, boxes.iterrows()):
        empty = is_empty_map(cam)
        scores = {"hit": 0.0, "iou": 0.0} if empty else box_scores(cam, box, threshold)
        rows.append(
            {"finding": box["finding"], **scores, "centre_hit": centre_baseline(box, cam.shape[0]), "empty": empty}
        )
    table = pd.DataFrame(rows, columns=["finding", "hit", "iou", "centre_hit", "empty"])

    def summary(part: pd.DataFrame) -> dict:
        return {
            "boxes": int(len(part)),
            "pointing_game": float(part["hit"].mean()),
            "mean_iou": float(part["iou"].mean()),
            "centre_baseline": float(part["centre_hit"].mean()),
            "empty_maps": int(part["empty"].sum()),
        }

    per_finding = {
        name: summary(table[table["finding"] == name]) for name in LABELS if (table["finding"] == name).any()
    }
    return {"overall": summary(table) if len(table) else None, "per_finding": per_finding, "cam_threshold": threshold}
