"""The backward pass an update set implies (budgetplan.pricing.gradient_flow), against autograd itself.

``analyze_backward`` decides without running autograd which tensors require grad, which calls run
backward, what they save and their backward FLOPs. Each of those is compared here with one real
backward of the same model: the storages ``saved_tensors_hooks`` sees (parameters, buffers and the input
excluded; tests/saved_oracle.py), the parameters that receive a ``.grad`` and its size, and
``FlopCounterMode``'s backward FLOPs (tests/flop_oracle.py). Update sets: everything, biases only, one
middle weight, the classifier, and nothing.
"""

from __future__ import annotations

import pytest
from flop_oracle import backward_flops
from saved_oracle import saved_storage_bytes
from torch import nn

from budgetplan.model.update_set import UpdateSet, from_patterns
from budgetplan.pricing.gradient_flow import analyze_backward

MODELS = [("tinycnn", None), ("mobilenetv2-w0.35", (1, 3, 64, 64)), ("vit-tiny", None), ("tv_densenet", None)]


def _update_sets(model: nn.Module) -> dict[str, UpdateSet]:
    weights = [n for n, p in model.named_parameters() if p.dim() >= 2]
    sets = {"full": UpdateSet.full(model), "none": UpdateSet.none(),
            "middle-weight": from_patterns(model, [weights[len(weights) // 2]]),
            "last-weight": from_patterns(model, [weights[-1]])}
    if any(n.endswith(".bias") for n, _ in model.named_parameters()):
        sets["bias-only"] = from_patterns(model, ["*.bias"])
    return sets


def _prepare(model: nn.Module, update: UpdateSet) -> nn.Module:
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(update.is_updated(name))
    return model


@pytest.mark.parametrize("name, shape", MODELS, ids=[m for m, _ in MODELS])
def test_saved_bytes_grads_and_flops_match_autograd(traced, name: str, shape) -> None:
    t = traced(name, shape)
    for label, update in _update_sets(t.model).items():
        analysis = analyze_backward(t.graph, update)
        model = _prepare(traced(name, shape).model, update)
        saved, out = saved_storage_bytes(model, t.x)
        assert analysis.saved_activation_bytes() == saved, f"{name}/{label}: saved bytes"
        if not update.is_empty:
            out.sum().backward()
        with_grad = {n: p.grad.numel() for n, p in model.named_parameters() if p.grad is not None}
        expected = {n: e for n, e in analysis.trained_elements.items() if e}
        assert expected == with_grad, f"{name}/{label}: parameters that receive a gradient"
        if update.is_empty:
            assert analysis.backward == [] and analysis.backward_flops == 0
            continue
        fresh = _prepare(traced(name, shape).model, update)
        assert analysis.backward_flops == pytest.approx(backward_flops(lambda: fresh(t.x).sum()), rel=1e-9), \
            f"{name}/{label}: backward FLOPs"


def test_a_row_subset_trains_its_rows_only(traced) -> None:
    t = traced("tinycnn")
    weight = next(n for n, p in t.model.named_parameters() if p.dim() == 4)
    rows = (0, 2, 3)
    analysis = analyze_backward(t.graph, UpdateSet({weight: rows}))
    shape = dict(t.model.named_parameters())[weight].shape
    assert analysis.trained_rows == {weight: len(rows)}
    assert analysis.trained_elements[weight] == len(rows) * shape[1:].numel()
    whole = analyze_backward(t.graph, UpdateSet({weight: None}))
    # the activations the backward keeps do not depend on which rows; the weight-gradient FLOPs scale
    assert analysis.saved_activation_bytes() == whole.saved_activation_bytes()
    param_flops = sum(cb.flops_to_parameters for cb in analysis.backward)
    whole_flops = sum(cb.flops_to_parameters for cb in whole.backward)
    assert param_flops == pytest.approx(whole_flops * len(rows) / shape[0], rel=0.01)
