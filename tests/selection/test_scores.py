"""grad-norm scores (TraDy) against gradients computed directly with autograd, and their use in the ILP."""

from __future__ import annotations

import torch
from torch import nn

from budgetplan.model import zoo
from budgetplan.selection.planner import plan_update
from budgetplan.selection.scores import grad_norm_scores
from budgetplan.targets import load_target


def test_grad_norm_scores_match_autograd_and_drive_the_plan(traced) -> None:
    t = traced("tinycnn", group_size=4)
    model, graph = t.model, t.graph
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
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

    # 64 KiB: TinyEngine's int8 forward of tinycnn alone takes 57 KiB (its 3x3 convs' 16-bit weight buffer)
    plan = plan_update(graph, load_target("cortex-m7"), 64 * 1024, strategy="ilp", scores=scores)
    assert plan.fits and plan.objective > 0


def test_scores_files_round_trip_and_refuse_bad_input(tmp_path) -> None:
    import os
    import pickle

    import pytest

    from budgetplan.errors import InputError
    from budgetplan.selection.scores import load_scores, save_scores

    scores = {"features.0.weight": [0.5, 1.25, 3.0], "features.1.weight": 2.0}
    for suffix in (".json", ".pt"):
        path = save_scores(scores, tmp_path / f"s{suffix}")
        assert load_scores(path) == scores
        with pytest.raises(InputError, match="exists"):
            save_scores(scores, path)
    # a dict of tensors written by plain torch.save (1-D per group, 0-d whole)
    torch.save({"a.weight": torch.tensor([1.0, 2.0]), "a.bias": torch.tensor(3.0)}, tmp_path / "t.pth")
    assert load_scores(tmp_path / "t.pth") == {"a.weight": [1.0, 2.0], "a.bias": 3.0}

    # a pickle that would run code is refused, and the code does not run
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"a.weight": Evil()}, fh)
    with pytest.raises(InputError, match="refused to run code"):
        load_scores(tmp_path / "evil.pt")
    assert not marker.exists()

    bad = {"list.json": "[1, 2]", "nan.json": '{"a.weight": [1, NaN]}', "text.json": '{"a.weight": "high"}',
           "empty.json": "{}", "broken.json": "{"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError) as info:
            load_scores(tmp_path / name)
        assert "\n" not in str(info.value)
    torch.save({"a.weight": torch.ones(2, 2)}, tmp_path / "matrix.pt")
    with pytest.raises(InputError, match="1-D"):
        load_scores(tmp_path / "matrix.pt")
    with pytest.raises(InputError, match="not found"):
        load_scores(tmp_path / "missing.json")
