"""Backward FLOPs per ATen op: one registry of small pure functions of shapes.

``backward_flops(op, args, inputs, outputs, needs_grad)`` returns, per flat input of the call, the FLOPs
spent computing *that input's* gradient (0 when it needs none); the caller sums the entries of
parameters and of activations separately. Convention, as ``torch.utils.flop_counter.FlopCounterMode``:
2 FLOPs per multiply-accumulate, only matmul- and convolution-like work; element-wise backward ops,
reductions (a bias gradient is a sum), norms, pooling count 0.

Formulas (written here from the definitions, each checked against ``FlopCounterMode`` in the tests):

* ``mm``/``addmm`` ``[m,k]@[k,n]``: ``grad_mat1 = grad @ mat2ᵀ`` and ``grad_mat2 = mat1ᵀ @ grad``, each
  ``2·m·k·n``; ``bmm``/``baddbmm`` the same times the batch; the added bias: 0.
* ``convolution`` (weight ``[C_out, C_in/g, *k]``; transposed: ``[C_in, C_out/g, *k]``): the gradient
  of the input is a transposed convolution (of a transposed conv: a direct one) and the gradient of
  the weight a correlation of input and output gradient; each costs exactly the forward's MACs
  ``N · prod(dense spatial) · w₀ · w₁ · prod(k)``, dense = output (direct) or input (transposed);
  grad bias: 0. **FlopCounterMode over-counts the weight gradient of grouped convolutions by a factor
  ``groups``** (its formula uses the full ``C_in``); depthwise layers show it most. We count
  ``C_in/groups`` — the work the kernel does.
* attention (``_scaled_dot_product_flash_attention_for_cpu`` and the CUDA variants): the flash backward
  kernels recompute ``QKᵀ`` and compute ``dP = dO·Vᵀ``, ``dV = Pᵀ·dO``, ``dQ = dS·K``, ``dK = dSᵀ·Q``:
  ``2·B·Hq·L·S·(3·E + 2·Ev)`` in all — the count FlopCounterMode uses for the CUDA flash/efficient
  backward ops. FlopCounterMode counts **nothing** for the CPU op, forward or backward (neither it nor
  ``_scaled_dot_product_flash_attention_for_cpu_backward`` is in its registry); we count it so that
  attention is not free on CPU targets, consistently with the forward registry. The CPU kernel takes
  no output mask — it computes all three gradients as soon as any is needed — so the full cost is
  charged whenever any of q, k, v needs grad: each needing input gets its own gradient's matmul, and
  the shared work (recompute, ``dP``) plus the gradients computed but not needed go to the first
  needing input. Causal masking is not discounted (as in FlopCounterMode).

Ops without a formula cost 0 (element-wise, by convention).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from budgetplan.cost_models.meta import TensorMeta
from budgetplan.cost_models.registry import OpRegistry

aten = torch.ops.aten

__all__ = [
    "BACKWARD_REGISTRY",
    "backward_flops",
    "has_backward_formula",
    "register_backward",
]

BackwardFormula = Callable[..., "tuple[int, ...]"]
BACKWARD_REGISTRY: OpRegistry[BackwardFormula] = OpRegistry("backward-FLOP formula")
"""ATen op packet → ``formula(args, inputs, outputs, needs_grad) -> FLOPs per flat input``."""


def register_backward(*packets: Any) -> Callable[[BackwardFormula], BackwardFormula]:
    """Register a backward-FLOP formula for one or more ATen op packets (e.g. ``aten.mm``)."""
    return BACKWARD_REGISTRY.register(*packets)



def has_backward_formula(op: Any) -> bool:
    """Whether this ATen op has a backward-FLOP formula (others count 0)."""
    return op in BACKWARD_REGISTRY


def backward_flops(
    overload: Any,
    args_meta: Any,
    inputs: Sequence[TensorMeta],
    outputs: Sequence[TensorMeta],
    needs_grad: Sequence[bool],
) -> tuple[int, ...]:
    """FLOPs of the backward of one ATen call, per flat input (0 where ``needs_grad[i]`` is False).

    ``args_meta`` are the positional args with tensors as TensorMeta (``AtenCall.args``), ``inputs`` and
    ``outputs`` the flat tensors (``AtenCall.inputs``/``outputs``), ``needs_grad[i]`` whether flat input
    ``i`` requires grad. Units: FLOPs (2 per MAC) for one backward pass of the recorded batch.
    """
    need = tuple(bool(n) for n in needs_grad) + (False,) * max(0, len(inputs) - len(needs_grad))
    formula = BACKWARD_REGISTRY.get(overload)
    if formula is None or not any(need[: len(inputs)]):
        return (0,) * len(inputs)
    per_input = formula(tuple(args_meta or ()), tuple(inputs), tuple(outputs), need[: len(inputs)])
    return tuple(int(f) if n else 0 for f, n in zip(per_input, need, strict=True))


# --------------------------------------------------------------------------------------------------
# Matmul family
# --------------------------------------------------------------------------------------------------


def _matmul_macs(a: TensorMeta, b: TensorMeta) -> int:
    """MACs of ``a @ b`` for ``[..., m, k] @ [..., k, n]`` with equal leading (batch) dims."""
    *batch, m, k = a.shape
    n = b.shape[-1]
    return math.prod(batch) * m * k * n


@register_backward(aten.mm, aten.bmm)
def matmul_backward(
    args: tuple[Any, ...], inputs: tuple[TensorMeta, ...], outputs: tuple[TensorMeta, ...],
    needs_grad: tuple[bool, ...],
) -> tuple[int, ...]:
    """``grad_a = grad @ bᵀ`` and ``grad_b = aᵀ @ grad``: each as many MACs as the forward."""
    flops = 2 * _matmul_macs(inputs[0], inputs[1])
    return (flops, flops)


@register_backward(aten.addmm, aten.baddbmm)
def addmatmul_backward(
    args: tuple[Any, ...], inputs: tuple[TensorMeta, ...], outputs: tuple[TensorMeta, ...],
    needs_grad: tuple[bool, ...],
) -> tuple[int, ...]:
    """``bias + a @ b``: as :func:`matmul_backward` for ``a``, ``b``; the bias gradient is a sum (0)."""
    flops = 2 * _matmul_macs(inputs[1], inputs[2])
    return (0, flops, flops)


# --------------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------------


def _conv_macs(x: TensorMeta, weight: TensorMeta, out: TensorMeta, transposed: bool) -> int:
    """MACs of the forward convolution: every element of the dense side (the output of a direct conv,
    the input of a transposed one) meets ``w₀ · w₁ · prod(kernel)`` weights over its batch, where the
    weight is ``[C_out, C_in/g, *k]`` (direct) or ``[C_in, C_out/g, *k]`` (transposed)."""
    dense = x if transposed else out
    batch, spatial = dense.shape[0], dense.shape[2:]
    return batch * math.prod(spatial) * math.prod(weight.shape)


@register_backward(aten.convolution, aten._convolution)
def convolution_backward(
    args: tuple[Any, ...], inputs: tuple[TensorMeta, ...], outputs: tuple[TensorMeta, ...],
    needs_grad: tuple[bool, ...],
) -> tuple[int, ...]:
    """``(input, weight[, bias])``: grad input and grad weight each cost the forward's FLOPs
    (grouped convolutions included — see the module docstring); grad bias 0."""
    transposed = bool(args[6]) if len(args) > 6 else False
    flops = 2 * _conv_macs(inputs[0], inputs[1], outputs[0], transposed)
    return (flops, flops) + (0,) * (len(inputs) - 2)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------


@register_backward(
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
)
def sdpa_backward(
    args: tuple[Any, ...], inputs: tuple[TensorMeta, ...], outputs: tuple[TensorMeta, ...],
    needs_grad: tuple[bool, ...],
) -> tuple[int, ...]:
    """q ``[B, Hq, L, E]``, k ``[B, Hkv, S, E]``, v ``[B, Hkv, S, Ev]``; per batch·query-head, five
    matmuls: recompute ``QKᵀ`` (L·S·E MACs), ``dP`` (L·S·Ev), ``dV`` (L·S·Ev), ``dQ`` (L·S·E),
    ``dK`` (L·S·E). All run when any of q, k, v needs grad (see the module docstring for the split)."""
    q, k, v = inputs[:3]
    *batch_heads, length, embed = q.shape
    source = k.shape[-2]
    value_dim = v.shape[-1]
    unit = 2 * math.prod(batch_heads) * length * source  # FLOPs per unit of the contracted dimension
    own = [unit * embed, unit * embed, unit * value_dim]  # dQ, dK, dV
    shared = unit * embed + unit * value_dim  # recompute QKᵀ, dP = dO·Vᵀ
    per_input = [0] * len(inputs)
    needing = [i for i in range(3) if needs_grad[i]]
    if not needing:
        return tuple(per_input)
    for i in needing:
        per_input[i] = own[i]
    per_input[needing[0]] += shared + sum(own[i] for i in range(3) if i not in needing)
    return tuple(per_input)
