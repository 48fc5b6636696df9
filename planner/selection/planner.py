"""Choose the update set: the ILP and the baselines behind one interface.

``plan_update(graph, target, budget_bytes, strategy=...)`` returns a :class:`PlanResult` whose update set
has been **re-priced with the exact cost model** (``fits`` is that model's verdict, never the solver's).

Strategies:

* ``ilp`` — maximise the sum of group scores subject to the linear upper bound of the training step's
  live bytes at every point of the schedule (:mod:`budgetplan.pricing.linear`: the microcontroller model
  for ``mcu`` targets, the PyTorch-eager model otherwise) ≤ budget, optional FLOP and latency bounds;
  solved with CBC or HiGHS (:mod:`budgetplan.selection.solver`);
* ``greedy`` — the seed paper's fill: groups by score per parameter, best first, each added when the
  bound still fits;
* ``random`` — the same fill in a seeded random order;
* ``bias-only``, ``last-k`` (the last k weight layers whole), ``full``, and a tiny-training sparse-update
  config (``config:PATH``) — fixed sets, priced and reported.

Scores (what the objective maximises, per neuron group): ``params`` (parameters in the group — the
seed's unit), ``uniform`` (1 per group), or user-supplied per-parameter lists.
Units: bytes, FLOPs, seconds.
"""

from __future__ import annotations

import math
import random
import time
import weakref
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from budgetplan.errors import InputError
from budgetplan.model.graph import LayerGraph
from budgetplan.model.modes import BatchNormPolicy, graph_in_training_modes
from budgetplan.model.update_set import UpdateSet, from_sparse_update_config
from budgetplan.pricing.family import PricingOptions, for_target
from budgetplan.pricing.host.exact import TrainingEstimate
from budgetplan.pricing.linear import LinearCostModel
from budgetplan.selection.solver import (
    Constraint,
    Implication,
    LinearExpr,
    SelectionProblem,
    SolveResult,
    solve,
)
from budgetplan.targets import Target, resolve_budget, resolve_target

STRATEGIES = ("ilp", "greedy", "random", "bias-only", "last-k", "full")
SCORE_KINDS = ("params", "uniform")
_PERSISTENT = "held_bytes"  # continuous helper: bytes held for the whole step


@dataclass
class PlanResult:
    """A chosen update set and what it costs (exact re-pricing)."""

    strategy: str
    scores: str
    budget_bytes: int
    update: UpdateSet
    estimate: TrainingEstimate
    objective: float  # sum of the scores of the trained groups
    groups_selected: int
    groups_total: int
    solver: dict[str, Any] | None = None  # name, status, objective, gap, seconds, message
    bound_peak_bytes: float | None = None  # the linear model's bound for this update set
    notes: list[str] = field(default_factory=list)
    # the Planner that made this plan (graph, target, budget, cost model): re-plan with it, e.g. per epoch
    planner: Planner | None = field(default=None, repr=False, compare=False)

    @property
    def fits(self) -> bool:
        return self.estimate.peak_bytes <= self.budget_bytes


def group_scores(model: LinearCostModel, kind: str | Mapping[str, Sequence[float] | float]) -> dict[str, float]:
    """Score per group variable. ``kind``: ``params``, ``uniform`` or a mapping parameter → one score per
    group (a list) or one score for the whole parameter (spread over its groups by size)."""
    if isinstance(kind, str):
        if kind not in SCORE_KINDS:
            raise InputError(f"unknown score '{kind}'; use one of: {', '.join(SCORE_KINDS)} or a scores file")
        return {g.var: float(g.elements if kind == "params" else 1) for g in model.groups}
    by_param: dict[str, list] = defaultdict(list)
    for g in model.groups:
        by_param[g.parameter].append(g)
    unknown = [p for p in kind if p not in by_param]
    if unknown:
        raise InputError(f"scores given for unknown parameter '{unknown[0]}'")
    scores = {g.var: 0.0 for g in model.groups}
    for param, value in kind.items():
        groups = by_param[param]
        if isinstance(value, (int, float)):
            total = sum(g.elements for g in groups)
            for g in groups:
                scores[g.var] = float(value) * g.elements / total
            continue
        values = list(value)
        if len(values) != len(groups):
            raise InputError(f"scores for '{param}' have {len(values)} entries; it has {len(groups)} groups")
        for g, v in zip(groups, values):
            if not isinstance(v, (int, float)) or math.isnan(v):
                raise InputError(f"score for '{param}' is not a number: {v!r}")
            scores[g.var] = float(v)
    return scores


def update_from_values(model: LinearCostModel, values: Mapping[str, int], graph: LayerGraph) -> UpdateSet:
    """The update set of an assignment of group variables."""
    rows: dict[str, set[int]] = defaultdict(set)
    whole: set[str] = set()
    for g in model.groups:
        if not values.get(g.var):
            continue
        if g.whole:
            whole.add(g.parameter)
        else:
            rows[g.parameter].update(range(g.start, g.stop))
    entries: dict[str, tuple[int, ...] | None] = {p: None for p in whole}
    for p, chans in rows.items():
        entries[p] = None if len(chans) == graph.parameters[p].shape[0] else tuple(sorted(chans))
    ordered = {p: entries[p] for p in graph.parameters if p in entries}
    return UpdateSet(ordered)


