"""budgetplan.selection.solver: the solver layer against brute force, and its status/cleanup/determinism promises."""

from __future__ import annotations

import itertools
import math
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from budgetplan.selection import solver as ilp
from budgetplan.errors import InputError
from budgetplan.selection.solver import (
    STATUSES,
    Constraint,
    Implication,
    LinearExpr,
    SelectionProblem,
    SolveResult,
    available_solvers,
    check_assignment,
    solve,
)

SOLVERS = available_solvers()
BRUTE_SEEDS = range(32)


# --------------------------------------------------------------------------------------------------
# Instances and an independent brute-force oracle
# --------------------------------------------------------------------------------------------------


def small_instance(seed: int) -> SelectionProblem:
    """8-14 binaries: groups x of layers (x <= u_l), u_l with set-up bytes/FLOPs, a reach chain
    u_l <= a_l, a_l <= a_{l+1} with FLOP costs, a bytes and a FLOPs budget; every third instance
    also a continuous ``peak`` (bytes) that must cover each layer's live bytes and is penalised."""
    rng = random.Random(seed)
    layers = rng.choice((2, 3))
    n = rng.randint(8, 14)
    n_groups = n - 2 * layers
    sizes = [1] * layers
    for _ in range(n_groups - layers):
        sizes[rng.randrange(layers)] += 1
    binaries, obj, mem, flops, imps = [], {}, {}, {}, []
    live: list[dict[str, float]] = []
    for l, size in enumerate(sizes):
        u, a = f"u{l}", f"a{l}"
        binaries += [u, a]
        mem[u] = rng.randint(50, 400)
        flops[a] = rng.randint(10, 300)
        obj[a] = -round(rng.uniform(0, 0.5), 3)  # a small penalty for backpropagating further
        imps.append(Implication(f"reach{l}", u, a))
        if l:
            imps.append(Implication(f"chain{l}", f"a{l - 1}", a))
        step = {u: float(mem[u])}
        for g in range(size):
            x = f"x{l}.{g}"
            binaries.append(x)
            obj[x] = round(rng.uniform(0.1, 10.0), 3)
            mem[x] = rng.randint(20, 300)
            flops[x] = rng.randint(5, 200)
            imps.append(Implication(f"need{l}.{g}", x, u))
            step[x] = float(mem[x])
        live.append(step)
    constraints = [
        Constraint("bytes", LinearExpr(mem), rng.uniform(0.2, 0.7) * sum(mem.values()), "bytes"),
        Constraint("flops", LinearExpr(flops), rng.uniform(0.3, 0.8) * sum(flops.values()), "FLOPs"),
    ]
    continuous = []
    if seed % 3 == 0:
        continuous = ["peak"]
        obj["peak"] = -0.001
        for t, step in enumerate(live):
            constraints.append(Constraint(f"live{t}", LinearExpr({**step, "peak": -1.0}), 0.0, "bytes"))
        worst = max(sum(step.values()) for step in live)
        constraints.append(Constraint("peak_budget", LinearExpr({"peak": 1.0}), 0.8 * worst, "bytes"))
    fixed = {}
    if seed % 4 == 1:
        fixed = {rng.choice([b for b in binaries if b.startswith("x")]): rng.randint(0, 1)}
    return SelectionProblem(binaries, LinearExpr(obj, 1.5), constraints, imps, fixed, continuous)


def brute_force(p: SelectionProblem) -> float | None:
    """Best objective over all 0/1 assignments (peak, if any, at its smallest feasible value)."""
    best = None
    names = list(p.binaries)
    for bits in itertools.product((0, 1), repeat=len(names)):
        x = dict(zip(names, bits))
        if any(x[k] != v for k, v in p.fixed.items()) or any(x[i.lhs] > x[i.rhs] for i in p.implications):
            continue
        point = dict(x)
        if p.continuous:  # peak >= every live-bytes expression, >= 0; the objective wants it small
            point["peak"] = max(
                [0.0]
                + [sum(c * x[v] for v, c in con.expr.terms.items() if v != "peak") for con in p.constraints
                   if con.name.startswith("live")]
            )
        ok = all(
            con.expr.constant + sum(c * point[v] for v, c in con.expr.terms.items()) <= con.bound + 1e-9
            for con in p.constraints
        )
        if ok:
            val = p.objective.constant + sum(c * point[v] for v, c in p.objective.terms.items())
            best = val if best is None else max(best, val)
    return best


