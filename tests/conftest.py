"""Shared fixtures: the test folder importable (tests/model_styles.py, tests/cli_support.py, ...), rich
output wide, and the models and traced layer graphs that many tests use, built once per session.

``traced("tinycnn")`` (or a ``model_styles`` name, optionally ``shape=`` and ``group_size=``) returns a
:class:`Traced`: a fresh, seeded copy of the model (tests may change it), an example input and the layer
graph traced from it in train mode (the graph is shared: treat it as read-only).
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("COLUMNS", "200")


@dataclass
class Traced:
    model: object  # torch.nn.Module, a fresh copy per call
    x: object  # torch.Tensor, the example input the graph was traced with
    graph: object  # budgetplan.model.graph.LayerGraph, shared: read-only


def _build(name: str, shape: tuple[int, ...] | None) -> tuple[object, tuple[int, ...]]:
    from model_styles import STYLE_MODELS

    from budgetplan.model import zoo

    if name in STYLE_MODELS:
        model, default = STYLE_MODELS[name]()
    else:
        model, entry = zoo.build(name)
        default = tuple(entry.input_shape)
    return model, tuple(shape or default)


_CACHE: dict[tuple, tuple[object, object, object]] = {}


@pytest.fixture(scope="session")
def traced() -> Callable[..., Traced]:
    """``traced(name, shape=None, group_size=1)`` -> :class:`Traced` (zoo or model_styles names)."""
    import torch

    from budgetplan.model.graph import build_layer_graph
    from budgetplan.model.tracing import trace_model

    def get(name: str, shape: tuple[int, ...] | None = None, group_size: int = 1) -> Traced:
        key = (name, shape, group_size)
        if key not in _CACHE:
            model, full_shape = _build(name, shape)
            x = torch.randn(full_shape, generator=torch.Generator().manual_seed(0))
            graph = build_layer_graph(trace_model(model, (x,)), (x,), group_size=group_size)
            _CACHE[key] = (model, x, graph)
        model, x, graph = _CACHE[key]
        return Traced(copy.deepcopy(model), x.clone(), graph)

    return get
