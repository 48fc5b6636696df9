"""What PyTorch's eager autograd saves for backward, per ATen op, as a function of which inputs need grad.

For every ATen op the planner records (an :class:`~budgetplan.model.graph.AtenCall`), a *saved rule* says which
tensors autograd keeps alive until backward, each as a :class:`SavedRef`: a flat input or output of the
call, and the set of flat inputs of which *any* must require grad for the tensor to be saved. The caller
applies the rule to its update set (:meth:`SavedRef.active`, :func:`active_refs`) and prices the bytes,
de-duplicating by storage key (an in-place op's output is its input's storage; a parameter is not an
activation).

The rules encode what torch 2.13's generated autograd code actually does, measured with
``torch.autograd.graph.saved_tensors_hooks`` under every requires-grad pattern (the test suite re-checks
every registered rule the same way). Facts worth knowing, all measured:

* ``mm``/``bmm``/``mv``/``dot``: each operand is saved only when the *other* one requires grad;
  ``addmm``/``baddbmm``/``addmv``: ``mat1`` is saved iff ``mat2`` requires grad and vice versa; the
  bias is never saved. A first linear layer whose input needs no grad keeps only its input.
* ``convolution``: input *and* weight are saved as soon as any of input, weight or bias requires grad —
  training only a conv's bias still keeps its input alive.
* In-place activations do not save memory: ``hardtanh_`` (ReLU6), ``threshold_``, ``silu_``,
  ``hardswish_``, ``hardsigmoid_``, ``mish_`` save a *fresh clone of their input* (``copy=True``), and
  ``mul_``/``div_`` by a tensor clone ``self`` when the other operand requires grad. Only ``relu_``,
  ``sigmoid_``, ``tanh_``, ``leaky_relu_``, ``elu_`` save their result (the shared storage).
* Batch norm (``native_batch_norm`` in train *and* eval mode — ``nn.BatchNorm2d`` dispatches it in both)
  saves input, weight, running mean/var and its ``save_mean``/``save_invstd`` outputs (empty in eval mode)
  whenever input, weight or bias requires grad. Layer norm also saves its bias.
* ``avg_pool*``, ``_adaptive_avg_pool*``, ``reflection_pad*``, ``replication_pad*`` save their input;
  ``mean``, ``sum``, ``cat``, ``constant_pad_nd``, ``upsample_*``, ``add``/``sub`` save nothing.

Ops without a rule are handled by :func:`probe_saved`, which runs the op on real tensors of the recorded
shapes and reports what autograd saved (cached), or a visible conservative guess when it cannot run it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from budgetplan.cost_models.messages import first_line
from budgetplan.cost_models.meta import TensorMeta
from budgetplan.cost_models.registry import OpRegistry, op_key

aten = torch.ops.aten

__all__ = [
    "NO_GRAD_OPS",
    "NON_DIFFERENTIABLE_OUTPUTS",
    "PROBE_FAILURES",
    "SAVED_REGISTRY",
    "VIEW_OPS",
    "OpCall",
    "ProbeFailure",
    "SavedRef",
    "active_refs",
    "clear_probe_cache",
    "outputs_differentiable",
    "probe_saved",
    "register_saved",
    "saved_refs",
    "saved_or_probed",
]

SavedKind = Literal["input", "output", "extra"]
RefSource = Literal["rule", "probe", "guess"]


@dataclass(frozen=True)
class SavedRef:
    """One tensor autograd saves for backward.

    ``kind``/``index`` locate it: ``"input"``/``"output"`` index ``AtenCall.inputs``/``AtenCall.outputs``
    (the flattened tensor arguments/results, kwargs after positional args). ``"extra"`` is a tensor that
    autograd allocated itself and that is neither (only :func:`probe_saved` reports these; ``meta`` gives
    its shape and dtype, ``index`` counts them).

    ``when``: the tensor is saved iff ANY of these flat input indices requires grad.

    ``copy``: autograd saved a fresh clone of the input's value *before* the op (in-place ops), i.e. a new
    allocation of ``inputs[index].nbytes`` bytes — not the input's storage, which the op overwrites.

    ``source``: ``"rule"`` (registered rule), ``"probe"`` (measured by running the op) or ``"guess"``
    (the probe could not run the op; conservative; see :data:`PROBE_FAILURES`).
    """

    kind: SavedKind
    index: int
    when: frozenset[int]
    copy: bool = False
    source: RefSource = "rule"
    meta: TensorMeta | None = None

    def active(self, requires_grad: Sequence[bool]) -> bool:
        """Whether this tensor is saved when flat input ``i`` requires grad iff ``requires_grad[i]``."""
        return any(i < len(requires_grad) and requires_grad[i] for i in self.when)

    def tensor_meta(self, inputs: Sequence[TensorMeta], outputs: Sequence[TensorMeta]) -> TensorMeta:
        """Shape and dtype of the saved tensor (bytes: ``.nbytes``)."""
        if self.kind == "input":
            return inputs[self.index]
        if self.kind == "output":
            return outputs[self.index]
        assert self.meta is not None
        return self.meta


def active_refs(refs: Iterable[SavedRef], requires_grad: Sequence[bool]) -> list[SavedRef]:
    """The refs that are saved under this requires-grad pattern of the flat inputs."""
    return [r for r in refs if r.active(requires_grad)]


# --------------------------------------------------------------------------------------------------
# The call as seen by a rule
# --------------------------------------------------------------------------------------------------



def _is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point or dtype.is_complex


@dataclass(frozen=True)
class OpCall:
    """One recorded ATen call: positional args (tensors as TensorMeta) and flat tensor inputs/outputs.

    ``args=None`` (not recorded) is read as "the inputs, positionally", which is right for ops whose
    tensor arguments come first and are never ``None``.
    """

    overload: Any
    args: tuple[Any, ...] | None
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]

    @cached_property
    def _positions(self) -> tuple[tuple[int, ...], ...]:
        """For each positional argument, the flat input indices of the tensors it holds."""
        if self.args is None:
            return tuple((i,) for i in range(len(self.inputs)))
        positions: list[tuple[int, ...]] = []
        flat = 0
        for arg in self.args:
            leaves = [x for x in tree_flatten(arg)[0] if isinstance(x, TensorMeta)]
            positions.append(tuple(range(flat, flat + len(leaves))))
            flat += len(leaves)
        return tuple(positions)

    @property
    def overload_name(self) -> str:
        """``"default"``, ``"Tensor"``, ``"Scalar"``, ... ('' when unknown)."""
        return str(getattr(self.overload, "_overloadname", ""))

    def at(self, position: int) -> int | None:
        """Flat input index of the tensor passed as positional argument ``position`` (None if absent)."""
        if position < len(self._positions) and len(self._positions[position]) == 1:
            return self._positions[position][0]
        return None

    def at_all(self, *positions: int) -> tuple[int, ...]:
        """Flat input indices of the tensors among these positional arguments (absent ones skipped)."""
        return tuple(i for p in positions if p < len(self._positions) for i in self._positions[p])

    @property
    def kwarg_inputs(self) -> tuple[int, ...]:
        """Flat indices of tensors passed as keyword arguments (after every positional one)."""
        n = sum(len(p) for p in self._positions)
        return tuple(range(n, len(self.inputs)))

    @property
    def floating(self) -> tuple[int, ...]:
        """Flat indices of the floating-point (or complex) inputs — the ones that can require grad."""
        return tuple(i for i, m in enumerate(self.inputs) if _is_float(m.dtype))


SavedRule = Callable[[OpCall], "list[SavedRef] | None"]
SAVED_REGISTRY: OpRegistry[SavedRule] = OpRegistry("saved-tensor rule")
"""ATen op packet → rule. A rule returns None for an overload it does not cover (then: probe)."""


def register_saved(*packets: Any) -> Callable[[SavedRule], SavedRule]:
    """Register a saved rule for one or more ATen op packets (e.g. ``aten.mm``)."""
    return SAVED_REGISTRY.register(*packets)


def saved_refs(
    overload: Any,
    args_meta: Any,
    inputs: Sequence[TensorMeta],
    outputs: Sequence[TensorMeta],
) -> list[SavedRef] | None:
    """What autograd saves for this call, per the registered rule; None when no rule covers it.

    ``args_meta`` are the positional args with tensors as TensorMeta (``AtenCall.args``); ``inputs`` and
    ``outputs`` the flat tensors (``AtenCall.inputs``/``outputs``). Every ref carries its ``when`` set, so
    the answer covers every update set; filter with :func:`active_refs`.
    """
    rule = SAVED_REGISTRY.get(overload)
    if rule is None:
        return None
    call = OpCall(overload, None if args_meta is None else tuple(args_meta), tuple(inputs), tuple(outputs))
    return rule(call)


def saved_or_probed(
    overload: Any,
    args_meta: Any,
    inputs: Sequence[TensorMeta],
    outputs: Sequence[TensorMeta],
    kwargs_meta: dict[str, Any] | None = None,
) -> list[SavedRef]:
    """:func:`saved_refs`, falling back to :func:`probe_saved` for ops without a rule. Never raises."""
    refs = saved_refs(overload, args_meta, inputs, outputs)
    if refs is not None:
        return refs
    return probe_saved(overload, args_meta, inputs, outputs, kwargs_meta)


# --------------------------------------------------------------------------------------------------
# Rule helpers
# --------------------------------------------------------------------------------------------------


def _inp(index: int | None, when: Iterable[int], copy: bool = False) -> list[SavedRef]:
    return [] if index is None else [SavedRef("input", index, frozenset(when), copy)]


def _out(index: int, when: Iterable[int]) -> list[SavedRef]:
    return [SavedRef("output", index, frozenset(when))]


def _self_grad(call: OpCall) -> frozenset[int]:
    """The flat index of ``self`` (first tensor) if it is floating — the usual trigger of unary ops."""
    return frozenset(i for i in call.floating if i == 0)


# --------------------------------------------------------------------------------------------------
# Ops that save nothing
# --------------------------------------------------------------------------------------------------

NO_GRAD_OPS: set[Any] = {
    # factories and random fills: outputs carry no gradient to any input
    aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided,
    aten.zeros, aten.zeros_like, aten.new_zeros, aten.ones, aten.ones_like, aten.new_ones,
    aten.full, aten.full_like, aten.new_full, aten.scalar_tensor, aten.arange, aten.linspace,
    aten.rand, aten.rand_like, aten.randn, aten.randn_like, aten.randint, aten.randint_like, aten.randperm,
    aten.bernoulli, aten.bernoulli_, aten.normal_, aten.uniform_, aten.fill_, aten.zero_,
    # cut the graph or produce non-differentiable results
    aten.detach, aten.detach_, aten.lift_fresh, aten.lift_fresh_copy, aten._local_scalar_dense,
    aten.eq, aten.ne, aten.lt, aten.le, aten.gt, aten.ge, aten.argmax, aten.argmin,
    aten.logical_not, aten.logical_and, aten.logical_or, aten.isnan, aten.isinf, aten.sign,
}
"""Ops whose outputs are never differentiable w.r.t. their inputs; they save nothing."""

VIEW_OPS: set[Any] = {
    aten.t, aten.t_, aten.view, aten._unsafe_view, aten.reshape, aten._reshape_alias, aten.permute,
    aten.transpose, aten.transpose_, aten.expand, aten.expand_as, aten.view_as, aten.slice, aten.select,
    aten.narrow, aten.unsqueeze, aten.unsqueeze_, aten.squeeze, aten.squeeze_, aten.flatten,
    aten.unflatten, aten.alias, aten.as_strided, aten.split, aten.split_with_sizes, aten.chunk,
    aten.unbind, aten.diagonal, aten.movedim, aten.unfold,
}
"""Views (and in-place view ops): backward only reshapes the gradient; nothing is saved."""

NOTHING_SAVED_OPS: set[Any] = {
    aten.add, aten.add_, aten.sub, aten.sub_, aten.rsub, aten.neg, aten.neg_, aten.cat, aten.stack,
    aten.mean, aten.sum, aten.clone, aten._to_copy, aten.copy_, aten.roll, aten.constant_pad_nd,
    aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d, aten.upsample_bilinear2d,
}
"""Differentiable ops whose backward needs only sizes (measured: no tensor saved)."""


@register_saved(*NO_GRAD_OPS, *VIEW_OPS, *NOTHING_SAVED_OPS)
def nothing_saved(call: OpCall) -> list[SavedRef]:
    """Saves no tensor, whatever requires grad."""
    return []


# --------------------------------------------------------------------------------------------------
# Element-wise activations and friends
# --------------------------------------------------------------------------------------------------


@register_saved(
    aten.hardtanh, aten.threshold, aten.gelu, aten.silu, aten.hardswish, aten.hardsigmoid, aten.leaky_relu,
    aten.elu, aten.mish, aten.softplus, aten.clamp_min, aten.abs, aten.log, aten.erf,
    aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d, aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d,
    aten.reflection_pad1d, aten.reflection_pad2d, aten.reflection_pad3d,
    aten.replication_pad1d, aten.replication_pad2d, aten.replication_pad3d,
)
def saves_self(call: OpCall) -> list[SavedRef]:
    """Saves its input ``self`` when ``self`` requires grad (pooling/padding: for its shape only)."""
    return _inp(0, _self_grad(call))


@register_saved(aten.clamp)
def clamp_saved(call: OpCall) -> list[SavedRef] | None:
    """``clamp.default`` (scalar bounds) saves ``self``; tensor bounds are left to the probe."""
    return _inp(0, _self_grad(call)) if len(call.inputs) == 1 else None


@register_saved(aten.pow)
def pow_saved(call: OpCall) -> list[SavedRef] | None:
    """``pow.Tensor_Scalar`` saves ``self``; other overloads are left to the probe."""
    return _inp(0, _self_grad(call)) if call.overload_name == "Tensor_Scalar" else None


@register_saved(
    aten.relu, aten.relu_, aten.sigmoid, aten.sigmoid_, aten.tanh, aten.tanh_, aten.leaky_relu_, aten.elu_,
    aten._softmax, aten._log_softmax, aten.exp, aten.sqrt, aten.rsqrt, aten.reciprocal,
)
def saves_result(call: OpCall) -> list[SavedRef]:
    """Saves its output when ``self`` requires grad (in-place ops: the shared storage, post-op value)."""
    return _out(0, _self_grad(call))


@register_saved(
    aten.hardtanh_, aten.threshold_, aten.silu_, aten.hardswish_, aten.hardsigmoid_, aten.mish_,
)
def saves_input_clone(call: OpCall) -> list[SavedRef]:
    """In-place op whose derivative needs the *original* input: autograd clones ``self`` before the op.

    The in-place variant therefore costs a full extra copy of its input when ``self`` requires grad.
    """
    return _inp(0, _self_grad(call), copy=True)


# --------------------------------------------------------------------------------------------------
# Binary arithmetic
# --------------------------------------------------------------------------------------------------


@register_saved(aten.mul, aten.mul_)
def mul_saved(call: OpCall) -> list[SavedRef]:
    """``a * b``: ``a`` is saved iff ``b`` requires grad and ``b`` iff ``a`` does (a scalar: nothing).

    ``mul_`` saves a clone of ``self`` (its pre-op value) instead of ``self``.
    """
    if len(call.inputs) < 2:
        return []
    a, b = 0, 1
    inplace = op_key(call.overload) is aten.mul_
    fl = set(call.floating)
    return _inp(a, {b} & fl, copy=inplace) + _inp(b, {a} & fl)


@register_saved(aten.div, aten.div_)
def div_saved(call: OpCall) -> list[SavedRef] | None:
    """``a / b`` (``div.Tensor``): ``b`` is saved iff either requires grad, ``a`` iff ``b`` does.

    ``div_`` saves a clone of ``self``. A Python-number divisor saves nothing (``div.Scalar``, or
    ``div.Tensor`` with a number, as exported graphs record drop-path); rounding modes go to the probe.
    """
    if len(call.inputs) < 2:
        return [] if call.overload_name in ("Scalar", "Tensor", "") else None
    if call.overload_name not in ("Tensor", ""):
        return None
    a, b = 0, 1
    inplace = op_key(call.overload) is aten.div_
    fl = set(call.floating)
    return _inp(a, {b} & fl, copy=inplace) + _inp(b, {a, b} & fl)


@register_saved(aten.where)
def where_saved(call: OpCall) -> list[SavedRef] | None:
    """``where(cond, x, y)`` saves ``cond`` when ``x`` or ``y`` requires grad."""
    if call.overload_name != "self":
        return None
    return _inp(0, set(call.floating) & {1, 2})


@register_saved(aten.masked_fill)
def masked_fill_saved(call: OpCall) -> list[SavedRef] | None:
    """``masked_fill.Scalar(self, mask, value)`` saves ``mask`` when ``self`` requires grad."""
    if call.overload_name != "Scalar":
        return None
    return _inp(1, _self_grad(call))


# --------------------------------------------------------------------------------------------------
# Matmul family, convolution
# --------------------------------------------------------------------------------------------------


@register_saved(aten.mm, aten.bmm, aten.mv, aten.dot)
def matmul_saved(call: OpCall) -> list[SavedRef]:
    """``a @ b``: ``a`` is saved iff ``b`` requires grad, ``b`` iff ``a`` does."""
    fl = set(call.floating)
    return _inp(0, {1} & fl) + _inp(1, {0} & fl)


@register_saved(aten.addmm, aten.baddbmm, aten.addmv, aten.addcmul)
def addmatmul_saved(call: OpCall) -> list[SavedRef]:
    """``bias + mat1 @ mat2``: ``mat1`` saved iff ``mat2`` requires grad and vice versa; bias never."""
    fl = set(call.floating)
    return _inp(1, {2} & fl) + _inp(2, {1} & fl)


@register_saved(aten.convolution, aten._convolution)
def convolution_saved(call: OpCall) -> list[SavedRef]:
    """Input and weight are both saved as soon as input, weight or bias requires grad.

    Holds for direct, grouped/depthwise and transposed convolutions, with or without bias: the
    generated code saves what the joint ``convolution_backward`` formula reads, whatever is trained.
    """
    when = set(call.floating) & set(call.at_all(0, 1, 2))
    return _inp(call.at(0), when) + _inp(call.at(1), when)


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------


@register_saved(
    aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training,
    aten._native_batch_norm_legit_functional,
)
def batch_norm_saved(call: OpCall) -> list[SavedRef]:
    """Saves input, weight, running mean and var, and outputs 1, 2 (``save_mean``, ``save_invstd``;
    empty tensors in eval mode) when input, weight or bias requires grad — train and eval mode alike.

    Signatures: ``(input, weight, bias, running_mean, running_var, ...)``; ``_native_batch_norm_legit
    .no_stats`` has no running statistics (positions 3, 4 are then not tensors and are skipped).
    """
    when = set(call.floating) & set(call.at_all(0, 1, 2))
    refs = _inp(call.at(0), when) + _inp(call.at(1), when) + _inp(call.at(3), when) + _inp(call.at(4), when)
    return refs + _out(1, when) + _out(2, when)


@register_saved(aten.native_layer_norm)
def layer_norm_saved(call: OpCall) -> list[SavedRef]:
    """``(input, normalized_shape, weight, bias, eps)``: saves input, weight, *bias*, mean and rstd
    (outputs 1, 2) when any of input, weight, bias requires grad."""
    when = set(call.floating) & set(call.at_all(0, 2, 3))
    refs = _inp(call.at(0), when) + _inp(call.at(2), when) + _inp(call.at(3), when)
    return refs + _out(1, when) + _out(2, when)


@register_saved(aten.native_group_norm)
def group_norm_saved(call: OpCall) -> list[SavedRef]:
    """``(input, weight, bias, N, C, HxW, group, eps)``: saves input, weight, mean and rstd
    (outputs 1, 2) when any of input, weight, bias requires grad."""
    when = set(call.floating) & set(call.at_all(0, 1, 2))
    return _inp(call.at(0), when) + _inp(call.at(1), when) + _out(1, when) + _out(2, when)


# --------------------------------------------------------------------------------------------------
# Pooling with indices, attention, embedding, losses, dropout, indexing
# --------------------------------------------------------------------------------------------------


@register_saved(
    aten.max_pool1d_with_indices, aten.max_pool2d_with_indices, aten.max_pool3d_with_indices,
    aten.adaptive_max_pool2d, aten.adaptive_max_pool3d,
)
def max_pool_saved(call: OpCall) -> list[SavedRef]:
    """Saves its input and the int64 indices (output 1) when the input requires grad."""
    return _inp(0, _self_grad(call)) + _out(1, _self_grad(call))


@register_saved(aten._scaled_dot_product_flash_attention_for_cpu)
def sdpa_cpu_saved(call: OpCall) -> list[SavedRef]:
    """Saves query, key, value (and ``attn_mask`` if given), the output and the logsumexp (output 1)
    when any of them requires grad."""
    when = set(call.floating)
    refs = [r for i in range(len(call.inputs)) for r in _inp(i, when)]
    return refs + _out(0, when) + _out(1, when)


@register_saved(aten.embedding)
def embedding_saved(call: OpCall) -> list[SavedRef]:
    """``embedding(weight, indices, ...)`` saves the indices when the weight requires grad."""
    return _inp(call.at(1), _self_grad(call))


@register_saved(aten.nll_loss_forward, aten.nll_loss2d_forward)
def nll_loss_saved(call: OpCall) -> list[SavedRef]:
    """``(self, target, weight, reduction, ignore_index)``: saves self, target, weight (if given) and
    ``total_weight`` (output 1) when ``self`` requires grad."""
    when = _self_grad(call)
    return _inp(call.at(0), when) + _inp(call.at(1), when) + _inp(call.at(2), when) + _out(1, when)


@register_saved(aten.mse_loss, aten.binary_cross_entropy_with_logits)
def pointwise_loss_saved(call: OpCall) -> list[SavedRef]:
    """Saves every tensor argument (input, target, weights) when any floating one requires grad."""
    when = set(call.floating)
    return [r for i in range(len(call.inputs)) for r in _inp(i, when)]


@register_saved(aten.native_dropout)
def native_dropout_saved(call: OpCall) -> list[SavedRef]:
    """Saves the boolean mask (output 1) when the input requires grad."""
    return _out(1, _self_grad(call))


@register_saved(aten.index_select)
def index_select_saved(call: OpCall) -> list[SavedRef]:
    """``index_select(self, dim, index)`` saves ``index`` when ``self`` requires grad."""
    return _inp(call.at(2), _self_grad(call))


@register_saved(aten.gather)
def gather_saved(call: OpCall) -> list[SavedRef]:
    """``gather(self, dim, index)`` saves ``self`` *and* ``index`` when ``self`` requires grad."""
    return _inp(call.at(0), _self_grad(call)) + _inp(call.at(2), _self_grad(call))


@register_saved(aten.amax, aten.amin)
def amax_saved(call: OpCall) -> list[SavedRef]:
    """Saves its input and its output (to find the arg-max positions) when ``self`` requires grad."""
    return _inp(0, _self_grad(call)) + _out(0, _self_grad(call))


# --------------------------------------------------------------------------------------------------
# Which outputs carry gradient
# --------------------------------------------------------------------------------------------------

NON_DIFFERENTIABLE_OUTPUTS: dict[Any, frozenset[int]] = {
    aten.native_batch_norm: frozenset({1, 2}),
    aten._native_batch_norm_legit: frozenset({1, 2}),
    aten._native_batch_norm_legit_no_training: frozenset({1, 2}),
    aten._native_batch_norm_legit_functional: frozenset({1, 2, 3, 4}),
    aten.native_layer_norm: frozenset({1, 2}),
    aten.native_group_norm: frozenset({1, 2}),
    aten._scaled_dot_product_flash_attention_for_cpu: frozenset({1}),
    aten._scaled_dot_product_flash_attention: frozenset(range(1, 9)),
    aten._scaled_dot_product_efficient_attention: frozenset({1, 2, 3}),
    aten.nll_loss_forward: frozenset({1}),
    aten.nll_loss2d_forward: frozenset({1}),
    aten.native_dropout: frozenset({1}),
}
"""Floating outputs that are statistics or workspaces for backward, not values a gradient flows into."""


def outputs_differentiable(overload: Any, outputs: Sequence[TensorMeta]) -> tuple[bool, ...]:
    """Per flat output: can a gradient flow back through it? False for integer/bool outputs (max-pool
    indices), for every output of :data:`NO_GRAD_OPS`, and for the statistics outputs in
    :data:`NON_DIFFERENTIABLE_OUTPUTS` (batch/layer/group-norm mean and inverse std, logsumexp, ...)."""
    packet = op_key(overload)
    if packet in NO_GRAD_OPS:
        return tuple(False for _ in outputs)
    skip = NON_DIFFERENTIABLE_OUTPUTS.get(packet, frozenset())
    return tuple(_is_float(o.dtype) and i not in skip for i, o in enumerate(outputs))


# --------------------------------------------------------------------------------------------------
# Probe: run the op and watch what autograd saves
# --------------------------------------------------------------------------------------------------

PROBE_EXHAUSTIVE_MAX = 4
"""Up to this many floating inputs the probe tries every requires-grad pattern; above, each input
alone plus all together (then ``when`` may over-approximate, never under-approximate)."""


@dataclass(frozen=True)
class ProbeFailure:
    """An op the probe could not run; its answer was the conservative guess."""

    op: str
    reason: str
    inputs: tuple[TensorMeta, ...] = field(default=(), repr=False)


PROBE_FAILURES: list[ProbeFailure] = []
"""Every probe failure since import (or :func:`clear_probe_cache`); refs from them have source='guess'."""

_PROBE_CACHE: dict[tuple[Any, ...], tuple[SavedRef, ...]] = {}


def clear_probe_cache() -> None:
    """Forget cached probe results and recorded failures."""
    _PROBE_CACHE.clear()
    PROBE_FAILURES.clear()


def probe_cache_size() -> int:
    """Number of distinct (op, shapes, dtypes, arguments) the probe has answered."""
    return len(_PROBE_CACHE)


class _ProbeError(Exception):
    pass


def _placeholder(x: Any) -> Any:
    return "<T>" if isinstance(x, TensorMeta) else x


def _cache_key(overload: Any, args_meta: Any, kwargs_meta: Any, inputs: Sequence[TensorMeta]) -> tuple:
    shapes = tuple((m.shape, str(m.dtype)) for m in inputs)
    return (str(overload), shapes, repr(tree_map(_placeholder, args_meta)),
            repr(tree_map(_placeholder, kwargs_meta)))


def _materialise(meta: TensorMeta, generator: torch.Generator) -> torch.Tensor:
    """A real tensor for a TensorMeta: floats in [0.5, 1.5) (safe for log/sqrt/div), ints 0, bools random."""
    if _is_float(meta.dtype):
        return (torch.rand(meta.shape, generator=generator) + 0.5).to(meta.dtype)
    if meta.dtype == torch.bool:
        return torch.rand(meta.shape, generator=generator) < 0.5
    return torch.zeros(meta.shape, dtype=meta.dtype)


@contextlib.contextmanager
def _outside_modes() -> Iterator[None]:
    """Run with no active TorchDispatchMode (the planner may call us while recording) and grad on."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes(), torch.enable_grad():
        yield


