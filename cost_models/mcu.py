"""What a microcontroller training runtime keeps for backward, per layer op (tiny-training conventions).

Lin et al. 2022 ("On-device training under 256KB memory", Tiny Training Engine) price a training step
differently from PyTorch eager:

* activations are int8 (the target's ``activation_dtype``); BatchNorm is folded into the conv before it
  and costs nothing of its own;
* ReLU-like ops keep a **1-bit mask** per output element instead of a tensor;
* a conv/linear keeps its **whole int8 input activation** when (any row of) its weight is updated —
  TinyEngine's compiled graph keeps the whole input of a partially trained layer and slices the trained
  channels in backward; a bias-only update keeps nothing;
* other ops on the gradient path keep their activation inputs (conservative).

Beside what is kept, two small tables describe TinyEngine's kernels:

* :data:`MCU_SCRATCH` — the scratch buffers of an int8 forward kernel, TinyEngine's ``sbuf`` (im2col) and
  ``kbuf`` (kernel) sizes: :func:`conv_kernel_buffers`;
* :data:`GRADIENT_PASSTHROUGH` and :data:`MASK_OPS` — ops whose backward hands the output gradient to
  the input unchanged (an addition, a view, a folded BatchNorm; a ReLU multiplies it by its 1-bit mask
  in place), so the runtime needs no new gradient buffer for them.

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
    ``"weight"`` — kept when any row of the layer's weight is trained (the whole input, also for a
    partially trained layer).
    """

    key: int | None
    nbytes: int
    when: str
    on: int | None = None

    def active_bytes(self, grad_flows_into: set[int], trained_fraction: float) -> int:
        """Bytes kept under concrete decisions."""
        if self.when == "grad":
            return self.nbytes if self.on in grad_flows_into else 0
        return self.nbytes if trained_fraction > 0 else 0


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
    """The input activation is needed for the weight gradient only: the whole int8 input, also when only
    some rows (output channels) of the weight are trained."""
    if ctx.layer.weight is None:
        return keeps_inputs(ctx)
    if not ctx.input_keys:
        return []
    key, numel = ctx.input_keys[0], ctx.input_numels[0]
    return [McuSaved(key, numel * ctx.activation_bytes, "weight")]


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


# --------------------------------------------------------------------------------------------------
# Kernel scratch buffers (TinyEngine's int8 kernels)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvGeometry:
    """What the kernel-buffer rules read of a convolution (elements, not bytes).

    ``weight_shape``: (C_out, C_in / groups, kh, kw); ``input_shape``: (C_in, H, W) of one sample;
    ``padding``: (ph, pw); ``stride``: (sh, sw); ``groups``; ``inplace``: a depthwise conv that runs in
    place.
    """

    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    padding: tuple[int, ...]
    groups: int
    stride: tuple[int, ...] = ()
    inplace: bool = False

    @property
    def depthwise(self) -> bool:
        c_in = self.input_shape[0] if self.input_shape else 0
        return self.groups > 1 and self.groups == c_in == self.weight_shape[0]


@dataclass(frozen=True)
class KernelBuffers:
    """Bytes of a forward kernel's two scratch buffers: ``im2col`` (TinyEngine's ``sbuf``) and ``kernel``
    (its ``kbuf``). TinyEngine reports the largest of each over the model on top of the arena."""

    im2col: int = 0
    kernel: int = 0


ScratchRule = Callable[[ConvGeometry], KernelBuffers]
MCU_SCRATCH: OpRegistry[ScratchRule] = OpRegistry("kernel-buffer rule")


@MCU_SCRATCH.register("conv1d", "conv2d", "conv3d", "convolution")
def conv_kernel_buffers(geo: ConvGeometry) -> KernelBuffers:
    """TinyEngine's int8 convolution kernels (the buffer sizes of its code generator, ``get_sbuf_size``
    and ``get_kbuf_size``, for the kernels that take them):

    * depthwise, in place: one padded channel at a time, 16-bit: ``2·(H+2p_h)·(W+2p_w)`` bytes;
    * depthwise, not in place: ``2·kh·kw·C_in`` bytes (16-bit);
    * other convs: two im2col columns of 16-bit values, ``kh·kw·C_in·2·2`` bytes;
    * the 3×3 stride-2 kernel (``convolve_s8_kernel3_inputch3_stride2_pad1``, the first layer of the MCU
      models) also copies its weights to 16 bits: a kernel buffer of ``2·C_out·C_in·3·3`` bytes.
      TinyEngine's code generator reserves that size for every conv bigger than 1×1, although only this
      kernel is handed the buffer; here only the kernel that uses it has one.
    """
    kernel = tuple(geo.weight_shape[2:]) or (1,)
    area = math.prod(kernel)
    c_in = geo.input_shape[0] if geo.input_shape else 0
    if geo.depthwise:
        if geo.inplace:
            padded = [s + 2 * p for s, p in zip(geo.input_shape[1:], geo.padding)]
            return KernelBuffers(im2col=2 * math.prod(padded))
        return KernelBuffers(im2col=2 * area * c_in)
    takes_kbuf = kernel == (3, 3) and tuple(geo.stride) == (2, 2) and geo.groups == 1
    return KernelBuffers(im2col=area * c_in * 2 * 2, kernel=2 * math.prod(geo.weight_shape) if takes_kbuf else 0)


#: ops whose backward passes the output gradient on to an input of the same size without computing a
#: new tensor (a view, an addition's operands, a BatchNorm folded into the conv, dropout at inference
#: scale), and ReLU-like ops that multiply it by their 1-bit mask in place (:data:`MASK_OPS`).
MASK_OPS = frozenset({"relu", "relu6", "hardtanh", "leaky_relu", "threshold"})
GRADIENT_PASSTHROUGH = frozenset({
    "add", "sub", "batch_norm", "flatten", "view", "reshape", "identity", "dropout", "contiguous", "clone",
    "alias", "_unsafe_view", "squeeze", "unsqueeze",
}) | MASK_OPS
