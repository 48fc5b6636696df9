"""The microcontroller cost model (tiny-training conventions), checked against hand computations.

No PyTorch measurement can check an int8 runtime's memory; every expected number here is computed in
the test from the model's shapes and the conventions of Lin et al. 2022 (docs/cost-model.md): int8
activations, 1-bit ReLU masks, conv inputs kept only for trained weights (depthwise: trained channels
only), BatchNorm and ReLU fused into the conv, frozen weights in flash, fp32 gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from budgetplan.model import zoo
from budgetplan.pricing.mcu.exact import estimate_mcu
from budgetplan.pricing.inference import forward_report
from budgetplan.model.graph import build_layer_graph
from budgetplan.targets import load_target
from budgetplan.model.tracing import trace_model
from budgetplan.model.update_set import UpdateSet, from_patterns, from_sparse_update_config

M7 = load_target("cortex-m7")


class Tiny(nn.Module):
    """conv 3→8 (3×3) → BN → ReLU → depthwise 3×3 → BN → ReLU → global pool → linear 8→4, on 1×3×8×8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv(x)))
        x = self.relu2(self.bn2(self.dw(x)))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def tiny():
    model = Tiny()
    x = torch.randn(1, 3, 8, 8)
    return model, build_layer_graph(trace_model(model, (x,)), (x,))


PLANE = 8 * 8 * 8  # elements of one 8-channel 8×8 activation


def test_classifier_only_keeps_its_input(tiny) -> None:
    model, graph = tiny
    est = estimate_mcu(graph, from_patterns(model, ["fc.weight"]), M7)
    assert est.memory.activations == 8  # the pooled 8-vector, int8
    assert est.memory.weights == 4 * 8  # int8 weight in SRAM; everything else stays in flash
    assert est.memory.gradients == 4 * 8 * 4  # fp32
    assert est.backward_layers == ["fc"]


def test_partial_depthwise_keeps_only_selected_channels_and_relu_masks(tiny) -> None:
    model, graph = tiny
    est = estimate_mcu(graph, from_patterns(model, ["dw.weight[0:2]"]), M7)
    # dw input for 2 of 8 channels (int8) + a 1-bit mask of relu2's output (the gradient passes it)
    assert est.memory.activations == PLANE * 2 // 8 + PLANE // 8
    assert est.memory.weights == 2 * 9  # two 1×3×3 int8 filters
    assert est.memory.gradients == 2 * 9 * 4


def test_bias_only_keeps_masks_but_no_conv_inputs(tiny) -> None:
    model, graph = tiny
    est = estimate_mcu(graph, from_patterns(model, ["conv.bias"]), M7)
    assert est.memory.activations == 2 * (PLANE // 8)  # relu1 and relu2 masks, nothing else
    assert est.memory.weights == 8 * 4  # int32 biases
    full_weight = estimate_mcu(graph, from_patterns(model, ["conv.weight"]), M7)
    assert full_weight.memory.activations == 3 * 8 * 8 + 2 * (PLANE // 8)  # + the int8 input image


def test_fused_inference_peak(tiny) -> None:
    model, graph = tiny
    # BN and ReLU write into the conv's buffer: the peak is while the depthwise conv reads one 8×8×8
    # buffer and writes another (the input image is dead by then): 2 × 512 bytes.
    assert forward_report(graph, M7).totals.inference_peak_bytes == 2 * PLANE
    # On the host every op writes a new fp32 buffer, two of them live at a time (input and output)
    assert forward_report(graph, load_target("host")).totals.inference_peak_bytes == 2 * PLANE * 4


def test_reordering_frees_each_gradient_after_its_update(tiny) -> None:
    model, graph = tiny
    update = UpdateSet.full(model)
    reordered = estimate_mcu(graph, update, M7, reorder=True)
    eager = estimate_mcu(graph, update, M7, reorder=False)
    assert eager.peak_bytes > reordered.peak_bytes
    # with reordering no point holds more weight gradients than the largest layer's
    largest = max(p.numel() for p in model.parameters() if p.dim() > 1) * 4
    for point in reordered.timeline:
        if point.phase == "backward":
            assert point.breakdown.gradients <= largest + 2 * 3 * 8 * 8 * 4 + PLANE * 4 * 2


def test_frozen_model_costs_no_training_memory(tiny) -> None:
    model, graph = tiny
    est = estimate_mcu(graph, UpdateSet.none(), M7)
    assert est.memory.weights == est.memory.gradients == est.memory.activations == 0
    assert est.backward_layers == [] and est.flops["backward"] == 0
    assert est.peak_bytes == forward_report(graph, M7).totals.inference_peak_bytes


def test_tiny_training_ladder_shape() -> None:
    """full update > sparse update > sparse update with reordering (the shape of Lin et al.'s ladder)."""
    model, _ = zoo.build("mobilenetv2-w0.35", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    graph = build_layer_graph(trace_model(model, (x,)), (x,))
    sparse = from_sparse_update_config({"n_bias_update": 20, "manual_weight_idx": [36, 39, 42, 45, 48],
                                        "weight_update_ratio": [1, 1, 0.5, 0.5, 0.25]}, model)
    full = estimate_mcu(graph, UpdateSet.full(model), M7, reorder=False).peak_bytes
    sparse_eager = estimate_mcu(graph, sparse, M7, reorder=False).peak_bytes
    sparse_reordered = estimate_mcu(graph, sparse, M7, reorder=True).peak_bytes
    assert full > 3 * sparse_eager
    assert sparse_eager > sparse_reordered
