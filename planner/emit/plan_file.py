"""The plan file: a versioned JSON document of what to train and what it costs (docs/plan-format.md).

The same inputs give a byte-identical file: keys are written in a fixed order, floats are rounded, and
nothing that varies between runs (solver wall time, dates, paths of temporary files) is included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

import budgetplan
from budgetplan.errors import InputError
from budgetplan.model.graph import LayerGraph
from budgetplan.model.loading import checking_module
from budgetplan.schemas import PLAN_FORMAT, PLAN_VERSION, read_document, validate_plan
from budgetplan.targets import Target

if TYPE_CHECKING:  # annotations only: reading a plan file needs neither the planner nor PuLP
    from budgetplan.selection.planner import PlanResult

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "check_fingerprint", "check_plan_input_shape", "check_plan_parameters",
           "dumps_plan", "expecting_plan_model", "layer_summary", "model_fingerprint", "plan_document", "read_plan"]


def model_fingerprint(graph: LayerGraph) -> str:
    """sha256 of the architecture: parameter names, shapes and dtypes, the ops in order with their
    output shapes, and the input shapes (not the weights: a plan stays valid while the model trains)."""
    data = {
        "parameters": [[n, list(m.shape), str(m.dtype)] for n, m in graph.parameters.items()],
        "layers": [[layer.name, layer.op, [list(s) for s in layer.output_shapes]] for layer in graph.layers()],
        "inputs": {k: list(v.shape) for k, v in graph.inputs.items()},
    }
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


def layer_summary(graph: LayerGraph, result: PlanResult) -> list[dict[str, Any]]:
    """Per weight layer: groups trained of total, trained elements."""
    rows = []
    seen: set[str] = set()
    for layer in graph.group_owners():
        if layer.weight in seen:
            continue
        seen.add(layer.weight)
        channels = result.update.channels(layer.weight)
        groups_total = layer.neuron_groups
        size = graph.group_size
        if channels is None:
            selected = groups_total
        else:
            selected = len({c // size for c in channels})
        trained = sum(result.estimate.trained_parameters.get(p, 0) for p in layer.parameters)
        rows.append({"layer": layer.name, "op": layer.op, "weight": layer.weight, "groups_total": groups_total,
                     "groups_selected": selected, "trained_elements": trained, "flops": layer.flops})
    return rows


def plan_document(result: PlanResult, graph: LayerGraph, target: Target, *, model: str,
                  optimizer: str, reorder: bool, inplace: bool = True, fuse_update: bool = True) -> dict[str, Any]:
    """The plan file's content (a JSON-ready dict, deterministic). ``reorder``, ``inplace`` and
    ``fuse_update`` are the runtime options it was priced with; ``inplace`` and ``fuse_update`` are
    written after ``reorder`` only when off (a plan without them was priced with them on, so plans of
    earlier releases keep their meaning)."""
    est = result.estimate
    solver = None
    if result.solver is not None:
        solver = {"name": result.solver["name"], "status": result.solver["status"],
                  "objective": _round(result.solver["objective"]), "gap": _round(result.solver["gap"]),
                  "variables": result.solver.get("variables")}
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "budgetplan_version": budgetplan.__version__,
        "model": {"source": model, "fingerprint": model_fingerprint(graph),
                  "input_shapes": {k: list(v.shape) for k, v in graph.inputs.items()},
                  "group_size": graph.group_size},
        "target": {"name": target.name, "family": target.family},
        "budget_bytes": result.budget_bytes,
        "strategy": result.strategy,
        "scores": result.scores,
        "optimizer": optimizer,
        "reorder": reorder,
        **({} if inplace else {"inplace": False}),
        **({} if fuse_update else {"fuse_update": False}),
        "fits": result.fits,
        "peak_bytes": est.peak_bytes,
        "peak_at": est.peak_at,
        "bound_peak_bytes": None if result.bound_peak_bytes is None else int(result.bound_peak_bytes),
        "memory": {k: getattr(est.memory, k) for k in ("activations", "weights", "gradients", "optimizer",
                                                        "other")},
        "memory_at_peak": {k: getattr(est.memory_at_peak, k) for k in ("activations", "weights", "gradients",
                                                                        "optimizer", "other")},
        "flops": dict(est.flops),
        "latency_s": _round(est.latency_s),
        "objective": _round(result.objective),
        "groups": {"selected": result.groups_selected, "total": result.groups_total},
        "update": [{"parameter": name, "channels": None if chans is None else list(chans)}
                   for name, chans in result.update.entries.items()],
        "layers": layer_summary(graph, result),
        "solver": solver,
        "timeline": [{"phase": p.phase, "label": p.label, "live_bytes": p.live_bytes,
                      "activations": p.breakdown.activations, "weights": p.breakdown.weights,
                      "gradients": p.breakdown.gradients, "optimizer": p.breakdown.optimizer,
                      "other": p.breakdown.other} for p in est.timeline],
        "notes": list(result.notes) + list(est.notes),
    }


def dumps_plan(document: dict[str, Any]) -> str:
    """Serialise a plan document (stable key order, trailing newline)."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def read_plan(path: str | Path) -> dict[str, Any]:
    """Load a plan file and validate it against the plan schema (``budgetplan schema plan``).

    One-line :class:`InputError` for anything that is not a version-1 plan: a missing or unreadable
    file, a binary or oversized one, malformed or too deeply nested JSON, another format or version, a
    field of the wrong type (``"reorder": "false"``), a value out of range.
    """
    document = read_document(path, "plan file")
    validate_plan(document, str(path))
    _check_target_family(document, path)
    return document


