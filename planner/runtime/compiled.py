"""``budgetplan.compile(model, plan)``: turn a plan into a trainable module (docs/api.md).

The returned :class:`CompiledModule` wraps the user's module **in place** (no copy of the weights):

* parameters the plan does not train get ``requires_grad=False``; parameters trained whole stay
  ordinary parameters with ``requires_grad=True``;
* a parameter trained on a **channel subset** (rows along dim 0) keeps its full tensor under its
  original name, frozen (``requires_grad=False``), and gains a small trainable ``nn.Parameter`` of shape
  ``[len(rows), ...]`` held by the compiled module (``compiled.rows``). The owning module's forward is
  replaced (an instance attribute, removed again by :meth:`CompiledModule.release`) by one that calls a
  custom ``torch.autograd.Function``:

  - ``nn.Conv1d/2d/3d`` (exactly these classes, any ``groups``) and ``nn.Linear``: forward is the ordinary
    op on the full tensor; backward computes the weight gradient of the selected output channels only
    (grad_output sliced to those channels; for grouped and depthwise convolutions the matching input
    channels are gathered) and the bias gradient as the sum over the selected channels. It saves the
    op's input only when a weight gradient is needed, and the full weight (a parameter, not an
    activation) only when the input needs a gradient;
  - any other module (BatchNorm/LayerNorm affine, subclasses with their own forward, embeddings, ...):
    the generic fallback substitutes ``full.detach().index_put(rows)`` for the parameter while the
    module's own forward runs: a full-size copy of that tensor per forward, whose gradient is computed
    in full and then indexed.

  The full tensor and the rows are kept in sync by version counters: before each use, rows changed by
  the optimizer are written into the full tensor, and a full tensor changed by someone else
  (``load_state_dict``) is read back into the rows. So ``compiled.state_dict()`` (and
  ``model.state_dict()`` after :meth:`CompiledModule.sync`) has exactly the original keys and shapes with
  the trained values, and frozen rows are never written (bit-identical by construction).

  ``sync()`` is a no-op when nothing changed since the last one (both version counters as recorded).
  :func:`budgetplan.runtime.training_step.build_training_step` relies on this: it syncs a copy, then traces a
  step whose forward calls ``sync()`` again; that call must not record any op in the trace. Keep it so.
  :meth:`CompiledModule.row_bindings` is the public view of the rows (full tensor, row parameter,
  indices) for such tools.

* **Reads outside the owner are refused.** The rows only get a gradient through the owning module's
  replaced forward. A subset parameter that another module reads directly (``nn.MultiheadAttention``
  reads ``out_proj.weight`` in ``F.multi_head_attention_forward``; a weight tied between two modules;
  a parent calling ``F.linear(x, self.child.weight)``) would silently get none, so it is an
  :class:`InputError`. Who reads what is observed on one real forward (train mode, BatchNorm frozen,
  no autograd graph: no parameter requires grad during it; RNG and buffers restored) under a
  :class:`torch.overrides.TorchFunctionMode`, with forward hooks keeping the stack of running modules:
  every op (metadata queries, ``detach`` and ops under ``no_grad`` excepted: they carry no gradient in
  eager PyTorch either) that takes a parameter while the innermost running module is not the
  parameter's owner is recorded. :func:`compile` runs this forward on the example inputs (given, from
  the plan document's input shapes, or from a ``PlanResult``'s graph); without inputs the first forward
  of the compiled module is observed instead and raises there. The record covers every parameter, so
  :meth:`CompiledModule.set_update` checks a new set without tracing or running anything. The traced
  layer graph is not used for this: ``torch.fx`` keeps ``torch.nn`` modules such as
  ``TransformerEncoderLayer`` as single leaf calls, which hides whether their children's forwards run.

Units: bytes.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from budgetplan.errors import InputError
from budgetplan.model.modes import BATCHNORM_POLICIES, BatchNormPolicy, as_inputs, check_batchnorm, training_modes
from budgetplan.model.update_set import UpdateSet, from_plan_json

__all__ = ["BATCHNORM_POLICIES", "CompiledModule", "RowBinding", "compile"]

#: ``frozen`` (default): BatchNorm layers stay in eval mode while the compiled module trains (running
#: statistics are neither used from the batch nor updated); ``train``: they follow ``train()``/``eval()``.

_STATE = "_budgetplan_rows"  # instance attribute on an owner module: attr name -> _Slot
_BN_TRAIN = "train"  # instance attribute overriding BatchNorm.train under the ``frozen`` policy
_FAST_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# --------------------------------------------------------------------------------------------------
# One parameter trained on a subset of its rows
# --------------------------------------------------------------------------------------------------


class _Slot:
    """The full tensor (frozen, under its original name), its trainable rows and their dim-0 indices."""

    def __init__(self, name: str, owner: nn.Module, attr: str, rows_index: tuple[int, ...]) -> None:
        full = owner._parameters[attr]
        assert full is not None
        self.name = name
        self.owner = owner
        self.attr = attr
        self.full: nn.Parameter = full
        self.channels = rows_index
        self.index = torch.tensor(rows_index, dtype=torch.long, device=full.device)
        #: a contiguous range of rows is a *view* of the full tensor (no copy, nothing to sync)
        self.start = rows_index[0]
        self.is_range = rows_index == tuple(range(self.start, self.start + len(rows_index)))
        with torch.no_grad():
            if self.is_range:
                data = full.detach().narrow(0, self.start, len(rows_index))
            else:
                data = full.detach().index_select(0, self.index).clone()
        self.rows = nn.Parameter(data, requires_grad=True)
        self.rows_seen = self.rows._version
        self.full_seen = full._version

    def aliased(self) -> bool:
        """True when the rows are a live view of the full tensor's storage."""
        if not self.is_range:
            return False
        r, f = self.rows, self.full
        return (r.untyped_storage().data_ptr() == f.untyped_storage().data_ptr()
                and r.data_ptr() == f.data_ptr() + self.start * f.stride(0) * f.element_size())

    def sync(self) -> None:
        """Make the full tensor and the rows agree: rows changed since the last sync are written into the
        full tensor; else a full tensor changed (or replaced) by someone else is read into the rows.
        Rows that are a view of the full tensor agree by construction (a view broken by ``.to()`` or a
        load with ``assign=True`` is synced as a copy, then re-made)."""
        current = self.owner._parameters.get(self.attr)
        if current is not None and current is not self.full:  # replaced (load_state_dict(assign=True))
            self.full = current
            current.requires_grad_(False)
            self.full_seen = -1
        if self.aliased():
            return
        if self.index.device != self.full.device:
            self.index = self.index.to(self.full.device)
        with torch.no_grad():
            if self.rows._version != self.rows_seen:
                self.full.index_copy_(0, self.index, self.rows.detach().to(self.full.dtype))
            elif self.full._version != self.full_seen:
                self.rows.copy_(self.full.detach().index_select(0, self.index))
            if self.is_range and self.rows.dtype == self.full.dtype and self.full.is_contiguous():
                self.rows.data = self.full.detach().narrow(0, self.start, len(self.channels))
        self.rows_seen = self.rows._version
        self.full_seen = self.full._version

    def pull(self) -> None:
        """Read the full tensor into the rows (after a load)."""
        self.full_seen = -1
        self.rows_seen = self.rows._version
        self.sync()


