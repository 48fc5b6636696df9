"""The layer graph: one node per operation of the traced model, with shapes, parameters and FLOPs.

:class:`GraphRecorder` is one ``fx.Interpreter`` pass (in the manner of ``torch.fx.passes.shape_prop``)
that runs the traced graph once on real example inputs and, for every node, records

* the ATen ops it dispatches to (through a ``TorchDispatchMode``), with shapes, so FLOPs come from the
  per-op registry in :mod:`budgetplan.cost_models.flops` whatever the tracer produced;
* its output shapes and dtypes, and whether each output is a new storage or an alias (view, in-place op)
  of a storage that already exists, by storage identity;
* the parameters and buffers it reads, by their qualified names in ``model.named_parameters()``.

:func:`build_layer_graph` turns that record into a :class:`LayerGraph` (the layers and their producers plus
the execution order, available as a ``networkx.DiGraph``), the representation every later pass works on.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten

from budgetplan.cost_models.dispatch import RecordingMode
from budgetplan.cost_models.flops import op_flops
from budgetplan.cost_models.meta import TensorMeta, storage_key, to_meta
from budgetplan.errors import TraceError, first_line
from budgetplan.model.compute import planning_compute
from budgetplan.model.tracing import TracedModel

if TYPE_CHECKING:
    import networkx as nx

# Ops whose weight's dim 0 indexes output neurons: their parameters are split into neuron groups.
GROUP_OWNER_OPS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                   "conv_transpose3d", "linear", "matmul", "mm", "addmm", "bmm", "convolution"}

_MODULE_OPS = {
    nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d",
    nn.ConvTranspose1d: "conv_transpose1d", nn.ConvTranspose2d: "conv_transpose2d",
    nn.ConvTranspose3d: "conv_transpose3d", nn.Linear: "linear",
    nn.BatchNorm1d: "batch_norm", nn.BatchNorm2d: "batch_norm", nn.BatchNorm3d: "batch_norm",
    nn.LayerNorm: "layer_norm", nn.GroupNorm: "group_norm", nn.ReLU: "relu", nn.ReLU6: "relu6",
    nn.Hardtanh: "hardtanh", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.SiLU: "silu",
    nn.GELU: "gelu", nn.Sigmoid: "sigmoid", nn.Softmax: "softmax", nn.MaxPool2d: "max_pool2d",
    nn.AvgPool2d: "avg_pool2d", nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d", nn.Flatten: "flatten",
    nn.Dropout: "dropout", nn.Identity: "identity", nn.MultiheadAttention: "multi_head_attention",
}

_OPERATOR_NAMES = {operator.add: "add", operator.iadd: "add", operator.mul: "mul", operator.imul: "mul",
                   operator.sub: "sub", operator.truediv: "div", operator.matmul: "matmul",
                   operator.getitem: "getitem", operator.neg: "neg"}


@dataclass(frozen=True)
class AtenCall:
    """One ATen op dispatched while running a node: name, shapes of its tensors, FLOPs."""

    op: str  # e.g. "aten.convolution.default"
    inputs: tuple[TensorMeta, ...]  # every tensor among the arguments, flattened in order
    outputs: tuple[TensorMeta, ...]  # every tensor among the results, flattened in order
    flops: int
    input_keys: tuple[int, ...] = ()  # storage identity of each input (unique within one recording)
    output_keys: tuple[int, ...] = ()
    output_storage_bytes: tuple[int, ...] = ()  # bytes of each output's whole storage (PyTorch dtype)
    input_views: tuple[bool, ...] = ()  # whether each input is a view (a parameter's view is not the leaf)
    overload: Any = field(default=None, compare=False, repr=False)
    args: Any = field(default=None, compare=False, repr=False)  # positional args, tensors as TensorMeta


@dataclass(frozen=True)
class StorageInfo:
    """A tensor storage created by the forward pass (activations only; not parameters or inputs)."""

    key: int
    producer: str  # layer name
    nbytes: int  # bytes in PyTorch's dtype
    numel: int  # elements, to re-price in a target's dtype
    floating: bool
    is_input: bool = False  # a model input rather than an activation


@dataclass
class Layer:
    """One operation of the traced model.

    Units: ``flops`` and ``macs`` per forward pass of the example batch; ``output_bytes`` is the bytes of
    new storage this op allocates in PyTorch's dtype (0 for views and in-place ops).
    """

    name: str
    fx_name: str
    module: str  # qualified module path ('' for the top level)
    module_type: str  # class name of that module, '' if unknown
    op: str  # normalised op kind: conv2d, linear, batch_norm, relu, add, cat, matmul, ...
    target: str  # fx target as text
    parameters: tuple[str, ...]  # qualified names (model.named_parameters()) read by this op
    buffers: tuple[str, ...]
    inputs: tuple[str, ...]  # producer layer names (graph inputs are 'input:<name>')
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    output_dtypes: tuple[str, ...]
    new_storages: tuple[int, ...]  # storage keys this op created
    output_storages: tuple[int, ...]  # storage key of each tensor output (new or aliased)
    inplace: bool
    aten: tuple[AtenCall, ...]
    flops: int
    macs: int
    weight: str | None = None  # the parameter whose dim 0 indexes this op's neurons
    out_channels: int = 0  # size of that dim 0
    neuron_groups: int = 0  # ceil(out_channels / group_size)

    @property
    def output_bytes(self) -> int:
        """Bytes of new storage this op allocates, in PyTorch's dtype."""
        return sum(self.new_storage_bytes)

    new_storage_bytes: tuple[int, ...] = ()


