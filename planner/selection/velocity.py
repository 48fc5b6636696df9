"""NEq velocity of every neuron, measured on a small fixed validation batch (Bragagnolo et al. 2022).

A :class:`VelocityTracker` runs the model on the same few validation samples once per epoch, with
forward hooks on the layers that own neuron groups (``nn.Conv1d/2d/3d`` and ``nn.Linear``; one neuron =
one output channel = one row of the weight), and keeps, per neuron:

* the previous measurement's outputs ``ŷ``, normalised **per sample** over the neuron's positions
  (spatial positions of a conv, tokens of a linear layer on a sequence);
* ``φ_i^t = (1/|D|) Σ_x Σ_n ŷ^t_{i,x,n} · ŷ^{t−1}_{i,x,n}`` — the mean over the validation samples of the
  cosine similarity between this measurement's output and the previous one's;
* ``Δφ_i^t = φ_i^t − φ_i^{t−1}``;
* the velocity ``v_i^t = Δφ_i^t − μ · v_i^{t−1}`` (the NEq paper; ``sign="reference"`` gives the NEq
  reference code's ``v_i^t = Δφ_i^t + μ · v_i^{t−1}``).

Timeline (measurement ``m = 0, 1, 2, …``; the :class:`~budgetplan.runtime.reselect.Reselector` takes ``m = 0``
before training and one after every epoch): ``m = 0`` stores outputs only; ``m = 1`` gives ``φ``; ``m = 2``
gives the first ``Δφ`` and ``v = Δφ`` (``v^1 = 0``); from ``m = 3`` the momentum term acts (and the two
sign conventions differ). Until ``m = 2`` there is no velocity: :meth:`VelocityTracker.scores` returns
``None`` (``ready`` is false) and the caller keeps its static plan.

Special cases, by definition here: a linear layer on a 2-D input (``[N, C]``: one position per sample)
would make the per-sample cosine a sign; its neuron's vector is instead its outputs over all the
validation samples (normalised once), so ``φ`` is one cosine over the batch. A zero output vector has no
direction: the similarity of two zero vectors is 1 (unchanged), of a zero and a non-zero vector 0.

Several processes (``torch.distributed`` initialised, world size > 1): every rank measures the same
validation batch on the same weights, and the per-neuron ``φ`` of all layers is averaged across the ranks
by one all-reduce per measurement (``8 · neurons`` bytes of float64), so ``Δφ`` and ``v`` are identical
on every rank to the last bit even where kernels round differently (docs/distributed.md).

:meth:`VelocityTracker.state_dict` / :meth:`VelocityTracker.load_state_dict` save and restore the whole
history (previous outputs, ``φ``, ``Δφ``, ``v``), so a resumed run measures the next velocity as the
uninterrupted run would.

Memory: the previous outputs of every hooked layer on the validation batch (float32), plus ``φ`` and
``v`` per neuron (float64). :attr:`VelocityTracker.stored_bytes` reports it; above ``max_bytes`` the
tracker raises (``on_excess="error"``) or keeps a fixed, seeded random subset of each layer's positions
(``on_excess="subsample"``). Units: bytes, seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from budgetplan.errors import InputError
from budgetplan.model.graph import LayerGraph, parameter_groups

__all__ = ["SIGNS", "TrackedLayer", "VelocityMeasurement", "VelocityTracker", "collective_device",
           "distributed_group"]

_log = logging.getLogger(__name__)

#: ``paper``: ``v_t = Δφ_t − μ·v_{t−1}`` (NEq, eq. in §3); ``reference``: ``v_t = Δφ_t + μ·v_{t−1}`` (NEq's code).
SIGNS: tuple[str, ...] = ("paper", "reference")
#: Default bound on the stored outputs: 64 MiB.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# ConvTranspose is not here: dim 0 of its weight indexes *input* channels, so its rows are not output neurons
_CHANNEL_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TINY = 1e-30  # a norm below this is zero


@dataclass(frozen=True)
class TrackedLayer:
    """One hooked module and the neurons it owns."""

    module: str  # qualified module path ('' = the root)
    weight: str  # qualified name of the weight whose dim 0 indexes the neurons
    channels: int  # neurons (output channels)
    groups: tuple[tuple[int, int], ...]  # the planner's neuron groups: row ranges start:stop
    grouped: tuple[str, ...]  # parameters decided per group with the weight (weight first, then biases)
    row_elements: tuple[int, ...]  # elements per row of each parameter in ``grouped``
    channel_dim: int  # dimension of the module's output that indexes the neurons (1 or -1)
    # parameters of the BatchNorm right after this layer (one entry per neuron, decided as whole tensors
    # by the planner): they share the neurons' velocity, one element per neuron each
    followers: tuple[str, ...] = ()


@dataclass
class VelocityMeasurement:
    """What one :meth:`VelocityTracker.measure` call did."""

    index: int  # measurement number m (0 = the first)
    seconds: float  # wall time of the validation pass and the velocity update
    samples: int  # validation samples used
    layers: int  # hooked layers
    neurons: int  # neurons tracked
    stored_bytes: int  # bytes kept until the next measurement
    ready: bool  # a velocity exists after this measurement
    subsampled: bool  # positions were subsampled to respect max_bytes
    reduced_bytes: int = 0  # payload of the φ all-reduce across ranks (0 in one process)


@dataclass
class _LayerState:
    keep: torch.Tensor | None = None  # indices of kept positions (None = all)
    previous: list[torch.Tensor] = field(default_factory=list)  # per call: [N, C, P] normalised, float32
    previous_zero: list[torch.Tensor] = field(default_factory=list)  # per call: [N, C] bool
    phi: torch.Tensor | None = None  # [C] float64
    velocity: torch.Tensor | None = None  # [C] float64
    delta: torch.Tensor | None = None


def _as_batch(val_inputs: Any, max_samples: int) -> tuple[torch.Tensor, ...]:
    """The validation inputs as a tuple of tensors cut to ``max_samples`` along dim 0."""
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise InputError(f"max_samples must be a positive integer, got {max_samples!r}")
    if isinstance(val_inputs, torch.Tensor):
        inputs: tuple[Any, ...] = (val_inputs,)
    elif isinstance(val_inputs, (tuple, list)):
        inputs = tuple(val_inputs)
    else:
        raise InputError(f"the validation inputs must be a tensor or a tuple of tensors, got "
                         f"{type(val_inputs).__name__}")
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise InputError("the validation inputs must be a tensor or a non-empty tuple of tensors")
    sizes = {t.shape[0] if t.dim() else -1 for t in inputs}
    if -1 in sizes:
        raise InputError("the validation inputs need a batch dimension (dim 0)")
    if len(sizes) != 1:
        raise InputError(f"the validation inputs disagree on the number of samples: {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise InputError("the validation set is empty: give at least one sample")
    return tuple(t[:max_samples].detach() for t in inputs)


def distributed_group(process_group: Any = None, distributed: bool | None = None) -> tuple[Any, int, int] | None:
    """``(group, rank, world size)`` when this process is one of several in a ``torch.distributed`` group,
    else ``None``. ``distributed``: ``None`` = when ``torch.distributed`` is initialised with more than one
    process; ``False`` = never; ``True`` = required (an :class:`InputError` when not initialised)."""
    import torch.distributed as dist

    if distributed is False:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        if distributed:
            raise InputError("distributed=True but torch.distributed is not initialised "
                             "(call torch.distributed.init_process_group first)")
        return None
    world = dist.get_world_size(process_group)
    if world < 2 and not distributed:
        return None
    return process_group, dist.get_rank(process_group), world


def collective_device(process_group: Any = None) -> torch.device:
    """Where tensors of a collective on ``process_group`` must live: the current CUDA device for NCCL,
    the CPU otherwise (gloo, mpi)."""
    import torch.distributed as dist

    if dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _root(model_or_compiled: Any) -> nn.Module:
    """The user's module: ``compiled.module`` for a compiled module, else the module itself."""
    inner = getattr(model_or_compiled, "module", None)
    if isinstance(inner, nn.Module) and hasattr(model_or_compiled, "set_update"):
        return inner
    if isinstance(model_or_compiled, nn.Module):
        return model_or_compiled
    raise InputError(f"expected a torch.nn.Module or a compiled module, got {type(model_or_compiled).__name__}")


