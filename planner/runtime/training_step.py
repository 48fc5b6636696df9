"""One SGD training step as one fx graph, scheduled so that each weight is updated right after its gradient.

:func:`build_training_step` traces forward, loss, the gradients of the parameters that require grad
(``torch.autograd.grad``) and a fused in-place SGD update (``p.add_(g, alpha=-lr)``) into one ATen-level
:class:`torch.fx.GraphModule` with ``make_fx`` — the *joint graph* that Lin et al.'s Tiny Training Engine
compiles. Autograd only differentiates towards parameters that require grad, so the backward of frozen
parts is never traced (tiny-training's backward-graph pruning); dead nodes are eliminated. It works on
any ``nn.Module``: the trained parameters are those with ``requires_grad=True`` — whole parameters of
the user's model, or the selected-row parameters of a module made by ``budgetplan.compile``.

The **schedule pass** then moves each parameter's update to the earliest point where it is legal: after
the node that produces the final gradient (accumulated over every use of the parameter) and after every
other node that reads the parameter's storage (the backward of a linear layer reads the weight for the
input gradient) — tiny-training's operator reordering. The gradient's last use is then its update, so
it is freed right away.

A profile run of the graph on real tensors records, for every node, which storages it reads and writes
(PyTorch's own aliasing: views, ``t``, ``detach`` and in-place ops share a storage) — from which every
buffer gets a size in bytes and a lifetime in schedule steps. Arena buffers (:meth:`TrainingStep.arena_buffers`,
for :mod:`budgetplan.runtime.arena`) are the storages the step allocates: forward activations, tensors saved for
backward, gradients and backward temporaries, the loss. Outside the arena: the parameters (frozen ones in
flash, trained ones in their own RAM area), module buffers (BatchNorm statistics), graph constants and
the input (and target), which the caller owns.

The graph's calling convention: one positional tensor per :class:`StepInput`, in order — trained
parameters, frozen parameters, module buffers, the model inputs and, for ``cross-entropy``, the integer
target. It returns the loss and updates the trained parameters (and BatchNorm statistics) **in place**;
:meth:`TrainingStep.run` does this on a module. :meth:`TrainingStep.python_source` is the graph as a
stand-alone Python file.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_flatten

from budgetplan.runtime.arena import ArenaBuffer
from budgetplan.cost_models.meta import storage_key
from budgetplan.errors import InputError, first_line
from budgetplan.runtime.measure import training_loss

__all__ = ["LOSSES", "ParameterUpdate", "StepBuffer", "StepInput", "StepNode", "TrainingStep",
           "build_training_step", "eager_sgd_step"]

#: Losses :func:`build_training_step` supports.
LOSSES = ("sum", "cross-entropy")
#: Buffer kinds that live in the arena.
ARENA_KINDS = ("activation", "saved", "gradient", "temporary", "output")


@dataclass(frozen=True)
class StepInput:
    """One argument of the step graph. ``kind``: ``trained`` / ``frozen`` (a parameter), ``buffer`` (a
    module buffer), ``input`` (a model input), ``target`` (the class labels of ``cross-entropy``) or
    ``constant`` (a tensor the trace captured; its value is in :attr:`TrainingStep.constants`)."""

    name: str
    kind: str
    source: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass
class StepBuffer:
    """A storage the step touches: ``nbytes`` bytes, live from schedule step ``first`` to ``last``
    (inclusive). ``kind``: in the arena ``activation`` (forward, dead before backward), ``saved`` (forward,
    kept for backward), ``gradient`` (a parameter gradient, consumed by its update), ``temporary`` (other
    backward values), ``output`` (the loss); outside it ``trained``, ``frozen``, ``buffer``, ``input``,
    ``target``, ``constant``."""

    name: str
    nbytes: int
    kind: str
    producer: str
    first: int
    last: int

    @property
    def in_arena(self) -> bool:
        return self.kind in ARENA_KINDS


@dataclass
class StepNode:
    """One operator of the schedule. ``phase``: ``forward`` (up to the loss), ``backward`` or ``update``.
    ``reads``/``writes``: buffer names; ``new_bytes``: bytes of the buffers it allocates; ``live_bytes``:
    arena bytes live while it runs."""

    index: int
    name: str
    op: str
    phase: str
    reads: list[str]
    writes: list[str]
    new_bytes: int
    live_bytes: int


@dataclass
class ParameterUpdate:
    """Where a trained parameter is updated: schedule step ``step`` (``eager_step`` without reordering),
    right after ``gradient_node`` produced its gradient of ``gradient_bytes`` bytes."""

    parameter: str
    update_node: str
    gradient_node: str
    gradient_bytes: int
    step: int
    eager_step: int


@dataclass
class TrainingStep:
    """A traced, scheduled SGD step (see the module docstring). Sizes in bytes, times in seconds."""

    graph_module: fx.GraphModule
    inputs: list[StepInput]
    nodes: list[StepNode]
    buffers: list[StepBuffer]
    updates: list[ParameterUpdate]
    loss: str
    lr: float
    #: arena bytes live at the peak of the same graph *before* reordering (updates at the end).
    unscheduled_peak_bytes: int
    #: arena bytes live at the peak of the schedule.
    peak_bytes: int
    build_seconds: float
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def arena_buffers(self) -> list[ArenaBuffer]:
        """The buffers that live in the arena, for :func:`budgetplan.runtime.arena.plan_arena`."""
        return [ArenaBuffer(b.name, b.nbytes, b.first, b.last) for b in self.buffers if b.in_arena]

    def outside_bytes(self) -> dict[str, int]:
        """Bytes outside the arena, by kind (``trained``, ``frozen``, ``buffer``, ``input``, ...)."""
        out: dict[str, int] = {}
        for b in self.buffers:
            if not b.in_arena:
                out[b.kind] = out.get(b.kind, 0) + b.nbytes
        return out

    def arguments(self, module: nn.Module, inputs: Sequence[torch.Tensor],
                  target: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The graph's arguments taken from ``module`` (its own tensors, so the step updates them)."""
        state = {**dict(module.named_parameters(remove_duplicate=False)),
                 **dict(module.named_buffers(remove_duplicate=False))}
        args: list[torch.Tensor] = []
        model_inputs = list(inputs)
        for spec in self.inputs:
            if spec.kind in ("trained", "frozen", "buffer"):
                if spec.source not in state:
                    raise InputError(f"the module has no parameter or buffer {spec.source!r} the step needs")
                args.append(state[spec.source])
            elif spec.kind == "input":
                args.append(model_inputs.pop(0))
            elif spec.kind == "target":
                args.append(target if target is not None else _default_target(self.inputs))
            else:
                args.append(self.constants[spec.name])
        return args

    def run(self, module: nn.Module, inputs: Sequence[torch.Tensor] | torch.Tensor,
            target: torch.Tensor | None = None) -> torch.Tensor:
        """Run the step on ``module``: its trained parameters (and BatchNorm statistics) are updated in
        place; returns the loss. ``target`` defaults to class 0 for every sample (``cross-entropy``)."""
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        with torch.no_grad():
            return self.graph_module(*self.arguments(module, inputs, target))

    def to_schedule_dict(self) -> dict[str, Any]:
        """``schedule.json``: inputs, the operators in order, buffers, updates (bytes, step indices)."""
        return {
            "format": "budgetplan-schedule",
            "version": 1,
            "loss": self.loss,
            "lr": self.lr,
            "optimizer": "sgd",
            "peak_live_bytes": self.peak_bytes,
            "unscheduled_peak_live_bytes": self.unscheduled_peak_bytes,
            "inputs": [{**asdict(i), "shape": list(i.shape)} for i in self.inputs],
            "updates": [asdict(u) for u in self.updates],
            "nodes": [asdict(n) for n in self.nodes],
            "buffers": [{**asdict(b), "in_arena": b.in_arena} for b in self.buffers],
            "notes": list(self.notes),
        }

    def python_source(self) -> str:
        """The scheduled graph as a stand-alone Python module (imports torch only): ``step(*args)`` runs the
        graph; ``train_step(module, *inputs, target=None)`` feeds it a module's tensors by name."""
        code = self.graph_module.graph.python_code(root_module="self")
        src = code.src
        unknown = sorted(g for g in set(code.globals) - _KNOWN_GLOBALS if re.search(rf"\b{re.escape(g)}\b", src))
        if unknown:
            raise InputError(f"the step graph uses names the emitted file cannot import: {', '.join(unknown)}")
        src = re.sub(r"def forward\(self,?\s*", "def step(", src, count=1)
        lines = ['"""One SGD training step compiled by budgetplan (see docs/export.md). Generated: do not edit.',
                 "",
                 "step(*args) takes the tensors listed in INPUTS, in order; it returns the loss and updates the",
                 "trained parameters (and BatchNorm statistics) in place. Run it under torch.no_grad().",
                 '"""',
                 "import math",
                 "",
                 "import torch",
                 "from torch import device",
                 "",
                 "inf = math.inf",
                 "nan = math.nan",
                 "",
                 f"LOSS = {self.loss!r}",
                 f"LR = {self.lr!r}",
                 "#: (argument, kind, parameter/buffer name or input index, shape, dtype)",
                 "INPUTS = ["]
        for i in self.inputs:
            lines.append(f"    ({i.name!r}, {i.kind!r}, {i.source!r}, {list(i.shape)!r}, {i.dtype!r}),")
        lines.append("]")
        lines.append("CONSTANTS = {")
        for name, value in self.constants.items():
            lines.append(f"    {name!r}: torch.tensor({value.tolist()!r}, dtype={value.dtype}),")
        lines += ["}", "", src.strip("\n"), "", "", _TRAIN_STEP_SOURCE]
        return "\n".join(lines) + "\n"


