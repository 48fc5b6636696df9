"""Forward (inference) costs of a traced model on a target: parameters, MACs, FLOPs, activation bytes.

Units: FLOPs and MACs per forward pass of the example batch (2 FLOPs per MAC, matmul/conv-like ops
only — see :mod:`budgetplan.cost_models.flops`); bytes in the target's data types (activations in
``activation_dtype``, weights in ``weight_dtype``, 1-D ``*.bias`` parameters in ``bias_dtype``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from budgetplan.cost_models.meta import TensorMeta
from budgetplan.model.graph import LayerGraph, StorageInfo, fused_storages
from budgetplan.targets import Target


@dataclass
class LayerForwardCost:
    """Forward cost of one layer. ``params`` counts the parameters first used by this layer (a module
    called twice is counted once); ``output_bytes`` is new activation storage in the target's dtype."""

    name: str
    op: str
    module: str
    parameters: list[str]
    params: int
    param_bytes: int
    flops: int
    macs: int
    output_shape: list[int] | None
    output_bytes: int
    neuron_groups: int
    out_channels: int
    weight: str | None


@dataclass
class ForwardTotals:
    params: int  # parameter elements, each parameter once
    param_bytes: int  # bytes of all parameters in the target's weight/bias dtypes
    flops: int
    macs: int
    activation_bytes: int  # sum of all new activation storages (target dtype)
    inference_peak_bytes: int  # max live activation bytes (input included) over the forward schedule; mcu: +
    # the largest im2col and kernel buffers (TinyEngine's peak)
    neuron_groups: int
    layers: int


@dataclass
class ForwardReport:
    """Per-layer forward costs of a model on a target, plus totals."""

    model: str
    target: str
    input_shapes: dict[str, list[int]]
    trace_method: str
    fallback_reason: str | None
    group_size: int
    layers: list[LayerForwardCost]
    totals: ForwardTotals
    budget_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the format documented in docs/json-output.md)."""
        return asdict(self)


def parameter_bytes(name: str, meta: TensorMeta, target: Target) -> int:
    """Bytes of one parameter on the target: ``*.bias`` vectors in bias_dtype, the rest in weight_dtype."""
    kind = "bias" if len(meta.shape) == 1 and name.rsplit(".", 1)[-1] == "bias" else "weight"
    return meta.numel * target.dtype_bytes(kind)


def storage_bytes(storage: StorageInfo, target: Target) -> int:
    """Bytes of an activation storage on the target: floating tensors in the activation dtype, others as
    PyTorch stores them (indices, masks)."""
    return storage.numel * target.dtype_bytes("activation") if storage.floating else storage.nbytes


def inference_timeline(graph: LayerGraph, target: Target) -> list[int]:
    """Live activation bytes after each layer of the forward pass (inference, nothing kept for backward).

    A storage is live from the layer that creates it (model inputs: from the start) to the last layer
    that reads it; model outputs stay live to the end. On ``mcu`` targets this is TinyEngine's int8
    forward (:func:`budgetplan.pricing.mcu.exact.forward_live_bytes`): a BatchNorm and a ReLU/ReLU6
    after a conv are fused into it (one buffer), a depthwise conv runs in place when nothing else reads
    its input, every buffer is rounded to 4 bytes. (The kernels' scratch buffers are not in the
    timeline; :func:`forward_report` adds them to ``inference_peak_bytes``.)
    """
    if target.family == "mcu":
        from budgetplan.pricing.mcu.exact import forward_live_bytes, mcu_layout

        return forward_live_bytes(mcu_layout(graph, target))[0]
    end = len(graph.order) - 1
    timeline = [0] * len(graph.order)
    producer_index = {name: i for i, name in enumerate(graph.order)}
    lifetimes: dict[int, tuple[int, int]] = {}
    for key, storage in graph.storages.items():
        start = 0 if storage.is_input else producer_index[storage.producer]
        stop = end if key in graph.output_storages else graph.storage_last_use.get(key, start)
        lifetimes[key] = (start, stop)
    for key, (start, stop) in lifetimes.items():
        size = storage_bytes(graph.storages[key], target)
        for i in range(start, stop + 1):
            timeline[i] += size
    return timeline


def forward_report(graph: LayerGraph, target: Target, *, model: str = "",
                   budget_bytes: int | None = None) -> ForwardReport:
    """Price every layer of ``graph`` on ``target``."""
    seen: set[str] = set()
    layers: list[LayerForwardCost] = []
    folded = fused_storages(graph) if target.family == "mcu" else {}  # fused layers allocate nothing
    for layer in graph.layers():
        new_params = [p for p in layer.parameters if p not in seen]
        seen.update(new_params)
        out_bytes = sum(
            storage_bytes(graph.storages[k], target) for k in layer.new_storages
            if k in graph.storages and k not in folded
        )
        layers.append(LayerForwardCost(
            name=layer.name, op=layer.op, module=layer.module, parameters=list(layer.parameters),
            params=sum(graph.parameters[p].numel for p in new_params),
            param_bytes=sum(parameter_bytes(p, graph.parameters[p], target) for p in new_params),
            flops=layer.flops, macs=layer.macs,
            output_shape=list(layer.output_shapes[0]) if layer.output_shapes else None,
            output_bytes=out_bytes, neuron_groups=layer.neuron_groups, out_channels=layer.out_channels,
            weight=layer.weight,
        ))
    scratch = 0
    if target.family == "mcu":  # TinyEngine's peak: + the largest im2col and kernel buffers
        from budgetplan.pricing.mcu.exact import forward_live_bytes, mcu_layout

        timeline, buffers = forward_live_bytes(mcu_layout(graph, target))
        scratch = buffers.im2col + buffers.kernel
    else:
        timeline = inference_timeline(graph, target)
    groups_by_weight = {l.weight: l.neuron_groups for l in reversed(layers) if l.weight is not None}
    totals = ForwardTotals(
        params=sum(m.numel for m in graph.parameters.values()),
        param_bytes=sum(parameter_bytes(n, m, target) for n, m in graph.parameters.items()),
        flops=sum(l.flops for l in layers),
        macs=sum(l.macs for l in layers),
        activation_bytes=sum(l.output_bytes for l in layers),
        inference_peak_bytes=max(timeline, default=0) + scratch,
        neuron_groups=sum(groups_by_weight.values()),
        layers=len(layers),
    )
    notes: list[str] = []
    if graph.fallback_reason:
        notes.append(f"torch.fx.symbolic_trace failed ({graph.fallback_reason}); traced with torch.export")
    return ForwardReport(
        model=model, target=target.name,
        input_shapes={k: list(v.shape) for k, v in graph.inputs.items()},
        trace_method=graph.trace_method, fallback_reason=graph.fallback_reason,
        group_size=graph.group_size, layers=layers, totals=totals, budget_bytes=budget_bytes, notes=notes,
    )

