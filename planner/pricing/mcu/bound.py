"""The ILP's linear upper bound of the microcontroller cost model (:mod:`budgetplan.pricing.mcu.exact`)
over update decisions; the decision variables and the bound's contract are in :mod:`budgetplan.pricing.linear`.

The bound prices the same device tensors as the exact model, over the same fixed schedule (a point per
forward layer, per backward layer, per update of a layer with a weight, and the end), with every
lifetime that depends on the decisions taken at its longest:

* an activation is held from its producer to its last forward reader (constant), and — when kept for
  backward (variable ``k``, at least each condition under which a layer keeps it) — on to the release
  step of the *earliest* layer that may keep it;
* an in-place depthwise conv (``inplace``) writes its output into its input's block unless that input is
  kept: the output costs ``k(input) · bytes`` at the conv's step and the block's size after it;
* a mask lives from its ReLU's forward to its backward when the gradient passes the ReLU;
* an activation gradient lives from the backward of its first writer (the step after, when that writer
  hands its own output gradient on: an addition or a view; or when a stride-1 depthwise conv writes it
  in place, which costs ``w(conv) · bytes`` at the conv's step, ``w`` = its weight is trained) to the
  last possible reader; a second writer that computes (not a passthrough) costs a temporary at its step;
* trained weights, biases and optimizer state are held for the whole step (+3 bytes per tensor for the
  4-byte rounding); weight gradients (without fused update) at their update step, or to the end without
  reordering;
* the kernel scratch is a constant: the largest im2col and kernel buffer, whether or not the depthwise
  convs run in place.

Every exact quantity is at most its bound term at every point, so ``expr ≤ budget`` at every point
guarantees that the re-priced plan fits. Units: bytes, FLOPs.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from budgetplan.errors import InputError
from budgetplan.model.graph import LayerGraph
from budgetplan.pricing.linear import (
    ExprBuilder,
    Group,
    Implication,
    LinearCostModel,
    PointRows,
    backward_flops_expr,
    decision_groups,
)
from budgetplan.pricing.mcu.exact import (
    ALIGNMENT,
    OPTIMIZER_STATE_PER_ELEMENT,
    McuLayout,
    block_size_after,
    kernel_buffers,
    mcu_layout,
)
from budgetplan.targets import Target

__all__ = ["linear_cost_mcu"]


def linear_cost_mcu(
    graph: LayerGraph,
    target: Target,
    *,
    optimizer: str = "sgd",
    reorder: bool = True,
    inplace: bool = True,
    fuse_update: bool = True,
    layout: McuLayout | None = None,
) -> LinearCostModel:
    """Linear upper bound of :func:`budgetplan.pricing.mcu.exact.estimate_mcu` over update decisions."""
    if optimizer not in OPTIMIZER_STATE_PER_ELEMENT:
        raise InputError(f"unknown optimizer '{optimizer}'")
    lay = layout or mcu_layout(graph, target)
    layers, n = lay.layers, lay.n_layers
    storages = graph.storages
    fuse = fuse_update and reorder
    end = lay.end_step
    groups, any_var, trained_var, implications = decision_groups(graph)
    by_param: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_param[g.parameter].append(g)
    binaries_extra: list[str] = []

    r_names: dict[int, str] = {}

    def r(key: int) -> str | None:
        """The "receives a gradient" variable of an activation storage (None: never does)."""
        s = storages.get(key)
        if s is None or s.is_input or not s.floating:
            return None
        if key not in r_names:
            r_names[key] = f"r{len(r_names)}"
        return r_names[key]

    def at_least(name: str, atoms: list[str]) -> str | None:
        """A variable that is 1 when any of ``atoms`` is (the atom itself when there is one)."""
        atoms = list(dict.fromkeys(atoms))
        if not atoms:
            return None
        if len(atoms) == 1:
            return atoms[0]
        binaries_extra.append(name)
        for atom in atoms:
            implications.append(Implication(f"{name}_ge_{atom}", atom, name))
        return name

    # Gradient flow: outputs of a layer receive a gradient when any input does or a parameter is trained.
    for layer in layers:
        atoms = [v for v in (r(k) for k in lay.inputs[layer.name]) if v is not None]
        atoms += [trained_var[p] for p in layer.parameters if p in trained_var]
        outs = [v for v in (r(k) for k in layer.output_storages) if v is not None]
        for out in dict.fromkeys(outs):
            for atom in dict.fromkeys(atoms):
                if atom != out:
                    implications.append(Implication(f"flow_{layer.fx_name}_{atom}_{out}", atom, out))

    # w(i): some parameter of layer i with two or more dimensions (its weight) is trained.
    weight_var: dict[int, str | None] = {}
    owned: dict[int, list[str]] = defaultdict(list)
    for p, owner in lay.param_owner.items():
        if p in trained_var and len(graph.parameters[p].shape) >= 2:
            owned[lay.index_of[owner]].append(trained_var[p])
    for i in range(n):
        weight_var[i] = at_least(f"w{i}", owned.get(i, []))

    def trained_bytes(param: str, bytes_per_element: float) -> ExprBuilder:
        e = ExprBuilder()
        for g in by_param.get(param, ()):
            e.add(g.var, g.elements * bytes_per_element)
        return e

    # Persistent SRAM: trained weights (their dtype), optimizer state, 4-byte rounding of each.
    persistent = ExprBuilder()
    state = OPTIMIZER_STATE_PER_ELEMENT[optimizer]
    opt_bytes = state * target.dtype_bytes("optimizer")
    for name in trained_var:
        if name not in lay.param_owner:
            continue
        kind = "bias" if len(graph.parameters[name].shape) == 1 else "weight"
        persistent.add_expr(trained_bytes(name, target.dtype_bytes(kind) + opt_bytes))
        persistent.add(trained_var[name], (ALIGNMENT - 1) * (2 if state else 1))

    spans: list[tuple[int, int, str | None, float]] = []  # (first step, last step, variable, bytes)

    def span(first: int, last: int, var: str | None, nbytes: float) -> None:
        if nbytes and first <= last:
            spans.append((first, last, var, nbytes))

    # What backward may keep: activation roots (variable k) until the latest release, masks separately.
    keep_conds: dict[int, list[str]] = defaultdict(list)
    release: dict[int, int] = {}
    for i, layer in enumerate(layers):
        for item in lay.saved[layer.name]:
            if item.when == "grad":
                cond = r(item.on) if item.on is not None else None
            else:
                cond = trained_var.get(layer.weight or "")
            if cond is None:
                continue
            step = lay.u_step(i) if item.when == "weight" else lay.b_step(i)
            if item.key is None:
                span(i, lay.b_step(i), cond, -(-item.nbytes // ALIGNMENT) * ALIGNMENT)
            else:
                root = lay.root_of[item.key]
                keep_conds[root].append(cond)
                release[root] = max(release.get(root, -1), step)
    kept_var = {root: at_least(f"k{j}", conds) for j, (root, conds) in enumerate(keep_conds.items())}

    # Forward activations and in-place depthwise convs.
    block = dict(lay.size)
    in_place = dict(lay.inplace_forward) if inplace else {}
    taken = {ip.output: ip for ip in in_place.values()}
    for d in sorted(in_place):
        ip = in_place[d]
        block[ip.output] = block_size_after(lay, ip, block[ip.source])
    for root in lay.size:
        first = max(lay.producer[root], 0)
        last = lay.last_use.get(root, first)
        if root in taken:
            ip = taken[root]
            if kept_var.get(ip.source) is not None:  # its own block when the input is kept
                span(ip.layer, ip.layer, kept_var[ip.source], lay.size[root])
            first = ip.layer + 1
        span(first, last, None, block[root])
        if root in kept_var:
            span(last + 1, release[root], kept_var[root], block[root])

    # Parameter gradients without fused update.
    if not fuse:
        for name in trained_var:
            if name not in lay.param_owner:
                continue
            owner = lay.index_of[lay.param_owner[name]]
            at = lay.b_step(owner) if len(graph.parameters[name].shape) == 1 else lay.u_step(owner)
            for g in by_param.get(name, ()):
                span(at, at if reorder else end, g.var, g.elements * lay.gradient_bytes)

    # Activation gradients: one buffer per root, from its first possible writer to its last possible reader.
    grad_var: dict[int, str | None] = {}
    for root in lay.members:
        if not lay.grad_size.get(root):
            continue
        grad_var[root] = at_least(f"g{len(grad_var)}", [v for v in (r(k) for k in lay.members[root]) if v])
    for root, var in grad_var.items():
        if var is None or (root not in lay.writers and root not in lay.output_roots):
            continue
        size = lay.grad_size[root]
        last = max(lay.read_step(k, lay.has_2d[lay.key_producer[k]]) for k in lay.members[root]
                   if storages[k].floating)
        if root in lay.output_roots:
            first = lay.b_step(n - 1)
        else:
            creator = lay.writers[root][0][0]
            first = lay.b_step(creator)
            if root in lay.alias_parent:
                first += 1  # the block of the creator's output gradient, handed on
            elif inplace and lay.inplace_backward.get(creator, (None, None))[1] == root:
                # written into the output gradient's block, unless the conv's weight is trained (then it
                # is its own buffer at the conv's backward and update steps)
                first += 2
                span(lay.b_step(creator), lay.u_step(creator), weight_var[creator], size)
        span(first, last, var, size)
        later = lay.writers.get(root, []) if root in lay.output_roots else lay.writers.get(root, [])[1:]
        for i, key, passthrough in later:
            if not passthrough:  # computed into a temporary and added
                span(lay.b_step(i), lay.b_step(i), r(key), size)

    # The points: every forward layer, every backward layer, every update of a layer with a weight, the end.
    point_steps = list(range(n)) + [lay.b_step(i) for i in range(n - 1, -1, -1)]
    point_steps += [lay.u_step(i) for i in range(n) if lay.has_2d[i]]
    point_steps.append(end)
    # Kernel scratch: the buffers with every candidate in place, plus, for a depthwise conv that cannot run
    # in place when its input is kept, what its larger im2col buffer adds then.
    # The largest of those excesses is linear in "some of the first j is kept" variables z_j (excesses in
    # decreasing order): max_i e_i·k_i = sum_j (e_j - e_(j+1))·max_(i<=j) k_i.
    scratch = kernel_buffers(lay, set(in_place))
    excesses: list[tuple[int, str]] = []
    for d, ip in in_place.items():
        excess = kernel_buffers(lay, set(in_place) - {d}).im2col - scratch.im2col
        if excess > 0 and kept_var.get(ip.source) is not None:  # never kept: always in place
            excesses.append((excess, kept_var[ip.source]))  # type: ignore[arg-type]
    excesses.sort(key=lambda e: -e[0])
    scratch_terms: list[tuple[str, int]] = []
    previous: str | None = None
    for j, (excess, var) in enumerate(excesses):
        z = f"im2col{j}"
        binaries_extra.append(z)
        implications.append(Implication(f"{z}_ge_{var}", var, z))
        if previous is not None:
            implications.append(Implication(f"{z}_ge_{previous}", previous, z))
        following = excesses[j + 1][0] if j + 1 < len(excesses) else 0
        scratch_terms.append((z, excess - following))
        previous = z
    # Points as a chain of deltas: a span adds its bytes at its first point and removes them after its last.
    order = sorted(point_steps)
    rows = PointRows()
    for step in order:
        phase, label = lay.step_label(step)
        rows.add(f"{phase}:{label}")
    rows.at(0).add(None, scratch.im2col + scratch.kernel)
    for var, excess in scratch_terms:
        rows.at(0).add(var, excess)
    for first, last, var, nbytes in spans:
        a = bisect.bisect_left(order, first)
        b = bisect.bisect_right(order, last)  # one past the last point inside the span
        if a >= b:
            continue
        rows.at(a).add(var, nbytes)
        if b < len(order):
            rows.at(b).add(var, -nbytes)

    flops = backward_flops_expr(graph, [call for layer in layers for call in layer.aten], r, by_param)

    binaries = [g.var for g in groups] + sorted(set(any_var.values())) + sorted(r_names.values()) + binaries_extra
    return LinearCostModel(
        groups=groups, any_var=any_var, trained_var=trained_var, binaries=list(dict.fromkeys(binaries)),
        implications=implications, persistent=persistent.freeze(), rows=rows,
        backward_flops=flops.freeze(), forward_flops=sum(layer.flops for layer in layers),
        notes=[(f"TinyEngine rules: reorder {'on' if reorder else 'off'}, in-place {'on' if inplace else 'off'}, "
                f"fused update {'on' if fuse else 'off'}")],
    )
