"""The ILP's linear upper bound of the PyTorch-eager cost model (:mod:`budgetplan.pricing.host.exact`)
over update decisions; the decision variables and the bound's contract are in :mod:`budgetplan.pricing.linear`.

Units: bytes, FLOPs.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from budgetplan.errors import InputError
from budgetplan.model.graph import LayerGraph
from budgetplan.pricing.linear import (
    ExprBuilder,
    Implication,
    LinearCostModel,
    PointRows,
    backward_flops_expr,
    binary_order,
    decision_groups,
    groups_by_parameter,
    trained_bytes,
)
from budgetplan.targets import Target

__all__ = ["linear_cost_host"]


def linear_cost_host(graph: LayerGraph, target: Target, *, optimizer: str = "sgd") -> LinearCostModel:
    """Linear upper bound of :func:`budgetplan.pricing.host.exact.estimate_host` (PyTorch eager) over update
    decisions, at ATen-call granularity: the same rules (:mod:`budgetplan.cost_models.saved`), each
    saved tensor kept until the backward of the earliest call that may keep it, each activation gradient
    alive from its writer's backward to its last consumer's, every backward's workspace charged while it
    may run, Adam's step temporaries charged as twice the largest parameter."""
    from budgetplan.cost_models.saved import NO_GRAD_OPS, outputs_differentiable, probe_saved, saved_refs
    from budgetplan.cost_models.workspace import backward_workspace
    from budgetplan.pricing.gradient_flow import full_backward, saved_copy_key
    from budgetplan.pricing.host.exact import (
        LOSS_BYTES,
        OPTIMIZERS,
        SEED_BYTES,
        forward_last_use,
        is_leaf_use,
        optimizer_state_rule,
        optimizer_step_workspace,
    )

    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer '{optimizer}'")
    full = full_backward(graph)
    storages, calls = full.storages, full.calls
    groups, any_var, trained_var, implications = decision_groups(graph)
    by_param = groups_by_parameter(groups)
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
                key = saved_copy_key(rec.index, n)
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
    persistent = ExprBuilder()
    persistent.add(None, constant)
    rows = PointRows()

    # Forward: one point after each layer's last call. A storage is a constant from the first point at or
    # after its producer to its last forward use; from then on it stays only when kept (its k variable).
    layer_end = {rec.layer: rec.index for rec in calls}
    ends = sorted(layer_end.values())
    label_of = {index: layer for layer, index in layer_end.items()}
    for i in ends:
        rows.add(f"forward:{label_of[i]}")
    n_forward = len(ends)
    for key, s in storages.items():
        if s.kind != "activation":
            continue
        first = bisect_left(ends, s.producer)
        if first >= n_forward:
            continue
        if key < 0:  # a saved copy: exists only when kept
            if key in kept_var:
                rows.at(first).add(kept_var[key], s.nbytes)
            continue
        gone = bisect_right(ends, last_use.get(key, s.producer))
        if gone > first:
            rows.at(first).add(None, s.nbytes)
            if gone < n_forward:
                rows.at(gone).add(None, -s.nbytes)
        if key in kept_var and max(gone, first) < n_forward:
            rows.at(max(gone, first)).add(kept_var[key], s.nbytes)

    # Activation gradients by (storage, version): from the writer's backward to the last consumer's.
    grad_span: dict[tuple[int, int], list[int]] = {}
    grad_size: dict[tuple[int, int], int] = {}
    param_last_use: dict[str, int] = {}
    leaf_uses: dict[str, list[int]] = {}  # calls that use the parameter itself (each sends one gradient)
    for cb in full.backward:
        call = calls[cb.index].call
        for i, key in enumerate(call.input_keys):
            s = storages.get(key)
            if s is None or not cb.needs_grad[i]:
                continue
            if s.kind == "parameter":
                param_last_use[s.name] = max(param_last_use.get(s.name, -1), cb.index)
                if is_leaf_use(call, i):
                    leaf_uses.setdefault(s.name, []).append(cb.index)
                continue
            version = (key, cb.input_versions[i])
            span = grad_span.setdefault(version, [cb.input_versions[i], cb.index])
            span[1] = max(span[1], cb.index)
            grad_size[version] = max(grad_size.get(version, 0), call.inputs[i].nbytes)

    # Backward: one point per call that runs backward, in reverse order. Call indices decrease along
    # the rows; ``upto(t)`` is the first row whose call index is <= t, ``below(t)`` the first < t.
    backward = list(reversed(full.backward))
    negated = [-cb.index for cb in backward]
    n_backward = len(backward)

    def upto(t: int) -> int:
        return bisect_left(negated, -t)

    def below(t: int) -> int:
        return bisect_right(negated, -t)

    def span(var: str | None, nbytes: float, first: int, stop: int) -> None:
        """``nbytes`` (when ``var``) live from backward row ``first`` to the row before ``stop``."""
        if first >= min(stop, n_backward):
            return
        rows.at(base + first).add(var, nbytes)
        if stop < n_backward:
            rows.at(base + stop).add(var, -nbytes)

    base = len(rows)
    for row, cb in enumerate(backward):
        rows.add(f"backward:{cb.layer}", restart=row == 0)
    if n_backward:
        rows.at(base).add(None, LOSS_BYTES + SEED_BYTES)
    for key, var in kept_var.items():  # kept until the backward of the earliest call that may keep it
        span(var, storages[key].nbytes, 0, below(earliest_saver[key]))
    for (key, version), (start, stop) in grad_span.items():
        var = atom(key)
        if var is not None:
            span(var, grad_size[(key, version)], upto(stop), below(start))
    for name, last in param_last_use.items():  # a parameter's gradient: from its backward to the end
        first = upto(last)
        if first >= n_backward:
            continue
        itemsize = graph.parameters[name].itemsize
        rows.at(base + first).add_expr(trained_bytes(by_param.get(name, ()), itemsize))
        extra = full.grad_storage_bytes.get(name, 0) - graph.parameters[name].numel * itemsize
        if extra > 0 and name in trained_var:
            rows.at(base + first).add(trained_var[name], extra)
    for name, uses in leaf_uses.items():
        # a further gradient is added out of place: the new one and the sum, while that backward runs
        # (the exact model's "gradient sum" point comes after it, with less alive: this over-covers it)
        if len(uses) < 2 or name not in trained_var:
            continue
        itemsize = graph.parameters[name].itemsize
        twice = trained_bytes(by_param.get(name, ()), 2 * itemsize)  # the new gradient and the sum
        extra = full.grad_storage_bytes.get(name, 0) - graph.parameters[name].numel * itemsize
        if extra > 0:
            twice.add(trained_var[name], 2 * extra)
        for index in sorted(uses, reverse=True)[1:]:
            row = upto(index)
            if row >= n_backward:
                continue
            rows.at(base + row).add_expr(twice)
            if row + 1 < n_backward:
                rows.at(base + row + 1).add_expr(twice, -1.0)
    for row, cb in enumerate(backward):  # a backward's workspace, while it runs
        if cb.index in storages_ws:
            span(runs_var[cb.index], storages_ws[cb.index], row, row + 1)

    # The step: gradients, optimizer state and Adam's temporaries.
    step = ExprBuilder()
    step.add(None, LOSS_BYTES)
    copies, per_tensor = optimizer_state_rule(optimizer)
    for name in param_last_use:
        itemsize = graph.parameters[name].itemsize
        step.add_expr(trained_bytes(by_param.get(name, ()), (1 + copies) * itemsize))  # gradient + state
        extra = full.grad_storage_bytes.get(name, 0) - graph.parameters[name].numel * itemsize
        if extra > 0 and name in trained_var:
            step.add(trained_var[name], extra)
        if per_tensor and name in trained_var:
            step.add(trained_var[name], per_tensor)
    # the step's temporaries, charged as if every parameter that may be trained were
    step.add(None, optimizer_step_workspace(optimizer, {n: graph.parameters[n].nbytes for n in param_last_use}))
    rows.add_full("step:optimizer step", step)

    flops = backward_flops_expr(graph, [rec.call for rec in calls], atom, by_param)
    binaries = binary_order(groups, any_var.values(), r_names.values(), kept_var.values(), runs_var.values())
    return LinearCostModel(
        groups=groups, any_var=any_var, trained_var=trained_var, binaries=binaries,
        implications=implications, persistent=persistent.freeze(), rows=rows,
        backward_flops=flops.freeze(), forward_flops=sum(rec.call.flops for rec in calls),
    )
