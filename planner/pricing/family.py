"""One switch from a target's cost-model family to its pricing: the exact model and its linear bound.

Every caller that prices an update set (the CLI's ``estimate``, the planner's re-pricing, a compiled
module's ``estimate()``) or builds the ILP's bound goes through :func:`for_target`, so a new family is one
:class:`CostFamily` subclass registered here, beside its ``exact`` and ``bound`` modules:

* ``mcu`` -> :mod:`budgetplan.pricing.mcu` (tiny-training's int8 runtime: exact model + bound);
* ``host`` and ``embedded-linux`` -> :mod:`budgetplan.pricing.host` (PyTorch eager fp32).

Units: bytes, FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from budgetplan.model.graph import LayerGraph
from budgetplan.model.update_set import UpdateSet
from budgetplan.pricing.host.exact import TrainingEstimate
from budgetplan.pricing.linear import LinearCostModel
from budgetplan.targets import Target

__all__ = ["CostFamily", "HostFamily", "McuFamily", "PricingOptions", "for_target"]


@dataclass(frozen=True)
class PricingOptions:
    """How a training step is run, beside what is trained.

    ``optimizer``: ``sgd``, ``sgd-momentum`` or ``adam`` (optimizer state bytes). The runtime's tricks
    (``mcu`` only; the host runs PyTorch's eager order): ``reorder`` — each weight updated right after
    its gradient; ``inplace`` — depthwise convs in place (forward, and stride-1 backward);
    ``fuse_update`` — the weight-gradient op writes the update into the weight, no gradient buffer (needs
    ``reorder``). See docs/cost-model.md."""

    optimizer: str = "sgd"
    reorder: bool = True
    inplace: bool = True
    fuse_update: bool = True

    def runtime(self) -> dict[str, bool]:
        """The runtime options as recorded in a plan file."""
        return {"reorder": self.reorder, "inplace": self.inplace, "fuse_update": self.fuse_update}


class CostFamily:
    """A family's pricing: ``prepare`` (per-graph facts reused across update sets, or None), ``estimate``
    (the exact model for one update set) and ``bound`` (its linear upper bound over update decisions)."""

    name = ""

    def prepare(self, graph: LayerGraph, target: Target) -> Any:
        return None

    def estimate(self, graph: LayerGraph, update: UpdateSet, target: Target, options: PricingOptions, *,
                 model: str = "", budget_bytes: int | None = None, prepared: Any = None) -> TrainingEstimate:
        raise NotImplementedError

    def bound(self, graph: LayerGraph, target: Target, options: PricingOptions, *,
              prepared: Any = None) -> LinearCostModel:
        raise NotImplementedError


class HostFamily(CostFamily):
    """PyTorch eager, fp32: what autograd saves (``host``, ``embedded-linux``)."""

    name = "host"

    def estimate(self, graph: LayerGraph, update: UpdateSet, target: Target, options: PricingOptions, *,
                 model: str = "", budget_bytes: int | None = None, prepared: Any = None) -> TrainingEstimate:
        from budgetplan.pricing.host.exact import estimate_host

        return estimate_host(graph, update, target, optimizer=options.optimizer, model=model,
                             budget_bytes=budget_bytes)

    def bound(self, graph: LayerGraph, target: Target, options: PricingOptions, *,
              prepared: Any = None) -> LinearCostModel:
        from budgetplan.pricing.host.bound import linear_cost_host

        return linear_cost_host(graph, target, optimizer=options.optimizer)


class McuFamily(CostFamily):
    """A microcontroller training runtime after tiny-training's conventions (int8 forward)."""

    name = "mcu"

    def prepare(self, graph: LayerGraph, target: Target) -> Any:
        from budgetplan.pricing.mcu.exact import mcu_layout

        return mcu_layout(graph, target)

    def estimate(self, graph: LayerGraph, update: UpdateSet, target: Target, options: PricingOptions, *,
                 model: str = "", budget_bytes: int | None = None, prepared: Any = None) -> TrainingEstimate:
        from budgetplan.pricing.mcu.exact import estimate_mcu

        return estimate_mcu(graph, update, target, optimizer=options.optimizer, reorder=options.reorder,
                            inplace=options.inplace, fuse_update=options.fuse_update, model=model,
                            budget_bytes=budget_bytes, layout=prepared)

    def bound(self, graph: LayerGraph, target: Target, options: PricingOptions, *,
              prepared: Any = None) -> LinearCostModel:
        from budgetplan.pricing.mcu.bound import linear_cost_mcu

        return linear_cost_mcu(graph, target, optimizer=options.optimizer, reorder=options.reorder,
                               inplace=options.inplace, fuse_update=options.fuse_update, layout=prepared)



_FAMILIES: dict[str, CostFamily] = {"host": HostFamily(), "embedded-linux": HostFamily(), "mcu": McuFamily()}


def for_target(target: Target) -> CostFamily:
    """The pricing of ``target``'s cost-model family (the one family switch of the package)."""
    return _FAMILIES[target.family]
