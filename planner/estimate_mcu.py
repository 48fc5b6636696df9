"""Training-step memory on a microcontroller (the ``mcu`` family), after tiny-training's conventions.

Differences from the host (PyTorch eager) schedule in :mod:`budgetplan.estimate`:

* activations in the target's ``activation_dtype`` (int8); BatchNorm folded into its conv (its output
  is the conv's buffer); what is kept for backward comes from :mod:`budgetplan.cost_models.mcu`
  (1-bit ReLU masks, conv inputs only for updated weights, partial depthwise inputs);
* frozen weights stay in flash and cost no SRAM; updated weights live in SRAM (``weight_dtype``, 1-D
  biases in ``bias_dtype``) for the whole step, as does optimizer state (``optimizer_dtype``);
* gradients (of weights and of activations) are in ``gradient_dtype``;
* **operator reordering** (``reorder=True``, the default): each weight is updated right after its
  gradient is computed, so a weight gradient lives only during its layer's backward; with
  ``reorder=False`` all weight gradients are kept until the optimizer step, as in eager frameworks.

Peak memory is the maximum of live SRAM bytes over forward, backward and step. Units: bytes, FLOPs,
seconds.
"""

from __future__ import annotations

from budgetplan.backward import BackwardAnalysis, analyze_backward
from budgetplan.cost_models.mcu import LayerContext, mcu_saved
from budgetplan.estimate import MemoryBreakdown, TimelinePoint, TrainingEstimate, _check_optimizer
from budgetplan.graph import LayerGraph, fused_storages
from budgetplan.targets import Target
from budgetplan.update_set import UpdateSet

_OPTIMIZER_STATE_PER_ELEMENT = {"sgd": 0, "sgd-momentum": 1, "adam": 2}


