"""The seed project's own architectures (design note 001), ported to PyTorch.

    build_model("cnn_gap", num_classes=15, image_size=224).model

    cnn      Conv 32 3x3 ReLU, MaxPool 2, Conv 64 3x3 ReLU, MaxPool 2, Flatten, Dense 512 ReLU,
             Dense 15 -- 95,579,087 parameters at 224 px with 3 input channels, as in Keras.
    cnn_gap  the seed's own fix of that CNN: five Conv 3x3 (no bias) -> BN -> ReLU -> MaxPool 2
             blocks of 32..512 channels, global average pooling, Dropout .5, Dense 15
             (1,577,263 parameters at any size >= 32 px). Pooling instead of Flatten removes
             the Dense layer whose 95 M weights grow with the image size.
    vit_v1   32 px patches -> 64-d projection + learned positions, 8 pre-LN encoder blocks
             (4 heads, MLP 64->128->64), LN, Flatten, Dropout .5, MLP head 2048 -> 1024, out.
    vit_v2   the same network with dropout .2 inside the blocks (head dropout stays .5); the
             rest of the seed's second ViT run (SGD with momentum, weight decay) is training
             regime, set under train.overrides.vit_v2 in params.yaml rather than here.

All take 3-channel input (the seed fed RGB-converted PNGs); the loader expands grayscale, and
all have timm's model interface: ``forward_features`` (the last feature map [N, C, h, w] of the
CNNs, the normalised patch tokens [N, T, C] of the ViTs), ``forward_head(x, pre_logits=False)``
(``pre_logits=True``: the input of the last Linear), ``get_classifier`` and ``reset_classifier``.

Input scaling: the seeds rescale by 1/255 (pixels in [0, 1]); ``cnn``, ``vit_v1`` and ``vit_v2``
depart from it and centre their input, (x - 0.5) / 0.25, so what the first layer sees varies around
zero instead of riding on a large offset shared by every pixel. In a ViT the blocks' LayerNorms
divide such an offset away with the brightness it carries (measured in cxr14.models.convnext_seed's
decisions): on the phantom at 128 px and lr 1e-3, vit_v1's validation macro AUROC after one epoch
was 0.50 with the plain rescale and 0.57 centred. The seed CNN has no normalisation layer at all,
so with the offset the weights of a first-layer filter get gradients of mostly one sign and move
together (the classic argument for zero-mean inputs): on the phantom at 64 px, lr 1e-3, 8 epochs,
its best validation macro AUROC for training seeds 42/43/44 was 0.537/0.571/0.551 with the plain
rescale and 0.603/0.598/0.602 centred. A first layer could learn the shift, but not in the few
hundred steps of a demo. ``cnn_gap`` keeps the seed's scaling: the BatchNorm after its first
convolution removes the offset.
"""

from __future__ import annotations

import torch
from torch import nn

from cxr14.config import ConfigError
from cxr14.models.registry import register

CENTRED_MEAN, CENTRED_STD = (0.5,), (0.25,)  # [0, 1] pixels to about [-2, 2]: see "Input scaling"