def _check_target_family(document: dict[str, Any], path: str | Path) -> None:
    """Refuse a plan whose target names a built-in target of another family (an edited plan): what the
    plan was priced for, and so how it is re-priced and exported, would be ambiguous."""
    from budgetplan.targets import builtin_target_names, load_target

    target = document.get("target") or {}
    name, family = str(target.get("name", "")), target.get("family")
    if name.strip().lower() not in {n.lower() for n in builtin_target_names()}:
        return  # a target file of the user's: nothing to compare with
    try:
        device = load_target(name.strip())
    except InputError:
        return
    if device.family != family:
        raise InputError(f"invalid plan file '{path}': its target {name!r} has family {family!r}, but that target's "
                         f"family is {device.family!r} (the plan was edited or made for another target)")


def check_fingerprint(document: dict[str, Any], graph: LayerGraph, path: str | Path) -> None:
    """Refuse a plan made for another architecture."""
    expected = document.get("model", {}).get("fingerprint")
    actual = model_fingerprint(graph)
    if expected != actual:
        raise InputError(f"{path} was made for another model (fingerprint {str(expected)[:19]}…, this model "
                         f"{actual[:19]}…); re-plan with budgetplan analyze")


def _made_for_another_model(path: str | Path, why: str) -> InputError:
    return InputError(f"{path} was made for another model ({why}); re-plan with budgetplan analyze")


def check_plan_input_shape(document: dict[str, Any], path: str | Path, input_shape: Sequence[int] | None) -> None:
    """Refuse an ``--input-shape`` other than the one the plan was priced for (part of its fingerprint)."""
    shapes = list(document["model"]["input_shapes"].values())
    if input_shape is not None and len(shapes) == 1 and tuple(shapes[0]) != tuple(input_shape):
        fmt = "x".join
        raise _made_for_another_model(path, f"input shape {fmt(map(str, input_shape))}, the plan's "
                                            f"{fmt(map(str, shapes[0]))}")


def check_plan_parameters(document: dict[str, Any], module: nn.Module, path: str | Path) -> None:
    """Refuse a plan whose layers or trained parameters the model does not have, or has with another number
    of output channels. Needs only the built module, so it runs before the model does (the full
    :func:`check_fingerprint` needs the traced graph)."""
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    group_size = document["model"]["group_size"]
    for row in document["layers"]:
        weight = row["weight"]
        if weight not in shapes:
            raise _made_for_another_model(path, f"its layer weight {weight!r} is not in this model")
        shape = shapes[weight]
        groups = -(-shape[0] // group_size) if shape else 0
        if groups != row["groups_total"]:
            raise _made_for_another_model(path, f"{weight!r} has {groups} neuron groups here, "
                                                f"{row['groups_total']} in the plan")
    for entry in document["update"]:
        name, channels = entry["parameter"], entry["channels"]
        if name not in shapes:
            raise _made_for_another_model(path, f"it trains {name!r}, which this model does not have")
        if channels and (not shapes[name] or max(channels) >= shapes[name][0]):
            size = shapes[name][0] if shapes[name] else 0
            raise _made_for_another_model(path, f"it trains channel {max(channels)} of {name!r}, which has "
                                                f"{size} here")


@contextlib.contextmanager
def expecting_plan_model(document: dict[str, Any] | None, path: str | Path,
                         input_shape: Sequence[int] | None = None) -> Iterator[None]:
    """Around loading and tracing a model for a plan: refuse a plan made for another model *before* the
    model runs (an input shape other than the plan's; layers or parameters the model does not have),
    so that the message is "made for another model" and not whatever the model's forward says on an
    input it was not made for. A no-op for ``document=None``."""
    if document is None:
        yield
        return
    check_plan_input_shape(document, path, input_shape)
    with checking_module(lambda module: check_plan_parameters(document, module, path)):
        yield
