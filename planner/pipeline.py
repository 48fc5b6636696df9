"""The steps every command shares, as library calls: load → trace → layer graph → price.

A training script uses the same functions as the CLI::

    import budgetplan
    report = budgetplan.inspect_model(model, target="cortex-m7", input_shape=(1, 3, 128, 128))
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from budgetplan.errors import InputError
from budgetplan.pricing.family import PricingOptions, for_target
from budgetplan.pricing.host.exact import TrainingEstimate, estimate_host
from budgetplan.pricing.inference import ForwardReport, forward_report
from budgetplan.model.graph import LayerGraph
from budgetplan.model.source import ModelGraph, ModelSource, trace_source
from budgetplan.runtime.measure import Measurement, measure_step
from budgetplan.emit.plan_file import plan_document
from budgetplan.selection.planner import PlanResult, plan_update
from budgetplan.targets import Target, resolve_budget, resolve_target
from budgetplan.model.tracing import TraceMethod
from budgetplan.model.update_set import UpdateSet, from_plan_json, resolve_update_spec



def inspect_model(
    source: ModelSource,
    *,
    target: str | os.PathLike | Target = "host",
    ram: str | int | None = None,
    input_shape: tuple[int, ...] | None = None,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    trace: TraceMethod = "auto",
    group_size: int = 1,
) -> ForwardReport:
    """Per-layer forward costs of a model on a target (what ``budgetplan inspect`` prints)."""
    device = resolve_target(target)
    budget = resolve_budget(device, ram)
    mg = trace_source(source, input_shape=input_shape, weights=weights, trust_pickle=trust_pickle,
                      trace=trace, group_size=group_size)
    return forward_report(mg.graph, device, model=mg.name, budget_bytes=budget)


def resolve_update(model: nn.Module, spec: str | os.PathLike | UpdateSet | list[str] | None) -> UpdateSet:
    """An update set from a spec: an :class:`UpdateSet`; a path to a plan JSON (with ``update[]``) or to a
    tiny-training sparse-update config (JSON); comma-separated patterns (``"layer4.*,*.bias"``,
    ``"all"``, ``"fc.weight[0:8]"``); or a list of these (their union). See docs/update-sets.md and
    :func:`budgetplan.model.update_set.resolve_update_spec`."""
    return resolve_update_spec(model, spec)


def estimate_training(
    source: ModelSource,
    *,
    target: str | os.PathLike | Target = "host",
    update: str | os.PathLike | UpdateSet | None = None,
    optimizer: str = "sgd",
    ram: str | int | None = None,
    input_shape: tuple[int, ...] | None = None,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    trace: TraceMethod = "auto",
    group_size: int = 1,
    reorder: bool = True,
    inplace: bool = True,
    fuse_update: bool = True,
) -> TrainingEstimate:
    """Predicted memory, FLOPs and latency of one training step (what ``budgetplan estimate`` prints).
    ``reorder``, ``inplace``, ``fuse_update``: the microcontroller runtime's options (docs/cost-model.md)."""
    device = resolve_target(target)
    budget = resolve_budget(device, ram)
    mg = trace_source(source, input_shape=input_shape, weights=weights, trust_pickle=trust_pickle,
                      trace=trace, group_size=group_size)
    update_set = resolve_update(mg.loaded.module, update)
    return estimate_update(mg.graph, update_set, device, optimizer=optimizer, model=mg.name,
                           budget_bytes=budget, reorder=reorder, inplace=inplace, fuse_update=fuse_update)


def estimate_update(graph: LayerGraph, update: UpdateSet, target: Target, *, optimizer: str = "sgd",
                    model: str = "", budget_bytes: int | None = None, reorder: bool = True,
                    inplace: bool = True, fuse_update: bool = True) -> TrainingEstimate:
    """Price an update set with the target family's cost model: ``mcu`` → tiny-training conventions
    (:mod:`budgetplan.pricing.mcu.exact`), ``host`` and ``embedded-linux`` → PyTorch eager
    (:mod:`budgetplan.pricing.host.exact`). ``reorder``, ``inplace`` and ``fuse_update`` apply to the
    ``mcu`` family only."""
    options = PricingOptions(optimizer=optimizer, reorder=reorder, inplace=inplace, fuse_update=fuse_update)
    return for_target(target).estimate(graph, update, target, options, model=model, budget_bytes=budget_bytes)


