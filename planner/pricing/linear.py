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
gets a :class:`~budgetplan.selection.solver.LinearExpr` of its live bytes. The expressions are a **proven upper bound**
of the exact cost model (:mod:`budgetplan.pricing.mcu.exact`) for every update set: lifetimes that depend on
decisions are taken at their longest (a kept activation is held until the backward of the *earliest layer
that may keep it*; an activation gradient lives from its producer's backward to its last consumer's; a
partially-kept depthwise input is a separate buffer). So ``expr ≤ budget`` at every point guarantees the
re-priced plan fits; the planner re-prices every plan with the exact model anyway.

Units: bytes (memory), FLOPs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from budgetplan.cost_models.backward_flops import backward_flops
from budgetplan.model.graph import AtenCall, LayerGraph, parameter_groups
from budgetplan.model.update_set import UpdateSet


@dataclass(frozen=True)
class LinearExpr:
    """``constant + sum(coef * var for var, coef in terms.items())``; variables are names.

    The unit of the expression is that of the constraint or objective it is used in.
    """

    terms: Mapping[str, float]
    constant: float = 0.0

    def value(self, assignment: Mapping[str, float]) -> float:
        """Evaluate at ``assignment`` (a missing variable raises ``KeyError``), summing exactly."""
        return math.fsum([self.constant, *(c * assignment[v] for v, c in sorted(self.terms.items()))])


@dataclass(frozen=True)
class Implication:
    """``lhs <= rhs`` between two binaries: "if ``lhs`` is chosen, ``rhs`` must be too".

    Examples: ``x_g <= u_l`` (a group needs its layer), ``r_out <= r_in`` (a chain of layers).
    """

    name: str
    lhs: str
    rhs: str


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


class ExprBuilder:
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

    def add_expr(self, other: ExprBuilder, scale: float = 1.0) -> None:
        self.constant += other.constant * scale
        for v, c in other.terms.items():
            self.terms[v] += c * scale

    def freeze(self) -> LinearExpr:
        # insertion (graph) order: deterministic, and sorting thousands of terms per point cost 0.3 s
        return LinearExpr({v: c for v, c in self.terms.items() if c}, self.constant)


def decision_groups(graph: LayerGraph) -> tuple[list[Group], dict[str, str], dict[str, str], list[Implication]]:
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


def groups_by_parameter(groups: Iterable[Group]) -> dict[str, list[Group]]:
    """The decision groups of each parameter, in row order (the bounds price a parameter's trained rows)."""
    by_param: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_param[g.parameter].append(g)
    return dict(by_param)


def trained_bytes(groups: Sequence[Group], bytes_per_element: float) -> ExprBuilder:
    """Bytes of a parameter's trained rows (a weight copy, its gradient, an optimizer buffer):
    ``bytes_per_element`` times the elements of each trained group of ``groups`` (one parameter's)."""
    e = ExprBuilder()
    for g in groups:
        e.add(g.var, g.elements * bytes_per_element)
    return e


def binary_order(groups: Sequence[Group], *derived: Iterable[str]) -> list[str]:
    """The model's binaries: the group variables in graph order, then each family of derived variables
    (``a``, ``r``, ``k``, ...) in the order given, each variable once."""
    names = [g.var for g in groups]
    for family in derived:
        names.extend(dict.fromkeys(family))
    return names


def backward_flops_expr(graph: LayerGraph, calls: list[AtenCall], atom: Callable[[int], str | None],
                         by_param: Mapping[str, list[Group]]) -> ExprBuilder:
    """Backward FLOPs: each input's gradient FLOPs when that input receives a gradient (parameters:
    only the trained rows' share)."""
    flops = ExprBuilder()
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