def assert_consistent(res: SolveResult, p: SelectionProblem) -> None:
    """The documented invariants of a SolveResult."""
    assert res.status in STATUSES
    assert "\n" not in res.message and res.message
    assert res.seconds >= 0
    if res.status in ("optimal", "feasible"):
        assert set(res.values) == set(p.binaries)
        assert check_assignment(p, res.values, res.continuous_values) == []
        assert res.objective == pytest.approx(p.objective.value({**res.values, **res.continuous_values}))
    else:
        assert res.values == {} and res.objective is None
    if res.status == "optimal":
        assert res.gap == 0.0
    if res.status == "feasible":
        assert res.gap is None or res.gap >= 0.0
    if res.status not in ("optimal", "feasible"):
        assert res.gap is None


# --------------------------------------------------------------------------------------------------
# Correctness against brute force
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
def test_matches_brute_force(solver: str) -> None:
    kinds = set()
    for seed in BRUTE_SEEDS:
        p = small_instance(seed)
        assert 8 <= len(p.binaries) <= 14
        best = brute_force(p)
        res = solve(p, solver=solver)
        assert_consistent(res, p)
        if best is None:
            assert res.status == "infeasible", (seed, res.message)
            continue
        kinds.add(bool(p.continuous))
        assert res.status == "optimal", (seed, res.message)
        assert res.objective == pytest.approx(best, rel=1e-7, abs=1e-5), seed
    assert kinds == {True, False}  # both with and without a continuous peak variable were feasible


@pytest.mark.parametrize("solver", SOLVERS)
def test_integer_variables_match_brute_force(solver: str) -> None:
    """General integers (0..upper) next to binaries, with a concave objective through tangent lines as
    the planner writes it: the solver's optimum equals enumeration over every integer point."""
    kinds: set[str] = set()
    for seed in range(12):
        rng = random.Random(1000 + seed)
        uppers = {"n0": rng.randint(1, 5), "n1": rng.randint(1, 5)}
        binaries = [f"x{i}" for i in range(4)]
        obj = {v: rng.uniform(-1.0, 3.0) for v in binaries}
        scores = sorted((rng.uniform(0.1, 2.0) for _ in range(uppers["n0"])), reverse=True)
        constraints = []
        prefix = 0.0
        for j, s_next in enumerate(scores):  # z <= S_j + s_{j+1} (n0 - j)
            constraints.append(Constraint(f"tangent_{j}", LinearExpr({"z": 1.0, "n0": -s_next}), prefix - s_next * j))
            prefix += s_next
        obj.update({"z": 1.0, "n1": rng.uniform(0.0, 2.0)})
        weights = {v: float(rng.randint(1, 9)) for v in [*binaries, "n0", "n1"]}
        constraints.append(Constraint("bytes", LinearExpr(weights), float(rng.randint(5, 30)), "bytes"))
        constraints.append(Constraint("n1_needs_x0", LinearExpr({"n1": 1.0, "x0": -float(uppers["n1"])}), 0.0))
        p = SelectionProblem(binaries, LinearExpr(obj), constraints, [], continuous=["z"], integers=uppers)
        best = None
        for bits in itertools.product((0, 1), repeat=len(binaries)):
            for n0 in range(uppers["n0"] + 1):
                for n1 in range(uppers["n1"] + 1):
                    point = {**dict(zip(binaries, bits)), "n0": n0, "n1": n1, "z": sum(scores[:n0])}
                    if all(c.expr.value(point) <= c.bound + 1e-9 for c in constraints if c.name.startswith(("bytes", "n1"))):
                        val = p.objective.value(point)
                        best = val if best is None else max(best, val)
        res = solve(p, solver=solver)
        assert res.status == "optimal", (seed, res.message)
        assert set(res.values) == set(binaries) | set(uppers)
        assert all(0 <= res.values[n] <= uppers[n] for n in uppers)
        assert check_assignment(p, res.values, res.continuous_values) == []
        assert res.objective == pytest.approx(best, rel=1e-7, abs=1e-5), seed  # z: solver feasibility tolerance
        kinds.add("interior" if 0 < res.values["n0"] < uppers["n0"] else "edge")
    assert "interior" in kinds  # some optimum trains only part of a class
    # a warm start may name an integer (within its bounds); a value out of bounds is an input error
    assert solve(p, solver=solver, warm_start={"n0": uppers["n0"]}).status == "optimal"
    with pytest.raises(InputError, match="0..") as info:
        solve(p, solver=solver, warm_start={"n0": uppers["n0"] + 1})
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="upper bound"):
        solve(SelectionProblem([], LinearExpr({"n": 1.0}), [], [], integers={"n": -1}), solver=solver)
    with pytest.raises(InputError, match="both binary and integer"):
        solve(SelectionProblem(["n"], LinearExpr({"n": 1.0}), [], [], integers={"n": 2}), solver=solver)


