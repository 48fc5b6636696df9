"""The ILP's linear bound of the microcontroller cost model: an upper bound for every update set, and tight.

Random update sets (random neuron groups of random parameters, from a few to all) on zoo models with
depthwise convs at stride 1 and 2 and residual additions, under every combination of the runtime's
switches: the bound's value at each point of the schedule is at least the exact model's live bytes at
that point, so the bound's peak is at least the exact peak. On tiny-training's published schemes (the
typical sets) the two agree within 1 %.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

from budgetplan.model import zoo
from budgetplan.model.graph import build_layer_graph
from budgetplan.model.tracing import trace_model
from budgetplan.model.update_set import UpdateSet, from_sparse_update_config
from budgetplan.pricing.mcu.bound import linear_cost_mcu
from budgetplan.pricing.mcu.exact import estimate_mcu, mcu_layout
from budgetplan.targets import load_target

M7 = load_target("cortex-m7")
OPTIONS = [dict(zip(("reorder", "inplace", "fuse_update"), flags))
           for flags in itertools.product((True, False), repeat=3)]


def _random_update(model_groups, rng: random.Random) -> UpdateSet:
    share = rng.choice([0.01, 0.05, 0.2, 0.5, 1.0])
    entries: dict[str, set[int] | None] = {}
    for g in model_groups:
        if rng.random() >= share:
            continue
        if g.whole:
            entries[g.parameter] = None
        elif entries.setdefault(g.parameter, set()) is not None:
            entries[g.parameter].update(range(g.start, g.stop))  # type: ignore[union-attr]
    return UpdateSet({k: None if v is None else tuple(sorted(v)) for k, v in entries.items()})


class PaddedBlocks(nn.Module):
    """TensorFlow-style explicit padding before each conv (folded into the kernels), a stride-2 and a
    stride-1 depthwise conv, a residual addition and ReLU6, on 1×3×32×32."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2)
        self.dw1 = nn.Conv2d(16, 16, 3, stride=2, groups=16)
        self.pw1 = nn.Conv2d(16, 16, 1)
        self.dw2 = nn.Conv2d(16, 16, 3, groups=16)
        self.pw2 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = nn.functional.pad
        x = nn.functional.relu6(self.stem(pad(x, (0, 1, 0, 1))))
        x = self.pw1(nn.functional.relu6(self.dw1(pad(x, (0, 1, 0, 1)))))
        x = x + self.pw2(nn.functional.relu6(self.dw2(pad(x, (1, 1, 1, 1)))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(("name", "shape", "sets"), [
    ("mobilenetv2-w0.35", (1, 3, 48, 48), 6),  # stride-2 depthwise, residuals, BatchNorm fused
    ("mcunet-5fps-tt", (1, 3, 64, 64), 6),  # kernels 3/5/7, biases, no BatchNorm
    ("resnet18", (1, 3, 64, 64), 3),  # additions after ReLU-free branches, no depthwise
    ("padded", (1, 3, 32, 32), 8),  # explicit padding folded into the convs
])
def test_bound_is_an_upper_bound_at_every_point(name: str, shape: tuple[int, ...], sets: int) -> None:
    model = PaddedBlocks() if name == "padded" else zoo.build(name, num_classes=10)[0]
    x = torch.randn(shape)
    # traced here: the zoo models get a 10-class head (not the fixture's), "padded" is not a zoo model
    graph = build_layer_graph(trace_model(model, (x,)), (x,), group_size=8)
    layout = mcu_layout(graph, M7)
    rng = random.Random(name)
    for options in OPTIONS:
        bound = linear_cost_mcu(graph, M7, layout=layout, **options)
        for _ in range(sets):
            update = _random_update(bound.groups, rng)
            exact = estimate_mcu(graph, update, M7, layout=layout, **options)
            points = dict(bound.evaluate(bound.assignment(update, graph)))
            for p in exact.timeline:
                label = f"{p.phase}:{p.label}"
                if label == "step:optimizer step":
                    label = "step:end of step"
                assert points[label] >= p.live_bytes, (name, options, label, points[label], p.live_bytes)
            assert max(points.values()) >= exact.peak_bytes


@pytest.fixture(scope="module")
def mcunet_tt(traced):
    t = traced("mcunet-5fps-tt")
    return t.model, t.graph


@pytest.mark.parametrize("label", ["49kb", "74kb", "99kb", "124kb", "148kb"])
def test_bound_is_tight_on_tiny_trainings_schemes(mcunet_tt, label: str) -> None:
    model, graph = mcunet_tt
    update = from_sparse_update_config(f"tt:mcunet-5fps/{label}", model)
    bound = linear_cost_mcu(graph, M7)
    exact = estimate_mcu(graph, update, M7).peak_bytes
    peak = bound.peak(bound.assignment(update, graph))
    assert exact <= peak <= 1.01 * exact
