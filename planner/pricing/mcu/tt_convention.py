"""tiny-training's analytic training memory: the convention its sparse-update schemes are named by.

tiny-training names each published scheme by the memory its estimator (``nelem_saved_for_backward`` in
``algorithm/core/utils/partial_backward.py`` of mit-han-lab/tiny-training) computes: "49kb", "73kb", ...
This module computes the same quantity for any conv model's :class:`~budgetplan.model.graph.LayerGraph`
and :class:`~budgetplan.model.update_set.UpdateSet`, so a scheme's label can be checked and any update
set can be stated in tiny-training's own units. It is **not** a peak: the mcu cost model
(:mod:`budgetplan.pricing.mcu.exact`) prices the whole training step.

The rules, per sample (tiny-training trains with batch 1 and never multiplies the batch in), in bits:

* **1-bit mask** per output element of every conv in the backward region -- a conv whose weight, bias
  or folded BatchNorm is trained, or through which the gradient flows back to one (tiny-training:
  every conv of its bias-update region, which is a suffix of the conv list);
* **bias** 32 bits per trained bias element (a conv's own bias, or the ``bias`` of the BatchNorm right
  after it, which is what the bias becomes once BatchNorm is folded);
* **a weight-trained conv** keeps ``kept`` of its ``C_in`` input channels, int8: saved input
  ``8·kept·H_in·W_in``; trained weights int8, ``8·kept·k·k`` for a depthwise conv and
  ``8·C_out·kept·k·k`` for a dense one (``groups == 1``); other grouped convs keep every input
  channel and count every weight. ``kept`` for a depthwise conv is its number of trained channels;
  for a dense conv whose weight is trained on ``rows`` of its ``C_out`` output channels it is
  ``floor(C_in·rows / C_out)``: tiny-training's ``int(C_in·r)`` for the trained fraction ``r``
  (a budgetplan update set slices dim 0, tiny-training slices input channels; equal counts of weights
  whenever ``r·C_in`` and ``r·C_out`` are whole, as in every published scheme);
* **the classifier's input**, int8, when its weight is trained (every trained ``nn.Linear`` is counted
  this way); its weights and bias are not counted (tiny-training: "do not consider fc for now").

Not counted, as in tiny-training: frozen weights (flash), forward activations that are not kept,
activation and weight gradients, optimizer state, scratch buffers, the input image.

**Label:** ``floor(total_bits / 8 / 1024)`` followed by ``kb`` -- kB means KiB, truncated. This
reproduces all 15 published labels; rounding to nearest (tiny-training's own printout) matches 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from budgetplan.model.graph import Layer, LayerGraph
from budgetplan.model.update_set import UpdateSet

__all__ = ["CONV_OPS", "LINEAR_OPS", "TTConventionMemory", "TTLayerMemory", "tt_convention_memory"]

CONV_OPS = frozenset({"conv1d", "conv2d", "conv3d", "convolution"})
LINEAR_OPS = frozenset({"linear"})
ACTIVATION_BITS = 8
WEIGHT_BITS = 8
BIAS_BITS = 32
MASK_BITS = 1
BITS_PER_KIB = 8 * 1024


@dataclass(frozen=True)
class TTLayerMemory:
    """One conv or linear layer's share (bits, per sample)."""

    layer: str
    kind: str  # "depthwise", "conv", "group conv", "linear"
    kept_channels: int  # input channels kept for the weight gradient (0: weight frozen)
    in_channels: int
    saved_input_bits: int
    weight_bits: int
    bias_bits: int
    mask_bits: int

    @property
    def total_bits(self) -> int:
        return self.saved_input_bits + self.weight_bits + self.bias_bits + self.mask_bits


