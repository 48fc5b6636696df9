"""Transient workspace of each ATen op's backward: bytes the backward allocates beyond the gradients it
returns, per ATen op, as a function of shapes and of which inputs need grad.

The host timeline (:mod:`budgetplan.pricing.host.exact`) charges, at the backward of one recorded call, the
gradients of the inputs that need grad and nothing else. Some backward formulas allocate more, briefly:
temporaries of a decomposed formula, an un-reduced gradient before the engine sums it down to a
broadcast operand's shape, a gradient computed for an input that needs none. This module gives those
bytes, so that the timeline point of that backward can be raised by them.

Definition (what :func:`probe_workspace` measures and every rule returns), in bytes:

    workspace = max(0, P − G)

* ``P``: the maximum, while the call's backward runs (its autograd node, plus the engine's
  ``validate_outputs`` step that sums a broadcast operand's gradient down to its shape and casts
  dtypes), of the live bytes of storages *first seen during that backward* — storages that surface as
  an input or output of an ATen op (or as a saved tensor), from first sight until freed, each storage
  once, counted whole (``untyped_storage().nbytes()``). Everything alive before the backward starts —
  the op's inputs and outputs, saved tensors, the incoming gradients — is not counted.
* ``G``: the bytes of the distinct *new* storages among the gradients the backward returns for the
  inputs that need grad (one gradient per flat input). A gradient that aliases the incoming gradient
  (``add``, ``cat``, ``sum``, views) is no new storage and adds nothing to ``P`` or ``G``.

So ``pre-existing + G + workspace`` is exactly the peak during the backward, and a timeline that
charges the returned gradients adds ``workspace`` on top. Gradients computed for inputs that do *not*
need grad (the engine drops them when the node returns) are workspace.

This mirrors :mod:`budgetplan.runtime.measure`, which counts every storage that surfaces as an ATen op's input
or output **while ``torch.utils.flop_counter.FlopCounterMode`` is active** (it counts backward FLOPs).
That matters: ``FlopCounterMode`` decomposes every op it has no FLOP formula for that has a
``CompositeImplicitAutograd`` kernel, and on CPU two backward ops have both that and a fused kernel:
``silu_backward`` and ``mish_backward``. Measured with the flop counter they run as a chain of
element-wise ops whose temporaries are all alive at once; a plain training step (no Python dispatch
mode) runs one fused kernel with no workspace at all. The rules and the probe follow the oracle
(``flop_counter=True``, the default); :func:`probe_workspace` with ``flop_counter=False`` gives the
plain-eager answer. Memory a kernel allocates internally (oneDNN scratch, im2col buffers) never
surfaces as an operator's tensor and is not counted, as in the oracle.

Measured facts (torch 2.13, CPU; the tests re-check every rule against the probe):

* ``silu``/``silu_`` (oracle only): ``5 × self`` — ``sigmoid``, ``1 − s`` (``empty_like`` +
  ``fill_`` + ``sub_``), ``x·(1 − s)``, ``1 + …``, ``s·(…)`` stay alive while the final product (the
  gradient) is computed. ``mish``/``mish_`` (oracle only): ``7 × self``.
* ``convolution`` with the oneDNN backend (``torch._C._select_conv_backend``; for float32 roughly:
  batch > 1, grouped/depthwise, kernels larger than 3×3 or a large input — so *not* a batch-1,
  ungrouped 3×3 conv on a small map, which runs the native ``Slow2d``; see :func:`conv_backend`):
  training the bias but not the weight still computes the weight gradient (oneDNN computes weight and
  bias gradients together) — ``weight`` bytes of workspace. The native CPU backends compute only what
  is asked. No other conv case allocates a visible temporary.
* ``mul``/``div``/``sub`` with broadcasting: the gradient of a broadcast operand is computed at the
  output's shape and summed down by the engine — that output-sized tensor is workspace.
  ``div``'s gradient for the divisor is ``-grad · (a / b) / b``: four output-sized tensors at once.
  ``sub``'s for the subtrahend is ``neg(grad)`` (workspace when it is then reduced). ``add`` reduces the
  incoming gradient directly (none); ``alpha``/``beta`` scalings add a product.
* ``addmm``/``mm``/``bmm``/``baddbmm``: none with ``alpha = beta = 1`` (``t()``/``transpose`` are views;
  no contiguous copies); a non-unit ``alpha`` keeps the un-scaled product alive while it is scaled.
* No workspace: ``hardswish(_)``, ``hardsigmoid(_)``, ``gelu``, ``sigmoid(_)``, ``tanh(_)``, ``relu(_)``,
  ``hardtanh(_)``, ``_softmax``, ``_log_softmax``, ``native_layer_norm``, ``native_batch_norm`` (train
  and eval), ``native_group_norm``, ``max_pool2d_with_indices``, ``avg_pool2d``,
  ``_adaptive_avg_pool2d``, ``mean.dim`` (``expand`` is a view, the ``div`` is the gradient), ``sum``,
  ``cat``, ``constant_pad_nd``, ``upsample_*``, views.
* ``_scaled_dot_product_flash_attention_for_cpu``: the kernel returns ``dq``, ``dk``, ``dv`` whatever is
  needed; the ones not needed are workspace.

Ops without a rule (or whose rule declines the overload) go to :func:`probe_workspace`, which runs the
op on real tensors of the recorded shapes (cached); it never raises — on failure it answers 0 and
appends a :class:`WorkspaceProbeFailure` to :data:`WORKSPACE_PROBE_FAILURES`.

Known blind spots: recorded calls keep shapes, not strides, so the probe uses contiguous tensors (an op
whose backward copies a non-contiguous input is not seen); an input passed twice (``mul(x, x)``) gets
two gradients that the engine adds — that sum and the second gradient are not attributed here.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from budgetplan.cost_models.dispatch import RecordingMode
from budgetplan.cost_models.messages import first_line
from budgetplan.cost_models.meta import TensorMeta, storage_key
from budgetplan.cost_models.registry import OpRegistry
from budgetplan.cost_models.saved import (
    OpCall,
    _is_float,
    _materialise,
    _outside_modes,
    outputs_differentiable,
)

aten = torch.ops.aten

__all__ = [
    "NO_WORKSPACE_OPS",
    "WORKSPACE_PROBE_FAILURES",
    "WORKSPACE_REGISTRY",
    "BackwardTrace",
    "WorkspaceCall",
    "WorkspaceProbeFailure",
    "backward_workspace",
    "clear_workspace_cache",
    "conv_backend",
    "probe_workspace",
    "register_workspace",
    "trace_backward",
    "workspace_cache_size",
    "workspace_rule",
]


@dataclass(frozen=True)
class WorkspaceCall(OpCall):
    """An :class:`~budgetplan.cost_models.saved.OpCall` plus its keyword arguments (``kwargs_meta``).

    Recorded calls (``AtenCall.args``) keep positional arguments only; PyTorch passes a keyword-only
    argument (``alpha`` of ``add``, ``beta``/``alpha`` of ``addmm``) to a dispatch mode only when it is not
    its default, so an absent keyword reads as the schema default — exact when the caller passes
    ``kwargs_meta``, an assumption when it does not.

    ``flop_counter``: answer for the oracle's backward under ``FlopCounterMode`` (True) or for a plain
    eager backward (False); see the module docstring.
    """

    kwargs: dict[str, Any] = field(default_factory=dict, compare=False)
    flop_counter: bool = True

    def kw(self, name: str, default: Any = None) -> Any:
        """Keyword argument ``name`` (``default`` when absent)."""
        return self.kwargs.get(name, default)


WorkspaceRule = Callable[[WorkspaceCall, "tuple[bool, ...]"], "int | None"]
WORKSPACE_REGISTRY: OpRegistry[WorkspaceRule] = OpRegistry("workspace rule")
"""ATen op packet → ``rule(call, needs_grad) -> bytes``; a rule returns None for an overload or argument
combination it does not cover (then: the probe)."""


def register_workspace(*packets: Any) -> Callable[[WorkspaceRule], WorkspaceRule]:
    """Register a workspace rule for one or more ATen op packets (e.g. ``aten.silu``)."""
    return WORKSPACE_REGISTRY.register(*packets)



def _needs(needs_grad: Sequence[bool], n: int) -> tuple[bool, ...]:
    """``needs_grad`` padded/cut to ``n`` flat inputs."""
    return tuple(bool(x) for x in needs_grad[:n]) + (False,) * max(0, n - len(needs_grad))


def workspace_rule(
    overload: Any,
    args_meta: Any,
    inputs: Sequence[TensorMeta],
    outputs: Sequence[TensorMeta],
    needs_grad: Sequence[bool],
    kwargs_meta: dict[str, Any] | None = None,
    *,
    flop_counter: bool = True,
) -> int | None:
    """Workspace bytes of this call's backward per the registered rule; None when no rule covers it
    (then :func:`backward_workspace` probes). Arguments as in :func:`backward_workspace`."""
    rule = WORKSPACE_REGISTRY.get(overload)
    if rule is None:
        return None
    need = _needs(needs_grad, len(inputs))
    if not any(n and _is_float(m.dtype) for n, m in zip(need, inputs, strict=True)):
        return 0
    call = WorkspaceCall(overload, None if args_meta is None else tuple(args_meta), tuple(inputs),
                         tuple(outputs), dict(kwargs_meta or {}), flop_counter)
    value = rule(call, need)
    return None if value is None else max(0, int(value))


def backward_workspace(
    overload: Any,
    args_meta: Any,
    inputs: Sequence[TensorMeta],
    outputs: Sequence[TensorMeta],
    needs_grad: Sequence[bool],
    kwargs_meta: dict[str, Any] | None = None,
    *,
    flop_counter: bool = True,
) -> int:
    """Transient workspace, in bytes, of the backward of one ATen call (0 for ops that need none).

    ``args_meta`` are the positional args with tensors as TensorMeta (``AtenCall.args``), ``inputs`` and
    ``outputs`` the flat tensors (``AtenCall.inputs``/``outputs``), ``needs_grad[i]`` whether flat input
    ``i`` requires grad (``CallBackward.needs_grad``), ``kwargs_meta`` the keyword arguments when known
    (see :class:`WorkspaceCall`). ``flop_counter=True`` (default) answers what the oracle,
    :func:`budgetplan.runtime.measure.measure_step`, sees; False what a plain eager backward allocates.
    The registered rule answers when there is one, else :func:`probe_workspace` (which never raises).
    See the module docstring for the definition.
    """
    value = workspace_rule(overload, args_meta, inputs, outputs, needs_grad, kwargs_meta,
                           flop_counter=flop_counter)
    if value is not None:
        return value
    return probe_workspace(overload, args_meta, inputs, outputs, needs_grad, kwargs_meta,
                           flop_counter=flop_counter)


# --------------------------------------------------------------------------------------------------
# Rule helpers
# --------------------------------------------------------------------------------------------------


def _number(x: Any, default: float = 1.0) -> float | None:
    """A Python scalar argument as float (``default`` when absent); None for anything else."""
    if x is None:
        return default
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    return None


class _Timeline:
    """Live bytes of the backward's new storages, allocation by allocation: ``peak`` is ``P``."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def alloc(self, nbytes: int) -> int:
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        return nbytes

    def free(self, nbytes: int) -> None:
        self.live -= nbytes

    def beyond(self, returned: int) -> int:
        """The workspace ``max(0, P − G)`` given the returned gradients' bytes ``G``."""
        return max(0, self.peak - returned)