class _Fill:
    """Incremental evaluation of the linear bound while groups are switched on one by one.

    The points' values are a numpy vector; switching a variable on adds each of its column's entries to
    the points of its chain it reaches (:meth:`LinearCostModel.columns`)."""

    def __init__(self, model: LinearCostModel, budget: float, max_backward_flops: float | None) -> None:
        self.model = model
        self.budget = budget
        self.max_flops = max_backward_flops
        n = len(model.binaries)
        self.point_values = model.rows.values(np.zeros(n))
        self.held = model.persistent_row.constant
        self.flops = model.flops_row.constant
        self.held_coef = np.zeros(n)
        np.add.at(self.held_coef, model.persistent_row.cols, model.persistent_row.coefs)
        self.flops_coef = np.zeros(n)
        np.add.at(self.flops_coef, model.flops_row.cols, model.flops_row.coefs)
        ptr, start, end, coef = model.columns()
        self.ptr, self.start, self.end, self.coef = ptr.tolist(), start.tolist(), end.tolist(), coef.tolist()
        self.rows_of, self.coef_of = start, coef
        # a variable whose entries each reach one point (no chain: the mcu bound's whole rows) is switched
        # with one indexed add instead of one slice per entry
        widest = np.zeros(n, dtype=np.int64)
        if len(start):
            np.maximum.at(widest, np.repeat(np.arange(n), np.diff(ptr)), end - start)
        self.single = (widest <= 1).tolist()
        self.index = model.index
        self.implied = model.implied()
        self.on: set[str] = set()

    def _switch(self, variables: list[str], sign: int) -> None:
        values = self.point_values
        for v in variables:
            j = self.index[v]
            lo, hi = self.ptr[j], self.ptr[j + 1]
            if self.single[j]:
                values[self.rows_of[lo:hi]] += sign * self.coef_of[lo:hi]
            else:
                for k in range(lo, hi):
                    values[self.start[k]:self.end[k]] += sign * self.coef[k]
            self.held += sign * self.held_coef[j]
            self.flops += sign * self.flops_coef[j]

    def fits(self) -> bool:
        peak_ok = self.peak() <= self.budget
        return peak_ok and (self.max_flops is None or self.flops <= self.max_flops)

    def _closure(self, var: str) -> list[str]:
        """``var`` and every variable it implies that is not on yet."""
        new: list[str] = []
        seen: set[str] = set()
        stack = [var]
        while stack:
            v = stack.pop()
            if v in self.on or v in seen:
                continue
            seen.add(v)
            new.append(v)
            stack.extend(self.implied.get(v, ()))
        return new

    def peak(self) -> float:
        return self.held + float(self.point_values.max(initial=0.0))

    def peak_with(self, var: str) -> float:
        """The bound on the peak if ``var`` were switched on (nothing changes)."""
        new = self._closure(var)
        self._switch(new, +1)
        value = self.peak()
        self._switch(new, -1)
        return value

    def add_copies(self, variables: list[str]) -> None:
        """Switch on as many of ``variables`` (in order) as fit, when each has the same entries as one
        already on and implies nothing that is not on (members of one class after the first)."""
        j = self.index[variables[0]]
        effect = np.zeros(len(self.point_values))
        for k in range(self.ptr[j], self.ptr[j + 1]):
            effect[self.start[k]:self.end[k]] += self.coef[k]
        step = effect + self.held_coef[j]
        slack = self.budget - self.held - self.point_values
        rising = step > 0
        count = len(variables)
        if rising.any():
            count = min(count, int(np.floor(np.min(slack[rising] / step[rising]))))
        if self.max_flops is not None and self.flops_coef[j] > 0:
            count = min(count, int(np.floor((self.max_flops - self.flops) / self.flops_coef[j])))
        count = max(count, 0)
        while count > 0:  # float rounding: check the count, one fewer if it does not fit
            self.point_values += count * effect
            self.held += count * self.held_coef[j]
            self.flops += count * self.flops_coef[j]
            if self.fits():
                self.on.update(variables[:count])
                return
            self.point_values -= count * effect
            self.held -= count * self.held_coef[j]
            self.flops -= count * self.flops_coef[j]
            count -= 1

    def try_add(self, var: str) -> bool:
        if var in self.on:
            return True
        new = self._closure(var)
        self._switch(new, +1)
        if self.fits():
            self.on.update(new)
            return True
        self._switch(new, -1)
        return False


