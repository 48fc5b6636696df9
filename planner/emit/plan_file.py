"""The plan file: a versioned JSON document of what to train and what it costs (docs/plan-format.md).

The same inputs give a byte-identical file: keys are written in a fixed order, floats are rounded, and
nothing that varies between runs (solver wall time, dates, paths of temporary files) is included.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import budgetplan
from budgetplan.errors import InputError
from budgetplan.model.graph import LayerGraph
from budgetplan.targets import Target

if TYPE_CHECKING:  # annotations only: reading a plan file needs neither the planner nor PuLP
    from budgetplan.selection.planner import PlanResult

PLAN_FORMAT = "budgetplan-plan"
PLAN_VERSION = 1


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
                  optimizer: str, reorder: bool) -> dict[str, Any]:
    """The plan file's content (a JSON-ready dict, deterministic)."""
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
    """Load and check a plan file; one-line :class:`InputError` for anything that is not one."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"plan file not found: {path}")
    try:
        document = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a JSON plan file: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != PLAN_FORMAT:
        raise InputError(f"{path} is not a budgetplan plan file (no \"format\": \"{PLAN_FORMAT}\")")
    if document.get("version") != PLAN_VERSION:
        raise InputError(f"{path} is plan format version {document.get('version')}; this budgetplan reads "
                         f"version {PLAN_VERSION}")
    for key in ("model", "update", "target", "budget_bytes"):
        if key not in document:
            raise InputError(f"{path} has no '{key}'")
    return document


def check_fingerprint(document: dict[str, Any], graph: LayerGraph, path: str | Path) -> None:
    """Refuse a plan made for another architecture."""
    expected = document.get("model", {}).get("fingerprint")
    actual = model_fingerprint(graph)
    if expected != actual:
        raise InputError(f"{path} was made for another model (fingerprint {str(expected)[:19]}…, this model "
                         f"{actual[:19]}…); re-plan with budgetplan analyze")
