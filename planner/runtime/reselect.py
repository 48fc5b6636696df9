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

**Several processes** (``torch.distributed`` initialised, world size > 1; docs/distributed.md): every
rank measures the velocity on the same validation batch and the per-neuron ``φ`` is averaged by one
all-reduce, so every rank has the same velocities; **rank 0 alone solves** (the initial plan and every
re-solve) and broadcasts the plan (its group decisions packed one bit per group, plus the solver's
figures, as JSON bytes: no pickle); every rank re-prices it, checks it against the budget and calls
``set_update`` at the same step. The others wait in the broadcast while rank 0 solves, so a re-solve must
end well within the process group's timeout: a time limit is always set (``time_limit``, else the
planner's, else 300 s) and one not below half the timeout is refused. Rebuilding DDP's reducer is the
caller's (:mod:`budgetplan.integrations.distributed`, the Lightning callback).

Progress and logging: every step logs one INFO line on the ``budgetplan.runtime.reselect`` logger, and
the re-solve is bracketed by records carrying ``extra={"progress": "start" | "end"}`` that a progress
display (:mod:`budgetplan.integrations.progress`) turns into a spinner; nothing is printed.

Units: bytes, seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from budgetplan.errors import BudgetplanError, InputError
from budgetplan.model.update_set import UpdateSet
from budgetplan.selection.planner import Planner, PlanResult, update_from_values
from budgetplan.selection.velocity import (
    DEFAULT_MAX_BYTES,
    VelocityTracker,
    collective_device,
    distributed_group,
)

__all__ = [
    "DISTRIBUTED_TIME_LIMIT",
    "SCORE_SOURCES",
    "STRATEGIES",
    "EpochLog",
    "ReselectionError",
    "Reselector",
    "process_group_timeout",
]

#: Built-in score sources; a callable ``f(model) -> {parameter: [score per group] | score}`` also works.
SCORE_SOURCES: tuple[str, ...] = ("velocity", "grad-norm")
#: Re-selection strategies (as in :func:`budgetplan.selection.planner.plan_update`).
STRATEGIES: tuple[str, ...] = ("ilp", "greedy", "random")

ScoreSource = str | Callable[[nn.Module], Mapping[str, Sequence[float] | float]]

#: Time limit (seconds) of rank 0's solves when several processes wait for them and neither the
#: Reselector nor the planner sets one: well below the default process-group timeouts (30 min gloo,
#: 10 min NCCL).
DISTRIBUTED_TIME_LIMIT = 300.0
_STATE_VERSION = 1