@dataclass
class MeasureComparison:
    """One real host training step next to the host prediction (what ``budgetplan measure`` prints).

    ``eager`` runs the user's own ``forward``; ``traced`` runs the traced program, which frees every
    value after its last use as budgetplan's schedule does (the two differ where ``forward`` keeps
    Python locals alive). Bytes and FLOPs; errors in percent of the measured value.
    """

    model: str
    optimizer: str
    prediction: TrainingEstimate
    eager: Measurement
    traced: Measurement

    def rows(self) -> list[tuple[str, int, int, int]]:
        """(quantity, predicted, measured on the traced program, measured eager)."""
        p, t, e = self.prediction, self.traced, self.eager
        return [
            ("saved activations (bytes)", p.memory.activations, t.saved_activation_bytes, e.saved_activation_bytes),
            ("parameter gradients (bytes)", p.memory.gradients, t.gradient_bytes, e.gradient_bytes),
            ("optimizer state (bytes)", p.memory.optimizer, t.optimizer_state_bytes, e.optimizer_state_bytes),
            ("peak live bytes", p.peak_bytes, t.peak_bytes, e.peak_bytes),
            ("forward FLOPs", p.flops["forward"], t.forward_flops, e.forward_flops),
            ("backward FLOPs", p.flops["backward"], t.backward_flops, e.backward_flops),
        ]

    def to_dict(self) -> dict[str, object]:
        def err(pred: int, meas: int) -> float | None:
            return None if meas == 0 else round(100 * (pred - meas) / meas, 3)

        return {
            "model": self.model, "optimizer": self.optimizer,
            "comparison": [
                {"quantity": q, "predicted": p, "measured_traced": t, "measured_eager": e,
                 "error_pct_traced": err(p, t), "error_pct_eager": err(p, e)}
                for q, p, t, e in self.rows()
            ],
            "prediction": self.prediction.to_dict(timeline=False),
            "measured_eager": self.eager.to_dict(), "measured_traced": self.traced.to_dict(),
        }


def measure_training(
    source: ModelSource,
    *,
    update: str | os.PathLike | UpdateSet | None = None,
    optimizer: str = "sgd",
    input_shape: tuple[int, ...] | None = None,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    trace: TraceMethod = "auto",
) -> MeasureComparison:
    """Run one real training step on this computer and put it next to the host prediction."""
    host = resolve_target("host")
    mg = trace_source(source, input_shape=input_shape, weights=weights, trust_pickle=trust_pickle, trace=trace)
    update_set = resolve_update(mg.loaded.module, update)
    prediction = estimate_host(mg.graph, update_set, host, optimizer=optimizer, model=mg.name)
    inputs = mg.loaded.example_inputs
    eager = measure_step(mg.loaded.module, inputs, update_set, optimizer=optimizer)
    # the traced program holds only the parameters its forward uses
    in_program = {name for name, _ in mg.traced.graph_module.named_parameters()}
    traced_update = UpdateSet({n: c for n, c in update_set.entries.items() if n in in_program})
    traced = measure_step(mg.traced.graph_module, inputs, traced_update, optimizer=optimizer)
    return MeasureComparison(mg.name, optimizer, prediction, eager, traced)


@dataclass
class Analysis:
    """The outcome of ``budgetplan analyze``: the plan, its priced result and the plan document."""

    plan: PlanResult
    document: dict[str, object]
    model_graph: ModelGraph
    target: Target