def smallest_useful_budget(model: LinearCostModel,
                           classes: Mapping[str, list[str]] | None = None,
                           score: Mapping[str, float] | None = None) -> tuple[float, str | None]:
    """The smallest bound on the peak (bytes) with exactly one useful group trained, and that group's
    variable. A group is useful when its ``score`` is positive (every group when ``score`` is None): a
    budget that only fits groups scored 0 still trains nothing. ``classes`` (:func:`_interchangeable`):
    members of a class cost the same, so only the first of each is tried (ResNet-50: 900 evaluations
    instead of 28,666): the first useful member of a class stands for it."""
    def useful(var: str) -> bool:
        return score is None or score.get(var, 0.0) > 0

    skip: set[str] = set()
    for members in (classes or {}).values():
        useful_members = [m for m in members if useful(m)]
        skip.update(useful_members[1:])
    best: tuple[float, str | None] = (math.inf, None)
    fill = _Fill(model, math.inf, None)
    for g in model.groups:
        if g.var in skip or not useful(g.var):
            continue
        peak = fill.peak_with(g.var)
        if peak < best[0]:
            best = (peak, g.var)
    return best


def _fill(model: LinearCostModel, order: list[str], budget: float, max_flops: float | None,
          classes: Mapping[str, list[str]] | None = None) -> dict[str, int]:
    """Switch the variables of ``order`` on one by one, each when the bound still fits (with what it
    implies). A run of consecutive members of one class of interchangeable groups (``classes``) is added
    at once: after its first member, each further member adds the same bytes at the same points, so the
    number that fits is a division per point (ViT-Base: 167 k groups in a few hundred runs)."""
    fill = _Fill(model, budget, max_flops)
    class_of = {v: name for name, members in (classes or {}).items() for v in members}
    i = 0
    while i < len(order):
        var = order[i]
        j = i + 1
        cls = class_of.get(var)
        while cls is not None and j < len(order) and class_of.get(order[j]) == cls:
            j += 1
        if fill.try_add(var) and j > i + 1:
            fill.add_copies(order[i + 1:j])
        i = j
    return {v: 1 for v in fill.on}


def _greedy_order(model: LinearCostModel, score: Mapping[str, float]) -> list[str]:
    """The seed's order: score per parameter element, best first; ties: later layers (cheaper) first."""
    position = {g.var: i for i, g in enumerate(model.groups)}
    groups = [g for g in model.groups if score[g.var] > 0]
    groups.sort(key=lambda g: (-score[g.var] / g.elements, -position[g.var]))
    return [g.var for g in groups]


def _fixed_set(strategy: str, graph: LayerGraph, last_k: int | None) -> UpdateSet:
    names = list(graph.parameters)
    if strategy == "full":
        return UpdateSet({n: None for n in names})
    if strategy == "bias-only":
        return UpdateSet({n: None for n in names if n.rsplit(".", 1)[-1] == "bias"})
    owners = []
    for layer in graph.group_owners():
        if layer.weight not in owners:
            owners.append(layer.weight)
    k = len(owners) if last_k is None else last_k
    if k < 1:
        raise InputError(f"--last-k must be a positive number of layers, got {k}")
    chosen: set[str] = set()
    for layer in graph.group_owners():
        if layer.weight in owners[-k:]:
            chosen.update(layer.parameters)
    return UpdateSet({n: None for n in names if n in chosen})


