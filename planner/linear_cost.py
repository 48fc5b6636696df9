"""The training cost as linear expressions over 0/1 update decisions, for the ILP planner.

Decision variables (all binary):

* ``x[p, k]`` — neuron group ``k`` (rows ``k·G … k·G+G-1`` along dim 0) of a parameter that is split into
  groups: the weight of a conv/linear layer and its 1-D parameters of the same length (bias);
* ``a[p]`` — "some group of ``p`` is trained" (``x[p, k] ≤ a[p]``);
* ``x[p]`` — a parameter trained whole (BatchNorm/LayerNorm affine, embeddings, class tokens, …);
* ``r[s]`` — activation storage ``s`` receives a gradient. ``r`` of a layer's outputs is at least every
  ``r`` of its activation inputs and every "trained" variable of its parameters, so gradients flow from
  every trained parameter to the loss;
* ``k[s]`` — activation storage ``s`` is kept for backward (at least each condition under which a
  layer keeps it).

Every point of the training schedule (after each layer's forward, at each layer's backward, at the end)
gets a :class:`~budgetplan.ilp.LinearExpr` of its live bytes. The expressions are a **proven upper bound**
of the exact cost model (:mod:`budgetplan.estimate_mcu`) for every update set: lifetimes that depend on
decisions are taken at their longest (a kept activation is held until the backward of the *earliest layer
that may keep it*; an activation gradient lives from its producer's backward to its last consumer's; a
partially-kept depthwise input is a separate buffer). So ``expr ≤ budget`` at every point guarantees the
re-priced plan fits; the planner re-prices every plan with the exact model anyway.

Units: bytes (memory), FLOPs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from budgetplan.cost_models.backward_flops import backward_flops
from budgetplan.errors import InputError
from budgetplan.estimate_mcu import OPTIMIZER_STATE_PER_ELEMENT, McuLayout, mcu_layout
from budgetplan.graph import AtenCall, LayerGraph
from budgetplan.ilp import Implication, LinearExpr
from budgetplan.targets import Target
from budgetplan.update_set import UpdateSet


@dataclass(frozen=True)
class Group:
    """One decision over a parameter: rows ``start:stop`` along dim 0 (``whole`` = the full tensor)."""

    var: str
    parameter: str
    start: int
    stop: int
    elements: int  # parameter elements in these rows
    whole: bool


@dataclass
class LinearCostModel:
    """Linear (upper-bound) cost of a training step over binary update decisions."""

    groups: list[Group]
    any_var: dict[str, str]  # grouped parameter -> its "some group trained" variable
    trained_var: dict[str, str]  # parameter -> variable meaning "(some of) it is trained"
    binaries: list[str]
    implications: list[Implication]
    persistent: LinearExpr  # bytes held for the whole step: trained weights in SRAM, optimizer state
    points: list[tuple[str, LinearExpr]]  # (label, live bytes besides the persistent ones)
    backward_flops: LinearExpr
    forward_flops: int
    notes: list[str] = field(default_factory=list)

    def assignment(self, update: UpdateSet, graph: LayerGraph) -> dict[str, int]:
        """Group variables for a concrete update set (a group is on when any of its rows is trained);
        derived variables (a, r, k) are set to the smallest values the implications allow."""
        values = {v: 0 for v in self.binaries}
        for g in self.groups:
            chans = update.channels(g.parameter)
            if chans == ():
                continue
            on = chans is None or any(g.start <= c < g.stop for c in chans)
            values[g.var] = int(on)
        # propagate lhs <= rhs to a fixed point (implications are acyclic chains in graph order)
        changed = True
        while changed:
            changed = False
            for imp in self.implications:
                if values.get(imp.lhs, 0) > values.get(imp.rhs, 0):
                    values[imp.rhs] = 1
                    changed = True
        return values

    def evaluate(self, values: dict[str, int]) -> list[tuple[str, float]]:
        """Live bytes of every point (persistent bytes included) under an assignment."""
        nonzero = {v: x for v, x in values.items() if x}
        held = _value(self.persistent, nonzero)
        return [(label, held + _value(expr, nonzero)) for label, expr in self.points]


def _value(expr: LinearExpr, values: dict[str, int]) -> float:
    """``expr`` at ``values`` (missing variables are 0); walks the shorter of the two mappings."""
    terms = expr.terms
    if len(values) < len(terms):
        return expr.constant + sum(terms.get(v, 0.0) * x for v, x in values.items())
    return expr.constant + sum(c * values.get(v, 0) for v, c in terms.items())


class _Expr:
    """Mutable builder of a LinearExpr."""

    def __init__(self) -> None:
        self.terms: dict[str, float] = defaultdict(float)
        self.constant = 0.0

    def add(self, var: str | None, coef: float) -> None:
        if not coef:
            return
        if var is None:
            self.constant += coef
        else:
            self.terms[var] += coef

    def add_expr(self, other: _Expr, scale: float = 1.0) -> None:
        self.constant += other.constant * scale
        for v, c in other.terms.items():
            self.terms[v] += c * scale

    def freeze(self) -> LinearExpr:
        # insertion (graph) order: deterministic, and sorting thousands of terms per point cost 0.3 s
        return LinearExpr({v: c for v, c in self.terms.items() if c}, self.constant)


def parameter_groups(graph: LayerGraph) -> dict[str, list[tuple[int, int, bool]]]:
    """How each trainable parameter is decided: a list of ``(start, stop, whole)`` row ranges along dim 0.

    The weight of a conv/linear layer and its 1-D parameters of the same length (bias) are split into
    groups of ``graph.group_size`` output channels; every other parameter is one whole decision."""
    size = graph.group_size
    grouped_rows: dict[str, int] = {}
    for layer in graph.group_owners():
        rows = layer.out_channels
        for p in layer.parameters:
            shape = graph.parameters[p].shape
            if p == layer.weight or (len(shape) == 1 and shape[0] == rows):
                grouped_rows.setdefault(p, rows)
    out: dict[str, list[tuple[int, int, bool]]] = {}
    for name, meta in graph.parameters.items():
        if not meta.dtype.is_floating_point:
            continue
        if name in grouped_rows:
            rows = grouped_rows[name]
            out[name] = [(k * size, min(rows, (k + 1) * size), False) for k in range(math.ceil(rows / size))]
        else:
            out[name] = [(0, meta.shape[0] if meta.shape else 1, True)]
    return out


def _groups(graph: LayerGraph) -> tuple[list[Group], dict[str, str], dict[str, str], list[Implication]]:
    """Decision variables over the model's parameters (names are short and solver-safe)."""
    groups: list[Group] = []
    any_var: dict[str, str] = {}
    trained_var: dict[str, str] = {}
    implications: list[Implication] = []
    index_of = {name: i for i, name in enumerate(graph.parameters)}
    for name, ranges in parameter_groups(graph).items():
        index, meta = index_of[name], graph.parameters[name]
        per_row = meta.numel // meta.shape[0] if meta.shape else 1
        if ranges[0][2]:
            var = f"x{index}"
            groups.append(Group(var, name, ranges[0][0], ranges[0][1], meta.numel, True))
            trained_var[name] = var
            continue
        any_name = f"a{index}"
        any_var[name] = trained_var[name] = any_name
        for k, (start, stop, _) in enumerate(ranges):
            var = f"x{index}_{k}"
            groups.append(Group(var, name, start, stop, (stop - start) * per_row, False))
            implications.append(Implication(f"group_needs_any_{var}", var, any_name))
    return groups, any_var, trained_var, implications