def _batch_norm_followers(graph: LayerGraph, groups_of: Mapping[str, Any]) -> dict[str, list[str]]:
    """Weight of a group-owning layer -> the affine parameters of the BatchNorm layer(s) that read its
    output directly, when they have one entry per output channel and are decided whole."""
    owner_of = {layer.name: layer for layer in graph.group_owners()}
    out: dict[str, list[str]] = {}
    for layer in graph.layers():
        if layer.op != "batch_norm" or len(layer.inputs) != 1 or layer.inputs[0] not in owner_of:
            continue
        producer = owner_of[layer.inputs[0]]
        for p in layer.parameters:
            shape = tuple(graph.parameters[p].shape)
            if shape == (producer.out_channels,) and p in groups_of and groups_of[p][0][2]:
                if p not in out.setdefault(producer.weight, []):
                    out[producer.weight].append(p)
    return out


def _owners_from_model(root: nn.Module) -> list[str]:
    """Weights of conv/linear modules, in definition order."""
    out = []
    for path, m in root.named_modules():
        if isinstance(m, (*_CHANNEL_FIRST, nn.Linear)) and isinstance(m.weight, nn.Parameter):
            out.append(f"{path}.weight" if path else "weight")
    return out


def _channel_dim(module: nn.Module) -> int:
    if isinstance(module, _CHANNEL_FIRST):
        return 1
    if isinstance(module, nn.Linear):
        return -1
    raise InputError(f"cannot track {type(module).__name__}: only conv and linear modules have one output "
                     "channel per weight row")


