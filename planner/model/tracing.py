"""Trace a model into a torch.fx graph: ``torch.fx.symbolic_trace`` first, ``torch.export`` when it fails.

Plain symbolic tracing keeps the module structure (``call_module`` nodes) and is fast, but it fails on
most published model code: Python control flow on shapes, iterating over proxies, asserts on sizes.
``torch.export.export`` runs the model with fake tensors and records an ATen-level graph instead; its
``ExportedProgram.module()`` is an ordinary ``GraphModule`` whose parameters are ``get_attr`` nodes with
their qualified names, so both results are handled by the same passes downstream.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx
from torch import nn

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
        return TracedModel(exported.module(), "export", exported, None)
    if method not in ("auto", "fx", "export"):
        raise TraceError(f"unknown trace method '{method}'; use auto, fx or export")

    fallback_reason: str | None = None
    if method in ("auto", "fx"):
        try:
            return TracedModel(_symbolic_trace(module), "symbolic_trace")
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
    return TracedModel(ep.module(), "export", ep, fallback_reason)
