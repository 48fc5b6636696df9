"""Per-epoch re-selection with a real training loop: every epoch's plan re-priced fits the budget (host and
cortex-m7), frozen groups stay bit-identical within an epoch, runs are deterministic, a plan that does not
fit is never installed, bad input is a clear error; the Planner's reuse and warm start."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from budgetplan.runtime.compiled import CompiledModule
from budgetplan.errors import InputError
from budgetplan.pipeline import estimate_update
from budgetplan.selection.planner import Planner, plan_update
from budgetplan.runtime.reselect import EpochLog, ReselectionError, Reselector
from budgetplan.selection.planner import planner_for
from budgetplan.model.update_set import UpdateSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integrations"))
from job_common import data, make_model  # noqa: E402 - the small model of the multi-process jobs

EPOCHS = 4


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """The multi-process jobs' training inputs and labels (their validation inputs are not used here)."""
    x, y, _ = data()
    return x, y


# budget = inference peak + this share of (full fine-tuning − inference): partial layers on both targets
SHARE = {"cortex-m7": 0.35, "host": 0.4}


@pytest.fixture(scope="module", params=["cortex-m7", "host"])
def planner(request) -> Planner:
    target = request.param
    x, _ = _data()
    model = make_model()
    probe = planner_for(model, x[:1], target=target, ram=1 << 30)
    full = probe.price(UpdateSet.full(model)).peak_bytes
    none = probe.price(UpdateSet.none()).peak_bytes
    return planner_for(model, x[:1], target=target, ram=int(none + SHARE[target] * (full - none)))


def _train_epoch(model: CompiledModule, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.2)
    model.train()
    for i in range(0, len(x), 16):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16]).backward()
        opt.step()


def _snapshot(model: CompiledModule) -> dict[str, torch.Tensor]:
    model.sync()
    return {n: p.detach().clone() for n, p in model.module.named_parameters()}


def _run(planner: Planner, **options) -> tuple[Reselector, CompiledModule, list[UpdateSet]]:
    x, y = _data()
    sel = Reselector(planner, (x[:10], y[:10]), **options)
    model = sel.compile(make_model())
    plans = [model.update]
    for _ in range(EPOCHS):
        _train_epoch(model, x, y)
        model = sel.step(model)
        plans.append(model.update)
    return sel, model, plans


def test_every_epoch_fits_frozen_rows_untouched_and_plans_change(planner: Planner) -> None:
    x, y = _data()
    sel = Reselector(planner, (x[:10], y[:10]), scores="velocity", strategy="ilp")
    model = sel.compile(make_model())
    assert isinstance(model, CompiledModule)
    changed = 0
    subsets = 0
    trained_something = False
    for epoch in range(1, EPOCHS + 1):
        update = model.update
        before = _snapshot(model)
        _train_epoch(model, x, y)
        after = _snapshot(model)
        # frozen groups are bit-identical within the epoch; trained rows moved
        for name, old in before.items():
            chans = update.channels(name)
            new = after[name]
            if chans is None:
                trained_something |= not torch.equal(old, new)
                continue
            frozen = [c for c in range(old.shape[0]) if c not in set(chans)]
            assert torch.equal(old[frozen], new[frozen]), (epoch, name)
            if chans:
                trained_something |= not torch.equal(old[list(chans)], new[list(chans)])
        model = sel.step(model)
        log = sel.log[-1]
        assert isinstance(log, EpochLog) and log.epoch == epoch
        # the plan in use is the one installed, and re-priced independently it fits the budget
        assert model.update == sel.plan.update
        estimate = estimate_update(planner.graph, model.update, planner.target)
        assert estimate.peak_bytes == log.predicted_peak_bytes <= planner.budget_bytes == log.budget_bytes
        assert log.fits and not log.kept_previous
        assert log.groups_selected == sel._selected(model.update)
        changed += log.groups_changed
        subsets += model.update.has_channel_subsets()
        if epoch == 1:
            assert log.source == "warm-up" and log.groups_changed == 0  # no velocity after one epoch
        else:
            assert log.source == "velocity" and log.solver_status in ("optimal", "feasible")
            assert log.solve_seconds > 0 and log.score_seconds > 0
    assert trained_something
    assert changed > 0, "velocity never changed the plan"
    assert subsets > 0, "the budget should train channel subsets"


