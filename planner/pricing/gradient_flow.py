"""The backward pass an update set implies, derived op by op from the recorded ATen calls.

Given a :class:`~budgetplan.model.graph.LayerGraph` and an :class:`~budgetplan.model.update_set.UpdateSet`, this pass
decides, without running autograd:

* which tensors require grad: a parameter when it is updated; an op's differentiable outputs when any
  of its inputs does (propagated in execution order, by storage, so views and in-place ops follow);
* which ATen calls run backward: those with an input that requires grad — exactly the calls autograd
  records, so the gradient flows from the loss to every updated parameter and no further;
* which tensors each of those calls keeps for backward, from the per-op rules of
  :mod:`budgetplan.cost_models.saved` (what PyTorch's autograd saves, conditioned on which inputs
  require grad), each storage once;
* the backward FLOPs of every call (:mod:`budgetplan.cost_models.backward_flops`), split into FLOPs
  towards activations and towards parameters; for a channel subset of a weight only the selected rows
  are charged.

The result is target-independent; the cost models turn it into bytes and seconds on a device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from budgetplan.cost_models.backward_flops import backward_flops
from budgetplan.cost_models.saved import NO_GRAD_OPS, outputs_differentiable, probe_saved, saved_refs
from budgetplan.model.graph import AtenCall, LayerGraph
from budgetplan.model.update_set import UpdateSet


@dataclass(frozen=True)
class Storage:
    """A tensor storage that exists during the forward pass (activation, parameter, buffer or input)."""

    key: int
    kind: str  # "activation", "parameter", "buffer", "input"
    nbytes: int  # bytes in PyTorch's dtype
    numel: int
    floating: bool
    producer: int  # index of the ATen call that created it (-1: existed before the forward pass)
    layer: str  # layer that created it ('' when it existed before)
    name: str = ""  # parameter/buffer/input name


@dataclass(frozen=True)
class CallRecord:
    """One ATen call of the forward pass in execution order, with the layer it belongs to."""

    index: int
    layer: str
    call: AtenCall


@dataclass
class CallBackward:
    """Backward facts of one ATen call that autograd records."""

    index: int
    layer: str
    op: str
    needs_grad: tuple[bool, ...]  # per flat tensor input
    input_versions: tuple[int, ...]  # per flat input: index of the call that last wrote its storage
    saved: tuple[int, ...]  # storage keys kept for this call's backward
    flops_to_activations: int  # FLOPs computing gradients of activation inputs
    flops_to_parameters: int  # FLOPs computing gradients of parameters (selected rows only)
    probed: bool = False  # the saved set came from running the op, not from a rule


@dataclass
class BackwardAnalysis:
    """What one training step with ``update`` runs and keeps (target-independent)."""

    update: UpdateSet
    calls: list[CallRecord]  # every forward ATen call, in order
    storages: dict[int, Storage]
    requires_grad: dict[int, bool]  # storage key -> requires grad after the forward pass
    backward: list[CallBackward]  # calls that run backward, in forward order
    saved: dict[int, list[int]]  # activation storage key -> indices of the calls that save it
    trained_rows: dict[str, int]  # parameter -> rows along dim 0 trained
    trained_elements: dict[str, int]  # parameter -> elements trained
    probed_ops: list[str] = field(default_factory=list)
    # parameter -> bytes of the storage its .grad will hold, where that is not the parameter's own size
    grad_storage_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def backward_layers(self) -> list[str]:
        """Layers with at least one call that runs backward, in forward order."""
        seen: dict[str, None] = {}
        for cb in self.backward:
            seen.setdefault(cb.layer, None)
        return list(seen)

    @property
    def backward_flops(self) -> int:
        return sum(cb.flops_to_activations + cb.flops_to_parameters for cb in self.backward)

    def saved_activation_bytes(self) -> int:
        """Bytes (PyTorch dtypes) of distinct activation storages kept for backward."""
        return sum(self.storages[k].nbytes for k in self.saved)


def saved_copy_key(call_index: int, ref_index: int) -> int:
    """Storage key of a tensor autograd allocates for one call's backward (a clone before an in-place op,
    a buffer only the probe saw): the ``ref_index``-th saved reference of call ``call_index``. Negative,
    so it never collides with a recorded storage."""
    return -(call_index * 64 + ref_index + 1)


def forward_calls(graph: LayerGraph) -> list[CallRecord]:
    """Every ATen call of the forward pass in execution order."""
    records: list[CallRecord] = []
    for layer in graph.layers():
        for call in layer.aten:
            records.append(CallRecord(len(records), layer.name, call))
    return records


def _storages(graph: LayerGraph, calls: list[CallRecord]) -> dict[int, Storage]:
    storages: dict[int, Storage] = {}
    params = {name: meta for name, meta in graph.parameters.items()}
    for key, name in graph.parameter_storages.items():
        meta = params[name]
        storages[key] = Storage(key, "parameter", meta.nbytes, meta.numel, True, -1, "", name)
    for key, name in graph.buffer_storages.items():
        meta = graph.buffers[name]
        storages[key] = Storage(key, "buffer", meta.nbytes, meta.numel, meta.dtype.is_floating_point, -1, "",
                                name)
    for key, info in graph.storages.items():
        if info.is_input:
            storages[key] = Storage(key, "input", info.nbytes, info.numel, info.floating, -1, "",
                                    info.producer.removeprefix("input:"))
    for rec in calls:
        call = rec.call
        for j, key in enumerate(call.output_keys):
            if key in storages:
                continue
            meta = call.outputs[j]
            nbytes = call.output_storage_bytes[j] if call.output_storage_bytes else meta.nbytes
            itemsize = max(meta.itemsize, 1)
            storages[key] = Storage(key, "activation", nbytes, nbytes // itemsize,
                                    meta.dtype.is_floating_point, rec.index, rec.layer)
    return storages


def _trained_rows(graph: LayerGraph, update: UpdateSet) -> dict[str, int]:
    rows: dict[str, int] = {}
    for name in update.parameter_names():
        if name not in graph.parameters:
            continue
        channels = update.channels(name)
        shape = graph.parameters[name].shape
        rows[name] = (shape[0] if shape else 1) if channels is None else len(channels)
    return rows


def analyze_backward(graph: LayerGraph, update: UpdateSet) -> BackwardAnalysis:
    """Decide which calls run backward, what they save and what their backward costs."""
    calls = forward_calls(graph)
    storages = _storages(graph, calls)
    trained_rows = _trained_rows(graph, update)
    trained_elements = {
        name: rows * (graph.parameters[name].numel // max(graph.parameters[name].shape[0], 1)
                      if graph.parameters[name].shape else 1)
        for name, rows in trained_rows.items()
    }
    requires_grad: dict[int, bool] = {
        key: s.kind == "parameter" and trained_rows.get(s.name, 0) > 0 for key, s in storages.items()
    }
    backward: list[CallBackward] = []
    grad_storage_bytes: dict[str, int] = {}
    saved: dict[int, list[int]] = {}
    probed_ops: list[str] = []

    writer: dict[int, int] = {}  # storage key -> index of the call that created or last mutated it
    for rec in calls:
        call = rec.call
        versions = tuple(writer.get(key, -1) for key in call.input_keys)
        mutable = bool(getattr(getattr(call.overload, "_schema", None), "is_mutable", False))
        for key in call.output_keys:
            if mutable or key not in writer:
                writer[key] = rec.index
        needs = tuple(
            requires_grad.get(key, False) and meta.dtype.is_floating_point
            for key, meta in zip(call.input_keys, call.inputs)
        )
        packet = getattr(call.overload, "overloadpacket", call.overload)
        recorded = any(needs) and packet not in NO_GRAD_OPS
        differentiable = outputs_differentiable(call.overload, call.outputs)
        for j, key in enumerate(call.output_keys):
            flows = recorded and differentiable[j]
            requires_grad[key] = requires_grad.get(key, False) or flows
        if not recorded:
            continue

        refs = saved_refs(call.overload, call.args, call.inputs, call.outputs)
        probed = refs is None
        if refs is None:
            refs = probe_saved(call.overload, call.args, call.inputs, call.outputs)
            if call.op not in probed_ops:
                probed_ops.append(call.op)
        kept: list[int] = []
        for n, ref in enumerate(refs):
            if not ref.active(needs):
                continue
            if ref.copy or ref.kind == "extra":
                # autograd allocated a tensor of its own (a clone before an in-place op, or a buffer
                # only the probe saw): a new storage that lives until this call's backward.
                meta = ref.tensor_meta(call.inputs, call.outputs)
                key = saved_copy_key(rec.index, n)
                storages[key] = Storage(key, "activation", meta.nbytes, meta.numel,
                                        meta.dtype.is_floating_point, rec.index, rec.layer, "saved copy")
                kept.append(key)
                continue
            keys = call.input_keys if ref.kind == "input" else call.output_keys
            key = keys[ref.index]
            if storages.get(key) is not None and storages[key].kind == "activation" and key not in kept:
                kept.append(key)
        for key in kept:
            saved.setdefault(key, []).append(rec.index)

        if packet is torch.ops.aten.cat:
            _cat_gradient_views(call, needs, storages, trained_rows, graph, grad_storage_bytes)

        per_input = backward_flops(call.overload, call.args, call.inputs, call.outputs, needs)
        to_act = to_param = 0
        for i, flops in enumerate(per_input):
            if not flops:
                continue
            storage = storages.get(call.input_keys[i])
            if storage is not None and storage.kind == "parameter":
                shape = graph.parameters[storage.name].shape
                fraction = trained_rows.get(storage.name, 0) / shape[0] if shape else 1.0
                to_param += math.ceil(flops * fraction)
            else:
                to_act += flops
        backward.append(CallBackward(rec.index, rec.layer, call.op, needs, versions, tuple(kept), to_act,
                                     to_param, probed))

    return BackwardAnalysis(
        update=update, calls=calls, storages=storages, requires_grad=requires_grad, backward=backward,
        saved=saved, trained_rows=trained_rows, trained_elements=trained_elements, probed_ops=probed_ops,
        grad_storage_bytes=grad_storage_bytes,
    )


def full_backward(graph: LayerGraph) -> BackwardAnalysis:
    """:func:`analyze_backward` with every parameter trained: which calls may run backward and what each
    may keep, the base of every linear bound. Computed once per graph (``graph.cache``)."""
    cached = graph.cache.get("full_backward")
    if cached is None:
        everything = UpdateSet({n: None for n in graph.parameters})
        cached = graph.cache["full_backward"] = analyze_backward(graph, everything)
    return cached


def _cat_gradient_views(call: AtenCall, needs: tuple[bool, ...], storages: dict[int, Storage],
                        trained_rows: dict[str, int], graph: LayerGraph, out: dict[str, int]) -> None:
    """A parameter concatenated whole (through views only, e.g. a ViT class token) gets as gradient a
    slice of the concatenation's gradient, and autograd keeps that slice as ``.grad`` without copying:
    the whole buffer stays alive. Record the buffer's size once, on the first such parameter."""
    shared = False
    for i, key in enumerate(call.input_keys):
        s = storages.get(key)
        if not needs[i] or s is None or s.kind != "parameter" or s.name in out:
            continue
        meta = graph.parameters[s.name]
        if call.inputs[i].numel != meta.numel or trained_rows.get(s.name, 0) != (meta.shape[0] if meta.shape
                                                                                  else 1):
            continue
        out[s.name] = 0 if shared else call.outputs[0].numel * call.outputs[0].itemsize
        shared = True
