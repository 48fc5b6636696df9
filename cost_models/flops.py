"""Forward FLOPs per ATen op: one registry of small pure functions of shapes.

Conventions follow the usual ones (and ``torch.utils.flop_counter``): only matmul- and
convolution-like ops are counted, 2 FLOPs per multiply-accumulate (MAC); element-wise ops, norms and
pooling count 0. Every formula takes the op's positional arguments and its output, with tensors
replaced by :class:`~budgetplan.cost_models.meta.TensorMeta`, and returns FLOPs.

Adding an op is adding one function decorated with ``@register(aten.op)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from budgetplan.cost_models.meta import TensorMeta
from budgetplan.cost_models.registry import OpRegistry

aten = torch.ops.aten

FlopFormula = Callable[..., int]
FLOP_REGISTRY: OpRegistry[FlopFormula] = OpRegistry("FLOP formula")


def register(*packets: Any) -> Callable[[FlopFormula], FlopFormula]:
    """Register a FLOP formula for one or more ATen op packets (e.g. ``aten.mm``)."""
    return FLOP_REGISTRY.register(*packets)



def op_flops(op: Any, args: Sequence[Any], out: Any) -> int:
    """FLOPs of one ATen op call (0 for ops without a formula). ``args`` hold TensorMeta for tensors."""
    formula = FLOP_REGISTRY.get(op)
    return int(formula(*args, out=out)) if formula is not None else 0


def is_counted(op: Any) -> bool:
    """Whether this ATen op has a FLOP formula."""
    return op in FLOP_REGISTRY


@register(aten.mm)
def mm_flops(a: TensorMeta, b: TensorMeta, *_: Any, out: Any = None) -> int:
    """[m, k] @ [k, n]: 2·m·k·n."""
    m, k = a.shape
    n = b.shape[1]
    return 2 * m * k * n


@register(aten.addmm)
def addmm_flops(bias: TensorMeta, a: TensorMeta, b: TensorMeta, *_: Any, out: Any = None) -> int:
    """bias + [m, k] @ [k, n]: the bias add is not counted."""
    return mm_flops(a, b)


@register(aten.bmm)
def bmm_flops(a: TensorMeta, b: TensorMeta, *_: Any, out: Any = None) -> int:
    """[B, m, k] @ [B, k, n]: 2·B·m·k·n."""
    batch, m, k = a.shape
    return 2 * batch * m * k * b.shape[2]


@register(aten.baddbmm)
def baddbmm_flops(bias: TensorMeta, a: TensorMeta, b: TensorMeta, *_: Any, out: Any = None) -> int:
    return bmm_flops(a, b)


@register(aten.convolution, aten._convolution)
def convolution_flops(
    x: TensorMeta, weight: TensorMeta, bias: Any, stride: Any, padding: Any, dilation: Any,
    transposed: bool, *_: Any, out: TensorMeta,
) -> int:
    """Each output element of a direct convolution is a dot product of ``C_in/groups · prod(kernel)``
    MACs (weight shape ``[C_out, C_in/groups, *kernel]``). A transposed convolution scatters each input
    element over ``C_out/groups · prod(kernel)`` outputs (weight ``[C_in, C_out/groups, *kernel]``)."""
    macs_per_element = weight.shape[1] * math.prod(weight.shape[2:])
    elements = x.numel if transposed else out.numel
    return 2 * elements * macs_per_element


def _attention_flops(q: TensorMeta, k: TensorMeta, v: TensorMeta) -> int:
    """softmax(q kᵀ) v for q [..., L, E], k [..., S, E], v [..., S, Ev]: 2·L·S·E + 2·L·S·Ev per batch·head."""
    *batch, length, embed = q.shape
    source = k.shape[-2]
    value_dim = v.shape[-1]
    return 2 * math.prod(batch) * length * source * (embed + value_dim)


@register(
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
)
def sdpa_flops(q: TensorMeta, k: TensorMeta, v: TensorMeta, *_: Any, out: Any = None) -> int:
    return _attention_flops(q, k, v)