def _backward_flops_expr(graph: LayerGraph, calls: list[AtenCall], atom: Callable[[int], str | None],
                         by_param: Mapping[str, list[Group]]) -> _Expr:
    """Backward FLOPs: each input's gradient FLOPs when that input receives a gradient (parameters:
    only the trained rows' share)."""
    flops = _Expr()
    for call in calls:
        per_input = backward_flops(call.overload, call.args, call.inputs, call.outputs,
                                   tuple(m.dtype.is_floating_point for m in call.inputs))
        for i, f in enumerate(per_input):
            if not f:
                continue
            key = call.input_keys[i]
            param = graph.parameter_storages.get(key)
            if param is not None:
                rows = graph.parameters[param].shape[0] if graph.parameters[param].shape else 1
                for g in by_param.get(param, ()):
                    flops.add(g.var, math.ceil(f * (g.stop - g.start) / rows))
            else:
                var = atom(key)
                if var is not None:
                    flops.add(var, f)
    return flops


def linear_cost_mcu(
    graph: LayerGraph,
    target: Target,
    *,
    optimizer: str = "sgd",
    reorder: bool = True,
    layout: McuLayout | None = None,
) -> LinearCostModel:
    """Linear upper bound of :func:`budgetplan.estimate_mcu.estimate_mcu` over update decisions."""
    if optimizer not in OPTIMIZER_STATE_PER_ELEMENT:
        raise InputError(f"unknown optimizer '{optimizer}'")
    lay = layout or mcu_layout(graph, target)
    layers = lay.layers
    storages = graph.storages
    groups, any_var, trained_var, implications = _groups(graph)
    by_param: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_param[g.parameter].append(g)

    r_names: dict[int, str] = {}

    def r(key: int) -> str | None:
        """The "receives a gradient" variable of an activation storage (None: never does)."""
        s = storages.get(key)
        if s is None or s.is_input or not s.floating:
            return None
        if key not in r_names:
            r_names[key] = f"r{len(r_names)}"
        return r_names[key]

    # Gradient flow: outputs of a layer receive a gradient when any input does or a parameter is trained.
    for layer in layers:
        atoms = [v for v in (r(k) for k in lay.inputs[layer.name]) if v is not None]
        atoms += [trained_var[p] for p in layer.parameters if p in trained_var]
        outs = [v for v in (r(k) for k in layer.output_storages) if v is not None]
        for out in dict.fromkeys(outs):
            for atom in dict.fromkeys(atoms):
                if atom != out:
                    implications.append(Implication(f"flow_{layer.fx_name}_{atom}_{out}", atom, out))

    def trained_bytes(param: str, bytes_per_element: float) -> _Expr:
        e = _Expr()
        for g in by_param.get(param, ()):
            e.add(g.var, g.elements * bytes_per_element)
        return e

    # Persistent SRAM: trained weights (their dtype) and optimizer state.
    persistent = _Expr()
    opt_bytes = OPTIMIZER_STATE_PER_ELEMENT[optimizer] * target.dtype_bytes("optimizer")
    for name in trained_var:
        kind = "bias" if len(graph.parameters[name].shape) == 1 else "weight"
        persistent.add_expr(trained_bytes(name, target.dtype_bytes(kind) + opt_bytes))

    # What is kept: keyed (whole activation, lifetime extended) or separate buffers.
    kept_var: dict[int, str] = {}
    grad_vars: list[str] = []
    earliest_saver: dict[int, int] = {}
    separate: dict[int, _Expr] = defaultdict(_Expr)  # saver index -> bytes of its separate buffers
    for i, layer in enumerate(layers):
        weight_rows = graph.parameters[layer.weight].shape[0] if layer.weight else 0
        for n, item in enumerate(lay.saved[layer.name]):
            if item.when == "grad":
                cond = r(item.on) if item.on is not None else None
                if cond is None:
                    continue
            elif item.when == "weight":
                if layer.weight not in trained_var:
                    continue
                cond = trained_var[layer.weight]
            else:  # weight-fraction: a separate buffer of the trained rows' share
                for g in by_param.get(layer.weight or "", ()):
                    separate[i].add(g.var, math.ceil(item.nbytes * (g.stop - g.start) / weight_rows))
                continue
            root = None if item.key is None else lay.fused_into.get(item.key, item.key)
            if root is not None and item.nbytes >= lay.storage_bytes.get(root, 0):
                kvar = kept_var.setdefault(root, f"k{len(kept_var)}")  # a fused output keeps its conv's buffer
                implications.append(Implication(f"keep_{layer.fx_name}_{n}", cond, kvar))
                earliest_saver[root] = min(earliest_saver.get(root, i), i)
            else:
                separate[i].add(cond, item.nbytes)

    # Activation-gradient buffers: one per storage, shared by a conv's output and the BatchNorm/ReLU fused
    # into it; it exists when any of them receives a gradient.
    members: dict[int, list[int]] = defaultdict(list)
    for key in storages:
        if r(key) is not None:
            members[lay.fused_into.get(key, key)].append(key)
    grad_buffers: dict[int, tuple[str, int]] = {}
    for root, keys in members.items():
        last = max(lay.dataflow_last_use.get(k, -1) for k in keys)
        if keys == [root]:
            grad_buffers[root] = (r(root), last)  # type: ignore[assignment]
            continue
        gvar = f"g{len(grad_buffers)}"
        for k in keys:
            implications.append(Implication(f"grad_buffer_{gvar}_{r(k)}", r(k), gvar))  # type: ignore[arg-type]
        grad_buffers[root] = (gvar, last)
        grad_vars.append(gvar)

    points: list[tuple[str, LinearExpr]] = []
    end = len(layers) - 1
    # Forward.
    for i, layer in enumerate(layers):
        e = _Expr()
        for key, size in lay.storage_bytes.items():
            start = lay.producer_index[key]
            stop = lay.last_use.get(key, start)
            if start <= i <= stop:
                e.add(None, size)
            elif stop < i and start <= i and key in kept_var:
                e.add(kept_var[key], size)
        for j in range(i + 1):
            if j in separate:
                e.add_expr(separate[j])
        points.append((f"forward:{layer.name}", e.freeze()))

    # Backward (reverse order).
    grad_bytes = lay.gradient_bytes
    for i in range(end, -1, -1):
        layer = layers[i]
        e = _Expr()
        for key, var in kept_var.items():
            if earliest_saver[key] <= i:
                e.add(var, lay.storage_bytes[key])
        for j, expr in separate.items():
            if j <= i:
                e.add_expr(expr)
        for key, (var, last) in grad_buffers.items():
            if lay.producer_index[key] <= i <= last:
                e.add(var, storages[key].numel * grad_bytes)
        for name in trained_var:
            owner = lay.index_of.get(lay.param_owner.get(name, ""), -1)
            if (owner == i) if reorder else (owner >= i):
                e.add_expr(trained_bytes(name, grad_bytes))
        points.append((f"backward:{layer.name}", e.freeze()))
    if not reorder:
        e = _Expr()
        for name in trained_var:
            e.add_expr(trained_bytes(name, grad_bytes))
        points.append(("step", e.freeze()))

    flops = _backward_flops_expr(graph, [call for layer in layers for call in layer.aten], r, by_param)

    binaries = [g.var for g in groups] + sorted(set(any_var.values())) + sorted(r_names.values()) + \
        sorted(kept_var.values()) + grad_vars
    return LinearCostModel(
        groups=groups, any_var=any_var, trained_var=trained_var, binaries=binaries,
        implications=implications, persistent=persistent.freeze(), points=points,
        backward_flops=flops.freeze(), forward_flops=sum(layer.flops for layer in layers),
    )