# --------------------------------------------------------------------------------------------------
# Statuses
# --------------------------------------------------------------------------------------------------


def _pair_problem(*constraints: Constraint) -> SelectionProblem:
    return SelectionProblem(["x1", "x2"], LinearExpr({"x1": 1.0, "x2": 2.0}), list(constraints), [])


@pytest.mark.parametrize("solver", SOLVERS)
def test_infeasible_proved_by_solver(solver: str) -> None:
    # Each constraint alone can hold; together they cannot (at least one chosen, at most half of one).
    p = _pair_problem(
        Constraint("at_least_one", LinearExpr({"x1": -1, "x2": -1}), -1),
        Constraint("at_most_half", LinearExpr({"x1": 1, "x2": 1}), 0.5),
    )
    res = solve(p, solver=solver)
    assert res.status == "infeasible", res.message
    assert_consistent(res, p)


def test_infeasible_by_bound_names_the_constraint() -> None:
    p = SelectionProblem(
        ["x", "y"],
        LinearExpr({"x": 1, "y": 1}),
        [Constraint("bytes", LinearExpr({"x": 300, "y": 10}, constant=100), 256, "bytes")],
        [],
        fixed={"x": 1},
    )
    res = solve(p)
    assert res.status == "infeasible"
    assert "'bytes'" in res.message and "400 bytes" in res.message and "256 bytes" in res.message
    imp = SelectionProblem(["x", "u"], LinearExpr({"x": 1}), [], [Implication("x needs u", "x", "u")],
                           fixed={"x": 1, "u": 0})
    assert "x needs u" in solve(imp).message


@pytest.mark.parametrize("solver", SOLVERS)
def test_unbounded_through_a_continuous_variable(solver: str) -> None:
    c_needs_x = Constraint("c", LinearExpr({"x": 1, "c": -1}), 0)
    p = SelectionProblem(["x"], LinearExpr({"x": 1, "c": 1}), [c_needs_x], [], continuous=["c"])
    res = solve(p, solver=solver)
    assert res.status in ("unbounded", "error"), res.message  # HiGHS may not tell unbounded from infeasible
    assert_consistent(res, p)


def _large_problem(n: int = 4000) -> SelectionProblem:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from solver_speed import knapsack_with_setup
    finally:
        sys.path.pop(0)
    return knapsack_with_setup(n, seed=1)


@pytest.mark.parametrize("solver", SOLVERS)
def test_tiny_time_limit_is_never_claimed_optimal(solver: str) -> None:
    p = _large_problem()
    res = solve(p, solver=solver, time_limit=0.01)
    assert res.status in ("optimal", "feasible", "no-solution"), res.message
    assert_consistent(res, p)  # optimal => gap 0.0, feasible => checked values, no-solution => no values


@pytest.mark.parametrize("solver", SOLVERS)
def test_stopping_on_a_requested_gap_is_feasible_not_optimal(solver: str) -> None:
    p = _large_problem(200)
    res = solve(p, solver=solver, gap=0.5)
    assert_consistent(res, p)
    assert res.status in ("optimal", "feasible"), res.message
    if res.status == "feasible":
        assert res.gap is not None and res.gap <= 0.5 + 1e-6  # CBC's gap comes from its log
        assert res.bound is not None and res.bound >= res.objective - 1e-6
    exact = solve(p, solver=solver)
    assert exact.status == "optimal" and exact.gap == 0.0
    assert exact.objective >= res.objective - 1e-6
    if res.status == "feasible":
        assert exact.objective <= res.bound + 1e-3  # CBC prints its bound with 3 decimals


