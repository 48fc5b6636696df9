"""Small models written in the coding style of published model libraries (torchvision, timm, HuggingFace).

Tests use them to prove that the tracer copes with real-world model code, not only with the zoo.
Each model is written from its architecture's description in the idioms those libraries use
(``norm_layer`` arguments, ``_forward_impl``, ``x += identity``, ``assert`` on input shapes, dynamic
"same" padding, ``transpose_for_scores``, ``torch.jit.is_scripting()`` checks, ...); none is copied.

``STYLE_MODELS`` maps a name to a factory returning ``(model, input_shape)``; factories are seeded, so
every call gives the same weights, and they do not disturb the global RNG. Every model is small
(< 2M parameters, input at most 1×3×64×64) and works in train and eval mode at its input shape.

``SYMBOLIC_TRACE_FAILS`` names the models that ``torch.fx.symbolic_trace`` cannot trace, because their
forward has Python control flow on tensor shapes or iterates over a traced value, as published code
does. ``torch.export.export`` traces all of them. ``SYMBOLIC_TRACE_REASONS`` says why, per model.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ModelFactory = Callable[[], tuple[nn.Module, tuple[int, ...]]]

STYLE_MODELS: dict[str, ModelFactory] = {}
"""Name → factory returning a freshly built model (train mode) and its input shape."""


def _register(
    name: str, input_shape: tuple[int, ...]
) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Register ``make`` under ``name`` as a seeded factory returning ``(make(), input_shape)``."""

    def decorator(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        def factory() -> tuple[nn.Module, tuple[int, ...]]:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(zlib.crc32(name.encode("utf-8")))
                model = make()
            return model.train(), input_shape

        factory.__doc__ = make.__doc__
        STYLE_MODELS[name] = factory
        return make

    return decorator


# ==================================================================================================
# torchvision style
# ==================================================================================================


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding (torchvision helper idiom)."""
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class TVBasicBlock(nn.Module):
    """ResNet basic block: ``out += identity`` and a shared in-place ReLU."""

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        norm_layer: Optional[Callable[..., nn.Module]] = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TVBottleneck(nn.Module):
    """ResNeXt bottleneck: grouped 3x3 conv of width ``planes * base_width / 64 * groups``."""

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVResNet(nn.Module):
    """A small CIFAR-stem ResNet built the torchvision way (``_make_layer``, ``_forward_impl``)."""

    def __init__(
        self,
        block: type[TVBasicBlock] | type[TVBottleneck],
        layers: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        stages = [
            self._make_layer(block, planes, blocks, stride=1 if i == 0 else 2)
            for i, (planes, blocks) in enumerate(zip(widths, layers))
        ]
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self, block: type[TVBasicBlock] | type[TVBottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        extra = {"groups": self.groups, "base_width": self.base_width} if block is TVBottleneck else {}
        layers = [block(self.inplanes, planes, stride, downsample, **extra)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, **extra))
        return nn.Sequential(*layers)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self._forward_impl(x)


@_register("tv_resnet", (1, 3, 32, 32))
def tv_resnet() -> nn.Module:
    """ResNet with basic blocks: residual adds, in-place ReLU, adaptive pooling, flatten, Linear."""
    return TVResNet(TVBasicBlock, layers=(2, 2, 2), widths=(16, 32, 64))


@_register("tv_resnext", (1, 3, 32, 32))
def tv_resnext() -> nn.Module:
    """ResNeXt: bottlenecks with grouped 3x3 convs (groups=4, width_per_group=16)."""
    return TVResNet(TVBottleneck, layers=(1, 1, 1), widths=(16, 32, 64), groups=4, width_per_group=16)


class _DenseLayer(nn.Module):
    """DenseNet layer: BN-ReLU-1x1 bottleneck, BN-ReLU-3x3, on the concatenation of all inputs."""

    def __init__(
        self, num_input_features: int, growth_rate: int, bn_size: int, memory_efficient: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.memory_efficient = memory_efficient

    def bn_function(self, inputs: list[Tensor]) -> Tensor:
        """Concatenate the previous features and apply the bottleneck."""
        concated_features = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(concated_features)))

    def forward(self, input: list[Tensor] | Tensor) -> Tensor:  # noqa: A002 - library naming
        """New features from a tensor or a list of previous features."""
        if isinstance(input, Tensor):
            prev_features = [input]
        else:
            prev_features = input
        if self.memory_efficient and torch.jit.is_scripting():
            raise Exception("Memory Efficient not supported in JIT")
        bottleneck_output = self.bn_function(prev_features)
        return self.conv2(self.relu2(self.norm2(bottleneck_output)))


class _DenseBlock(nn.ModuleDict):
    """Dense block: every layer sees the concatenation of the block input and all earlier outputs."""

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size)
            self.add_module("denselayer%d" % (i + 1), layer)

    def forward(self, init_features: Tensor) -> Tensor:
        """Concatenated features."""
        features = [init_features]
        for _name, layer in self.items():
            new_features = layer(features)
            features.append(new_features)
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-1x1 conv-avgpool between dense blocks."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class TVDenseNet(nn.Module):
    """A two-block DenseNet-BC."""

    def __init__(
        self,
        growth_rate: int = 12,
        block_config: Sequence[int] = (3, 3),
        num_init_features: int = 24,
        bn_size: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential()
        conv0 = nn.Conv2d(3, num_init_features, kernel_size=3, padding=1, bias=False)
        self.features.add_module("conv0", conv0)
        self.features.add_module("norm0", nn.BatchNorm2d(num_init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate)
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _Transition(num_features, num_features // 2)
                self.features.add_module("transition%d" % (i + 1), trans)
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


@_register("tv_densenet", (1, 3, 32, 32))
def tv_densenet() -> nn.Module:
    """DenseNet-BC: torch.cat of growing feature lists, transitions, functional relu/pool."""
    return TVDenseNet()


class BasicConv2d(nn.Module):
    """Conv (no bias) + BN(eps=0.001) + functional in-place ReLU, as in Inception v3."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        """conv → bn → relu."""
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    """Four parallel branches (1x1, 5x5, double 3x3, pool-proj) concatenated on channels."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 16, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 12, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(12, 16, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 16, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(16, 24, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(24, 24, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)
        return [branch1x1, branch5x5, branch3x3dbl, branch_pool]

    def forward(self, x: Tensor) -> Tensor:
        """Concatenated branches."""
        outputs = self._forward(x)
        return torch.cat(outputs, 1)


class TVInception(nn.Module):
    """A tiny Inception network with ``transform_input`` and the eager/scripting output split."""

    def __init__(self, num_classes: int = 10, transform_input: bool = True) -> None:
        super().__init__()
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 16, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(16, 32, kernel_size=3, padding=1)
        self.Mixed_5b = InceptionA(32, pool_features=16)
        self.Mixed_5c = InceptionA(72, pool_features=16)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.2)
        self.fc = nn.Linear(72, num_classes)

    def _transform_input(self, x: Tensor) -> Tensor:
        if self.transform_input:
            x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
            x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
            x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
            x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
        return x

    def _forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5b(x)
        x = self.Mixed_5c(x)
        x = self.avgpool(x)
        x = self.dropout(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    @torch.jit.unused
    def eager_outputs(self, x: Tensor) -> Tensor:
        """What eager mode returns."""
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        x = self._transform_input(x)
        x = self._forward(x)
        if torch.jit.is_scripting():
            return x
        return self.eager_outputs(x)


@_register("tv_inception", (1, 3, 64, 64))
def tv_inception() -> nn.Module:
    """Inception-A branches concatenated, input transform slicing channels, jit.is_scripting check."""
    return TVInception()


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channel groups through view → transpose → view."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, num_channels, height, width)
    return x


class ShuffleInvertedResidual(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or two branches (stride 2), concat, channel shuffle."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if not (1 <= stride <= 3):
            raise ValueError("illegal stride value")
        self.stride = stride
        branch_features = oup // 2
        if self.stride > 1:
            self.branch1 = nn.Sequential(
                self.depthwise_conv(inp, inp, kernel_size=3, stride=self.stride, padding=1),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(
                inp if (self.stride > 1) else branch_features, branch_features, kernel_size=1, bias=False
            ),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            self.depthwise_conv(
                branch_features, branch_features, kernel_size=3, stride=self.stride, padding=1
            ),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    @staticmethod
    def depthwise_conv(i: int, o: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
        """Depthwise conv (groups = channels)."""
        return nn.Conv2d(i, o, kernel_size, stride, padding, bias=False, groups=i)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit."""
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        out = channel_shuffle(out, 2)
        return out


class TVShuffleNetV2(nn.Module):
    """A narrow ShuffleNetV2."""

    def __init__(
        self,
        stages_repeats: Sequence[int] = (2, 2),
        stages_out_channels: Sequence[int] = (24, 48, 96, 256),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        input_channels = 3
        output_channels = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        input_channels = output_channels
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages: list[nn.Module] = []
        for repeats, output_channels in zip(stages_repeats, stages_out_channels[1:]):
            seq = [ShuffleInvertedResidual(input_channels, output_channels, 2)]
            for _ in range(repeats - 1):
                seq.append(ShuffleInvertedResidual(output_channels, output_channels, 1))
            stages.append(nn.Sequential(*seq))
            input_channels = output_channels
        self.stages = nn.Sequential(*stages)
        output_channels = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits; global pooling as ``x.mean([2, 3])``."""
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stages(x)
        x = self.conv5(x)
        x = x.mean([2, 3])
        return self.fc(x)


@_register("tv_shufflenetv2", (1, 3, 32, 32))
def tv_shufflenetv2() -> nn.Module:
    """ShuffleNetV2: depthwise convs, chunk, concat, channel shuffle through view/transpose/view."""
    return TVShuffleNetV2()


def _make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    """Round channels to a multiple of ``divisor`` without going 10 % below ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class SqueezeExcitation(nn.Module):
    """torchvision-style SE: avgpool → fc1 (1x1 conv) → ReLU → fc2 → hardsigmoid; ``scale * input``."""

    def __init__(self, input_channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def _scale(self, input: Tensor) -> Tensor:  # noqa: A002
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        """Channel-reweighted input."""
        scale = self._scale(input)
        return scale * input


@dataclass
class InvertedResidualConfig:
    """One MobileNetV3 block: kernel, expanded and output channels, SE, activation, stride."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int


class MBV3InvertedResidual(nn.Module):
    """MobileNetV3 block: expand → depthwise → optional SE → project, residual when shapes match."""

    def __init__(self, cnf: InvertedResidualConfig) -> None:
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        activation_layer = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers += [
                nn.Conv2d(cnf.input_channels, cnf.expanded_channels, 1, bias=False),
                nn.BatchNorm2d(cnf.expanded_channels, eps=0.001, momentum=0.01),
                activation_layer(inplace=True),
            ]
        layers += [
            nn.Conv2d(cnf.expanded_channels, cnf.expanded_channels, cnf.kernel, cnf.stride,
                      (cnf.kernel - 1) // 2, groups=cnf.expanded_channels, bias=False),
            nn.BatchNorm2d(cnf.expanded_channels, eps=0.001, momentum=0.01),
            activation_layer(inplace=True),
        ]
        if cnf.use_se:
            squeeze_channels = _make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(cnf.expanded_channels, squeeze_channels))
        layers += [
            nn.Conv2d(cnf.expanded_channels, cnf.out_channels, 1, bias=False),
            nn.BatchNorm2d(cnf.out_channels, eps=0.001, momentum=0.01),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        """Apply the block."""
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


class TVMobileNetV3(nn.Module):
    """A MobileNetV3-small-like network with a Hardswish classifier head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        settings = [
            InvertedResidualConfig(16, 3, 16, 16, True, False, 2),
            InvertedResidualConfig(16, 3, 72, 24, False, False, 2),
            InvertedResidualConfig(24, 3, 88, 24, False, False, 1),
            InvertedResidualConfig(24, 5, 96, 40, True, True, 2),
            InvertedResidualConfig(40, 5, 240, 40, True, True, 1),
            InvertedResidualConfig(40, 5, 120, 48, True, True, 1),
        ]
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(3, 16, 3, 2, 1, bias=False),
                nn.BatchNorm2d(16, eps=0.001, momentum=0.01),
                nn.Hardswish(inplace=True),
            )
        ]
        layers += [MBV3InvertedResidual(cnf) for cnf in settings]
        layers.append(
            nn.Sequential(
                nn.Conv2d(48, 288, 1, bias=False),
                nn.BatchNorm2d(288, eps=0.001, momentum=0.01),
                nn.Hardswish(inplace=True),
            )
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(288, 256),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=0.2, inplace=True),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@_register("tv_mobilenetv3", (1, 3, 64, 64))
def tv_mobilenetv3() -> nn.Module:
    """MobileNetV3: depthwise convs, SE (hardsigmoid, ``scale * input``), hardswish, ``result += input``."""
    return TVMobileNetV3()


# ==================================================================================================
# timm style
# ==================================================================================================


def get_same_padding(x: int, kernel_size: int, stride: int, dilation: int) -> int:
    """TF "SAME" padding amount for one spatial dimension of size ``x``."""
    return max((math.ceil(x / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - x, 0)


def pad_same(
    x: Tensor, kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int] = (1, 1)
) -> Tensor:
    """Pad ``x`` so a conv with these settings behaves like TensorFlow's "SAME" padding."""
    ih, iw = x.size()[-2:]
    pad_h = get_same_padding(ih, kernel_size[0], stride[0], dilation[0])
    pad_w = get_same_padding(iw, kernel_size[1], stride[1], dilation[1])
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
    return x


class Conv2dSame(nn.Conv2d):
    """Conv2d with dynamic TF "SAME" padding computed from the input's shape at every call."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, 1, groups, bias)

    def forward(self, x: Tensor) -> Tensor:
        """Pad, then convolve through the functional API."""
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SqueezeExcite(nn.Module):
    """timm-style SE: mean over H, W (keepdim) → reduce → act → expand → sigmoid gate; ``x * gate``."""

    def __init__(self, in_chs: int, rd_channels: int, act_layer: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """Gated input."""
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_reduce(x_se)
        x_se = self.act1(x_se)
        x_se = self.conv_expand(x_se)
        return x * self.gate(x_se)


class DropPath(nn.Module):
    """Stochastic depth per sample (a no-op in eval mode or with ``drop_prob == 0``)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        """Randomly drop whole samples during training."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
        return x * random_tensor.div_(keep_prob)


class EffInvertedResidual(nn.Module):
    """EfficientNet MBConv: pw expand → dw (SAME padding) → SE → pw linear, DropPath + skip."""

    def __init__(self, in_chs: int, out_chs: int, dw_kernel_size: int, stride: int, exp_ratio: float,
                 se_ratio: float = 0.25, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        mid_chs = int(in_chs * exp_ratio)
        self.has_skip = in_chs == out_chs and stride == 1
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs, eps=1e-3)
        self.act1 = nn.SiLU(inplace=True)
        self.conv_dw = Conv2dSame(mid_chs, mid_chs, dw_kernel_size, stride=stride, groups=mid_chs)
        self.bn2 = nn.BatchNorm2d(mid_chs, eps=1e-3)
        self.act2 = nn.SiLU(inplace=True)
        self.se = SqueezeExcite(mid_chs, rd_channels=max(1, int(in_chs * se_ratio)))
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs, eps=1e-3)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        shortcut = x
        x = self.act1(self.bn1(self.conv_pw(x)))
        x = self.act2(self.bn2(self.conv_dw(x)))
        x = self.se(x)
        x = self.bn3(self.conv_pwl(x))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class TimmEfficientNet(nn.Module):
    """A tiny ``tf_efficientnet``-like network (TF "SAME" padding everywhere)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_stem = Conv2dSame(3, 16, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(16, eps=1e-3)
        self.act1 = nn.SiLU(inplace=True)
        arch = [(16, 16, 3, 1, 1), (16, 24, 3, 2, 6), (24, 24, 3, 1, 6), (24, 40, 5, 2, 6), (40, 40, 5, 1, 6),
                (40, 80, 3, 2, 6)]
        self.blocks = nn.Sequential(*[EffInvertedResidual(i, o, k, s, e, drop_path_rate=0.05 * n)
                                      for n, (i, o, k, s, e) in enumerate(arch)])
        self.conv_head = nn.Conv2d(80, 320, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(320, eps=1e-3)
        self.act2 = nn.SiLU(inplace=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(320, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map before pooling."""
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return self.act2(self.bn2(self.conv_head(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool and classify."""
        x = self.flatten(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.forward_head(self.forward_features(x))


@_register("timm_efficientnet", (1, 3, 64, 64))
def timm_efficientnet() -> nn.Module:
    """EfficientNet: SiLU, SE ``x * gate(x_se)``, Conv2dSame with shape-dependent padding, DropPath."""
    return TimmEfficientNet()


class PatchEmbed(nn.Module):
    """Image to patch tokens, asserting the input size like timm does."""

    def __init__(
        self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 64
    ) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, N, D)."""
        B, C, H, W = x.shape
        assert H == self.img_size[0], f"Input height ({H}) doesn't match model ({self.img_size[0]})."
        assert W == self.img_size[1], f"Input width ({W}) doesn't match model ({self.img_size[1]})."
        x = self.proj(x)
        x = x.flatten(2).transpose(1, 2)  # BCHW -> BNC
        return self.norm(x)


class TimmAttention(nn.Module):
    """Fused qkv Linear, reshape/permute/unbind, ``q @ k.transpose(-2, -1)``, softmax, ``attn @ v``."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim should be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = False
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention over (B, N, C)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        return self.proj_drop(x)


class LayerScale(nn.Module):
    """Per-channel learnable scaling of a residual branch."""

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Scaled input."""
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


class Mlp(nn.Module):
    """Linear → GELU → Linear (with optional dropout)."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(0.0)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class TimmBlock(nn.Module):
    """Pre-norm ViT block with LayerScale and DropPath."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, init_values: Optional[float] = None
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TimmAttention(dim, num_heads=num_heads, qkv_bias=True)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(0.0)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(0.0)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class TimmVisionTransformer(nn.Module):
    """A tiny timm-style ViT with class token, position embedding and LayerScale."""

    def __init__(self, img_size: int = 32, patch_size: int = 4, num_classes: int = 10, embed_dim: int = 64,
                 depth: int = 2, num_heads: int = 4, global_pool: str = "token") -> None:
        super().__init__()
        self.global_pool = global_pool
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, embed_dim) * 0.02)
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.Sequential(
            *[TimmBlock(embed_dim, num_heads, init_values=1e-1) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def _pos_embed(self, x: Tensor) -> Tensor:
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        return self.pos_drop(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Token features after the final norm."""
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Pool the class token (or average) and classify."""
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.forward_head(self.forward_features(x))


@_register("timm_vit", (1, 3, 32, 32))
def timm_vit() -> nn.Module:
    """ViT: ``B, C, H, W = x.shape`` + asserts, fused-qkv attention with ``@`` and softmax, LayerScale."""
    return TimmVisionTransformer()


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (permute → layer_norm → permute)."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise channels."""
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise → channels-last LayerNorm → Linear ×4 → GELU → Linear, ``x.mul(gamma)``, skip."""

    def __init__(self, dim: int, ls_init_value: float = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim)) if ls_init_value > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        shortcut = x
        x = self.conv_dw(x)
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = self.mlp(x)
        x = x.permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        x = self.drop_path(x) + shortcut
        return x


class TimmConvNeXt(nn.Module):
    """A two-stage ConvNeXt with patchify stem and LayerNorm2d downsampling."""

    def __init__(
        self, dims: Sequence[int] = (32, 64), depths: Sequence[int] = (2, 2), num_classes: int = 10
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6)
        )
        stages: list[nn.Module] = []
        prev = dims[0]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            downsample: nn.Module = nn.Identity()
            if i > 0:
                downsample = nn.Sequential(
                    LayerNorm2d(prev, eps=1e-6), nn.Conv2d(prev, dim, kernel_size=2, stride=2)
                )
            blocks = [ConvNeXtBlock(dim, ls_init_value=0.1) for _ in range(depth)]
            stages.append(nn.Sequential(downsample, *blocks))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.LayerNorm(prev, eps=1e-6)
        self.head_fc = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits; global pooling as ``x.mean([-2, -1])``."""
        x = self.stages(self.stem(x))
        x = x.mean([-2, -1])
        return self.head_fc(self.head_norm(x))


@_register("timm_convnext", (1, 3, 64, 64))
def timm_convnext() -> nn.Module:
    """ConvNeXt: 7x7 depthwise, LayerNorm on permuted tensors, Linear pointwise MLP, layer scale."""
    return TimmConvNeXt()


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (BiT): the weight goes through F.batch_norm before F.conv2d."""

    def __init__(
        self,
        in_channel: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(in_channel, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Standardise the weight per output channel, then convolve."""
        flat = self.weight.reshape(1, self.out_channels, -1)
        weight = F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=self.eps)
        weight = weight.reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PreActBottleneck(nn.Module):
    """ResNetV2 pre-activation bottleneck with GroupNorm and standardised convs."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, groups: int = 8) -> None:
        super().__init__()
        mid_chs = out_chs // 4
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = StdConv2d(in_chs, out_chs, 1, stride=stride)
        self.norm1 = nn.GroupNorm(groups, in_chs)
        self.conv1 = StdConv2d(in_chs, mid_chs, 1)
        self.norm2 = nn.GroupNorm(groups, mid_chs)
        self.conv2 = StdConv2d(mid_chs, mid_chs, 3, stride=stride, padding=1)
        self.norm3 = nn.GroupNorm(groups, mid_chs)
        self.conv3 = StdConv2d(mid_chs, out_chs, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        x_preact = F.relu(self.norm1(x))
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(F.relu(self.norm2(x)))
        x = self.conv3(F.relu(self.norm3(x)))
        return x + shortcut


class TimmResNetV2(nn.Module):
    """BiT-style ResNetV2: StdConv stem, pre-activation stages, final GroupNorm + ReLU, 1x1-conv head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = StdConv2d(3, 32, 3, stride=1, padding=1)
        self.stages = nn.Sequential(PreActBottleneck(32, 64), PreActBottleneck(64, 128, stride=2),
                                    PreActBottleneck(128, 128))
        self.norm = nn.GroupNorm(8, 128)
        self.head = nn.Conv2d(128, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits; the classifier is a 1x1 conv on the pooled map, then flattened."""
        x = self.stages(self.stem(x))
        x = F.relu(self.norm(x), inplace=True)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.head(x).flatten(1)


@_register("timm_resnetv2_gn", (1, 3, 32, 32))
def timm_resnetv2_gn() -> nn.Module:
    """ResNetV2/BiT: GroupNorm, weight-standardised convs through F.batch_norm + F.conv2d."""
    return TimmResNetV2()


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: the 1x1 output is split into ``scale`` chunks processed hierarchically."""

    expansion = 2

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, base_width: int = 16, scale: int = 4
    ) -> None:
        super().__init__()
        self.scale = scale
        self.is_first = stride > 1 or inplanes != planes * self.expansion
        self.width = int(math.floor(planes * (base_width / 64.0)))
        width = self.width
        self.conv1 = nn.Conv2d(inplanes, width * scale, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(
            [nn.Conv2d(width, width, 3, stride, 1, bias=False) for _ in range(scale - 1)]
        )
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(scale - 1)])
        self.pool = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1) if self.is_first else None
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if self.is_first:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        spo = []
        sp: Optional[Tensor] = None
        for i, spx in enumerate(torch.split(out, self.width, 1)):
            if i < self.scale - 1:
                sp = spx if i == 0 or self.is_first or sp is None else sp + spx
                sp = self.relu(self.bns[i](self.convs[i](sp)))
                spo.append(sp)
            elif self.pool is not None:
                spo.append(self.pool(spx))
            else:
                spo.append(spx)
        out = torch.cat(spo, 1)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out += shortcut
        return self.relu(out)


class TimmRes2Net(nn.Module):
    """A three-block Res2Net."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU(inplace=True)
        self.layers = nn.Sequential(Bottle2neck(32, 32), Bottle2neck(64, 32), Bottle2neck(64, 64, stride=2))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        x = self.layers(self.act1(self.bn1(self.conv1(x))))
        return self.fc(self.global_pool(x).flatten(1))


@_register("timm_res2net", (1, 3, 32, 32))
def timm_res2net() -> nn.Module:
    """Res2Net: iterates over ``torch.split`` of a tensor, ModuleList indexing, hierarchical adds."""
    return TimmRes2Net()


class MixerBlock(nn.Module):
    """MLP-Mixer block: token-mixing MLP on transposed tokens, then channel-mixing MLP."""

    def __init__(self, dim: int, seq_len: int, mlp_ratio: tuple[float, float] = (0.5, 4.0)) -> None:
        super().__init__()
        tokens_dim, channels_dim = (int(x * dim) for x in mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(seq_len, tokens_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, channels_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to (B, N, C)."""
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.mlp_channels(self.norm2(x))
        return x


class TimmMlpMixer(nn.Module):
    """A tiny MLP-Mixer (patch 4 on 32x32)."""

    def __init__(self, num_classes: int = 10, embed_dim: int = 64, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, embed_dim, kernel_size=4, stride=4)
        self.blocks = nn.Sequential(*[MixerBlock(embed_dim, 64) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


@_register("timm_mlp_mixer", (1, 3, 32, 32))
def timm_mlp_mixer() -> nn.Module:
    """MLP-Mixer: Linear layers acting on both the token and the channel axis."""
    return TimmMlpMixer()


# ==================================================================================================
# HuggingFace style
# ==================================================================================================


@dataclass
class TinyViTConfig:
    """The subset of a ``ViTConfig`` the modules below read."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    image_size: int = 32
    patch_size: int = 4
    num_channels: int = 3
    num_labels: int = 10


class HFViTPatchEmbeddings(nn.Module):
    """Pixel values → patch embeddings, raising ValueError on a channel or size mismatch."""

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        self.image_size = (config.image_size, config.image_size)
        self.num_channels = config.num_channels
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, config.patch_size
        )

    def forward(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        """(B, C, H, W) → (B, N, D)."""
        batch_size, num_channels, height, width = pixel_values.shape
        if num_channels != self.num_channels:
            raise ValueError(
                "Make sure that the channel dimension of the pixel values match with the one set in the"
                f" configuration. Expected {self.num_channels} but got {num_channels}."
            )
        if not interpolate_pos_encoding:
            if height != self.image_size[0] or width != self.image_size[1]:
                raise ValueError(
                    f"Input image size ({height}*{width}) doesn't match model"
                    f" ({self.image_size[0]}*{self.image_size[1]})."
                )
        embeddings = self.projection(pixel_values).flatten(2).transpose(1, 2)
        return embeddings


class HFViTEmbeddings(nn.Module):
    """CLS token + patch embeddings + position embeddings."""

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.patch_embeddings = HFViTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(
            torch.randn(1, self.patch_embeddings.num_patches + 1, config.hidden_size)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Embedded tokens."""
        batch_size = pixel_values.shape[0]
        embeddings = self.patch_embeddings(pixel_values)
        cls_tokens = self.cls_token.expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        embeddings = embeddings + self.position_embeddings
        return self.dropout(embeddings)


class HFViTSdpaSelfAttention(nn.Module):
    """query/key/value Linear layers, ``transpose_for_scores``, ``F.scaled_dot_product_attention``."""

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = int(config.hidden_size / config.num_attention_heads)
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def transpose_for_scores(self, x: Tensor) -> Tensor:
        """(B, N, all_head_size) → (B, heads, N, head_size)."""
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        x = x.view(new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states: Tensor) -> Tensor:
        """Context layer (B, N, all_head_size)."""
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        context_layer = F.scaled_dot_product_attention(
            query_layer,
            key_layer,
            value_layer,
            attn_mask=None,
            dropout_p=self.dropout_prob if self.training else 0.0,
            is_causal=False,
            scale=None,
        )
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        return context_layer.view(new_context_layer_shape)


class HFViTLayer(nn.Module):
    """layernorm_before → attention → output dense + residual → layernorm_after → intermediate → output."""

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = HFViTSdpaSelfAttention(config)
        self.attention_output = nn.Linear(config.hidden_size, config.hidden_size)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = nn.GELU()
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor) -> Tensor:
        """Apply the layer."""
        attention_output = self.attention(self.layernorm_before(hidden_states))
        attention_output = self.dropout(self.attention_output(attention_output))
        hidden_states = attention_output + hidden_states
        layer_output = self.intermediate_act_fn(self.intermediate(self.layernorm_after(hidden_states)))
        layer_output = self.dropout(self.output(layer_output))
        return layer_output + hidden_states


class HFViTForImageClassification(nn.Module):
    """Embeddings, encoder layers, final LayerNorm, classifier on the CLS token."""

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = HFViTEmbeddings(config)
        self.layer = nn.ModuleList([HFViTLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pixel_values: Optional[Tensor] = None) -> Tensor:
        """Logits."""
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        hidden_states = self.embeddings(pixel_values)
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states)
        sequence_output = self.layernorm(hidden_states)
        return self.classifier(sequence_output[:, 0, :])


@_register("hf_vit_sdpa", (1, 3, 32, 32))
def hf_vit_sdpa() -> nn.Module:
    """HF ViT: shape checks raising ValueError, ``x.size()[:-1] + (...)`` views, SDPA attention."""
    return HFViTForImageClassification(TinyViTConfig())


# ==================================================================================================
# Research-code style (GitHub repositories rather than libraries)
# ==================================================================================================


class SelfAttn2d(nn.Module):
    """SAGAN-style non-local attention on a feature map: 1x1-conv q/k/v, ``torch.bmm``/``torch.matmul``."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """x + gamma · attention(x)."""
        m_batchsize, C, width, height = x.size()
        proj_query = self.query_conv(x).view(m_batchsize, -1, width * height).permute(0, 2, 1)
        proj_key = self.key_conv(x).view(m_batchsize, -1, width * height)
        energy = torch.bmm(proj_query, proj_key)
        attention = self.softmax(energy)
        proj_value = self.value_conv(x).view(m_batchsize, -1, width * height)
        out = torch.matmul(proj_value, attention.permute(0, 2, 1))
        out = out.view(m_batchsize, C, width, height)
        out = self.gamma * out + x
        return out


class NonLocalNet(nn.Module):
    """Conv stem, a self-attention layer on the 16x16 map, conv, pool, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.LeakyReLU(0.1, inplace=True)
        )
        self.attn = SelfAttn2d(32)
        self.conv = nn.Sequential(
            nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.1, inplace=True)
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        x = self.conv(self.attn(self.stem(x)))
        return self.fc(F.adaptive_max_pool2d(x, 1).view(x.size(0), -1))


@_register("nonlocal_attention", (1, 3, 32, 32))
def nonlocal_attention() -> nn.Module:
    """Non-local/SAGAN attention: ``B, C, H, W = x.size()`` views, bmm, matmul, softmax, learnable gamma."""
    return NonLocalNet()


class RecurrentBlock(nn.Module):
    """R2U-Net recurrent conv: the *same* conv-BN-ReLU is applied ``t + 1`` times (weight sharing)."""

    def __init__(self, ch_out: int, t: int = 2) -> None:
        super().__init__()
        self.t = t
        self.conv = nn.Sequential(
            nn.Conv2d(ch_out, ch_out, kernel_size=3, stride=1, padding=1, bias=True),
            nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x1 = conv(x); then x1 = conv(x + x1) ``t`` times."""
        for i in range(self.t):
            if i == 0:
                x1 = self.conv(x)
            x1 = self.conv(x + x1)
        return x1


class RRCNNBlock(nn.Module):
    """1x1 conv then two recurrent blocks, with a residual add."""

    def __init__(self, ch_in: int, ch_out: int, t: int = 2) -> None:
        super().__init__()
        self.RCNN = nn.Sequential(RecurrentBlock(ch_out, t=t), RecurrentBlock(ch_out, t=t))
        self.Conv_1x1 = nn.Conv2d(ch_in, ch_out, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        x = self.Conv_1x1(x)
        x1 = self.RCNN(x)
        return x + x1


class RecurrentNet(nn.Module):
    """Two RRCNN stages with max-pooling and a Linear classifier sharing one conv across calls."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.Maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.RRCNN1 = RRCNNBlock(3, 16)
        self.RRCNN2 = RRCNNBlock(16, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        x = self.RRCNN2(self.Maxpool(self.RRCNN1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


@_register("recurrent_shared_conv", (1, 3, 32, 32))
def recurrent_shared_conv() -> nn.Module:
    """R2U-Net-style recurrent blocks: one nn.Conv2d (and its BN) called several times per forward."""
    return RecurrentNet()


class FunctionalConv2d(nn.Module):
    """A conv layer holding raw parameters and calling ``F.conv2d(x, self.weight, self.bias)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.groups = stride, padding, groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve."""
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)


class FunctionalBatchNorm2d(nn.Module):
    """Batch norm through ``F.batch_norm`` with hand-registered running buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (batch statistics in training, running statistics in eval)."""
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)


class FunctionalNet(nn.Module):
    """A net written with the functional API: F.conv2d/F.linear on own parameters, relu_, ``y += x``.

    It accepts an unbatched CHW image too (``if x.dim() == 3``), and reuses ``self.mix.weight`` in two
    ``F.conv2d`` calls.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = FunctionalConv2d(3, 24, 3, stride=2, padding=1)
        self.bn1 = FunctionalBatchNorm2d(24)
        self.dw = FunctionalConv2d(24, 24, 3, padding=1, groups=24)
        self.mix = FunctionalConv2d(24, 24, 1)
        self.bn2 = FunctionalBatchNorm2d(24)
        self.fc_weight = nn.Parameter(torch.randn(num_classes, 24) * 0.05)
        self.fc_bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, classes), or (classes,) for an unbatched image."""
        unbatched = False
        if x.dim() == 3:
            x = x.unsqueeze(0)
            unbatched = True
        x = self.bn1(self.conv1(x)).relu_()
        y = F.conv2d(self.dw(x), self.mix.weight, self.mix.bias)
        y = F.conv2d(F.relu(self.bn2(y)), self.mix.weight, self.mix.bias)
        y += x  # in place on a conv output, which autograd does not keep (x itself is saved by dw)
        x = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        out = F.linear(x, self.fc_weight, self.fc_bias)
        return out.squeeze(0) if unbatched else out


@_register("functional", (1, 3, 32, 32))
def functional() -> nn.Module:
    """Functional API: F.conv2d/F.linear/F.batch_norm on own parameters, shared weight, relu_, ``+=``."""
    return FunctionalNet()


class DoubleConv(nn.Module):
    """(conv → BN → ReLU) × 2."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: Optional[int] = None) -> None:
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply both convs."""
        return self.double_conv(x)


class Down(nn.Module):
    """Max-pool then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        """Downscale."""
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Bilinear ``F.interpolate`` ×2, pad to the skip's size, concat with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Upscale ``x1`` and fuse it with the skip connection ``x2``."""
        x1 = F.interpolate(x1, scale_factor=2, mode="bilinear", align_corners=True)
        diffY = x2.size()[2] - x1.size()[2]
        diffX = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    """A three-level UNet that pads its input to a multiple of 8 and crops the logits back."""

    def __init__(self, n_channels: int = 3, n_classes: int = 2) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.inc = DoubleConv(n_channels, 16)
        self.down1 = Down(16, 32)
        self.down2 = Down(32, 64)
        self.down3 = Down(64, 64)
        self.up1 = Up(128, 32)
        self.up2 = Up(64, 16)
        self.up3 = Up(32, 16)
        self.outc = nn.Conv2d(16, n_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Per-pixel logits (B, n_classes, H, W)."""
        h, w = x.shape[-2:]
        pad_h, pad_w = (8 - h % 8) % 8, (8 - w % 8) % 8
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(x4, x3)
        x = self.up2(x, x2)
        x = self.up3(x, x1)
        logits = self.outc(x)
        return logits[..., :h, :w]


@_register("unet", (1, 3, 60, 60))
def unet() -> nn.Module:
    """UNet: encoder-decoder, F.interpolate upsampling, skip concat, shape-dependent padding."""
    return UNet()


# ==================================================================================================
# What torch.fx.symbolic_trace makes of them (checked by tests/test_model_styles.py)
# ==================================================================================================

SYMBOLIC_TRACE_REASONS: dict[str, str] = {
    "timm_efficientnet": "Conv2dSame's `max(pad, 0)` and `if pad_h > 0 or pad_w > 0` compare values computed "
    "from the traced input size",
    "timm_vit": "PatchEmbed asserts on traced H and W (`assert H == self.img_size[0], f'...'`)",
    "timm_res2net": "iterates over torch.split(...) of a traced tensor",
    "hf_vit_sdpa": "patch embeddings branch on traced num_channels/height/width to raise ValueError",
    "functional": "`if x.dim() == 3:` branches on a traced value",
    "unet": "`if pad_h or pad_w:` on padding computed from traced H and W",
}
"""Why symbolic_trace fails, per model it fails on."""

SYMBOLIC_TRACE_FAILS: set[str] = set(SYMBOLIC_TRACE_REASONS)
"""Models on which ``torch.fx.symbolic_trace`` raises; it succeeds on every other model."""

STOCHASTIC_IN_TRAIN: set[str] = {"tv_inception", "tv_mobilenetv3", "timm_efficientnet"}
"""Models whose train-mode output is random (dropout, drop path); every model is deterministic in eval."""
