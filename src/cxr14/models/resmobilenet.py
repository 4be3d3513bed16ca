"""ResMobileNet (design note 002): a MobileNetV3 body, a ResNet bottleneck tail, an embedding head.

    model = build_model("resmobilenet_v2", num_classes=15, image_size=224).model
    logits = model(images)
    embeddings = model.forward_head(model.forward_features(images), pre_logits=True)  # (N, 512), unit L2 norm
    # timm's interface: forward_features (N, 160, H/32, W/32), forward_head(features, pre_logits),
    # get_classifier, reset_classifier

    stem   v1: MobileNet, Conv 3x3 stride 2, 3 -> 16, BN, Hardswish           (H/2, 16 channels)
           v2: ResNet, Conv 7x7 stride 2, 3 -> 64, BN, ReLU, MaxPool 3 stride 2 (H/4, 64 channels)
    mid    the 15 inverted-residual blocks of MobileNetV3-Large (torchvision's block)  -> H/32, 160
    tail   6 ResNet bottlenecks at constant width 160 (1x1 160->40, 3x3 40->40, 1x1 40->160)
    head   global average pool, Linear 160 -> 512, BatchNorm, ReLU, L2 normalise (the embedding),
           Linear 512 -> classes

Parameters with 15 classes (independent of the image size):
resmobilenet_v1 3,073,663 and resmobilenet_v2 3,083,791. The difference, 10,128, is the stems
(9,536 against 464) and the first mid block, which in v2 needs a 1x1 expansion from 64 to 16
channels (1,520 against 464).

The ResNet stem already reduces 4x and gives 64 channels, so in v2 the first mid block takes
64 input channels and the second block, the first stride-2 one, runs at stride 1. Both variants
then have the same feature-map sizes from block 2 on and the tail sees H/32 in both; the
comparison isolates the stem instead of also changing the resolution of every later layer.

The BatchNorm after the Linear needs more than one sample per batch in training mode.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional

from cxr14.models.registry import register

# torchvision's blocks are imported where the network is built, not here: importing torchvision
# imports torch._dynamo (~1.3 s), which every stage that imports cxr14.models would pay.

# MobileNetV3-Large body (Howard et al. 2019, Table 1): input channels, kernel, expanded
# channels, output channels, squeeze-excitation, activation (RE = ReLU, HS = hard swish), stride.
MOBILENET_V3_LARGE_BLOCKS = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)
TAIL_BLOCKS = 6
TAIL_BOTTLENECK_WIDTH = 40  # torchvision's Bottleneck expands 4x: 40 * 4 = 160 channels in and out
# MobileNetV3's BatchNorm settings (torchvision uses them for the whole network).
MOBILENET_BATCH_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


def mobilenet_stem() -> nn.Module:
    """Conv 3x3 stride 2 to 16 channels, BN, Hardswish: output H/2."""
    from torchvision.ops.misc import Conv2dNormActivation

    return Conv2dNormActivation(
        3, 16, kernel_size=3, stride=2, norm_layer=MOBILENET_BATCH_NORM, activation_layer=nn.Hardswish
    )


def resnet_stem() -> nn.Module:
    """Conv 7x7 stride 2 to 64 channels, BN, ReLU, MaxPool 3 stride 2: output H/4."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


class EmbeddingHead(nn.Module):
    """Pool, Linear, BatchNorm, ReLU, L2 normalise (the embedding), then the classifier."""

    def __init__(self, in_channels: int, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim)
        self.relu = nn.ReLU(inplace=True)
        self.classifier: nn.Module = nn.Linear(embedding_dim, num_classes)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(features).flatten(1)
        return functional.normalize(self.relu(self.bn(self.fc(pooled))), dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(features))


class ResMobileNet(nn.Module):
    """Stem, MobileNetV3-Large inverted residuals, ResNet bottleneck tail, embedding head.

    Args:
        num_classes: logits out.
        stem: "mobilenet" (v1) or "resnet" (v2).
        embedding_dim: width of the L2-normalised embedding.
    """

    def __init__(self, num_classes: int, stem: str = "mobilenet", embedding_dim: int = 512) -> None:
        from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig
        from torchvision.models.resnet import Bottleneck

        super().__init__()
        if stem == "mobilenet":
            self.stem, stem_channels, stem_reduction = mobilenet_stem(), 16, 2
        elif stem == "resnet":
            self.stem, stem_channels, stem_reduction = resnet_stem(), 64, 4
        else:
            raise ValueError(f"ResMobileNet: unknown stem {stem!r}; use 'mobilenet' or 'resnet'")
        blocks = []
        # Each block downsamples only as far as MobileNetV3 has downsampled by then (its stem
        # halves the input), so a stem that already reduced 4x skips the first stride-2 block.
        reduction, mobilenet_reduction = stem_reduction, 2
        for index, (in_channels, kernel, expanded, out_channels, use_se, activation, stride) in enumerate(
            MOBILENET_V3_LARGE_BLOCKS
        ):
            if index == 0:
                in_channels = stem_channels
            mobilenet_reduction *= stride
            stride = 2 if reduction < mobilenet_reduction else 1
            reduction *= stride
            config = InvertedResidualConfig(
                in_channels, kernel, expanded, out_channels, use_se, activation, stride, dilation=1, width_mult=1.0
            )
            blocks.append(InvertedResidual(config, norm_layer=MOBILENET_BATCH_NORM))
        self.blocks = nn.Sequential(*blocks)
        tail_channels = MOBILENET_V3_LARGE_BLOCKS[-1][3]
        self.tail = nn.Sequential(*[Bottleneck(tail_channels, TAIL_BOTTLENECK_WIDTH) for _ in range(TAIL_BLOCKS)])
        self.head = EmbeddingHead(tail_channels, embedding_dim, num_classes)

    @property
    def classifier(self) -> nn.Module:
        """The last Linear layer (kept inside `head`, so it is not registered twice)."""
        return self.head.classifier

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map after the tail, (N, 160, H/32, W/32)."""
        return self.tail(self.blocks(self.stem(images)))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits of a feature map; with `pre_logits` the L2-normalised embedding."""
        return self.head.embed(features) if pre_logits else self.head(features)

    def get_classifier(self) -> nn.Module:
        return self.head.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier Linear with `num_classes` outputs (0: none, logits = the embedding)."""
        width = self.head.fc.out_features
        self.head.classifier = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


@register("resmobilenet_v1", description="MobileNetV3-Large body, 6 ResNet bottlenecks, embedding head (3.1 M)")
def resmobilenet_v1(num_classes: int, image_size: int) -> nn.Module:
    return ResMobileNet(num_classes, stem="mobilenet")


@register("resmobilenet_v2", description="resmobilenet_v1 with a ResNet 7x7 + max-pool stem (3.1 M)")
def resmobilenet_v2(num_classes: int, image_size: int) -> nn.Module:
    return ResMobileNet(num_classes, stem="resnet")
