"""The seed's small ConvNeXt-V2 (design note 000), trained from scratch.

    model = build_model("convnextv2_seed", num_classes=15, image_size=224).model

Layout (for 224 px input)::

    stem        Conv 4x4 stride 4, 3 -> 25, LayerNorm              -> 56 x 56 x 25
    stage 1     1 block, dim 25
    downsample  LayerNorm, Conv 2x2 stride 2, 25 -> 50             -> 28 x 28 x 50
    stage 2     1 block, dim 50
    downsample  LayerNorm, Conv 2x2 stride 2, 50 -> 100            -> 14 x 14 x 100
    stage 3     1 block, dim 100
    head        global average pool, LayerNorm, Dense 128, GELU, Dropout .25, Dense 15

    block       depthwise Conv 7x7 -> LayerNorm -> 1x1 dim -> 4 dim -> GELU -> GRN(4 dim)
                -> 1x1 4 dim -> dim -> DropPath -> + input

158,013 parameters with 15 classes, at any image size (nothing depends on it). Per block of
width d: 8 d^2 + 65 d (tests/test_models.py spells the whole sum out).

Decisions:

* GRN sits on the 4 d expansion, between GELU and the projection back to d, as in the
  ConvNeXt-V2 paper. The design note's diagrams draw it after the projection (on d channels);
  that would save 6 d parameters per block.
* LayerNorm epsilon: 1e-6 inside the blocks, as the note states; the stem, downsample and head
  LayerNorms use Keras' default 1e-3, which the seed's unspecified LayerNormalization() had.
* The 1x1 convolutions are Linear layers on channels-last tensors (the same maths, faster).
* Downsampling has no padding: 224 px gives 56/28/14. The Keras seed used "same" padding so its
  odd 66 px input gave 17/9/5; at the sizes used here (multiples of 32) both agree.
* Input centred, mean 0.5 and std 0.25 in [0, 1] pixel units (the note does not say how pixels
  are scaled). With the seeds' plain /255 the stem's LayerNorm, which normalises each 4x4
  patch's 25 channels, cancels most of a patch's brightness: a uniform grey 150 and a grey 210
  came out of it nearly parallel (cosine 0.998), so an opacity looked like the lung around it.
  On the phantom the model then stayed at the labels' prevalence for 30 epochs (train loss
  flat, validation macro AUROC 0.50); centred, it learns (0.57 after 16 epochs at 64 px).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxr14.config import ConfigError
from cxr14.models.registry import register
from cxr14.models.seed import CENTRED_MEAN, CENTRED_STD

KERAS_LAYER_NORM_EPS = 1e-3
BLOCK_LAYER_NORM_EPS = 1e-6


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor: nn.LayerNorm applied channels-last between
    two permutes (the stem and downsampling norms).

    The same maths and parameter names as timm.layers.LayerNorm2d (a test compares the two bit for
    bit), kept here because importing timm imports torchvision and torch._dynamo (~1.6 s), which
    every stage of this model would pay for two permutes; DropPath, used only with a
    drop-path rate, is imported from timm when one is set.
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        channels_last = features.permute(0, 2, 3, 1)
        normed = F.layer_norm(channels_last, self.normalized_shape, self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """GRN on channels-last input: scale each channel by its spatial L2 norm over the channel mean.

    gamma and beta start at zero, so a fresh GRN is the identity.

    Kept instead of timm.layers.grn.GlobalResponseNorm: timm names the parameters weight/bias
    (trained checkpoints hold gamma/beta) and computes ``x + addcmul(beta, gamma, x * n)``, which
    rounds differently from ``gamma * (x * n) + beta + x`` (up to 1e-6 apart once gamma and beta
    are trained), so trained models would no longer reproduce their results bit for bit.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (N, H, W, C)
        spatial_norm = torch.linalg.vector_norm(features, ord=2, dim=(1, 2), keepdim=True)
        relative_norm = spatial_norm / (spatial_norm.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (features * relative_norm) + self.beta + features


class ConvNeXtV2Block(nn.Module):
    """Depthwise 7x7, LayerNorm, inverted bottleneck with GRN, residual add."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=BLOCK_LAYER_NORM_EPS)
        self.expand = nn.Linear(dim, 4 * dim)
        self.activation = nn.GELU()
        self.response_norm = GlobalResponseNorm(4 * dim)
        self.project = nn.Linear(4 * dim, dim)
        self.drop_path = _drop_path(drop_path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.depthwise(images).permute(0, 2, 3, 1)  # channels-last for the Linear layers
        features = self.project(self.response_norm(self.activation(self.expand(self.norm(features)))))
        return images + self.drop_path(features.permute(0, 3, 1, 2))


def _drop_path(rate: float) -> nn.Module:
    """Stochastic depth at `rate` (timm's DropPath), or the identity at 0."""
    if rate <= 0:
        return nn.Identity()
    from timm.layers import DropPath

    return DropPath(rate)


class SeedConvNeXtV2(nn.Module):
    """Stem, three one-block stages with downsampling between them, and the seed's MLP head.

    Args:
        num_classes: logits out.
        dims: channels of each stage.
        depths: blocks per stage.
        dense_units: width of the hidden head layer.
        head_dropout: dropout before the last Linear.
        drop_path_rate: stochastic-depth rate, raised linearly from 0 over the blocks.
    """

    def __init__(
        self,
        num_classes: int,
        dims: tuple[int, ...] = (25, 50, 100),
        depths: tuple[int, ...] = (1, 1, 1),
        dense_units: int = 128,
        head_dropout: float = 0.25,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"convnextv2_seed: {len(dims)} dims {dims} but {len(depths)} depths {depths}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=KERAS_LAYER_NORM_EPS)
        )
        block_rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages: list[nn.Module] = []
        for index, (dim, depth) in enumerate(zip(dims, depths)):
            layers: list[nn.Module] = []
            if index > 0:
                layers += [
                    LayerNorm2d(dims[index - 1], eps=KERAS_LAYER_NORM_EPS),
                    nn.Conv2d(dims[index - 1], dim, kernel_size=2, stride=2),
                ]
            first_block = sum(depths[:index])
            layers += [ConvNeXtV2Block(dim, block_rates[first_block + offset]) for offset in range(depth)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.dense_units = dense_units  # the embedding width, the classifier's input
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.LayerNorm(dims[-1], eps=KERAS_LAYER_NORM_EPS),
            nn.Linear(dims[-1], dense_units),
            nn.GELU(),
            nn.Dropout(head_dropout),
            nn.Linear(dense_units, num_classes),
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map after the last stage, [N, dims[-1], H/16, W/16]."""
        return self.stages(self.stem(images))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits; with `pre_logits` the input of the last Linear (the dense_units embedding)."""
        embedding = self.head[:-1](features)
        return embedding if pre_logits else self.head[-1](embedding)

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh last Linear with `num_classes` outputs (0: none)."""
        self.head[-1] = nn.Linear(self.dense_units, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


@register(
    "convnextv2_seed",
    mean=CENTRED_MEAN,
    std=CENTRED_STD,
    description="seed ConvNeXt-V2: dims 25/50/100, one block each, GRN (158 k params)",
)
def convnextv2_seed(num_classes: int, image_size: int) -> nn.Module:
    if image_size < 16:
        raise ConfigError(f"convnextv2_seed: image_size {image_size} is below 16 (stem 4x, then two 2x downsamples)")
    return SeedConvNeXtV2(num_classes=num_classes)