class Planner:
    """Everything that re-planning one model on one target under one budget shares.

    Building the linear cost model (and, on ``mcu`` targets, the memory layout) costs 0.1–1 s on a
    MobileNetV2; a per-epoch re-selection (:mod:`budgetplan.runtime.reselect`) calls :meth:`plan` every epoch with
    new scores, so the planner builds them once, on first use, and reuses them. ``plan_update`` is
    ``Planner(...).plan(...)``.

    The constraints of every plan are fixed here: ``budget_bytes`` (bytes), ``max_flops`` (forward +
    backward FLOPs of one step), ``max_latency_s`` (seconds, the target's latency estimate), and the
    solver options ``solver``, ``time_limit`` (seconds) and ``gap`` (relative).
    """

    def __init__(
        self,
        graph: LayerGraph,
        target: Target,
        budget_bytes: int,
        *,
        optimizer: str = "sgd",
        reorder: bool = True,
        solver: str = "auto",
        time_limit: float | None = None,
        gap: float | None = None,
        max_flops: float | None = None,
        max_latency_s: float | None = None,
        inplace: bool = True,
        fuse_update: bool = True,
    ) -> None:
        if budget_bytes <= 0:
            raise InputError(f"the budget must be positive, got {budget_bytes} bytes")
        self.graph = graph
        self.target = target
        self.budget_bytes = budget_bytes
        self.optimizer = optimizer
        self.reorder = reorder
        self.solver = solver
        self.time_limit = time_limit
        self.gap = gap
        self.max_flops = max_flops
        self.max_latency_s = max_latency_s
        self.family = for_target(target)
        self.options = PricingOptions(optimizer=optimizer, reorder=reorder, inplace=inplace, fuse_update=fuse_update)
        self.layout = self.family.prepare(graph, target)
        self._linear: LinearCostModel | None = None
        self._classes: dict[str, list[str]] | None = None

    @property
    def linear_model(self) -> LinearCostModel:
        """The linear upper bound of the step's live bytes (built on first use, then reused)."""
        if self._linear is None:
            key = ("linear bound", self.family.name, repr(self.target), self.options)
            if key not in self.graph.cache:  # independent of the budget: one per graph, target and options
                self.graph.cache[key] = self.family.bound(self.graph, self.target, self.options,
                                                          prepared=self.layout)
            self._linear = self.graph.cache[key]
        return self._linear

    def interchangeable(self) -> dict[str, list[str]]:
        """The classes of interchangeable group variables (see :class:`_Counted`), computed once per
        linear model."""
        if self._classes is None:
            model = self.linear_model
            if "classes" not in model.cache:
                model.cache["classes"] = _interchangeable(model)
            self._classes = model.cache["classes"]
        return self._classes

    def price(self, update: UpdateSet) -> TrainingEstimate:
        """The exact cost model's estimate of one step training ``update`` (bytes)."""
        return self.family.estimate(self.graph, update, self.target, self.options,
                                    budget_bytes=self.budget_bytes, prepared=self.layout)

    def group_scores(self, scores: str | Mapping[str, Sequence[float] | float]) -> dict[str, float]:
        """Score per group variable (see :func:`group_scores`)."""
        return group_scores(self.linear_model, scores)

    def _flop_cap(self) -> float | None:
        model = self.linear_model
        flop_cap = None
        if self.max_flops is not None:
            flop_cap = self.max_flops - model.forward_flops
        if self.max_latency_s is not None:
            latency_cap = 2 * self.max_latency_s * self.target.macs_per_second - model.forward_flops
            flop_cap = latency_cap if flop_cap is None else min(flop_cap, latency_cap)
        if flop_cap is not None and flop_cap < 0:
            raise InputError("the FLOP/latency bound is below the forward pass alone; nothing can be trained")
        return flop_cap

    def plan(
        self,
        *,
        strategy: str = "ilp",
        scores: str | Mapping[str, Sequence[float] | float] = "params",
        seed: int = 0,
        last_k: int | None = None,
        config: Any = None,
        model_module: Any = None,
        warm_start: UpdateSet | None = None,
    ) -> PlanResult:
        """Choose what to train; the result is re-priced with the exact cost model.

        ``warm_start`` (``ilp`` only): an update set handed to the solver as its initial point (HiGHS
        ``setSolution``, CBC ``mipstart``); it changes how fast the solver finds a good plan, never which
        plans are allowed. A start that does not satisfy the bound is ignored by the solver.
        """
        graph, budget_bytes = self.graph, self.budget_bytes
        notes: list[str] = []
        if strategy == "config" or strategy.startswith("config:") or config is not None:
            if model_module is None:
                raise InputError("a sparse-update config needs the model to resolve layer indices")
            update = from_sparse_update_config(config if config is not None else strategy[len("config:"):],
                                               model_module)
            return PlanResult("config", "-", budget_bytes, update, self.price(update), 0.0, 0, 0, notes=notes,
                              planner=self)
        if strategy not in STRATEGIES:
            raise InputError(f"unknown strategy '{strategy}'; use one of: {', '.join(STRATEGIES)}, config:PATH")
        if strategy in ("full", "bias-only", "last-k"):
            update = _fixed_set(strategy, graph, last_k)
            return PlanResult(strategy, "-", budget_bytes, update, self.price(update), 0.0, 0, 0, notes=notes,
                              planner=self)

        model = self.linear_model
        score = group_scores(model, scores)
        score_name = scores if isinstance(scores, str) else "user"
        flop_cap = self._flop_cap()

        solver_info: dict[str, Any] | None = None
        classes = self.interchangeable()
        if strategy == "ilp":
            # the greedy fill is the solver's first incumbent (and its answer if the solver's is worse)
            greedy = _fill(model, _greedy_order(model, score), budget_bytes, flop_cap, classes)

            def gain(assignment: Mapping[str, int]) -> float:
                return sum(score[g.var] for g in model.groups if assignment.get(g.var))

            greedy_objective = gain(greedy)
            warm = greedy
            if warm_start is not None:  # the previous plan, when it is the better start
                previous = model.assignment(warm_start, graph)
                if gain(previous) >= greedy_objective:
                    warm = previous
            values, solver_info = _solve_ilp(model, score, budget_bytes, flop_cap, self.solver, self.time_limit,
                                             self.gap, classes=classes, warm=warm)
            solver_objective = gain(values)
            if solver_info["status"] in ("optimal", "feasible", "no-solution") and \
                    greedy_objective > solver_objective + 1e-9 * max(1.0, abs(greedy_objective)):
                values = greedy
                solver_info["status"] = "feasible"
                solver_info["message"] += "; the greedy fill's plan is better and is used"
        else:
            if strategy == "greedy":
                order = _greedy_order(model, score)
            else:
                order = [g.var for g in model.groups if score[g.var] > 0]
                random.Random(seed).shuffle(order)
            values = _fill(model, order, budget_bytes, flop_cap, classes)

        update = update_from_values(model, values, graph)
        solver_gave_up = solver_info is not None and solver_info["status"] not in ("optimal", "feasible",
                                                                                   "infeasible")
        if update.is_empty and solver_gave_up:
            notes.append(f"the solver stopped without a plan ({solver_info['status']}: {solver_info['message']}); "
                         "raise --time-limit or use --strategy greedy")
        elif update.is_empty:
            smallest, var = smallest_useful_budget(model, self.interchangeable(), score)
            if var is not None:
                group = next(g for g in model.groups if g.var == var)
                notes.append(f"nothing can be trained within {budget_bytes} bytes; the cheapest single group "
                             f"({group.parameter} rows {group.start}:{group.stop}) needs {int(smallest)} bytes")
        est = self.price(update)
        bound = model.peak(model.assignment(update, graph))
        selected = sum(1 for g in model.groups if values.get(g.var))
        objective = sum(score[g.var] for g in model.groups if values.get(g.var))
        if est.peak_bytes > budget_bytes and not update.is_empty:
            notes.append("the exact re-pricing exceeds the budget although the bound fit: please report this")
        return PlanResult(strategy, score_name, budget_bytes, update, est, objective, selected, len(model.groups),
                          solver=solver_info, bound_peak_bytes=bound, notes=notes, planner=self)


