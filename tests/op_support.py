"""Helpers the per-op rule tests share (saved tensors, backward workspace, backward FLOPs): random
tensors, what the graph recorder stores for one call, and an op stand-in that counts its runs."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from budgetplan.cost_models.meta import TensorMeta, to_meta

Metas = tuple[TensorMeta, ...]


def R(*shape: int) -> torch.Tensor:
    """Standard-normal values."""
    return torch.randn(*shape)


def P(*shape: int) -> torch.Tensor:
    """Positive values (for log, sqrt, divisors, variances)."""
    return torch.rand(shape) + 0.5  # a tuple, so P() is a 0-d tensor


def fresh(tree: Any) -> Any:
    """``tree`` with every tensor cloned."""
    flat, spec = tree_flatten(tree)
    return tree_unflatten([x.clone() if isinstance(x, torch.Tensor) else x for x in flat], spec)


def metas(op: Any, args: tuple, kwargs: dict) -> tuple[Any, Metas, Metas]:
    """What the recorder stores: args as TensorMeta, flat inputs, flat outputs."""
    flat = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
    with torch.no_grad():
        out = op(*fresh(args), **fresh(kwargs))
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    return to_meta(args), tuple(TensorMeta.of(t) for t in flat), tuple(TensorMeta.of(t) for t in outs)


class CountingOp:
    """Stands in for an OpOverload and counts how often a probe runs it."""

    def __init__(self, op: Any) -> None:
        self.op, self.calls = op, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.op(*args, **kwargs)

    def __str__(self) -> str:
        return f"counting:{self.op}:{id(self)}"