@dataclass(frozen=True)
class TTConventionMemory:
    """tiny-training's analytic memory of one update set (bits per sample; see the module docstring)."""

    saved_input_bits: int  # int8 inputs kept by weight-trained convs (kept channels only)
    weight_bits: int  # int8 trained conv weights
    bias_bits: int  # 32-bit trained biases
    mask_bits: int  # 1-bit masks of the backward region's conv outputs
    classifier_input_bits: int  # int8 inputs of trained linear layers
    layers: tuple[TTLayerMemory, ...] = field(default=(), repr=False)

    @property
    def total_bits(self) -> int:
        return (self.saved_input_bits + self.weight_bits + self.bias_bits + self.mask_bits
                + self.classifier_input_bits)

    @property
    def total_bytes(self) -> int:
        """Bytes, rounded up (masks may end inside a byte)."""
        return math.ceil(self.total_bits / 8)

    @property
    def kib(self) -> float:
        """KiB (1024 bytes), not rounded."""
        return self.total_bits / BITS_PER_KIB

    @property
    def label_kib(self) -> int:
        """tiny-training's label value: KiB truncated."""
        return self.total_bits // BITS_PER_KIB

    @property
    def label(self) -> str:
        """The label as tiny-training writes it, e.g. ``49kb``."""
        return f"{self.label_kib}kb"

    def to_json(self) -> dict[str, Any]:
        """The ``estimate --json`` form: bytes (breakdown exact to 1/8 byte), KiB and the label."""
        return {
            "bytes": self.total_bytes,
            "kib": round(self.kib, 3),
            "label": self.label,
            "breakdown_bytes": {
                "saved_inputs": self.saved_input_bits / 8,
                "weights": self.weight_bits / 8,
                "biases": self.bias_bits / 8,
                "masks": self.mask_bits / 8,
                "classifier_input": self.classifier_input_bits / 8,
            },
            "convention": "tiny-training nelem_saved_for_backward: int8 saved inputs (kept channels) and "
                          "trained weights, 32-bit biases, 1-bit masks, classifier input; per sample; "
                          "label = KiB truncated",
        }


def _per_sample(shape: tuple[int, ...]) -> int:
    """Elements of one sample of a batched tensor shape (the batch is never multiplied in)."""
    return math.prod(shape[1:]) if len(shape) > 1 else math.prod(shape)


def _rows(update: UpdateSet, name: str, size: int) -> int:
    """Trained rows along dim 0 of parameter ``name`` (size ``size``)."""
    channels = update.channels(name)
    return size if channels is None else len(channels)


def _folded_batchnorm(layer: Layer, consumers: dict[str, list[Layer]]) -> Layer | None:
    """The BatchNorm that reads only this conv's output (folded into the conv on the device), if any."""
    for nxt in consumers.get(layer.name, []):
        if nxt.op == "batch_norm" and nxt.inputs == (layer.name,):
            return nxt
    return None


def _bias_params(graph: LayerGraph, layer: Layer, batchnorm: Layer | None) -> list[str]:
    """The bias of a conv: its own 1-D parameter of ``C_out`` elements, else the ``bias`` (beta) of the
    BatchNorm folded into it (the folded bias is ``beta - gamma·mean/std``)."""
    rows = graph.parameters[layer.weight].shape[0] if layer.weight else 0
    own = [p for p in layer.parameters if p != layer.weight and graph.parameters[p].shape == (rows,)]
    if own or batchnorm is None:
        return own
    return [p for p in batchnorm.parameters
            if p.rsplit(".", 1)[-1] == "bias" and graph.parameters[p].shape == (rows,)]


