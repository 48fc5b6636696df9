"""What a microcontroller training runtime keeps for backward, per layer op (tiny-training conventions).

Lin et al. 2022 ("On-device training under 256KB memory", Tiny Training Engine) price a training step
differently from PyTorch eager:

* activations are int8 (the target's ``activation_dtype``); BatchNorm is folded into the conv before it
  and costs nothing of its own;
* ReLU-like ops keep a **1-bit mask** per output element instead of a tensor;
* a conv/linear keeps its **input activation** only when its weight is updated; for a depthwise conv
  only the selected channels' input is needed; a bias-only update keeps nothing;
* other ops on the gradient path keep their activation inputs (conservative).

Each rule is a small function of the layer's shapes, registered by the normalised op name of a layer
(:class:`LayerLike`: ``conv2d``, ``relu6``, ...; the planner's layer graph supplies them). It returns :class:`McuSaved` items that say
what may be kept and under which decision ("the gradient flows into input s", "the weight is trained",
"these rows are trained"), so the same rules price a concrete update set (:mod:`budgetplan.pricing.mcu.exact`)
and become linear constraints for the planner.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from budgetplan.cost_models.registry import OpRegistry


class LayerLike(Protocol):
    """What the rules read of a layer: its normalised op name and its weight parameter (None: no weight)."""

    @property
    def op(self) -> str: ...

    @property
    def weight(self) -> str | None: ...


@dataclass(frozen=True)
class LayerContext:
    """What an MCU rule may look at for one layer (shapes only: no update decisions).

    ``input_keys``/``input_numels``: the layer's activation inputs (storage key, elements);
    ``output_numel``: elements of its first output; ``depthwise``: a conv with one input channel per
    group; ``activation_bytes``: bytes per activation element.
    """

    layer: LayerLike
    input_keys: tuple[int, ...]
    input_numels: tuple[int, ...]
    output_numel: int
    depthwise: bool
    activation_bytes: int


@dataclass(frozen=True)
class McuSaved:
    """One thing a layer keeps for backward, and when.

    ``key``: the activation storage kept (None: a separate buffer, e.g. a mask); ``nbytes``: its size;
    ``when``: ``"grad"`` — kept when the gradient flows into activation ``on`` (a storage key);
    ``"weight"`` — kept when any row of the layer's weight is trained; ``"weight-fraction"`` — kept for
    the trained rows only (``nbytes`` is the size for all rows; a depthwise conv's input).
    """

    key: int | None
    nbytes: int
    when: str
    on: int | None = None

    def active_bytes(self, grad_flows_into: set[int], trained_fraction: float) -> int:
        """Bytes kept under concrete decisions."""
        if self.when == "grad":
            return self.nbytes if self.on in grad_flows_into else 0
        if self.when == "weight":
            return self.nbytes if trained_fraction > 0 else 0
        return math.ceil(self.nbytes * trained_fraction)


McuRule = Callable[[LayerContext], list[McuSaved]]
MCU_SAVED: OpRegistry[McuRule] = OpRegistry("microcontroller rule")


def register_mcu(*ops: str) -> Callable[[McuRule], McuRule]:
    """Register a rule for one or more normalised layer ops."""
    return MCU_SAVED.register(*ops)


def mcu_saved(ctx: LayerContext) -> list[McuSaved]:
    """What one layer may keep; ops without a rule keep their activation inputs when a gradient flows."""
    rule = MCU_SAVED.get(ctx.layer.op, keeps_inputs)
    return rule(ctx)


def keeps_inputs(ctx: LayerContext) -> list[McuSaved]:
    """Default (mul, sigmoid, softmax, layer_norm, matmul of activations, ...): keep each activation
    input, int8, when a gradient flows into it."""
    return [McuSaved(key, numel * ctx.activation_bytes, "grad", key)
            for key, numel in zip(ctx.input_keys, ctx.input_numels)]


@register_mcu("conv1d", "conv2d", "conv3d", "linear", "matmul", "mm", "addmm", "convolution")
def weighted_layer(ctx: LayerContext) -> list[McuSaved]:
    """The input activation is needed for the weight gradient only; depthwise: only trained channels."""
    if ctx.layer.weight is None:
        return keeps_inputs(ctx)
    if not ctx.input_keys:
        return []
    key, numel = ctx.input_keys[0], ctx.input_numels[0]
    return [McuSaved(key, numel * ctx.activation_bytes, "weight-fraction" if ctx.depthwise else "weight")]


@register_mcu("relu", "relu6", "hardtanh", "leaky_relu", "threshold")
def relu_mask(ctx: LayerContext) -> list[McuSaved]:
    """One bit per output element tells where the gradient passes."""
    return [McuSaved(None, math.ceil(ctx.output_numel / 8), "grad", ctx.input_keys[0])] if ctx.input_keys else []


@register_mcu("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices")
def max_pool_mask(ctx: LayerContext) -> list[McuSaved]:
    """One bit per input element marks the maxima."""
    if not ctx.input_keys:
        return []
    return [McuSaved(None, math.ceil(ctx.input_numels[0] / 8), "grad", ctx.input_keys[0])]


@register_mcu(
    "batch_norm", "add", "sub", "cat", "mean", "avg_pool2d", "adaptive_avg_pool2d", "flatten", "view",
    "reshape", "getitem", "dropout", "identity", "permute", "transpose", "contiguous", "clone", "pad",
    "constant_pad_nd", "size", "slice", "select", "unsqueeze", "squeeze", "expand", "chunk", "split",
    "upsample_nearest2d", "interpolate", "neg", "sum", "_unsafe_view", "alias", "t",
)
def keeps_nothing(ctx: LayerContext) -> list[McuSaved]:
    """Linear ops whose backward needs only shapes (BatchNorm: folded into the conv before it)."""
    return []