# --------------------------------------------------------------------------------------------------
# Ops whose backward allocates nothing beyond the gradients it returns
# --------------------------------------------------------------------------------------------------

NO_WORKSPACE_OPS: set[Any] = {
    # element-wise activations with a fused backward kernel
    aten.relu, aten.relu_, aten.hardtanh, aten.hardtanh_, aten.threshold, aten.threshold_,
    aten.hardswish, aten.hardswish_, aten.hardsigmoid, aten.hardsigmoid_, aten.gelu,
    aten.sigmoid, aten.sigmoid_, aten.tanh, aten.tanh_, aten.leaky_relu, aten.leaky_relu_,
    aten.elu, aten.elu_,
    # softmax, normalisation: one fused *_backward kernel returning exactly the needed gradients
    aten._softmax, aten._log_softmax, aten.native_layer_norm, aten.native_batch_norm,
    aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training, aten.native_group_norm,
    # pooling, padding, resampling: one *_backward kernel
    aten.max_pool2d_with_indices, aten.avg_pool2d, aten._adaptive_avg_pool2d, aten.constant_pad_nd,
    aten.upsample_nearest2d, aten.upsample_bilinear2d,
    # reductions and concatenation: the gradient is an expand/slice of the incoming one (+ a div)
    aten.mean, aten.sum, aten.cat,
    # views: the gradient is a view of the incoming one, or one new tensor of the input's shape
    # (expand: a sum; slice/select: zeros and a copy into them)
    aten.view, aten._unsafe_view, aten.t, aten.transpose, aten.permute, aten.expand,
    aten.unsqueeze, aten.squeeze, aten.slice, aten.select, aten.alias,
}
"""Ops measured to need no workspace on CPU (torch 2.13), whatever requires grad (for the shapes and
arguments the tests cover)."""


