"""The ILP's linear upper bound of the microcontroller cost model (:mod:`budgetplan.pricing.mcu.exact`)
over update decisions; the decision variables and the bound's contract are in :mod:`budgetplan.pricing.linear`.

Units: bytes, FLOPs.
"""

from __future__ import annotations

import math
from collections import defaultdict

from budgetplan.errors import InputError
from budgetplan.model.graph import LayerGraph
from budgetplan.pricing.linear import (
    ExprBuilder,
    Group,
    Implication,
    LinearCostModel,
    LinearExpr,
    backward_flops_expr,
    decision_groups,
)
from budgetplan.targets import Target
from budgetplan.pricing.mcu.exact import OPTIMIZER_STATE_PER_ELEMENT, McuLayout, mcu_layout

__all__ = ["linear_cost_mcu"]


def linear_cost_mcu(
    graph: LayerGraph,
    target: Target,
    *,
    optimizer: str = "sgd",
    reorder: bool = True,
    layout: McuLayout | None = None,
) -> LinearCostModel:
    """Linear upper bound of :func:`budgetplan.pricing.mcu.exact.estimate_mcu` over update decisions."""
    if optimizer not in OPTIMIZER_STATE_PER_ELEMENT:
        raise InputError(f"unknown optimizer '{optimizer}'")
    lay = layout or mcu_layout(graph, target)
    layers = lay.layers
    storages = graph.storages
    groups, any_var, trained_var, implications = decision_groups(graph)
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

    def trained_bytes(param: str, bytes_per_element: float) -> ExprBuilder:
        e = ExprBuilder()
        for g in by_param.get(param, ()):
            e.add(g.var, g.elements * bytes_per_element)
        return e

    # Persistent SRAM: trained weights (their dtype) and optimizer state.
    persistent = ExprBuilder()
    opt_bytes = OPTIMIZER_STATE_PER_ELEMENT[optimizer] * target.dtype_bytes("optimizer")
    for name in trained_var:
        kind = "bias" if len(graph.parameters[name].shape) == 1 else "weight"
        persistent.add_expr(trained_bytes(name, target.dtype_bytes(kind) + opt_bytes))

    # What is kept: keyed (whole activation, lifetime extended) or separate buffers.
    kept_var: dict[int, str] = {}
    grad_vars: list[str] = []
    earliest_saver: dict[int, int] = {}
    separate: dict[int, ExprBuilder] = defaultdict(ExprBuilder)  # saver index -> bytes of its separate buffers
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
        e = ExprBuilder()
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
        e = ExprBuilder()
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
        e = ExprBuilder()
        for name in trained_var:
            e.add_expr(trained_bytes(name, grad_bytes))
        points.append(("step", e.freeze()))

    flops = backward_flops_expr(graph, [call for layer in layers for call in layer.aten], r, by_param)

    binaries = [g.var for g in groups] + sorted(set(any_var.values())) + sorted(r_names.values()) + \
        sorted(kept_var.values()) + grad_vars
    return LinearCostModel(
        groups=groups, any_var=any_var, trained_var=trained_var, binaries=binaries,
        implications=implications, persistent=persistent.freeze(), points=points,
        backward_flops=flops.freeze(), forward_flops=sum(layer.flops for layer in layers),
    )