@dataclass
class LayerGraph:
    """The traced model as a dataflow graph of :class:`Layer` nodes, plus execution order and metadata."""

    nodes: dict[str, dict[str, Any]]  # node name -> attributes: layers (key "layer") and inputs ("input:x")
    order: list[str]  # layer names in execution order
    parameters: dict[str, TensorMeta]  # every parameter by qualified name
    buffers: dict[str, TensorMeta]
    inputs: dict[str, TensorMeta]  # graph inputs by placeholder name
    storages: dict[int, StorageInfo]
    storage_last_use: dict[int, int]  # storage key -> index in order of the last layer reading it
    output_storages: tuple[int, ...]  # storages of the model's outputs (alive until the end)
    trace_method: str
    fallback_reason: str | None
    group_size: int
    graph_module: fx.GraphModule = field(repr=False)
    parameter_storages: dict[int, str] = field(default_factory=dict)  # storage key -> parameter name
    buffer_storages: dict[int, str] = field(default_factory=dict)  # storage key -> buffer name
    # what later passes derive from the graph alone (the full backward analysis, a target's linear bound),
    # keyed by the pass and its options: computed once per graph, whatever the budget
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def layers(self) -> Iterator[Layer]:
        """Layers in execution order."""
        for name in self.order:
            yield self.nodes[name]["layer"]  # input nodes ('input:x') carry layer=None

    def layer(self, name: str) -> Layer:
        return self.nodes[name]["layer"]

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The dataflow graph as a ``networkx.DiGraph``: a node per layer (attribute ``layer``) and per
        model input (``input:<name>``, attribute ``input``), an edge from each producer to its consumers.
        Built on first use (importing networkx costs ~0.3 s that planning does not need)."""
        import networkx as nx

        graph = nx.DiGraph()
        for name, attrs in self.nodes.items():
            graph.add_node(name, **attrs)
        for name in self.order:
            for producer in self.nodes[name]["layer"].inputs:
                graph.add_edge(producer, name)
        return graph

    def group_owners(self) -> list[Layer]:
        """Layers whose weight is split into neuron groups (conv, linear, matmul with a weight)."""
        return [layer for layer in self.layers() if layer.weight is not None]

    def __len__(self) -> int:
        return len(self.order)


class _AtenRecorder(RecordingMode):
    """Records every ATen op dispatched while active."""

    def __init__(self, keep_alive: list[Any]) -> None:
        super().__init__()
        self.calls: list[AtenCall] = []
        self.keep_alive = keep_alive  # outputs stay alive so that storage addresses are never reused

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "namespace", "") == "prim":  # metadata queries (prim.device under fake tensors)
            return out
        flat_in = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        flat_out = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        meta_args = to_meta(args)
        meta_out = to_meta(out)
        self.calls.append(AtenCall(
            op=str(func),
            inputs=tuple(TensorMeta.of(t) for t in flat_in),
            outputs=tuple(TensorMeta.of(t) for t in flat_out),
            flops=op_flops(func, meta_args, meta_out),
            input_keys=tuple(storage_key(t) for t in flat_in),
            output_keys=tuple(storage_key(t) for t in flat_out),
            output_storage_bytes=tuple(t.untyped_storage().nbytes() for t in flat_out),
            input_views=tuple(bool(t._is_view()) for t in flat_in),
            overload=func,
            args=meta_args,
        ))
        self.keep_alive.append(out)
        return out


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _op_kind(node: fx.Node, module: nn.Module | None) -> tuple[str, bool]:
    """Normalised op name and whether the op is in-place."""
    if node.op == "call_module":
        assert module is not None
        for cls in type(module).__mro__:
            if cls in _MODULE_OPS:
                inplace = bool(getattr(module, "inplace", False))
                return _MODULE_OPS[cls], inplace
        return _snake(type(module).__name__), False
    target = node.target
    if node.op == "call_method":
        name = str(target)
    elif isinstance(target, torch._ops.OpOverload):
        name = target._schema.name.split("::")[-1]
    elif target in _OPERATOR_NAMES:
        name = _OPERATOR_NAMES[target]
        return name, target in (operator.iadd, operator.imul)
    else:
        name = getattr(target, "__name__", str(target))
    inplace = name.endswith("_") and not name.startswith("_")
    return name.rstrip("_") if inplace else name, inplace


class NodeFailure(Exception):
    """A node of the traced graph failed while it was recorded (carries the node and the cause)."""

    def __init__(self, node: fx.Node, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.node = node
        self.cause = cause


class GraphRecorder(fx.Interpreter):
    """Runs a GraphModule once and records, per node, ATen calls, output metadata and storage use.

    A failing node raises :class:`NodeFailure`, which names it."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.records: dict[str, dict[str, Any]] = {}
        self.keep_alive: list[Any] = []  # keeps every value alive so storage identities stay unique
        self.param_by_storage: dict[int, str] = {}
        self.buffer_by_storage: dict[int, str] = {}
        self.values = "real"  # "fake": the run computed shapes only (FakeTensorMode)
        for name, p in gm.named_parameters():
            self.param_by_storage.setdefault(storage_key(p), name)
        for name, b in gm.named_buffers():
            self.buffer_by_storage.setdefault(storage_key(b), name)

    def run_node(self, n: fx.Node) -> Any:
        try:
            if n.op in ("call_module", "call_function", "call_method"):
                recorder = _AtenRecorder(self.keep_alive)
                with recorder:
                    result = super().run_node(n)
                self.records[n.name] = {"aten": recorder.calls}
            else:
                result = super().run_node(n)
        except NodeFailure:
            raise
        except Exception as exc:
            raise NodeFailure(n, exc) from exc
        self.keep_alive.append(result)
        return result


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _input_nodes(node: fx.Node) -> list[fx.Node]:
    return [a for a in tree_flatten((node.args, node.kwargs))[0] if isinstance(a, fx.Node)]