def test_cbc_status_lines() -> None:
    log = "Cbc0011I ...\n\nResult - Stopped on time limit\n\nObjective value:                90.00000000\n" \
          "Upper bound:                    100.000\nGap:                            -0.10\n"
    raw = ilp.classify_cbc("Stopped on time - objective value 90.00000000", log, 3.0)
    assert (raw.status, raw.has_values, raw.incumbent, raw.bound) == ("feasible", True, 90.0, 100.0)
    assert ilp.classify_cbc("Stopped on time - objective value 90", None, 3.0).bound is None
    within = ilp.classify_cbc("Optimal (within gap tolerance) - objective value 90.0", None, None)
    assert within.status == "feasible"  # PuLP reports this as Optimal with sol_status 1
    assert ilp.classify_cbc("Optimal - objective value 90.0", None, None).status == "optimal"
    relaxed = "Stopped on time (no integer solution - continuous used) - objective value 2139300.55"
    assert (ilp.classify_cbc(relaxed, None, 0.3).status, ilp.classify_cbc(relaxed, None, 0.3).has_values) == (
        "no-solution", False)
    assert ilp.classify_cbc("Infeasible - objective value 0", None, None).status == "infeasible"
    assert ilp.classify_cbc("Integer infeasible - objective value 0", None, None).status == "infeasible"
    assert ilp.classify_cbc("Unbounded - objective value 0", None, None).status == "unbounded"
    assert ilp.classify_cbc("Stopped on nodes - objective value 5", None, None).status == "feasible"
    assert ilp.classify_cbc("Something new", None, None).status == "error"


def test_highs_statuses() -> None:
    c = ilp.classify_highs
    assert c("kOptimal", True, None, 10.0, 10.0 + 5e-7, None).status == "optimal"
    assert c("kOptimal", True, 0.01, 10.0, 10.05, None).status == "feasible"
    assert c("kOptimal", True, 0.01, 10.0, 10.0, None).status == "optimal"
    assert c("kTimeLimit", True, None, 10.0, 12.0, 1.0).status == "feasible"
    assert c("kTimeLimit", False, None, None, math.inf, 1.0).status == "no-solution"
    for limit in ("kSolutionLimit", "kMemoryLimit", "kHighsInterrupt", "kInterrupt", "kIterationLimit"):
        assert c(limit, False, None, None, None, None).status == "no-solution"  # PuLP: KeyError for some
    assert c("kInfeasible", False, None, None, None, None).status == "infeasible"
    assert c("kUnbounded", False, None, None, None, None).status == "unbounded"
    assert c("kNotset", False, None, None, None, None).status == "error"


# --------------------------------------------------------------------------------------------------
# Solver choice and input checks
# --------------------------------------------------------------------------------------------------


def test_unknown_solver_is_an_input_error() -> None:
    with pytest.raises(InputError) as err:
        solve(small_instance(0), solver="gurobi")
    text = str(err.value)
    assert "gurobi" in text and "cbc" in text and "\n" not in text


def test_without_highspy_auto_uses_cbc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ilp, "_highs_available", lambda: False)
    assert available_solvers() == ["cbc"]
    assert solve(small_instance(2)).solver == "cbc"
    with pytest.raises(InputError, match="not available.*available solvers: cbc"):
        solve(small_instance(2), solver="highs")


def test_auto_prefers_highs() -> None:
    if "highs" not in SOLVERS:
        pytest.skip("highspy not installed")
    assert solve(small_instance(2)).solver == "highs"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda p: p.constraints.append(Constraint("c", LinearExpr({"nope": 1}), 1)), "unknown variable"),
        (lambda p: p.constraints.append(Constraint("bytes", LinearExpr({}), 1)), "used twice"),
        (lambda p: p.implications.append(Implication("i", "x1", "peak")), "not a binary"),
        (lambda p: p.fixed.update({"x1": 2}), "0 or 1"),
        (lambda p: p.fixed.update({"zz": 1}), "not a binary"),
        (lambda p: p.binaries.append("x1"), "listed twice"),
        (lambda p: p.continuous.append("x1"), "both binary and continuous"),
        (lambda p: p.constraints.append(Constraint("nan", LinearExpr({"x1": math.nan}), 1)), "finite"),
        (lambda p: p.constraints.append(Constraint("inf", LinearExpr({"x1": 1}), math.inf)), "finite"),
    ],
)
def test_malformed_problems_are_input_errors(change, needle: str) -> None:
    bytes_ = Constraint("bytes", LinearExpr({"x1": 1}), 1)
    p = SelectionProblem(["x1", "x2"], LinearExpr({"x1": 1}), [bytes_], [], continuous=["peak"])
    change(p)
    with pytest.raises(InputError, match=needle):
        solve(p, solver="cbc")


