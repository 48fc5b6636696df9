"""The steps every command shares, as library calls: load → trace → layer graph → price.

A training script uses the same functions as the CLI::

    import budgetplan
    report = budgetplan.inspect_model(model, target="cortex-m7", input_shape=(1, 3, 128, 128))
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from budgetplan.forward import ForwardReport, forward_report
from budgetplan.graph import LayerGraph, build_layer_graph
from budgetplan.loading import LoadedModel, load_model
from budgetplan.targets import Target, load_target
from budgetplan.tracing import TracedModel, TraceMethod, trace_model
from budgetplan.units import parse_bytes

ModelSource = str | os.PathLike | nn.Module | torch.export.ExportedProgram


@dataclass
class ModelGraph:
    """A loaded model, its trace and its layer graph."""

    loaded: LoadedModel
    traced: TracedModel
    graph: LayerGraph

    @property
    def name(self) -> str:
        return self.loaded.source


def trace_source(
    source: ModelSource,
    *,
    input_shape: tuple[int, ...] | None = None,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    trace: TraceMethod = "auto",
    group_size: int = 1,
) -> ModelGraph:
    """Load ``source`` (see :func:`budgetplan.loading.load_model`), trace it and build its layer graph."""
    loaded = load_model(source, input_shape=input_shape, weights=weights, trust_pickle=trust_pickle)
    traced = trace_model(loaded.module, loaded.example_inputs, method=trace, exported=loaded.exported)
    graph = build_layer_graph(traced, loaded.example_inputs, group_size=group_size)
    return ModelGraph(loaded, traced, graph)


def resolve_target(target: str | os.PathLike | Target) -> Target:
    """A :class:`Target` object, a built-in name/alias, or a path to a target TOML file."""
    return target if isinstance(target, Target) else load_target(target)


def resolve_budget(target: Target, ram: str | int | None) -> int:
    """The byte budget: ``ram`` (``"256k"``, ``262144``) when given, else the target's usable RAM."""
    if ram is None:
        return target.usable_bytes
    return parse_bytes(str(ram)) if not isinstance(ram, int) else ram


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
