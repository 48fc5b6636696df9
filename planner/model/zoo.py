"""Built-in models, defined in code: the architectures budgetplan is demonstrated and tested on.

Every model is built with seeded random weights (no downloads, no pretrained checkpoints): the same
name always gives bit-identical weights, and building never disturbs the caller's global RNG state.
Models are returned in train mode, as a user's own model would be; the caller decides.

Names (case-insensitive):

* ``resnet18``, ``resnet50`` -- the standard ImageNet ResNets (torchvision layout, stride on the 3x3
  conv of the bottleneck), 1×3×224×224 input.
* ``mobilenetv2`` -- MobileNetV2 at width 1.0, the ImageNet reference, 1×3×224×224 input.
* ``mobilenetv2-w<width>`` (e.g. ``mobilenetv2-w0.35``) -- MobileNetV2 at any width multiplier in
  (0, 4], channels rounded to multiples of 8 as in the original; tiny-training's 1×3×128×128 input,
  whatever the width.
* ``mcunet`` -- an *MCUNet-style* network: inverted-residual blocks with mixed kernel sizes 3/5/7 and
  expand ratios 3/4/6 in the spirit of mcunet-in3 / mcunet-5fps. It is not the searched architecture
  (whose exact layer list is not reproduced here), only a network of the same family and size.
* ``proxylessnas-w<width>`` (listed: ``proxylessnas-w0.3``) -- a ProxylessNAS-mobile-style network
  (mixed kernels 3/5/7, expand ratios 3/6) at the given width, 1×3×128×128 input.
* ``mbv2-w0.35-tt``, ``mcunet-5fps-tt``, ``proxyless-w0.3-tt`` -- tiny-training's three MCU networks,
  exactly: the architectures of its ``mbv2-w0.35.pkl``, ``mcunet-5fps.pkl`` and ``proxyless-w0.3.pkl``
  written out as data (:class:`TinyTrainingNet`, BatchNorm folded into conv biases, so the Conv2d list
  is the one tiny-training's sparse-update schemes index), 1×3×128×128 input, 10 classes (the head of
  tiny-training's compiled training graphs). :mod:`budgetplan.model.tiny_training` loads the ``.pkl``
  files themselves into the same class.
* ``tinycnn`` -- three conv-BN-ReLU stages, pooling and a linear classifier; 1×3×32×32, 10 classes.
* ``vit-tiny`` -- a small vision transformer (patch 4, dim 64, 4 blocks, 4 heads; q/k/v/proj are
  separate ``nn.Linear``); 1×3×32×32, 10 classes.

All ImageNet-family models default to 1000 classes. ``build(name, num_classes=...)`` changes the
classifier's width only.
"""

from __future__ import annotations

import difflib
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from budgetplan.errors import InputError, ModelLoadError

__all__ = ["TTBlockSpec", "TTConv", "TinyTrainingNet", "ZooEntry", "build", "is_zoo_name", "list_models",
           "lookup", "make_divisible", "tt_block_specs"]

IMAGENET_CLASSES = 1000
SMALL_CLASSES = 10
IMAGENET_INPUT: tuple[int, ...] = (1, 3, 224, 224)
MCU_INPUT: tuple[int, ...] = (1, 3, 128, 128)
SMALL_INPUT: tuple[int, ...] = (1, 3, 32, 32)
MAX_WIDTH = 4.0