@pytest.mark.parametrize(
    "kwargs",
    [{"time_limit": 0}, {"time_limit": -1}, {"gap": 1.0}, {"gap": -0.1}, {"threads": 0}, {"threads": 1.5},
     {"warm_start": {"nope": 1}}, {"warm_start": {"x1": 0.5}}],
)
def test_bad_options_are_input_errors(kwargs) -> None:
    p = _pair_problem(Constraint("c", LinearExpr({"x1": 1, "x2": 1}), 1))
    with pytest.raises(InputError):
        solve(p, solver="cbc", **kwargs)


# --------------------------------------------------------------------------------------------------
# Determinism, warm start, odd shapes
# --------------------------------------------------------------------------------------------------


def _shuffled(p: SelectionProblem, seed: int) -> SelectionProblem:
    rng = random.Random(seed)

    def mix(items):
        items = list(items)
        rng.shuffle(items)
        return items

    def expr(e: LinearExpr) -> LinearExpr:
        return LinearExpr(dict(mix(e.terms.items())), e.constant)

    return SelectionProblem(
        mix(p.binaries),
        expr(p.objective),
        mix(Constraint(c.name, expr(c.expr), c.bound, c.unit) for c in p.constraints),
        mix(p.implications),
        dict(mix(p.fixed.items())),
        mix(p.continuous),
    )


@pytest.mark.parametrize("solver", SOLVERS)
def test_deterministic_and_order_independent(solver: str) -> None:
    # Many equal values: lots of optimal ties, so only a canonical model keeps the answer stable.
    p = SelectionProblem(
        [f"x{i}" for i in range(30)],
        LinearExpr({f"x{i}": 1.0 for i in range(30)}),
        [Constraint("bytes", LinearExpr({f"x{i}": 10 for i in range(30)}), 155, "bytes")],
        [],
    )
    first = solve(p, solver=solver)
    assert first.status == "optimal" and sum(first.values.values()) == 15
    for seed in range(3):
        assert solve(p, solver=solver).values == first.values
        assert solve(_shuffled(p, seed), solver=solver).values == first.values
    q = small_instance(5)
    assert solve(q, solver=solver).values == solve(_shuffled(q, 1), solver=solver).values