_KNOWN_GLOBALS = {"torch", "device", "inf", "nan", "math"}

_TRAIN_STEP_SOURCE = '''def train_step(module, *inputs, target=None):
    """Run step() on a module's own parameters and buffers (updated in place); returns the loss."""
    state = {**dict(module.named_parameters(remove_duplicate=False)),
             **dict(module.named_buffers(remove_duplicate=False))}
    queue = list(inputs)
    args = []
    for name, kind, source, shape, dtype in INPUTS:
        if kind in ("trained", "frozen", "buffer"):
            args.append(state[source])
        elif kind == "input":
            args.append(queue.pop(0))
        elif kind == "target":
            args.append(target if target is not None else torch.zeros(shape, dtype=torch.long))
        else:
            args.append(CONSTANTS[name])
    with torch.no_grad():
        return step(*args)'''


def _default_target(inputs: Sequence[StepInput]) -> torch.Tensor:
    spec = next(i for i in inputs if i.kind == "target")
    return torch.zeros(spec.shape, dtype=torch.long)


def eager_sgd_step(module: nn.Module, inputs: Sequence[torch.Tensor] | torch.Tensor, *, loss: str = "sum",
                   lr: float = 0.01, target: torch.Tensor | None = None) -> tuple[nn.Module, torch.Tensor]:
    """The reference: one eager PyTorch step (forward, loss, ``backward()``, ``p -= lr * p.grad`` for every
    parameter that requires grad) on a deep copy of ``module``. Returns the updated copy and the loss."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    model = copy.deepcopy(module)
    out = model(*inputs)
    if loss == "cross-entropy" and target is None:
        target = torch.zeros(out.shape[0], dtype=torch.long)
    value = training_loss(out, loss, target)
    trained = [p for p in model.parameters() if p.requires_grad]
    if trained and value.requires_grad:
        value.backward()
    with torch.no_grad():
        for p in trained:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
            p.grad = None
    return model, value.detach()


def _ident(prefix: str, name: str) -> str:
    return prefix + re.sub(r"\W", "_", name)


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


class _Profile(fx.Interpreter):
    """Runs the graph once and records the storages every node reads and produces (all values are kept
    alive, so a storage key is never reused during the run)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.reads: dict[str, list[int]] = {}
        self.writes: dict[str, list[int]] = {}
        self.nbytes: dict[int, int] = {}
        self.keep: list[Any] = []

    def run_node(self, n: fx.Node) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        result = super().run_node(n)
        self.keep.append(result)
        ins = [k for t in _tensors((args, kwargs)) if (k := storage_key(t)) is not None]
        outs = []
        for t in _tensors(result):
            k = storage_key(t)
            if k is not None:
                outs.append(k)
                self.nbytes.setdefault(k, int(t.untyped_storage().nbytes()))
        self.reads[n.name] = list(dict.fromkeys(ins))
        self.writes[n.name] = list(dict.fromkeys(outs))
        return result


