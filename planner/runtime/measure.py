"""The host oracle: what PyTorch really holds during one eager training step.

:func:`measure_step` runs ONE real training step (forward, loss, backward, optimizer step) on a deep copy
of the model with ``requires_grad`` set from an :class:`~budgetplan.model.update_set.UpdateSet`, and reports, in
bytes and FLOPs:

* ``saved_activation_bytes`` - distinct storages autograd saved for backward
  (``torch.autograd.graph.saved_tensors_hooks``), each storage counted once by its identity (views,
  ``t()``, ``detach()`` share a storage), excluding parameters, buffers, the model input and the loss
  target. A saved view of a larger storage costs the whole storage.
* ``gradient_bytes`` - storages of ``.grad`` of the trained parameters after backward.
* ``optimizer_state_bytes`` - every tensor in ``optimizer.state`` after the step, including 0-d tensors
  such as Adam's ``step`` counter (reported separately in ``optimizer_scalar_state_bytes``).
* ``peak_bytes`` - the maximum of live bytes over forward + loss + backward + step. Live bytes =
  the baseline (parameters, buffers, the cloned input and the loss target of the copy) plus every
  storage that appears as an input or output of an ATen operator (seen by a ``TorchDispatchMode``),
  from the moment it is first seen until it is freed (a ``weakref.finalize`` on the storage). This
  includes activations (saved or transient), the loss, autograd temporaries (gradients flowing between
  nodes, the backward seed), ``.grad`` buffers and optimizer state. It does not include memory that
  never surfaces as an operator's tensor (oneDNN/im2col scratch inside a kernel), allocator caching or
  fragmentation, Python objects, or the caller's own model. Gradients are not freed early (eager
  PyTorch keeps every ``.grad`` until ``zero_grad``), so this is the peak of the *unfused* schedule.
* ``forward_flops`` / ``backward_flops`` - ``torch.utils.flop_counter.FlopCounterMode``, run on a second
  copy apart from the memory pass, since the mode changes how some backward formulas run (2 FLOPs per
  multiply-accumulate, matmul/conv-like ops only; element-wise ops count 0).

Channel subsets are measured as full tensors: PyTorch eager computes the whole gradient of a parameter
that requires grad (``channel_subsets_measured_as_full`` says when this applied).

``measure_step(module, inputs, None)`` measures a module as it is set up: the trained parameters are
exactly those with ``requires_grad=True`` (e.g. a :class:`budgetplan.runtime.compiled.CompiledModule`, whose
channel subsets are small row parameters; their gradients and optimizer state are measured as they are).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from budgetplan.cost_models.dispatch import RecordingMode
from budgetplan.cost_models.meta import storage_key
from budgetplan.errors import InputError
from budgetplan.model.update_set import UpdateSet

__all__ = ["LOSSES", "OPTIMIZERS", "Measurement", "measure_step", "training_loss"]

#: Optimizer names accepted by :func:`measure_step`.
OPTIMIZERS = ("sgd", "sgd-momentum", "adam")
#: Loss names accepted by :func:`measure_step`.
LOSSES = ("sum", "cross-entropy")


@dataclass
class Measurement:
    """What one eager PyTorch training step holds. All sizes in bytes, all FLOP counts in FLOPs."""

    saved_activation_bytes: int
    saved_tensors: list[dict[str, Any]]
    gradient_bytes: int
    optimizer_state_bytes: int
    peak_bytes: int
    timeline: list[tuple[str, int]]
    forward_flops: int
    backward_flops: int
    #: parameters + buffers + cloned input (+ loss target) of the measured copy, each storage once.
    baseline_bytes: int = 0
    #: saved-for-backward storages that are parameters, buffers, the input or the target (not counted above).
    saved_excluded_bytes: int = 0
    #: parameter name -> bytes of its ``.grad``, for every parameter of the copy whose ``.grad`` is set
    #: after backward (frozen parameters never appear: their ``.grad`` stays ``None``).
    grads: dict[str, int] = field(default_factory=dict)
    #: the part of ``optimizer_state_bytes`` held in 0-d tensors (Adam's ``step``).
    optimizer_scalar_state_bytes: int = 0
    backward_ran: bool = True
    channel_subsets_measured_as_full: bool = False
    optimizer: str = "sgd"
    loss: str = "sum"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timeline entries become ``[label, bytes]`` lists)."""
        out = asdict(self)
        out["timeline"] = [[label, nbytes] for label, nbytes in self.timeline]
        return out


