"""Price one training step of an update set on a target: memory over the schedule, FLOPs, latency.

The schedule is the one PyTorch eager runs (the ``host`` family): forward in execution order, then
backward in reverse order, then the optimizer step. A storage is live from the call that creates it to
its last use in the forward pass, or — when some call keeps it for backward — until the backward of
the earliest such call has run. Gradients of activations live from the backward of their first
consumer (in reverse order) to the backward of their producer. Parameter gradients live from their
backward to the end (eager PyTorch keeps ``.grad`` until ``zero_grad``); a parameter used more than
once gets each further gradient added out of place, so the new one and the sum are alive for a moment
beside the gradient so far. Optimizer state is allocated at the step. Each backward call also holds its
transient workspace while it runs (temporaries its backward formula allocates beyond the gradients it
returns, :mod:`budgetplan.cost_models.workspace`), counted under ``other``. **Peak memory is the maximum of live bytes over this timeline**, not a sum.

Units: bytes, FLOPs (2 per MAC, matmul/conv-like ops), seconds.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field
from typing import Any

from budgetplan.cost_models.workspace import backward_workspace
from budgetplan.errors import InputError
from budgetplan.model.graph import AtenCall, LayerGraph
from budgetplan.model.update_set import UpdateSet
from budgetplan.pricing.gradient_flow import BackwardAnalysis, analyze_backward
from budgetplan.targets import Target

OPTIMIZERS = ("sgd", "sgd-momentum", "adam")
LOSS_BYTES = 4  # the float32 loss scalar, alive from the loss to the end of the step
SEED_BYTES = 4  # backward's seed gradient (ones_like(loss)), alive during backward
ADAM_STEP_BYTES = 4  # torch.optim.Adam keeps a float32 0-d 'step' tensor per parameter


def optimizer_state_rule(optimizer: str) -> tuple[int, int]:
    """PyTorch's optimizer state as ``(copies of the gradient, bytes per trained parameter tensor)``:
    SGD none, momentum one buffer per gradient, Adam two buffers and a 4-byte step counter per tensor."""
    return {"sgd": (0, 0), "sgd-momentum": (1, 0), "adam": (2, ADAM_STEP_BYTES)}[optimizer]


@dataclass
class MemoryBreakdown:
    """Bytes by kind."""

    activations: int = 0
    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.activations + self.weights + self.gradients + self.optimizer + self.other


@dataclass
class TimelinePoint:
    """Live bytes after one step of the schedule."""

    phase: str  # "forward", "backward", "step"
    label: str  # layer name or event
    live_bytes: int
    breakdown: MemoryBreakdown


@dataclass
class TrainingEstimate:
    """Predicted cost of one training step.

    ``memory`` holds totals over the step: ``activations`` = distinct storages kept for backward
    (excluding parameters, buffers and the model input), ``weights`` = parameters and buffers,
    ``gradients`` = parameter gradients, ``optimizer`` = optimizer state, ``other`` = model input.
    ``memory_at_peak`` is what is live at the peak, where ``activations`` also counts forward
    temporaries, ``gradients`` also counts activation gradients in flight and ``other`` the model input
    plus backward workspace.
    """

    model: str
    target: str
    optimizer: str
    peak_bytes: int
    memory: MemoryBreakdown
    memory_at_peak: MemoryBreakdown
    peak_at: str
    flops: dict[str, int]  # forward, backward, backward_to_activations, backward_to_parameters
    latency_s: float
    trained_parameters: dict[str, int]  # parameter -> elements trained
    backward_layers: list[str]
    timeline: list[TimelinePoint]
    budget_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool | None:
        return None if self.budget_bytes is None else self.peak_bytes <= self.budget_bytes

    def to_dict(self, *, timeline: bool = True) -> dict[str, Any]:
        data = asdict(self)
        data["fits"] = self.fits
        for key in ("memory", "memory_at_peak"):
            data[key]["total"] = getattr(self, key).total
        if not timeline:
            data.pop("timeline")
        return data


def _check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer '{optimizer}'; use one of: {', '.join(OPTIMIZERS)}")


def forward_last_use(graph: LayerGraph, ba: BackwardAnalysis) -> dict[int, int]:
    """Index of the last forward call reading or writing each activation storage (model outputs: the
    last call), the end of its forward lifetime."""
    storages = ba.storages
    last_use: dict[int, int] = {}
    for rec in ba.calls:
        for key in rec.call.input_keys + rec.call.output_keys:
            if storages.get(key) is not None and storages[key].kind == "activation":
                last_use[key] = rec.index
    for key in graph.output_storages:
        if key in last_use:
            last_use[key] = len(ba.calls) - 1
    return last_use


def optimizer_state_bytes(optimizer: str, grad_bytes_by_param: dict[str, int]) -> int:
    """Optimizer state in bytes for PyTorch's optimizers: SGD none, momentum one buffer per gradient,
    Adam two buffers plus a 4-byte step counter per parameter."""
    copies, per_tensor = optimizer_state_rule(optimizer)
    return copies * sum(grad_bytes_by_param.values()) + per_tensor * len(grad_bytes_by_param)


def optimizer_step_workspace(optimizer: str, param_bytes: dict[str, int]) -> int:
    """Transient bytes of one step of PyTorch's single-tensor optimizers on CPU: Adam computes
    ``exp_avg_sq.sqrt()`` and a division per parameter (two temporaries of the largest parameter);
    SGD, with or without momentum, updates in place."""
    if optimizer != "adam" or not param_bytes:
        return 0
    return 2 * max(param_bytes.values())


def is_leaf_use(call: AtenCall, i: int) -> bool:
    """Whether input ``i`` of ``call`` is a parameter itself rather than a view of it: each such use sends
    autograd one gradient for the parameter (a view's gradient flows through the view op's backward).
    Unknown (a recording without view flags): False, so no second gradient is assumed."""
    return i < len(call.input_views) and not call.input_views[i]


def estimate_host(
    graph: LayerGraph,
    update: UpdateSet,
    target: Target,
    *,
    optimizer: str = "sgd",
    model: str = "",
    budget_bytes: int | None = None,
    analysis: BackwardAnalysis | None = None,
) -> TrainingEstimate:
    """PyTorch-eager (fp32) estimate of one training step: mirrors what autograd keeps."""
    _check_optimizer(optimizer)
    ba = analysis or analyze_backward(graph, update)
    storages = ba.storages
    calls = ba.calls

    weights = sum(s.nbytes for s in storages.values() if s.kind in ("parameter", "buffer"))
    inputs = sum(s.nbytes for s in storages.values() if s.kind == "input")

    last_use = forward_last_use(graph, ba)
    release_at: dict[int, list[int]] = {}  # call index -> saved storages freed after that call's backward
    for key, users in ba.saved.items():
        release_at.setdefault(min(users), []).append(key)

    timeline: list[TimelinePoint] = []
    live_act: dict[int, int] = {}
    act_live = 0  # sum of live_act, kept as it changes (summing at every point is quadratic)

    def point(phase: str, label: str, grads: int, act_grads: int, opt: int, workspace: int = 0) -> None:
        bd = MemoryBreakdown(activations=act_live, weights=weights, gradients=grads + act_grads,
                             optimizer=opt, other=inputs + workspace)
        timeline.append(TimelinePoint(phase, label, bd.total, bd))

    by_layer_end: dict[int, str] = {}
    for rec in calls:
        by_layer_end[rec.index] = rec.layer  # the last call of a layer wins: one point per layer
    last_call_of_layer = {layer: idx for idx, layer in by_layer_end.items()}
    created_by: dict[int, list[int]] = {}  # call index -> activation storages it creates (saved copies too)
    freed_after: dict[int, list[int]] = {}  # call index -> storages not kept, dead after that call
    for key, s in storages.items():
        if s.kind == "activation":
            created_by.setdefault(s.producer, []).append(key)
            if key not in ba.saved:
                freed_after.setdefault(max(s.producer, last_use.get(key, -1)), []).append(key)
    for rec in calls:
        for key in created_by.get(rec.index, ()):
            act_live += storages[key].nbytes - live_act.get(key, 0)
            live_act[key] = storages[key].nbytes
        if last_call_of_layer.get(rec.layer) == rec.index:
            point("forward", rec.layer, 0, 0, 0)
        for key in freed_after.get(rec.index, ()):
            act_live -= live_act.pop(key, 0)

    # Backward in reverse order.
    param_grads: dict[str, int] = {}
    leaf_uses: set[str] = set()  # parameters whose gradient autograd has received from a use already
    # Gradients of activations, keyed by (storage, version): an in-place op writes a new version whose
    # gradient is a new tensor, a view shares its base's version and gradient.
    act_grads: dict[tuple[int, int], int] = {}
    by_version: list[tuple[int, int]] = []  # max-heap of (-version, storage) of act_grads' keys
    grads_live = act_grads_live = 0
    for cb in reversed(ba.backward):
        call = calls[cb.index].call
        again: list[int] = []  # gradients of parameters that already have one from a later use
        for i, flag in enumerate(cb.needs_grad):
            if not flag:
                continue
            key = call.input_keys[i]
            s = storages.get(key)
            if s is not None and s.kind == "parameter":
                if s.name not in param_grads:
                    param_grads[s.name] = ba.grad_storage_bytes.get(
                        s.name, ba.trained_elements.get(s.name, 0) * graph.parameters[s.name].itemsize)
                    grads_live += param_grads[s.name]
                if is_leaf_use(call, i):  # the parameter itself (a view of it hands its gradient on)
                    if s.name in leaf_uses:
                        again.append(param_grads[s.name])
                    leaf_uses.add(s.name)
            elif (key, cb.input_versions[i]) not in act_grads:
                act_grads[(key, cb.input_versions[i])] = call.inputs[i].nbytes
                act_grads_live += call.inputs[i].nbytes
                heapq.heappush(by_version, (-cb.input_versions[i], key))
        workspace = backward_workspace(call.overload, call.args, call.inputs, call.outputs, cb.needs_grad,
                                       flop_counter=False)
        fresh = sum(again)  # this backward's new gradients of parameters used more than once
        point("backward", cb.layer, grads_live + fresh, act_grads_live, 0, workspace + LOSS_BYTES + SEED_BYTES)
        while by_version and -by_version[0][0] >= cb.index:
            version, key = heapq.heappop(by_version)  # the backward of the call that wrote it consumed it
            act_grads_live -= act_grads.pop((key, -version), 0)
        for key in release_at.get(cb.index, ()):
            act_live -= live_act.pop(key, 0)
        if again:
            # autograd adds a parameter's further gradient out of place, one parameter at a time: the
            # gradient so far, the new one and their sum are alive together; then the sum replaces both
            point("backward", f"{cb.layer} (gradient sum)", grads_live + fresh + max(again), act_grads_live, 0,
                  LOSS_BYTES + SEED_BYTES)
    grads_total = sum(param_grads.values())
    own_bytes = {name: ba.trained_elements.get(name, 0) * graph.parameters[name].itemsize for name in param_grads}
    opt_bytes = optimizer_state_bytes(optimizer, own_bytes)
    live_act.clear()
    act_live = 0
    step_extra = LOSS_BYTES if ba.backward else 0
    point("step", "optimizer step", grads_total, 0, opt_bytes + optimizer_step_workspace(optimizer, own_bytes),
          step_extra)
    point("step", "after step", grads_total, 0, opt_bytes)

    peak = max(timeline, key=lambda p: p.live_bytes)
    forward_flops = sum(rec.call.flops for rec in calls)
    to_act = sum(cb.flops_to_activations for cb in ba.backward)
    to_param = sum(cb.flops_to_parameters for cb in ba.backward)
    total_macs = (forward_flops + to_act + to_param) / 2
    notes = []
    if ba.probed_ops:
        notes.append("saved tensors of these ops were found by running them (no rule): "
                     + ", ".join(ba.probed_ops))
    return TrainingEstimate(
        model=model, target=target.name, optimizer=optimizer, peak_bytes=peak.live_bytes,
        memory=MemoryBreakdown(activations=ba.saved_activation_bytes(), weights=weights, gradients=grads_total,
                               optimizer=opt_bytes, other=inputs),
        memory_at_peak=peak.breakdown, peak_at=f"{peak.phase}:{peak.label}",
        flops={"forward": forward_flops, "backward": to_act + to_param, "backward_to_activations": to_act,
               "backward_to_parameters": to_param},
        latency_s=total_macs / target.macs_per_second if target.macs_per_second else 0.0,
        trained_parameters=dict(ba.trained_elements), backward_layers=ba.backward_layers, timeline=timeline,
        budget_bytes=budget_bytes, notes=notes,
    )