@register_workspace(*NO_WORKSPACE_OPS)
def no_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int:
    """0 bytes: the backward allocates only the gradients it returns (or none: views)."""
    return 0


# --------------------------------------------------------------------------------------------------
# Decomposed activations (oracle only: FlopCounterMode decomposes their *_backward)
# --------------------------------------------------------------------------------------------------


@register_workspace(aten.silu, aten.silu_)
def silu_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int:
    """``5 × self`` bytes when ``self`` needs grad: ``silu_backward`` decomposed as
    ``grad · (s · (1 + x · (1 − s))), s = sigmoid(x)`` keeps ``s``, ``1 − s`` (``empty_like``),
    ``x·(1 − s)``, ``1 + …`` and ``s·(…)`` — five ``self``-sized temporaries — alive while the gradient
    (the sixth) is computed. Plain eager (``flop_counter=False``): one fused kernel, 0."""
    return 5 * call.inputs[0].nbytes if needs[0] and call.flop_counter else 0


@register_workspace(aten.mish, aten.mish_)
def mish_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int:
    """``7 × self`` bytes when ``self`` needs grad: ``mish_backward`` decomposed as
    ``grad · (x · sigmoid(x) · (1 − t²) + t), t = tanh(softplus(x))`` dispatches ``softplus`` (freed
    early), ``tanh``, ``sigmoid``, then five products/sums and ``1 − …``; at its peak eight ``self``-sized
    tensors are alive, the gradient among them. Plain eager (``flop_counter=False``): one fused kernel, 0."""
    return 7 * call.inputs[0].nbytes if needs[0] and call.flop_counter else 0