def linear_cost_host(graph: LayerGraph, target: Target, *, optimizer: str = "sgd") -> LinearCostModel:
    """Linear upper bound of :func:`budgetplan.estimate.estimate_host` (PyTorch eager) over update
    decisions, at ATen-call granularity: the same rules (:mod:`budgetplan.cost_models.saved`), each
    saved tensor kept until the backward of the earliest call that may keep it, each activation gradient
    alive from its writer's backward to its last consumer's, every backward's workspace charged while it
    may run, Adam's step temporaries charged as twice the largest parameter."""
    from budgetplan.backward import analyze_backward
    from budgetplan.cost_models.saved import NO_GRAD_OPS, outputs_differentiable, probe_saved, saved_refs
    from budgetplan.cost_models.workspace import backward_workspace
    from budgetplan.estimate import ADAM_STEP_BYTES, LOSS_BYTES, OPTIMIZERS, SEED_BYTES, forward_last_use
    from budgetplan.update_set import UpdateSet

    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer '{optimizer}'")
    full = analyze_backward(graph, UpdateSet({n: None for n in graph.parameters}))
    storages, calls = full.storages, full.calls
    groups, any_var, trained_var, implications = _groups(graph)
    by_param: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_param[g.parameter].append(g)
    r_names: dict[int, str] = {}

    def atom(key: int) -> str | None:
        """The variable meaning "this storage requires grad" (parameters: trained)."""
        s = storages.get(key)
        if s is None:
            return None
        if s.kind == "parameter":
            return trained_var.get(s.name)
        if s.kind != "activation" or not s.floating:
            return None
        if key not in r_names:
            r_names[key] = f"r{len(r_names)}"
        return r_names[key]

    def trained_bytes(param: str, bytes_per_element: float) -> _Expr:
        e = _Expr()
        for g in by_param.get(param, ()):
            e.add(g.var, g.elements * bytes_per_element)
        return e

    # Gradient flow and what each call may keep.
    recorded = {cb.index: cb for cb in full.backward}
    kept_var: dict[int, str] = {}
    earliest_saver: dict[int, int] = {}
    runs_var: dict[int, str] = {}
    storages_ws: dict[int, int] = {}  # call index -> bytes of its backward workspace
    for rec in calls:
        call = rec.call
        packet = getattr(call.overload, "overloadpacket", call.overload)
        if rec.index not in recorded or packet in NO_GRAD_OPS:
            continue
        atoms = [atom(k) if m.dtype.is_floating_point else None for k, m in zip(call.input_keys, call.inputs)]
        differentiable = outputs_differentiable(call.overload, call.outputs)
        for j, key in enumerate(call.output_keys):
            out = atom(key) if differentiable[j] else None
            if out is None:
                continue
            for a in dict.fromkeys(a for a in atoms if a is not None and a != out):
                implications.append(Implication(f"flow_{rec.index}_{a}_{out}", a, out))
        refs = saved_refs(call.overload, call.args, call.inputs, call.outputs)
        if refs is None:
            refs = probe_saved(call.overload, call.args, call.inputs, call.outputs)
        for n, ref in enumerate(refs):
            conds = [atoms[i] for i in ref.when if i < len(atoms) and atoms[i] is not None]
            if not conds:
                continue
            if ref.copy or ref.kind == "extra":
                key = -(rec.index * 64 + n + 1)
            else:
                key = (call.input_keys if ref.kind == "input" else call.output_keys)[ref.index]
            if storages.get(key) is None or storages[key].kind != "activation":
                continue
            kvar = kept_var.setdefault(key, f"k{len(kept_var)}")
            for c in dict.fromkeys(conds):
                implications.append(Implication(f"keep_{rec.index}_{n}_{c}", c, kvar))
            earliest_saver[key] = min(earliest_saver.get(key, rec.index), rec.index)
        work = max(backward_workspace(call.overload, call.args, call.inputs, call.outputs, recorded[rec.index].needs_grad,
                                      flop_counter=False), 0)
        if work:
            bvar = runs_var.setdefault(rec.index, f"b{len(runs_var)}")
            for a in dict.fromkeys(a for a in atoms if a is not None):
                implications.append(Implication(f"runs_{rec.index}_{a}", a, bvar))
            storages_ws[rec.index] = work

    last_use = forward_last_use(graph, full)  # forward lifetimes, as in estimate_host

    constant = sum(s.nbytes for s in storages.values() if s.kind in ("parameter", "buffer", "input"))
    persistent = _Expr()
    persistent.add(None, constant)
    points: list[tuple[str, LinearExpr]] = []
    layer_end = {rec.layer: rec.index for rec in calls}
    ends = {index: layer for layer, index in layer_end.items()}
    for rec in calls:
        if rec.index not in ends:
            continue
        i = rec.index
        e = _Expr()
        for key, s in storages.items():
            if s.kind != "activation":
                continue
            if key < 0:  # a saved copy: exists only when kept
                if s.producer <= i and key in kept_var:
                    e.add(kept_var[key], s.nbytes)
                continue
            start, stop = s.producer, last_use.get(key, s.producer)
            if start <= i <= stop:
                e.add(None, s.nbytes)
            elif start <= i and key in kept_var:
                e.add(kept_var[key], s.nbytes)
        points.append((f"forward:{ends[i]}", e.freeze()))

    # Activation gradients by (storage, version): from the writer's backward to the last consumer's.
    grad_span: dict[tuple[int, int], list[int]] = {}
    grad_size: dict[tuple[int, int], int] = {}
    param_last_use: dict[str, int] = {}
    for cb in full.backward:
        call = calls[cb.index].call
        for i, key in enumerate(call.input_keys):
            s = storages.get(key)
            if s is None or not cb.needs_grad[i]:
                continue
            if s.kind == "parameter":
                param_last_use[s.name] = max(param_last_use.get(s.name, -1), cb.index)
                continue
            version = (key, cb.input_versions[i])
            span = grad_span.setdefault(version, [cb.input_versions[i], cb.index])
            span[1] = max(span[1], cb.index)
            grad_size[version] = max(grad_size.get(version, 0), call.inputs[i].nbytes)
    for cb in reversed(full.backward):
        i = cb.index
        e = _Expr()
        for key, var in kept_var.items():
            if earliest_saver[key] <= i:
                e.add(var, storages[key].nbytes)
        for (key, version), (start, stop) in grad_span.items():
            var = atom(key)
            if var is not None and start <= i <= stop:
                e.add(var, grad_size[(key, version)])
        for name, last in param_last_use.items():
            if i <= last:
                itemsize = graph.parameters[name].itemsize
                own = trained_bytes(name, itemsize)
                extra = full.grad_storage_bytes.get(name, 0) - graph.parameters[name].numel * itemsize
                e.add_expr(own)
                if extra > 0 and name in trained_var:
                    e.add(trained_var[name], extra)
        if i in storages_ws:
            e.add(runs_var[i], storages_ws[i])
        e.add(None, LOSS_BYTES + SEED_BYTES)
        points.append((f"backward:{cb.layer}", e.freeze()))

    # The step: gradients, optimizer state and Adam's temporaries.
    step = _Expr()
    step.add(None, LOSS_BYTES)
    for name in param_last_use:
        itemsize = graph.parameters[name].itemsize
        step.add_expr(trained_bytes(name, itemsize))
        extra = full.grad_storage_bytes.get(name, 0) - graph.parameters[name].numel * itemsize
        if extra > 0 and name in trained_var:
            step.add(trained_var[name], extra)
        if optimizer == "sgd-momentum":
            step.add_expr(trained_bytes(name, itemsize))
        elif optimizer == "adam":
            step.add_expr(trained_bytes(name, 2 * itemsize))
            if name in trained_var:
                step.add(trained_var[name], ADAM_STEP_BYTES)
    if optimizer == "adam" and param_last_use:
        step.add(None, 2 * max(graph.parameters[n].nbytes for n in param_last_use))
    points.append(("step:optimizer step", step.freeze()))

    flops = _backward_flops_expr(graph, [rec.call for rec in calls], atom, by_param)
    binaries = [g.var for g in groups] + sorted(set(any_var.values())) + sorted(r_names.values()) + \
        sorted(kept_var.values()) + sorted(set(runs_var.values()))
    return LinearCostModel(
        groups=groups, any_var=any_var, trained_var=trained_var, binaries=binaries,
        implications=implications, persistent=persistent.freeze(), points=points,
        backward_flops=flops.freeze(), forward_flops=sum(rec.call.flops for rec in calls),
    )