_log = logging.getLogger(__name__)


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
    # payload bytes this rank sent or received in collectives for this step (φ all-reduce + plan
    # broadcast); 0 in one process
    collective_bytes: int = 0

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
        distributed: ``None`` (default): coordinate the ranks of ``process_group`` when
            ``torch.distributed`` is initialised with several processes (module docstring); ``False``:
            every process on its own; ``True``: required. Construct the Reselector and call
            ``compile``/``step`` on every rank at the same points (they are collectives).
        process_group: the group (``None``: the default group).

    A callable ``scores`` receives **your model** (the compiled module's wrapped module, rows written
    back, its own forwards; parameters named as in ``model.named_parameters()``); on several ranks it
    runs on every rank and rank 0's scores decide.
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
        distributed: bool | None = None,
        process_group: Any = None,
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
                                     on_excess=on_excess, seed=seed, distributed=distributed,
                                     process_group=process_group)
        self.distributed = distributed
        self.process_group = process_group
        self._group = distributed_group(process_group, distributed)
        if self._group is not None:
            self._check_timeout()
        self.tracker: VelocityTracker | None = None
        self.epoch = 0
        started = time.perf_counter()
        if self._group is None or self.rank == 0:
            with self._progress("initial plan"):
                plan: PlanResult | None = self._initial_plan(initial, model)
            error = None if plan.fits else (f"the initial plan needs {plan.estimate.peak_bytes} bytes, above the "
                                            f"budget of {planner.budget_bytes} bytes")
        else:
            plan, error = None, None
        seconds = time.perf_counter() - started
        sent = 0
        if self._group is not None:
            plan, error, seconds, sent = self._share(plan, error, seconds)
        if error is not None:
            raise InputError(error)
        assert plan is not None
        self.plan = plan
        self.log: list[EpochLog] = [EpochLog(0, "initial", 0, self._selected(self.plan.update), self._total(),
                                             seconds, 0.0, 0.0, int(self.plan.estimate.peak_bytes),
                                             planner.budget_bytes, float(self.plan.objective), True,
                                             (self.plan.solver or {}).get("status"),
                                             (self.plan.solver or {}).get("seconds"), collective_bytes=sent)]
        _log.log(self._level, "initial plan: %d of %d groups, predicted peak %d of %d bytes (%.2f s)",
                  self.log[0].groups_selected, self.log[0].groups_total, self.log[0].predicted_peak_bytes,
                  planner.budget_bytes, seconds)

    # -- several processes -------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """This process's rank in the group (0 in one process)."""
        return 0 if self._group is None else self._group[1]

    @property
    def _level(self) -> int:
        """INFO on rank 0 (and in one process), DEBUG on the others: one line per epoch, not one per rank."""
        return logging.INFO if self.rank == 0 else logging.DEBUG

    @property
    def world_size(self) -> int:
        """Processes that re-select together (1 in one process)."""
        return 1 if self._group is None else self._group[2]

    def _effective_time_limit(self) -> float | None:
        return self.time_limit if self.time_limit is not None else self.planner.time_limit

    def _check_timeout(self) -> None:
        """Rank 0's solves must end well before the others' collectives time out."""
        if self._effective_time_limit() is None:
            self.time_limit = DISTRIBUTED_TIME_LIMIT
            _log.log(self._level, "several processes: rank 0's solves are limited to %.0f s (time_limit)",
                     self.time_limit)
        timeout = process_group_timeout(self.process_group)
        limit = self._effective_time_limit()
        if timeout is not None and limit is not None and limit > 0.5 * timeout:
            raise InputError(f"the solver's time limit ({limit:g} s) is not below half the process group's "
                             f"timeout ({timeout:g} s): the other ranks would time out waiting for rank 0's "
                             "solve; pass a smaller time_limit or a larger init_process_group(timeout=...)")
        if self.planner.time_limit is not None and timeout is not None and self.planner.time_limit > 0.5 * timeout:
            raise InputError(f"the planner's time limit ({self.planner.time_limit:g} s, used for the initial plan) "
                             f"is not below half the process group's timeout ({timeout:g} s)")

    def _encode(self, plan: PlanResult) -> dict[str, Any]:
        """A plan as JSON-able data: the group decisions packed one bit per group when they describe it
        exactly (the planner's plans), else the update set itself."""
        lc = self.planner.linear_model
        values = self._group_values(plan.update)
        decoded = update_from_values(lc, values, self.planner.graph)
        if decoded == plan.update:
            bits = bytearray((len(lc.groups) + 7) // 8)
            for i, g in enumerate(lc.groups):
                if values[g.var]:
                    bits[i // 8] |= 1 << (i % 8)
            update: dict[str, Any] = {"bits": bits.hex()}
        else:
            update = {"entries": plan.update.to_json()["update"]}
        return {"update": update, "strategy": plan.strategy, "scores": plan.scores, "objective": plan.objective,
                "groups_selected": plan.groups_selected, "groups_total": plan.groups_total,
                "solver": plan.solver, "bound_peak_bytes": plan.bound_peak_bytes, "notes": list(plan.notes),
                "peak_bytes": int(plan.estimate.peak_bytes)}

    def _decode(self, data: Mapping[str, Any]) -> PlanResult:
        """Inverse of :meth:`_encode`, re-priced here (every rank checks the budget itself)."""
        lc = self.planner.linear_model
        if "bits" in data["update"]:
            bits = bytes.fromhex(data["update"]["bits"])
            values = {g.var: (bits[i // 8] >> (i % 8)) & 1 for i, g in enumerate(lc.groups)}
            update = update_from_values(lc, values, self.planner.graph)
        else:
            update = UpdateSet.from_json({"update": data["update"]["entries"]})
        estimate = self.planner.price(update)
        if "peak_bytes" in data and int(estimate.peak_bytes) != int(data["peak_bytes"]):
            raise ReselectionError(f"this process prices the plan at {estimate.peak_bytes} bytes, rank 0 at "
                                   f"{data['peak_bytes']}: the ranks do not share the model or the cost model")
        return PlanResult(data["strategy"], data["scores"], self.planner.budget_bytes, update, estimate,
                          float(data["objective"]), int(data["groups_selected"]), int(data["groups_total"]),
                          solver=data["solver"], bound_peak_bytes=data["bound_peak_bytes"],
                          notes=list(data["notes"]), planner=self.planner)

    def _broadcast(self, payload: dict[str, Any] | None) -> tuple[dict[str, Any], int]:
        """Rank 0's JSON payload on every rank (length, then UTF-8 bytes); returns it and the bytes moved."""
        import torch.distributed as dist

        group = self.process_group
        device = collective_device(group)
        src = dist.get_global_rank(group, 0) if group is not None else 0
        raw = json.dumps(payload).encode() if self.rank == 0 else b""
        size = torch.tensor([len(raw)], dtype=torch.int64, device=device)
        if self.rank != 0:
            _log.debug("rank %d: waiting for rank 0's plan", self.rank)
        dist.broadcast(size, src=src, group=group)
        n = int(size.item())
        buffer = (torch.frombuffer(bytearray(raw), dtype=torch.uint8) if self.rank == 0
                  else torch.empty(n, dtype=torch.uint8)).to(device)
        dist.broadcast(buffer, src=src, group=group)
        data = payload if self.rank == 0 else json.loads(bytes(buffer.cpu().tolist()).decode())
        return data, 8 + n  # type: ignore[return-value]

    def _share(self, plan: PlanResult | None, error: str | None,
               seconds: float) -> tuple[PlanResult | None, str | None, float, int]:
        """Rank 0's plan (or its error) and solve seconds, on every rank."""
        payload = None
        if self.rank == 0:
            payload = {"error": error, "seconds": seconds, "plan": None if plan is None else self._encode(plan)}
        data, moved = self._broadcast(payload)
        if self.rank == 0 or data["plan"] is None:
            return plan, data["error"], float(data["seconds"]), moved
        return self._decode(data["plan"]), data["error"], float(data["seconds"]), moved

    def _progress(self, what: str) -> Any:
        """Log records around a solve that a progress display turns into a spinner (no output itself)."""
        limit = self._effective_time_limit()
        return _ProgressRecords(f"{what}: solving ({self.strategy}, {self._total()} groups"
                                f"{f', time limit {limit:g} s' if limit else ''})")

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
        from budgetplan.runtime.compiled import CompiledModule
        from budgetplan.runtime.compiled import compile as compile_model

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
            if hasattr(compiled, "plain") and hasattr(compiled, "set_update"):  # a CompiledModule: your model
                compiled.sync()
                with compiled.plain() as plain:
                    return self.scores(plain), "user", []
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
        Raises :class:`ReselectionError` (``on_overflow="raise"``) when the re-solved plan does not fit.
        On several ranks, call it on every rank after the same epoch (module docstring)."""
        from budgetplan.runtime.compiled import CompiledModule
        from budgetplan.runtime.compiled import compile as compile_model

        self.epoch += 1
        started = time.perf_counter()
        measured = self.tracker.measurements if self.tracker is not None else 0
        scores, source, score_notes = self._scores(model)
        score_seconds = time.perf_counter() - started
        reduced = 0
        if self.tracker is not None and self.tracker.measurements > measured:
            reduced = self.tracker.history[-1].reduced_bytes
        previous = self.plan
        moved = 0
        if self._group is None or self.rank == 0:
            decision = self._decide(scores, source)
        else:
            decision = None
        if self._group is not None:
            payload = None
            if decision is not None:
                payload = {**decision, "plan": None if decision["plan"] is None else self._encode(decision["plan"])}
            data, moved = self._broadcast(payload)
            if self.rank != 0:
                decision = {**data, "plan": None if data["plan"] is None else self._decode(data["plan"])}
        assert decision is not None
        if decision["error"] is not None:
            raise ReselectionError(decision["error"])
        new = previous if decision["plan"] is None else decision["plan"]
        notes = score_notes + list(decision["notes"])
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
        objective = self.log[-1].objective if decision["objective"] is None else float(decision["objective"])
        log = EpochLog(self.epoch, source, changed, self._selected(new.update), self._total(),
                       float(decision["seconds"]), score_seconds, switch_seconds, int(new.estimate.peak_bytes),
                       self.planner.budget_bytes, objective, fits, decision["status"], decision["solver_seconds"],
                       bool(decision["kept"]), notes, reduced + moved)
        self.log.append(log)
        _log.log(self._level, "epoch %d (%s): %d groups changed, %d of %d selected, predicted peak %d of %d bytes, "
                  "solve %.2f s, scores %.2f s%s", log.epoch, log.source, log.groups_changed, log.groups_selected,
                  log.groups_total, log.predicted_peak_bytes, log.budget_bytes, log.solve_seconds,
                  log.score_seconds, f"; {'; '.join(notes)}" if notes else "")
        return compiled

    def _decide(self, scores: Mapping[str, Sequence[float] | float] | None, source: str) -> dict[str, Any]:
        """Solve (when there are scores, or for the random strategy), re-price and check: the new plan
        (``None``: keep the current one), the log's figures, and an error to raise on every rank."""
        out: dict[str, Any] = {"plan": None, "kept": False, "notes": [], "objective": None, "status": None,
                               "solver_seconds": None, "seconds": 0.0, "error": None}
        if scores is None and source != "random":
            return out
        started = time.perf_counter()
        with self._progress(f"epoch {self.epoch}"):
            candidate, scale = self._solve(scores)
        out["seconds"] = time.perf_counter() - started
        out["status"] = (candidate.solver or {}).get("status")
        out["solver_seconds"] = (candidate.solver or {}).get("seconds")
        problem = None
        if not candidate.fits:
            problem = (f"the re-solved plan needs {candidate.estimate.peak_bytes} bytes, above the budget of "
                       f"{self.planner.budget_bytes} bytes")
        elif out["status"] is not None and out["status"] not in ("optimal", "feasible"):
            problem = f"the solver found no plan ({out['status']})"
        if problem is not None:
            if self.on_overflow == "raise":
                out["error"] = f"epoch {self.epoch}: {problem}"
                return out
            out["notes"].append(f"{problem}; the previous plan is kept")
            out["kept"] = True
        else:
            out["plan"] = candidate
            out["objective"] = candidate.objective * scale
        out["notes"] += candidate.notes
        return out

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


    # -- saving and restoring ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The plan in use, the log and the velocity history: what a resumed run needs to continue with the
        same update set and the same next velocity. Numbers, strings, lists, dicts and tensors only
        (``torch.load(weights_only=True)`` reads it)."""
        plan = self.plan
        return {"version": _STATE_VERSION, "epoch": self.epoch, "budget_bytes": self.planner.budget_bytes,
                "groups_total": self._total(),
                "plan": {"update": plan.update.to_json()["update"], "strategy": plan.strategy,
                         "scores": plan.scores, "objective": float(plan.objective),
                         "groups_selected": int(plan.groups_selected), "groups_total": int(plan.groups_total),
                         "solver": json.loads(json.dumps(plan.solver)), "bound_peak_bytes": plan.bound_peak_bytes,
                         "notes": list(plan.notes)},
                "log": [dataclasses.asdict(entry) for entry in self.log],
                "tracker": None if self.tracker is None else self.tracker.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], model: Any = None) -> None:
        """Restore :meth:`state_dict` (the plan is re-priced here). ``model``: the compiled module being
        trained; it is switched to the restored plan (``set_update``) and, for velocity scores, the
        tracker is made on it when there is none yet. Call it on every rank with the same state."""
        try:
            if state["version"] != _STATE_VERSION:
                raise InputError(f"unknown re-selection state version {state['version']!r}")
            if state["budget_bytes"] != self.planner.budget_bytes or state["groups_total"] != self._total():
                raise InputError(f"the saved re-selection was made for another model or budget "
                                 f"({state['groups_total']} groups, {state['budget_bytes']} bytes; here "
                                 f"{self._total()} groups, {self.planner.budget_bytes} bytes)")
            saved = state["plan"]
            update = UpdateSet.from_json({"update": saved["update"]})
            log = [EpochLog(**entry) for entry in state["log"]]
            epoch = int(state["epoch"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"malformed re-selection state ({type(exc).__name__}: {exc})") from None
        plan = PlanResult(saved["strategy"], saved["scores"], self.planner.budget_bytes, update,
                          self.planner.price(update), float(saved["objective"]), int(saved["groups_selected"]),
                          int(saved["groups_total"]), solver=saved["solver"],
                          bound_peak_bytes=saved["bound_peak_bytes"], notes=list(saved["notes"]),
                          planner=self.planner)
        if model is not None and hasattr(model, "set_update") and model.update != update:
            model.set_update(update)
        if state["tracker"] is not None:
            if self.tracker is None:
                if model is None:
                    raise InputError("restoring a velocity history needs the model: load_state_dict(state, model)")
                self._make_tracker(model)
            assert self.tracker is not None
            self.tracker.load_state_dict(state["tracker"])
        self.plan, self.log, self.epoch = plan, log, epoch
        _log.log(self._level, "restored re-selection after epoch %d: %d of %d groups", epoch,
                 log[-1].groups_selected, log[-1].groups_total)

    def to(self, device: torch.device | str) -> Reselector:
        """Move the validation (and gradient-norm) batches to ``device``, where the model now is."""
        self.inputs = self.inputs.to(device) if isinstance(self.inputs, torch.Tensor) else self.inputs
        self.targets = self.targets.to(device) if isinstance(self.targets, torch.Tensor) else self.targets
        if self.grad_batches is not None:
            self.grad_batches = [(x.to(device), y.to(device)) for x, y in self.grad_batches]
        if self.tracker is not None:
            self.tracker.inputs = tuple(t.to(device) for t in self.tracker.inputs)
        return self


class _ProgressRecords:
    """Brackets a solve with two INFO records (``extra={"progress": "start" | "end"}``) that a progress
    display (:class:`budgetplan.integrations.progress.RichProgressHandler`) turns into a spinner with the
    elapsed time; other handlers print them as ordinary lines."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.started = 0.0

    def __enter__(self) -> _ProgressRecords:
        self.started = time.perf_counter()
        _log.info("%s", self.message, extra={"progress": "start"})
        return self

    def __exit__(self, *exc: object) -> None:
        _log.info("%s: solved in %.2f s", self.message.split(":")[0], time.perf_counter() - self.started,
                  extra={"progress": "end"})


def process_group_timeout(process_group: Any = None) -> float | None:
    """Seconds a collective of ``process_group`` waits before it fails (``init_process_group(timeout=)``),
    or ``None`` when torch does not say."""
    import torch.distributed as dist

    try:
        group = process_group if process_group is not None else dist.group.WORLD
        backend = group._get_backend(collective_device(process_group))
        return float(backend.options._timeout.total_seconds())
    except Exception:  # noqa: BLE001 - a private API: absent or changed in another torch version
        return None


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
