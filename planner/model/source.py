"""A model source loaded, traced and turned into its layer graph: the pipeline's first two steps.

``trace_source("mobilenetv2-w0.35")`` (or a file, a ``module:function`` factory, ...; see
:func:`budgetplan.model.loading.load_model`) returns a :class:`ModelGraph` that every later step prices,
plans and emits from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from budgetplan.model.graph import LayerGraph, build_layer_graph
from budgetplan.model.loading import LoadedModel, load_model
from budgetplan.model.tracing import TracedModel, TraceMethod, trace_model

__all__ = ["ModelGraph", "ModelSource", "trace_source"]

#: what a model can be given as: a zoo name, a file, ``module:function``, a module or an exported program
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
    """Load ``source`` (see :func:`budgetplan.model.loading.load_model`), trace it and build its layer graph."""
    loaded = load_model(source, input_shape=input_shape, weights=weights, trust_pickle=trust_pickle)
    traced = trace_model(loaded.module, loaded.example_inputs, method=trace, exported=loaded.exported)
    graph = build_layer_graph(traced, loaded.example_inputs, group_size=group_size)
    return ModelGraph(loaded, traced, graph)
