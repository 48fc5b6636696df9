"""Solver layer: 0/1 selection problems solved with CBC (through PuLP) or HiGHS (through highspy).

The planner describes *which neuron groups to train* as a small, solver-independent
:class:`SelectionProblem` (binary decision variables, a linear objective to **maximise**, named
``<=`` constraints that carry a unit such as ``"bytes"`` or ``"FLOPs"``, implications ``lhs <= rhs``
between binaries, fixed variables and optional continuous helpers such as a ``peak`` variable). This
module turns it into a PuLP model and runs CBC (bundled with PuLP), or builds HiGHS's model from arrays
(``highspy``, optional extra: a ``HighsLp`` in row-wise sparse form, no per-term Python objects), and
hands back a :class:`SolveResult` whose status is *honest*:

``"optimal"``
    the solver proved that no assignment has a larger objective (within its exact-solve tolerance:
    CBC's default, HiGHS ``mip_rel_gap=0`` and ``mip_abs_gap=1e-6`` in objective units).
    ``gap`` is then ``0.0``.
``"feasible"``
    the solver stopped with an incumbent but did not prove it optimal: time limit, or the requested
    relative ``gap`` was reached. ``gap`` is the measured relative gap when the solver tells us, else
    ``None``. (PuLP itself calls both of these cases "Optimal", see the notes below.)
``"infeasible"``
    no 0/1 assignment satisfies the constraints (proved by the solver, or by a bound check that names
    the constraint).
``"no-solution"``
    the time limit hit before any feasible assignment was found.
``"unbounded"``
    the objective can grow without limit (only possible through continuous variables).
``"error"``
    the solver failed, or returned an assignment that does not satisfy the constraints when they are
    re-evaluated here in Python. ``values`` is empty then: a violating plan is never returned.

Invariants of :class:`SolveResult`: ``values`` is non-empty (for a non-empty problem) exactly when the
status is ``"optimal"`` or ``"feasible"``; every returned assignment has been re-checked against all
constraints, implications and fixings; ``status == "optimal"`` implies ``gap == 0.0``; ``gap`` is
``None`` whenever it is not known.

Gap
    ``gap = |bound - incumbent| / |objective|`` where ``bound`` is the solver's best proven bound,
    ``incumbent`` its best objective value (both without the objective's constant term, which
    neither solver sees) and ``objective`` is :attr:`SolveResult.objective` (constant included).
    With a zero constant this is exactly HiGHS's ``info.mip_gap``. For CBC, PuLP exposes no gap;
    we read the incumbent and bound from CBC's log (only when ``msg=False``, since with ``msg=True``
    the log goes to the console) and leave ``gap=None`` if they are not there. CBC prints the bound
    with three decimals, so its gap is good to about ``0.0005 / |objective|``.

Determinism
    The PuLP model is built canonically: variables, constraints, implications and the terms of every
    expression are sorted by name, so the order of the input lists does not matter. Both solvers run
    with one thread by default and fixed random seeds (CBC ``randomSeed``/``randomCbcSeed``, HiGHS
    ``random_seed``). Hence the same problem, solver, options and solver version give the same
    ``values``. Ties: when several assignments reach the optimal objective, the solver's search picks
    one; no lexicographic tie-break is imposed, so CBC and HiGHS may return different (equally good)
    assignments. Binaries that appear nowhere (no non-zero coefficient, no implication) are not sent
    to the solver and are set to 0 (or to their fixed value). A time-limited solve is *not*
    deterministic: how far the search got depends on the machine.

Notes on PuLP 3.3 / CBC 2.10 / HiGHS 1.16 (checked, and handled here):

* CBC's solution file starts with a status line. PuLP maps ``Stopped on time - objective value ...``
  to status ``Optimal`` with ``sol_status == 2`` (integer feasible), and ``Optimal (within gap
  tolerance) - ...`` (stopped on ``gapRel``) to ``Optimal`` with ``sol_status == 1``: so even
  ``sol_status`` overstates a gap-stopped run. We keep the raw status line and classify it ourselves.
  ``Stopped on time (no integer solution - continuous used)`` leaves the LP relaxation's fractional
  values in the variables: those are never returned.
* PuLP writes a binary that appears in no row and has no objective coefficient into the MPS BOUNDS
  section only; CBC rejects the file ("No match for column"). Such binaries are kept out of the model.
* PuLP's CBC temp files go to ``$TMPDIR`` and are not removed when CBC fails; here they go to a
  private temporary directory that is always removed.
* PuLP's ``HiGHS`` maps model statuses itself and has no entry for ``kSolutionLimit``,
  ``kMemoryLimit`` and ``kHighsInterrupt`` (``KeyError``), ignores warm starts, and builds the model one
  ``addCol``/``addRow`` at a time from PuLP expressions (1.5 s of a ViT-Small plan). We pass the model to
  ``highspy`` as arrays and read the status, ``primal_solution_status``, ``objective_function_value``
  and ``mip_dual_bound`` from it directly.
* HiGHS's default ``mip_rel_gap`` is ``1e-4``: its "optimal" is then not exact. Exact solves
  (``gap=None``) set it to 0.
* HiGHS's thread pool is process-global: after a solve with ``threads=k`` a solve with another count
  fails (PuLP reports "Not Solved", the reason is only in the suppressed log). We reset the pool
  when the thread count changes. Solves must therefore not run concurrently in one process.
* HiGHS prints a two-line banner to the C-level stdout the first time a ``Highs`` object is created,
  whatever ``output_flag`` says. With ``msg=False`` that first construction is done with stdout
  pointed at ``/dev/null`` so that e.g. JSON printed by the CLI stays clean.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulp

from budgetplan.errors import InputError
from budgetplan.pricing.linear import Implication, LinearExpr

__all__ = [
    "STATUSES",
    "Constraint",
    "Implication",
    "LinearExpr",
    "SelectionProblem",
    "SolveResult",
    "available_solvers",
    "check_assignment",
    "solve",
]

#: Every value :attr:`SolveResult.status` can take.
STATUSES: tuple[str, ...] = ("optimal", "feasible", "infeasible", "no-solution", "unbounded", "error")

#: A binary whose solver value is further than this from 0 or 1 makes the result an ``"error"``.
INTEGRALITY_TOLERANCE = 1e-5
#: Slack allowed when re-checking a constraint that involves only binaries, relative to
#: ``max(1, |bound|, sum |coef * value|)``: float round-off only, since binaries are exact after rounding.
BINARY_CHECK_TOLERANCE = 1e-9
#: Same for constraints that involve continuous variables, whose values carry the solver's
#: feasibility tolerance (1e-7 .. 1e-6).
CONTINUOUS_CHECK_TOLERANCE = 1e-6
#: Absolute objective gap (objective units) under which HiGHS's incumbent counts as proven optimal;
#: HiGHS's own default ``mip_abs_gap``.
OPTIMALITY_ABS_GAP = 1e-6

_CBC_SEEDS = ("randomSeed 1234567", "randomCbcSeed 1")
#: The solver model minimises ``_SENSE * objective``. Not ``LpMaximize``: CBC (2.10, via PuLP's ``-max``)
#: reads a MIP start's objective with the wrong sign when maximising (coin-or/pulp#475, coin-or/Cbc#296),
#: which makes the start useless or, per coin-or/Cbc#787, can even end the search at the start.
_SENSE = -1.0
_HIGHS_SEED = 0


# --------------------------------------------------------------------------------------------------
# Problem description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """``expr <= bound``, in ``unit`` (``"bytes"``, ``"FLOPs"``, ...).

    ``name`` identifies the constraint in messages and, sanitised, is the PuLP constraint name.
    """

    name: str
    expr: LinearExpr
    bound: float
    unit: str = ""


@dataclass
class SelectionProblem:
    """A 0/1 selection problem: maximise ``objective`` subject to the constraints.

    Attributes:
        binaries: names of the 0/1 decision variables.
        objective: maximised; may use binaries and continuous variables.
        constraints: each ``expr <= bound``; names unique (together with implication names).
        implications: ``lhs <= rhs`` between binaries.
        fixed: binaries forced to 0 or 1.
        continuous: names of continuous variables in ``[0, +inf)`` (e.g. a ``peak`` in bytes that
            must dominate each step's live bytes).
        integers: general integer variables, name -> upper bound: each takes a value in
            ``0..upper`` (e.g. how many of a layer's interchangeable channels are trained). Solvers
            branch on their value, which is much stronger than branching on a binary encoding.
    """

    binaries: list[str]
    objective: LinearExpr
    constraints: list[Constraint] = field(default_factory=list)
    implications: list[Implication] = field(default_factory=list)
    fixed: dict[str, int] = field(default_factory=dict)
    continuous: list[str] = field(default_factory=list)
    integers: dict[str, int] = field(default_factory=dict)


@dataclass
class SolveResult:
    """What a solve produced; see the module docstring for the meaning of each status.

    Attributes:
        status: one of :data:`STATUSES`.
        values: 0/1 for every binary and ``0..upper`` for every integer variable when a (checked)
            solution is returned, else empty.
        objective: objective value of ``values`` (constant included), re-evaluated in Python.
        gap: relative gap ``|bound - incumbent| / |objective|``; ``0.0`` when optimal, ``None`` unknown.
        seconds: wall-clock time of the whole :func:`solve` call (model building included).
        solver: ``"cbc"`` or ``"highs"``.
        message: one line for humans.
        continuous_values: value of each continuous variable when a solution is returned.
        bound: best proven upper bound on the objective (constant included) when known.
    """

    status: str
    values: dict[str, int] = field(repr=False)
    objective: float | None
    gap: float | None
    seconds: float
    solver: str
    message: str
    continuous_values: dict[str, float] = field(default_factory=dict, repr=False)
    bound: float | None = None

    @property
    def has_solution(self) -> bool:
        """True when ``values`` holds a checked assignment (status optimal or feasible)."""
        return self.status in ("optimal", "feasible")

    @property
    def selected(self) -> list[str]:
        """Names of the binaries set to 1, sorted."""
        return sorted(name for name, v in self.values.items() if v == 1)


# --------------------------------------------------------------------------------------------------
# Solver discovery
# --------------------------------------------------------------------------------------------------


def _cbc_path() -> str | None:
    """The CBC executable: PuLP's bundled binary, else a ``cbc`` on PATH; ``None`` if neither."""
    bundled_cls = getattr(pulp, "PULP_CBC_CMD", None)
    bundled = getattr(bundled_cls, "pulp_cbc_path", None)
    if bundled and getattr(bundled_cls, "_permissions_ok", True) and os.access(bundled, os.X_OK):
        return str(bundled)
    # PuLP 4 drops the bundled binary; COIN_CMD() then looks for `cbc` on PATH.
    cmd = pulp.COIN_CMD(msg=False)
    return str(cmd.path) if cmd.available() else None


def _highs_available() -> bool:
    try:
        import highspy  # noqa: F401
    except ImportError:
        return False
    return bool(pulp.HiGHS(msg=False).available())


def available_solvers() -> list[str]:
    """Solvers usable here: ``"cbc"`` (PuLP's bundled binary or a ``cbc`` on PATH), ``"highs"`` (highspy)."""
    found = []
    if _cbc_path() is not None:
        found.append("cbc")
    if _highs_available():
        found.append("highs")
    return found


def _resolve_solver(solver: str) -> str:
    available = available_solvers()
    listed = ", ".join(available) if available else "none (install PuLP with its CBC, or highspy)"
    key = str(solver).strip().lower()
    if key == "auto":
        if "highs" in available:
            return "highs"
        if "cbc" in available:
            return "cbc"
        raise InputError(f"no ILP solver available; available solvers: {listed}")
    if key not in ("cbc", "highs"):
        raise InputError(f"unknown solver {solver!r}; available solvers: auto, {listed}")
    if key not in available:
        hint = " (install the 'highs' extra: pip install 'budgetplan[highs]')" if key == "highs" else ""
        raise InputError(f"solver {key!r} is not available{hint}; available solvers: {listed}")
    return key


# --------------------------------------------------------------------------------------------------
# Validation and canonical form
# --------------------------------------------------------------------------------------------------


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{what} must be finite, got {value!r}")
    return number


def _zero_one(value: Any, what: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    raise InputError(f"{what} must be 0 or 1, got {value!r}")


@dataclass
class _Canon:
    """A validated problem with everything sorted by name and zero coefficients dropped."""

    binaries: list[str]
    continuous: list[str]
    integers: dict[str, int]  # name -> upper bound
    objective_terms: list[tuple[str, float]]
    objective_constant: float
    constraints: list[tuple[Constraint, list[tuple[str, float]], float]]  # (orig, terms, constant)
    implications: list[Implication]
    fixed: dict[str, int]
    modelled: list[str]  # variables that go into the solver model (sorted)


def _canon_terms(expr: LinearExpr, known: set[str], what: str) -> tuple[list[tuple[str, float]], float]:
    if not isinstance(expr, LinearExpr):
        raise InputError(f"{what} must be a LinearExpr, got {type(expr).__name__}")
    terms = []
    for var, coef in expr.terms.items():
        if var not in known:
            raise InputError(f"{what} uses unknown variable {var!r}")
        c = _finite(coef, f"coefficient of {var!r} in {what}")
        if c != 0.0:
            terms.append((str(var), c))
    terms.sort()
    return terms, _finite(expr.constant, f"constant of {what}")


def _canonicalize(problem: SelectionProblem) -> _Canon:
    binaries = [str(b) for b in problem.binaries]
    continuous = [str(c) for c in problem.continuous]
    integers: dict[str, int] = {}
    for name, upper in problem.integers.items():
        if isinstance(upper, bool) or not isinstance(upper, int) or upper < 0:
            raise InputError(f"integer variable {name!r} needs a non-negative integer upper bound, got {upper!r}")
        integers[str(name)] = upper
    for label, names in (("binary", binaries), ("continuous variable", continuous),
                         ("integer variable", list(integers))):
        seen: set[str] = set()
        for name in names:
            if not name:
                raise InputError(f"a {label} has an empty name")
            if name in seen:
                raise InputError(f"{label} {name!r} is listed twice")
            seen.add(name)
    for first, second, a, b in ((binaries, continuous, "binary", "continuous"),
                                (binaries, integers, "binary", "integer"),
                                (continuous, integers, "continuous", "integer")):
        both = set(first) & set(second)
        if both:
            raise InputError(f"variable {sorted(both)[0]!r} is declared both {a} and {b}")
    binary_set = set(binaries)
    known = binary_set | set(continuous) | set(integers)

    obj_terms, obj_const = _canon_terms(problem.objective, known, "the objective")

    names: set[str] = set()
    constraints = []
    for con in problem.constraints:
        if not con.name:
            raise InputError("a constraint has an empty name")
        if con.name in names:
            raise InputError(f"constraint name {con.name!r} is used twice")
        names.add(con.name)
        terms, const = _canon_terms(con.expr, known, f"constraint {con.name!r}")
        _finite(con.bound, f"bound of constraint {con.name!r}")
        constraints.append((con, terms, const))
    constraints.sort(key=lambda item: item[0].name)

    implications = []
    for imp in problem.implications:
        if not imp.name:
            raise InputError("an implication has an empty name")
        if imp.name in names:
            raise InputError(f"constraint/implication name {imp.name!r} is used twice")
        names.add(imp.name)
        for side in (imp.lhs, imp.rhs):
            if side not in binary_set:
                raise InputError(f"implication {imp.name!r} refers to {side!r}, which is not a binary")
        implications.append(imp)
    implications.sort(key=lambda imp: imp.name)

    fixed = {}
    for var, val in problem.fixed.items():
        if var not in binary_set:
            raise InputError(f"fixed variable {var!r} is not a binary")
        fixed[str(var)] = _zero_one(val, f"fixed value of {var!r}")

    used = {v for v, _ in obj_terms}
    for _, terms, _ in constraints:
        used.update(v for v, _ in terms)
    for imp in implications:
        if imp.lhs != imp.rhs:
            used.update((imp.lhs, imp.rhs))
    return _Canon(
        binaries=sorted(binaries),
        continuous=sorted(continuous),
        integers=dict(sorted(integers.items())),
        objective_terms=obj_terms,
        objective_constant=obj_const,
        constraints=constraints,
        implications=implications,
        fixed=fixed,
        modelled=sorted(used),
    )


# --------------------------------------------------------------------------------------------------
# Checking an assignment
# --------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.10g}"


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""


def check_assignment(
    problem: SelectionProblem,
    values: Mapping[str, int],
    continuous_values: Mapping[str, float] | None = None,
) -> list[str]:
    """Re-evaluate every constraint, implication and fixing at ``values``; describe each violation.

    Binaries must be exactly 0 or 1. Constraints over binaries only get a float round-off slack
    (:data:`BINARY_CHECK_TOLERANCE`), constraints with continuous variables the solver's
    (:data:`CONTINUOUS_CHECK_TOLERANCE`), both relative to ``max(1, |bound|, sum |coef * value|)``.

    Returns:
        One line per violation, empty when the assignment is feasible.
    """
    cont = dict(continuous_values or {})
    problems: list[str] = []
    point: dict[str, float] = {}
    for name in problem.binaries:
        if name not in values:
            problems.append(f"binary {name!r} has no value")
            continue
        v = values[name]
        if v not in (0, 1):
            problems.append(f"binary {name!r} = {v!r} is not 0/1")
            continue
        point[name] = float(v)
    for name, upper in problem.integers.items():
        if name not in values:
            problems.append(f"integer variable {name!r} has no value")
            continue
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= upper:
            problems.append(f"integer variable {name!r} = {v!r} is not an integer in 0..{upper}")
            continue
        point[name] = float(v)
    for name in problem.continuous:
        v = cont.get(name)
        if v is None or not math.isfinite(v):
            problems.append(f"continuous variable {name!r} has no finite value")
            continue
        if v < -CONTINUOUS_CHECK_TOLERANCE * max(1.0, abs(v)):
            problems.append(f"continuous variable {name!r} = {_fmt(v)} is negative")
        point[name] = float(v)
    if problems:
        return problems
    for var, val in sorted(problem.fixed.items()):
        if point.get(var) != float(val):
            problems.append(f"{var!r} is fixed to {val} but is {_fmt(point.get(var, math.nan))}")
    for imp in sorted(problem.implications, key=lambda i: i.name):
        if point[imp.lhs] > point[imp.rhs]:
            problems.append(f"implication {imp.name!r} violated: {imp.lhs!r} = 1 but {imp.rhs!r} = 0")
    continuous_set = set(problem.continuous)
    for con in sorted(problem.constraints, key=lambda c: c.name):
        lhs = con.expr.value(point)
        scale = max(
            1.0,
            abs(con.bound),
            math.fsum(abs(c * point[v]) for v, c in con.expr.terms.items()) + abs(con.expr.constant),
        )
        has_continuous = bool(continuous_set.intersection(con.expr.terms))
        rel = CONTINUOUS_CHECK_TOLERANCE if has_continuous else BINARY_CHECK_TOLERANCE
        if lhs > con.bound + rel * scale:
            problems.append(
                f"constraint {con.name!r} violated: {_fmt(lhs)}{_unit(con.unit)} > bound "
                f"{_fmt(con.bound)}{_unit(con.unit)}"
            )
    return problems


def _bound_infeasibility(canon: _Canon) -> str | None:
    """A reason the problem is infeasible that is visible without search, naming the culprit."""
    fixed = canon.fixed
    continuous = set(canon.continuous)
    for con, terms, const in canon.constraints:
        low = const
        for var, coef in terms:
            if var in fixed:
                low += coef * fixed[var]
            elif coef < 0:
                low = -math.inf if var in continuous else low + coef * canon.integers.get(var, 1)
        if low > con.bound + BINARY_CHECK_TOLERANCE * max(1.0, abs(con.bound), abs(low)):
            what = "its constant part" if not terms else "even its smallest possible value"
            return (
                f"constraint {con.name!r} cannot hold: {what} is {_fmt(low)}{_unit(con.unit)} "
                f"> bound {_fmt(con.bound)}{_unit(con.unit)}"
            )
    for imp in canon.implications:
        if fixed.get(imp.lhs) == 1 and fixed.get(imp.rhs) == 0:
            return f"implication {imp.name!r} cannot hold: {imp.lhs!r} is fixed to 1 and {imp.rhs!r} to 0"
    return None


# --------------------------------------------------------------------------------------------------
# PuLP model
# --------------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")


def _pulp_names(names: Iterable[str], prefix: str) -> dict[str, str]:
    """Map each name (in sorted order) to a unique PuLP-safe name; readable where possible."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in sorted(names):
        base = _UNSAFE.sub("_", name)
        if not base[:1].isalpha():
            base = f"{prefix}_{base}"
        candidate, k = base, 1
        while candidate in taken:
            k += 1
            candidate = f"{base}__{k}"
        taken.add(candidate)
        out[name] = candidate
    return out


@dataclass
class _Model:
    prob: pulp.LpProblem
    variables: dict[str, pulp.LpVariable]  # by problem name, only modelled ones


def _build_model(canon: _Canon, warm_start: Mapping[str, int]) -> _Model:
    """The PuLP model: **minimise** ``-objective`` (without its constant), see :data:`_SENSE`."""
    prob = pulp.LpProblem("budgetplan_selection", pulp.LpMinimize)
    binary_set = set(canon.binaries)
    var_names = _pulp_names(canon.modelled, "v")
    # PuLP 3.3 deprecates LpVariable(...) in favour of prob.add_variable (the PuLP 4 spelling).
    new_var = getattr(prob, "add_variable", None) or pulp.LpVariable
    variables: dict[str, pulp.LpVariable] = {}
    for name in canon.modelled:
        if name in binary_set or name in canon.integers:
            low, up = (canon.fixed[name], canon.fixed[name]) if name in canon.fixed else (0, canon.integers.get(name, 1))
            v = new_var(var_names[name], low, up, pulp.LpInteger)
            if name in warm_start:
                v.setInitialValue(warm_start[name])
        else:
            v = new_var(var_names[name], 0, None, pulp.LpContinuous)
        variables[name] = v
    prob.setObjective(pulp.LpAffineExpression([(variables[v], _SENSE * c) for v, c in canon.objective_terms]))
    row_names = [c.name for c, _, _ in canon.constraints] + [i.name for i in canon.implications]
    con_names = _pulp_names(row_names, "c")
    for con, terms, const in canon.constraints:
        if not terms:
            continue  # constant-only: already checked by _bound_infeasibility
        expr = pulp.LpAffineExpression([(variables[v], c) for v, c in terms])
        prob.addConstraint(
            pulp.LpConstraint(expr, sense=pulp.LpConstraintLE, rhs=con.bound - const), con_names[con.name]
        )
    for imp in canon.implications:
        if imp.lhs == imp.rhs:
            continue
        expr = pulp.LpAffineExpression([(variables[imp.lhs], 1.0), (variables[imp.rhs], -1.0)])
        prob.addConstraint(pulp.LpConstraint(expr, sense=pulp.LpConstraintLE, rhs=0.0), con_names[imp.name])
    return _Model(prob=prob, variables=variables)


# --------------------------------------------------------------------------------------------------
# Raw solver outcomes
# --------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """What a solver run said, before rounding and checking."""

    status: str  # one of STATUSES
    detail: str  # why (one line, no status word)
    has_values: bool = False
    incumbent: float | None = None  # solver's objective, without the constant term
    bound: float | None = None  # solver's best bound, without the constant term


def _to_our_sense(raw: _Raw) -> _Raw:
    """Incumbent and bound of the solver's minimisation turned into the maximised objective's terms."""
    if raw.incumbent is not None:
        raw.incumbent *= _SENSE
    if raw.bound is not None:
        raw.bound *= _SENSE
    return raw


def _time_limit_text(time_limit: float | None) -> str:
    return f"time limit {time_limit:g} s reached" if time_limit is not None else "time limit reached"


_CBC_RESULT_NUMBER = re.compile(r"^(Objective value|Upper bound|Lower bound):\s+(\S+)\s*$", re.MULTILINE)


def _parse_cbc_log(log: str) -> tuple[float | None, float | None]:
    """Incumbent and bound from the ``Result - ...`` block at the end of a CBC log."""
    at = log.rfind("\nResult - ")
    if at < 0:
        return None, None
    numbers: dict[str, float] = {}
    for key, text in _CBC_RESULT_NUMBER.findall(log[at:]):
        try:
            numbers.setdefault(key, float(text))
        except ValueError:
            continue
    bound = numbers.get("Upper bound", numbers.get("Lower bound"))
    return numbers.get("Objective value"), bound


def classify_cbc(status_line: str, log: str | None, time_limit: float | None) -> _Raw:
    """Map CBC's solution-file status line (and, if available, its log) to a raw outcome.

    The lines CBC 2.10 writes (first line of the ``-solution`` file):
    ``Optimal - objective value X``; ``Optimal (within gap tolerance) - objective value X``;
    ``Stopped on time - objective value X``; ``Stopped on time (no integer solution - continuous
    used) - objective value X``; ``Infeasible - objective value X``; ``Integer infeasible - ...``;
    ``Unbounded - ...``; ``Stopped on iterations|nodes|solutions|difficulties|ctrl-c ...``.
    """
    line = status_line.strip()
    incumbent, bound = _parse_cbc_log(log) if log else (None, None)
    if line.startswith("Optimal - ") or line == "Optimal":
        return _Raw("optimal", "CBC proved optimality", True, incumbent, incumbent)
    if line.startswith("Optimal"):  # "Optimal (within gap tolerance)"
        return _Raw("feasible", "stopped within the requested relative gap", True, incumbent, bound)
    if line.startswith(("Infeasible", "Integer infeasible")):
        return _Raw("infeasible", "CBC proved that no 0/1 assignment satisfies the constraints")
    if line.startswith("Unbounded"):
        return _Raw("unbounded", "the objective can grow without limit")
    if line.startswith("Stopped"):
        reason = line.split(" - ")[0].replace("Stopped on", "").strip()
        if reason.startswith("time"):
            reason = _time_limit_text(time_limit)
        else:
            reason = f"CBC stopped on {reason}"
        if "objective value" in line and "no integer solution" not in line:
            return _Raw("feasible", f"{reason} with an incumbent", True, incumbent, bound)
        return _Raw("no-solution", f"{reason.split(' (')[0]} before any feasible assignment was found")
    return _Raw("error", f"unrecognised CBC status line {line!r}")


def _run_cbc(
    model: _Model,
    *,
    time_limit: float | None,
    gap: float | None,
    threads: int,
    warm: bool,
    msg: bool,
) -> _Raw:
    path = _cbc_path()
    if path is None:  # pragma: no cover - checked by _resolve_solver
        return _Raw("error", "CBC executable not found")

    class _Cbc(pulp.COIN_CMD):
        """COIN_CMD that keeps CBC's raw status line (PuLP's mapping loses "within gap")."""

        status_line = ""

        def get_status(self, filename: str) -> Any:
            with open(filename) as fh:
                type(self).status_line = fh.readline()
            return super().get_status(filename)

    with tempfile.TemporaryDirectory(prefix="budgetplan-cbc-") as tmp:
        log_path = None if msg else os.path.join(tmp, "cbc.log")
        cmd = _Cbc(
            path=path,
            msg=msg,
            timeLimit=time_limit,
            gapRel=gap,
            threads=threads,
            warmStart=warm,
            logPath=log_path,
            options=list(_CBC_SEEDS),
        )
        cmd.tmpDir = tmp  # .mps/.sol/.mst files land here and vanish with the directory
        try:
            model.prob.solve(cmd)
        except pulp.PulpSolverError as exc:
            return _Raw("error", f"CBC failed: {' '.join(str(exc).split())}")
        log = None
        if log_path is not None and os.path.exists(log_path):
            with open(log_path, errors="replace") as fh:
                log = fh.read()
    raw = _to_our_sense(classify_cbc(_Cbc.status_line, log, time_limit))
    sol_status = model.prob.sol_status
    if raw.has_values and sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return _Raw("error", f"CBC status line {_Cbc.status_line.strip()!r} but PuLP sol_status {sol_status}")
    return raw


_highs_lock = threading.Lock()
_highs_state: dict[str, Any] = {"banner": False, "threads": None}


def _quiet_first_highs() -> None:
    """Create the process's first ``Highs`` with C-level stdout muted, swallowing HiGHS's banner."""
    import highspy

    if _highs_state["banner"]:
        return
    _highs_state["banner"] = True
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real fd 1: nothing to protect
        highspy.Highs()
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        highspy.Highs()
        try:
            import ctypes

            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):  # pragma: no cover - non-POSIX libc
            pass
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def classify_highs(
    model_status: str,
    has_solution: bool,
    requested_gap: float | None,
    incumbent: float | None,
    bound: float | None,
    time_limit: float | None,
) -> _Raw:
    """Map a HiGHS model status name (``"kOptimal"``, ...) and solution presence to a raw outcome."""
    if not math.isfinite(bound if bound is not None else math.nan):
        bound = None
    if model_status == "kOptimal" and has_solution:
        abs_gap = abs(bound - incumbent) if (bound is not None and incumbent is not None) else None
        if not requested_gap or (abs_gap is not None and abs_gap <= OPTIMALITY_ABS_GAP):
            return _Raw("optimal", "HiGHS proved optimality", True, incumbent, incumbent)
        return _Raw("feasible", "stopped within the requested relative gap", True, incumbent, bound)
    if model_status == "kInfeasible":
        return _Raw("infeasible", "HiGHS proved that no 0/1 assignment satisfies the constraints")
    if model_status == "kUnbounded":
        return _Raw("unbounded", "the objective can grow without limit")
    if model_status == "kUnboundedOrInfeasible":
        return _Raw("error", "HiGHS could not tell infeasible from unbounded")
    limits = {
        "kTimeLimit": _time_limit_text(time_limit),
        "kIterationLimit": "HiGHS iteration limit reached",
        "kSolutionLimit": "HiGHS solution limit reached",
        "kMemoryLimit": "HiGHS memory limit reached",
        "kInterrupt": "HiGHS was interrupted",
        "kHighsInterrupt": "HiGHS was interrupted",
        "kObjectiveBound": "HiGHS objective bound reached",
        "kObjectiveTarget": "HiGHS objective target reached",
    }
    if model_status in limits:
        if has_solution:
            return _Raw("feasible", f"{limits[model_status]} with an incumbent", True, incumbent, bound)
        return _Raw("no-solution", f"{limits[model_status]} before any feasible assignment was found")
    return _Raw("error", f"HiGHS ended with model status {model_status}")


def _highs_lp(canon: _Canon) -> Any:
    """The model as a ``highspy.HighsLp`` built from arrays (no PuLP objects): columns are
    ``canon.modelled`` in order, rows the constraints then the implications, both sorted by name;
    **minimise** ``_SENSE * objective`` like the CBC model."""
    import highspy
    import numpy as np

    inf = highspy.kHighsInf
    column = {name: j for j, name in enumerate(canon.modelled)}
    n = len(canon.modelled)
    binary_set = set(canon.binaries)
    lower = np.zeros(n)
    upper = np.full(n, inf)
    integrality = []
    for j, name in enumerate(canon.modelled):
        if name in binary_set or name in canon.integers:
            if name in canon.fixed:
                lower[j] = upper[j] = canon.fixed[name]
            else:
                upper[j] = canon.integers.get(name, 1)
            integrality.append(highspy.HighsVarType.kInteger)
        else:
            integrality.append(highspy.HighsVarType.kContinuous)
    cost = np.zeros(n)
    for v, c in canon.objective_terms:
        cost[column[v]] = _SENSE * c
    starts, index, value, row_upper = [0], [], [], []
    for con, terms, const in canon.constraints:
        if not terms:
            continue  # constant-only: already checked by _bound_infeasibility
        index.extend(column[v] for v, _ in terms)
        value.extend(c for _, c in terms)
        starts.append(len(index))
        row_upper.append(con.bound - const)
    for imp in canon.implications:
        if imp.lhs == imp.rhs:
            continue
        index.extend((column[imp.lhs], column[imp.rhs]))
        value.extend((1.0, -1.0))
        starts.append(len(index))
        row_upper.append(0.0)
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = len(row_upper)
    lp.col_cost_ = cost
    lp.col_lower_ = lower
    lp.col_upper_ = upper
    lp.row_lower_ = np.full(len(row_upper), -inf)
    lp.row_upper_ = np.array(row_upper, dtype=np.float64)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(value, dtype=np.float64)
    lp.integrality_ = integrality
    return lp


def _run_highs(
    canon: _Canon,
    *,
    time_limit: float | None,
    gap: float | None,
    threads: int,
    warm_start: Mapping[str, int],
    msg: bool,
    has_continuous: bool,
) -> tuple[_Raw, dict[str, float]]:
    """Solve with highspy directly; the raw outcome and, when it has one, every modelled variable's value."""
    import highspy
    import numpy as np

    with _highs_lock:
        if not msg:
            _quiet_first_highs()
        if _highs_state["threads"] != threads:
            # The scheduler is global: a different thread count than its first user's fails the run.
            highspy.Highs.resetGlobalScheduler(True)
            _highs_state["threads"] = threads
    try:
        h = highspy.Highs()
        h.setOptionValue("output_flag", bool(msg))
        h.setOptionValue("mip_rel_gap", 0.0 if gap is None else float(gap))  # HiGHS's 1e-4 would not be exact
        h.setOptionValue("threads", threads)
        h.setOptionValue("random_seed", _HIGHS_SEED)
        if time_limit is not None:
            h.setOptionValue("time_limit", float(time_limit))
        h.passModel(_highs_lp(canon))
        if warm_start:
            column = {name: j for j, name in enumerate(canon.modelled)}
            pairs = sorted((column[n], float(v)) for n, v in warm_start.items() if n in column)
            if pairs:
                idx, vals = zip(*pairs)
                h.setSolution(len(idx), np.array(idx, dtype=np.int32), np.array(vals, dtype=np.float64))
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
    except (AttributeError, TypeError, RuntimeError) as exc:  # highspy API drift, solver failure
        return _Raw("error", f"HiGHS failed: {type(exc).__name__}: {' '.join(str(exc).split())}"), {}
    status_name = getattr(status, "name", str(status).split(".")[-1])
    has_solution = int(info.primal_solution_status) == 2  # kSolutionStatusFeasible
    raw = _to_our_sense(
        classify_highs(
            status_name,
            has_solution,
            gap,
            float(info.objective_function_value) if has_solution else None,
            float(info.mip_dual_bound),
            time_limit,
        )
    )
    if raw.status == "error" and status_name == "kUnboundedOrInfeasible" and not has_continuous:
        # Every variable is bounded (0/1), so the model cannot be unbounded.
        raw = _Raw("infeasible", "HiGHS proved that no 0/1 assignment satisfies the constraints")
    if not raw.has_values:
        return raw, {}
    col = list(h.getSolution().col_value)
    return raw, {name: float(col[j]) for j, name in enumerate(canon.modelled)}


# --------------------------------------------------------------------------------------------------
# solve()
# --------------------------------------------------------------------------------------------------


def _relative_gap(raw: _Raw, objective: float) -> float | None:
    if raw.incumbent is None or raw.bound is None or not math.isfinite(raw.bound):
        return None
    diff = abs(raw.bound - raw.incumbent)
    if diff == 0.0:
        return 0.0
    return diff / abs(objective) if objective != 0.0 else math.inf


def solve(
    problem: SelectionProblem,
    *,
    solver: str = "auto",
    time_limit: float | None = None,
    gap: float | None = None,
    threads: int | None = None,
    warm_start: Mapping[str, int] | None = None,
    msg: bool = False,
) -> SolveResult:
    """Maximise ``problem.objective`` over 0/1 assignments satisfying all constraints.

    Args:
        problem: the selection problem.
        solver: ``"auto"`` (HiGHS when ``highspy`` is importable, else CBC), ``"cbc"`` or ``"highs"``.
        time_limit: wall-clock limit in seconds for the solver (> 0); ``None`` = no limit.
        gap: relative optimality gap at which the solver may stop, e.g. ``0.01`` for 1 %
            (in ``[0, 1)``); ``None`` = solve exactly. A run stopped on the gap is ``"feasible"``
            unless the solver also proved optimality.
        threads: solver threads (default 1, which keeps results reproducible).
        warm_start: a 0/1 value for some binaries (and ``0..upper`` for integer variables) to start
            from (CBC: missing ones start at 0; HiGHS: a partial start it tries to complete). A bad
            start is ignored by the solver.
        msg: show the solver's own log on stdout (CBC's gap is then not read, see module docstring).

    Returns:
        A :class:`SolveResult`; its assignment, when present, satisfies every constraint.

    Raises:
        InputError: unknown or unavailable solver, bad option values, or a malformed problem
            (unknown variable names, duplicate names, non-finite numbers, fixed values not 0/1).
    """
    start = time.perf_counter()
    name = _resolve_solver(solver)
    if time_limit is not None and not (_finite(time_limit, "time_limit") > 0):
        raise InputError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if gap is not None and not (0.0 <= _finite(gap, "gap") < 1.0):
        raise InputError(f"gap must be a relative gap in [0, 1), e.g. 0.01 for 1%, got {gap!r}")
    if threads is None:
        threads = 1
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    canon = _canonicalize(problem)
    warm: dict[str, int] = {}
    binary_set = set(canon.binaries)
    for var, val in (warm_start or {}).items():
        if var in canon.integers:
            upper = canon.integers[var]
            if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val <= upper:
                raise InputError(f"warm-start value of {var!r} must be an integer in 0..{upper}, got {val!r}")
            warm[str(var)] = val
            continue
        if var not in binary_set:
            raise InputError(f"warm start names {var!r}, which is not a binary or integer variable")
        warm[str(var)] = _zero_one(val, f"warm-start value of {var!r}")
    solver_label = {"cbc": "CBC", "highs": "HiGHS"}[name]

    def result(status: str, message: str, **kw: Any) -> SolveResult:
        return SolveResult(
            status=status,
            values=kw.pop("values", {}),
            objective=kw.pop("objective", None),
            gap=kw.pop("gap", None),
            seconds=time.perf_counter() - start,
            solver=name,
            message=message,
            **kw,
        )

    reason = _bound_infeasibility(canon)
    if reason is not None:
        return result("infeasible", f"infeasible: {reason}")

    raw_values: dict[str, float] = {}
    if canon.modelled and name == "highs":
        raw, raw_values = _run_highs(canon, time_limit=time_limit, gap=gap, threads=threads, warm_start=warm,
                                     msg=msg, has_continuous=bool(canon.continuous))
        for var_name, value in raw_values.items():
            if not math.isfinite(value):
                return result("error", f"error: {solver_label} gave no value for {var_name!r}")
    elif canon.modelled:
        model = _build_model(canon, warm)
        raw = _run_cbc(model, time_limit=time_limit, gap=gap, threads=threads, warm=bool(warm), msg=msg)
        if raw.has_values:
            for var_name, var in model.variables.items():
                value = var.varValue
                if value is None or not math.isfinite(value):
                    return result("error", f"error: {solver_label} gave no value for {var_name!r}")
                raw_values[var_name] = float(value)
    else:  # nothing to decide: every binary is unused or fixed
        raw = _Raw("optimal", "nothing to decide", True, 0.0, 0.0)

    if not raw.has_values:
        return result(raw.status, f"{raw.status}: {raw.detail} ({solver_label})")

    values: dict[str, int] = {}
    for b in canon.binaries:
        if b in raw_values:
            v = raw_values[b]
            r = round(v)
            if abs(v - r) > INTEGRALITY_TOLERANCE or r not in (0, 1):
                return result("error", f"error: {solver_label} gave binary {b!r} the value {v!r}, not 0/1")
            values[b] = int(r)
        else:
            values[b] = canon.fixed.get(b, 0)
    for var_name, upper in canon.integers.items():
        v = raw_values.get(var_name, 0.0)
        r = round(v)
        if abs(v - r) > INTEGRALITY_TOLERANCE * max(1.0, abs(v)) or not 0 <= r <= upper:
            return result("error", f"error: {solver_label} gave integer {var_name!r} the value {v!r}, "
                                   f"not in 0..{upper}")
        values[var_name] = int(r)
    continuous_values = {c: max(0.0, raw_values.get(c, 0.0)) for c in canon.continuous}
    violations = check_assignment(problem, values, continuous_values)
    if violations:
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        return result(
            "error",
            f"error: {solver_label} returned an assignment that fails the re-check: {violations[0]}{more}",
        )
    objective = problem.objective.value({**values, **continuous_values})
    rel_gap = 0.0 if raw.status == "optimal" else _relative_gap(raw, objective)
    bound = objective if raw.status == "optimal" else (
        raw.bound + canon.objective_constant if raw.bound is not None and math.isfinite(raw.bound) else None
    )
    if raw.status == "optimal":
        message = f"optimal: objective {_fmt(objective)} ({solver_label})"
    else:
        gap_text = "gap unknown" if rel_gap is None else f"gap {100 * rel_gap:.4g}%"
        message = f"feasible: {raw.detail}; objective {_fmt(objective)}, {gap_text} ({solver_label})"
    return result(
        raw.status,
        message,
        values=values,
        objective=objective,
        gap=rel_gap,
        continuous_values=continuous_values,
        bound=bound,
    )
