"""Saved-activation oracle: what autograd really keeps for backward, seen through ``saved_tensors_hooks``.

Counts the bytes of the distinct storages the forward pass saves, the model's parameters and buffers and
the input excluded (they exist without training). Not budgetplan code.
"""

from __future__ import annotations

import torch
from torch import nn


def saved_storage_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Run ``model(x)`` (as its parameters' ``requires_grad`` flags are) and return the bytes of the
    distinct storages autograd saves, parameters, buffers and the input excluded, and the output."""
    excluded = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers(), x]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in excluded:
            seen.setdefault(s._cdata, s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return sum(seen.values()), out