def test_greedy_grad_norm_and_random_fit(planner: Planner) -> None:
    for options in ({"strategy": "greedy"}, {"scores": "grad-norm"}, {"strategy": "random", "initial": "random"}):
        sel, model, plans = _run(planner, **options)
        for log, plan in zip(sel.log, plans):
            assert log.fits and log.predicted_peak_bytes <= planner.budget_bytes, options
            assert estimate_update(planner.graph, plan, planner.target).peak_bytes <= planner.budget_bytes
        if options.get("scores") == "grad-norm":
            assert all(log.source == "grad-norm" for log in sel.log[1:])  # no warm-up: scores from epoch 1
        if options.get("strategy") == "random":
            assert len(set(plans[1:])) > 1  # re-drawn each epoch


def test_deterministic_with_a_seed(planner: Planner) -> None:
    runs = [_run(planner, seed=3) for _ in range(2)]
    (sel_a, model_a, plans_a), (sel_b, model_b, plans_b) = runs
    assert plans_a == plans_b
    assert [(log.groups_changed, log.groups_selected, log.predicted_peak_bytes, log.objective)
            for log in sel_a.log] == [(log.groups_changed, log.groups_selected, log.predicted_peak_bytes,
                                       log.objective) for log in sel_b.log]
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    rand = [_run(planner, strategy="random", initial="random", seed=s)[2] for s in (5, 5, 6)]
    assert rand[0] == rand[1] and rand[0] != rand[2]


def test_a_plan_that_does_not_fit_is_never_installed(planner: Planner, monkeypatch) -> None:
    x, y = _data()
    sel = Reselector(planner, (x[:10], y[:10]), scores=lambda model: {"fc.weight": 1.0})
    model = sel.compile(make_model())
    strict = Reselector(planner, (x[:10], y[:10]), scores=lambda model: {"fc.weight": 1.0}, on_overflow="raise")
    before = model.update
    real_plan = planner.plan
    monkeypatch.setattr(planner, "plan", lambda **kw: real_plan(strategy="full"))  # a solver gone wrong
    model = sel.step(model)
    log = sel.log[-1]
    assert log.kept_previous and log.fits and "above the budget" in log.notes[0]
    assert model.update == before == sel.plan.update
    with pytest.raises(ReselectionError, match="above the budget"):
        strict.step(model)


def test_bad_input(planner: Planner) -> None:
    x, y = _data()
    with pytest.raises(InputError, match="empty"):
        Reselector(planner, x[:0])
    with pytest.raises(InputError, match="empty"):
        Reselector(planner, (x[:0], y[:0]))
    with pytest.raises(InputError, match="targets"):
        Reselector(planner, x[:10], scores="grad-norm")
    with pytest.raises(InputError, match="strategy"):
        Reselector(planner, x[:10], strategy="evolution")
    with pytest.raises(InputError, match="score source"):
        Reselector(planner, x[:10], scores="velocityy")
    sel = Reselector(planner, x[:10], scores=lambda model: {"nope.weight": [1.0, 2.0]})
    model = sel.compile(make_model())
    with pytest.raises(InputError, match="unknown parameter 'nope.weight'"):
        sel.step(model)

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.conv(t)

    with pytest.raises(InputError, match="not a parameter of this model"):  # not the planner's model
        Reselector(planner, x[:10], initial=UpdateSet.none()).compile(Other())


def test_planner_reuses_its_model_and_matches_plan_update(planner: Planner) -> None:
    linear = planner.linear_model
    scores = {"c3.weight": [float((i * 7) % 5) for i in range(64)], "fc.weight": 3.0}
    first = planner.plan(scores=scores)
    assert planner.linear_model is linear  # built once
    again = plan_update(planner.graph, planner.target, planner.budget_bytes, scores=scores)
    assert again.update == first.update and again.objective == pytest.approx(first.objective)
    # a warm start changes the solver's start, not the optimum
    shifted = {"c3.weight": [float((i * 3) % 5) for i in range(64)], "fc.weight": 3.0}
    cold = planner.plan(scores=shifted)
    warm = planner.plan(scores=shifted, warm_start=first.update)
    assert cold.solver["status"] == warm.solver["status"] == "optimal"
    assert warm.objective == pytest.approx(cold.objective)
    for strategy in ("greedy", "random"):  # the fills ignore a warm start
        assert planner.plan(strategy=strategy, scores=shifted).fits