@dataclass(frozen=True)
class ZooEntry:
    """What a built-in model is and how to feed it."""

    name: str
    """Canonical name (lower case; widths written as Python floats, e.g. ``mobilenetv2-w0.35``)."""
    description: str
    """One line: architecture, default input and where the figures come from."""
    input_shape: tuple[int, ...]
    """Default input shape, batch 1 (N, C, H, W)."""
    num_classes: int
    """Width of the classifier."""


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``divisor`` nor below 90 %.

    This is MobileNetV2's channel rounding rule (also used by ProxylessNAS and MCUNet).
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → optional activation, "same" padding for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: Callable[[], nn.Module] | None = nn.ReLU6,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand → k×k depthwise → 1×1 linear projection, residual when shapes match."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: float, kernel_size: int = 3
    ) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1))
        layers += [
            ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block: expand ratio, kernel size, output channels (before width), stride."""

    expand: float
    kernel: int
    channels: int
    stride: int


class InvertedResidualNet(nn.Module):
    """Stem conv, a list of inverted-residual blocks, an optional 1×1 feature-mix conv, pool, classifier.

    MobileNetV2, ProxylessNAS-mobile and MCUNet all have this shape; they differ in their block lists.
    """

    def __init__(
        self,
        blocks: Sequence[BlockSpec],
        *,
        width: float,
        stem_channels: int,
        last_channels: int | None,
        num_classes: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = make_divisible(stem_channels * width)
        features: list[nn.Module] = [ConvBNAct(3, channels, 3, stride=2)]
        for spec in blocks:
            out = make_divisible(spec.channels * width)
            features.append(InvertedResidual(channels, out, spec.stride, spec.expand, spec.kernel))
            channels = out
        if last_channels is not None:
            features.append(ConvBNAct(channels, last_channels, 1))
            channels = last_channels
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        self.classifier = nn.Sequential(*head, nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3×3 convs and an identity (or 1×1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_channels, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet-50 block: 1×1 reduce → 3×3 (carrying the stride) → 1×1 expand ×4, plus shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The 1×1 projection shortcut when a block changes shape, else None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class ResNet(nn.Module):
    """The ImageNet ResNet: 7×7 stem, max-pool, four stages (64/128/256/512 planes), pool, fc."""

    def __init__(
        self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], num_classes: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        channels = 64
        stages: list[nn.Sequential] = []
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks: list[nn.Module] = []
            for position in range(depth):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(block(channels, planes, stride))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU stages with max-pooling, global average pooling and a linear classifier."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images (any spatial size ≥ 4×4)."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/proj ``nn.Linear`` layers and explicit softmax."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) → (B, heads, N, head_dim)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens of ``x`` (B, N, C)."""
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).flatten(2)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to tokens (B, N, C)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT: conv patch embedding, class token, learned position embedding, blocks, LayerNorm, head."""

    def __init__(
        self,
        num_classes: int,
        *,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images of the configured size."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 0])


@dataclass(frozen=True)
class TTConv:
    """One convolution of a tiny-training MCU network (BatchNorm already folded into its bias).

    ``clip``: the activation after the conv, a ReLU clipped at ``clip`` (6.0 = ReLU6), or None for a
    linear conv (the projection of an inverted-residual block). Padding is ``(kernel - 1) // 2``, as in
    tiny-training.
    """

    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    groups: int = 1
    clip: float | None = 6.0


@dataclass(frozen=True)
class TTBlockSpec:
    """One inverted-residual block: optional 1×1 expansion, depthwise conv, linear 1×1 projection, and
    whether the block input is added to its output (an identity skip)."""

    pointwise1: TTConv | None
    depthwise: TTConv
    pointwise2: TTConv
    residual: bool


class ConvAct(nn.Module):
    """Conv2d with a bias (BatchNorm folded), then the clipped ReLU of :class:`TTConv` if any."""

    def __init__(self, spec: TTConv) -> None:
        super().__init__()
        self.conv = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel, spec.stride,
                              padding=(spec.kernel - 1) // 2, groups=spec.groups, bias=True)
        self.act: nn.Module | None = None
        if spec.clip is not None:
            self.act = nn.ReLU6() if spec.clip == 6.0 else nn.Hardtanh(0.0, spec.clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve, then clip."""
        x = self.conv(x)
        return x if self.act is None else self.act(x)


class TTBlock(nn.Module):
    """A tiny-training inverted-residual block (``pointwise1`` is None when the block does not expand)."""

    def __init__(self, spec: TTBlockSpec) -> None:
        super().__init__()
        self.pointwise1 = ConvAct(spec.pointwise1) if spec.pointwise1 is not None else None
        self.depthwise = ConvAct(spec.depthwise)
        self.pointwise2 = ConvAct(spec.pointwise2)
        self.residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = x if self.pointwise1 is None else self.pointwise1(x)
        out = self.pointwise2(self.depthwise(out))
        return x + out if self.residual else out