class VelocityTracker:
    """Per-neuron NEq velocity on a fixed validation batch (see the module docstring).

    Args:
        model_or_compiled: the model, or a :class:`~budgetplan.runtime.compiled.CompiledModule` (its wrapped
            module's layers are hooked; the compiled module is what runs).
        val_inputs: the validation inputs: a tensor ``[N, ...]`` or a tuple of tensors (the model's
            positional inputs), cut to the first ``max_samples`` samples. Kept fixed for every measurement.
        layers: module paths or weight names to track; ``None`` = every layer owning neuron groups (from
            ``graph`` when given, else every conv/linear module).
        graph: the model's :class:`~budgetplan.model.graph.LayerGraph`: its neuron groups (``group_size``) are
            the ones :meth:`group_scores` scores. Without it, one neuron per group.
        momentum: μ in the velocity (≥ 0; NEq recipes use 0.5).
        sign: ``"paper"`` (``v_t = Δφ_t − μ·v_{t−1}``, default) or ``"reference"`` (``+``).
        max_samples: validation samples used (default 10, the seed paper's).
        max_bytes: bound on the stored outputs (bytes).
        on_excess: ``"error"`` (raise :class:`InputError` when the outputs exceed ``max_bytes``) or
            ``"subsample"`` (keep a seeded random subset of each layer's positions, the same every epoch).
        seed: seed of that subset.
        distributed: ``None`` (default): average ``φ`` across the ranks of ``process_group`` when
            ``torch.distributed`` is initialised with several processes; ``False``: never; ``True``: required.
            Every rank must call :meth:`measure` at the same point (it is a collective from the second
            measurement on).
        process_group: the group to reduce over (``None``: the default group).

    Raises:
        InputError: an empty validation set, an unknown layer, a layer that is not conv/linear, bad
            options; at the first measurement, outputs larger than ``max_bytes`` with ``on_excess="error"``.
    """

    def __init__(
        self,
        model_or_compiled: Any,
        val_inputs: Any,
        layers: Sequence[str] | None = None,
        *,
        graph: LayerGraph | None = None,
        momentum: float = 0.5,
        sign: str = "paper",
        max_samples: int = 10,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_excess: str = "error",
        seed: int = 0,
        distributed: bool | None = None,
        process_group: Any = None,
    ) -> None:
        if not (isinstance(momentum, (int, float)) and math.isfinite(momentum) and momentum >= 0):
            raise InputError(f"momentum must be a finite number >= 0, got {momentum!r}")
        if sign not in SIGNS:
            raise InputError(f"unknown velocity sign convention {sign!r}; use one of: {', '.join(SIGNS)}")
        if on_excess not in ("error", "subsample"):
            raise InputError(f"on_excess must be 'error' or 'subsample', got {on_excess!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise InputError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
        self.inputs = _as_batch(val_inputs, max_samples)
        self.samples = int(self.inputs[0].shape[0])
        self.momentum = float(momentum)
        self.sign = sign
        self.max_bytes = max_bytes
        self.on_excess = on_excess
        self.seed = seed
        self.model = model_or_compiled
        root = _root(model_or_compiled)
        self.layers = self._resolve_layers(root, layers, graph)
        self._state = {layer.module: _LayerState() for layer in self.layers}
        self.measurements = 0
        self.subsampled = False
        self.history: list[VelocityMeasurement] = []
        self.distributed = distributed
        self.process_group = process_group

    # -- set-up ------------------------------------------------------------------------------------
    def _resolve_layers(self, root: nn.Module, layers: Sequence[str] | None,
                        graph: LayerGraph | None) -> list[TrackedLayer]:
        params = dict(root.named_parameters())
        if graph is not None:
            groups_of = parameter_groups(graph)
            weights = []
            for layer in graph.group_owners():
                if layer.weight not in weights:
                    weights.append(layer.weight)
            biases = {}
            for layer in graph.group_owners():
                for p in layer.parameters:
                    if p != layer.weight and p in groups_of and not groups_of[p][0][2] \
                            and tuple(graph.parameters[p].shape) == (layer.out_channels,):
                        biases.setdefault(layer.weight, []).append(p)
            followers = _batch_norm_followers(graph, groups_of)
        else:
            weights = _owners_from_model(root)
            groups_of, biases, followers = {}, {}, {}
        if layers is not None:
            if isinstance(layers, str):
                layers = [layers]
            wanted = []
            for name in layers:
                weight = name if name in params else (f"{name}.weight" if name else "weight")
                if weight not in params:
                    raise InputError(f"layer {name!r} is not a module or weight of the model")
                if graph is not None and weight not in weights:
                    raise InputError(f"layer {name!r} owns no neuron groups in the layer graph")
                wanted.append(weight)
            weights = [w for w in weights if w in wanted] + [w for w in wanted if w not in weights]
        tracked = []
        for weight in weights:
            if weight not in params:
                raise InputError(f"the layer graph's weight {weight!r} is not a parameter of this model")
            path = weight.rpartition(".")[0]
            module = root.get_submodule(path)
            if getattr(module, "weight", None) is not params[weight]:
                if layers is None:
                    continue  # a weight used functionally by a module: no per-neuron output to hook
                raise InputError(f"cannot track {weight!r}: its module does not use it as its own weight")
            if layers is None and not isinstance(module, (*_CHANNEL_FIRST, nn.Linear)):
                continue
            channel_dim = _channel_dim(module)
            rows = params[weight].shape[0]
            if weight in groups_of:
                ranges = tuple((s, e) for s, e, whole in groups_of[weight] if not whole)
                if not ranges:  # decided whole
                    ranges = ((0, rows),)
            else:
                ranges = tuple((c, c + 1) for c in range(rows))
            grouped = [weight]
            if graph is not None:
                grouped += biases.get(weight, [])
            elif getattr(module, "bias", None) is not None:
                grouped.append(f"{path}.bias" if path else "bias")
            row_elements = tuple(params[p].numel() // rows for p in grouped)
            tracked.append(TrackedLayer(path, weight, rows, ranges, tuple(grouped), row_elements, channel_dim,
                                        tuple(p for p in followers.get(weight, ()) if p in params)))
        if not tracked:
            raise InputError("the model has no conv or linear layer to track")
        return tracked

    # -- measuring ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once a velocity exists (after the third measurement)."""
        return all(s.velocity is not None for s in self._state.values())

    @property
    def stored_bytes(self) -> int:
        """Bytes kept between measurements: previous normalised outputs (float32), their zero masks, and
        φ, Δφ, v per neuron (float64)."""
        total = 0
        for s in self._state.values():
            for t in (*s.previous, *s.previous_zero):
                total += t.numel() * t.element_size()
            for t in (s.phi, s.velocity, s.delta):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    def _run(self, model: Any, hooks: dict[str, Any]) -> None:
        root = _root(model)
        runner = model if isinstance(model, nn.Module) else root
        modes = {m: m.training for m in runner.modules()}
        handles = [root.get_submodule(path).register_forward_hook(fn) for path, fn in hooks.items()]
        try:
            runner.eval()
            with torch.no_grad():
                runner(*self.inputs)
        finally:
            for h in handles:
                h.remove()
            for m, flag in modes.items():
                m.training = flag

    @staticmethod
    def _neuron_major(output: Any, layer: TrackedLayer) -> torch.Tensor:
        """The output as ``[N, C, P]`` (P positions per sample; a 2-D linear output becomes ``[1, C, N]``)."""
        if not isinstance(output, torch.Tensor):
            raise InputError(f"layer {layer.module!r} returned {type(output).__name__}, not a tensor")
        y = output.detach().float()
        if y.dim() < 2 or y.shape[layer.channel_dim] != layer.channels:
            raise InputError(f"layer {layer.module!r} output shape {tuple(y.shape)} has no dimension of its "
                             f"{layer.channels} neurons")
        if y.dim() == 2:  # [N, C]: one vector over the samples per neuron
            return y.t().unsqueeze(0).contiguous()
        y = y.movedim(layer.channel_dim, 1)
        return y.reshape(y.shape[0], y.shape[1], -1)

    def _plan_storage(self, model: Any) -> None:
        """First measurement: look at the output shapes (one sample) and decide what to keep."""
        shapes: dict[str, list[tuple[int, int, int]]] = {layer.module: [] for layer in self.layers}
        by_path = {layer.module: layer for layer in self.layers}

        def probe(path: str):
            def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                shapes[path].append(tuple(self._neuron_major(out, by_path[path]).shape))
            return hook

        self._run(model, {path: probe(path) for path in shapes})
        missing = [p for p, s in shapes.items() if not s]
        if missing:
            raise InputError(f"layer {missing[0]!r} did not run during the validation pass")
        # per (sample, neuron): positions as float32 + a zero flag; per neuron: φ, Δφ, v as float64
        fixed = sum(n * c for calls in shapes.values() for n, c, _ in calls)
        fixed += sum(3 * 8 * layer.channels for layer in self.layers)
        variable = sum(n * c * p * 4 for calls in shapes.values() for n, c, p in calls)
        total = fixed + variable
        if total <= self.max_bytes:
            return
        if self.on_excess == "error":
            raise InputError(f"velocity tracking would store {total} bytes ({self.samples} samples, "
                             f"{len(self.layers)} layers), above max_bytes={self.max_bytes}; use fewer samples, "
                             "fewer layers, a larger max_bytes or on_excess='subsample'")
        fraction = max(0.0, (self.max_bytes - fixed) / variable)
        gen = torch.Generator().manual_seed(self.seed)
        kept = fixed
        for layer in self.layers:
            positions = shapes[layer.module][0][2]
            keep = max(1, math.floor(positions * fraction))
            if keep < positions:
                self._state[layer.module].keep = torch.sort(torch.randperm(positions, generator=gen)[:keep]).values
            kept += sum(n * c * keep * 4 for n, c, _ in shapes[layer.module])
        self.subsampled = True
        if kept > self.max_bytes:
            raise InputError(f"velocity tracking needs at least {kept} bytes even with one position per neuron, "
                             f"above max_bytes={self.max_bytes}; use fewer samples or fewer layers")

    def measure(self, model: Any = None) -> VelocityMeasurement:
        """Run the validation batch (eval mode, no gradients; the modes are restored) and update φ, Δφ
        and v of every tracked neuron. ``model``: the model to measure (default: the one given at
        construction; after ``set_update`` the same compiled module)."""
        model = self.model if model is None else model
        started = time.perf_counter()
        if self.measurements == 0:
            self._plan_storage(model)
        current: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {layer.module: [] for layer in self.layers}
        by_path = {layer.module: layer for layer in self.layers}

        def record(path: str):
            state = self._state[path]

            def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                y = self._neuron_major(out, by_path[path])
                if state.keep is not None:
                    y = y.index_select(2, state.keep)
                norm = y.norm(dim=2)
                zero = norm < _TINY
                y = y / torch.where(zero, torch.ones_like(norm), norm).unsqueeze(2)
                current[path].append((y, zero))
            return hook

        self._run(model, {path: record(path) for path in current})
        phis: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            state = self._state[layer.module]
            calls = current[layer.module]
            if not calls:
                raise InputError(f"layer {layer.module!r} did not run during the validation pass")
            if state.previous:
                if len(calls) != len(state.previous) or any(y.shape != p.shape for (y, _), p in
                                                              zip(calls, state.previous)):
                    raise InputError(f"layer {layer.module!r} produced outputs of another shape than at the "
                                     "previous measurement; keep the validation batch fixed")
                sims = []
                for (y, zero), prev, prev_zero in zip(calls, state.previous, state.previous_zero):
                    dot = (y * prev).sum(dim=2).double()
                    both = zero & prev_zero
                    sims.append(torch.where(both, torch.ones_like(dot), dot))
                phis[layer.module] = torch.cat(sims, dim=0).mean(dim=0)  # mean over samples (and calls)
        reduced = self._reduce(phis)
        for layer in self.layers:
            state = self._state[layer.module]
            calls = current[layer.module]
            if layer.module in phis:
                phi = phis[layer.module]
                if state.phi is not None:
                    delta = phi - state.phi
                    previous_v = state.velocity if state.velocity is not None else torch.zeros_like(delta)
                    mu = self.momentum if self.sign == "reference" else -self.momentum
                    state.velocity = delta + mu * previous_v
                    state.delta = delta
                state.phi = phi
            state.previous = [y for y, _ in calls]
            state.previous_zero = [z for _, z in calls]
        report = VelocityMeasurement(self.measurements, time.perf_counter() - started, self.samples,
                                     len(self.layers), sum(layer.channels for layer in self.layers),
                                     self.stored_bytes, False, self.subsampled, reduced)
        self.measurements += 1
        report.ready = self.ready
        self.history.append(report)
        _log.debug("velocity measurement %d: %d layers, %d neurons, %.3f s, %d bytes kept, %d bytes reduced",
                   report.index, report.layers, report.neurons, report.seconds, report.stored_bytes, reduced)
        return report

    def _reduce(self, phis: dict[str, torch.Tensor]) -> int:
        """Average ``φ`` of every layer across the ranks (one all-reduce of all layers at once), in place
        in ``phis``; returns the payload bytes (0 in one process or before the first ``φ``)."""
        group = distributed_group(self.process_group, self.distributed)
        if group is None or not phis:
            return 0
        import torch.distributed as dist

        process_group, _, world = group
        names = list(phis)
        flat = torch.cat([phis[n] for n in names]).to(collective_device(process_group))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=process_group)
        flat = (flat / world).cpu()
        offset = 0
        for n in names:
            size = phis[n].numel()
            phis[n] = flat[offset:offset + size].clone()
            offset += size
        return flat.numel() * flat.element_size()

    # -- saving and restoring ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a later measurement depends on (tensors, numbers, strings, lists: loadable with
        ``torch.load(weights_only=True)``)."""
        layers = {}
        for layer in self.layers:
            st = self._state[layer.module]
            layers[layer.module] = {"keep": st.keep, "previous": list(st.previous),
                                    "previous_zero": list(st.previous_zero), "phi": st.phi,
                                    "velocity": st.velocity, "delta": st.delta}
        return {"measurements": self.measurements, "subsampled": self.subsampled, "samples": self.samples,
                "momentum": self.momentum, "sign": self.sign,
                "weights": [layer.weight for layer in self.layers], "layers": layers,
                "history": [dataclasses.asdict(h) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the tracked layers, sample count, momentum and sign must match."""
        try:
            ours = [layer.weight for layer in self.layers]
            if list(state["weights"]) != ours:
                raise InputError("the saved velocity state tracks other layers than this model's "
                                 f"({len(state['weights'])} saved, {len(ours)} here)")
            for key, value in (("samples", self.samples), ("momentum", self.momentum), ("sign", self.sign)):
                if state[key] != value:
                    raise InputError(f"the saved velocity state has {key}={state[key]!r}, this tracker {value!r}")
            restored = {}
            for layer in self.layers:
                saved = state["layers"][layer.module]
                restored[layer.module] = _LayerState(saved["keep"], list(saved["previous"]),
                                                     list(saved["previous_zero"]), saved["phi"],
                                                     saved["velocity"], saved["delta"])
            history = [VelocityMeasurement(**h) for h in state["history"]]
            measurements, subsampled = int(state["measurements"]), bool(state["subsampled"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"malformed velocity state ({type(exc).__name__}: {exc})") from None
        self._state, self.history = restored, history
        self.measurements, self.subsampled = measurements, subsampled

    # -- results -----------------------------------------------------------------------------------
    def _per_neuron(self, attr: str) -> dict[str, torch.Tensor] | None:
        out = {}
        for layer in self.layers:
            value = getattr(self._state[layer.module], attr)
            if value is None:
                return None
            out[layer.weight] = value.clone()
        return out

    @property
    def phi(self) -> dict[str, torch.Tensor] | None:
        """Weight name → φ per neuron (float64), or ``None`` before the second measurement."""
        return self._per_neuron("phi")

    @property
    def delta_phi(self) -> dict[str, torch.Tensor] | None:
        """Weight name → Δφ per neuron, or ``None`` before the third measurement."""
        return self._per_neuron("delta")

    @property
    def velocity(self) -> dict[str, torch.Tensor] | None:
        """Weight name → v per neuron (signed), or ``None`` before the third measurement."""
        return self._per_neuron("velocity")

    def scores(self) -> dict[str, list[float]] | None:
        """Weight name → ``|v|`` per neuron, or ``None`` while no velocity exists."""
        v = self.velocity
        return None if v is None else {name: t.abs().tolist() for name, t in v.items()}

    def group_scores(self, *, per_cost: bool = False) -> dict[str, list[float]] | None:
        """Scores for the planner (``plan_update(scores=...)``): parameter → one score per neuron group.

        A neuron's ``|v|`` is shared between the parameters decided per group with its weight row (the
        weight row and the bias entry) in proportion to their elements, so a group's score is
        ``Σ_{i ∈ group} |v_i| · e_p / (e_weight + e_bias)`` for parameter ``p`` (``e`` = elements per
        row): training the whole neuron scores ``|v_i|``, and every parameter of it has the same score per
        element, ``|v_i| / C_i`` — the seed's greedy order. ``per_cost=True`` divides each group's score
        by its elements (the greedy key itself). ``None`` while no velocity exists.

        With a layer graph, the affine parameters of a BatchNorm fed by a tracked layer (one entry per
        neuron; the planner decides them whole) are part of its neurons: each gets one number, the share
        ``Σ_i |v_i| / (e_weight + e_bias + e_followers)`` of the neurons' velocity (``per_cost``: per
        element). Without it they would score 0 and a velocity plan would never train them."""
        v = self.velocity
        if v is None:
            return None
        out: dict[str, list[float]] = {}
        for layer in self.layers:
            speed = v[layer.weight].abs()
            total = sum(layer.row_elements) + len(layer.followers)
            for param in layer.followers:
                whole = float(speed.sum()) / total
                out[param] = whole / layer.channels if per_cost else whole
            for param, per_row in zip(layer.grouped, layer.row_elements):
                share = per_row / total
                values = []
                for start, stop in layer.groups:
                    score = float(speed[start:stop].sum()) * share
                    values.append(score / (per_row * (stop - start)) if per_cost else score)
                out[param] = values
        return out
