"""The planner: ILP answers equal brute force on small instances, plans fit when re-priced exactly,
the ILP is never worse than greedy, fixed strategies and bad inputs."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

from budgetplan.model import zoo
from budgetplan.errors import InputError
from budgetplan.pricing.mcu.exact import estimate_mcu
from budgetplan.model.graph import build_layer_graph
from budgetplan.pricing.mcu.bound import linear_cost_mcu
from budgetplan.selection.planner import group_scores, plan_update, update_from_values
from budgetplan.targets import load_target
from budgetplan.model.tracing import trace_model

M7 = load_target("cortex-m7")


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = Small()
    x = torch.randn(1, 3, 8, 8)
    graph = build_layer_graph(trace_model(model, (x,)), (x,), group_size=2)
    return model, graph


def _brute_force(model_lc, scores, budget):
    """Best objective over every subset of group variables whose bound fits."""
    groups = [g.var for g in model_lc.groups]
    best = 0.0
    for bits in itertools.product((0, 1), repeat=len(groups)):
        values = {g: b for g, b in zip(groups, bits)}
        chosen = {g for g, b in values.items() if b}
        # derived variables at their smallest: propagate implications
        on = set(chosen)
        changed = True
        while changed:
            changed = False
            for imp in model_lc.implications:
                if imp.lhs in on and imp.rhs not in on:
                    on.add(imp.rhs)
                    changed = True
        peak = max(v for _, v in model_lc.evaluate({v: 1 for v in on}))
        if peak <= budget:
            best = max(best, sum(scores[g] for g in chosen))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_ilp_equals_brute_force(small, seed: int) -> None:
    model, graph = small
    lc = linear_cost_mcu(graph, M7)
    assert 8 <= len(lc.groups) <= 14
    rng = random.Random(seed)
    inference = max(v for _, v in lc.evaluate({}))
    budget = int(inference + rng.uniform(0.05, 1.0) * (max(v for _, v in lc.evaluate(
        {v: 1 for v in lc.binaries})) - inference))
    scores = {g.parameter: [rng.uniform(0, 10) for _ in range(len([h for h in lc.groups if h.parameter ==
                                                                     g.parameter]))] for g in lc.groups}
    per_var = group_scores(lc, scores)
    expected = _brute_force(lc, per_var, budget)
    for solver in ("cbc", "highs"):
        result = plan_update(graph, M7, budget, strategy="ilp", scores=scores, solver=solver)
        assert result.solver["status"] == "optimal"
        assert result.objective == pytest.approx(expected, rel=1e-6, abs=1e-6)
        assert result.fits


def test_plans_fit_and_ilp_beats_greedy_on_a_real_model() -> None:
    model, _ = zoo.build("mcunet", num_classes=10)  # a 10-class head: traced here, not the fixture's
    x = torch.randn(1, 3, 64, 64)
    graph = build_layer_graph(trace_model(model, (x,)), (x,), group_size=4)
    for budget in (96 * 1024, 160 * 1024, 256 * 1024):
        ilp = plan_update(graph, M7, budget, strategy="ilp")
        greedy = plan_update(graph, M7, budget, strategy="greedy")
        rand = plan_update(graph, M7, budget, strategy="random", seed=1)
        for plan in (ilp, greedy, rand):
            assert plan.estimate.peak_bytes <= budget  # the exact re-pricing of the chosen set fits
            assert plan.bound_peak_bytes >= plan.estimate.peak_bytes  # the linear model is an upper bound
            # the objective ("params" scores) is what the update set trains, counted on the model itself
            assert plan.objective == plan.update.num_trained_elements(model)
        assert ilp.solver["status"] == "optimal"
        assert ilp.objective >= greedy.objective >= 0
        assert ilp.objective >= rand.objective


def test_bound_is_an_upper_bound_of_the_exact_model(small) -> None:
    model, graph = small
    lc = linear_cost_mcu(graph, M7)
    rng = random.Random(3)
    for _ in range(40):
        values = {g.var: rng.randint(0, 1) for g in lc.groups}
        update = update_from_values(lc, values, graph)
        bound = max(v for _, v in lc.evaluate(lc.assignment(update, graph)))
        assert bound >= estimate_mcu(graph, update, M7).peak_bytes


def test_fixed_strategies_and_errors(small) -> None:
    model, graph = small
    full = plan_update(graph, M7, 10**9, strategy="full")
    assert set(full.update.parameter_names()) == {n for n, _ in model.named_parameters()}
    bias = plan_update(graph, M7, 10**9, strategy="bias-only")
    assert set(bias.update.parameter_names()) == {"c1.bias", "c2.bias", "fc.bias"}
    last = plan_update(graph, M7, 10**9, strategy="last-k", last_k=1)
    assert set(last.update.parameter_names()) == {"fc.weight", "fc.bias"}
    tiny = plan_update(graph, M7, 64, strategy="full")
    assert not tiny.fits
    with pytest.raises(InputError):
        plan_update(graph, M7, 1000, strategy="nope")
    with pytest.raises(InputError):
        plan_update(graph, M7, 1000, scores="velocityy")
    with pytest.raises(InputError):
        plan_update(graph, M7, 0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_host_plans_fit_when_measured_by_pytorch(optimizer: str) -> None:
    """On the host target the plan's peak is checked against a real training step (the oracle)."""
    from budgetplan.runtime.measure import measure_step

    model, _ = zoo.build("tinycnn")
    x = torch.randn(1, 3, 32, 32)
    traced = trace_model(model, (x,))  # traced here: measure_step below runs the traced program
    # one group per tensor: eager PyTorch trains whole tensors, so the plan can be measured as it is
    graph = build_layer_graph(traced, (x,), group_size=1024)
    host = load_target("host")
    full = plan_update(graph, host, 10**9, strategy="full", optimizer=optimizer).estimate.peak_bytes
    frozen = plan_update(graph, host, 10**9, strategy="bias-only", optimizer=optimizer).estimate.peak_bytes
    budget = (full + frozen) // 2
    plan = plan_update(graph, host, budget, strategy="ilp", optimizer=optimizer)
    assert plan.solver["status"] == "optimal" and plan.fits and not plan.update.is_empty
    assert plan.bound_peak_bytes >= plan.estimate.peak_bytes
    assert not plan.update.has_channel_subsets()
    measured = measure_step(traced.graph_module, (x,), plan.update, optimizer=optimizer)
    assert measured.peak_bytes <= budget
    assert abs(measured.peak_bytes - plan.estimate.peak_bytes) <= 0.05 * measured.peak_bytes
