"""ImageNet architectures from timm: plain classifiers and the seed's Keras transfer recipe.

    bundle = build_model("densenet121", num_classes=15, image_size=224)          # fetches weights
    bundle = build_model("vgg16", 15, 224, pretrained_path="/data/vgg16.safetensors",
                         freeze_backbone=True)                                     # head only

Plain timm classifiers (timm's own head resized to the classes):

    resnet34     from scratch by design (pretrained: auto -> false); a file can still be given
    resnet18     the same, ResNet-34's smaller sibling: the demo's ResNet (params.yaml `models`)
    vit_b16      vit_base_patch16_224, ImageNet-21k pretrained and fine-tuned on 1k; built for
                 the run's image size (timm resamples the position embeddings when loading)
    densenet121  ImageNet-pretrained, CheXNet's architecture

Transfer models (:class:`TransferNet`), the seed's Keras recipe
(``Base(include_top=False)`` + pooling + Dropout .4 + Dense 1024 ReLU + Dense classes) over the
timm backbones efficientnet_b4, resnet50, densenet169, vgg16 and mobilenetv2_100.

All of them load weights through timm (``pretrained_cfg_overlay=dict(file=...)`` for a local
file) and take their normalisation from timm's pretrained config.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from cxr14.models.registry import create_timm_model, register

TRANSFER_BACKBONES = ("efficientnet_b4", "resnet50", "densenet169", "vgg16", "mobilenetv2_100")
TRANSFER_HIDDEN_UNITS = 1024
TRANSFER_DROPOUT = 0.4


class TransferNet(nn.Module):
    """A timm feature extractor plus the seed's transfer head.

    ``forward`` runs ``backbone.forward_features`` (the Keras ``include_top=False`` output) and
    then `head`: global average pool, Dropout .4, Linear C -> 1024, ReLU, Linear -> classes.
    timm's interface: ``forward_features``, ``forward_head(pre_logits=...)``, ``get_classifier``,
    ``reset_classifier``.

    Args:
        backbone: timm model created with ``num_classes=0, global_pool=''``.
        num_classes: logits out.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        # Only forward_features runs, so anything timm keeps for its own head is dead weight.
        # For vgg16 that is the pre_logits ConvMlp (fc6/fc7 as 7x7 and 1x1 convs, ~120 M
        # parameters), which Keras' include_top=False drops as well.
        if isinstance(getattr(backbone, "pre_logits", None), nn.Module):
            backbone.pre_logits = nn.Identity()
        self.backbone: Any = backbone  # a timm model: num_features, pretrained_cfg, forward_features
        channels = cast(int, backbone.num_features)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(TRANSFER_DROPOUT),
            nn.Linear(channels, TRANSFER_HIDDEN_UNITS),
            nn.ReLU(inplace=True),
            nn.Linear(TRANSFER_HIDDEN_UNITS, num_classes),
        )

    @property
    def pretrained_cfg(self) -> dict:
        """The backbone's timm config, so timm.data.resolve_model_data_config works on the wrapper."""
        return self.backbone.pretrained_cfg

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, [N, C, h, w] (what Grad-CAM weights)."""
        return self.backbone.forward_features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits of `features`; with `pre_logits` the 1024-d input of the last Linear (the embedding)."""
        embedding = self.head[:-1](features)
        return embedding if pre_logits else self.head[-1](embedding)

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh last Linear with `num_classes` outputs (0: none, the head ends at the embedding)."""
        self.head[-1] = nn.Linear(TRANSFER_HIDDEN_UNITS, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


def _register_transfer(architecture: str) -> None:
    @register(
        architecture,
        mean=None,
        std=None,
        pretrained=True,
        timm_weights=True,
        description=f"ImageNet {architecture} features + Dropout .4, Dense 1024 head (seed transfer recipe)",
    )
    def build(num_classes: int, image_size: int, pretrained: bool, pretrained_file: str | None) -> nn.Module:
        backbone = create_timm_model(architecture, pretrained, pretrained_file, num_classes=0, global_pool="")
        return TransferNet(backbone, num_classes)


for _architecture in TRANSFER_BACKBONES:
    _register_transfer(_architecture)


def _register_plain(name: str, pretrained: bool, description: str) -> None:
    """A timm classifier under its own name, timm's head resized to the classes."""

    @register(name, mean=None, std=None, pretrained=pretrained, timm_weights=True, description=description)
    def build(num_classes: int, image_size: int, pretrained: bool, pretrained_file: str | None) -> nn.Module:
        return create_timm_model(name, pretrained, pretrained_file, num_classes=num_classes)


_register_plain("resnet34", False, "timm resnet34 trained from scratch (21.3 M params)")
_register_plain("resnet18", False, "timm resnet18 trained from scratch (11.2 M params), the demo's ResNet")
_register_plain("densenet121", True, "timm DenseNet-121, ImageNet-pretrained (CheXNet's architecture)")


@register(
    "vit_b16",
    mean=None,
    std=None,
    pretrained=True,
    timm_weights=True,
    description="timm ViT-B/16, ImageNet-21k pretrained, fine-tuned on 1k (86 M params)",
)
def vit_b16(num_classes: int, image_size: int, pretrained: bool, pretrained_file: str | None) -> nn.Module:
    return create_timm_model(
        "vit_base_patch16_224", pretrained, pretrained_file, num_classes=num_classes, img_size=image_size
    )
