"""The microcontroller cost model (TinyEngine's runtime), checked rule by rule against hand computations.

No PyTorch measurement can check an int8 runtime's memory. Every expected number here is computed in
the test from the model's shapes and TinyEngine's rules as ../shared/BRIEF.md §7 states them (int8
activations, BatchNorm/ReLU fused into the conv, in-place depthwise convs with the stride-2 quarter
rule, in-place stride-1 depthwise backward, 1-bit masks, whole int8 inputs of trained convs, trained
weights int8 and biases int32 in SRAM, fp32 gradients, fused update, im2col and kernel buffers on top
of the arena, 4-byte rounding) and the kernel buffer sizes of TinyEngine's code generator
(``get_sbuf_size``/``get_kbuf_size``): never from the code under test.
"""

from __future__ import annotations

import pytest
import torch
from graph_support import Stride2, layer_graph
from torch import nn

from budgetplan.model.update_set import UpdateSet, from_patterns, from_sparse_update_config
from budgetplan.pricing.inference import forward_report
from budgetplan.pricing.mcu.exact import estimate_mcu, mcu_layout
from budgetplan.targets import load_target

M7 = load_target("cortex-m7")
NO_TRICKS = {"reorder": False, "inplace": False, "fuse_update": False}


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
    return model, layer_graph(model, (1, 3, 8, 8))


PLANE = 8 * 8 * 8  # elements (= int8 bytes) of one 8-channel 8×8 activation
# TinyEngine's kernel buffers for Tiny: conv 3×3 stride 1 over 3 channels: im2col 3·3·3·2·2 = 108 B (no kernel
# buffer: only the 3×3 stride-2 kernel takes one); depthwise in place: 2·(8+2)·(8+2) = 200 B, not in place
# 2·3·3·8 = 144 B.
TINY_SCRATCH_INPLACE = 200
TINY_SCRATCH_NO_INPLACE = 144


def point(est, label: str):
    return next(p for p in est.timeline if f"{p.phase}:{p.label}" == label)


def test_classifier_only_keeps_its_input_and_trains_int8_weights(tiny) -> None:
    model, graph = tiny
    est = estimate_mcu(graph, from_patterns(model, ["fc.weight"]), M7)
    assert est.memory.activations == 8  # the pooled 8-vector, int8
    assert est.memory.weights == 4 * 8  # int8 weight in SRAM; everything else stays in flash
    assert est.memory.gradients == 4 * 8 * 4  # the fp32 gradient it computes...
    assert not [t for t in est.device_tensors if t.kind == "weight_gradient"]  # ...fused into the update
    unfused = estimate_mcu(graph, from_patterns(model, ["fc.weight"]), M7, fuse_update=False)
    assert [t.nbytes for t in unfused.device_tensors if t.kind == "weight_gradient"] == [4 * 8 * 4]
    assert est.backward_layers == ["fc"]


def test_partially_trained_depthwise_keeps_its_whole_int8_input(tiny) -> None:
    model, graph = tiny
    est = estimate_mcu(graph, from_patterns(model, ["dw.weight[0:2]"]), M7)
    # the whole int8 input (all 8 channels, not 2) + a 1-bit mask of relu2's output
    assert est.memory.activations == PLANE + PLANE // 8
    assert est.memory.weights == 20  # two 1×3×3 int8 filters = 18 bytes, rounded up to 4