# --------------------------------------------------------------------------------------------------
# Broadcasting arithmetic: the engine sums a broadcast operand's gradient down to its shape
# --------------------------------------------------------------------------------------------------


def _reduce_phase(
    t: _Timeline, call: WorkspaceCall, needs: tuple[bool, ...], unreduced: dict[int, int],
) -> int:
    """The engine's ``validate_outputs`` after the node; returns the bytes ``G`` of these gradients.

    ``unreduced[i]`` is the bytes of the new output-shaped tensor the node returned for flat input ``i``
    (0 when it returned the incoming gradient itself). In input order, a gradient whose shape is not its
    input's is summed down (``sum_to``: a new tensor of the input's bytes) and the un-reduced one freed.
    """
    out = call.outputs[0]
    returned = 0
    for i, nbytes in sorted(unreduced.items()):
        if not needs[i]:
            continue
        if call.inputs[i].shape != out.shape:
            returned += t.alloc(call.inputs[i].nbytes)
            t.free(nbytes)
        else:
            returned += nbytes
    return returned


def _binary_ok(call: WorkspaceCall, needs: tuple[bool, ...]) -> bool:
    """Two tensor operands whose dtypes equal the output's where they need grad (no cast step)."""
    out = call.outputs[0] if call.outputs else None
    return (len(call.inputs) == 2 and out is not None
            and all(not n or m.dtype == out.dtype for n, m in zip(needs, call.inputs, strict=True)))


@register_workspace(aten.mul, aten.mul_)
def mul_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int | None:
    """``a · b``: each needed gradient is ``grad · other`` at the output's shape (new); one of a broadcast
    operand is then summed down, and its output-sized product is workspace. Both products are alive
    while the first is reduced: ``P = (#needed) · out + (reduced bytes of input 0, if it is reduced)``.
    A Python-number factor: the product is the gradient (0)."""
    if len(call.inputs) == 1:
        return 0
    if not _binary_ok(call, needs):
        return None
    t = _Timeline()
    out = call.outputs[0].nbytes
    unreduced = {i: t.alloc(out) for i in (0, 1) if needs[i]}
    return t.beyond(_reduce_phase(t, call, needs, unreduced))


