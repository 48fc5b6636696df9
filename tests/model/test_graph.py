"""The layer graph: tracing fallback, parameters by qualified name, neuron groups, FLOPs vs FlopCounterMode.

The FLOP oracle is ``torch.utils.flop_counter.FlopCounterMode`` on the eager model: for every op it
counts, the sum over our layers of that op's FLOPs must agree within 1 %.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from model_styles import STYLE_MODELS, SYMBOLIC_TRACE_FAILS
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from budgetplan.errors import TraceError
from budgetplan.model import zoo
from budgetplan.model.graph import build_layer_graph, unique_parameters
from budgetplan.model.tracing import trace_model

ZOO_NAMES = ["resnet18", "resnet50", "mobilenetv2-w0.35", "mcunet", "proxylessnas-w0.3", "tinycnn", "vit-tiny"]
# The FLOP formulas are functions of shapes; the big ImageNet models are checked at a smaller
# resolution to keep the suite fast (their zoo default is 224×224).
SMALL_INPUT = {"resnet18": (1, 3, 64, 64), "resnet50": (1, 3, 64, 64)}


def _oracle_flops_by_op(model: nn.Module, x: torch.Tensor) -> Counter[str]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    totals: Counter[str] = Counter()
    for packet, flops in counter.get_flop_counts()["Global"].items():
        totals[str(packet).removeprefix("aten.")] += int(flops)
    return totals


def _our_flops_by_op(graph) -> Counter[str]:
    totals: Counter[str] = Counter()
    for layer in graph.layers():
        for call in layer.aten:
            if call.flops:
                packet = call.op.split(".")[1]  # "aten.convolution.default" -> "convolution"
                totals[packet] += call.flops
    return totals


def _assert_flops_agree(model: nn.Module, x: torch.Tensor, graph) -> None:
    oracle = _oracle_flops_by_op(model, x)
    ours = _our_flops_by_op(graph)
    assert oracle, "FlopCounterMode counted nothing: the model has no matmul/conv?"
    for op, expected in oracle.items():
        assert ours[op] == pytest.approx(expected, rel=0.01), f"{op}: ours {ours[op]} vs FlopCounterMode {expected}"


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_forward_flops_match_flop_counter(name: str) -> None:
    model, entry = zoo.build(name)
    model.eval()
    x = torch.randn(SMALL_INPUT.get(name, entry.input_shape))
    traced = trace_model(model, (x,))
    graph = build_layer_graph(traced, (x,))
    _assert_flops_agree(model, x, graph)
    # Every parameter of the model appears on some layer, under its qualified name.
    assert set(unique_parameters(graph.layers())) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(STYLE_MODELS))
def test_published_style_models_trace_and_match_flop_counter(name: str) -> None:
    model, shape = STYLE_MODELS[name]()
    model.eval()
    x = torch.randn(shape)
    traced = trace_model(model, (x,))
    expected_method = "export" if name in SYMBOLIC_TRACE_FAILS else "symbolic_trace"
    assert traced.method == expected_method
    if name in SYMBOLIC_TRACE_FAILS:
        assert traced.fallback_reason  # the reason symbolic_trace failed is kept for the report
    graph = build_layer_graph(traced, (x,))
    _assert_flops_agree(model, x, graph)
    assert set(unique_parameters(graph.layers())) == {n for n, _ in model.named_parameters()}
    # The traced graph computes what the model computes.
    with torch.no_grad():
        torch.testing.assert_close(traced.graph_module(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["fx", "export"])
def test_both_tracers_give_the_same_layers_for_a_traceable_model(method: str) -> None:
    model, entry = zoo.build("tinycnn")
    x = torch.randn(entry.input_shape)
    graph = build_layer_graph(trace_model(model, (x,), method=method), (x,))
    owners = [(l.weight, l.neuron_groups, l.flops) for l in graph.group_owners()]
    reference = build_layer_graph(trace_model(model, (x,), method="fx"), (x,))
    assert owners == [(l.weight, l.neuron_groups, l.flops) for l in reference.group_owners()]


class _Tricky(nn.Module):
    """Functional conv with a bare parameter, a module called twice, in-place ops, depthwise conv,
    concatenation, a residual add and control flow on shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(8, 8, 1, 1))
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn(self.stem(x)))
        if y.shape[-1] > 2:  # control flow on a shape: symbolic_trace fails, export handles it
            y = y + F.conv2d(y, self.weight)
        z = self.dw(self.dw(y)).relu_()
        z = torch.cat([z, y], dim=1)
        return self.head(z.mean((2, 3)))


