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
gets a linear expression of its live bytes. They are stored as a :class:`PointRows` chain: each point is
the previous point plus what changed there (a storage allocated or freed, a gradient that appears), so a
tensor alive over many points costs two entries, not one per point, and the model grows with the number
of storages and groups rather than with their product (ViT-Base: 167 k groups, ~1,500 points). The expressions are a **proven upper bound**
of the exact cost model (:mod:`budgetplan.pricing.mcu.exact`) for every update set: lifetimes that depend on
decisions are taken at their longest (a kept activation is held until the backward of the *earliest layer
that may keep it*; an activation gradient lives from its producer's backward to its last consumer's; a
partially-kept depthwise input is a separate buffer). So ``expr ≤ budget`` at every point guarantees the
re-priced plan fits; the planner re-prices every plan with the exact model anyway.

Units: bytes (memory), FLOPs.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

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


# --------------------------------------------------------------------------------------------------
# The points of the schedule as a chain of deltas, and the model
# --------------------------------------------------------------------------------------------------


class PointRows:
    """Builder of the schedule's points as a chain of sparse deltas.

    ``add(label)`` appends a point and returns its index; ``at(i)`` is the :class:`ExprBuilder` of what
    changes at point ``i``: the point's live bytes are the previous point's plus that delta, unless the
    point was added with ``restart=True`` (then the delta is the whole expression). A storage alive from
    point ``a`` to point ``b`` is ``at(a).add(v, n)`` and ``at(b + 1).add(v, -n)``.
    """

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.restart: list[bool] = []
        self.deltas: list[ExprBuilder] = []

    def add(self, label: str, *, restart: bool = False) -> int:
        self.labels.append(label)
        self.restart.append(restart or not self.labels[:-1])
        self.deltas.append(ExprBuilder())
        return len(self.labels) - 1

    def add_full(self, label: str, expr: LinearExpr | ExprBuilder) -> int:
        """A point given by its whole expression (it starts a new chain)."""
        i = self.add(label, restart=True)
        if isinstance(expr, ExprBuilder):
            self.deltas[i].add_expr(expr)
        else:
            for v, c in expr.terms.items():
                self.deltas[i].add(v, c)
            self.deltas[i].add(None, expr.constant)
        return i

    def at(self, i: int) -> ExprBuilder:
        return self.deltas[i]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SparseRow:
    """``constant + Σ coefs[j] · x[cols[j]]`` over the model's variable indices (numpy arrays)."""

    cols: np.ndarray
    coefs: np.ndarray
    constant: float = 0.0

    def value(self, x: np.ndarray) -> float:
        return float(self.constant + np.dot(self.coefs, x[self.cols])) if len(self.cols) else float(self.constant)


@dataclass
class CompiledRows:
    """The points as arrays: delta ``i`` is ``constants[i] + Σ coefs[k] · x[cols[k]]`` for ``k`` in
    ``indptr[i]:indptr[i+1]``; a point's value is the sum of the deltas since the last restart."""

    labels: list[str]
    restart: np.ndarray  # bool per point
    indptr: np.ndarray  # int64, len(points) + 1
    cols: np.ndarray  # int64 per entry
    coefs: np.ndarray  # float64 per entry
    constants: np.ndarray  # float64 per point
    entry_row: np.ndarray = field(init=False)  # point of each entry
    chain_start: np.ndarray = field(init=False)  # first point of each point's chain
    chain_end: np.ndarray = field(init=False)  # one past the last point of each point's chain

    def __post_init__(self) -> None:
        n = len(self.labels)
        self.entry_row = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.indptr))
        starts = np.flatnonzero(self.restart) if n else np.zeros(0, dtype=np.int64)
        self.chain_start = starts[np.searchsorted(starts, np.arange(n), side="right") - 1] if n else starts
        ends = np.append(starts[1:], n)
        self.chain_end = ends[np.searchsorted(starts, np.arange(n), side="right") - 1] if n else starts

    def __len__(self) -> int:
        return len(self.labels)

    def deltas(self, x: np.ndarray) -> np.ndarray:
        weighted = self.coefs * x[self.cols] if len(self.cols) else np.zeros(0)
        return self.constants + np.bincount(self.entry_row, weights=weighted, minlength=len(self.labels))

    def values(self, x: np.ndarray) -> np.ndarray:
        """Every point's value at ``x`` (one value per variable index)."""
        total = np.cumsum(self.deltas(x))
        before = np.where(self.chain_start > 0, total[np.maximum(self.chain_start - 1, 0)], 0.0)
        return total - before