def _check_args(module: nn.Module, inputs: Sequence[torch.Tensor], loss: str, lr: float) -> None:
    if not isinstance(module, nn.Module):
        raise InputError(f"expected an nn.Module, got {type(module).__name__}")
    if loss not in LOSSES:
        raise InputError(f"unknown loss {loss!r}; use one of: {', '.join(LOSSES)}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise InputError(f"learning rate must be a positive number, got {lr!r}")
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise InputError("example inputs must be tensors")


def _row_bindings(module: nn.Module) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """For a module made by ``budgetplan.compile``: id(rows parameter) -> (full tensor, row indices), so the
    step writes updated rows back into the full weight (the compiled module's forward uses the full one).
    Read through the public ``CompiledModule.row_bindings()``; rows that are a view of their full tensor
    need no write-back."""
    accessor = getattr(module, "row_bindings", None)
    if not callable(accessor):
        return {}
    return {id(b.rows): (b.full, b.index) for b in accessor() if not b.is_view}


def _example_target(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Class 0 for every row of the model's ``(N, C)`` logits (the cross-entropy loss's example target)."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        out = copy.deepcopy(module)(*[t.clone() for t in inputs])
    if not (isinstance(out, torch.Tensor) and out.dim() == 2):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"loss 'cross-entropy' needs (N, C) logits, the model returned {got}")
    return torch.zeros(out.shape[0], dtype=torch.long)