# --------------------------------------------------------------------------------------------------
# Autograd functions: weight gradients of the selected rows only
# --------------------------------------------------------------------------------------------------


def _sum_but_channel(g: torch.Tensor) -> torch.Tensor:
    return g.sum(dim=[d for d in range(g.dim()) if d != 1]) if g.dim() > 1 else g


def _grouped_weight_rows(gy: torch.Tensor, gy_sel: torch.Tensor, x: torch.Tensor, w_rows: torch.Tensor,
                         w_index: torch.Tensor, w_shape: tuple[int, ...], stride: list[int], padding: list[int],
                         dilation: list[int], groups: int) -> torch.Tensor:
    """Weight gradient of the selected output channels of a grouped (or depthwise) convolution.

    Only the input channels of the groups that hold a selected channel are gathered (never more than the
    input itself; the input itself when every group is touched). When each touched group holds exactly
    one selected channel (depthwise convolutions, sparse selections), exactly the selected rows are
    computed; otherwise every output channel of the touched groups is computed and the selected ones
    are kept."""
    nd = len(w_shape) - 2
    cin_g, cout_g = w_shape[1], w_shape[0] // groups
    group_of = torch.div(w_index, cout_g, rounding_mode="floor")
    touched = torch.unique(group_of)  # sorted
    n = touched.numel()
    arange_in = torch.arange(cin_g, device=w_index.device)
    x_sel = x if n == groups else x.index_select(1, (touched[:, None] * cin_g + arange_in).flatten())
    mask = [False, True, False]
    if n == w_index.numel():  # one selected channel per touched group: its rows exactly
        return torch.ops.aten.convolution_backward(gy_sel, x_sel, w_rows, None, stride, padding, dilation, False,
                                                   [0] * nd, n, mask)[1]
    arange_out = torch.arange(cout_g, device=w_index.device)
    out_index = (touched[:, None] * cout_g + arange_out).flatten()
    gy_groups = gy if n == groups else gy.index_select(1, out_index)
    w_like = gy.new_empty(1).expand(n * cout_g, *w_shape[1:])
    gw = torch.ops.aten.convolution_backward(gy_groups, x_sel, w_like, None, stride, padding, dilation, False,
                                             [0] * nd, n, mask)[1]
    position = torch.searchsorted(touched, group_of) * cout_g + (w_index - group_of * cout_g)
    return gw.index_select(0, position)