def test_from_a_plan_result(planner: Planner) -> None:
    import budgetplan

    x, y = _data()
    plan = budgetplan.plan(make_model(), x[:1].clone(), target=planner.target, ram=planner.budget_bytes)
    assert plan.planner is not None and plan.planner.budget_bytes == planner.budget_bytes
    sel = Reselector(plan, (x[:10], y[:10]), strategy="greedy")
    assert sel.planner is plan.planner and sel.plan.update == plan.update  # the plan is the initial one
    model = sel.compile(make_model())
    assert model.update == plan.update
    for _ in range(3):
        _train_epoch(model, x, y)
        model = sel.step(model)
    assert sel.log[-1].source == "velocity" and all(log.fits for log in sel.log)
    orphan = type(plan)(**{**{f: getattr(plan, f) for f in plan.__dataclass_fields__}, "planner": None})
    with pytest.raises(InputError, match="pass a Planner"):
        Reselector(orphan, x[:10])


def test_initial_sparse_update_config(planner: Planner) -> None:
    from budgetplan.model.update_set import from_sparse_update_config

    x, _ = _data()
    model = make_model()
    config = {"n_bias_update": 2, "manual_weight_idx": [2], "weight_update_ratio": [0.25]}
    expected = from_sparse_update_config(config, model)
    assert expected.channels("c3.weight") == tuple(range(16))
    peak = planner.price(expected).peak_bytes
    if peak <= planner.budget_bytes:
        sel = Reselector(planner, x[:10], initial=config, model=model)
        assert sel.plan.update == expected and sel.log[0].predicted_peak_bytes == peak
    else:  # checked, not assumed: a static config above the budget is refused
        with pytest.raises(InputError, match=f"initial plan needs {peak} bytes"):
            Reselector(planner, x[:10], initial=config, model=model)
    with pytest.raises(InputError, match="needs the model"):
        Reselector(planner, x[:10], initial=config)


def test_gap_and_time_limit_for_the_re_solves_only(planner: Planner) -> None:
    x, y = _data()
    before = planner.gap, planner.time_limit
    sel = Reselector(planner, x[:10], scores=lambda model: {"c3.weight": [float(i % 7) for i in range(64)]},
                     gap=0.5, time_limit=30.0)
    model = sel.compile(make_model())
    _train_epoch(model, x, y)
    sel.step(model)
    assert sel.log[-1].solver_status in ("optimal", "feasible") and sel.log[-1].fits
    assert (planner.gap, planner.time_limit) == before  # the planner is left as it was


