"""Per-epoch re-selection of the neurons to train (the seed paper's dynamic selection, under a byte budget).

::

    plan = budgetplan.plan(model, x, target="cortex-m7", ram="64k")   # or a Planner (planner_for(model, x, ...))
    sel = Reselector(plan, val_inputs, scores="velocity")
    model = sel.compile(model)                                     # initial plan + first measurement
    for epoch in range(epochs):
        opt = torch.optim.SGD(model.trainable_parameters(), lr=...)
        train_one_epoch(model, opt)
        model = sel.step(model)                                    # new plan, same compiled module

``step`` scores every neuron group (NEq velocity on the validation batch, :mod:`budgetplan.selection.velocity`; or
TraDy's gradient norm, :mod:`budgetplan.selection.scores`; or a callable), re-solves the plan (ILP warm-started
from the previous plan, or the seed's greedy fill by score per parameter, or a random fill re-drawn each
epoch), **re-prices it with the exact cost model and checks it against the budget** (a plan that does not
fit is never installed: the previous one is kept, or :class:`ReselectionError` is raised), switches the
compiled module's update set in place (``set_update``: no re-tracing) and logs an :class:`EpochLog`.
After ``step`` the caller builds a new optimizer from ``model.trainable_parameters()``.

Units: bytes, seconds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from budgetplan.errors import BudgetplanError, InputError
from budgetplan.selection.planner import Planner, PlanResult
from budgetplan.model.update_set import UpdateSet
from budgetplan.selection.velocity import DEFAULT_MAX_BYTES, VelocityTracker

__all__ = ["EpochLog", "ReselectionError", "Reselector", "SCORE_SOURCES", "STRATEGIES"]

#: Built-in score sources; a callable ``f(model) -> {parameter: [score per group] | score}`` also works.
SCORE_SOURCES: tuple[str, ...] = ("velocity", "grad-norm")
#: Re-selection strategies (as in :func:`budgetplan.selection.planner.plan_update`).
STRATEGIES: tuple[str, ...] = ("ilp", "greedy", "random")

ScoreSource = str | Callable[[nn.Module], Mapping[str, Sequence[float] | float]]


class ReselectionError(BudgetplanError):
    """A re-solved plan does not fit the budget (with ``on_overflow="raise"``), or no plan was found."""

    exit_code = 1


@dataclass
class EpochLog:
    """One re-selection (epoch 0 = the initial plan).

    ``groups_changed`` counts neuron-group decisions that differ from the plan in use before (switched on
    plus switched off); ``solve_seconds`` is the planner call (solver or fill, and the exact re-pricing);
    ``score_seconds`` the validation pass / gradient pass; ``switch_seconds`` ``set_update``.
    ``predicted_peak_bytes`` and ``fits`` are the exact cost model's for the plan in use after this step.
    """

    epoch: int
    source: str  # initial | velocity | grad-norm | random | user | warm-up (no velocity yet)
    groups_changed: int
    groups_selected: int
    groups_total: int
    solve_seconds: float
    score_seconds: float
    switch_seconds: float
    predicted_peak_bytes: int
    budget_bytes: int
    objective: float  # sum of the (raw, un-normalised) scores of the selected groups; 0 without scores
    fits: bool
    solver_status: str | None = None
    solver_seconds: float | None = None  # the solver alone (ILP), inside solve_seconds
    kept_previous: bool = False  # the re-solved plan was rejected and the previous one kept
    notes: list[str] = field(default_factory=list)

    @property
    def overhead_seconds(self) -> float:
        """Scoring + solving + switching."""
        return self.score_seconds + self.solve_seconds + self.switch_seconds


def _split_batch(val_batch: Any) -> tuple[Any, torch.Tensor | None]:
    """``inputs`` or ``(inputs, targets)`` → (inputs, targets or None)."""
    if isinstance(val_batch, torch.Tensor):
        return val_batch, None
    if isinstance(val_batch, (tuple, list)) and len(val_batch) == 2 and all(isinstance(t, torch.Tensor)
                                                                             for t in val_batch):
        return val_batch[0], val_batch[1]
    raise InputError("the validation batch must be an inputs tensor or a pair (inputs, targets)")


class Reselector:
    """Re-plan the update set between epochs (see the module docstring).

    Args:
        planner: the :class:`~budgetplan.selection.planner.Planner` of the model, target and budget (its graph's
            parameter names must be the model's), or a :class:`~budgetplan.selection.planner.PlanResult` made by
            one (``plan_update``, ``budgetplan.plan``): its planner, and the plan as ``initial``.
        val_batch: the fixed validation batch: inputs, or ``(inputs, targets)`` (targets are needed by
            ``scores="grad-norm"`` unless ``grad_batches`` is given). Models with one input tensor.
        scores: ``"velocity"`` (NEq, default), ``"grad-norm"`` (TraDy) or a callable
            ``f(model) -> {parameter: [score per group] | score}``.
        strategy: ``"ilp"`` (maximise the sum of scores; warm-started from the previous plan),
            ``"greedy"`` (the seed's fill by score per parameter element) or ``"random"`` (a random fill,
            re-drawn each epoch with seed ``seed + epoch``; scores are not computed).
        initial: the first epoch's plan: ``"params"`` (default with a Planner: ``strategy`` maximising
            trained parameters),
            ``"random"``, ``"config:PATH"`` / a sparse-update config dict (needs ``model``), a
            :class:`~budgetplan.selection.planner.PlanResult` or an :class:`~budgetplan.model.update_set.UpdateSet`.
            It is re-priced; one that does not fit is an :class:`InputError`.
        model: the model, for a sparse-update config as ``initial``.
        on_overflow: ``"keep"`` (default: a re-solved plan that does not fit, or a solver without a plan,
            keeps the previous plan and says so in the log) or ``"raise"`` (:class:`ReselectionError`).
        warm_start: give the ILP the previous plan as its start.
        gap, time_limit: the ILP's relative gap and time limit (seconds) for the per-epoch re-solves, in
            place of the planner's (``None``: the planner's). The default gap, 1 %, stops a re-solve
            once its plan is proven within 1 % of the best: velocities are noisy estimates, and proving
            the last 1 % took as long again (``benchmarks/reselect_overhead.py``); ``gap=0.0`` solves
            exactly. With the warm start, a limited solve always has the previous plan as an incumbent.
        momentum, sign, max_samples, max_bytes, on_excess: the :class:`VelocityTracker`'s.
        grad_batches: ``(inputs, targets)`` batches for ``"grad-norm"`` (default: the validation batch).
        loss_fn: loss for ``"grad-norm"`` (default cross-entropy).
        seed: seeds the random strategy/initial plan and the tracker's subsampling.
    """

    def __init__(
        self,
        planner: Planner | PlanResult,
        val_batch: Any,
        *,
        scores: ScoreSource = "velocity",
        strategy: str = "ilp",
        initial: str | PlanResult | UpdateSet | Mapping[str, Any] | None = None,
        model: nn.Module | None = None,
        on_overflow: str = "keep",
        warm_start: bool = True,
        gap: float | None = 0.01,
        time_limit: float | None = None,
        momentum: float = 0.5,
        sign: str = "paper",
        max_samples: int = 10,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_excess: str = "error",
        grad_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(planner, PlanResult):
            if planner.planner is None:
                raise InputError("this PlanResult does not carry the Planner that made it; pass a Planner")
            initial = planner if initial is None else initial
            planner = planner.planner
        if not isinstance(planner, Planner):
            raise InputError(f"Reselector needs a budgetplan.selection.planner.Planner or a PlanResult, got "
                             f"{type(planner).__name__}")
        initial = "params" if initial is None else initial
        if not (callable(scores) or scores in SCORE_SOURCES):
            raise InputError(f"unknown score source {scores!r}; use one of: {', '.join(SCORE_SOURCES)} or a "
                             "callable")
        if strategy not in STRATEGIES:
            raise InputError(f"unknown re-selection strategy {strategy!r}; use one of: {', '.join(STRATEGIES)}")
        if on_overflow not in ("keep", "raise"):
            raise InputError(f"on_overflow must be 'keep' or 'raise', got {on_overflow!r}")
        self.planner = planner
        self.inputs, self.targets = _split_batch(val_batch)
        if isinstance(self.inputs, torch.Tensor) and self.inputs.shape[0] == 0:
            raise InputError("the validation set is empty: give at least one sample")
        self.scores = scores
        self.strategy = strategy
        self.on_overflow = on_overflow
        self.warm_start = warm_start
        self.gap = gap
        self.time_limit = time_limit
        self.seed = seed
        self.loss_fn = loss_fn
        self.grad_batches = list(grad_batches) if grad_batches is not None else None
        if scores == "grad-norm" and self.grad_batches is None:
            if self.targets is None:
                raise InputError("scores='grad-norm' needs targets: pass val_batch=(inputs, targets) or grad_batches")
            self.grad_batches = [(self.inputs[:max_samples], self.targets[:max_samples])]
        self._tracker_options = dict(momentum=momentum, sign=sign, max_samples=max_samples, max_bytes=max_bytes,
                                     on_excess=on_excess, seed=seed)
        self.tracker: VelocityTracker | None = None
        self.epoch = 0
        started = time.perf_counter()
        self.plan = self._initial_plan(initial, model)
        seconds = time.perf_counter() - started
        if not self.plan.fits:
            raise InputError(f"the initial plan needs {self.plan.estimate.peak_bytes} bytes, above the budget of "
                             f"{planner.budget_bytes} bytes")
        self.log: list[EpochLog] = [EpochLog(0, "initial", 0, self._selected(self.plan.update), self._total(),
                                             seconds, 0.0, 0.0, int(self.plan.estimate.peak_bytes),
                                             planner.budget_bytes, float(self.plan.objective), True,
                                             (self.plan.solver or {}).get("status"),
                                             (self.plan.solver or {}).get("seconds"))]

    # -- plans -------------------------------------------------------------------------------------
    def _initial_plan(self, initial: Any, model: nn.Module | None) -> PlanResult:
        planner = self.planner
        if isinstance(initial, PlanResult):  # re-priced here: the check must not trust another budget
            return dataclasses.replace(initial, estimate=planner.price(initial.update),
                                       budget_bytes=planner.budget_bytes, planner=planner)
        if isinstance(initial, UpdateSet):
            estimate = planner.price(initial)
            return PlanResult("given", "-", planner.budget_bytes, initial, estimate, 0.0,
                              self._selected(initial), self._total())
        if isinstance(initial, Mapping):
            return planner.plan(config=initial, model_module=model)
        if initial == "params":
            strategy = "greedy" if self.strategy == "greedy" else "ilp"
            return planner.plan(strategy=strategy, scores="params")
        if initial == "random":
            return planner.plan(strategy="random", scores="params", seed=self.seed)
        if isinstance(initial, str) and initial.startswith("config:"):
            return planner.plan(strategy=initial, model_module=model)
        raise InputError(f"unknown initial plan {initial!r}; use 'params', 'random', 'config:PATH', a config dict, "
                         "a PlanResult or an UpdateSet")

    def _group_values(self, update: UpdateSet) -> dict[str, int]:
        lc = self.planner.linear_model
        values = lc.assignment(update, self.planner.graph)
        return {g.var: values.get(g.var, 0) for g in lc.groups}

    def _selected(self, update: UpdateSet) -> int:
        return sum(self._group_values(update).values())

    def _total(self) -> int:
        return len(self.planner.linear_model.groups)

    def _changed(self, old: UpdateSet, new: UpdateSet) -> int:
        a, b = self._group_values(old), self._group_values(new)
        return sum(1 for v in a if a[v] != b[v])

    # -- the model ---------------------------------------------------------------------------------
    def compile(self, model: nn.Module, **options: Any) -> Any:
        """Compile ``model`` for the current plan (``budgetplan.compile``; ``options`` go to it) and take
        the velocity baseline (measurement 0) on the untrained model. Returns the compiled module."""
        from budgetplan.runtime.compiled import CompiledModule, compile as compile_model

        compiled = model if isinstance(model, CompiledModule) else compile_model(model, self.plan.update, **options)
        if isinstance(model, CompiledModule) and model.update != self.plan.update:
            model.set_update(self.plan.update)
        if self.scores == "velocity" and self.tracker is None:
            self._make_tracker(compiled)
            self.tracker.measure(compiled)
        return compiled

    def _make_tracker(self, model: Any) -> None:
        self.tracker = VelocityTracker(model, self.inputs, graph=self.planner.graph, **self._tracker_options)
        unknown = [layer.weight for layer in self.tracker.layers if layer.weight not in self.planner.graph.parameters]
        if unknown:
            raise InputError(f"scores for unknown parameter {unknown[0]!r}: the model is not the planner's")

    def _scores(self, compiled: Any) -> tuple[Mapping[str, Sequence[float] | float] | None, str, list[str]]:
        """(scores for the planner, source label, notes); scores ``None`` = none yet."""
        if self.strategy == "random":
            return None, "random", []
        if callable(self.scores):
            return self.scores(compiled), "user", []
        if self.scores == "grad-norm":
            from budgetplan.selection.scores import grad_norm_scores

            if hasattr(compiled, "plain"):  # a CompiledModule: rows written back, original forwards
                compiled.sync()
                with compiled.plain() as plain:
                    per_element = grad_norm_scores(plain, self.grad_batches, self.planner.graph,
                                                   loss_fn=self.loss_fn)
            else:
                per_element = grad_norm_scores(compiled, self.grad_batches, self.planner.graph, loss_fn=self.loss_fn)
            return _times_elements(per_element, self.planner), "grad-norm", []
        if self.tracker is None:  # no baseline was taken before training: this is it
            self._make_tracker(compiled)
            self.tracker.measure(compiled)
            return None, "warm-up", ["velocity baseline taken now (call compile() before training to save an epoch)"]
        report = self.tracker.measure(compiled)
        if not report.ready:
            return None, "warm-up", [f"no velocity yet (measurement {report.index}; the first comes at 2)"]
        return self.tracker.group_scores(), "velocity", []

    def step(self, model: nn.Module) -> Any:
        """After an epoch: score, re-solve, re-price, check the budget, switch the update set.

        ``model``: the compiled module being trained (a plain module is compiled with the new plan).
        Returns the compiled module; build a new optimizer from its ``trainable_parameters()``.
        Raises :class:`ReselectionError` (``on_overflow="raise"``) when the re-solved plan does not fit."""
        from budgetplan.runtime.compiled import CompiledModule, compile as compile_model

        self.epoch += 1
        notes: list[str] = []
        started = time.perf_counter()
        scores, source, score_notes = self._scores(model)
        notes += score_notes
        score_seconds = time.perf_counter() - started
        previous = self.plan
        new = previous
        kept = False
        solve_seconds = 0.0
        objective = self.log[-1].objective
        status = None
        solver_seconds = None
        if scores is not None or source == "random":
            started = time.perf_counter()
            candidate, scale = self._solve(scores)
            solve_seconds = time.perf_counter() - started
            status = (candidate.solver or {}).get("status")
            solver_seconds = (candidate.solver or {}).get("seconds")
            problem = None
            if not candidate.fits:
                problem = (f"the re-solved plan needs {candidate.estimate.peak_bytes} bytes, above the budget of "
                           f"{self.planner.budget_bytes} bytes")
            elif status is not None and status not in ("optimal", "feasible"):
                problem = f"the solver found no plan ({status})"
            if problem is not None:
                if self.on_overflow == "raise":
                    raise ReselectionError(f"epoch {self.epoch}: {problem}")
                notes.append(f"{problem}; the previous plan is kept")
                kept = True
            else:
                new = candidate
                objective = candidate.objective * scale
            notes += candidate.notes
        changed = self._changed(previous.update, new.update)
        started = time.perf_counter()
        if isinstance(model, CompiledModule):
            compiled = model
            if compiled.update != new.update:
                compiled.set_update(new.update)
        else:
            compiled = compile_model(model, new.update)
        switch_seconds = time.perf_counter() - started
        self.plan = new
        fits = new.estimate.peak_bytes <= self.planner.budget_bytes
        self.log.append(EpochLog(self.epoch, source, changed, self._selected(new.update), self._total(),
                                 solve_seconds, score_seconds, switch_seconds, int(new.estimate.peak_bytes),
                                 self.planner.budget_bytes, float(objective), fits, status, solver_seconds, kept,
                                 notes))
        return compiled

    def _solve(self, scores: Mapping[str, Sequence[float] | float] | None) -> tuple[PlanResult, float]:
        """The re-solved plan and the factor that turns its objective back into raw score units."""
        planner = self.planner
        if self.strategy == "random":
            return planner.plan(strategy="random", scores="params", seed=self.seed + self.epoch), 0.0
        normalised, scale = _normalise(scores or {})
        warm = self.plan.update if (self.warm_start and self.strategy == "ilp") else None
        saved = planner.gap, planner.time_limit
        try:
            if self.gap is not None:
                planner.gap = self.gap
            if self.time_limit is not None:
                planner.time_limit = self.time_limit
            return planner.plan(strategy=self.strategy, scores=normalised, warm_start=warm), scale
        finally:
            planner.gap, planner.time_limit = saved


def _normalise(scores: Mapping[str, Sequence[float] | float]) -> tuple[dict[str, list[float] | float], float]:
    """Scores divided by their largest value (velocities are ~1e-3: the solver's absolute tolerances are
    in objective units); returns the scaled scores and the scale to undo it."""
    values = [v for s in scores.values() for v in (s if isinstance(s, (list, tuple)) else [s])]
    for v in values:
        if not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
            raise InputError(f"scores must be non-negative numbers, got {v!r}")
    top = max(values, default=0.0)
    if top <= 0:
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in scores.items()}, 1.0
    return {k: ([x / top for x in v] if isinstance(v, (list, tuple)) else v / top) for k, v in scores.items()}, top


def _times_elements(per_element: Mapping[str, list[float] | float], planner: Planner) -> dict[str, list[float] | float]:
    """TraDy's score per element → per group (× the group's elements): the ILP maximises Σ‖∇‖, and the
    greedy's order (score / elements) is TraDy's ‖∇‖ per element."""
    groups: dict[str, list[Any]] = {}
    for g in planner.linear_model.groups:
        groups.setdefault(g.parameter, []).append(g)
    out: dict[str, list[float] | float] = {}
    for name, value in per_element.items():
        if name not in groups:
            continue
        if isinstance(value, list):
            out[name] = [v * g.elements for v, g in zip(value, groups[name])]
        else:
            out[name] = float(value) * sum(g.elements for g in groups[name])
    return out