def _observe_once(
    overload: Any, spec: Any, flat: list[Any], slots: list[int], requires: frozenset[int],
) -> list[tuple[SavedKind, int, bool, TensorMeta | None]]:
    """Run the op once with inputs ``requires`` needing grad; map each saved tensor to an input/output."""
    tensors: list[torch.Tensor] = []
    args_flat = list(flat)
    for j, slot in enumerate(slots):
        t = flat[slot].detach().clone()
        if j in requires:
            t = t.requires_grad_().clone()  # a non-leaf, so in-place ops are allowed
        args_flat[slot] = t
        tensors.append(t)
    before = [t.detach().clone() for t in tensors]
    saved: list[torch.Tensor] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved.append(x)
        return x

    args, kwargs = tree_unflatten(args_flat, spec)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = overload(*args, **kwargs)
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    found: list[tuple[SavedKind, int, bool, TensorMeta | None]] = []
    extras = 0
    for x in saved:
        ptr = x.untyped_storage().data_ptr()
        if ptr == 0 or x.numel() == 0:  # empty tensors (BN eval statistics): match by shape and dtype
            hit = [k for k, o in enumerate(outs) if o.shape == x.shape and o.dtype == x.dtype]
            if hit:
                found.append(("output", hit[0], False, None))
                continue
            hit = [k for k, t in enumerate(tensors) if t.shape == x.shape and t.dtype == x.dtype]
            if hit:
                found.append(("input", hit[0], False, None))
                continue
        out_hit = [k for k, o in enumerate(outs) if o.untyped_storage().data_ptr() == ptr]
        in_hit = [k for k, t in enumerate(tensors) if t.untyped_storage().data_ptr() == ptr]
        if out_hit:  # an in-place op's saved self holds the post-op value: it is the output
            found.append(("output", out_hit[0], False, None))
        elif in_hit:
            found.append(("input", in_hit[0], False, None))
        else:
            value = x.detach()
            copy_of = [k for k, b in enumerate(before)
                       if b.shape == value.shape and b.dtype == value.dtype and torch.equal(b, value)]
            if copy_of:
                found.append(("input", copy_of[0], True, None))
            else:
                found.append(("extra", extras, False, TensorMeta.of(x)))
                extras += 1
    return found