class LinearCostModel:
    """Linear (upper-bound) cost of a training step over binary update decisions.

    ``persistent``: bytes held for the whole step (trained weights in SRAM, optimizer state);
    ``rows`` (a :class:`PointRows`) or ``points`` (``(label, expression)`` pairs, each whole): live bytes
    at every point of the schedule besides the persistent ones; ``backward_flops``: FLOPs of the backward.
    Every variable they use is one of ``binaries``. The model keeps them as numpy arrays over the
    binaries' indices (:attr:`index`); :attr:`points` rebuilds the per-point expressions on demand.
    """

    def __init__(
        self,
        *,
        groups: list[Group],
        any_var: dict[str, str],
        trained_var: dict[str, str],
        binaries: list[str],
        implications: list[Implication],
        persistent: LinearExpr | ExprBuilder,
        backward_flops: LinearExpr | ExprBuilder,
        forward_flops: int,
        points: Sequence[tuple[str, LinearExpr]] | None = None,
        rows: PointRows | None = None,
        notes: list[str] | None = None,
    ) -> None:
        if (points is None) == (rows is None):
            raise ValueError("give the schedule's points either as rows (PointRows) or as points")
        if rows is None:
            rows = PointRows()
            for label, expr in points or ():
                rows.add_full(label, expr)
        self.groups = groups
        self.any_var = any_var
        self.trained_var = trained_var
        self.binaries = list(binaries)
        self.implications = implications
        self.forward_flops = forward_flops
        self.notes = notes if notes is not None else []
        self.index: dict[str, int] = {v: i for i, v in enumerate(self.binaries)}
        self.persistent = _frozen(persistent)
        self.backward_flops = _frozen(backward_flops)
        self.persistent_row = self._row(self.persistent, "the persistent bytes")
        self.flops_row = self._row(self.backward_flops, "the backward FLOPs")
        self.rows = self._compile(rows)
        self._columns: tuple[np.ndarray, ...] | None = None
        self._implied: tuple[int, dict[str, list[str]]] | None = None
        self.cache: dict[str, object] = {}  # what users derive from the model alone (the planner's classes)

    # -- building -----------------------------------------------------------------------------------

    def _col(self, var: str, where: str) -> int:
        try:
            return self.index[var]
        except KeyError:
            raise ValueError(f"{where} use {var!r}, which is not one of the model's binaries") from None

    def _row(self, expr: LinearExpr, where: str) -> SparseRow:
        cols = np.fromiter((self._col(v, where) for v in expr.terms), dtype=np.int64, count=len(expr.terms))
        coefs = np.fromiter(expr.terms.values(), dtype=np.float64, count=len(expr.terms))
        return SparseRow(cols, coefs, float(expr.constant))

    def _compile(self, rows: PointRows) -> CompiledRows:
        sizes, cols, coefs, constants = [], [], [], []
        for label, delta in zip(rows.labels, rows.deltas):
            terms = {v: c for v, c in delta.terms.items() if c}
            sizes.append(len(terms))
            cols.extend(self._col(v, f"point {label!r}") for v in terms)
            coefs.extend(terms.values())
            constants.append(delta.constant)
        indptr = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=indptr[1:])
        return CompiledRows(list(rows.labels), np.array(rows.restart, dtype=bool), indptr,
                            np.array(cols, dtype=np.int64), np.array(coefs, dtype=np.float64),
                            np.array(constants, dtype=np.float64))

    # -- reading ------------------------------------------------------------------------------------

    @property
    def points(self) -> list[tuple[str, LinearExpr]]:
        """Every point's whole expression (built on demand: its size is points × live variables)."""
        out: list[tuple[str, LinearExpr]] = []
        r = self.rows
        running: dict[str, float] = {}
        constant = 0.0
        for i, label in enumerate(r.labels):
            if r.restart[i]:
                running, constant = {}, 0.0
            constant += float(r.constants[i])
            for k in range(int(r.indptr[i]), int(r.indptr[i + 1])):
                v = self.binaries[int(r.cols[k])]
                running[v] = running.get(v, 0.0) + float(r.coefs[k])
            out.append((label, LinearExpr({v: c for v, c in running.items() if c}, constant)))
        return out

    def vector(self, values: Mapping[str, float]) -> np.ndarray:
        """An assignment (variable name -> value, missing = 0) as a vector over :attr:`index`."""
        x = np.zeros(len(self.binaries))
        for v, val in values.items():
            if val:
                x[self.index[v]] = val
        return x

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The points' entries by variable: ``(ptr, start point, end point, coefficient)``; variable ``j``
        adds ``coefficient`` to every point in ``start:end`` of each of its entries ``ptr[j]:ptr[j+1]``."""
        if self._columns is None:
            r = self.rows
            order = np.argsort(r.cols, kind="stable")
            ptr = np.zeros(len(self.binaries) + 1, dtype=np.int64)
            np.cumsum(np.bincount(r.cols, minlength=len(self.binaries)), out=ptr[1:])
            rows = r.entry_row[order]
            self._columns = (ptr, rows, r.chain_end[rows], r.coefs[order])
        return self._columns  # type: ignore[return-value]

    def implied(self) -> dict[str, list[str]]:
        """``lhs -> [rhs, ...]`` of the implications (computed once; do not change the implications after)."""
        if self._implied is None or self._implied[0] != len(self.implications):
            out: dict[str, list[str]] = {}
            for imp in self.implications:
                out.setdefault(imp.lhs, []).append(imp.rhs)
            self._implied = (len(self.implications), out)
        return self._implied[1]

    def assignment(self, update: UpdateSet, graph: LayerGraph) -> dict[str, int]:
        """Group variables for a concrete update set (a group is on when any of its rows is trained);
        derived variables (a, r, k) are set to the smallest values the implications allow."""
        values = {v: 0 for v in self.binaries}
        stack: list[str] = []
        sorted_channels: dict[str, list[int]] = {}
        for g in self.groups:
            chans = update.channels(g.parameter)
            if chans == ():
                continue
            if chans is not None:  # is any trained channel in rows start:stop?
                ordered = sorted_channels.get(g.parameter)
                if ordered is None:
                    ordered = sorted_channels[g.parameter] = sorted(chans)
                at = bisect_left(ordered, g.start)
                if at == len(ordered) or ordered[at] >= g.stop:
                    continue
            values[g.var] = 1
            stack.append(g.var)
        implied = self.implied()
        while stack:  # everything the trained groups imply, transitively
            for rhs in implied.get(stack.pop(), ()):
                if not values.get(rhs):
                    values[rhs] = 1
                    stack.append(rhs)
        return values

    def evaluate(self, values: Mapping[str, float]) -> list[tuple[str, float]]:
        """Live bytes of every point (persistent bytes included) under an assignment."""
        x = self.vector(values)
        held = self.persistent_row.value(x)
        return list(zip(self.rows.labels, (held + self.rows.values(x)).tolist()))

    def peak(self, values: Mapping[str, float]) -> float:
        """The bound on the step's peak (bytes) under an assignment."""
        x = self.vector(values)
        return self.persistent_row.value(x) + float(self.rows.values(x).max(initial=0.0))


def _frozen(expr: LinearExpr | ExprBuilder) -> LinearExpr:
    return expr.freeze() if isinstance(expr, ExprBuilder) else expr
