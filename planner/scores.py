"""Data-driven neuron-group scores for the planner's objective.

``grad_norm_scores`` follows TraDy (the seed's authors, 2025): a group's score is the L2 norm of the loss
gradient over its rows, accumulated over a few batches, divided by the group's parameter count — the
gradient norm per unit of what training it costs. The result plugs into
``plan_update(..., scores=...)`` or, saved as JSON, into ``budgetplan analyze --objective FILE``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from budgetplan.errors import InputError
from budgetplan.graph import LayerGraph
from budgetplan.linear_cost import parameter_groups


def grad_norm_scores(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    graph: LayerGraph,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, list[float] | float]:
    """Per parameter: one score per neuron group (grouped weights and biases) or one score (whole
    tensors). ``batches`` yields ``(inputs, targets)``; ``loss_fn`` defaults to cross-entropy. The
    caller's model is not changed (a copy is used)."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
    count = 0
    for inputs, targets in batches:
        loss = loss_fn(net(inputs), targets)
        loss.backward()
        count += 1
    if count == 0:
        raise InputError("grad-norm scores need at least one batch")
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)) for name, p in net.named_parameters()}
    scores: dict[str, list[float] | float] = {}
    for name, groups in parameter_groups(graph).items():
        if name not in grads:
            continue
        g = grads[name].detach().float()
        if len(groups) == 1 and groups[0][2]:  # whole tensor
            scores[name] = float(g.norm()) / max(g.numel(), 1)
            continue
        per_group = []
        for start, stop, _ in groups:
            rows = g[start:stop]
            per_group.append(float(rows.norm()) / max(rows.numel(), 1))
        scores[name] = per_group
    for value in scores.values():
        values = value if isinstance(value, list) else [value]
        if any(math.isnan(v) for v in values):
            raise InputError("the gradients contain NaN; check the loss and the data")
    return scores