def _param_kind(name: str, ndim: int) -> str:
    return "bias" if ndim == 1 else "weight"


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
) -> TrainingEstimate:
    """tiny-training-style estimate of one training step on a microcontroller target."""
    _check_optimizer(optimizer)
    ba = analysis or analyze_backward(graph, update)
    act_bytes = target.dtype_bytes("activation")
    grad_bytes = target.dtype_bytes("gradient")
    layers = list(graph.layers())
    index_of = {layer.name: i for i, layer in enumerate(layers)}
    storages = graph.storages

    # BatchNorm and ReLU/ReLU6 after a conv are fused into it: their output is the conv's buffer (0 bytes
    # of their own; the conv's buffer lives as long as their outputs are used).
    folding = fused_storages(graph)
    folded = set(folding)

    def storage_size(key: int) -> int:
        s = storages[key]
        if key in folded:
            return 0
        return s.numel * act_bytes if s.floating else s.nbytes

    # Per layer: activation inputs, whether a gradient flows into them, trained fraction of its weight.
    backward_layers = set(ba.backward_layers)
    rg_inputs: dict[str, list[int]] = {}
    for cb in ba.backward:
        call = ba.calls[cb.index].call
        for i, flag in enumerate(cb.needs_grad):
            if flag and call.input_keys[i] in storages:
                rg_inputs.setdefault(cb.layer, []).append(call.input_keys[i])

    last_use: dict[int, int] = {}
    layer_inputs: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        keys: list[int] = []
        for call in layer.aten:
            for key in call.input_keys:
                if key in storages and key not in layer.new_storages and key not in keys:
                    keys.append(key)
        layer_inputs[layer.name] = keys
        for key in keys + list(layer.new_storages):
            last_use[key] = i
    for key in graph.output_storages:
        last_use[key] = len(layers) - 1
    for fused_key, conv_key in folding.items():
        last_use[conv_key] = max(last_use.get(conv_key, 0), last_use.get(fused_key, 0))

    saved_items: dict[str, list[tuple[int | None, int]]] = {}
    kept_activations: dict[int, int] = {}  # storage key -> index of the earliest saver (freed at its backward)
    for i, layer in enumerate(layers):
        if layer.name not in backward_layers:
            continue
        weight_rows = graph.parameters[layer.weight].shape[0] if layer.weight else 0
        trained = ba.trained_rows.get(layer.weight, 0) if layer.weight else 0
        depthwise = bool(layer.weight) and len(graph.parameters[layer.weight].shape) == 4 and \
            graph.parameters[layer.weight].shape[1] == 1 and weight_rows > 1
        keys = layer_inputs[layer.name]
        ctx = LayerContext(
            layer=layer, input_keys=tuple(keys), input_numels=tuple(storages[k].numel for k in keys),
            output_numel=storages[layer.new_storages[0]].numel if layer.new_storages else
            (max((c.outputs[0].numel for c in layer.aten if c.outputs), default=0)),
            grad_flows=bool(rg_inputs.get(layer.name)), trained_fraction=trained / weight_rows if weight_rows else 0.0,
            depthwise=depthwise, activation_bytes=act_bytes,
        )
        items = mcu_saved(ctx)
        saved_items[layer.name] = items
        for key, size in items:
            if key is not None and size >= storage_size(key):
                kept_activations.setdefault(key, i)

    # Persistent SRAM: updated weights and optimizer state (frozen weights are in flash).
    weights_sram = 0
    grads_by_layer: dict[str, int] = {}
    param_owner: dict[str, str] = {}
    for layer in layers:
        for p in layer.parameters:
            param_owner.setdefault(p, layer.name)
    for name, elements in ba.trained_elements.items():
        meta = graph.parameters[name]
        weights_sram += elements * target.dtype_bytes(_param_kind(name, len(meta.shape)))
        grads_by_layer[param_owner.get(name, "")] = grads_by_layer.get(param_owner.get(name, ""), 0) + \
            elements * grad_bytes
    opt_state = _OPTIMIZER_STATE_PER_ELEMENT[optimizer] * sum(ba.trained_elements.values()) * \
        target.dtype_bytes("optimizer")

    timeline: list[TimelinePoint] = []
    live_act: dict[int, int] = {}
    live_saved: dict[tuple[str, int], int] = {}  # separate saved buffers (masks, partial inputs)

    def point(phase: str, label: str, grads: int) -> None:
        bd = MemoryBreakdown(activations=sum(live_act.values()) + sum(live_saved.values()),
                             weights=weights_sram, gradients=grads, optimizer=opt_state, other=0)
        timeline.append(TimelinePoint(phase, label, bd.total, bd))

    for key, s in storages.items():
        if s.is_input:
            live_act[key] = storage_size(key)
    for i, layer in enumerate(layers):
        for key in layer.new_storages:
            live_act[key] = storage_size(key)
        for n, (key, size) in enumerate(saved_items.get(layer.name, [])):
            if key is None or key not in kept_activations:
                live_saved[(layer.name, n)] = size
        point("forward", layer.name, 0)
        for key in list(live_act):
            if last_use.get(key, -1) <= i and key not in kept_activations:
                del live_act[key]

    release = {}
    for key, at in kept_activations.items():
        release.setdefault(layers[at].name, []).append(key)
    act_grads: dict[int, int] = {}
    held_grads = 0
    for layer in reversed(layers):
        if layer.name not in backward_layers:
            continue
        i = index_of[layer.name]
        for key in rg_inputs.get(layer.name, []):
            if key not in act_grads:
                act_grads[key] = storages[key].numel * grad_bytes
        layer_grad = grads_by_layer.get(layer.name, 0)
        if not reorder:
            held_grads += layer_grad
        point("backward", layer.name, sum(act_grads.values()) + (layer_grad if reorder else held_grads))
        for key in [k for k in act_grads if storages[k].producer == layer.name or index_of.get(
                storages[k].producer, -1) >= i]:
            del act_grads[key]
        for n in range(len(saved_items.get(layer.name, []))):
            live_saved.pop((layer.name, n), None)
        for key in release.get(layer.name, []):
            live_act.pop(key, None)
    live_act.clear()
    live_saved.clear()
    point("step", "optimizer step" if not reorder else "end of step", 0 if reorder else held_grads)

    peak = max(timeline, key=lambda p: p.live_bytes)
    forward_flops = sum(layer.flops for layer in layers)
    to_act = sum(cb.flops_to_activations for cb in ba.backward)
    to_param = sum(cb.flops_to_parameters for cb in ba.backward)
    saved_total = sum(size for items in saved_items.values() for _, size in items)
    notes = [f"tiny-training conventions: {target.activation_dtype} activations, BatchNorm folded, 1-bit ReLU "
             f"masks, frozen weights in flash, operator reordering {'on' if reorder else 'off'}"]
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
