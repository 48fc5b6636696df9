"""Training-step memory on a microcontroller (the ``mcu`` family): TinyEngine's runtime, tensor by tensor.

The model is an explicit list of the device's tensors (:class:`DeviceTensor`: name, kind, dtype, bytes,
first and last schedule step, and the block it continues when an operator runs in place) over
TinyEngine's schedule of a training step:

* **forward**, one step per layer, int8 (``forward:<layer>``);
* **backward**, layers in reverse order; each layer that runs backward has a step ``backward:<layer>``
  (its 1-D parameters' gradients — biases, consumed at once — then the gradients of its inputs, a
  transposed conv on the fp32 gradient for a conv) and, when its weight is trained, a step
  ``backward:<layer> (weight update)`` right after (the weight gradient and its SGD update). The input gradient is
  computed before the weight is updated, because it reads the weight;
* ``step``: the end (the optimizer step when updates are not reordered).

Peak memory is the maximum over steps of the bytes of live tensors, **plus** the largest im2col buffer
and the largest kernel buffer of the int8 forward kernels, as TinyEngine reports it (arena high-water +
``sbuf`` + ``kbuf``). The same tensor list is what ``budgetplan export`` places in the device arena
(:mod:`budgetplan.runtime.device_arena`), so plan and arena agree up to fragmentation.

The rules (each is named in the estimate's ``rules``; docs/cost-model.md):

* ``int8-activations`` — forward activations in ``activation_dtype``; a BatchNorm and a ReLU/ReLU6 after
  a conv are fused into it (one buffer); explicit zero padding read only by convs is done inside the
  conv kernels (no padded copy);
* ``inplace-depthwise-forward`` (``inplace``) — a depthwise conv whose input is read by nobody after it
  writes its output into the input's block; after a stride-2 one, later allocations may reuse all but a
  quarter of the block;
* ``inplace-depthwise-backward`` (``inplace``) — a stride-1 depthwise conv's transposed conv writes the
  input gradient into the output gradient's block, when nothing reads that gradient afterwards (the
  layer's weight is frozen; a bias gradient is taken before);
* ``trained-weights-in-sram`` — trained weights in ``weight_dtype`` (int8) and biases in ``bias_dtype``
  live in SRAM for the whole step; frozen ones stay in flash;
* ``fused-update`` (``fuse_update``, needs ``reorder``) — a weight-gradient op writes the update straight
  into the weight: no gradient buffer; a bias gradient is consumed at once. Without fusion, with
  reordering, each gradient is a buffer alive while its update runs; without reordering (``reorder``
  off) every gradient lives until the optimizer step at the end;
* ``fp32-activation-gradients`` — gradients of activations in ``gradient_dtype``, one buffer per
  (fused) activation; an addition, a view or a folded BatchNorm hands the output gradient on to its
  first input without a copy; a second gradient into a tensor that has one is computed into a
  temporary and added;
* ``1-bit-masks`` — a ReLU on the gradient path keeps one bit per output element (applied in place);
* ``whole-int8-input`` — a conv/linear whose weight is (partly) trained keeps its whole int8 input until
  its weight update;
* ``kernel-scratch`` — + the largest im2col and the largest kernel buffer (:mod:`budgetplan.cost_models.mcu`);
* ``4-byte-rounding`` — every tensor's size is rounded up to 4 bytes.

:class:`McuLayout` holds what does not depend on the update set (it is shared with the planner's linear
bound, :mod:`budgetplan.pricing.mcu.bound`). Units: bytes, FLOPs, seconds.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from budgetplan.cost_models.mcu import (
    GRADIENT_PASSTHROUGH,
    MCU_SCRATCH,
    ConvGeometry,
    KernelBuffers,
    LayerContext,
    McuSaved,
    mcu_saved,
)
from budgetplan.errors import InputError
from budgetplan.model.graph import Layer, LayerGraph, fused_storages
from budgetplan.model.update_set import UpdateSet
from budgetplan.pricing.gradient_flow import BackwardAnalysis, analyze_backward
from budgetplan.pricing.host.exact import MemoryBreakdown, TimelinePoint, TrainingEstimate, _check_optimizer
from budgetplan.pricing.mcu.tt_convention import tt_convention_memory
from budgetplan.targets import Target

__all__ = ["ALIGNMENT", "OPTIMIZER_STATE_PER_ELEMENT", "RULES", "DeviceTensor", "McuLayout", "McuTrainingEstimate",
           "estimate_mcu", "forward_live_bytes", "mcu_layout", "round_up"]

OPTIMIZER_STATE_PER_ELEMENT = {"sgd": 0, "sgd-momentum": 1, "adam": 2}
ALIGNMENT = 4  # TinyEngine rounds every tensor to 4 bytes

#: the rules of the model, in the order docs/cost-model.md lists them (name -> what it says)
RULES: dict[str, str] = {
    "int8-activations": "forward activations in the activation dtype; BatchNorm and ReLU fused into the conv, "
                        "zero padding done inside the conv kernels",
    "inplace-depthwise-forward": "a depthwise conv writes its output into its input's block (stride 2: "
                                 "later tensors may reuse all but a quarter of it)",
    "inplace-depthwise-backward": "a stride-1 depthwise conv's input gradient overwrites its output gradient",
    "trained-weights-in-sram": "trained weights (weight dtype) and biases (bias dtype) in SRAM for the whole "
                               "step; frozen ones in flash",
    "reorder": "each weight is updated right after its gradient (off: every gradient kept to the optimizer "
               "step)",
    "fused-update": "the weight-gradient op writes the update into the weight: no gradient buffer; a bias "
                    "gradient is consumed at once",
    "fp32-activation-gradients": "activation gradients in the gradient dtype, one per fused activation; "
                                 "additions and views pass theirs on without a copy",
    "1-bit-masks": "a ReLU on the gradient path keeps 1 bit per output element",
    "whole-int8-input": "a conv/linear with a (partly) trained weight keeps its whole int8 input",
    "kernel-scratch": "peak = arena high-water + largest im2col buffer + largest kernel buffer",
    "4-byte-rounding": "every tensor is rounded up to 4 bytes",
}


def round_up(n: int, alignment: int = ALIGNMENT) -> int:
    """``n`` rounded up to a multiple of ``alignment`` bytes."""
    return -(-int(n) // alignment) * alignment


@dataclass(frozen=True)
class DeviceTensor:
    """One tensor of the device's training step.

    ``kind``: ``input``, ``activation`` (int8 forward output, possibly kept for backward), ``mask`` (1-bit
    ReLU mask), ``weight``/``bias`` (trained parameter in SRAM), ``optimizer`` (its state),
    ``weight_gradient``/``bias_gradient`` (a parameter's gradient buffer, only without fused update),
    ``activation_gradient`` (fp32), ``gradient_temporary`` (a second gradient into a tensor, before it is
    added). ``nbytes``: bytes after 4-byte rounding. ``first``/``last``: indices into the estimate's
    ``timeline`` (schedule steps), inclusive. ``alias_of``: the tensor whose block this one continues
    (an in-place operator's output; it starts the step after that tensor ends and sits at its offset).
    """

    name: str
    kind: str
    dtype: str
    nbytes: int
    first: int
    last: int
    alias_of: str | None = None
    note: str = ""


@dataclass
class McuTrainingEstimate(TrainingEstimate):
    """A :class:`TrainingEstimate` with the device's tensors and the rules that priced them.

    ``memory`` (totals): ``activations`` = int8 tensors kept for backward and 1-bit masks, ``weights`` =
    trained weights and biases in SRAM, ``gradients`` = the parameter gradients the step computes (with a
    fused update they never exist as buffers: ``memory_at_peak`` and the timeline hold what is live),
    ``optimizer`` = its state, ``other`` = the kernel scratch.

    ``rules``: one entry per rule of the model (``name``, ``enabled``, ``detail``); ``device_tensors``:
    every tensor of the step, over the steps of ``timeline``; ``scratch``: the im2col and kernel buffers
    added to the arena's peak (bytes); ``options``: the runtime options (``reorder``, ``inplace``,
    ``fuse_update``); ``tiny_training``: tiny-training's analytic memory of this update set, the
    convention its scheme labels use (:func:`budgetplan.pricing.mcu.tt_convention.tt_convention_memory`:
    ``bytes``, ``kib``, ``label`` such as ``49kb``, a breakdown) — not a peak.
    """

    rules: list[dict[str, Any]] = field(default_factory=list)
    device_tensors: list[DeviceTensor] = field(default_factory=list)
    scratch: dict[str, int] = field(default_factory=dict)
    options: dict[str, bool] = field(default_factory=dict)
    tiny_training: dict[str, Any] | None = None

    def to_dict(self, *, timeline: bool = True) -> dict[str, Any]:
        data = super().to_dict(timeline=timeline)
        if not timeline:
            data.pop("device_tensors", None)
        return data

    @property
    def arena_peak_bytes(self) -> int:
        """The peak without the kernel scratch: the largest sum of live tensor bytes at one step."""
        return self.peak_bytes - sum(self.scratch.values())


# --------------------------------------------------------------------------------------------------
# The update-independent program
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InplaceForward:
    """A depthwise conv at layer ``layer`` that may run in place: input block ``source`` (a root storage),
    output root ``output``; ``stride2``: later allocations may reuse all but a quarter of the block."""

    layer: int
    source: int
    output: int
    stride2: bool


@dataclass
class McuLayout:
    """The update-independent structure of a training step on an ``mcu`` target (bytes, layer indices).

    Storages are grouped by **root**: a conv's output and the BatchNorm/ReLU outputs fused into it are
    one buffer (``root_of``). Per root: ``size`` (int8 bytes, rounded), ``grad_size`` (fp32 bytes),
    ``producer`` (layer index, -1 for a model input), ``last_use`` (last forward reader of any member).
    ``inputs``: activation input storages per layer; ``saved``: what each layer may keep
    (:class:`McuSaved`); ``param_owner``: the first layer using each parameter.

    The gradient program: ``writers[root]``: layers (latest first) that pass a gradient into a member of
    the root from outside its fused chain, with the member key and whether the op is a passthrough;
    ``alias_parent[root]``: the output root whose gradient block this root's gradient continues (its
    first writer is an addition or a view that hands its output gradient on); ``inplace_forward`` and
    ``inplace_backward``: depthwise convs that may run in place (by layer index).
    """

    layers: list[Layer]
    index_of: dict[str, int]
    root_of: dict[int, int]
    members: dict[int, list[int]]
    size: dict[int, int]
    grad_size: dict[int, int]
    mask_size: dict[str, int]
    producer: dict[int, int]
    key_producer: dict[int, int]
    last_use: dict[int, int]
    input_roots: list[int]
    output_roots: set[int]
    inputs: dict[str, list[int]]
    out_root: dict[int, int | None]
    saved: dict[str, list[McuSaved]]
    param_owner: dict[str, str]
    has_2d: dict[int, bool]
    writers: dict[int, list[tuple[int, int, bool]]]
    alias_parent: dict[int, int]
    inplace_forward: dict[int, InplaceForward]
    inplace_backward: dict[int, tuple[int, int]]  # dw layer -> (output root, input root)
    geometry: dict[int, ConvGeometry]
    activation_bytes: int
    gradient_bytes: int
    activation_dtype: str
    gradient_dtype: str
    roots_in_order: list[int]  # model inputs, then roots in the order their layers create them

    # fixed step indices: forward i, backward B(i), update U(i) = B(i) + 1, the end
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def b_step(self, i: int) -> int:
        return len(self.layers) + 2 * (len(self.layers) - 1 - i)

    def u_step(self, i: int) -> int:
        return self.b_step(i) + 1

    @property
    def end_step(self) -> int:
        return 3 * len(self.layers)

    def step_label(self, step: int) -> tuple[str, str]:
        """(phase, label) of a fixed step index."""
        n = len(self.layers)
        if step < n:
            return "forward", self.layers[step].name
        if step >= 3 * n:
            return "step", "end of step"
        i = n - 1 - (step - n) // 2
        name = self.layers[i].name
        return ("backward", name) if (step - n) % 2 == 0 else ("backward", f"{name} (weight update)")

    def param_bytes(self, graph: LayerGraph, target: Target, name: str, elements: int) -> int:
        """SRAM bytes of ``elements`` trained elements of parameter ``name`` (1-D: bias dtype), unrounded."""
        kind = "bias" if len(graph.parameters[name].shape) == 1 else "weight"
        return elements * target.dtype_bytes(kind)

    def passes_on(self, i: int, root: int) -> bool:
        """Layer ``i`` hands its output gradient on to input ``root`` unchanged (an addition's operand, a
        view, a folded BatchNorm, a ReLU's in-place mask), rather than computing a new tensor."""
        out = self.out_root[i]
        return self.layers[i].op in GRADIENT_PASSTHROUGH and out is not None and \
            self.grad_size.get(out) == self.grad_size.get(root)

    def read_step(self, key: int, trained_2d: bool) -> int:
        """The last step reading the gradient of storage ``key``: its producer's update step when that layer's
        weight is trained (the weight gradient reads it), else its backward step."""
        p = self.key_producer[key]
        return self.u_step(p) if trained_2d else self.b_step(p)


def _is_depthwise(graph: LayerGraph, layer: Layer) -> bool:
    if layer.weight is None:
        return False
    shape = graph.parameters[layer.weight].shape
    return len(shape) >= 3 and shape[1] == 1 and shape[0] > 1


def _conv_geometry(graph: LayerGraph, layer: Layer) -> ConvGeometry | None:
    """The conv's geometry from its recorded ``aten.convolution`` call (None for other layers)."""
    if layer.weight is None or layer.op not in MCU_SCRATCH:
        return None
    for call in layer.aten:
        if call.op.startswith("aten.convolution") and call.args and len(call.args) >= 9:
            x, w = call.args[0], call.args[1]
            if getattr(w, "shape", None) is None or getattr(x, "shape", None) is None:
                return None
            padding = tuple(int(p) for p in call.args[4])
            return ConvGeometry(weight_shape=tuple(w.shape), input_shape=tuple(x.shape[1:]), padding=padding,
                                groups=int(call.args[8]), stride=tuple(int(s) for s in call.args[3]))
    return None


PAD_OPS = frozenset({"pad", "constant_pad_nd"})


def _folded_pads(graph: LayerGraph, layers: list[Layer]) -> dict[int, int]:
    """Explicit zero padding whose output only convs read (TensorFlow-style "same" padding, as exported by
    transformers' MobileNetV2): TinyEngine's conv kernels pad inside, so the padded copy is never made.
    Output storage of each such pad -> the storage it pads."""
    readers: dict[int, list[Layer]] = defaultdict(list)
    for layer in layers:
        for call in layer.aten:
            for key in call.input_keys:
                if key in graph.storages and key not in layer.new_storages:
                    readers[key].append(layer)
    folded: dict[int, int] = {}
    for layer in layers:
        if layer.op not in PAD_OPS or len(layer.new_storages) != 1:
            continue
        sources = [k for call in layer.aten for k in call.input_keys if k in graph.storages
                   and k not in layer.new_storages]
        out = layer.new_storages[0]
        if len(set(sources)) == 1 and readers.get(out) and all(r.op in MCU_SCRATCH for r in readers[out]):
            folded[out] = sources[0]
    return folded


def mcu_layout(graph: LayerGraph, target: Target) -> McuLayout:
    """Build the :class:`McuLayout` of ``graph`` on ``target``."""
    act_bytes = target.dtype_bytes("activation")
    grad_bytes = target.dtype_bytes("gradient")
    layers = list(graph.layers())
    n = len(layers)
    index_of = {layer.name: i for i, layer in enumerate(layers)}
    storages = graph.storages
    fusion = fused_storages(graph)
    root_of = {key: fusion.get(key, key) for key in storages}
    for key, source in _folded_pads(graph, layers).items():
        root_of[key] = root_of.get(source, source)
    members: dict[int, list[int]] = defaultdict(list)
    for key in storages:
        members[root_of[key]].append(key)

    key_producer = {key: (-1 if s.is_input else index_of[s.producer]) for key, s in storages.items()}
    inputs: dict[str, list[int]] = {}
    last_use: dict[int, int] = {}
    for i, layer in enumerate(layers):
        keys: list[int] = []
        for call in layer.aten:
            for key in call.input_keys:
                if key in storages and key not in layer.new_storages and key not in keys:
                    keys.append(key)
        inputs[layer.name] = keys
        for key in keys + list(layer.new_storages):
            last_use[root_of[key]] = max(last_use.get(root_of[key], -1), i)
    output_roots = {root_of[k] for k in graph.output_storages if k in storages}
    for root in output_roots:
        last_use[root] = n - 1

    size: dict[int, int] = {}
    grad_size: dict[int, int] = {}
    producer: dict[int, int] = {}
    for root in members:
        s = storages[root]
        size[root] = round_up(s.numel * act_bytes if s.floating else s.nbytes)
        grad_size[root] = round_up(s.numel * grad_bytes) if s.floating and not s.is_input else 0
        producer[root] = key_producer[root]
        last_use.setdefault(root, max(producer[root], 0))
    input_roots = [k for k, s in storages.items() if s.is_input]
    # a deterministic order (storage keys are addresses): inputs, then by producer and output position
    roots_in_order = [r for r in input_roots if r in size]
    for layer in layers:
        roots_in_order += [k for k in layer.new_storages if k in size and k not in roots_in_order]
    roots_in_order += [r for r in size if r not in roots_in_order]

    out_root: dict[int, int | None] = {}
    for i, layer in enumerate(layers):
        outs = [root_of[k] for k in layer.output_storages if k in storages]
        out_root[i] = outs[0] if outs else None

    saved: dict[str, list[McuSaved]] = {}
    mask_size: dict[str, int] = {}
    for layer in layers:
        keys = inputs[layer.name]
        output_numel = storages[layer.new_storages[0]].numel if layer.new_storages else \
            max((c.outputs[0].numel for c in layer.aten if c.outputs), default=0)
        ctx = LayerContext(layer=layer, input_keys=tuple(keys),
                           input_numels=tuple(storages[k].numel for k in keys), output_numel=output_numel,
                           depthwise=_is_depthwise(graph, layer), activation_bytes=act_bytes)
        saved[layer.name] = mcu_saved(ctx)
        mask_size[layer.name] = sum(round_up(item.nbytes) for item in saved[layer.name] if item.key is None)

    param_owner: dict[str, str] = {}
    for layer in layers:
        for p in layer.parameters:
            param_owner.setdefault(p, layer.name)
    has_2d = {i: False for i in range(n)}
    for p, owner in param_owner.items():
        if len(graph.parameters[p].shape) >= 2 and graph.parameters[p].dtype.is_floating_point:
            has_2d[index_of[owner]] = True

    # Gradient writers: a layer passes a gradient into each floating activation input from outside the
    # input's fused chain (a fused BatchNorm/ReLU works on its conv's buffer in place).
    writers: dict[int, list[tuple[int, int, bool]]] = defaultdict(list)
    for i in range(n - 1, -1, -1):
        layer = layers[i]
        for key in inputs[layer.name]:
            s = storages[key]
            if s.is_input or not s.floating or root_of[key] == out_root[i]:
                continue
            out = out_root[i]
            passthrough = layer.op in GRADIENT_PASSTHROUGH and out is not None and \
                grad_size[out] == grad_size[root_of[key]]
            writers[root_of[key]].append((i, key, passthrough))
    alias_parent: dict[int, int] = {}
    for root, ws in writers.items():
        i, key, passthrough = ws[0]
        parent = out_root[i]
        if not passthrough or has_2d[i] or parent is None or parent == root:
            continue
        first_input = next((k for k in inputs[layers[i].name]
                            if storages[k].floating and not storages[k].is_input), None)
        if first_input != key or grad_size[parent] != grad_size[root]:
            continue
        if parent not in writers and parent not in output_roots:
            continue  # nobody writes the output's gradient: nothing to hand on
        alias_parent[root] = parent

    geometry: dict[int, ConvGeometry] = {}
    inplace_forward: dict[int, InplaceForward] = {}
    inplace_backward: dict[int, tuple[int, int]] = {}
    for i, layer in enumerate(layers):
        geo = _conv_geometry(graph, layer)
        if geo is None:
            continue
        geometry[i] = geo
        keys = [k for k in inputs[layer.name] if storages[k].floating]
        out = out_root[i]
        if not geo.depthwise or len(keys) != 1 or out is None or not layer.new_storages:
            continue
        source = root_of[keys[0]]
        stride = geo.stride
        if last_use.get(source) == i and size[out] <= size[source]:
            inplace_forward[i] = InplaceForward(i, source, out, any(s > 1 for s in stride))
        if all(s == 1 for s in stride) and writers.get(source, [(None,)])[0][0] == i and \
                grad_size[source] == grad_size[out] and source not in alias_parent and \
                (out in writers or out in output_roots):
            inplace_backward[i] = (out, source)

    return McuLayout(
        layers=layers, index_of=index_of, root_of=root_of, members=dict(members), size=size,
        grad_size=grad_size, mask_size=mask_size, producer=producer, key_producer=key_producer,
        last_use=last_use, input_roots=input_roots, output_roots=output_roots, inputs=inputs,
        out_root=out_root, saved=saved, param_owner=param_owner, has_2d=has_2d, writers=dict(writers),
        alias_parent=alias_parent, inplace_forward=inplace_forward, inplace_backward=inplace_backward,
        geometry=geometry, activation_bytes=act_bytes, gradient_bytes=grad_bytes,
        activation_dtype=target.activation_dtype, gradient_dtype=target.gradient_dtype,
        roots_in_order=roots_in_order,
    )


def block_size_after(lay: McuLayout, ip: InplaceForward, source_bytes: int) -> int:
    """Bytes an in-place depthwise conv's block still holds after the conv: the whole block at stride 1,
    at stride 2 the quarter TinyEngine keeps (never less than the output)."""
    if not ip.stride2:
        return max(source_bytes, lay.size[ip.output])
    return max(lay.size[ip.output], round_up(math.ceil(source_bytes / 4)))


def static_block_sizes(lay: McuLayout) -> dict[int, int]:
    """The bytes each root's block holds over its forward life when every in-place candidate runs in place
    (the largest it can be: an in-place output continues its input's block)."""
    sizes = dict(lay.size)
    for d in sorted(lay.inplace_forward):
        ip = lay.inplace_forward[d]
        sizes[ip.output] = block_size_after(lay, ip, sizes[ip.source])
    return sizes


def kernel_buffers(lay: McuLayout, inplace_layers: set[int]) -> KernelBuffers:
    """The largest im2col and kernel buffer over the forward convs (``inplace_layers`` run in place)."""
    im2col = kernel = 0
    for i, geo in lay.geometry.items():
        rule = MCU_SCRATCH.get(lay.layers[i].op)
        if rule is None:
            continue
        if i in inplace_layers:
            geo = ConvGeometry(geo.weight_shape, geo.input_shape, geo.padding, geo.groups, geo.stride, inplace=True)
        buf = rule(geo)
        im2col, kernel = max(im2col, round_up(buf.im2col)), max(kernel, round_up(buf.kernel))
    return KernelBuffers(im2col, kernel)


def forward_live_bytes(lay: McuLayout, *, inplace: bool = True) -> tuple[list[int], KernelBuffers]:
    """Inference: live activation bytes after each forward layer (nothing kept for backward), and the
    kernel buffers TinyEngine adds on top. In-place depthwise convs run in place when ``inplace``."""
    n = lay.n_layers
    diff = [0] * (n + 1)
    sizes = dict(lay.size)
    ips = {d: ip for d, ip in lay.inplace_forward.items()} if inplace else {}
    taken = {ip.output: ip for ip in ips.values()}
    for root in lay.roots_in_order:
        first = max(lay.producer[root], 0)
        if root in taken:
            ip = taken[root]
            sizes[root] = block_size_after(lay, ip, sizes[ip.source])
            first = ip.layer + 1
        last = lay.last_use.get(root, first)
        if first > last or not sizes[root]:
            continue
        diff[first] += sizes[root]
        diff[last + 1] -= sizes[root]
    live, out = 0, []
    for i in range(n):
        live += diff[i]
        out.append(live)
    return out, kernel_buffers(lay, set(ips))


# --------------------------------------------------------------------------------------------------
# One update set
# --------------------------------------------------------------------------------------------------


def _rules(reorder: bool, inplace: bool, fuse: bool) -> list[dict[str, Any]]:
    enabled = {"inplace-depthwise-forward": inplace, "inplace-depthwise-backward": inplace, "reorder": reorder,
               "fused-update": fuse and reorder}
    out = []
    for name, detail in RULES.items():
        on = enabled.get(name, True)
        if name == "fused-update" and fuse and not reorder:
            detail += " (off: needs reorder)"
        out.append({"name": name, "enabled": on, "detail": detail})
    return out


def estimate_mcu(
    graph: LayerGraph,
    update: UpdateSet,
    target: Target,
    *,
    optimizer: str = "sgd",
    reorder: bool = True,
    inplace: bool = True,
    fuse_update: bool = True,
    model: str = "",
    budget_bytes: int | None = None,
    analysis: BackwardAnalysis | None = None,
    layout: McuLayout | None = None,
) -> McuTrainingEstimate:
    """The device's training step for ``update`` under TinyEngine's rules (see the module docstring).

    ``reorder``: each weight updated right after its gradient; ``inplace``: in-place depthwise convs
    (forward and stride-1 backward); ``fuse_update``: weight-gradient ops write the update into the
    weight (needs ``reorder``)."""
    _check_optimizer(optimizer)
    ba = analysis or analyze_backward(graph, update)
    lay = layout or mcu_layout(graph, target)
    layers, n = lay.layers, lay.n_layers
    storages = graph.storages
    fuse = fuse_update and reorder
    end = lay.end_step

    backward_layers = {lay.index_of[name] for name in ba.backward_layers}
    # which activation storages each layer passes a gradient into
    passes: dict[int, set[int]] = defaultdict(set)
    for cb in ba.backward:
        i = lay.index_of[cb.layer]
        call = ba.calls[cb.index].call
        for j, flag in enumerate(cb.needs_grad):
            key = call.input_keys[j]
            if flag and key in storages and key in lay.inputs[cb.layer]:
                passes[i].add(key)
    trained = {name: elements for name, elements in ba.trained_elements.items()
               if elements and name in lay.param_owner}
    trained_2d = {i: False for i in range(n)}
    trained_1d = {i: False for i in range(n)}
    for name in trained:
        owner = lay.index_of[lay.param_owner[name]]
        if len(graph.parameters[name].shape) >= 2:
            trained_2d[owner] = True
        else:
            trained_1d[owner] = True

    def fraction(layer: Layer) -> float:
        if layer.weight is None:
            return 0.0
        return ba.trained_rows.get(layer.weight, 0) / graph.parameters[layer.weight].shape[0]

    tensors: list[tuple[str, str, str, int, int, int, str | None, str]] = []  # fixed steps

    def add(name: str, kind: str, dtype: str, nbytes: int, first: int, last: int, alias: str | None = None,
            note: str = "") -> None:
        if nbytes > 0 and first <= last:
            tensors.append((name, kind, dtype, round_up(nbytes), first, last, alias, note))

    # What backward keeps: activation roots until their latest-released saver, masks as separate buffers.
    kept_until: dict[int, int] = {}
    grad_into = {key for keys in passes.values() for key in keys}
    for i in sorted(backward_layers):
        layer = layers[i]
        for item in lay.saved[layer.name]:
            if not item.active_bytes(grad_into, fraction(layer)):
                continue
            release = lay.u_step(i) if item.when == "weight" else lay.b_step(i)
            if item.key is None:
                add(f"mask:{layer.name}", "mask", "bit", item.nbytes, i, release,
                    note="1-bit mask of the ReLU's output")
            else:
                root = lay.root_of[item.key]
                kept_until[root] = max(kept_until.get(root, -1), release)

    # Forward activations, with in-place depthwise convs.
    in_place = {d: ip for d, ip in lay.inplace_forward.items() if inplace and ip.source not in kept_until}
    taken = {ip.output: ip for ip in in_place.values()}
    names: dict[int, str] = {}
    block_bytes: dict[int, int] = {}
    counter: dict[str, int] = defaultdict(int)
    for root in lay.roots_in_order:
        s = storages[root]
        base = f"input:{s.producer.removeprefix('input:')}" if s.is_input else f"act:{s.producer}"
        counter[base] += 1
        names[root] = base if counter[base] == 1 else f"{base}:{counter[base] - 1}"
        first = max(lay.producer[root], 0)
        nbytes, alias, note = lay.size[root], None, ""
        if root in taken:
            ip = taken[root]
            nbytes = block_size_after(lay, ip, block_bytes[ip.source])
            first, alias = ip.layer + 1, names[ip.source]
            note = f"written in place into {names[ip.source]}'s block" + (" (a quarter stays)" if ip.stride2 else "")
        block_bytes[root] = nbytes
        last = lay.last_use.get(root, first)
        if root in kept_until:
            last = max(last, kept_until[root])
            note = (note + "; " if note else "") + "kept for backward"
        kind = "input" if s.is_input else "activation"
        add(names[root], kind, lay.activation_dtype if s.floating else "raw", nbytes, first, last, alias, note)

    # Trained parameters in SRAM, their optimizer state and (without fused update) their gradients.
    state = OPTIMIZER_STATE_PER_ELEMENT[optimizer]
    weight_bytes = grad_bytes = opt_bytes = 0
    for name, elements in trained.items():
        one_d = len(graph.parameters[name].shape) == 1
        nbytes = round_up(lay.param_bytes(graph, target, name, elements))
        weight_bytes += nbytes
        add(f"param:{name}", "bias" if one_d else "weight", target.bias_dtype if one_d else target.weight_dtype,
            nbytes, 0, end, note=f"{elements} trained elements")
        if state:
            sbytes = round_up(state * elements * target.dtype_bytes("optimizer"))
            opt_bytes += sbytes
            add(f"state:{name}", "optimizer", target.optimizer_dtype, sbytes, 0, end)
        gbytes = elements * lay.gradient_bytes
        grad_bytes += gbytes
        if not fuse:
            owner = lay.index_of[lay.param_owner[name]]
            at = lay.b_step(owner) if one_d else lay.u_step(owner)
            add(f"grad:{name}", "bias_gradient" if one_d else "weight_gradient", lay.gradient_dtype, gbytes, at,
                at if reorder else end)

    # Activation gradients: simulate the backward pass, layer by layer in reverse.
    block_of: dict[int, str] = {}  # root -> name of its gradient tensor
    grad_start: dict[int, tuple[int, str | None]] = {}  # root -> (first step, alias_of)
    grad_received: dict[int, set[int]] = defaultdict(set)  # root -> member keys that received a gradient
    inplace_bwd: set[int] = set()

    def grad_name(root: int) -> str:
        return "grad:" + names[root].split(":", 1)[1]

    first_backward = lay.b_step(n - 1)
    for root in [r for r in lay.roots_in_order if r in lay.output_roots]:
        keys = [k for k in lay.members[root] if ba.requires_grad.get(k) and storages[k].floating]
        if keys and lay.grad_size.get(root):
            block_of[root] = grad_name(root)
            grad_start[root] = (first_backward, None)
            grad_received[root].update(keys)
    for i in range(n - 1, -1, -1):
        if i not in backward_layers:
            continue
        out = lay.out_root[i]
        for key in lay.inputs[layers[i].name]:
            if key not in passes[i]:
                continue
            root = lay.root_of[key]
            if not lay.grad_size.get(root):
                continue
            grad_received[root].add(key)
            if root == out:  # a fused BatchNorm/ReLU: in place on its conv's gradient
                continue
            passthrough = lay.passes_on(i, root)
            if root in block_of:
                if not passthrough:  # computed into a temporary, then added
                    add(f"tmp:{grad_name(root)}@{layers[i].name}", "gradient_temporary", lay.gradient_dtype,
                        lay.grad_size[root], lay.b_step(i), lay.b_step(i))
                continue
            block_of[root] = grad_name(root)
            if lay.alias_parent.get(root) == out and out in block_of:
                grad_start[root] = (lay.b_step(i) + 1, block_of[out])
            elif inplace and i in lay.inplace_backward and lay.inplace_backward[i][1] == root and \
                    not trained_2d[i] and out in block_of:
                grad_start[root] = (lay.b_step(i) + 1, block_of[out])
                inplace_bwd.add(i)
            else:
                grad_start[root] = (lay.b_step(i), None)
    for root, (first, alias) in grad_start.items():
        last = max(lay.read_step(k, trained_2d[lay.key_producer[k]]) for k in grad_received[root])
        # a block handed on in place ends where the next part of it starts
        add(block_of[root], "activation_gradient", lay.gradient_dtype, lay.grad_size[root], first, last, alias)

    # Schedule steps that run, and the live bytes at each.
    active = set(range(n))
    active.update(lay.b_step(i) for i in backward_layers)
    active.update(lay.u_step(i) for i in range(n) if trained_2d[i])
    active.add(end)
    steps = sorted(active)

    device: list[DeviceTensor] = []
    for name, kind, dtype, nbytes, first, last, alias, note in tensors:
        a = bisect.bisect_left(steps, first)
        b = bisect.bisect_right(steps, last) - 1
        if a > b:
            continue
        device.append(DeviceTensor(name, kind, dtype, nbytes, a, b, alias, note))
    alive = {t.name for t in device}
    device = [t if t.alias_of is None or t.alias_of in alive else
              DeviceTensor(t.name, t.kind, t.dtype, t.nbytes, t.first, t.last, None, t.note) for t in device]

    scratch = kernel_buffers(lay, set(in_place))
    scratch_bytes = scratch.im2col + scratch.kernel
    kinds = {"activations": ("input", "activation", "mask"), "weights": ("weight", "bias"),
             "gradients": ("weight_gradient", "bias_gradient", "activation_gradient", "gradient_temporary"),
             "optimizer": ("optimizer",)}
    per_kind = {k: [0] * (len(steps) + 1) for k in kinds}
    kind_of = {kind: k for k, ks in kinds.items() for kind in ks}
    for t in device:
        arr = per_kind[kind_of[t.kind]]
        arr[t.first] += t.nbytes
        arr[t.last + 1] -= t.nbytes
    running = {k: 0 for k in kinds}
    timeline: list[TimelinePoint] = []
    for j, s in enumerate(steps):
        for k in kinds:
            running[k] += per_kind[k][j]
        bd = MemoryBreakdown(activations=running["activations"], weights=running["weights"],
                             gradients=running["gradients"], optimizer=running["optimizer"], other=scratch_bytes)
        phase, label = lay.step_label(s)
        timeline.append(TimelinePoint(phase, label, bd.total, bd))
    if not reorder:
        timeline[-1] = TimelinePoint("step", "optimizer step", timeline[-1].live_bytes, timeline[-1].breakdown)
    peak = max(timeline, key=lambda p: p.live_bytes)

    saved_bytes = sum(t.nbytes for t in device if t.kind == "mask") + \
        sum(lay.size[r] for r in kept_until if r in lay.size)
    forward_flops = sum(layer.flops for layer in layers)
    to_act = sum(cb.flops_to_activations for cb in ba.backward)
    to_param = sum(cb.flops_to_parameters for cb in ba.backward)
    notes = [(f"tiny-training conventions on TinyEngine's runtime: {target.activation_dtype} forward, "
              f"{target.gradient_dtype} gradients; operator reordering {'on' if reorder else 'off'}, in-place "
              f"depthwise {'on' if inplace else 'off'}, fused update {'on' if fuse else 'off'}; peak = arena "
              f"{peak.live_bytes - scratch_bytes} + im2col {scratch.im2col} + kernel buffer {scratch.kernel} bytes")]
    if in_place or inplace_bwd:
        notes.append(f"{len(in_place)} depthwise convs run in place forward, {len(inplace_bwd)} backward")
    if peak.phase == "forward" and weight_bytes + opt_bytes:
        held = peak.live_bytes - weight_bytes - opt_bytes
        notes.append(f"the peak is in the int8 forward at {peak.label}: {held} bytes of activations and kernel "
                     f"scratch are there whatever is trained, and the trained weights and biases "
                     f"({weight_bytes + opt_bytes} bytes with optimizer state) stay in SRAM through it")
    return McuTrainingEstimate(
        model=model, target=target.name, optimizer=optimizer, peak_bytes=peak.live_bytes,
        memory=MemoryBreakdown(activations=saved_bytes, weights=weight_bytes, gradients=grad_bytes,
                               optimizer=opt_bytes, other=scratch_bytes),
        memory_at_peak=peak.breakdown, peak_at=f"{peak.phase}:{peak.label}",
        flops={"forward": forward_flops, "backward": to_act + to_param, "backward_to_activations": to_act,
               "backward_to_parameters": to_param},
        latency_s=(forward_flops + to_act + to_param) / 2 / target.macs_per_second,
        trained_parameters=dict(ba.trained_elements), backward_layers=ba.backward_layers, timeline=timeline,
        budget_bytes=budget_bytes, notes=notes, rules=_rules(reorder, inplace, fuse_update),
        device_tensors=device, scratch={"im2col": scratch.im2col, "kernel": scratch.kernel},
        options={"reorder": reorder, "inplace": inplace, "fuse_update": fuse_update},
        tiny_training=_tiny_training(graph, update),
    )


def _tiny_training(graph: LayerGraph, update: UpdateSet) -> dict[str, Any] | None:
    """tiny-training's analytic memory of ``update`` (its label convention), None when not defined."""
    try:
        return tt_convention_memory(graph, update).to_json()
    except InputError:
        return None