@register_workspace(aten.div, aten.div_)
def div_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int | None:
    """``a / b`` (``div.Tensor``): the divisor's gradient ``-grad · ((a / b) / b)`` is computed first and
    keeps ``a / b``, ``(a / b) / b``, ``-grad`` and the product (four output-sized tensors) alive at once;
    then ``a``'s gradient ``grad / b`` (output-sized); then broadcast operands are summed down.
    A Python-number divisor: the quotient is the gradient (0). Rounding modes: the probe."""
    if len(call.inputs) == 1:
        return 0 if call.overload_name in ("Tensor", "Scalar", "") else None
    if call.overload_name not in ("Tensor", "") or not _binary_ok(call, needs):
        return None
    t = _Timeline()
    out = call.outputs[0].nbytes
    unreduced: dict[int, int] = {}
    if needs[1]:
        temps = [t.alloc(out) for _ in range(3)]
        unreduced[1] = t.alloc(out)
        for nbytes in temps:
            t.free(nbytes)
    if needs[0]:
        unreduced[0] = t.alloc(out)
    return t.beyond(_reduce_phase(t, call, needs, unreduced))


def _alpha(call: WorkspaceCall) -> float | None:
    """``alpha`` of ``add``/``sub`` (keyword-only; 1 when absent)."""
    return _number(call.kw("alpha"))


@register_workspace(aten.add, aten.add_)
def add_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int | None:
    """``a + alpha · b``: ``a``'s gradient is the incoming one (summed down directly when broadcast);
    ``b``'s too when ``alpha == 1``, else ``grad · alpha`` (output-sized, workspace when then summed)."""
    if len(call.inputs) == 1:
        return 0
    alpha = _alpha(call)
    if alpha is None or not _binary_ok(call, needs):
        return None
    t = _Timeline()
    unreduced = {0: 0, 1: 0 if alpha == 1 else (t.alloc(call.outputs[0].nbytes) if needs[1] else 0)}
    return t.beyond(_reduce_phase(t, call, needs, unreduced))


@register_workspace(aten.sub, aten.sub_)
def sub_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int | None:
    """``a − alpha · b``: ``a``'s gradient is the incoming one; ``b``'s is ``-grad`` (output-sized), times
    ``alpha`` when ``alpha != 1`` (``-grad`` then freed); a broadcast operand's is summed down."""
    if len(call.inputs) == 1:
        return 0
    alpha = _alpha(call)
    if alpha is None or not _binary_ok(call, needs):
        return None
    t = _Timeline()
    unreduced = {0: 0}
    if needs[1]:
        out = call.outputs[0].nbytes
        negated = t.alloc(out)
        if alpha != 1:
            unreduced[1] = t.alloc(out)
            t.free(negated)
        else:
            unreduced[1] = negated
    return t.beyond(_reduce_phase(t, call, needs, unreduced))


# --------------------------------------------------------------------------------------------------
# Matmul family
# --------------------------------------------------------------------------------------------------


@register_workspace(aten.mm, aten.bmm)
def matmul_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int:
    """0: each gradient is one ``mm``/``bmm`` of the incoming gradient with the other operand
    (``t()``/``transpose`` views, no contiguous copies)."""
    return 0


@register_workspace(aten.addmm, aten.baddbmm)
def addmatmul_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int | None:
    """``beta · bias + alpha · (m1 @ m2)`` (``beta``, ``alpha``: keyword-only, 1 when absent). In order:
    ``m1``'s gradient is a matmul (m1-sized), scaled by a non-unit ``alpha`` (a second m1-sized tensor,
    the first freed); the same for ``m2``; the bias's is the incoming gradient, times a non-unit
    ``beta`` (output-sized); a broadcast bias's is then summed down. With ``alpha = beta = 1``: 0."""
    if len(call.inputs) != 3 or call.args is None:
        return None
    beta, alpha = _number(call.kw("beta")), _number(call.kw("alpha"))
    if beta is None or alpha is None:
        return None
    t = _Timeline()
    for i in (1, 2):
        if needs[i]:
            product = t.alloc(call.inputs[i].nbytes)
            if alpha != 1:
                t.alloc(call.inputs[i].nbytes)
                t.free(product)
    returned = sum(call.inputs[i].nbytes for i in (1, 2) if needs[i])
    unreduced = {0: t.alloc(call.outputs[0].nbytes) if needs[0] and beta != 1 else 0}
    return t.beyond(returned + _reduce_phase(t, call, needs, unreduced))