class _RowsConv(torch.autograd.Function):
    """``convolution(x, weight, bias)`` whose backward computes weight/bias gradients of selected rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, w_rows: torch.Tensor | None,
                w_index: torch.Tensor | None, bias: torch.Tensor | None, b_rows: torch.Tensor | None,
                b_index: torch.Tensor | None, stride: list[int], padding: list[int], dilation: list[int],
                groups: int) -> torch.Tensor:
        nd = weight.dim() - 2
        y = torch.convolution(x, weight, bias, stride, padding, dilation, False, [0] * nd, groups)
        need_x_grad = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        ctx.save_for_backward(x if need_w else None, weight if need_x_grad else None,
                              w_rows if ctx.needs_input_grad[2] else None)
        ctx.meta = (tuple(x.shape), tuple(weight.shape), stride, padding, dilation, groups, w_index, b_index,
                    bias is not None)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:
        x, weight, w_rows = ctx.saved_tensors
        x_shape, w_shape, stride, padding, dilation, groups, w_index, b_index, has_bias = ctx.meta
        nd = len(w_shape) - 2
        zeros = [0] * nd
        need = ctx.needs_input_grad
        gx = gw = gw_rows = gb = gb_rows = None
        if need[0]:
            x_like = gy.new_empty(1).expand(x_shape)
            gx = torch.ops.aten.convolution_backward(gy, x_like, weight, None, stride, padding, dilation, False,
                                                     zeros, groups, [True, False, False])[0]
        if need[1]:
            gw = torch.ops.aten.convolution_backward(gy, x, w_rows if w_rows is not None else
                                                     gy.new_empty(1).expand(w_shape), None, stride, padding,
                                                     dilation, False, zeros, groups, [False, True, False])[1]
        gy_sel = None
        if need[2]:
            gy_sel = gy.index_select(1, w_index)
            if groups == 1:
                gw_rows = torch.ops.aten.convolution_backward(gy_sel, x, w_rows, None, stride, padding, dilation,
                                                              False, zeros, 1, [False, True, False])[1]
            else:
                gw_rows = _grouped_weight_rows(gy, gy_sel, x, w_rows, w_index, w_shape, stride, padding,
                                               dilation, groups)
        if has_bias and (need[4] or need[5]):
            if need[5] and gy_sel is not None and torch.equal(b_index, w_index):
                gb_rows = _sum_but_channel(gy_sel)
            else:
                full = _sum_but_channel(gy)
                gb = full if need[4] else None
                gb_rows = full.index_select(0, b_index) if need[5] else None
        return gx, gw, gw_rows, None, gb, gb_rows, None, None, None, None, None


class _RowsLinear(torch.autograd.Function):
    """``linear(x, weight, bias)`` whose backward computes weight/bias gradients of selected rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, w_rows: torch.Tensor | None,
                w_index: torch.Tensor | None, bias: torch.Tensor | None, b_rows: torch.Tensor | None,
                b_index: torch.Tensor | None) -> torch.Tensor:
        y = F.linear(x, weight, bias)
        need_w = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        ctx.save_for_backward(x if need_w else None, weight if ctx.needs_input_grad[0] else None)
        ctx.meta = (w_index, b_index, bias is not None)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        w_index, b_index, has_bias = ctx.meta
        need = ctx.needs_input_grad
        gx = gw = gw_rows = gb = gb_rows = None
        if need[0]:
            gx = gy.matmul(weight)
        gy2 = gy.reshape(-1, gy.shape[-1])
        if need[1] or need[2]:
            x2 = x.reshape(-1, x.shape[-1])
            if need[1]:
                gw = gy2.t().mm(x2)
            if need[2]:
                gw_rows = gy2.index_select(1, w_index).t().mm(x2)
        if has_bias and (need[4] or need[5]):
            full = gy2.sum(0)
            gb = full if need[4] else None
            gb_rows = full.index_select(0, b_index) if need[5] else None
        return gx, gw, gw_rows, None, gb, gb_rows, None