def _module_of(node: fx.Node) -> tuple[str, str]:
    """Module path and class name of the module a node belongs to."""
    if node.op == "call_module":
        return str(node.target), ""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        return _clean_module_path(path), cls_name.rsplit(".", 1)[-1]
    return "", ""


def _clean_module_path(path: str) -> str:
    """torch.export module paths may look like ``L['self'].layer1[0].conv1``; normalise to ``layer1.0.conv1``."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']+)'\]", r".\1", path)
    path = path.replace("._modules.", ".").lstrip(".")
    return path


#: how :func:`build_layer_graph` runs the graph: ``fake`` (shapes only, FakeTensorMode: no memory for
#: values, no arithmetic), ``real`` (the example inputs' values), ``auto`` (fake when it pays, see
#: :func:`_fake_pays`; real when a node needs values: data-dependent shapes, ``.item()``, an op without
#: a fake kernel)
RECORD_VALUES = ("auto", "fake", "real")
#: parameters and buffers from which a fake recording pays even when its machinery must be imported
FAKE_FROM_BYTES = 256 << 20


def _fake_pays(traced: TracedModel) -> bool:
    """Fake tensors cost imports on first use (~1.4 s: torch._dynamo, sympy) and a little per op; a real
    run costs the arithmetic and keeps every activation alive. Fake wins when torch.export traced the
    model (those modules are loaded already) or the model is large."""
    if traced.method == "export" or "torch._dynamo" in sys.modules:
        return True
    gm = traced.graph_module
    size = sum(t.numel() * t.element_size() for t in itertools.chain(gm.parameters(), gm.buffers()))
    return size >= FAKE_FROM_BYTES


def build_layer_graph(
    traced: TracedModel,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    group_size: int = 1,
    values: str = "auto",
) -> LayerGraph:
    """Run the traced graph once and build its :class:`LayerGraph`.

    ``group_size`` is the number of consecutive output channels that form one neuron group (1 = every
    output channel is a neuron, as in the seed paper). ``values`` (:data:`RECORD_VALUES`): the graph is
    recorded on fake tensors (shapes, dtypes and storage identities only) unless a node needs values.
    The model is left as it was (parameters, buffers). A node that fails raises :class:`TraceError`
    naming the fx node and its module.
    """
    if group_size < 1:
        raise TraceError(f"group size must be a positive integer, got {group_size}")
    if values not in RECORD_VALUES:
        raise TraceError(f"unknown recording mode {values!r}; use one of: {', '.join(RECORD_VALUES)}")
    inputs = _compact_inputs(example_inputs)
    gm = traced.graph_module
    if values == "fake" or (values == "auto" and _fake_pays(traced)):
        try:
            with _fake_recording(gm, inputs) as recorder:  # the assembly reads the fake parameters too
                return _assemble(traced, recorder, group_size)
        except NodeFailure as failure:
            if values == "fake":
                raise _trace_error(failure) from None
    try:
        recorder = _record_real(gm, inputs)
    except NodeFailure as failure:
        raise _trace_error(failure) from None
    return _assemble(traced, recorder, group_size)


def _compact_inputs(example_inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """An input that is a view of a larger tensor (``x[:1]`` of a data set) would be priced with the whole
    storage it shares: record on a compact copy, which is what the model receives on the device."""
    return tuple(
        t.clone(memory_format=torch.contiguous_format)
        if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > t.numel() * t.element_size() else t
        for t in example_inputs
    )


def _trace_error(failure: NodeFailure) -> TraceError:
    node, exc = failure.node, failure.cause
    path, _ = _module_of(node)
    where = f"node '{node.name}'" + (f" in module '{path}'" if path else "") + f" ({node.op} {node.target})"
    return TraceError(f"running the traced graph failed at {where}: {type(exc).__name__}: {first_line(exc)}")


def _record_real(gm: fx.GraphModule, inputs: tuple[Any, ...]) -> GraphRecorder:
    """Record on the example inputs' values; buffers (BatchNorm statistics) are restored afterwards."""
    saved_buffers = {name: b.detach().clone() for name, b in gm.named_buffers()}
    recorder = GraphRecorder(gm)
    try:
        with torch.no_grad(), planning_compute():
            recorder.run(*inputs)
    finally:
        with torch.no_grad():
            for name, b in gm.named_buffers():
                if name in saved_buffers:
                    b.copy_(saved_buffers[name])
    return recorder