# --------------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------------

_ONEDNN_BACKENDS = ("Mkldnn", "MkldnnTranspose", "MkldnnEmpty")


def conv_backend(call: WorkspaceCall) -> str | None:
    """Name of the ``torch._C._ConvBackend`` PyTorch picks for this convolution on this machine now
    (``"Mkldnn"``, ``"Slow2d"``, ...), decided from shapes only (zero-byte stand-ins); None if unknown.

    oneDNN is chosen for float32 CPU convolutions that are grouped, have kernels larger than 3×3, a
    batch above 1 or a large input — and, at one thread, not for unstrided, undilated 1×1 kernels with
    a batch below 16; with several threads it is used more often.
    """
    args = call.args
    if args is None or len(args) < 9:
        return None
    x, w, b = args[0], args[1], args[2]
    if not isinstance(x, TensorMeta) or not isinstance(w, TensorMeta):
        return None
    try:
        def stand_in(m: TensorMeta) -> torch.Tensor:
            return torch.empty((), dtype=m.dtype).expand(m.shape)

        bias = stand_in(b) if isinstance(b, TensorMeta) else None
        backend = torch._C._select_conv_backend(
            stand_in(x), stand_in(w), bias, list(args[3]), list(args[4]), list(args[5]), bool(args[6]),
            list(args[7]), int(args[8]))
    except Exception:  # noqa: BLE001 — private API: any failure means "unknown"
        return None
    name = str(getattr(backend, "name", ""))
    if name not in torch._C._ConvBackend.__members__:
        # torch 2.13's binding omits MkldnnTranspose (C++ value between Mkldnn and MkldnnEmpty)
        members = torch._C._ConvBackend.__members__
        if "Mkldnn" in members and "MkldnnEmpty" in members and (
                members["Mkldnn"].value < int(backend.value) < members["MkldnnEmpty"].value):
            return "MkldnnTranspose"
        return None
    return name


@register_workspace(aten.convolution)
def convolution_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int | None:
    """``(input, weight, bias, ...)``: the weight's bytes when the bias needs grad, the weight does not,
    and the backend is oneDNN (it computes weight and bias gradients together; the weight's is dropped).
    0 otherwise: ``convolution_backward`` returns only the asked gradients and its scratch never
    surfaces."""
    bias = call.at(2)
    if bias is None or not needs[bias] or needs[1]:
        return 0
    backend = conv_backend(call)
    if backend is None:
        return None
    return call.inputs[1].nbytes if backend in _ONEDNN_BACKENDS else 0


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------


@register_workspace(aten._scaled_dot_product_flash_attention_for_cpu)
def sdpa_cpu_workspace(call: WorkspaceCall, needs: tuple[bool, ...]) -> int | None:
    """``(query, key, value, ...)``: the CPU flash backward returns ``dq``, ``dk``, ``dv`` (each its input's
    bytes) whatever is needed; the unneeded ones are workspace. With an ``attn_mask``: the probe."""
    if len(call.inputs) != 3:
        return None
    return sum(call.inputs[i].nbytes for i in range(3) if not needs[i])


# --------------------------------------------------------------------------------------------------
# Probe: run the op's backward and watch the storages it allocates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceProbeFailure:
    """An op the probe could not run; its workspace was taken as 0."""

    op: str
    reason: str
    inputs: tuple[TensorMeta, ...] = field(default=(), repr=False)
    needs_grad: tuple[bool, ...] = ()


WORKSPACE_PROBE_FAILURES: list[WorkspaceProbeFailure] = []
"""Every probe failure since import (or :func:`clear_workspace_cache`); each answered 0 bytes."""


@dataclass(frozen=True)
class BackwardTrace:
    """What one probed backward allocated. Bytes are whole storages, each counted once.

    ``peak_bytes`` is ``P`` and ``gradient_bytes`` is ``G`` of the module docstring; ``ops`` the ATen
    ops the backward dispatched, in order (as the oracle sees them).
    """

    peak_bytes: int
    gradient_bytes: int
    ops: tuple[str, ...]

    @property
    def workspace_bytes(self) -> int:
        """``max(0, P − G)``: the transient bytes beyond the returned gradients."""
        return max(0, self.peak_bytes - self.gradient_bytes)


