"""The modes a model trains in, and the layer graph traced in those modes.

A compiled module (:mod:`budgetplan.runtime.compiled`) trains with the model in train mode and BatchNorm
as its policy says (``frozen``: running statistics, eval mode; ``train``: batch statistics). Pricing and
planning must trace the model in the same modes, or they price another step (BatchNorm in train mode
saves its input and statistics). This module is the one place that says what those modes are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from budgetplan.errors import InputError

if TYPE_CHECKING:
    from budgetplan.model.graph import LayerGraph

__all__ = ["BATCHNORM_POLICIES", "BatchNormPolicy", "as_inputs", "check_batchnorm", "graph_in_training_modes",
           "training_modes"]

BatchNormPolicy = Literal["frozen", "train"]
#: ``frozen``: BatchNorm uses its running statistics (eval mode); ``train``: batch statistics
BATCHNORM_POLICIES: tuple[str, ...] = ("frozen", "train")


def check_batchnorm(batchnorm: str) -> None:
    """Refuse an unknown BatchNorm policy in one line."""
    if batchnorm not in BATCHNORM_POLICIES:
        raise InputError(f"unknown batchnorm policy {batchnorm!r}; use one of: {', '.join(BATCHNORM_POLICIES)}")


def as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """A tensor or a tuple/list of tensors as a tuple of tensors (anything else: :class:`InputError`)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise InputError("example inputs must be a tensor or a tuple of tensors")


@contextmanager
def training_modes(model: nn.Module, batchnorm: str) -> Iterator[nn.Module]:
    """``model`` in train mode with BatchNorm layers as ``batchnorm`` says (``frozen``: eval), for pricing
    the step that a compiled module runs; every module's flag is restored afterwards."""
    flags = {m: m.training for m in model.modules()}
    try:
        nn.Module.train(model, True)
        if batchnorm == "frozen":
            for m in model.modules():
                if isinstance(m, _BatchNorm):
                    nn.Module.train(m, False)
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def graph_in_training_modes(model: nn.Module, example_inputs: Any, *, batchnorm: str = "frozen",
                            group_size: int = 1) -> LayerGraph:
    """Trace ``model`` in the modes a compiled module trains in and build its layer graph.

    The inputs are copied first: a slice of a larger tensor (``x[:1]``) would otherwise be priced with its
    whole storage."""
    from budgetplan.model.graph import build_layer_graph
    from budgetplan.model.tracing import trace_model

    check_batchnorm(batchnorm)
    inputs = tuple(t.detach().clone() for t in as_inputs(example_inputs))
    with training_modes(model, batchnorm):
        return build_layer_graph(trace_model(model, inputs), inputs, group_size=group_size)