def plan_update(
    graph: LayerGraph,
    target: Target,
    budget_bytes: int,
    *,
    strategy: str = "ilp",
    scores: str | Mapping[str, Sequence[float] | float] = "params",
    optimizer: str = "sgd",
    reorder: bool = True,
    solver: str = "auto",
    time_limit: float | None = None,
    gap: float | None = None,
    max_flops: float | None = None,
    max_latency_s: float | None = None,
    seed: int = 0,
    last_k: int | None = None,
    config: Any = None,
    model_module: Any = None,
    inplace: bool = True,
    fuse_update: bool = True,
) -> PlanResult:
    """Choose what to train so that one training step fits ``budget_bytes`` on ``target``.

    ``max_flops`` bounds forward + backward FLOPs of the step; ``max_latency_s`` bounds the target's
    latency estimate. ``config`` (with ``model_module``) is a tiny-training sparse-update config.
    ``reorder``, ``inplace``, ``fuse_update``: the microcontroller runtime's options (:class:`PricingOptions`).
    To plan the same model and budget repeatedly (new scores every epoch), keep a :class:`Planner`.
    """
    planner = Planner(graph, target, budget_bytes, optimizer=optimizer, reorder=reorder, solver=solver,
                      time_limit=time_limit, gap=gap, max_flops=max_flops, max_latency_s=max_latency_s,
                      inplace=inplace, fuse_update=fuse_update)
    return planner.plan(strategy=strategy, scores=scores, seed=seed, last_k=last_k, config=config,
                        model_module=model_module)


@dataclass
class _Counted:
    """Groups of one parameter that are interchangeable: identical coefficients in every cost expression
    (the cost model depends on how many rows are trained, not which). They are decided by one integer
    variable ``n`` in ``0..len(members)`` (the solver branches on its value); the best-scored ``n`` groups
    are the ones trained."""

    parameter: str
    members: list[str]  # group variables, best score first
    count: str  # the integer variable


def _interchangeable(model: LinearCostModel) -> dict[str, list[str]]:
    """Per grouped parameter, the group variables whose coefficients are identical everywhere (in every
    point's delta, the persistent bytes and the backward FLOPs) and that imply the same variables."""
    ptr, rows, _, coefs = model.columns()
    held = np.zeros(len(model.binaries))
    np.add.at(held, model.persistent_row.cols, model.persistent_row.coefs)
    flops = np.zeros(len(model.binaries))
    np.add.at(flops, model.flops_row.cols, model.flops_row.coefs)
    implied = model.implied()
    classes: dict[tuple, list[str]] = defaultdict(list)
    for g in model.groups:
        if g.whole:
            continue
        j = model.index[g.var]
        lo, hi = int(ptr[j]), int(ptr[j + 1])
        key = (g.parameter, rows[lo:hi].tobytes(), coefs[lo:hi].tobytes(), float(held[j]), float(flops[j]),
               tuple(sorted(implied.get(g.var, ()))))
        classes[key].append(g.var)
    return {f"{key[0]}|{n}": members for n, (key, members) in enumerate(classes.items()) if len(members) > 1}


#: the relative gap of the solves that only look for the tangents a distinct-score objective needs
_SCOUT_GAP = 1e-3
#: Above this many non-zeros, the points' constraints are sent as the chain of deltas (a continuous
#: ``live_i`` per point, ``live_i >= live_{i-1} + delta_i``), else each point's whole expression.
MATERIALIZE_NONZEROS = 200_000
#: ... or above this many times the chain's non-zeros: HiGHS's presolve pays for dense rows (measured: whole
#: rows won at 12x on MobileNetV2 cortex-m7, chains at 17x on its host bound and 33x on ViT-Small)
CHAIN_RATIO = 14