def analyze_model(
    source: ModelSource,
    *,
    target: str | os.PathLike | Target = "cortex-m7",
    ram: str | int | None = None,
    strategy: str = "ilp",
    scores: str | dict[str, object] = "params",
    optimizer: str = "sgd",
    reorder: bool = True,
    solver: str = "auto",
    time_limit: float | None = None,
    gap: float | None = None,
    max_flops: float | None = None,
    max_latency_s: float | None = None,
    last_k: int | None = None,
    seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    trace: TraceMethod = "auto",
    group_size: int = 1,
    inplace: bool = True,
    fuse_update: bool = True,
) -> Analysis:
    """Choose what to train under the budget and price it (what ``budgetplan analyze`` does).
    ``reorder``, ``inplace``, ``fuse_update``: the microcontroller runtime's options, recorded in the plan."""
    device = resolve_target(target)
    budget = resolve_budget(device, ram)
    mg = trace_source(source, input_shape=input_shape, weights=weights, trust_pickle=trust_pickle, trace=trace,
                      group_size=group_size)
    config = None
    if strategy.startswith("config:"):
        config, strategy = strategy[len("config:"):], "config"
    plan = plan_update(mg.graph, device, budget, strategy=strategy, scores=scores, optimizer=optimizer,
                       reorder=reorder, solver=solver, time_limit=time_limit, gap=gap, max_flops=max_flops,
                       max_latency_s=max_latency_s, seed=seed, last_k=last_k, config=config,
                       model_module=mg.loaded.module, inplace=inplace, fuse_update=fuse_update)
    document = plan_document(plan, mg.graph, device, model=mg.name, optimizer=optimizer, reorder=reorder,
                             inplace=inplace, fuse_update=fuse_update)
    return Analysis(plan, document, mg, device)


@dataclass
class CheckItem:
    """One CI check: its name, whether it passed, and a one-line explanation."""

    name: str
    passed: bool
    message: str


def check_model(
    source: ModelSource,
    *,
    target: str | os.PathLike | Target = "cortex-m7",
    ram: str | int | None = None,
    plan: str | os.PathLike | None = None,
    min_update_pct: float | None = None,
    optimizer: str = "sgd",
    input_shape: tuple[int, ...] | None = None,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    trace: TraceMethod = "auto",
) -> list[CheckItem]:
    """The checks of ``budgetplan check``: inference fits; a given plan still fits this model; at least
    ``min_update_pct`` % of the parameters can be trained within the budget."""
    from budgetplan.emit.plan_file import check_fingerprint, expecting_plan_model, read_plan

    device = resolve_target(target)
    budget = resolve_budget(device, ram)
    document = read_plan(plan) if plan is not None else None
    group_size = int(document["model"].get("group_size", 1)) if document else 1
    with expecting_plan_model(document, plan or "", input_shape):  # "made for another model" before it runs
        mg = trace_source(source, input_shape=input_shape, weights=weights, trust_pickle=trust_pickle,
                          trace=trace, group_size=group_size)
    items: list[CheckItem] = []
    report = forward_report(mg.graph, device, model=mg.name, budget_bytes=budget)
    peak = report.totals.inference_peak_bytes
    items.append(CheckItem("inference", peak <= budget,
                           f"inference activation peak {peak} bytes vs budget {budget} bytes on {device.name}"))
    if document is not None:
        check_fingerprint(document, mg.graph, plan)
        update = from_plan_json(document, mg.loaded.module)
        est = estimate_update(mg.graph, update, device, optimizer=str(document.get("optimizer", optimizer)),
                              budget_bytes=budget, reorder=bool(document.get("reorder", True)),
                              inplace=bool(document.get("inplace", True)),
                              fuse_update=bool(document.get("fuse_update", True)))
        items.append(CheckItem("plan", est.peak_bytes <= budget,
                               f"training with {plan}: peak {est.peak_bytes} bytes vs budget {budget} bytes"))
    if min_update_pct is not None:
        if not 0 <= min_update_pct <= 100:
            raise InputError(f"--min-update must be a percentage in [0, 100], got {min_update_pct}")
        result = plan_update(mg.graph, device, budget, strategy="ilp", optimizer=optimizer, time_limit=60.0)
        total = sum(m.numel for m in mg.graph.parameters.values())
        trained = sum(result.estimate.trained_parameters.values())
        share = 100.0 * trained / total if total else 0.0
        items.append(CheckItem("min-update", result.fits and share >= min_update_pct,
                               f"{share:.2f} % of parameters trainable within the budget "
                               f"(required {min_update_pct:g} %)"))
    return items
