"""Trace a model into a torch.fx graph: ``torch.fx.symbolic_trace`` first, ``torch.export`` when it fails.

Plain symbolic tracing keeps the module structure (``call_module`` nodes) and is fast, but it fails on
most published model code: Python control flow on shapes, iterating over proxies, asserts on sizes.
``torch.export.export`` runs the model with fake tensors and records an ATen-level graph instead; its
``ExportedProgram.module()`` is an ordinary ``GraphModule`` whose parameters are ``get_attr`` nodes with
their qualified names, so both results are handled by the same passes downstream.

A traced program can differ from the eager one where model code asks "am I being traced?": transformers
builds an explicit attention mask under tracing (all true for a bidirectional encoder, the causal pattern
for a decoder) where its eager forward passes ``attn_mask=None`` (and ``is_causal``). SDPA on CPU turns
a boolean mask into a float one and keeps it for backward, so the traced program would keep a
``(1, 1, L, S)`` float tensor per attention layer that eager never allocates.
:func:`drop_constant_attention_masks` gives such calls the eager form back.
"""

from __future__ import annotations

import operator
import traceback
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import fx, nn

from budgetplan.errors import TraceError, first_line

TraceMethod = Literal["auto", "fx", "export"]


@dataclass
class TracedModel:
    """A traced model: the fx graph module plus how it was obtained."""

    graph_module: fx.GraphModule
    method: str  # "symbolic_trace" or "export"
    exported: torch.export.ExportedProgram | None = None
    fallback_reason: str | None = None  # why symbolic_trace was not used, when it was tried