def test_functional_shared_inplace_depthwise_concat() -> None:
    model = _Tricky().eval()
    x = torch.randn(1, 3, 8, 8)
    traced = trace_model(model, (x,))
    assert traced.method == "export" and "control flow" in (traced.fallback_reason or "")
    graph = build_layer_graph(traced, (x,), group_size=3)
    by_weight: dict[str, list] = {}
    for layer in graph.group_owners():
        by_weight.setdefault(layer.weight, []).append(layer)
    # the bare parameter used through F.conv2d is a neuron-group owner under its qualified name
    assert by_weight["weight"][0].parameters == ("weight",)
    # a module called twice: two layers sharing the same parameters, groups = ceil(8 / 3)
    assert [l.name for l in by_weight["dw.weight"]] == ["dw", "dw#2"]
    assert all(l.neuron_groups == 3 and l.parameters == ("dw.weight", "dw.bias") for l in by_weight["dw.weight"])
    assert by_weight["head.weight"][0].out_channels == 5
    # the in-place relu allocates nothing new; the concat allocates 16 channels of 8x8 float32
    relu = next(l for l in graph.layers() if l.op == "relu")
    assert relu.inplace and relu.output_bytes == 0
    cat = next(l for l in graph.layers() if l.op == "cat")
    assert cat.output_bytes == 16 * 8 * 8 * 4
    _assert_flops_agree(model, x, graph)
    # the networkx view: a DAG whose edges are the fx graph's data dependencies between recorded nodes
    import networkx as nx

    dag = graph.graph
    assert nx.is_directed_acyclic_graph(dag)
    assert set(dag.predecessors(cat.name)) == set(cat.inputs) and len(cat.inputs) == 2
    assert any(name.startswith("input:") for name in dag.nodes) and dag.number_of_nodes() == len(graph) + 1


def test_buffers_are_restored_after_recording() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    build_layer_graph(trace_model(model, (x,)), (x,))
    build_layer_graph(trace_model(model, (x,), method="export"), (x,))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class _ValueDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on a tensor *value*: no tracer can capture this
            return x * 2
        return x


def test_untraceable_model_gives_one_line_error_naming_the_line() -> None:
    with pytest.raises(TraceError) as info:
        trace_model(_ValueDependent(), (torch.randn(1, 3),))
    message = str(info.value)
    assert "\n" not in message
    assert "test_graph.py" in message and "x.sum() > 0" in message
    assert "torch.export" in message


def test_an_input_sliced_from_a_larger_tensor_is_priced_by_its_own_size() -> None:
    """x[:1] of a 64-sample batch shares the batch's storage; the graph prices one sample (as a fresh
    tensor of the same shape does), not the whole batch."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    batch = torch.randn(64, 3, 16, 16)
    sliced = build_layer_graph(trace_model(model, (batch[:1],)), (batch[:1],))
    fresh = build_layer_graph(trace_model(model, (torch.randn(1, 3, 16, 16),)), (torch.randn(1, 3, 16, 16),))
    input_bytes = [s.nbytes for s in sliced.storages.values() if s.is_input]
    assert input_bytes == [3 * 16 * 16 * 4]
    assert input_bytes == [s.nbytes for s in fresh.storages.values() if s.is_input]


def _layer_facts(graph) -> list[tuple]:
    """Everything a layer graph says, with storage identities renamed in order of appearance."""
    ids: dict[int, int] = {}

    def k(key):
        return ids.setdefault(key, len(ids))

    facts = []
    for layer in graph.layers():
        facts.append((layer.name, layer.op, layer.parameters, layer.buffers, layer.inputs, layer.input_shapes,
                      layer.output_shapes, layer.flops, layer.new_storage_bytes, layer.weight, layer.neuron_groups,
                      tuple(k(s) for s in layer.output_storages),
                      tuple((c.op, c.flops, tuple(k(s) for s in c.input_keys), tuple(k(s) for s in c.output_keys))
                            for c in layer.aten)))
    storages = sorted((k(s.key), s.producer, s.nbytes, s.floating, s.is_input) for s in graph.storages.values())
    params = sorted((k(key), name) for key, name in graph.parameter_storages.items())
    return [facts, storages, params, tuple(k(s) for s in graph.output_storages)]


@pytest.mark.parametrize("name", ["mobilenetv2-w0.35", "vit-tiny"])
def test_fake_recording_equals_the_real_one(name: str) -> None:
    """Shapes, ops, FLOPs, parameters and storage identities (views, in-place ops) recorded on fake tensors
    are those of a run on the example's values."""
    model, entry = zoo.build(name)
    model.train()
    x = torch.randn((1, 3, 64, 64) if name == "mobilenetv2-w0.35" else entry.input_shape)
    for method in ("fx", "export"):
        traced = trace_model(model, (x,), method=method)
        fake = build_layer_graph(traced, (x,), values="fake")
        real = build_layer_graph(traced, (x,), values="real")
        assert fake.cache["record values"] == "fake" and real.cache["record values"] == "real"
        assert _layer_facts(fake) == _layer_facts(real), (name, method)


def test_a_failing_node_is_named_with_its_module() -> None:
    """The graph traced for one input width cannot run on another: the error names the fx node and the
    module path, in one line."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    traced = trace_model(model, (torch.randn(1, 3, 8, 8),))
    for values in ("real", "fake"):
        with pytest.raises(TraceError) as info:
            build_layer_graph(traced, (torch.randn(1, 3, 9, 9),), values=values)
        message = str(info.value)
        assert "node '_2'" in message and "module '2'" in message and "\n" not in message, message
