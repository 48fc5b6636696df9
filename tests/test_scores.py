"""grad-norm scores (TraDy) against gradients computed directly with autograd, and their use in the ILP."""

from __future__ import annotations

import torch
from torch import nn

from budgetplan import zoo
from budgetplan.graph import build_layer_graph
from budgetplan.planning import plan_update
from budgetplan.scores import grad_norm_scores
from budgetplan.targets import load_target
from budgetplan.tracing import trace_model


def test_grad_norm_scores_match_autograd_and_drive_the_plan() -> None:
    model, entry = zoo.build("tinycnn")
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    x = torch.randn(entry.input_shape)
    graph = build_layer_graph(trace_model(model, (x,)), (x,), group_size=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = grad_norm_scores(model, batches, graph)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # caller's model untouched

    # the oracle: plain autograd on a fresh copy, summed over the same batches
    reference = zoo.build("tinycnn")[0]
    reference.load_state_dict(model.state_dict())
    for inputs, targets in batches:
        nn.functional.cross_entropy(reference(inputs), targets).backward()
    grad = reference.features[4].weight.grad  # a conv weight: 32 output channels, groups of 4
    expected = [float(grad[k:k + 4].norm()) / grad[k:k + 4].numel() for k in range(0, 32, 4)]
    assert len(scores["features.4.weight"]) == 8
    for got, want in zip(scores["features.4.weight"], expected):
        assert abs(got - want) <= 1e-6 * max(1.0, want)
    bn = reference.features[1].weight.grad
    assert abs(scores["features.1.weight"] - float(bn.norm()) / bn.numel()) < 1e-9

    plan = plan_update(graph, load_target("cortex-m7"), 48 * 1024, strategy="ilp", scores=scores)
    assert plan.fits and plan.objective > 0