def _storage_of(t: torch.Tensor) -> torch.UntypedStorage | None:
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, meta-less subclasses, ...
        return None


class _LiveBytes(RecordingMode):
    """Tracks live tensor storages: first sighting as an op input/output -> +bytes, finalizer -> -bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.producer: dict[int, str] = {}
        self.current = 0
        self.peak = 0
        self.phase = "setup"
        self.timeline: list[tuple[str, int]] = []
        self.on_free: list[Any] = []  # callbacks taking the freed storage key
        self._finalizers: list[weakref.finalize] = []

    # -- bookkeeping ----------------------------------------------------------------------------------
    def add(self, t: torch.Tensor, label: str, *, record: bool = True) -> None:
        s = _storage_of(t)
        if s is None:
            return
        key = storage_key(t)
        nbytes = int(s.nbytes())
        old = self.live.get(key)
        if old is None:
            if nbytes == 0:
                return
            self.live[key] = nbytes
            self.producer[key] = label
            self.current += nbytes
            self._finalizers.append(weakref.finalize(s, self._free, key))
        elif nbytes > old:  # resized in place
            self.live[key] = nbytes
            self.current += nbytes - old
        else:
            return
        self.peak = max(self.peak, self.current)
        if record:
            self.timeline.append((f"{self.phase}: +{label}", self.current))

    def _free(self, key: int) -> None:
        nbytes = self.live.pop(key, None)
        if nbytes is None:
            return
        self.current -= nbytes
        self.timeline.append((f"{self.phase}: -{self.producer.get(key, '?')}", self.current))
        for callback in self.on_free:
            callback(key)

    def mark(self, label: str) -> None:
        self.timeline.append((label, self.current))

    def detach_finalizers(self) -> None:
        for f in self._finalizers:
            f.detach()
        self._finalizers.clear()

    # -- dispatch -------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = str(func)
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                self.add(t, f"{name} (pre-existing input)")
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t, name)
        return out


class _SavedTensors:
    """``saved_tensors_hooks`` recorder: distinct saved storages, excluding a set of storage keys.

    A saved storage that dies before the forward pass ends (its graph branch was discarded) is dropped:
    it is not held for backward, and its key may be reused by a later storage.
    """

    def __init__(self, excluded: set[int], live: _LiveBytes) -> None:
        self.excluded = excluded
        self.live = live
        self.saved: dict[int, dict[str, Any]] = {}
        self.excluded_seen: dict[int, int] = {}
        live.on_free.append(self.forget)

    def forget(self, key: int) -> None:
        self.saved.pop(key, None)

    def freeze(self) -> list[dict[str, Any]]:
        """The storages held for backward now (call when the forward pass and loss are done)."""
        if self.forget in self.live.on_free:
            self.live.on_free.remove(self.forget)
        return list(self.saved.values())

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = _storage_of(t)
        if s is not None:
            self.live.add(t, "saved tensor (not seen as an op output)")
            key = storage_key(t)
            nbytes = int(s.nbytes())
            if key in self.excluded:
                self.excluded_seen[key] = nbytes
            elif key not in self.saved:
                self.saved[key] = {
                    "shape": list(t.shape),
                    "dtype": str(t.dtype).removeprefix("torch."),
                    "bytes": nbytes,
                    "tensor_bytes": t.numel() * t.element_size(),
                    "op": self.live.producer.get(key),
                    "grad_fn": type(t.grad_fn).__name__ if t.grad_fn is not None else None,
                }
        # Return a detached alias (same storage, same version counter, no grad_fn): returning ``t`` would
        # make an output saved by its own node a reference cycle (t -> grad_fn -> t) that outlives a
        # discarded graph branch; autograd re-attaches grad_fn itself when it unpacks.
        return t.detach()

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


def _make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0, foreach=False)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=False)
    return torch.optim.Adam(params, lr=lr, foreach=False)


def _output_tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]


def training_loss(out: Any, loss: str, target: torch.Tensor | None) -> torch.Tensor:
    """The loss of one step from a model's output: ``"sum"`` of every floating-point output, or
    ``"cross-entropy"`` of ``(N, C)`` logits against ``target``. Bad outputs raise a one-line
    :class:`InputError`."""
    if loss == "sum":
        outs = _output_tensors(out)
        if not outs:
            raise InputError("the model returned no floating-point tensor to build a loss from")
        total = outs[0].sum()
        for t in outs[1:]:
            total = total + t.sum()
        return total
    if not (isinstance(out, torch.Tensor) and out.dim() == 2):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"loss 'cross-entropy' needs (N, C) logits, the model returned {got}")
    assert target is not None
    return nn.functional.cross_entropy(out, target)


def _unique_bytes(tensors: list[torch.Tensor]) -> tuple[int, set[int]]:
    keys: dict[int, int] = {}
    for t in tensors:
        s = _storage_of(t)
        if s is not None:
            keys[storage_key(t)] = int(s.nbytes())
    return sum(keys.values()), set(keys)


@contextmanager
def _phase(tracker: _LiveBytes, name: str) -> Iterator[None]:
    tracker.phase = name
    tracker.mark(f"{name} begins")
    yield
    tracker.mark(f"{name} ends")


def measure_step(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    update: UpdateSet | None,
    *,
    optimizer: str = "sgd",
    lr: float = 0.01,
    loss: str = "sum",
) -> Measurement:
    """Run one real training step on a deep copy of ``model`` and measure it (bytes, FLOPs).

    Args:
        model: the model; never modified (a deep copy is trained; train/eval mode is kept as is, so
            BatchNorm in train mode normalises with batch statistics and saves mean and invstd).
        example_inputs: positional inputs of the forward (a tensor or a tuple). They are cloned, do not
            require grad, and are part of the baseline.
        update: which parameters are trained (``requires_grad=True``); validated against the model.
            Channel subsets train the whole tensor in eager PyTorch (reported as
            ``channel_subsets_measured_as_full``). An empty set measures the forward pass only.
            ``None``: train exactly the parameters that have ``requires_grad=True`` (the module as set up,
            e.g. a compiled module; ``requires_grad`` flags are left as they are).
        optimizer: ``"sgd"`` (no momentum), ``"sgd-momentum"`` (momentum 0.9) or ``"adam"``; the
            for-loop (non-foreach) implementations are used.
        lr: learning rate (> 0).
        loss: ``"sum"`` (sum of every floating-point output) or ``"cross-entropy"`` (the output must be
            ``(N, C)`` logits; the target is class 0 for every sample, an int64 tensor of N elements).

    Raises:
        InputError: unknown optimizer or loss, bad ``lr``, an update set naming unknown parameters or
            non-floating parameters, inputs that are not tensors, or a model that fails on the inputs.
    """
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if loss not in LOSSES:
        raise InputError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise InputError(f"learning rate must be a positive number, got {lr!r}")
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        raise InputError("example inputs must be a tensor or a tuple of tensors")
    if update is not None:
        update = update.validated(model)

    with torch.random.fork_rng(devices=[]):
        return _measure(model, tuple(example_inputs), update, optimizer, float(lr), loss)


def _count_flops(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], update: UpdateSet | None,
                 loss_name: str, backward: bool) -> tuple[int, int]:
    """Forward and backward FLOPs of the same step on another copy, under FlopCounterMode.

    Counted apart from the memory pass: FlopCounterMode is a dispatch mode, and under it some backward
    formulas (SiLU, Mish) run decomposed into temporaries that a plain eager step never allocates.
    """
    net = copy.deepcopy(model)
    for name, p in net.named_parameters():
        p.requires_grad_(p.requires_grad if update is None else update.is_updated(name))
    inputs = tuple(t.detach().clone() for t in example_inputs)
    fwd_counter = FlopCounterMode(display=False)
    with fwd_counter:
        out = net(*inputs)
        target = torch.zeros(out.shape[0], dtype=torch.long) if loss_name == "cross-entropy" else None
        loss = training_loss(out, loss_name, target)
    if not backward:
        return int(fwd_counter.get_total_flops()), 0
    bwd_counter = FlopCounterMode(display=False)
    with bwd_counter:
        loss.backward()
    return int(fwd_counter.get_total_flops()), int(bwd_counter.get_total_flops())


def _measure(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    update: UpdateSet | None,
    optimizer_name: str,
    lr: float,
    loss_name: str,
) -> Measurement:
    try:
        net = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - any failure here is the model's
        raise InputError(f"cannot copy the model for measuring: {type(exc).__name__}: {exc}") from None
    notes: list[str] = []
    trained: list[nn.Parameter] = []
    for name, p in net.named_parameters():
        wanted = p.requires_grad if update is None else update.is_updated(name)
        if wanted and not (p.is_floating_point() or p.is_complex()):
            raise InputError(f"parameter {name!r} has dtype {p.dtype} and cannot be trained")
        p.requires_grad_(wanted)
        p.grad = None
        if wanted:
            trained.append(p)
    inputs = tuple(t.detach().clone() for t in example_inputs)
    opt = _make_optimizer(optimizer_name, trained, lr) if trained else None
    subsets = update is not None and update.has_channel_subsets()
    if subsets:
        notes.append(
            "channel subsets measured as full tensors: eager PyTorch computes the whole gradient of a "
            "parameter that requires grad"
        )

    baseline_tensors = list(net.parameters()) + list(net.buffers()) + list(inputs)
    baseline_bytes, excluded = _unique_bytes(baseline_tensors)

    tracker = _LiveBytes()
    for t in baseline_tensors:
        tracker.add(t, "baseline", record=False)
    tracker.mark("baseline: parameters, buffers, input")
    saved = _SavedTensors(excluded, tracker)
    backward_ran = False
    try:
        with tracker:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                with _phase(tracker, "forward"):
                    try:
                        out = net(*inputs)
                    except Exception as exc:  # noqa: BLE001 - the user's model failed on the inputs
                        raise InputError(
                            f"the model failed on the example inputs: {type(exc).__name__}: {exc}"
                        ) from None
                with _phase(tracker, "loss"):
                    target = None
                    if loss_name == "cross-entropy":
                        if not (isinstance(out, torch.Tensor) and out.dim() == 2):
                            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                            raise InputError(
                                f"loss 'cross-entropy' needs (N, C) logits, the model returned {got}"
                            )
                        target = torch.zeros(out.shape[0], dtype=torch.long)
                        saved.excluded.update(_unique_bytes([target])[1])
                    loss = training_loss(out, loss_name, target)
                    del out, target
            saved_list = saved.freeze()
            if opt is None:
                notes.append(
                    "the update set trains nothing: measured the forward pass only (no backward, no step)"
                )
            elif not loss.requires_grad:
                notes.append(
                    "no trained parameter influences the loss: measured the forward pass only "
                    "(no backward, no step)"
                )
            else:
                with _phase(tracker, "backward"):
                    loss.backward()
                backward_ran = True
                with _phase(tracker, "step"):
                    opt.step()
            tracker.phase = "end"
            del loss
            tracker.mark("end")
        peak = tracker.peak
        timeline = list(tracker.timeline)
    finally:
        tracker.detach_finalizers()

    forward_flops, backward_flops = _count_flops(model, example_inputs, update, loss_name, backward_ran)

    grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
    gradient_bytes, _ = _unique_bytes(list(grads.values()))
    state_tensors: list[torch.Tensor] = []
    if opt is not None:
        for state in opt.state.values():
            state_tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    optimizer_state_bytes, _ = _unique_bytes(state_tensors)
    scalar_state_bytes, _ = _unique_bytes([t for t in state_tensors if t.dim() == 0])
    if scalar_state_bytes:
        notes.append(
            f"optimizer state includes {scalar_state_bytes} bytes of 0-d step counters (counted)"
        )
    return Measurement(
        saved_activation_bytes=sum(d["bytes"] for d in saved_list),
        saved_tensors=saved_list,
        gradient_bytes=gradient_bytes,
        optimizer_state_bytes=optimizer_state_bytes,
        peak_bytes=peak,
        timeline=timeline,
        forward_flops=forward_flops,
        backward_flops=backward_flops,
        baseline_bytes=baseline_bytes,
        grads={name: _unique_bytes([g])[0] for name, g in grads.items()},
        saved_excluded_bytes=sum(saved.excluded_seen.values()),
        optimizer_scalar_state_bytes=scalar_state_bytes,
        backward_ran=backward_ran,
        channel_subsets_measured_as_full=subsets,
        optimizer=optimizer_name,
        loss=loss_name,
        notes=notes,
    )