_PROBE_CACHE: dict[tuple[Any, ...], int] = {}


def clear_workspace_cache() -> None:
    """Forget cached probe results and recorded failures."""
    _PROBE_CACHE.clear()
    WORKSPACE_PROBE_FAILURES.clear()


def workspace_cache_size() -> int:
    """Number of distinct (op, shapes, dtypes, arguments, needs-grad pattern) the probe has answered."""
    return len(_PROBE_CACHE)


class _NewStorageBytes(RecordingMode):
    """Live bytes of storages first seen while :attr:`recording` (the backward), and their peak.

    Like the oracle's tracker: a storage counts from its first sighting as an ATen op's input or
    output (or as a saved tensor, via :meth:`add`) until it is freed (``weakref.finalize`` on the
    storage). Storages seen before recording starts are pre-existing and never counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.new: set[int] = set()
        self.new_live = 0
        self.peak = 0
        self.recording = False
        self.ops: list[str] = []
        self._finalizers: list[weakref.finalize] = []

    def add(self, t: torch.Tensor) -> None:
        key = storage_key(t)
        if key is None:
            return
        nbytes = int(t.untyped_storage().nbytes())
        old = self.live.get(key)
        if old is None:
            if nbytes == 0:
                return
            self.live[key] = nbytes
            if self.recording:
                self.new.add(key)
                self.new_live += nbytes
            self._finalizers.append(weakref.finalize(t.untyped_storage(), self._free, key))
        elif nbytes > old:  # resized in place
            self.live[key] = nbytes
            if key in self.new:
                self.new_live += nbytes - old
        self.peak = max(self.peak, self.new_live)

    def _free(self, key: int) -> None:
        nbytes = self.live.pop(key, None)
        if nbytes is not None and key in self.new:
            self.new.discard(key)
            self.new_live -= nbytes

    def detach_finalizers(self) -> None:
        for f in self._finalizers:
            f.detach()
        self._finalizers.clear()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        if self.recording:
            self.ops.append(str(func))
        return out


def _placeholder(x: Any) -> Any:
    return "<T>" if isinstance(x, TensorMeta) else x


def _cache_key(overload: Any, args_meta: Any, kwargs_meta: Any, inputs: Sequence[TensorMeta],
               needs: tuple[bool, ...], flop_counter: bool) -> tuple[Any, ...]:
    shapes = tuple((m.shape, str(m.dtype)) for m in inputs)
    return (str(overload), shapes, repr(tree_map(_placeholder, args_meta)),
            repr(tree_map(_placeholder, kwargs_meta)), needs, flop_counter, torch.get_num_threads())


def probe_workspace(
    overload: Any,
    args_meta: Any,
    inputs: Sequence[TensorMeta],
    outputs: Sequence[TensorMeta],
    needs_grad: Sequence[bool],
    kwargs_meta: dict[str, Any] | None = None,
    *,
    flop_counter: bool = True,
) -> int:
    """Measure the workspace bytes of this call's backward by running it (see :func:`trace_backward`).

    Cached by (op, shapes, dtypes, non-tensor arguments, needs-grad pattern, ``flop_counter``, thread
    count — oneDNN's choice of convolution backend depends on it). Never raises: if the op cannot be run
    the answer is 0 and a :class:`WorkspaceProbeFailure` is appended to
    :data:`WORKSPACE_PROBE_FAILURES`.
    """
    kwargs_meta = dict(kwargs_meta or {})
    need = _needs(needs_grad, len(inputs))
    key = _cache_key(overload, args_meta, kwargs_meta, inputs, need, flop_counter)
    cached = _PROBE_CACHE.get(key)
    if cached is not None:
        return cached
    try:
        value = trace_backward(overload, args_meta, inputs, outputs, need, kwargs_meta,
                               flop_counter=flop_counter).workspace_bytes
    except Exception as exc:  # noqa: BLE001 — any failure must degrade to a visible 0
        reason = first_line(exc, with_type=True)
        WORKSPACE_PROBE_FAILURES.append(WorkspaceProbeFailure(str(overload), reason, tuple(inputs), need))
        value = 0
    _PROBE_CACHE[key] = value
    return value


class _ProbeError(Exception):
    pass


def trace_backward(
    overload: Any,
    args_meta: Any,
    inputs: Sequence[TensorMeta],
    outputs: Sequence[TensorMeta],
    needs_grad: Sequence[bool],
    kwargs_meta: dict[str, Any] | None = None,
    *,
    flop_counter: bool = True,
) -> BackwardTrace:
    """Run the op forward and its backward once, and report what the backward allocated (uncached).

    Tensors are built from the recorded shapes and dtypes (contiguous; floats in [0.5, 1.5), integers
    0); the non-tensor arguments come from ``args_meta`` (and ``kwargs_meta`` for keyword arguments).
    Each flat input ``i`` with ``needs_grad[i]`` is a leaf that requires grad, passed through a
    ``clone`` (so in-place ops are legal; the clone's backward passes the gradient through untouched).
    The forward runs under the tracker with saved-tensor hooks, as in the oracle; then
    ``torch.autograd.grad`` runs the backward of the op's differentiable outputs with ones-like
    gradients, under the tracker and (``flop_counter=True``) ``FlopCounterMode``, nested as in
    :func:`budgetplan.runtime.measure.measure_step`. Raises on any failure (use :func:`probe_workspace`).
    """
    need = _needs(needs_grad, len(inputs))
    if args_meta is None:
        raise _ProbeError("no recorded arguments")
    with _outside_modes(), torch.random.fork_rng(devices=[]):
        return _trace(overload, tuple(args_meta), dict(kwargs_meta or {}), tuple(inputs), tuple(outputs),
                      need, flop_counter)


def _trace(
    overload: Any, args_meta: tuple[Any, ...], kwargs_meta: dict[str, Any], inputs: tuple[TensorMeta, ...],
    outputs: tuple[TensorMeta, ...], need: tuple[bool, ...], flop_counter: bool,
) -> BackwardTrace:
    generator = torch.Generator().manual_seed(0)
    flat, spec = tree_flatten((args_meta, kwargs_meta))
    slots = [i for i, x in enumerate(flat) if isinstance(x, TensorMeta)]
    if len(slots) != len(inputs) or any(flat[s] != m for s, m in zip(slots, inputs, strict=False)):
        raise _ProbeError(f"arguments hold {len(slots)} tensors but the call has {len(inputs)} inputs "
                          "(keyword-only tensor arguments need kwargs_meta)")
    leaves: list[torch.Tensor] = []
    held: list[torch.Tensor] = []
    for j, slot in enumerate(slots):
        value = _materialise(flat[slot], generator)
        if need[j] and _is_float(inputs[j].dtype):
            leaf = value.requires_grad_()
            leaves.append(leaf)
            held.append(leaf)
            value = leaf.clone()
        held.append(value)
        flat[slot] = value
    if not leaves:
        return BackwardTrace(0, 0, ())
    args, kwargs = tree_unflatten(flat, spec)

    tracker = _NewStorageBytes()
    for t in held:
        tracker.add(t)

    def pack(x: torch.Tensor) -> torch.Tensor:
        tracker.add(x)
        return x

    try:
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x)
        with tracker, _flop_counter(flop_counter), hooks:
            result = overload(*args, **kwargs)
        outs = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
        metas = tuple(TensorMeta.of(t) for t in outs) if len(outs) != len(outputs) else outputs
        flows = outputs_differentiable(overload, metas)
        roots = [o for o, f in zip(outs, flows, strict=True) if f and o.requires_grad]
        if not roots:
            return BackwardTrace(0, 0, ())
        seeds = [torch.ones_like(o) for o in roots]
        for t in [*outs, *seeds]:
            tracker.add(t)
        tracker.recording = True
        with tracker, _flop_counter(flop_counter):
            grads = torch.autograd.grad(roots, leaves, seeds, allow_unused=True)
        tracker.recording = False
        returned: dict[int, int] = {}
        for g in grads:
            key = None if g is None else storage_key(g)
            if key is not None and key in tracker.new:
                returned[key] = tracker.live[key]
        return BackwardTrace(tracker.peak, sum(returned.values()), tuple(tracker.ops))
    finally:
        tracker.detach_finalizers()


def _flop_counter(active: bool) -> contextlib.AbstractContextManager[Any]:
    """``FlopCounterMode`` as the oracle nests it (inside the tracker), or nothing."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False) if active else contextlib.nullcontext()