def _conv_kind(weight_shape: tuple[int, ...], in_channels: int) -> tuple[str, int]:
    """``("depthwise" | "conv" | "group conv", groups)`` from the weight (O, I/groups, *k) and C_in."""
    groups = max(1, in_channels // max(1, weight_shape[1]))
    if groups == 1:
        return "conv", 1
    if groups == in_channels == weight_shape[0]:
        return "depthwise", groups
    return "group conv", groups


def tt_convention_memory(graph: LayerGraph, update: UpdateSet) -> TTConventionMemory:
    """tiny-training's analytic memory (its scheme-label convention) of training ``update`` on ``graph``.

    ``graph``: any model's layer graph (conv layers are priced, trained linear layers count their
    input, everything else is ignored). Units: bits per sample in the fields; see
    :class:`TTConventionMemory` for bytes, KiB and the ``49kb``-style label.
    """
    update = update.validated({name: meta.shape for name, meta in graph.parameters.items()})
    trained = set(update.parameter_names())
    consumers: dict[str, list[Layer]] = {}
    for layer in graph.layers():
        for producer in layer.inputs:
            consumers.setdefault(producer, []).append(layer)

    grad_flows: dict[str, bool] = {}  # layer -> its output depends on a trained parameter
    rows: list[TTLayerMemory] = []
    for layer in graph.layers():
        own_trained = any(p in trained for p in layer.parameters)
        upstream = any(grad_flows.get(p, False) for p in layer.inputs)
        grad_flows[layer.name] = own_trained or upstream
        if layer.op in CONV_OPS and layer.weight is not None and layer.input_shapes:
            batchnorm = _folded_batchnorm(layer, consumers)
            bias_trained = [b for b in _bias_params(graph, layer, batchnorm) if b in trained]
            # the gradient reaches this conv's (fused) output: from downstream, or a folded BN trains
            in_region = grad_flows[layer.name] or (
                batchnorm is not None and any(p in trained for p in batchnorm.parameters))
            rows.append(_conv_row(graph, layer, update, bias_trained, in_region=in_region))
        elif layer.op in LINEAR_OPS and layer.weight is not None and layer.weight in trained \
                and layer.input_shapes:
            inputs = _per_sample(layer.input_shapes[0])
            rows.append(TTLayerMemory(layer.name, "linear", layer.input_shapes[0][-1],
                                      layer.input_shapes[0][-1], ACTIVATION_BITS * inputs, 0, 0, 0))
    convs = [r for r in rows if r.kind != "linear"]
    return TTConventionMemory(
        saved_input_bits=sum(r.saved_input_bits for r in convs),
        weight_bits=sum(r.weight_bits for r in convs),
        bias_bits=sum(r.bias_bits for r in convs),
        mask_bits=sum(r.mask_bits for r in convs),
        classifier_input_bits=sum(r.saved_input_bits for r in rows if r.kind == "linear"),
        layers=tuple(r for r in rows if r.total_bits),
    )


def _conv_row(graph: LayerGraph, layer: Layer, update: UpdateSet, bias_trained: list[str],
              in_region: bool) -> TTLayerMemory:
    """One conv's mask, bias, saved input and weights under the convention."""
    assert layer.weight is not None
    weight_shape = tuple(graph.parameters[layer.weight].shape)
    in_shape, out_shape = layer.input_shapes[0], layer.output_shapes[0]
    in_channels, out_channels = in_shape[1], weight_shape[0]
    spatial_in = math.prod(in_shape[2:])
    kernel = math.prod(weight_shape[2:])
    kind, _groups = _conv_kind(weight_shape, in_channels)
    trained_rows = _rows(update, layer.weight, out_channels) if update.is_updated(layer.weight) else 0
    if trained_rows == 0:
        kept, weights = 0, 0
    elif kind == "depthwise":
        kept, weights = trained_rows, trained_rows * kernel
    elif kind == "conv":
        kept = in_channels * trained_rows // out_channels
        weights = out_channels * kept * kernel
    else:
        kept, weights = in_channels, math.prod(weight_shape)
    bias_elements = sum(_rows(update, b, graph.parameters[b].shape[0]) for b in bias_trained)
    return TTLayerMemory(
        layer=layer.name, kind=kind, kept_channels=kept, in_channels=in_channels,
        saved_input_bits=ACTIVATION_BITS * kept * spatial_in,
        weight_bits=WEIGHT_BITS * weights,
        bias_bits=BIAS_BITS * bias_elements,
        mask_bits=MASK_BITS * _per_sample(out_shape) if in_region else 0,
    )