class SeedSequential(nn.Sequential):
    """A plain layer stack with timm's interface; parameter names stay those of nn.Sequential.

    Layers ``[0, feature_layers)`` are the features, the rest the head; the last layer is the
    classifier Linear.
    """

    def __init__(self, *layers: nn.Module, feature_layers: int) -> None:
        super().__init__(*layers)
        self.feature_layers = feature_layers

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        for layer in list(self)[: self.feature_layers]:  # (slicing self would build a new SeedSequential)
            images = layer(images)
        return images

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        for layer in list(self)[self.feature_layers : -1]:
            features = layer(features)
        return features if pre_logits else self[-1](features)

    def get_classifier(self) -> nn.Module:
        return self[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier Linear with `num_classes` outputs (0: none)."""
        self[-1] = _new_classifier(self[-1], num_classes)


def _new_classifier(classifier: nn.Module, num_classes: int) -> nn.Module:
    if not isinstance(classifier, nn.Linear):
        raise ValueError(f"reset_classifier: the classifier is a {type(classifier).__name__}, not a Linear")
    return nn.Linear(classifier.in_features, num_classes) if num_classes > 0 else nn.Identity()


@register(
    "cnn",
    mean=CENTRED_MEAN,
    std=CENTRED_STD,
    description="seed CNN: 2 convs, Flatten, Dense 512 (95.6 M params at 224 px), input centred",
)
def cnn(num_classes: int, image_size: int) -> nn.Module:
    """The seed CNN; its Flatten makes the Dense layer depend on `image_size`."""
    side = ((image_size - 2) // 2 - 2) // 2  # two valid 3x3 convs, each followed by 2x2 pooling
    return SeedSequential(
        nn.Conv2d(3, 32, 3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
        feature_layers=6,  # up to the second pooling
    )


class _EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.GELU(),
            nn.Dropout(dropout),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(tokens)
        tokens = tokens + self.attention(normed, normed, normed, need_weights=False)[0]
        return tokens + self.mlp(self.norm2(tokens))


class SeedViT(nn.Module):
    """The seed's small ViT (no class token: the head flattens all patch tokens)."""

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        patch_size: int = 32,
        dim: int = 64,
        depth: int = 8,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        head_units: tuple[int, ...] = (2048, 1024),
        head_dropout: float = 0.5,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"vit: image_size {image_size} is not a multiple of patch size {patch_size}")
        self.patch_size = patch_size
        num_patches = (image_size // patch_size) ** 2
        self.projection = nn.Linear(patch_size * patch_size * in_chans, dim)
        self.position = nn.Parameter(torch.zeros(1, num_patches, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*[_EncoderBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(head_dropout)]
        width = num_patches * dim
        for units in head_units:
            layers += [nn.Linear(width, units), nn.GELU(), nn.Dropout(head_dropout)]
            width = units
        layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*layers)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised patch tokens [N, patches, dim] (no class token)."""
        batch, channels, _, _ = images.shape
        size = self.patch_size
        # [B, C, H, W] -> [B, N, size*size*C], row-major patches like tf.image.extract_patches.
        patches = images.unfold(2, size, size).unfold(3, size, size)  # B, C, h, w, size, size
        patches = patches.permute(0, 2, 3, 4, 5, 1).reshape(batch, -1, size * size * channels)
        tokens = self.projection(patches) + self.position
        return self.norm(self.blocks(tokens))

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits; with `pre_logits` the input of the last Linear (the embedding)."""
        embedding = self.head[:-1](tokens)
        return embedding if pre_logits else self.head[-1](embedding)

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier Linear with `num_classes` outputs (0: none)."""
        self.head[-1] = _new_classifier(self.head[-1], num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


@register("cnn_gap", description="seed CNN fixed: 5 conv-BN blocks, global average pooling (1.6 M params)")
def cnn_gap(num_classes: int, image_size: int) -> nn.Module:
    """Five Conv-BN-ReLU-MaxPool blocks, then global pooling: the size only needs to be >= 32."""
    if image_size < 32:
        raise ConfigError(f"cnn_gap: image_size {image_size} is below 32 (five 2x2 poolings need 32 px)")
    layers: list[nn.Module] = []
    in_channels = 3
    for width in (32, 64, 128, 256, 512):
        # No conv bias: the BatchNorm right after it has its own shift.
        layers += [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        in_channels = width
    feature_layers = len(layers)  # up to the last pooling
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(in_channels, num_classes)]
    return SeedSequential(*layers, feature_layers=feature_layers)


@register(
    "vit_v1",
    mean=CENTRED_MEAN,
    std=CENTRED_STD,
    description="seed ViT: 32 px patches, 8 blocks of width 64, flattened MLP head",
)
def vit_v1(num_classes: int, image_size: int) -> nn.Module:
    return SeedViT(num_classes=num_classes, image_size=image_size)


@register(
    "vit_v2",
    mean=CENTRED_MEAN,
    std=CENTRED_STD,
    description="seed ViT, second run: dropout .2 in the blocks, .5 in the head",
)
def vit_v2(num_classes: int, image_size: int) -> nn.Module:
    return SeedViT(num_classes=num_classes, image_size=image_size, dropout=0.2, head_dropout=0.5)