def _point_constraints(model: LinearCostModel, name_of: list[str], keep: np.ndarray, budget: float
                       ) -> tuple[list[Constraint], list[str]]:
    """The budget constraints of every point over the ILP's variables (``name_of[j]`` for the model's
    variable ``j``; entries of variables with ``keep[j]`` false are dropped: a counted class's other
    members), and the continuous variables they add."""
    r = model.rows
    indptr, cols, coefs = r.indptr.tolist(), r.cols.tolist(), r.coefs.tolist()
    keep_list = keep.tolist()
    deltas: list[dict[str, float]] = []
    for i in range(len(r)):
        terms: dict[str, float] = {}
        for k in range(indptr[i], indptr[i + 1]):
            j = cols[k]
            if keep_list[j]:
                name = name_of[j]
                terms[name] = terms.get(name, 0.0) + coefs[k]
        deltas.append(terms)
    whole: list[LinearExpr] = []
    total = 0
    limit = min(MATERIALIZE_NONZEROS, CHAIN_RATIO * (sum(len(t) for t in deltas) + 3 * len(deltas)))
    running: dict[str, float] = {}
    constant = 0.0
    for i, terms in enumerate(deltas):  # each point's whole expression, unless that is too large
        if r.restart[i]:
            running, constant = {}, 0.0
        for v, c in terms.items():
            running[v] = running.get(v, 0.0) + c
        constant += float(r.constants[i])
        expr = {v: c for v, c in running.items() if c}
        total += len(expr)
        if total > limit:
            break
        whole.append(LinearExpr({**expr, _PERSISTENT: 1.0}, constant))
    if len(whole) == len(deltas):
        return [Constraint(f"live_bytes_{i:04d}_{label}", expr, float(budget), "bytes")
                for i, (label, expr) in enumerate(zip(r.labels, whole))], []
    constraints: list[Constraint] = []
    live: list[str] = []
    for i, (label, terms) in enumerate(zip(r.labels, deltas)):
        var = f"live_{i:05d}"
        before = {_PERSISTENT: 1.0} if r.restart[i] else {live[-1]: 1.0}
        constraints.append(Constraint(f"live_bytes_{i:05d}_{label}_definition",
                                      LinearExpr({**terms, **before, var: -1.0}, float(r.constants[i])), 0.0,
                                      "bytes"))
        constraints.append(Constraint(f"live_bytes_{i:05d}_{label}", LinearExpr({var: 1.0}), float(budget),
                                      "bytes"))
        live.append(var)
    return constraints, live


def _score_constraints(n: int, count_var: str, scores: list[float], setup: str | None,
                       only: set[int] | None = None) -> list[Constraint]:
    """The concave objective of a counted class with distinct scores (best first): ``z`` (the class's
    score, a continuous variable ``n{n}_score``) is at most the sum of the best ``count`` scores, as the
    tangent lines of that piecewise-linear function, in perspective form with the class's set-up
    variable ``a`` (``count <= m·a``): ``z <= S_j·a + s_{j+1}·(count − j·a)``. With ``a = 1`` these are
    the tangents (exact at every integer count); with a fractional ``a`` they bound ``z`` by
    ``a·S(count / a)``, the convex hull of "nothing trained" and "a count trained", which keeps the LP
    relaxation from buying a fraction of a layer's set-up with its best channel's score. One tangent
    per distinct score; with ``only``, just the tangents at those counts (a relaxation, see
    :func:`_solve_ilp`)."""
    gain = f"n{n}_score"
    out: list[Constraint] = []
    prefix = 0.0
    wanted = None
    if only is not None:  # a count's tangent is the one where its run of equal scores starts
        wanted = set()
        for j in sorted(only):
            while 0 < j < len(scores) and scores[j] == scores[j - 1]:
                j -= 1
            wanted.add(j)
    for j, s_next in enumerate(scores):
        if (j == 0 or s_next != scores[j - 1]) and (wanted is None or j in wanted):
            terms = {gain: 1.0, count_var: -s_next}
            if setup is not None:
                terms[setup] = s_next * j - prefix
                out.append(Constraint(f"count_{n}_score_{j}", LinearExpr(terms), 0.0, "score"))
            else:
                out.append(Constraint(f"count_{n}_score_{j}", LinearExpr(terms), prefix - s_next * j, "score"))
        prefix += s_next
    return out


