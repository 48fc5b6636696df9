"""Layer graphs of models written in a test (zoo and ``model_styles`` models: the ``traced`` fixture of
conftest.py), and the small stride-2 block that the microcontroller tests work out by hand."""

from __future__ import annotations

import torch
from torch import nn

from budgetplan.model.graph import LayerGraph, build_layer_graph
from budgetplan.model.tracing import trace_model


def layer_graph(model: nn.Module, shape: tuple[int, ...]) -> LayerGraph:
    """The layer graph of ``model`` (in the mode it is in) traced on a seeded random input of ``shape``."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return build_layer_graph(trace_model(model, (x,)), (x,))


class Stride2(nn.Module):
    """1×1 conv 3→16 → ReLU → depthwise 3×3 stride 2 → ReLU → 1×1 conv 16→32, on 1×3×16×16."""

    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 16, 1)
        self.r1 = nn.ReLU()
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.r2 = nn.ReLU()
        self.out = nn.Conv2d(16, 32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.r2(self.dw(self.r1(self.pw(x)))))