def test_bias_only_keeps_masks_but_no_conv_inputs(tiny) -> None:
    model, graph = tiny
    est = estimate_mcu(graph, from_patterns(model, ["conv.bias"]), M7)
    assert est.memory.activations == 2 * (PLANE // 8)  # relu1 and relu2 masks, nothing else
    assert est.memory.weights == 8 * 4  # int32 biases
    full_weight = estimate_mcu(graph, from_patterns(model, ["conv.weight"]), M7)
    assert full_weight.memory.activations == 3 * 8 * 8 + 2 * (PLANE // 8)  # + the int8 input image


def test_inference_peak_inplace_depthwise_and_kernel_buffers(tiny) -> None:
    _, graph = tiny
    # conv: image (192 B) + its output (512 B); the depthwise conv writes into its input's block (512 B)
    assert forward_report(graph, M7).totals.inference_peak_bytes == 192 + PLANE + TINY_SCRATCH_INPLACE
    frozen = estimate_mcu(graph, UpdateSet.none(), M7)
    assert frozen.peak_bytes == 192 + PLANE + TINY_SCRATCH_INPLACE
    assert frozen.scratch == {"im2col": 200, "kernel": 0}
    # without in-place the depthwise conv holds its input and output: 2 × 512 B
    no_inplace = estimate_mcu(graph, UpdateSet.none(), M7, inplace=False)
    assert no_inplace.peak_bytes == 2 * PLANE + TINY_SCRATCH_NO_INPLACE
    assert no_inplace.peak_at == "forward:dw"


def test_stride2_inplace_reuses_all_but_a_quarter() -> None:
    model = Stride2()
    graph = layer_graph(model, (1, 3, 16, 16))
    est = estimate_mcu(graph, UpdateSet.none(), M7)
    block = 16 * 16 * 16  # the pointwise output, int8
    # after the stride-2 depthwise conv its block keeps a quarter (16×8×8); the last conv's output fits beside
    assert point(est, "forward:dw").breakdown.activations == block
    assert point(est, "forward:out").breakdown.activations == block // 4 + 32 * 8 * 8
    no_inplace = estimate_mcu(graph, UpdateSet.none(), M7, inplace=False)
    assert point(no_inplace, "forward:dw").breakdown.activations == block + block // 4
    # im2col: 1×1 convs 1·1·C_in·4 (3 → 12 B, 16 → 64 B); depthwise in place 2·18·18 = 648 B; no kernel buffer
    assert est.scratch == {"im2col": 648, "kernel": 0}
    assert no_inplace.scratch == {"im2col": 2 * 9 * 16, "kernel": 0}


def test_stride1_depthwise_backward_runs_in_place_unless_its_weight_trains(tiny) -> None:
    model, graph = tiny
    grad = PLANE * 4  # fp32 gradient of one 8×8×8 activation
    est = estimate_mcu(graph, from_patterns(model, ["conv.bias"]), M7)
    # at the depthwise conv's backward only its output gradient's block holds gradients
    assert point(est, "backward:dw").breakdown.gradients == grad
    off = estimate_mcu(graph, from_patterns(model, ["conv.bias"]), M7, inplace=False)
    assert point(off, "backward:dw").breakdown.gradients == 2 * grad
    # when the depthwise weight trains too, its update reads the output gradient: no in-place backward
    both = estimate_mcu(graph, from_patterns(model, ["conv.bias", "dw.weight"]), M7)
    assert point(both, "backward:dw").breakdown.gradients == 2 * grad
    assert point(both, "backward:dw (weight update)").breakdown.gradients == 2 * grad


def test_fused_update_has_no_gradient_buffer_reorder_frees_each(tiny) -> None:
    model, graph = tiny
    update = from_patterns(model, ["conv.weight", "fc.weight"])
    conv_grad, fc_grad = 8 * 3 * 9 * 4, 4 * 8 * 4
    fused = estimate_mcu(graph, update, M7)
    assert not [t for t in fused.device_tensors if t.kind in ("weight_gradient", "bias_gradient")]
    reordered = estimate_mcu(graph, update, M7, fuse_update=False)
    assert point(reordered, "backward:conv (weight update)").breakdown.gradients - point(fused, "backward:conv (weight update)").breakdown.gradients \
        == conv_grad  # the buffer exists while its update runs
    assert point(reordered, "step:end of step").breakdown.gradients == 0
    eager = estimate_mcu(graph, update, M7, reorder=False)
    assert point(eager, "step:optimizer step").breakdown.gradients == conv_grad + fc_grad
    assert eager.peak_bytes > reordered.peak_bytes >= fused.peak_bytes


def test_frozen_model_costs_no_training_memory(tiny) -> None:
    _, graph = tiny
    est = estimate_mcu(graph, UpdateSet.none(), M7)
    assert est.memory.weights == est.memory.gradients == est.memory.activations == 0
    assert est.backward_layers == [] and est.flops["backward"] == 0
    assert est.peak_bytes == forward_report(graph, M7).totals.inference_peak_bytes


def test_every_rule_is_named_with_its_switch(tiny) -> None:
    _, graph = tiny
    est = estimate_mcu(graph, UpdateSet.none(), M7, inplace=False, fuse_update=True, reorder=False)
    rules = {r["name"]: r["enabled"] for r in est.rules}
    assert set(rules) == {"int8-activations", "inplace-depthwise-forward", "inplace-depthwise-backward",
                          "trained-weights-in-sram", "reorder", "fused-update", "fp32-activation-gradients",
                          "1-bit-masks", "whole-int8-input", "kernel-scratch", "4-byte-rounding"}
    assert not rules["inplace-depthwise-forward"] and not rules["reorder"]
    assert not rules["fused-update"]  # fusion needs reordering
    assert est.to_dict()["rules"] == est.rules and "device_tensors" in est.to_dict()


def test_device_tensors_add_up_to_the_timeline(tiny) -> None:
    model, graph = tiny
    est = estimate_mcu(graph, from_patterns(model, ["conv.bias", "dw.weight", "fc.weight"]), M7, fuse_update=False)
    assert all(t.nbytes % 4 == 0 for t in est.device_tensors)
    scratch = sum(est.scratch.values())
    for j, p in enumerate(est.timeline):
        assert p.live_bytes == scratch + sum(t.nbytes for t in est.device_tensors if t.first <= j <= t.last)


@pytest.fixture(scope="module")
def mbv2_tt(traced):
    t = traced("mbv2-w0.35-tt")
    return t.model, t.graph


def test_tiny_training_forward_peak_is_the_int8_expansion_of_block_1(mbv2_tt) -> None:
    """MobileNetV2-w0.35 at 128×128 (tiny-training's .pkl config): block 1's pointwise conv reads
    8×64×64 int8 and writes 48×64×64 int8; nothing before or after holds more."""
    _, graph = mbv2_tt
    est = estimate_mcu(graph, UpdateSet.none(), M7)
    # kernel buffers: the first conv (3×3 stride 2 over 3 channels, 16 out) copies its weights to 16 bits,
    # 2·16·3·9 = 864 B; the in-place depthwise convs at 64×64 pad a channel: 2·66·66 = 8712 B
    assert est.scratch == {"im2col": 2 * 66 * 66, "kernel": 2 * 16 * 3 * 9}
    assert est.peak_bytes == 8 * 64 * 64 + 48 * 64 * 64 + 2 * 66 * 66 + 2 * 16 * 3 * 9
    assert est.peak_at == "forward:blocks.1.pointwise1.conv"


def test_tiny_training_ladder_is_monotone(mbv2_tt) -> None:
    """full > sparse ≥ +reorder ≥ +in-place ≥ +fused update (each rung only removes bytes)."""
    model, graph = mbv2_tt
    lay = mcu_layout(graph, M7)
    full = estimate_mcu(graph, UpdateSet.full(model), M7, layout=lay, **NO_TRICKS).peak_bytes
    for label in ("49kb", "138kb"):
        update = from_sparse_update_config(f"tt:mbv2-w0.35/{label}", model)
        rungs = [estimate_mcu(graph, update, M7, layout=lay, **opts).peak_bytes for opts in (
            NO_TRICKS, {"inplace": False, "fuse_update": False}, {"fuse_update": False}, {})]
        assert full > 4 * rungs[0]
        assert rungs == sorted(rungs, reverse=True), (label, rungs)


class PaddedConv(nn.Module):
    """Explicit zero padding, then a 3×3 conv without padding (TensorFlow's "same" as exported), on 1×4×8×8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, (1, 1, 1, 1)))


def test_explicit_padding_is_done_inside_the_conv_kernel() -> None:
    graph = layer_graph(PaddedConv(), (1, 4, 8, 8))
    est = estimate_mcu(graph, UpdateSet.none(), M7)
    # the image (4·8·8 = 256 B) and the conv's output (8·8·8 = 512 B); no padded 4·10·10 copy.
    # im2col: 3·3·4·2·2 = 144 B (stride 1: no kernel buffer)
    assert est.peak_bytes == 256 + 512 + 144