def _conservative(inputs: Sequence[TensorMeta], outputs: Sequence[TensorMeta]) -> list[SavedRef]:
    when = frozenset(i for i, m in enumerate(inputs) if _is_float(m.dtype))
    refs = [SavedRef("input", i, when, source="guess") for i in sorted(when)]
    refs += [SavedRef("output", k, when, source="guess") for k, m in enumerate(outputs) if _is_float(m.dtype)]
    return refs


def probe_saved(
    overload: Any,
    args_meta: Any,
    inputs: Sequence[TensorMeta],
    outputs: Sequence[TensorMeta],
    kwargs_meta: dict[str, Any] | None = None,
) -> list[SavedRef]:
    """Discover what autograd saves for this call by running the op on real tensors.

    Tensors are built from the recorded shapes and dtypes (floats in [0.5, 1.5), integers 0); the
    non-tensor arguments come from ``args_meta`` (and ``kwargs_meta``: ``AtenCall.args`` does not keep
    keyword arguments, so kwarg-only tensors such as an attention mask cannot be rebuilt without it).
    The op runs under every requires-grad pattern of its floating inputs (see
    :data:`PROBE_EXHAUSTIVE_MAX`); inputs torch refuses to differentiate (running statistics) are left
    out. Results are cached by (op, shapes, dtypes, non-tensor arguments).

    Never raises: if the op cannot be run, the answer is conservative — every floating input and
    output, saved when any input requires grad, ``source="guess"`` — and a :class:`ProbeFailure` is
    appended to :data:`PROBE_FAILURES`.
    """
    kwargs_meta = dict(kwargs_meta or {})
    key = _cache_key(overload, args_meta, kwargs_meta, inputs)
    cached = _PROBE_CACHE.get(key)
    if cached is not None:
        return list(cached)
    try:
        with _outside_modes():
            refs = _probe(overload, args_meta, kwargs_meta, tuple(inputs))
    except Exception as exc:  # noqa: BLE001 — any failure must degrade to the conservative answer
        reason = first_line(exc, with_type=True)
        PROBE_FAILURES.append(ProbeFailure(str(overload), reason, tuple(inputs)))
        refs = _conservative(inputs, outputs)
    _PROBE_CACHE[key] = tuple(refs)
    return list(refs)


