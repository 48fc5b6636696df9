"""What a microcontroller training runtime keeps for backward, per layer op (tiny-training conventions).

Lin et al. 2022 ("On-device training under 256KB memory", Tiny Training Engine) price a training step
differently from PyTorch eager:

* activations are int8 (the target's ``activation_dtype``); BatchNorm is folded into the conv before it
  and costs nothing of its own;
* ReLU-like ops keep a **1-bit mask** per output element instead of a tensor;
* a conv/linear keeps its **input activation** only when its weight is updated; for a depthwise conv
  only the selected channels' input is needed; a bias-only update keeps nothing;
* other ops on the gradient path keep their activation inputs (conservative).

Each rule is a small function of the layer's shapes and of the update decisions, registered by the
normalised op name of :class:`budgetplan.graph.Layer` (``conv2d``, ``relu6``, ...). The function returns
the saved items as ``(storage key or None, bytes)``: a key means the activation storage itself is kept
(bytes = its int8 size, or a part of it); ``None`` means a separate buffer of that size (a mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from budgetplan.graph import Layer


@dataclass(frozen=True)
class LayerContext:
    """What an MCU rule may look at for one layer.

    ``input_keys``/``input_numels``: the layer's activation inputs (storage key, elements);
    ``output_numel``: elements of its first output; ``grad_flows``: some activation input needs a
    gradient; ``trained_fraction``: trained rows of the layer's weight / all rows (0 when frozen);
    ``depthwise``: a conv with one input channel per group; ``activation_bytes``: bytes per element.
    """

    layer: Layer
    input_keys: tuple[int, ...]
    input_numels: tuple[int, ...]
    output_numel: int
    grad_flows: bool
    trained_fraction: float
    depthwise: bool
    activation_bytes: int


SavedItem = tuple[int | None, int]
McuRule = Callable[[LayerContext], list[SavedItem]]
MCU_SAVED: dict[str, McuRule] = {}


def register_mcu(*ops: str) -> Callable[[McuRule], McuRule]:
    """Register a rule for one or more normalised layer ops."""

    def wrap(fn: McuRule) -> McuRule:
        for op in ops:
            MCU_SAVED[op] = fn
        return fn

    return wrap


def mcu_saved(ctx: LayerContext) -> list[SavedItem]:
    """Saved items of one layer; ops without a rule keep their activation inputs when a gradient flows."""
    rule = MCU_SAVED.get(ctx.layer.op, keeps_inputs)
    return rule(ctx)


def keeps_inputs(ctx: LayerContext) -> list[SavedItem]:
    """Default (mul, sigmoid, softmax, layer_norm, matmul of activations, ...): keep every activation
    input, int8, when a gradient flows through the op."""
    if not ctx.grad_flows:
        return []
    return [(key, numel * ctx.activation_bytes) for key, numel in zip(ctx.input_keys, ctx.input_numels)]


@register_mcu("conv1d", "conv2d", "conv3d", "linear", "matmul", "mm", "addmm", "convolution")
def weighted_layer(ctx: LayerContext) -> list[SavedItem]:
    """The input activation is needed for the weight gradient only; depthwise: only trained channels."""
    if ctx.layer.weight is None:
        return keeps_inputs(ctx)
    if ctx.trained_fraction <= 0 or not ctx.input_keys:
        return []
    key, numel = ctx.input_keys[0], ctx.input_numels[0]
    fraction = ctx.trained_fraction if ctx.depthwise else 1.0
    return [(key, math.ceil(numel * fraction) * ctx.activation_bytes)]


@register_mcu("relu", "relu6", "hardtanh", "leaky_relu", "threshold")
def relu_mask(ctx: LayerContext) -> list[SavedItem]:
    """One bit per output element tells where the gradient passes."""
    return [(None, math.ceil(ctx.output_numel / 8))] if ctx.grad_flows else []


@register_mcu("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices")
def max_pool_mask(ctx: LayerContext) -> list[SavedItem]:
    """One bit per input element marks the maxima."""
    return [(None, math.ceil(sum(ctx.input_numels[:1]) / 8))] if ctx.grad_flows else []


@register_mcu(
    "batch_norm", "add", "sub", "cat", "mean", "avg_pool2d", "adaptive_avg_pool2d", "flatten", "view",
    "reshape", "getitem", "dropout", "identity", "permute", "transpose", "contiguous", "clone", "pad",
    "constant_pad_nd", "size", "slice", "select", "unsqueeze", "squeeze", "expand", "chunk", "split",
    "upsample_nearest2d", "interpolate", "neg", "sum", "_unsafe_view", "alias", "t",
)
def keeps_nothing(ctx: LayerContext) -> list[SavedItem]:
    """Linear ops whose backward needs only shapes (BatchNorm: folded into the conv before it)."""
    return []