@pytest.mark.parametrize("solver", SOLVERS)
def test_warm_start(solver: str) -> None:
    p = _large_problem(200)
    exact = solve(p, solver=solver)
    warm = solve(p, solver=solver, warm_start=exact.values)
    assert warm.status == "optimal" and warm.objective == pytest.approx(exact.objective, abs=1e-6)
    bad = solve(p, solver=solver, warm_start={b: 1 for b in p.binaries})  # infeasible start: ignored
    assert bad.status == "optimal" and bad.objective == pytest.approx(exact.objective, abs=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_unused_fixed_and_odd_names(solver: str) -> None:
    p = SelectionProblem(
        binaries=["x[conv1][0]", "x[conv1]/0", "u conv1", "unused", "unused-fixed", "1st"],
        objective=LinearExpr({"x[conv1][0]": 2, "x[conv1]/0": 1, "1st": -1, "unused": 0.0}, constant=3),
        constraints=[
            Constraint("bytes (sram)", LinearExpr({"x[conv1][0]": 5, "x[conv1]/0": 5, "u conv1": 3}), 8, "B"),
            Constraint("constant only", LinearExpr({}, constant=1), 2),
        ],
        implications=[
            Implication("need", "x[conv1][0]", "u conv1"),
            Implication("need/2", "x[conv1]/0", "u conv1"),
            Implication("self", "1st", "1st"),
        ],
        fixed={"unused-fixed": 1, "1st": 1},
    )
    res = solve(p, solver=solver)
    assert res.status == "optimal", res.message
    expected = {"x[conv1][0]": 1, "x[conv1]/0": 0, "u conv1": 1, "unused": 0, "unused-fixed": 1, "1st": 1}
    assert res.values == expected
    assert res.objective == 4.0 and res.selected == ["1st", "u conv1", "unused-fixed", "x[conv1][0]"]


@pytest.mark.parametrize("solver", SOLVERS)
def test_nothing_to_decide(solver: str) -> None:
    res = solve(SelectionProblem([], LinearExpr({}, 2.0), [], []), solver=solver)
    assert (res.status, res.objective, res.values) == ("optimal", 2.0, {})
    res = solve(SelectionProblem(["a"], LinearExpr({}), [], [], fixed={"a": 1}), solver=solver)
    assert (res.status, res.values) == ("optimal", {"a": 1})


# --------------------------------------------------------------------------------------------------
# Never a violating plan
# --------------------------------------------------------------------------------------------------


def test_a_solver_answer_that_breaks_a_constraint_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def lying_cbc(model, **_):
        for var in model.prob.variables():
            var.varValue = 1.0
        return ilp._Raw("optimal", "pretend", True, 0.0, 0.0)

    monkeypatch.setattr(ilp, "_run_cbc", lying_cbc)
    p = _pair_problem(Constraint("bytes", LinearExpr({"x1": 100, "x2": 100}), 150, "bytes"))
    res = solve(p, solver="cbc")
    assert res.status == "error" and res.values == {}
    assert "'bytes'" in res.message and "200 bytes > bound 150 bytes" in res.message

    def fractional_cbc(model, **_):
        for var in model.prob.variables():
            var.varValue = 0.5
        return ilp._Raw("feasible", "pretend", True, 0.0, 0.0)

    monkeypatch.setattr(ilp, "_run_cbc", fractional_cbc)
    res = solve(p, solver="cbc")
    assert res.status == "error" and "not 0/1" in res.message


def test_check_assignment_reports_each_violation() -> None:
    p = small_instance(4)
    everything = {b: 1 for b in p.binaries}
    problems = check_assignment(p, everything)
    assert any("'bytes'" in line for line in problems)
    zero = {b: 0 for b in p.binaries}
    assert check_assignment(p, zero) == []
    only = ["implication 'need0.0' violated: 'x0.0' = 1 but 'u0' = 0"]
    assert check_assignment(p, {**zero, "x0.0": 1}) == only


# --------------------------------------------------------------------------------------------------
# Process hygiene: temp files, HiGHS threads, HiGHS banner
# --------------------------------------------------------------------------------------------------


def test_no_files_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, tmp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(work)
    for var in ("TMPDIR", "TMP", "TEMP"):
        monkeypatch.setenv(var, str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    p = small_instance(4)
    for solver in SOLVERS:
        solve(p, solver=solver)
        solve(p, solver=solver, warm_start={b: 0 for b in p.binaries})
        solve(_large_problem(200), solver=solver, gap=0.2)
    # A CBC that fails: PuLP raises before deleting its files; ours live in a removed directory.
    fake = tmp_path / "fake_cbc"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(ilp, "_cbc_path", lambda: str(fake))
    res = solve(p, solver="cbc")
    assert res.status == "error" and "CBC failed" in res.message
    assert list(work.iterdir()) == [] and list(tmp.iterdir()) == []


def test_highs_thread_count_can_change() -> None:
    if "highs" not in SOLVERS:
        pytest.skip("highspy not installed")
    p = small_instance(6)
    results = [solve(p, solver="highs", threads=t) for t in (2, 1, 2, 1)]
    assert [r.status for r in results] == ["optimal"] * 4, [r.message for r in results]


def test_highs_banner_does_not_reach_stdout() -> None:
    if "highs" not in SOLVERS:
        pytest.skip("highspy not installed")
    code = (
        "from budgetplan.selection.solver import *\n"
        "p = SelectionProblem(['a'], LinearExpr({'a': 1}), [], [])\n"
        "print(solve(p, solver='highs').status)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == "optimal\n"


def test_works_without_highspy_installed() -> None:
    code = (
        "import sys\n"
        "sys.modules['highspy'] = None  # import highspy -> ImportError, as if not installed\n"
        "from budgetplan.selection.solver import *\n"
        "c = Constraint('c', LinearExpr({'a': 1, 'b': 1}), 1)\n"
        "p = SelectionProblem(['a', 'b'], LinearExpr({'a': 1, 'b': 2}), [c], [])\n"
        "r = solve(p)\n"
        "print(available_solvers(), r.solver, r.status, r.selected)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == "['cbc'] cbc optimal ['b']\n"