class TinyTrainingNet(nn.Module):
    """tiny-training's MCU network layout: ``first_conv``, ``blocks``, optional ``feature_mix``, global
    average pooling and a linear ``classifier``.

    Convs carry their biases (BatchNorm folded, as on the device), so the ``nn.Conv2d`` modules in
    definition order are exactly tiny-training's conv list (first_conv = 0, then each block's
    pointwise1, depthwise, pointwise2, then feature_mix; the classifier is a Linear and not counted),
    which its sparse-update schemes index. Both the built-ins of this zoo and the ``.pkl`` loader
    (:mod:`budgetplan.model.tiny_training`) build this class.
    """

    def __init__(
        self,
        first_conv: TTConv,
        blocks: Sequence[TTBlockSpec],
        num_classes: int,
        feature_mix: TTConv | None = None,
    ) -> None:
        super().__init__()
        self.first_conv = ConvAct(first_conv)
        self.blocks = nn.Sequential(*(TTBlock(spec) for spec in blocks))
        self.feature_mix = ConvAct(feature_mix) if feature_mix is not None else None
        last = feature_mix or (blocks[-1].pointwise2 if blocks else first_conv)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last.out_channels, num_classes)

    def init_weights(self) -> None:
        """Variance-preserving init for a network without BatchNorm: Kaiming fan-in convs (ReLU gain
        before a ReLU, linear gain for the projections), zero biases, small-normal classifier."""
        for module in self.modules():
            if isinstance(module, ConvAct):
                gain = "relu" if module.act is not None else "linear"
                nn.init.kaiming_normal_(module.conv.weight, mode="fan_in", nonlinearity=gain)
                nn.init.zeros_(module.conv.bias)
        nn.init.trunc_normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = self.blocks(self.first_conv(x))
        if self.feature_mix is not None:
            x = self.feature_mix(x)
        return self.classifier(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------------

# MobileNetV2 (Sandler et al. 2018, Table 2): expand t, channels c, repeats n, first stride s.
_MOBILENETV2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# ProxylessNAS-mobile-style block list (expand, kernel, channels, stride): kernels 3/5/7, ratios 3/6.
_PROXYLESS_BLOCKS: tuple[BlockSpec, ...] = tuple(
    BlockSpec(*spec)
    for spec in (
        (1, 3, 16, 1),
        (3, 5, 24, 2), (3, 3, 24, 1),
        (3, 7, 40, 2), (3, 3, 40, 1), (3, 5, 40, 1), (3, 5, 40, 1),
        (6, 7, 80, 2), (3, 5, 80, 1), (3, 5, 80, 1), (3, 5, 80, 1),
        (6, 5, 96, 1), (3, 5, 96, 1), (3, 5, 96, 1), (3, 5, 96, 1),
        (6, 7, 192, 2), (6, 7, 192, 1), (3, 7, 192, 1), (3, 7, 192, 1),
        (6, 7, 320, 1),
    )
)  # fmt: skip

# MCUNet-style block list: narrow, mixed kernels 3/5/7 and expand ratios 3/4/6, no feature-mix conv.
_MCUNET_BLOCKS: tuple[BlockSpec, ...] = tuple(
    BlockSpec(*spec)
    for spec in (
        (1, 3, 8, 1),
        (3, 7, 16, 2), (3, 3, 16, 1),
        (6, 5, 24, 2), (4, 3, 24, 1), (3, 5, 24, 1),
        (6, 7, 40, 2), (3, 5, 40, 1), (4, 3, 40, 1),
        (6, 5, 48, 1), (4, 3, 48, 1),
        (6, 5, 96, 2), (3, 7, 96, 1), (4, 3, 96, 1),
        (6, 3, 160, 1),
    )
)  # fmt: skip


def _mobilenetv2(width: float, num_classes: int) -> nn.Module:
    """MobileNetV2 at ``width``: stem 32·w, last conv max(1280, 1280·w), dropout 0.2 before the fc."""
    blocks = [
        BlockSpec(t, 3, c, s if i == 0 else 1)
        for t, c, n, s in _MOBILENETV2_STAGES
        for i in range(n)
    ]
    return InvertedResidualNet(
        blocks,
        width=width,
        stem_channels=32,
        last_channels=make_divisible(1280 * max(1.0, width)),
        num_classes=num_classes,
        dropout=0.2,
    )


def _proxylessnas(width: float, num_classes: int) -> nn.Module:
    """ProxylessNAS-mobile-style network at ``width``: stem 32·w, feature-mix max(1280, 1280·w)."""
    return InvertedResidualNet(
        _PROXYLESS_BLOCKS,
        width=width,
        stem_channels=32,
        last_channels=make_divisible(1280 * max(1.0, width)),
        num_classes=num_classes,
    )


def _mcunet(num_classes: int) -> nn.Module:
    """MCUNet-style network: stem 16, the block list above, classifier straight on 160 channels."""
    return InvertedResidualNet(
        _MCUNET_BLOCKS, width=1.0, stem_channels=16, last_channels=None, num_classes=num_classes
    )


# tiny-training's three MCU networks: the architectures stored in mit-han-lab/tiny-training's
# mbv2-w0.35.pkl, mcunet-5fps.pkl and proxyless-w0.3.pkl (MIT), written out as data. Each is a 3×3
# stride-2 stem conv to 16 channels, then inverted-residual blocks (expand, kernel, channels, stride):
# the expanded width is in·expand exactly (no rounding), expand 1 means no pointwise1 conv, and a block
# adds its input when stride == 1 and in == out. No feature-mix conv; the classifier reads the last
# block. tests/model/test_zoo.py checks every conv against the .pkl configs.
_TT_STEM = 16
_TT_NETWORKS: dict[str, tuple[BlockSpec, ...]] = {
    "mbv2-w0.35": tuple(BlockSpec(*spec) for spec in (
        (1, 3, 8, 1),
        (6, 3, 8, 2), (6, 3, 8, 1),
        (6, 3, 16, 2), (6, 3, 16, 1), (6, 3, 16, 1),
        (6, 3, 24, 2), (6, 3, 24, 1), (6, 3, 24, 1), (6, 3, 24, 1),
        (6, 3, 32, 1), (6, 3, 32, 1), (6, 3, 32, 1),
        (6, 3, 56, 2), (6, 3, 56, 1), (6, 3, 56, 1),
        (6, 3, 112, 1),
    )),
    "mcunet-5fps": tuple(BlockSpec(*spec) for spec in (
        (1, 3, 8, 1),
        (4, 3, 16, 2), (3, 3, 16, 1),
        (3, 7, 24, 2), (5, 3, 24, 1),
        (5, 3, 40, 2), (4, 7, 40, 1),
        (4, 5, 48, 1), (3, 3, 48, 1), (4, 3, 48, 1),
        (5, 7, 96, 2), (4, 5, 96, 1), (4, 5, 96, 1),
        (6, 3, 160, 1),
    )),
    "proxyless-w0.3": tuple(BlockSpec(*spec) for spec in (
        (1, 3, 8, 1),
        (3, 5, 16, 2), (3, 3, 16, 1),
        (3, 7, 16, 2), (3, 3, 16, 1), (3, 5, 16, 1), (3, 5, 16, 1),
        (6, 7, 24, 2), (3, 5, 24, 1), (3, 5, 24, 1), (3, 5, 24, 1),
        (6, 5, 32, 1), (3, 5, 32, 1), (3, 5, 32, 1), (3, 5, 32, 1),
        (6, 7, 64, 2), (6, 7, 64, 1), (3, 7, 64, 1), (3, 7, 64, 1),
        (6, 7, 96, 1),
    )),
}  # fmt: skip
TT_NUM_CLASSES = 10
"""Classifier width of the tiny-training built-ins: the 10 classes of tiny-training's compiled training
graphs (``compilation/mcu_ir_gen.py``), whose ImageNet head is replaced by a new fp32 linear layer."""


def tt_block_specs(blocks: Sequence[BlockSpec], in_channels: int = _TT_STEM) -> list[TTBlockSpec]:
    """Inverted-residual :class:`BlockSpec` rows (channels taken literally) as :class:`TTBlockSpec`s."""
    specs: list[TTBlockSpec] = []
    channels = in_channels
    for block in blocks:
        hidden = channels * block.expand
        if hidden != int(hidden):
            raise ValueError(f"expand {block.expand} of {channels} channels is not a whole channel count")
        hidden = int(hidden)
        pointwise1 = TTConv(channels, hidden, 1) if block.expand != 1 else None
        specs.append(TTBlockSpec(
            pointwise1=pointwise1,
            depthwise=TTConv(hidden, hidden, block.kernel, block.stride, groups=hidden),
            pointwise2=TTConv(hidden, block.channels, 1, clip=None),
            residual=block.stride == 1 and channels == block.channels,
        ))
        channels = block.channels
    return specs


def _tiny_training_net(key: str, num_classes: int) -> nn.Module:
    """One of tiny-training's three MCU networks (:data:`_TT_NETWORKS`), BatchNorm folded."""
    return TinyTrainingNet(TTConv(3, _TT_STEM, 3, 2), tt_block_specs(_TT_NETWORKS[key]), num_classes)


@dataclass(frozen=True)
class _Recipe:
    """How to build one canonical name."""

    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    factory: Callable[[int], nn.Module]


_MCU_NOTE = "tiny-training's 1x3x128x128 input"

_FIXED: dict[str, _Recipe] = {
    "resnet18": _Recipe(
        "ResNet-18 (ImageNet layout, 11.69M params at 1000 classes), 1x3x224x224 input",
        IMAGENET_INPUT,
        IMAGENET_CLASSES,
        lambda k: ResNet(BasicBlock, (2, 2, 2, 2), k),
    ),
    "resnet50": _Recipe(
        "ResNet-50 (ImageNet layout, stride on the 3x3 conv, 25.56M params at 1000 classes), "
        "1x3x224x224 input",
        IMAGENET_INPUT,
        IMAGENET_CLASSES,
        lambda k: ResNet(Bottleneck, (3, 4, 6, 3), k),
    ),
    "mobilenetv2": _Recipe(
        "MobileNetV2 width 1.0 (ImageNet reference, 3.50M params at 1000 classes), 1x3x224x224 input",
        IMAGENET_INPUT,
        IMAGENET_CLASSES,
        lambda k: _mobilenetv2(1.0, k),
    ),
    "mcunet": _Recipe(
        "MCUNet-style network (inverted residuals, kernels 3/5/7, expand 3/4/6; not the searched "
        f"mcunet-in3/5fps architecture), {_MCU_NOTE}",
        MCU_INPUT,
        IMAGENET_CLASSES,
        _mcunet,
    ),
    **{
        f"{key}-tt": _Recipe(
            f"tiny-training's {title} (the architecture of its {key}.pkl, BatchNorm folded into the convs, "
            f"{convs} convs + a linear classifier), {_MCU_NOTE}, {TT_NUM_CLASSES} classes",
            MCU_INPUT,
            TT_NUM_CLASSES,
            lambda k, key=key: _tiny_training_net(key, k),
        )
        for key, title, convs in (("mbv2-w0.35", "MobileNetV2-w0.35", 51), ("mcunet-5fps", "MCUNet-5FPS", 42),
                                  ("proxyless-w0.3", "ProxylessNAS-w0.3", 60))
    },
    "tinycnn": _Recipe(
        "Tiny CNN (3 conv-BN-ReLU stages, pooling, linear) for unit tests, 1x3x32x32 input",
        SMALL_INPUT,
        SMALL_CLASSES,
        TinyCNN,
    ),
    "vit-tiny": _Recipe(
        "Tiny ViT (patch 4, dim 64, 4 blocks, 4 heads, separate q/k/v/proj Linear layers), "
        "1x3x32x32 input",
        SMALL_INPUT,
        SMALL_CLASSES,
        VisionTransformer,
    ),
}

_WIDTH_FAMILIES: dict[str, tuple[str, Callable[[float, int], nn.Module]]] = {
    "mobilenetv2": ("MobileNetV2 width {w} (channels rounded to multiples of 8, ReLU6)", _mobilenetv2),
    "proxylessnas": (
        "ProxylessNAS-mobile-style network width {w} (kernels 3/5/7, expand 3/6)",
        _proxylessnas,
    ),
}

_LISTED = (
    "resnet18",
    "resnet50",
    "mobilenetv2",
    "mobilenetv2-w0.35",
    "mobilenetv2-w0.5",
    "mobilenetv2-w0.75",
    "mcunet",
    "proxylessnas-w0.3",
    "mbv2-w0.35-tt",
    "mcunet-5fps-tt",
    "proxyless-w0.3-tt",
    "tinycnn",
    "vit-tiny",
)

_WIDTH_NAME = re.compile(r"^(?P<family>[a-z0-9]+)-w(?P<width>.*)$")
_NUMBER = re.compile(r"^(\d+(\.\d*)?|\.\d+)$")


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _resolve(name: str) -> tuple[str, _Recipe]:
    """Canonical name and recipe for ``name``, or a one-line :class:`ModelLoadError`."""
    if not isinstance(name, str):
        raise ModelLoadError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key in _FIXED:
        return key, _FIXED[key]
    match = _WIDTH_NAME.match(key)
    if match and match["family"] in _WIDTH_FAMILIES:
        family = match["family"]
        width = _parse_width(name, family, match["width"])
        canonical = f"{family}-w{width!r}"
        template, factory = _WIDTH_FAMILIES[family]
        recipe = _Recipe(
            f"{template.format(w=width)}, {_MCU_NOTE}",
            MCU_INPUT,
            IMAGENET_CLASSES,
            lambda k: factory(width, k),
        )
        return canonical, recipe
    raise ModelLoadError(_unknown_message(name, key))


def _parse_width(name: str, family: str, text: str) -> float:
    """The width multiplier in ``<family>-w<text>``: a plain positive number up to :data:`MAX_WIDTH`."""
    width = float(text) if _NUMBER.match(text) else None
    if width is None or not 0 < width <= MAX_WIDTH:
        raise ModelLoadError(
            f"bad width {text!r} in model name {name.strip()!r}: expected a number in (0, {MAX_WIDTH:g}], "
            f"e.g. {family}-w0.35"
        )
    return width


def _unknown_message(name: str, key: str) -> str:
    """'unknown model ...; did you mean: ...? built-in models: ...'."""
    close = difflib.get_close_matches(key, _LISTED, n=3, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else ";"
    families = ", ".join(f"{family}-w<width>" for family in _WIDTH_FAMILIES)
    return f"unknown model {name.strip()!r}{hint} built-in models: {', '.join(_LISTED)} (also {families})"


def _check_classes(num_classes: int | None, default: int) -> int:
    """``num_classes`` validated (a positive int), or the default when None."""
    if num_classes is None:
        return default
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def _seed(canonical: str) -> int:
    """The weight seed of a canonical name (stable across runs and platforms)."""
    return zlib.crc32(canonical.encode("utf-8"))


def lookup(name: str, num_classes: int | None = None) -> ZooEntry:
    """The :class:`ZooEntry` for ``name`` without building the model.

    Raises :class:`ModelLoadError` for an unknown or malformed name and :class:`InputError` for a
    bad ``num_classes``.
    """
    canonical, recipe = _resolve(name)
    classes = _check_classes(num_classes, recipe.num_classes)
    return ZooEntry(canonical, recipe.description, recipe.input_shape, classes)


def build(name: str, num_classes: int | None = None) -> tuple[nn.Module, ZooEntry]:
    """Build the built-in model ``name`` with seeded random weights, in train mode.

    The same name (and ``num_classes``) gives bit-identical weights on every call; the caller's global
    RNG state is left untouched. ``num_classes`` replaces the default classifier width.
    Raises :class:`ModelLoadError` for an unknown or malformed name.
    """
    canonical, recipe = _resolve(name)
    classes = _check_classes(num_classes, recipe.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(canonical))
        model = recipe.factory(classes)
        _initialise(model)
    model.train()
    return model, ZooEntry(canonical, recipe.description, recipe.input_shape, classes)


def list_models() -> list[ZooEntry]:
    """The listed built-in models with their default classes and input shapes."""
    return [lookup(name) for name in _LISTED]


def is_zoo_name(name: str) -> bool:
    """True exactly when :func:`build` accepts ``name`` (including any valid ``-w<width>``)."""
    try:
        _resolve(name)
    except ModelLoadError:
        return False
    return True


def _initialise(model: nn.Module) -> None:
    """Conventional init: Kaiming (fan-out) convs, unit/zero norms, small-normal linears, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, VisionTransformer):
            nn.init.trunc_normal_(module.cls_token, std=0.02)
            nn.init.trunc_normal_(module.pos_embed, std=0.02)
    if isinstance(model, TinyTrainingNet):  # no BatchNorm: the fan-out init above fades to ~1e-8
        model.init_weights()