def _solve_ilp(model: LinearCostModel, score: dict[str, float], budget: int, flop_cap: float | None,
               solver: str, time_limit: float | None, gap: float | None, *,
               classes: Mapping[str, list[str]] | None = None,
               warm: Mapping[str, int] | None = None) -> tuple[dict[str, int], dict[str, Any]]:
    """Build and solve the ILP. Interchangeable groups of a parameter are replaced by an integer
    count (an exact reformulation: see :class:`_Counted`), which removes the solver's symmetric branches
    and shrinks the model from thousands of group variables to a few per layer.

    ``classes``: :func:`_interchangeable` of ``model`` when the caller has it already. ``warm``: a 0/1
    value per variable of ``model`` (a previous plan's assignment) to start the solver from; a counted
    class starts at the number of its members that are on."""
    position = {g.var: i for i, g in enumerate(model.groups)}
    parameter_of = {g.var: g.parameter for g in model.groups}
    counted: list[_Counted] = []
    replace: dict[str, str] = {}  # group var -> the integer count of its class
    extra_continuous: list[str] = []
    objective: dict[str, float] = {}
    if classes is None:
        classes = _interchangeable(model)
    name_of = list(model.binaries)
    keep = np.ones(len(name_of), dtype=bool)
    implied = model.implied()
    distinct: list[tuple[int, _Counted, list[float], str | None]] = []  # classes with a concave objective
    for n, (name, members) in enumerate(sorted(classes.items())):
        members = sorted(members, key=lambda v: (-score.get(v, 0.0), position[v]))  # ties: channel order
        count_var = f"n{n}"
        counted.append(_Counted(name, members, count_var))
        for k, v in enumerate(members):
            replace[v] = count_var
            name_of[model.index[v]] = count_var
            keep[model.index[v]] = k == 0
        scores = [score.get(v, 0.0) for v in members]
        if len(set(scores)) == 1:
            objective[count_var] = scores[0]
        else:  # concave: the sum of the best n scores, bounded by its tangent lines
            extra_continuous.append(f"n{n}_score")
            objective[f"n{n}_score"] = 1.0
            setup = model.any_var.get(parameter_of[members[0]])
            if setup not in implied.get(members[0], ()):
                setup = None  # no set-up variable that a trained member forces on: plain tangents
            distinct.append((n, counted[-1], scores, setup))
    for v, sc in score.items():
        if v not in replace and sc:
            objective[v] = objective.get(v, 0.0) + sc

    def rewrite(row: Any, extra: Mapping[str, float] | None = None) -> LinearExpr:
        terms: dict[str, float] = defaultdict(float)
        for j, c in zip(row.cols.tolist(), row.coefs.tolist()):
            if keep[j]:  # a class's members share one coefficient: c * count, counted once per class
                terms[name_of[j]] += c
        for v, c in (extra or {}).items():
            terms[v] += c
        return LinearExpr(dict(terms), row.constant)

    constraints = [Constraint("held_bytes_definition", rewrite(model.persistent_row, {_PERSISTENT: -1.0}), 0.0,
                              "bytes")]
    point_constraints, live_vars = _point_constraints(model, name_of, keep, budget)
    constraints += point_constraints
    if flop_cap is not None:
        constraints.append(Constraint("backward_flops", rewrite(model.flops_row), float(flop_cap), "FLOPs"))
    implications: list[Implication] = []
    class_of = {v: c for c in counted for v in c.members}
    for imp in model.implications:
        if imp.lhs in replace:
            # "some member trained => rhs": count <= members * rhs
            cls = class_of[imp.lhs]
            if imp.lhs != cls.members[0]:
                continue
            terms = {cls.count: 1.0, imp.rhs: -float(len(cls.members))}
            constraints.append(Constraint(f"{imp.name}_count", LinearExpr(terms), 0.0, "groups"))
        else:
            implications.append(imp)
    binaries = [v for v in model.binaries if v not in replace]
    start_values: dict[str, int] | None = None
    if warm is not None:
        binary_set = set(binaries)
        start_values = {v: int(bool(x)) for v, x in warm.items() if v in binary_set}
        for c in counted:
            start_values[c.count] = min(sum(1 for v in c.members if warm.get(v)), len(c.members))
    # Distinct scores: the tangents of every count would be one row per group (9,144 on MobileNetV2, and
    # HiGHS propagates all of them at every node). Start from the tangents at counts 0 and ~1.25^k - 1
    # up to m-1 and around the start's count (a relaxation: z may exceed the true sum between tangents), solve, add the
    # tangents at each class's chosen count where z exceeds its true sum, and solve again; when no class
    # exceeds, the relaxation's optimum is the problem's. A gap-limited solve stops earlier once its
    # true objective is within the gap of the relaxation's bound (an upper bound of the problem's).
    chosen: dict[int, set[int]] = {}
    for n, cls, scores, _ in distinct:
        m = len(scores)
        first = {0, m - 1} | {j for j in (int(1.25 ** k) - 1 for k in range(64)) if j < m}
        if start_values is not None:
            k = start_values.get(cls.count, 0)
            first |= {j for j in (k - 1, k) if 0 <= j < m}
        chosen[n] = first
    prefix_sums = {n: np.concatenate([[0.0], np.cumsum(scores)]).tolist() for n, _, scores, _ in distinct}
    started = time.perf_counter()
    rounds = 0
    # rounds that only find the tangents run to a 0.1 % gap; the last one runs to the requested gap
    scouting = bool(distinct) and (gap is None or gap < _SCOUT_GAP)
    while True:
        rounds += 1
        score_rows = [row for n, cls, scores, setup in distinct
                      for row in _score_constraints(n, cls.count, scores, setup, chosen[n])]
        problem = SelectionProblem(binaries=binaries, objective=LinearExpr(objective),
                                   constraints=constraints + score_rows, implications=implications,
                                   continuous=[_PERSISTENT, *extra_continuous, *live_vars],
                                   integers={c.count: len(c.members) for c in counted})
        remaining = None if time_limit is None else max(time_limit - (time.perf_counter() - started), 0.05)
        result: SolveResult = solve(problem, solver=solver, time_limit=remaining,
                                    gap=_SCOUT_GAP if scouting else gap, warm_start=start_values)
        if not result.has_solution or not distinct:
            break
        excess = 0.0
        added = False
        for n, cls, scores, _ in distinct:
            k = result.values[cls.count]
            z = result.continuous_values.get(f"n{n}_score", 0.0)
            true = prefix_sums[n][k]
            if z > true + 1e-6 * max(1.0, abs(true)):  # beyond the solver's feasibility tolerance
                excess += z - true
                near = {j for j in (k - 4, k - 2, k - 1, k, k + 1, k + 3) if 0 <= j < len(scores)}
                added = added or not near <= chosen[n]
                chosen[n] |= near
        if not added:
            excess = 0.0  # every tangent at the chosen counts is in: z is its true sum up to round-off
        if excess == 0.0 and scouting:
            scouting = False  # the tangents are found: prove the requested gap (warm from this plan)
            start_values = dict(result.values)
            continue
        if excess == 0.0:
            break
        true_objective = result.objective - excess
        bound = result.bound
        out_of_time = time_limit is not None and time.perf_counter() - started >= time_limit
        close = not scouting and gap is not None and bound is not None and \
            bound - true_objective <= gap * abs(true_objective)
        if close or out_of_time:
            rel = (bound - true_objective) / abs(true_objective) if bound is not None and true_objective else None
            why = "within the requested relative gap" if close else "time limit reached"
            result = SolveResult("feasible", result.values, true_objective, rel, result.seconds, result.solver,
                                 f"feasible: {why} (tangent rounds: {rounds}); objective {true_objective:.10g}",
                                 bound=bound)
            break
        start_values = {v: x for v, x in result.values.items()}
    counts = {c.count for c in counted}
    values = {v: x for v, x in result.values.items() if v not in counts}
    for c in counted:
        n = result.values.get(c.count, 0)
        for v in c.members[:n]:
            values[v] = 1
    info = {"name": result.solver, "status": result.status, "objective": result.objective, "gap": result.gap,
            "seconds": round(time.perf_counter() - started, 3), "message": result.message,
            "variables": len(binaries) + len(counted), "group_variables": len(model.groups),
            "constraints": len(problem.constraints), "tangent_rounds": rounds,
            "nonzeros": sum(len(c.expr.terms) for c in problem.constraints) + 2 * len(implications)}
    return values, info


