"""tiny-training's analytic memory convention: the oracle is tiny-training's own published scheme labels
(49kb, 73kb, ... in compilation/mcu_ir_gen.py), reproduced from budgetplan's layer graphs of the zoo
built-ins; then the rules one by one on small models whose figures are worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from graph_support import layer_graph
from torch import nn

from budgetplan.model.graph import LayerGraph
from budgetplan.model.tiny_training import list_schemes
from budgetplan.model.update_set import UpdateSet, from_patterns, from_sparse_update_config
from budgetplan.pricing.mcu.tt_convention import tt_convention_memory

TT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "tiny-training"


@pytest.fixture(scope="module")
def builtins(traced) -> dict[str, tuple[nn.Module, LayerGraph]]:
    out = {}
    for key in ("mbv2-w0.35", "mcunet-5fps", "proxyless-w0.3"):
        t = traced(f"{key}-tt")
        out[key] = (t.model, t.graph)
    return out


@pytest.mark.parametrize("scheme", list_schemes())
def test_each_published_scheme_reproduces_its_label(builtins: dict, scheme: str) -> None:
    model_key, label = scheme[3:].split("/")
    model, graph = builtins[model_key]
    memory = tt_convention_memory(graph, from_sparse_update_config(scheme, model))
    assert memory.label == label  # tiny-training's published name, to the kB
    assert memory.to_json()["label"] == label
    assert memory.total_bytes == -(-memory.total_bits // 8)


def test_label_is_kib_truncated_not_rounded(builtins: dict) -> None:
    # mcunet "99kb" is 99.84 KiB: tiny-training's scripts call the same scheme the "100KB scheme" (rounded);
    # its published label truncates. With kB = 1000 B it would be 102.
    model, graph = builtins["mcunet-5fps"]
    memory = tt_convention_memory(graph, from_sparse_update_config("tt:mcunet/99kb", model))
    assert 99.5 < memory.kib < 100 and memory.label == "99kb"
    assert memory.total_bits / 8 / 1000 > 102


@pytest.mark.skipif(not TT_DIR.is_dir(), reason=f"tiny-training's .pkl files are not at {TT_DIR}")
def test_the_module_built_from_the_pkl_gives_the_same_figure(builtins: dict) -> None:
    from budgetplan.model.tiny_training import load_module

    module, shape = load_module(TT_DIR / "mbv2-w0.35.pkl")
    graph = layer_graph(module, shape)
    model, builtin_graph = builtins["mbv2-w0.35"]
    for scheme in ("tt:mbv2/49kb", "tt:mbv2/138kb"):
        from_file = tt_convention_memory(graph, from_sparse_update_config(scheme, module))
        builtin = tt_convention_memory(builtin_graph, from_sparse_update_config(scheme, model))
        assert from_file.total_bits == builtin.total_bits  # the classifier's width is not counted


# --------------------------------------------------------------------------------------------------
# The rules, on small models worked out by hand
# --------------------------------------------------------------------------------------------------


class _Net(nn.Module):
    """conv 3->8 k3 s2 (+BN, ReLU) -> depthwise 8 k3 -> pointwise 8->16 (own bias) -> pool -> fc 16->4."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.c0(x)))
        x = self.pw(torch.relu(self.dw(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def net() -> tuple[nn.Module, LayerGraph]:
    model = _Net()
    return model, layer_graph(model, (2, 3, 16, 16))  # batch 2: the convention counts one sample


def test_classifier_only(net: tuple[nn.Module, LayerGraph]) -> None:
    model, graph = net
    memory = tt_convention_memory(graph, from_patterns(model, ["fc"]))
    # the classifier's int8 input (16 features); its parameters are not counted; no conv runs backward
    assert (memory.classifier_input_bits, memory.mask_bits, memory.bias_bits, memory.weight_bits) == (128, 0, 0, 0)
    assert memory.total_bits == 128 and memory.label == "0kb"


def test_bias_region_masks_and_batchnorm_beta(net: tuple[nn.Module, LayerGraph]) -> None:
    model, graph = net
    memory = tt_convention_memory(graph, from_patterns(model, ["bn0.bias", "fc"]))
    # bn0.bias stands in for c0's bias (8 x 32 bits); the gradient then flows through c0, dw and pw:
    # masks 8*8*8 + 8*8*8 + 16*8*8 bits (8x8 outputs after the stride-2 conv)
    assert memory.bias_bits == 8 * 32
    assert memory.mask_bits == 8 * 64 + 8 * 64 + 16 * 64
    assert memory.weight_bits == memory.saved_input_bits == 0
    # a BatchNorm gamma is not a bias: training it alone still puts c0 in the backward region
    gamma = tt_convention_memory(graph, from_patterns(model, ["bn0.weight"]))
    assert gamma.bias_bits == 0 and gamma.mask_bits == memory.mask_bits


def test_weights_keep_their_input_channels(net: tuple[nn.Module, LayerGraph]) -> None:
    model, graph = net
    # pw weight on 4 of 16 output rows = a quarter: tiny-training keeps int(8 * 1/4) = 2 input channels
    update = from_patterns(model, ["pw.weight[0:4]", "pw.bias"])
    memory = tt_convention_memory(graph, update)
    assert memory.saved_input_bits == 8 * 2 * 64  # 2 kept channels of an 8x8 input, int8
    assert memory.weight_bits == 8 * 16 * 2  # C_out x kept x 1x1
    assert memory.bias_bits == 16 * 32 and memory.mask_bits == 16 * 64
    (row,) = [r for r in memory.layers if r.layer == "pw"]
    assert (row.kind, row.kept_channels, row.in_channels) == ("conv", 2, 8)
    # depthwise: its trained channels are its kept channels (3 of 8), k*k weights each
    dw = tt_convention_memory(graph, from_patterns(model, ["dw.weight[0:3]"]))
    assert dw.saved_input_bits == 8 * 3 * 64 and dw.weight_bits == 8 * 3 * 9
    assert dw.bias_bits == 0 and dw.mask_bits == 8 * 64 + 16 * 64  # dw and pw run backward
    # a whole dense conv: every input channel, every weight
    whole = tt_convention_memory(graph, from_patterns(model, ["c0.weight"]))
    assert whole.saved_input_bits == 8 * 3 * 256 and whole.weight_bits == 8 * 8 * 3 * 9


def test_grouped_conv_keeps_everything() -> None:
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=2))
    graph = layer_graph(model, (1, 8, 4, 4))
    memory = tt_convention_memory(graph, from_patterns(model, ["0.weight[0:8]"]))
    assert memory.saved_input_bits == 8 * 8 * 16 and memory.weight_bits == 8 * 16 * 4 * 9
    assert memory.layers[0].kind == "group conv"


def test_nothing_trained_is_zero(net: tuple[nn.Module, LayerGraph]) -> None:
    memory = tt_convention_memory(net[1], UpdateSet.none())
    assert memory.total_bits == 0 and memory.label == "0kb" and memory.layers == ()