def _probe(
    overload: Any, args_meta: Any, kwargs_meta: dict[str, Any], inputs: tuple[TensorMeta, ...],
) -> list[SavedRef]:
    if args_meta is None:
        raise _ProbeError("no recorded arguments")
    generator = torch.Generator().manual_seed(0)
    flat, spec = tree_flatten((tuple(args_meta), kwargs_meta))
    slots = [i for i, x in enumerate(flat) if isinstance(x, TensorMeta)]
    if len(slots) != len(inputs) or any(flat[s] != m for s, m in zip(slots, inputs, strict=False)):
        raise _ProbeError(f"arguments hold {len(slots)} tensors but the call has {len(inputs)} inputs "
                          "(keyword-only tensor arguments need kwargs_meta)")
    for s in slots:
        flat[s] = _materialise(flat[s], generator)
    floating = [j for j, m in enumerate(inputs) if _is_float(m.dtype)]

    differentiable: list[int] = []
    seen: dict[frozenset[int], set[tuple[SavedKind, int, bool, TensorMeta | None]]] = {}
    for j in floating:
        try:
            seen[frozenset({j})] = set(_observe_once(overload, spec, flat, slots, frozenset({j})))
            differentiable.append(j)
        except RuntimeError as exc:
            if "not differentiable" not in str(exc) and "does not require grad" not in str(exc):
                raise
    if len(differentiable) <= PROBE_EXHAUSTIVE_MAX:
        patterns = [frozenset(c) for r in range(2, len(differentiable) + 1)
                    for c in itertools.combinations(differentiable, r)]
    else:
        patterns = [frozenset(differentiable)]
    for pattern in patterns:
        seen[pattern] = set(_observe_once(overload, spec, flat, slots, pattern))

    refs: list[SavedRef] = []
    for item in sorted({i for found in seen.values() for i in found}, key=repr):
        kind, index, copy, meta = item
        when = {j for j in differentiable if item in seen.get(frozenset({j}), set())}
        consistent = all((item in found) == bool(pattern & when) for pattern, found in seen.items())
        if not consistent:  # not an "any of" condition: over-approximate
            when |= {j for pattern, found in seen.items() if item in found for j in pattern}
        refs.append(SavedRef(kind, index, frozenset(when), copy, "probe", meta))
    return refs