def _fast_forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:
    """Forward of an exact ``nn.ConvNd``/``nn.Linear`` with a channel subset (installed per instance)."""
    slots: dict[str, _Slot] = self.__dict__[_STATE]
    for slot in slots.values():
        slot.sync()
    w, b = slots.get("weight"), slots.get("bias")
    args = (self.weight, w.rows if w else None, w.index if w else None,
            self.bias, b.rows if b else None, b.index if b else None)
    if isinstance(self, nn.Linear):
        return _RowsLinear.apply(input, *args)
    padding = list(self.padding) if not isinstance(self.padding, str) else self.padding
    if self.padding_mode != "zeros":
        input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        padding = [0] * (self.weight.dim() - 2)
    elif isinstance(padding, str):  # 'same' / 'valid': use the module's resolved padding
        if padding == "valid":
            padding = [0] * (self.weight.dim() - 2)
        else:
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            if any(t % 2 for t in total):  # asymmetric 'same': pad explicitly
                pad: list[int] = []
                for t in reversed(total):
                    pad += [t // 2, t - t // 2]
                input = F.pad(input, pad)
                padding = [0] * len(total)
            else:
                padding = [t // 2 for t in total]
    return _RowsConv.apply(input, *args, list(self.stride), padding, list(self.dilation), self.groups)


def _generic_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Fallback forward: the module's own forward with ``full.detach().index_put(rows)`` substituted for
    each parameter trained on a channel subset (a full-size copy; its full gradient is then indexed)."""
    slots: dict[str, _Slot] = self.__dict__[_STATE]
    originals: dict[str, Any] = {}
    try:
        for attr, slot in slots.items():
            slot.sync()
            originals[attr] = self._parameters[attr]
            self._parameters[attr] = slot.full.detach().index_put((slot.index,), slot.rows)
        return type(self).forward(self, *args, **kwargs)
    finally:
        for attr, p in originals.items():
            self._parameters[attr] = p


def _frozen_bn_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a BatchNorm layer under the ``frozen`` policy: always eval mode."""
    return nn.Module.train(self, False)


# --------------------------------------------------------------------------------------------------
# Who reads each parameter: one observed forward
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ForeignRead:
    """A parameter read by an op while a module other than its owner was the innermost running one."""

    parameter: str
    reader: str  # qualified path of that module ('' = the top-level module)
    reader_type: str  # its class name
    function: str  # the torch function that read it

    def message(self) -> str:
        """The one-line refusal for training this parameter on a channel subset."""
        who = f"module '{self.reader}'" if self.reader else f"the top-level module ({self.reader_type})"
        return (f"parameter '{self.parameter}' is read outside its module's forward (by {who}, in "
                f"{self.function}); its rows would get no gradient: train it whole or not at all")


#: torch functions that only look at a tensor's metadata, or cut it from autograd (no gradient in
#: eager PyTorch either): not reads that matter
_NOT_READS = frozenset({
    "__get__", "__len__", "__repr__", "__format__", "__hash__", "size", "dim", "ndimension", "numel",
    "nelement", "stride", "storage_offset", "is_contiguous", "data_ptr", "element_size", "get_device",
    "is_floating_point", "is_complex", "type", "detach", "detach_", "requires_grad_", "untyped_storage",
})


def _tensors_in(value: Any, out: list[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _tensors_in(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _tensors_in(v, out)
    return out


class _ReadWatch(TorchFunctionMode):
    """Records, for every parameter of ``model``, the first op that reads it while the innermost running
    module is not its owner (forward hooks keep the module stack; see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.owner_of: dict[int, tuple[str, nn.Module]] = {}
        for name, p in model.named_parameters():
            self.owner_of[id(p)] = (name, _owner(model, name)[0])
        self.path_of = {id(m): n for n, m in model.named_modules()}
        self.stack: list[nn.Module] = []
        self.foreign: dict[str, _ForeignRead] = {}
        self._handles: list[Any] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if torch.is_grad_enabled() and getattr(func, "__name__", "") not in _NOT_READS:
            inner = self.stack[-1] if self.stack else None
            for t in _tensors_in(args, _tensors_in(kwargs, [])):
                hit = self.owner_of.get(id(t))
                if hit is not None and hit[1] is not inner and hit[0] not in self.foreign:
                    reader = self.path_of.get(id(inner), "?") if inner is not None else ""
                    fname = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
                    self.foreign[hit[0]] = _ForeignRead(hit[0], reader, type(inner or self.model).__name__,
                                                        str(fname))
        return func(*args, **kwargs)

    def _push(self, module: nn.Module, *_: Any) -> None:
        self.stack.append(module)

    def _pop(self, module: nn.Module, *_: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def __enter__(self) -> _ReadWatch:
        for m in self.model.modules():
            self._handles.append(m.register_forward_pre_hook(self._push, prepend=True))
            self._handles.append(m.register_forward_hook(self._pop, always_call=True))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []
            self.stack = []


def _probe_reads(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, _ForeignRead] | None:
    """Run ``model`` once on ``inputs`` (train mode, BatchNorm frozen, no parameter requiring grad: no
    autograd graph) under a :class:`_ReadWatch`; the global RNG, buffers, ``requires_grad`` flags and
    modes are restored. ``None`` when the forward fails on these inputs (the first forward of the
    compiled module is observed instead)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    buffers = [(b, b.detach().clone(), b._version) for b in model.buffers()]
    watch = _ReadWatch(model)
    try:
        for p in flags:
            p.requires_grad_(False)
        with torch.random.fork_rng(devices=[]), training_modes(model, "frozen"), watch:
            model(*inputs)
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - inputs that do not run the model: observe the first real forward
        return None
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, saved, version in buffers:
                if b._version != version:
                    b.copy_(saved)
    return watch.foreign


def _refuse_foreign(update: UpdateSet, reads: Mapping[str, _ForeignRead]) -> None:
    """Raise the one-line :class:`InputError` for the first channel subset of ``update`` read outside
    its owner."""
    for name in update.parameter_names():
        chans = update.channels(name)
        if chans and name in reads:
            raise InputError(reads[name].message())


@dataclass(frozen=True)
class RowBinding:
    """One parameter trained on a channel subset, as :meth:`CompiledModule.row_bindings` reports it."""

    parameter: str  #: qualified name in ``model.named_parameters()``
    full: torch.Tensor  #: the full tensor (frozen, under ``parameter``); the forward reads this one
    rows: nn.Parameter  #: the trainable rows, ``[len(index), *full.shape[1:]]``
    index: torch.Tensor  #: int64 dim-0 indices of the rows in ``full`` (ascending)
    is_view: bool  #: the rows are a live view of ``full``'s storage (nothing to write back)


# --------------------------------------------------------------------------------------------------
# The compiled module
# --------------------------------------------------------------------------------------------------


class _Immutable:
    """Holds an immutable value (an UpdateSet) that ``copy.deepcopy`` shares instead of copying."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict[int, Any]) -> _Immutable:
        return self


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, attr = name.rpartition(".")
    return (module.get_submodule(prefix) if prefix else module), attr


class CompiledModule(nn.Module):
    """The user's module, set up to train exactly an update set (see the module docstring).

    * ``compiled(*args)`` runs ``compiled.module(*args)``; ``compiled.module`` is the user's own module
      (modified in place: ``requires_grad`` flags, forwards of layers trained on channel subsets,
      BatchNorm ``train`` under the ``frozen`` policy; :meth:`release` undoes all of it).
    * ``compiled.parameters()`` = the module's parameters (frozen ones with ``requires_grad=False``) plus
      the trainable rows; build the optimizer from :meth:`trainable_parameters` (or ``parameters()``).
    * ``state_dict()``/``load_state_dict()`` use the original module's keys and shapes.
    """

    def __init__(self, module: nn.Module, update: UpdateSet, *, batchnorm: BatchNormPolicy = "frozen",
                 example_inputs: tuple[torch.Tensor, ...] | None = None, plan: Any = None,
                 reads: Mapping[str, _ForeignRead] | None = None) -> None:
        """``reads``: parameter name -> its first read outside its owner, as observed by
        :func:`_probe_reads` on the whole module (``None``: not observed yet; the first forward is)."""
        super().__init__()
        check_batchnorm(batchnorm)
        self.module = module
        self.rows = nn.ParameterDict()
        self.batchnorm: str = batchnorm
        self.example_inputs = example_inputs
        self.plan = plan  # the PlanResult or plan document compiled from (for summary()), or None
        self._slots: dict[str, _Slot] = {}
        self._requires_grad0 = {n: p.requires_grad for n, p in module.named_parameters()}
        self._held = _Immutable(UpdateSet.none())
        self._reads = _Immutable(dict(reads) if reads is not None else None)
        self._refusal: str | None = None  # set when an observed forward found a subset read outside its owner
        update = update.validated(module)
        if reads is not None:
            _refuse_foreign(update, reads)
        self._install(update)
        self.training = module.training
        self._apply_bn_policy()

    # -- installation -----------------------------------------------------------------------------------
    def _install(self, update: UpdateSet) -> None:
        by_owner: dict[nn.Module, dict[str, _Slot]] = {}
        for name, p in self.module.named_parameters():
            chans = update.channels(name)
            if chans is None or chans == ():
                p.requires_grad_(chans is None)
                continue
            if not (p.is_floating_point() or p.is_complex()):
                raise InputError(f"parameter {name!r} has dtype {p.dtype} and cannot be trained")
            owner, attr = _owner(self.module, name)
            slot = _Slot(name, owner, attr, chans)
            p.requires_grad_(False)
            self._slots[name] = slot
            self.rows[name.replace(".", "__")] = slot.rows
            by_owner.setdefault(owner, {})[attr] = slot
        for owner, slots in by_owner.items():
            if _STATE in owner.__dict__ or "forward" in owner.__dict__:
                raise InputError(f"module {type(owner).__name__} already has its own instance forward; "
                                 "cannot train a channel subset of it")
            owner.__dict__[_STATE] = slots
            fast = type(owner) in _FAST_TYPES and set(slots) <= {"weight", "bias"}
            owner.__dict__["forward"] = types.MethodType(_fast_forward if fast else _generic_forward, owner)
        self._held = _Immutable(update)

    def _uninstall(self) -> None:
        self.sync()
        for slot in self._slots.values():
            slot.owner.__dict__.pop(_STATE, None)
            slot.owner.__dict__.pop("forward", None)
        self._slots = {}
        self.rows = nn.ParameterDict()

    def _apply_bn_policy(self) -> None:
        for m in self.module.modules():
            if isinstance(m, _BatchNorm):
                if self.batchnorm == "frozen":
                    m.__dict__[_BN_TRAIN] = types.MethodType(_frozen_bn_train, m)
                    nn.Module.train(m, False)
                else:
                    m.__dict__.pop(_BN_TRAIN, None)
                    nn.Module.train(m, self.training)

    # -- the contract ----------------------------------------------------------------------------------
    @property
    def update(self) -> UpdateSet:
        """The update set being trained (canonical, model order)."""
        return self._held.value

    def set_update(self, update: UpdateSet) -> None:
        """Train another update set from now on, in place and cheaply (no tracing, no copies of the model).

        The current trained rows are written back into the full tensors first; afterwards the old row
        parameters are no longer used: **build a new optimizer** from :meth:`trainable_parameters`.
        Raises :class:`InputError` for a set that does not match the model, or (one line) a channel subset
        of a parameter read outside its owner module's forward — known from the forward observed by
        :func:`compile` or by the first forward (when neither has run yet, the next forward checks).
        """
        if not isinstance(update, UpdateSet):
            raise InputError(f"set_update expects an UpdateSet, got {type(update).__name__}")
        update = update.validated(self.module)
        if self._reads.value is not None:
            _refuse_foreign(update, self._reads.value)
        self._uninstall()
        self._install(update)
        self._refusal = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The tensors the optimizer should update, in model order: whole trained parameters and the row
        parameters of channel subsets."""
        out: list[nn.Parameter] = []
        for name, p in self.module.named_parameters():
            if name in self._slots:
                out.append(self._slots[name].rows)
            elif self.update.channels(name) is None and p.requires_grad:
                out.append(p)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._refusal is not None:
            raise InputError(self._refusal)
        if self._reads.value is not None or not self._slots or not torch.is_grad_enabled():
            return self.module(*args, **kwargs)
        # Who reads what was not observed yet (no example inputs at compile): observe this forward. Under
        # no_grad nothing would count as a read, so such a forward is not the observed one.
        watch = _ReadWatch(self.module)
        with watch:
            out = self.module(*args, **kwargs)
        self._reads = _Immutable(dict(watch.foreign))
        try:
            _refuse_foreign(self.update, self._reads.value)
        except InputError as exc:
            self._refusal = str(exc)
            raise
        return out

    def sync(self) -> None:
        """Write trained rows into the full tensors now (done automatically before every forward and by
        ``state_dict()``; call it before reading ``model``'s weights directly after the last step).

        A no-op when neither the rows nor the full tensors changed since the last sync: a synced module
        can be traced (``make_fx``) without the forward's own sync recording any op —
        :func:`budgetplan.runtime.training_step.build_training_step` relies on it."""
        for slot in self._slots.values():
            slot.sync()

    def row_bindings(self) -> list[RowBinding]:
        """The parameters trained on channel subsets, in model order: name, full tensor, row parameter,
        dim-0 indices and whether the rows are a view of the full tensor (see :class:`RowBinding`).
        Tools that run the step themselves write updated rows into ``full`` at ``index`` unless
        ``is_view``."""
        return [RowBinding(parameter=slot.name, full=slot.full, rows=slot.rows, index=slot.index,
                           is_view=slot.aliased()) for slot in self._slots.values()]

    def train(self, mode: bool = True) -> CompiledModule:
        """Train/eval mode; under ``batchnorm="frozen"`` BatchNorm layers stay in eval mode."""
        super().train(mode)
        self._apply_bn_policy()
        return self

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "",
                   keep_vars: bool = False) -> dict[str, Any]:
        """The wrapped module's state dict (original keys and shapes), trained rows written in first."""
        self.sync()
        return self.module.state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load an original-model state dict into the wrapped module; the trainable rows are re-read."""
        result = self.module.load_state_dict(state_dict, strict=strict, assign=assign)
        for slot in self._slots.values():
            slot.pull()
        for name, p in self.module.named_parameters():
            if name in self._slots or not self.update.is_updated(name):
                p.requires_grad_(False)
        return result

    def release(self) -> nn.Module:
        """Write the rows back, undo every change made to the module (forwards, BatchNorm ``train``,
        ``requires_grad`` flags as they were) and return it. The compiled module is unusable afterwards."""
        self._uninstall()
        for m in self.module.modules():
            if isinstance(m, _BatchNorm):
                m.__dict__.pop(_BN_TRAIN, None)
                nn.Module.train(m, self.training)
        for name, p in self.module.named_parameters():
            p.requires_grad_(self._requires_grad0.get(name, p.requires_grad))
        self._held = _Immutable(UpdateSet.none())
        return self.module

    # -- figures ---------------------------------------------------------------------------------------
    @property
    def row_copy_bytes(self) -> int:
        """Bytes of the trainable row copies held besides the full tensors (a contiguous range of rows is
        a view of the full tensor and costs nothing)."""
        return sum(s.rows.numel() * s.rows.element_size() for s in self._slots.values() if not s.aliased())

    @contextmanager
    def _stripped(self) -> Iterator[None]:
        """The module without any of our instance attributes (forwards, row state, BatchNorm ``train``)."""
        removed: list[tuple[nn.Module, str, Any]] = []
        for m in self.module.modules():
            ours = _STATE in m.__dict__
            for key in (_STATE, "forward", _BN_TRAIN):
                if key == "forward" and not ours:
                    continue
                if key in m.__dict__:
                    removed.append((m, key, m.__dict__.pop(key)))
        try:
            yield
        finally:
            for m, key, value in removed:
                m.__dict__[key] = value

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledModule:
        """A deep copy compiled afresh on a deep copy of the module (so row views stay views)."""
        self.sync()
        with self._stripped():
            module = copy.deepcopy(self.module, memo)
        new = CompiledModule(module, self.update, batchnorm=self.batchnorm,  # type: ignore[arg-type]
                             example_inputs=self.example_inputs, plan=self.plan, reads=self._reads.value)
        new._requires_grad0 = dict(self._requires_grad0)
        new.train(self.training)
        memo[id(self)] = new
        return new

    def trained_elements(self) -> dict[str, int]:
        """Parameter name -> trained elements (rows x row size, or the whole tensor)."""
        out: dict[str, int] = {}
        for name, p in self.module.named_parameters():
            if name in self._slots:
                out[name] = self._slots[name].rows.numel()
            elif self.update.channels(name) is None:
                out[name] = p.numel()
        return out

    @contextmanager
    def plain(self) -> Iterator[nn.Module]:
        """The wrapped module as PyTorch would run it in this compiled module's modes (train/eval, the
        BatchNorm policy) but with its original forwards: for tracing and pricing."""
        saved: dict[nn.Module, Any] = {}
        for slot in self._slots.values():
            if slot.owner not in saved:
                saved[slot.owner] = slot.owner.__dict__.pop("forward", None)
        try:
            yield self.module
        finally:
            for owner, fwd in saved.items():
                if fwd is not None:
                    owner.__dict__["forward"] = fwd

    def estimate(self, *, optimizer: str = "sgd", example_inputs: Any = None,
                 target: Any = "host") -> Any:
        """Price one training step of this module as it runs (its update set, its train/BatchNorm modes)
        with the target's cost model: a :class:`~budgetplan.pricing.host.exact.TrainingEstimate` (bytes, FLOPs).

        Traces the module (seconds on large models). ``example_inputs`` default to those given to
        :func:`compile` (or made from the plan's input shapes). The row copies of non-contiguous channel
        subsets (:attr:`row_copy_bytes`, held the whole step) are added to ``peak_bytes``, to the
        ``weights`` of ``memory`` and ``memory_at_peak`` and to every timeline point; a plan made before
        compiling does not know them."""
        from budgetplan.model.modes import graph_in_training_modes
        from budgetplan.pricing.family import PricingOptions, for_target
        from budgetplan.targets import resolve_target

        inputs = as_inputs(example_inputs) if example_inputs is not None else self.example_inputs
        if inputs is None:
            raise InputError("estimate() needs example inputs (none were given to compile)")
        with self.plain() as module:
            graph = graph_in_training_modes(module, inputs, batchnorm=self.batchnorm)
        device = resolve_target(target)
        est = for_target(device).estimate(graph, self.update, device, PricingOptions(optimizer=optimizer))
        copies = self.row_copy_bytes
        if copies:  # row copies are parameters this module holds for the whole step, besides the model's
            est.peak_bytes += copies
            est.memory.weights += copies
            est.memory_at_peak.weights += copies
            for point in est.timeline:
                point.live_bytes += copies
                point.breakdown.weights += copies
            est.notes.append(f"includes {copies} bytes of row copies (non-contiguous channel subsets)")
        return est

    def summary(self, max_rows: int = 20) -> Any:
        """A rich renderable: what is trained (per parameter: rows, elements, bytes; at most ``max_rows``
        rows, channel subsets first) and the plan's prediction when compiled from a plan."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title="budgetplan: compiled update set", title_justify="left")
        for col, just in (("parameter", "left"), ("shape", "left"), ("trained rows", "right"),
                          ("elements", "right"), ("gradient bytes", "right")):
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        total_params = 0
        entries = []
        counts = self.trained_elements()
        for name, p in self.module.named_parameters():
            total_params += p.numel()
            if not self.update.is_updated(name):
                continue
            chans = self.update.channels(name)
            rows = "all" if chans is None else f"{len(chans)}/{p.shape[0]}"
            entries.append((chans is None, name, "x".join(map(str, p.shape)), rows, counts[name],
                            counts[name] * p.element_size()))
        entries.sort(key=lambda e: e[0])  # channel subsets first (stable: model order within)
        for _, name, shape, rows, elements, nbytes in entries[:max_rows]:
            table.add_row(name, shape, rows, f"{elements:,}", f"{nbytes:,}")
        if len(entries) > max_rows:
            table.add_row(f"... {len(entries) - max_rows} more", "", "", "", "")
        trained = sum(self.trained_elements().values())
        share = 100.0 * trained / total_params if total_params else 0.0
        lines = [f"trained {trained:,} of {total_params:,} parameter elements ({share:.2f} %); "
                 f"{len(self.update)} tensors; BatchNorm {self.batchnorm}; row copies {self.row_copy_bytes:,} bytes"]
        peak = _plan_peak(self.plan)
        if peak is not None:
            lines.append(f"plan: predicted peak {peak[0]:,} bytes of budget {peak[1]:,} bytes ({peak[2]})")
        return Group(table, Text("\n".join(lines)))

    def print_summary(self) -> None:
        """Print :meth:`summary` with rich."""
        from rich.console import Console

        Console().print(self.summary())


def _plan_peak(plan: Any) -> tuple[int, int, str] | None:
    if plan is None:
        return None
    if isinstance(plan, dict):
        try:
            return int(plan["peak_bytes"]), int(plan["budget_bytes"]), str(plan["target"]["name"])
        except (KeyError, TypeError, ValueError):
            return None
    est = getattr(plan, "estimate", None)
    if est is None:
        return None
    return int(est.peak_bytes), int(getattr(plan, "budget_bytes", 0)), str(est.target)


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def _inputs_from_document(document: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    shapes = document.get("model", {}).get("input_shapes")
    if not isinstance(shapes, dict) or not shapes:
        raise InputError("the plan records no input shapes; pass example_inputs to compile()")
    gen = torch.Generator().manual_seed(0)
    try:
        return tuple(torch.randn(*[int(d) for d in shape], generator=gen) for shape in shapes.values())
    except (TypeError, ValueError):
        raise InputError(f"the plan's input shapes are malformed: {shapes}") from None


def _inputs_from_graph(graph: Any) -> tuple[torch.Tensor, ...] | None:
    """Seeded example inputs of the shapes and dtypes a traced :class:`~budgetplan.model.graph.LayerGraph`
    was made with (random floats, zeros otherwise), or ``None`` without a graph."""
    metas = getattr(graph, "inputs", None)
    if not isinstance(metas, dict) or not metas:
        return None
    gen = torch.Generator().manual_seed(0)
    out: list[torch.Tensor] = []
    for meta in metas.values():
        shape, dtype = tuple(int(d) for d in meta.shape), meta.dtype
        out.append(torch.randn(*shape, generator=gen, dtype=dtype) if dtype.is_floating_point
                   else torch.zeros(shape, dtype=dtype))
    return tuple(out)


def compile(model: nn.Module, plan: Any, *, example_inputs: Any = None,
            batchnorm: BatchNormPolicy = "frozen", check: bool = True) -> CompiledModule:  # noqa: A001
    """Set ``model`` up to train what ``plan`` says and return the :class:`CompiledModule` wrapping it.

    Args:
        model: the user's ``nn.Module``; modified in place (no weights are copied) — see docs/api.md.
        plan: a :class:`~budgetplan.selection.planner.PlanResult`, a plan document (dict, docs/plan-format.md), a
            path to a plan JSON file, or an :class:`~budgetplan.model.update_set.UpdateSet`.
        example_inputs: a tensor or tuple of tensors the model takes; used to trace the model for the
            fingerprint check, for the one forward that observes who reads each parameter (module
            docstring) and by :meth:`CompiledModule.estimate`. Default: seeded random tensors of the
            plan document's input shapes, or of the shapes a ``PlanResult``'s graph was traced with;
            without any, the compiled module's first forward is observed instead.
        batchnorm: ``"frozen"`` (default: BatchNorm layers in eval mode while training — running
            statistics frozen) or ``"train"`` (they follow ``train()``/``eval()``).
        check: check a plan document's model fingerprint against ``model`` (traces the model once).

    Raises:
        InputError: one line — a plan made for another model (fingerprint mismatch), a plan naming a
            parameter the model does not have, bad indices, an unknown ``batchnorm``, a bad plan file,
            a channel subset of a parameter read outside its own module's forward.
    """
    from budgetplan.emit.plan_file import check_fingerprint, read_plan
    from budgetplan.model.graph import build_layer_graph
    from budgetplan.model.tracing import trace_model

    if not isinstance(model, nn.Module):
        raise InputError(f"compile expects a torch.nn.Module, got {type(model).__name__}")
    check_batchnorm(batchnorm)
    if model.__dict__.get(_STATE) is not None or any(_STATE in m.__dict__ for m in model.modules()):
        raise InputError("this model is already compiled; call release() on the compiled module first")
    inputs = as_inputs(example_inputs) if example_inputs is not None else None
    where = "the plan"
    document: dict[str, Any] | None = None
    if isinstance(plan, (str, os.PathLike)):
        where = str(plan)
        document = read_plan(Path(plan))
    elif isinstance(plan, dict):
        document = plan
        if document.get("format") not in (None, "budgetplan-plan"):
            raise InputError("the plan document is not a budgetplan plan (format)")
    if document is not None:
        if "update" not in document:
            raise InputError(f"{where} has no 'update' list")
        if check and isinstance(document.get("model"), dict) and document["model"].get("fingerprint"):
            if inputs is None:
                inputs = _inputs_from_document(document)
            group_size = int(document["model"].get("group_size", 1) or 1)
            graph = build_layer_graph(trace_model(model, inputs), inputs, group_size=group_size)
            check_fingerprint(document, graph, where)
        elif inputs is None and isinstance(document.get("model"), dict):
            try:
                inputs = _inputs_from_document(document)
            except InputError:
                inputs = None
        update = from_plan_json(json.loads(json.dumps({"update": document["update"]})), model)
    elif isinstance(plan, UpdateSet):
        update = plan.validated(model)
    elif hasattr(plan, "update") and isinstance(getattr(plan, "update"), UpdateSet):  # PlanResult
        update = plan.update.validated(model)
        if inputs is None:
            inputs = _inputs_from_graph(getattr(getattr(plan, "planner", None), "graph", None))
    else:
        raise InputError(f"cannot compile from a {type(plan).__name__}; give a PlanResult, a plan document, "
                         "a plan file path or an UpdateSet")
    # who reads each parameter (a subset read outside its owner is refused; see the module docstring)
    reads = _probe_reads(model, inputs) if inputs is not None else None
    return CompiledModule(model, update, batchnorm=batchnorm, example_inputs=inputs, plan=plan if not
                          isinstance(plan, UpdateSet) else None, reads=reads)


class _CallableModule(types.ModuleType):
    """``budgetplan.compile`` is both this submodule and the function: once the submodule is imported,
    Python binds the package attribute ``compile`` to the module, so the module forwards calls."""

    def __call__(self, *args: Any, **kwargs: Any) -> CompiledModule:
        return compile(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