def planner_for(model: nn.Module, example_inputs: Any, *, target: Any = "host", ram: str | int | None = None,
                group_size: int = 1, batchnorm: str = "frozen", **options: Any) -> Planner:
    """A :class:`Planner` for a model object: traced in the modes a compiled module trains in (train mode,
    BatchNorm per ``batchnorm``), budget ``ram`` (bytes or ``"256k"``; default the target's usable RAM).
    ``options`` go to :class:`Planner` (``optimizer``, ``solver``, ``time_limit``, ``gap``, ...)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    device = resolve_target(target)
    budget = resolve_budget(device, ram)
    key = model_fingerprint(model, example_inputs, batchnorm=batchnorm, group_size=group_size)
    graphs = _GRAPHS.setdefault(model, {})
    graph = graphs.get(key)
    if graph is None:
        graph = graph_in_training_modes(model, example_inputs, batchnorm=batchnorm, group_size=group_size)
        graphs.clear()  # one graph per model object: the latest shapes and modes
        graphs[key] = graph
    return Planner(graph, device, budget, **options)


#: the layer graph last traced for each model object, under its :func:`model_fingerprint`
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, LayerGraph]] = weakref.WeakKeyDictionary()


def model_fingerprint(model: nn.Module, example_inputs: Any, *, batchnorm: str = "frozen",
                      group_size: int = 1) -> tuple:
    """What a layer graph depends on besides the weights' values: the module types in order, every
    parameter's and buffer's name, shape and dtype, the inputs' shapes and dtypes, the BatchNorm policy
    and the group size. Plans of one model under several budgets or targets share the graph traced for
    it (and, through ``graph.cache``, the backward analysis and each target's linear bound)."""
    inputs = (example_inputs,) if not isinstance(example_inputs, (tuple, list)) else tuple(example_inputs)
    return (
        tuple(type(m).__qualname__ for m in model.modules()),
        tuple((n, tuple(t.shape), t.dtype) for n, t in model.named_parameters()),
        tuple((n, tuple(t.shape), t.dtype) for n, t in model.named_buffers()),
        tuple((tuple(t.shape), t.dtype) if hasattr(t, "shape") else repr(t) for t in inputs),
        batchnorm, group_size,
    )


def plan(model: nn.Module, example_inputs: Any, *, target: Any = "host", ram: str | int | None = None,
         optimizer: str = "sgd", strategy: str = "ilp", batchnorm: BatchNormPolicy = "frozen",
         time_limit: float | None = 60.0, group_size: int = 1) -> PlanResult:
    """Choose what to train for a model object in memory: :func:`planner_for` (traced in the modes a
    compiled module trains in, BatchNorm per ``batchnorm``; budget ``ram``, bytes or ``"256k"``) then
    :meth:`Planner.plan`. Returns the :class:`PlanResult` (``.update``, ``.estimate.peak_bytes``, ``.fits``)."""
    planner = planner_for(model, example_inputs, target=target, ram=ram, group_size=group_size,
                          batchnorm=batchnorm, optimizer=optimizer, time_limit=time_limit)
    return planner.plan(strategy=strategy, model_module=model)
