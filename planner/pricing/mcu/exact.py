"""Training-step memory on a microcontroller (the ``mcu`` family), after tiny-training's conventions.

Differences from the host (PyTorch eager) schedule in :mod:`budgetplan.pricing.host.exact`:

* activations in the target's ``activation_dtype`` (int8); a BatchNorm and a ReLU/ReLU6 after a conv
  are fused into it (one buffer); what is kept for backward comes from
  :mod:`budgetplan.cost_models.mcu` (1-bit ReLU masks, conv inputs only for trained weights, partial
  depthwise inputs);
* frozen weights stay in flash and cost no SRAM; trained weights live in SRAM (``weight_dtype``, 1-D
  tensors in ``bias_dtype``) for the whole step, as does optimizer state (``optimizer_dtype``);
* gradients (of weights and of activations) are in ``gradient_dtype``;
* **operator reordering** (``reorder=True``, the default): each weight is updated right after its
  gradient is computed, so a weight gradient lives only during its layer's backward; with
  ``reorder=False`` all weight gradients are kept until the optimizer step, as in eager frameworks.

:class:`McuLayout` holds everything that does not depend on the update set (it is shared with the
planner's linear model, :mod:`budgetplan.pricing.linear`). Peak memory is the maximum of live SRAM bytes
over forward, backward and step. Units: bytes, FLOPs, seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from budgetplan.pricing.gradient_flow import BackwardAnalysis, analyze_backward
from budgetplan.cost_models.mcu import LayerContext, McuSaved, mcu_saved
from budgetplan.pricing.host.exact import MemoryBreakdown, TimelinePoint, TrainingEstimate, _check_optimizer
from budgetplan.model.graph import Layer, LayerGraph, fused_storages
from budgetplan.targets import Target
from budgetplan.model.update_set import UpdateSet

OPTIMIZER_STATE_PER_ELEMENT = {"sgd": 0, "sgd-momentum": 1, "adam": 2}


@dataclass
class McuLayout:
    """The update-independent structure of a training step on an ``mcu`` target.

    ``storage_bytes``: activation storages (model input included) by key, in the target's activation
    dtype, 0 for fused layers' outputs; ``last_use``: index of the last layer reading each storage
    (fused outputs extend their conv's buffer); ``inputs``: activation input storages per layer;
    ``saved``: what each layer may keep (:class:`McuSaved`); ``param_owner``: the first layer using each
    parameter (where its gradient is computed and, with reordering, applied).
    """

    layers: list[Layer]
    index_of: dict[str, int]
    storage_bytes: dict[int, int]
    input_storages: set[int]
    producer_index: dict[int, int]  # storage -> index of the layer that creates it (-1: model input)
    last_use: dict[int, int]  # with fusion: a conv's buffer lives as long as its fused outputs
    dataflow_last_use: dict[int, int]  # without fusion: the last layer reading this very storage
    fused_into: dict[int, int]  # output of a fused BatchNorm/ReLU -> the conv output it shares a buffer with
    inputs: dict[str, list[int]]
    saved: dict[str, list[McuSaved]]
    param_owner: dict[str, str]
    activation_bytes: int
    gradient_bytes: int

    def param_bytes(self, graph: LayerGraph, target: Target, name: str, elements: int) -> int:
        """SRAM bytes of ``elements`` trained elements of parameter ``name`` (1-D: bias dtype)."""
        kind = "bias" if len(graph.parameters[name].shape) == 1 else "weight"
        return elements * target.dtype_bytes(kind)


def _is_depthwise(graph: LayerGraph, layer: Layer) -> bool:
    if layer.weight is None:
        return False
    shape = graph.parameters[layer.weight].shape
    return len(shape) >= 3 and shape[1] == 1 and shape[0] > 1


def mcu_layout(graph: LayerGraph, target: Target) -> McuLayout:
    """Build the :class:`McuLayout` of ``graph`` on ``target``."""
    act_bytes = target.dtype_bytes("activation")
    layers = list(graph.layers())
    index_of = {layer.name: i for i, layer in enumerate(layers)}
    storages = graph.storages
    fusion = fused_storages(graph)

    storage_bytes: dict[int, int] = {}
    producer_index: dict[int, int] = {}
    for key, s in storages.items():
        storage_bytes[key] = 0 if key in fusion else (s.numel * act_bytes if s.floating else s.nbytes)
        producer_index[key] = -1 if s.is_input else index_of[s.producer]

    last_use: dict[int, int] = {}
    inputs: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        keys: list[int] = []
        for call in layer.aten:
            for key in call.input_keys:
                if key in storages and key not in layer.new_storages and key not in keys:
                    keys.append(key)
        inputs[layer.name] = keys
        for key in keys + list(layer.new_storages):
            last_use[key] = i
    for key in graph.output_storages:
        last_use[key] = len(layers) - 1
    dataflow_last_use = dict(last_use)
    for fused_key, conv_key in fusion.items():
        last_use[conv_key] = max(last_use.get(conv_key, 0), last_use.get(fused_key, 0))

    saved: dict[str, list[McuSaved]] = {}
    for layer in layers:
        keys = inputs[layer.name]
        output_numel = storages[layer.new_storages[0]].numel if layer.new_storages else \
            max((c.outputs[0].numel for c in layer.aten if c.outputs), default=0)
        ctx = LayerContext(layer=layer, input_keys=tuple(keys),
                           input_numels=tuple(storages[k].numel for k in keys), output_numel=output_numel,
                           depthwise=_is_depthwise(graph, layer), activation_bytes=act_bytes)
        saved[layer.name] = mcu_saved(ctx)

    param_owner: dict[str, str] = {}
    for layer in layers:
        for p in layer.parameters:
            param_owner.setdefault(p, layer.name)
    return McuLayout(
        layers=layers, index_of=index_of, storage_bytes=storage_bytes,
        input_storages={k for k, s in storages.items() if s.is_input}, producer_index=producer_index,
        last_use=last_use, dataflow_last_use=dataflow_last_use, fused_into=fusion, inputs=inputs, saved=saved,
        param_owner=param_owner, activation_bytes=act_bytes,
        gradient_bytes=target.dtype_bytes("gradient"),
    )


def estimate_mcu(
    graph: LayerGraph,
    update: UpdateSet,
    target: Target,
    *,
    optimizer: str = "sgd",
    reorder: bool = True,
    model: str = "",
    budget_bytes: int | None = None,
    analysis: BackwardAnalysis | None = None,
    layout: McuLayout | None = None,
) -> TrainingEstimate:
    """tiny-training-style estimate of one training step on a microcontroller target."""
    _check_optimizer(optimizer)
    ba = analysis or analyze_backward(graph, update)
    lay = layout or mcu_layout(graph, target)
    layers = lay.layers
    storages = graph.storages

    # Decisions: which activation storages receive a gradient, which layers run backward.
    grad_into: set[int] = set()
    for cb in ba.backward:
        call = ba.calls[cb.index].call
        for i, flag in enumerate(cb.needs_grad):
            if flag and call.input_keys[i] in storages:
                grad_into.add(call.input_keys[i])
    backward_layers = set(ba.backward_layers)

    def fraction(layer: Layer) -> float:
        if layer.weight is None:
            return 0.0
        return ba.trained_rows.get(layer.weight, 0) / graph.parameters[layer.weight].shape[0]

    # What is kept: whole activation storages (their lifetime extends to the saver's backward) and
    # separate buffers (masks, partial depthwise inputs) alive from the saver's forward to its backward.
    kept_until: dict[int, int] = {}  # storage -> index of the earliest layer keeping it
    separate: dict[str, int] = {}  # layer -> bytes of its separate saved buffers
    saved_total = 0
    for i, layer in enumerate(layers):
        if layer.name not in backward_layers:
            continue
        for item in lay.saved[layer.name]:
            size = item.active_bytes(grad_into, fraction(layer))
            if not size:
                continue
            saved_total += size
            # keeping a fused layer's output keeps its conv's buffer
            root = None if item.key is None else lay.fused_into.get(item.key, item.key)
            if root is not None and size >= lay.storage_bytes.get(root, 0):
                kept_until.setdefault(root, i)
            else:
                separate[layer.name] = separate.get(layer.name, 0) + size

    # Persistent SRAM: trained weights and optimizer state (frozen weights are in flash).
    weights_sram = sum(lay.param_bytes(graph, target, n, e) for n, e in ba.trained_elements.items())
    grads_by_layer: dict[str, int] = {}
    for name, elements in ba.trained_elements.items():
        owner = lay.param_owner.get(name, "")
        grads_by_layer[owner] = grads_by_layer.get(owner, 0) + elements * lay.gradient_bytes
    opt_state = OPTIMIZER_STATE_PER_ELEMENT[optimizer] * sum(ba.trained_elements.values()) * \
        target.dtype_bytes("optimizer")

    timeline: list[TimelinePoint] = []
    live_act: dict[int, int] = {}
    live_separate: dict[str, int] = {}

    def point(phase: str, label: str, grads: int) -> None:
        bd = MemoryBreakdown(activations=sum(live_act.values()) + sum(live_separate.values()),
                             weights=weights_sram, gradients=grads, optimizer=opt_state, other=0)
        timeline.append(TimelinePoint(phase, label, bd.total, bd))

    for key in lay.input_storages:
        live_act[key] = lay.storage_bytes[key]
    for i, layer in enumerate(layers):
        for key in layer.new_storages:
            live_act[key] = lay.storage_bytes[key]
        if layer.name in separate:
            live_separate[layer.name] = separate[layer.name]
        point("forward", layer.name, 0)
        for key in list(live_act):
            if lay.last_use.get(key, -1) <= i and key not in kept_until:
                del live_act[key]

    act_grads: dict[int, int] = {}
    held_grads = 0
    for layer in reversed(layers):
        if layer.name not in backward_layers:
            continue
        i = lay.index_of[layer.name]
        for key in lay.inputs[layer.name]:
            root = lay.fused_into.get(key, key)  # a fused layer's gradient shares its conv's buffer
            if key in grad_into and root not in act_grads:
                act_grads[root] = storages[root].numel * lay.gradient_bytes
        layer_grad = grads_by_layer.get(layer.name, 0)
        held_grads += 0 if reorder else layer_grad
        point("backward", layer.name, sum(act_grads.values()) + (layer_grad if reorder else held_grads))
        for key in [k for k in act_grads if lay.producer_index[k] >= i]:
            del act_grads[key]  # its producer's backward has consumed it
        live_separate.pop(layer.name, None)
        for key in [k for k, at in kept_until.items() if at == i]:
            live_act.pop(key, None)
    live_act.clear()
    live_separate.clear()
    point("step", "end of step" if reorder else "optimizer step", 0 if reorder else held_grads)

    peak = max(timeline, key=lambda p: p.live_bytes)
    forward_flops = sum(layer.flops for layer in layers)
    to_act = sum(cb.flops_to_activations for cb in ba.backward)
    to_param = sum(cb.flops_to_parameters for cb in ba.backward)
    notes = [f"tiny-training conventions: {target.activation_dtype} activations, BatchNorm and ReLU fused into "
             f"convs, 1-bit ReLU masks, frozen weights in flash, operator reordering {'on' if reorder else 'off'}"]
    return TrainingEstimate(
        model=model, target=target.name, optimizer=optimizer, peak_bytes=peak.live_bytes,
        memory=MemoryBreakdown(activations=saved_total, weights=weights_sram,
                               gradients=sum(grads_by_layer.values()), optimizer=opt_state, other=0),
        memory_at_peak=peak.breakdown, peak_at=f"{peak.phase}:{peak.label}",
        flops={"forward": forward_flops, "backward": to_act + to_param, "backward_to_activations": to_act,
               "backward_to_parameters": to_param},
        latency_s=(forward_flops + to_act + to_param) / 2 / target.macs_per_second,
        trained_parameters=dict(ba.trained_elements), backward_layers=ba.backward_layers, timeline=timeline,
        budget_bytes=budget_bytes, notes=notes,
    )