@dataclass
class _TracedStep:
    """One SGD step traced by ``make_fx``: its graph, and what each of its placeholders stands for."""

    graph_module: fx.GraphModule
    kinds: list[str]  # per placeholder: trained, frozen, buffer, input, target
    sources: list[str]  # per placeholder: parameter/buffer name, "input i" or "target"
    trained: list[str]  # names of the trained parameters


def _trace_sgd_step(module: nn.Module, inputs: tuple[torch.Tensor, ...], loss: str, lr: float,
                    target: torch.Tensor | None) -> _TracedStep:
    """Run one SGD step for real on a copy of ``module`` under ``make_fx``.

    make_fx maps each argument to a placeholder by the tensor's identity, so the module's own parameters
    (however its forward reaches them) are arguments: trained, then frozen, then buffers, then inputs."""
    work = copy.deepcopy(module)
    if callable(getattr(work, "sync", None)) and callable(getattr(work, "row_bindings", None)):
        work.sync()  # afterwards the forward's own sync() is a no-op (records nothing in the trace)
    params = list(work.named_parameters())
    trained = [(n, p) for n, p in params if p.requires_grad]
    frozen = [(n, p) for n, p in params if not p.requires_grad]
    buffers = list(work.named_buffers())
    bindings = _row_bindings(work)
    first_input = len(trained) + len(frozen) + len(buffers)
    trained_tensors = [p for _, p in trained]

    def step(*flat: torch.Tensor) -> torch.Tensor:
        xs = flat[first_input:first_input + len(inputs)]
        tgt = flat[first_input + len(inputs)] if loss == "cross-entropy" else None
        value = training_loss(work(*xs), loss, tgt)
        if trained_tensors and value.requires_grad:
            grads = torch.autograd.grad(value, trained_tensors, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(trained_tensors, grads):
                    if g is not None:
                        p.add_(g, alpha=-lr)
                        if id(p) in bindings:
                            full, index = bindings[id(p)]
                            full.index_copy_(0, index, p)
        return value.detach()

    trace_args = trained_tensors + [p for _, p in frozen] + [b for _, b in buffers]
    trace_args += [t.detach().clone() for t in inputs] + ([target.clone()] if target is not None else [])
    try:
        with torch.random.fork_rng(devices=[]):
            traced = make_fx(step, tracing_mode="real")(*trace_args)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model the tracer cannot handle
        raise InputError(f"cannot trace the training step: {first_line(exc, with_type=True)}") from None
    kinds = ["trained"] * len(trained) + ["frozen"] * len(frozen) + ["buffer"] * len(buffers)
    kinds += ["input"] * len(inputs) + (["target"] if loss == "cross-entropy" else [])
    sources = [n for n, _ in trained] + [n for n, _ in frozen] + [n for n, _ in buffers]
    sources += [f"input {i}" for i in range(len(inputs))] + (["target"] if loss == "cross-entropy" else [])
    return _TracedStep(traced, kinds, sources, [n for n, _ in trained])


def _readable_graph(step: _TracedStep, example_values: list[torch.Tensor]
                    ) -> tuple[fx.GraphModule, list[StepInput], dict[str, torch.Tensor]]:
    """The traced graph rebuilt with readable, flat arguments (``p_…`` trained, ``f_…`` frozen, ``b_…``
    buffers, ``x0…`` inputs, ``target``); captured tensors become ``const…`` arguments. Returns the graph
    module, its argument specs and the constants' values."""
    prefixes = {"trained": "p_", "frozen": "f_", "buffer": "b_", "input": "x"}
    traced = step.graph_module
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    specs: list[StepInput] = []
    used: set[str] = set()
    old_placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    for node, kind, source, value in zip(old_placeholders, step.kinds, step.sources, example_values):
        base = "target" if kind == "target" else (
            f"x{source.split()[1]}" if kind == "input" else _ident(prefixes[kind], source))
        name = base
        while name in used:
            name += "_"
        ph = graph.placeholder(name)
        ph.target = ph.name  # fx may have normalised the name (snake case); argument and node agree
        used.add(ph.name)
        env[node] = ph
        specs.append(StepInput(ph.name, kind, source, tuple(value.shape), str(value.dtype).replace("torch.", ""),
                               int(value.untyped_storage().nbytes())))
    constants: dict[str, torch.Tensor] = {}
    for node in traced.graph.nodes:
        if node.op == "get_attr":
            value = getattr(traced, node.target)
            ph = graph.placeholder(f"const{len(constants)}")
            ph.target = ph.name
            constants[ph.name] = value.detach().clone()
            env[node] = ph
            specs.append(StepInput(ph.name, "constant", str(node.target), tuple(value.shape),
                                   str(value.dtype).replace("torch.", ""), int(value.untyped_storage().nbytes())))
    for node in traced.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    gm = fx.GraphModule(nn.Module(), graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm, specs, constants


def _loss_index(body: list[fx.Node], out_node: fx.Node, eager_index: dict[str, int]) -> int:
    """Position in ``body`` of the node computing the loss (the output, under its ``detach``es)."""
    loss_node = out_node.args[0]
    while isinstance(loss_node, fx.Node) and loss_node.target is torch.ops.aten.detach.default:
        loss_node = loss_node.args[0]
    return eager_index.get(loss_node.name, -1) if isinstance(loss_node, fx.Node) else -1


def _parameter_writes(body: list[fx.Node], profile: _Profile, placeholder_keys: dict[int, StepInput],
                      loss_index: int, trained_names: dict[str, str]
                      ) -> tuple[list[fx.Node], dict[str, tuple[fx.Node, fx.Node]]]:
    """The nodes after the loss that write a parameter (the SGD updates and the row write-backs: the
    movable ones), and the updates among them: update node name -> (update node, gradient node)."""
    param_keys = {k for k, s in placeholder_keys.items() if s.kind in ("trained", "frozen")}
    movable = [n for n in body[loss_index + 1:] if set(profile.writes.get(n.name, [])) & param_keys
               and n.op == "call_function"]
    updates: dict[str, tuple[fx.Node, fx.Node]] = {}
    for n in movable:
        if (n.target is torch.ops.aten.add_.Tensor and isinstance(n.args[0], fx.Node)
                and n.args[0].name in trained_names and isinstance(n.args[1], fx.Node)):
            updates[n.name] = (n, n.args[1])
    return movable, updates


def build_training_step(module: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor, *,
                        loss: str = "sum", lr: float = 0.01, target: torch.Tensor | None = None,
                        reorder: bool = True) -> TrainingStep:
    """Trace one SGD step of ``module`` on ``example_inputs`` (see the module docstring).

    Args:
        module: any module; the parameters with ``requires_grad=True`` are trained, the others frozen.
            Never modified: the trace runs on a deep copy and the profile run on clones of its tensors.
            A module made by ``budgetplan.compile`` trains its row parameters; the step also writes the
            updated rows into the full weight (``index_copy_``), as the compiled module's sync does.
        example_inputs: the inputs of one step (their shapes are fixed in the graph).
        loss: ``sum`` (sum of every floating-point output) or ``cross-entropy`` (``(N, C)`` logits; the
            target is an extra int64 graph input, class 0 by default).
        lr: the SGD learning rate (no momentum, no weight decay), baked into the graph.
        target: example target for ``cross-entropy`` (default: zeros).
        reorder: move each update right after its gradient (default); ``False`` keeps them at the end.

    Random ops (dropout) draw from PyTorch's global generator when the graph runs, as eager does.

    Raises:
        InputError: a bad loss/lr, inputs that are not tensors, a model the trace cannot handle.
    """
    start = time.perf_counter()
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    _check_args(module, inputs, loss, lr)
    lr = float(lr)
    if loss == "cross-entropy" and target is None:
        target = _example_target(module, inputs)
    traced = _trace_sgd_step(module, inputs, loss, lr, target)

    def fresh_args() -> list[torch.Tensor]:
        # a deep copy keeps the aliasing between the module's tensors (rows that are views of a weight)
        twin = copy.deepcopy(module)
        state = {**dict(twin.named_parameters()), **dict(twin.named_buffers())}
        names = [s for s, k in zip(traced.sources, traced.kinds) if k in ("trained", "frozen", "buffer")]
        out = [state[n].detach() for n in names]
        out += [t.detach().clone() for t in inputs]
        return out + ([target.clone()] if target is not None else [])

    gm, specs, constants = _readable_graph(traced, fresh_args())

    # Profile run on clones: which storages each node reads and writes.
    profile = _Profile(gm)
    run_args = fresh_args() + [constants[n] for n in constants]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        profile.run(*run_args)
    placeholder_keys: dict[int, StepInput] = {}
    for spec, value in zip(specs, run_args):
        k = storage_key(value)
        if k is not None:
            placeholder_keys.setdefault(k, spec)
    body = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    trained_names = {s.name: s.source for s in specs if s.kind == "trained"}
    eager_index = {n.name: i for i, n in enumerate(body)}
    loss_index = _loss_index(body, out_node, eager_index)
    movable, updates = _parameter_writes(body, profile, placeholder_keys, loss_index, trained_names)
    phases = {n.name: "update" for n in movable}

    unscheduled = _lifetimes(body, profile, placeholder_keys, out_node, updates, loss_index, phases)
    if reorder and movable:
        order = _schedule(body, movable, profile, eager_index)
        anchor = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
        for n in order:
            anchor.append(n)
            anchor = n
        body = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
        gm.graph.lint()
        gm.recompile()
    bufs, step_nodes = _lifetimes(body, profile, placeholder_keys, out_node, updates, loss_index, phases,
                                  eager_index=eager_index)
    index = {n.name: i for i, n in enumerate(body)}
    upd = []
    for name, (node, grad) in updates.items():
        gkeys = profile.writes.get(grad.name, [])
        upd.append(ParameterUpdate(trained_names[node.args[0].name], name, grad.name,
                                   profile.nbytes.get(gkeys[0], 0) if gkeys else 0, index[name], eager_index[name]))
    upd.sort(key=lambda u: u.step)
    notes = []
    missing = [n for n in traced.trained if n not in {u.parameter for u in upd}]
    if missing:
        notes.append(f"{len(missing)} trained parameter(s) do not influence the loss and are not updated: "
                     f"{', '.join(missing[:5])}")
    return TrainingStep(
        graph_module=gm, inputs=specs, nodes=step_nodes, buffers=bufs, updates=upd, loss=loss, lr=lr,
        unscheduled_peak_bytes=max((n.live_bytes for n in unscheduled[1]), default=0),
        peak_bytes=max((n.live_bytes for n in step_nodes), default=0),
        build_seconds=time.perf_counter() - start, constants=constants, notes=notes,
    )


def _schedule(body: list[fx.Node], movable: list[fx.Node], profile: _Profile,
              eager_index: dict[str, int]) -> list[fx.Node]:
    """The new operator order: every movable node (a parameter update or row write-back) placed right after
    the last node it depends on — its fx inputs (the gradient), earlier nodes that read or write a storage
    it writes (write-after-read: the backward of a linear layer reads the weight for the input gradient),
    and earlier nodes that write a storage it reads. The other nodes keep their order."""
    moving = {n.name for n in movable}
    order = [n for n in body if n.name not in moving]
    written = {n.name: set(profile.writes.get(n.name, [])) for n in body}
    touched = {n.name: set(profile.reads.get(n.name, [])) | written[n.name] for n in body}
    for u in movable:
        writes = set(profile.writes.get(u.name, []))
        reads = set(profile.reads.get(u.name, [])) - writes
        inputs = {n.name for n in u.all_input_nodes}
        after = -1
        for i, n in enumerate(order):
            if eager_index[n.name] >= eager_index[u.name]:
                continue
            if n.name in inputs or touched[n.name] & writes or written[n.name] & reads:
                after = i
        order.insert(after + 1, u)
    return order


def _lifetimes(body: list[fx.Node], profile: _Profile, placeholder_keys: dict[int, StepInput],
               out_node: fx.Node, updates: dict[str, tuple[fx.Node, fx.Node]], loss_index: int,
               phases: dict[str, str], eager_index: dict[str, int] | None = None
               ) -> tuple[list[StepBuffer], list[StepNode]]:
    """Buffers with lifetimes in the order ``body`` runs, and the per-node records."""
    eager_index = eager_index or {n.name: i for i, n in enumerate(body)}
    last = len(body) - 1
    first_at: dict[int, int] = {}
    last_at: dict[int, int] = {}
    producer: dict[int, str] = {}
    grad_keys = {k for _, (_, g) in updates.items() for k in profile.writes.get(g.name, [])}
    for i, n in enumerate(body):
        for k in profile.writes.get(n.name, []):
            if k not in first_at and k not in placeholder_keys:
                first_at[k], producer[k] = i, n.name
        for k in profile.reads.get(n.name, []) + profile.writes.get(n.name, []):
            last_at[k] = i
    out_keys = {k for t in out_node.all_input_nodes for k in profile.writes.get(t.name, [])}
    names: dict[int, str] = {}
    buffers: list[StepBuffer] = []
    for k, spec in placeholder_keys.items():
        names[k] = spec.name
        buffers.append(StepBuffer(spec.name, profile.nbytes.get(k, spec.nbytes), spec.kind, "", 0, last))
    for k in sorted(first_at, key=lambda key: first_at[key]):
        if k in out_keys:
            kind, end = "output", last
        elif k in grad_keys:
            kind, end = "gradient", last_at[k]
        elif eager_index[producer[k]] <= loss_index:
            kind = "saved" if eager_index[body[last_at[k]].name] > loss_index else "activation"
            end = last_at[k]
        else:
            kind, end = "temporary", last_at[k]
        names[k] = f"buf{len(names) - len(placeholder_keys)}"
        buffers.append(StepBuffer(names[k], profile.nbytes[k], kind, producer[k], first_at[k], end))
    delta = [0] * (len(body) + 1)
    for b in buffers:
        if b.in_arena:
            delta[b.first] += b.nbytes
            delta[b.last + 1] -= b.nbytes
    nodes = []
    live = 0
    for i, n in enumerate(body):
        live += delta[i]
        phase = phases.get(n.name) or ("forward" if eager_index[n.name] <= loss_index else "backward")
        new = [k for k in profile.writes.get(n.name, []) if producer.get(k) == n.name]
        nodes.append(StepNode(i, n.name, _op_name(n), phase,
                              [names[k] for k in profile.reads.get(n.name, []) if k in names],
                              [names[k] for k in profile.writes.get(n.name, []) if k in names],
                              sum(profile.nbytes[k] for k in new), live))
    return buffers, nodes


def _op_name(n: fx.Node) -> str:
    target = n.target
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target._schema.name.split('::')[-1]}.{target._overloadname}"
    return getattr(target, "__name__", str(target))