def test_top_level_names_resolve_lazily() -> None:
    import subprocess
    import sys

    code = ("import sys, budgetplan; assert 'torch' not in sys.modules; "
            "from budgetplan import Reselector, EpochLog, Planner, VelocityTracker, planner_for, compile, plan; "
            "import budgetplan.runtime.reselect as r, budgetplan.selection.velocity as v, budgetplan.selection.planner as p; "
            "assert Reselector is r.Reselector and EpochLog is r.EpochLog and planner_for is p.planner_for; "
            "assert VelocityTracker is v.VelocityTracker and Planner is p.Planner; "
            "assert sorted(budgetplan.__all__) == sorted(set(budgetplan.__all__))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_score_callable_gets_your_model_with_its_own_names(planner: Planner) -> None:
    """The callable as docs/reselection.md writes it: parameter names as in model.named_parameters()."""
    x, y = _data()
    model = make_model()
    names = [n for n, _ in model.named_parameters()]
    seen: list[nn.Module] = []

    def weight_norm(model: nn.Module) -> dict[str, list[float]]:  # docs/reselection.md, "Your own scores"
        seen.append(model)
        return {f"{name}.weight": m.weight.detach().flatten(1).norm(dim=1).tolist()
                for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

    sel = Reselector(planner, x[:10], scores=weight_norm)
    compiled = sel.compile(model)
    for _ in range(2):
        _train_epoch(compiled, x, y)
        compiled = sel.step(compiled)
    assert seen and all(m is model for m in seen)  # the user's module itself, not the compiled wrapper
    assert [n for n, _ in seen[0].named_parameters()] == names
    assert [log.source for log in sel.log[1:]] == ["user", "user"] and all(log.fits for log in sel.log)
    assert sel.log[-1].solver_status in ("optimal", "feasible")
    # the scores decided: the objective is their sum over the selected groups (raw units)
    scores = weight_norm(model)
    chosen = sum(v for name, values in scores.items() for i, v in enumerate(values)
                 if sel.plan.update.channels(name) is None and sel.plan.update.is_updated(name)
                 or i in (sel.plan.update.channels(name) or ()))
    weights_share = sel.log[-1].objective
    assert weights_share == pytest.approx(chosen, rel=1e-6)


def test_state_dict_resumes_the_same_plans(planner: Planner, tmp_path) -> None:
    x, y = _data()
    sel = Reselector(planner, x[:10], scores="velocity")
    model = sel.compile(make_model())
    for _ in range(3):
        _train_epoch(model, x, y)
        model = sel.step(model)
    torch.save({"sel": sel.state_dict(), "model": model.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # plain data: no pickle needed
    fresh = make_model()
    fresh.load_state_dict(saved["model"])
    again = Reselector(planner, x[:10], scores="velocity")
    resumed = again.compile(fresh)
    again.load_state_dict(saved["sel"], resumed)
    assert resumed.update == model.update and again.epoch == sel.epoch == 3
    assert again.log == sel.log
    for _ in range(2):
        _train_epoch(model, x, y)
        model = sel.step(model)
        _train_epoch(resumed, x, y)
        resumed = again.step(resumed)
        assert resumed.update == model.update
        assert again.log[-1].objective == sel.log[-1].objective and again.log[-1].source == "velocity"
    state_a, state_b = model.state_dict(), resumed.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    other = Reselector(planner_for(make_model(), x[:1], target=planner.target, ram=planner.budget_bytes + 4096),
                       x[:10])
    with pytest.raises(InputError, match="another model or budget"):
        other.load_state_dict(saved["sel"], other.compile(make_model()))


@pytest.fixture
def one_process_group():
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def test_the_distributed_path_on_one_rank(one_process_group) -> None:
    """distributed=True on a group of one: the plan goes through the broadcast (encoded, decoded,
    re-priced) and the velocities through the all-reduce; the decisions are those of the local path."""
    x, y = _data()
    model = make_model()
    probe = planner_for(model, x[:1], target="host", ram=1 << 30)
    full, none = probe.price(UpdateSet.full(model)).peak_bytes, probe.price(UpdateSet.none()).peak_bytes
    planner = planner_for(model, x[:1], target="host", ram=int(none + SHARE["host"] * (full - none)))
    runs = []
    for distributed in (True, False):
        sel = Reselector(planner, x[:10], distributed=distributed, time_limit=20.0)
        model = sel.compile(make_model())
        for _ in range(3):
            _train_epoch(model, x, y)
            model = sel.step(model)
        runs.append((sel, model))
    (shared, model_a), (local, model_b) = runs
    assert [log.groups_changed for log in shared.log] == [log.groups_changed for log in local.log]
    assert model_a.update == model_b.update and shared.plan.update == local.plan.update
    assert all(log.collective_bytes > 0 for log in shared.log) and all(log.collective_bytes == 0 for log in local.log)
    assert shared.tracker.history[-1].reduced_bytes == 8 * sum(layer.channels for layer in shared.tracker.layers)
    assert shared.plan.estimate.peak_bytes == local.plan.estimate.peak_bytes
    # a plan that is not made of whole groups travels as its update set
    odd = UpdateSet({"fc.weight": (0, 2)})
    assert shared._decode(shared._encode(dataclasses_replace(shared.plan, odd))).update == odd


def dataclasses_replace(plan, update):
    import dataclasses

    return dataclasses.replace(plan, update=update, estimate=plan.planner.price(update))


def test_a_solve_longer_than_the_timeout_allows_is_refused() -> None:
    import datetime

    import torch.distributed as dist

    x, _ = _data()
    planner = planner_for(make_model(), x[:1], target="host", ram=1 << 20)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        with pytest.raises(InputError, match="half the process group's timeout"):
            Reselector(planner, x[:10], distributed=True, time_limit=20.0)
        sel = Reselector(planner, x[:10], distributed=True, time_limit=10.0)
        assert sel.world_size == 1 and sel.rank == 0
    finally:
        dist.destroy_process_group()