def _user_frame(exc: BaseException) -> str:
    """The innermost stack frame outside torch/budgetplan, as ``file:line``, or ''."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        name = frame.filename.replace("\\", "/")
        if "/torch/" in name or "/budgetplan/" in name or "/planner/" in name or "<" in name:
            continue
        return f"{frame.filename}:{frame.lineno} ({frame.line.strip() if frame.line else frame.name})"
    return ""


def _symbolic_trace(module: nn.Module) -> fx.GraphModule:
    return fx.symbolic_trace(module)


def _export(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    return torch.export.export(module, example_inputs, strict=False)


def trace_model(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    method: TraceMethod = "auto",
    exported: torch.export.ExportedProgram | None = None,
) -> TracedModel:
    """Trace ``module`` into an fx ``GraphModule``.

    ``method="auto"`` tries ``torch.fx.symbolic_trace`` and falls back to ``torch.export.export`` when
    symbolic tracing fails (the reason is kept in ``fallback_reason``). A model that already is an
    ``ExportedProgram`` (``exported``) is used as it is. Raises :class:`TraceError` (one line: the
    failing op or source line and what to try) when neither works.
    """
    if exported is not None:
        return _eager_form(TracedModel(exported.module(), "export", exported, None))
    if method not in ("auto", "fx", "export"):
        raise TraceError(f"unknown trace method '{method}'; use auto, fx or export")

    fallback_reason: str | None = None
    if method in ("auto", "fx"):
        try:
            return _eager_form(TracedModel(_symbolic_trace(module), "symbolic_trace"))
        except Exception as exc:  # any failure of symbolic tracing is a reason to try export
            where = _user_frame(exc)
            fallback_reason = first_line(exc, with_type=True) + (f" at {where}" if where else "")
            if method == "fx":
                raise TraceError(
                    f"torch.fx.symbolic_trace failed: {fallback_reason}; "
                    "try --trace export (torch.export handles control flow on shapes)"
                ) from None
    try:
        ep = _export(module, example_inputs)
    except Exception as exc:
        where = _user_frame(exc)
        detail = first_line(exc, with_type=True) + (f" at {where}" if where else "")
        fx_part = f"torch.fx.symbolic_trace failed ({fallback_reason}) and " if fallback_reason else ""
        raise TraceError(
            f"cannot trace the model: {fx_part}torch.export.export failed: {detail}; "
            "make control flow depend on shapes only (not on tensor values), or export the model "
            "yourself with torch.export.export and pass the .pt2 file"
        ) from None
    return _eager_form(TracedModel(ep.module(), "export", ep, fallback_reason))


def _eager_form(traced: TracedModel) -> TracedModel:
    """The traced program with what only tracing added undone (:func:`drop_constant_attention_masks`)."""
    drop_constant_attention_masks(traced.graph_module)
    return traced


_SDPA_TARGETS = (torch.ops.aten.scaled_dot_product_attention.default,
                 torch.nn.functional.scaled_dot_product_attention)
_MASK_ANCESTORS = 64  # a constant mask is built in a few ops (arange, compare, unsqueeze, expand)


def _constant_value(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """The value of ``node`` when it depends on no model input and no parameter (computed here, on the
    real ops), else ``None``."""
    order: list[fx.Node] = []
    seen: set[fx.Node] = set()

    def visit(n: fx.Node) -> bool:
        if n in seen:
            return True
        seen.add(n)
        if n.op in ("placeholder", "call_module", "output") or len(seen) > _MASK_ANCESTORS:
            return False
        if n.op == "get_attr" and isinstance(_attr(gm, str(n.target)), nn.Parameter):
            return False
        if not all(visit(a) for a in n.all_input_nodes):
            return False
        order.append(n)
        return True

    if not visit(node):
        return None
    values: dict[fx.Node, Any] = {}
    try:
        with torch.no_grad():
            for n in order:
                if n.op == "get_attr":
                    values[n] = _attr(gm, str(n.target))
                    continue
                args = fx.node.map_arg(n.args, lambda a: values[a])
                kwargs = fx.node.map_arg(n.kwargs, lambda a: values[a])
                target = getattr(torch.Tensor, n.target) if n.op == "call_method" else n.target
                values[n] = target(*args, **kwargs)
    except Exception:  # noqa: BLE001 - not a constant we can evaluate: leave the call as it is
        return None
    value = values[node]
    return value if isinstance(value, torch.Tensor) else None


def _attr(gm: fx.GraphModule, target: str) -> Any:
    return operator.attrgetter(target)(gm)


def _is_causal_pattern(mask: torch.Tensor) -> bool:
    if mask.dim() < 2:
        return False
    length, source = mask.shape[-2:]
    causal = torch.ones(length, source, dtype=torch.bool).tril()
    return bool((mask == causal).all())


def drop_constant_attention_masks(gm: fx.GraphModule) -> int:
    """Give SDPA calls whose mask is a constant the eager form: an all-true boolean (or all-zero float)
    mask becomes ``attn_mask=None``, a boolean mask with the causal pattern ``attn_mask=None,
    is_causal=True`` — the same attention, without the float mask SDPA would build and keep for backward.
    A mask that depends on an input or a parameter is left alone. Returns the calls changed."""
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _SDPA_TARGETS:
            continue
        args, kwargs = list(node.args), dict(node.kwargs)
        in_args = len(args) > 3
        mask = args[3] if in_args else kwargs.get("attn_mask")
        if not isinstance(mask, fx.Node):
            continue
        value = _constant_value(gm, mask)
        if value is None:
            continue
        if value.dtype == torch.bool and bool(value.all()) or value.is_floating_point() and not bool(value.any()):
            causal = None
        elif value.dtype == torch.bool and _is_causal_pattern(value):
            is_causal = args[5] if len(args) > 5 else kwargs.get("is_causal", False)
            if is_causal:
                continue
            causal = True
        else:
            continue
        if in_args:
            args[3] = None
        else:
            kwargs["attn_mask"] = None
        if causal:
            if len(args) > 5:
                args[5] = True
            else:
                kwargs["is_causal"] = True
        node.args, node.kwargs = tuple(args), kwargs
        changed += 1
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return changed