@contextmanager
def _fake_recording(gm: fx.GraphModule, inputs: tuple[Any, ...]) -> Iterator[GraphRecorder]:
    """Record with every parameter, buffer and input replaced by a fake tensor of the same shape, dtype
    and device (tied parameters and views keep sharing one storage): the same ATen ops as a real run on
    CPU, without their memory or arithmetic. The module's own tensors are put back afterwards."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.utils.stateless import _reparametrize_module

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    real = dict(gm.named_parameters(remove_duplicate=False))
    real.update(gm.named_buffers(remove_duplicate=False))
    fakes = {name: mode.from_tensor(t, static_shapes=True) for name, t in real.items()}
    fake_inputs = tuple(mode.from_tensor(t, static_shapes=True) if isinstance(t, torch.Tensor) else t
                        for t in inputs)
    with _reparametrize_module(gm, fakes), torch.no_grad():
        recorder = GraphRecorder(gm)
        recorder.values = "fake"
        with mode:
            recorder.run(*fake_inputs)
        yield recorder


@dataclass
class _Assembly:
    """The state of turning one recording into a :class:`LayerGraph`, node by node."""

    env: dict[fx.Node, Any]
    param_keys: dict[int, str]
    buffer_keys: dict[int, str]
    inputs: dict[str, TensorMeta] = field(default_factory=dict)
    storage_owner: dict[int, str] = field(default_factory=dict)  # storage key -> producing layer or input
    storages: dict[int, StorageInfo] = field(default_factory=dict)
    last_use: dict[int, int] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    output_storages: list[int] = field(default_factory=list)

    def known(self, key: int | None) -> bool:
        return key in self.storage_owner or key in self.param_keys or key in self.buffer_keys

    def placeholder(self, node: fx.Node) -> None:
        value = self.env.get(node)
        if not isinstance(value, torch.Tensor):
            return
        self.inputs[node.name] = TensorMeta.of(value)
        self.nodes[f"input:{node.name}"] = {"layer": None, "input": self.inputs[node.name]}
        key = storage_key(value)
        if not self.known(key):
            nbytes = value.untyped_storage().nbytes()
            self.storages[key] = StorageInfo(
                key=key, producer=f"input:{node.name}", nbytes=nbytes,
                numel=nbytes // max(value.element_size(), 1), floating=value.is_floating_point(), is_input=True,
            )
            self.storage_owner[key] = f"input:{node.name}"

    def output(self, node: fx.Node) -> None:
        for t in _tensors(self.env.get(node)):
            key = storage_key(t)
            if key in self.storages:
                self.output_storages.append(key)

    def reads(self, module: nn.Module | None, in_keys: list[int], out_keys: list[int]) -> tuple[list[str], list[str]]:
        """Parameters and buffers a node reads, by storage identity, so functional calls, get_attr chains
        and modules called twice all resolve to the same qualified names."""
        params: list[str] = []
        buffers: list[str] = []
        if module is not None:
            for p in module.parameters():
                name = self.param_keys.get(storage_key(p))
                if name and name not in params:
                    params.append(name)
            for b in module.buffers():
                name = self.buffer_keys.get(storage_key(b))
                if name and name not in buffers:
                    buffers.append(name)
        is_param_view = bool(out_keys) and all(k in self.param_keys or k in self.buffer_keys for k in out_keys)
        if not is_param_view:
            for key in in_keys:
                if key in self.param_keys and self.param_keys[key] not in params:
                    params.append(self.param_keys[key])
                if key in self.buffer_keys and self.buffer_keys[key] not in buffers:
                    buffers.append(self.buffer_keys[key])
        return params, buffers

    def new_storages(self, name: str, out_tensors: list[torch.Tensor]) -> tuple[list[int], list[int]]:
        """Storages a node's outputs allocate (not views or in-place results): keys and bytes."""
        keys: list[int] = []
        sizes: list[int] = []
        for t in out_tensors:
            key = storage_key(t)
            if self.known(key) or key in keys:
                continue
            nbytes = t.untyped_storage().nbytes()
            self.storages[key] = StorageInfo(key=key, producer=name, nbytes=nbytes,
                                             numel=nbytes // max(t.element_size(), 1), floating=t.is_floating_point())
            self.storage_owner[key] = name
            keys.append(key)
            sizes.append(nbytes)
        return keys, sizes


def _assemble(traced: TracedModel, recorder: GraphRecorder, group_size: int) -> LayerGraph:
    """The :class:`LayerGraph` of one recording: inputs, one layer per compute node, outputs."""
    gm = traced.graph_module
    modules = dict(gm.named_modules())
    params = {name: TensorMeta.of(p) for name, p in gm.named_parameters()}
    buffers = {name: TensorMeta.of(b) for name, b in gm.named_buffers()}
    state = _Assembly(recorder.env, recorder.param_by_storage, recorder.buffer_by_storage)
    included = _compute_nodes(gm, state.env, modules, state.buffer_keys)
    names = _layer_names(included)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            state.placeholder(node)
        elif node.op == "output":
            state.output(node)
        elif node in names:
            layer = _layer(state, node, names, included[node], modules, recorder)
            _assign_neuron_groups(layer, params, group_size)
            state.nodes[layer.name] = {"layer": layer}
            state.order.append(layer.name)
    return LayerGraph(
        nodes=state.nodes, order=state.order, parameters=params, buffers=buffers, inputs=state.inputs,
        storages=state.storages, storage_last_use=state.last_use, output_storages=tuple(state.output_storages),
        trace_method=traced.method, fallback_reason=traced.fallback_reason, group_size=group_size,
        graph_module=gm, parameter_storages=dict(state.param_keys), buffer_storages=dict(state.buffer_keys),
        cache={"record values": recorder.values},
    )


def _layer(state: _Assembly, node: fx.Node, names: dict[fx.Node, str], info: dict[str, Any],
           modules: dict[str, nn.Module], recorder: GraphRecorder) -> Layer:
    """One compute node as a :class:`Layer` (updates the storages, last uses and producers seen so far)."""
    module = modules.get(str(node.target)) if node.op == "call_module" else None
    name = names[node]
    in_tensors = [t for a in _input_nodes(node) for t in _tensors(state.env.get(a))]
    out_tensors = _tensors(state.env.get(node))
    in_keys = [storage_key(t) for t in in_tensors]
    out_keys = [storage_key(t) for t in out_tensors]
    node_params, node_buffers = state.reads(module, in_keys, out_keys)
    new_keys, new_bytes = state.new_storages(name, out_tensors)
    index = len(state.order)
    for key in in_keys + out_keys:
        if key in state.storages:
            state.last_use[key] = index
    producers: list[str] = []  # data dependencies as in the fx graph
    for arg in _input_nodes(node):
        producer = names.get(arg) or (f"input:{arg.name}" if arg.op == "placeholder" else None)
        if producer and producer not in producers:
            producers.append(producer)
    calls = tuple(recorder.records.get(node.name, {}).get("aten", ()))
    flops = sum(c.flops for c in calls)
    return Layer(
        name=name, fx_name=node.name, module=info["module"], module_type=info["module_type"], op=info["op"],
        target=str(node.target), parameters=tuple(node_params), buffers=tuple(node_buffers),
        inputs=tuple(producers), input_shapes=tuple(tuple(t.shape) for t in in_tensors),
        output_shapes=tuple(tuple(t.shape) for t in out_tensors),
        output_dtypes=tuple(str(t.dtype).removeprefix("torch.") for t in out_tensors),
        new_storages=tuple(new_keys), output_storages=tuple(out_keys), inplace=info["inplace"],
        aten=calls, flops=flops, macs=flops // 2, new_storage_bytes=tuple(new_bytes),
    )


def _compute_nodes(
    gm: fx.GraphModule, env: dict[fx.Node, Any], modules: dict[str, nn.Module], buffer_keys: dict[int, str]
) -> dict[fx.Node, dict[str, Any]]:
    """The nodes that become layers, with op kind and module, in graph order.

    Left out: torch.export's guard check and bookkeeping that touches only buffers (the in-place
    ``num_batches_tracked += 1`` of a BatchNorm in train mode).
    """
    included: dict[fx.Node, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        if node.op == "call_module" and str(node.target) == "_guards_fn":
            continue
        out = _tensors(env.get(node))
        if out and all(storage_key(t) in buffer_keys for t in out) and all(
            a.op == "get_attr" for a in _input_nodes(node)
        ):
            continue
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        op, inplace = _op_kind(node, module)
        path, module_type = _module_of(node)
        if module is not None:
            module_type = type(module).__name__
        included[node] = {"op": op, "inplace": inplace, "module": path, "module_type": module_type}
    return included


def _layer_names(included: dict[fx.Node, dict[str, Any]]) -> dict[fx.Node, str]:
    """Readable unique layer names: the module path when one op runs in that module (``layer1.0.conv1``);
    ``path#2`` for the second call of a module called twice; ``path/op_node`` when a module runs several
    different ops; the fx node name for ops outside any module."""
    by_path: dict[str, list[fx.Node]] = {}
    for node, info in included.items():
        by_path.setdefault(info["module"], []).append(node)
    names: dict[fx.Node, str] = {}
    for path, nodes in by_path.items():
        if not path:
            for node in nodes:
                names[node] = node.name
        elif len({included[n]["op"] for n in nodes}) == 1:
            for i, node in enumerate(nodes):
                names[node] = path if i == 0 else f"{path}#{i + 1}"
        else:
            for node in nodes:
                names[node] = f"{path}/{node.name}"
    return names


def _assign_neuron_groups(layer: Layer, params: dict[str, TensorMeta], group_size: int) -> None:
    """A layer that multiplies by a weight of rank ≥ 2 owns neuron groups along that weight's dim 0."""
    if layer.flops == 0 and layer.op not in GROUP_OWNER_OPS:
        return
    weights = [p for p in layer.parameters if len(params[p].shape) >= 2]
    if not weights:
        return
    weight = max(weights, key=lambda p: params[p].numel)
    layer.weight = weight
    layer.out_channels = params[weight].shape[0]
    layer.neuron_groups = math.ceil(layer.out_channels / group_size)


def unique_parameters(layers: Iterable[Layer]) -> list[str]:
    """Qualified parameter names in first-use order, each once (a module called twice shares them)."""
    seen: dict[str, None] = {}
    for layer in layers:
        for p in layer.parameters:
            seen.setdefault(p, None)
    return list(seen)


FUSED_ACTIVATIONS = {"relu", "relu6", "hardtanh"}


def fused_storages(graph: LayerGraph) -> dict[int, int]:
    """What deployed inference runtimes fuse into the convolution before them: a BatchNorm (folded into
    the weights) and then a ReLU/ReLU6 (applied on the conv's output in place). Returns output storage
    of each fused layer → storage of the conv output it is fused into (one buffer)."""
    fused: dict[int, int] = {}
    root_of: dict[str, int] = {}  # layer name -> conv output storage its output is
    for layer in graph.layers():
        if not layer.new_storages:
            continue
        if layer.op.startswith("conv"):
            root_of[layer.name] = layer.new_storages[0]
            continue
        if layer.op not in ("batch_norm", *FUSED_ACTIVATIONS) or len(layer.inputs) != 1:
            continue
        root = root_of.get(layer.inputs[0])
        if root is None or (layer.op == "batch_norm" and graph.layer(layer.inputs[0]).op == "batch_norm"):
            continue
        fused[layer.new_storages[0]] = root
        root_of[layer.name] = root
    return fused


def parameter_groups(graph: LayerGraph) -> dict[str, list[tuple[int, int, bool]]]:
    """How each trainable parameter is decided: a list of ``(start, stop, whole)`` row ranges along dim 0.

    The weight of a conv/linear layer and its 1-D parameters of the same length (bias) are split into
    groups of ``graph.group_size`` output channels; every other parameter is one whole decision."""
    size = graph.group_size
    grouped_rows: dict[str, int] = {}
    for layer in graph.group_owners():
        rows = layer.out_channels
        for p in layer.parameters:
            shape = graph.parameters[p].shape
            if p == layer.weight or (len(shape) == 1 and shape[0] == rows):
                grouped_rows.setdefault(p, rows)
    out: dict[str, list[tuple[int, int, bool]]] = {}
    for name, meta in graph.parameters.items():
        if not meta.dtype.is_floating_point:
            continue
        if name in grouped_rows:
            rows = grouped_rows[name]
            out[name] = [(k * size, min(rows, (k + 1) * size), False) for k in range(math.ceil(rows / size))]
        else:
            out[name] = [(0, meta.shape[0] if meta.shape else 1, True)]
    return out
