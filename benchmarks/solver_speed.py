"""CBC vs HiGHS on random "knapsack with layer set-up costs" selection problems (budgetplan.selection.solver).

Instance (seeded, sizes count *all* binaries):
  * layers l = 0..L-1 with 8, 16, 32 or 64 neuron groups each;
  * x_g  (train group g): importance score (float, log-normal) in the objective; costs
    parameter+gradient+optimizer bytes and weight-gradient FLOPs;
  * u_l  (layer l has trained groups): x_g <= u_l; costs the saved input activation (bytes) once;
  * a_l  (the activation gradient reaches layer l's output): u_l <= a_l and the chain a_l <= a_{l+1}
    (backprop runs from the loss down to the deepest trained layer); costs input-gradient FLOPs
    and a gradient buffer (bytes);
  * bytes <= 30 % and FLOPs <= 40 % of what training everything would need.

For each size it runs every available solver exactly (gap=None) and with gap=1 %, each under a
time limit, and prints status, objective, gap (relative, "?" = unknown) and wall time.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/solver_speed.py [--sizes 1000,5000,10000]
[--time-limit 300] [--seed 0]`` (about 10 minutes).

One run (CBC 2.10.3 bundled with PuLP 3.3.2, HiGHS 1.16.0; 2 cores at load average ~4, so times
are inflated and noisy; gap is the solver's bound-based gap, not the distance to the optimum):

     n solver   mode       status      objective        gap  seconds
  1000    cbc  exact      optimal        712.071    0.0000%     5.48
  1000    cbc  gap1%     feasible        711.976    0.3069%     1.99
  1000  highs  exact      optimal        712.071    0.0000%     5.61
  1000  highs  gap1%     feasible        712.059    0.2951%     2.10
  5000    cbc  exact      optimal       3669.903    0.0000%   150.93
  5000    cbc  gap1%     feasible       3669.883    0.0010%   147.19
  5000  highs  exact      optimal       3669.903    0.0000%    34.76
  5000  highs  gap1%     feasible       3669.853    0.6826%    29.39
 10000    cbc  exact      optimal       7425.410    0.0000%    44.62
 10000    cbc  gap1%     feasible       7411.512    0.2444%    13.73
 10000  highs  exact      optimal       7425.410    0.0000%    74.89
 10000  highs  gap1%     feasible       7425.253    0.0589%    96.87
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import time

from budgetplan.selection.solver import (
    Constraint,
    Implication,
    LinearExpr,
    SelectionProblem,
    available_solvers,
    solve,
)


def knapsack_with_setup(n_binaries: int, seed: int = 0) -> SelectionProblem:
    """A random selection problem with (about) ``n_binaries`` binaries; see the module docstring."""
    rng = random.Random(seed)
    binaries: list[str] = []
    objective: dict[str, float] = {}
    mem: dict[str, float] = {}
    flops: dict[str, float] = {}
    implications: list[Implication] = []
    layer = 0
    prev_a: str | None = None
    while len(binaries) < n_binaries:
        groups = min(rng.choice((8, 16, 32, 64)), max(1, n_binaries - len(binaries) - 2))
        u, a = f"u[{layer:05d}]", f"a[{layer:05d}]"
        binaries += [u, a]
        mem[u] = rng.randint(2_000, 200_000)  # saved input activation, bytes
        flops[u] = 0.0
        mem[a] = rng.randint(1_000, 100_000)  # activation-gradient buffer, bytes
        flops[a] = float(rng.randint(100_000, 5_000_000))  # input-gradient FLOPs
        implications.append(Implication(f"reach[{layer:05d}]", u, a))
        if prev_a is not None:
            implications.append(Implication(f"chain[{layer:05d}]", prev_a, a))  # a_{l-1} <= a_l
        per_group_mem = rng.randint(50, 5_000)
        for g in range(groups):
            x = f"x[{layer:05d}][{g:03d}]"
            binaries.append(x)
            objective[x] = rng.lognormvariate(0.0, 1.0)
            mem[x] = per_group_mem * rng.choice((2, 3, 4))  # weights+grad(+Adam) bytes
            flops[x] = float(rng.randint(10_000, 500_000))  # weight-gradient FLOPs
            implications.append(Implication(f"need[{layer:05d}][{g:03d}]", x, u))
        prev_a = a
        layer += 1
    return SelectionProblem(
        binaries=binaries,
        objective=LinearExpr(objective),
        constraints=[
            Constraint("memory", LinearExpr(mem), math.floor(0.3 * sum(mem.values())), "bytes"),
            Constraint("compute", LinearExpr(flops), math.floor(0.4 * sum(flops.values())), "FLOPs"),
        ],
        implications=implications,
    )


def _row(n: int, solver: str, mode: str, res, wall: float) -> str:
    gap = "?" if res.gap is None else f"{100 * res.gap:.4f}%"
    obj = "-" if res.objective is None else f"{res.objective:.3f}"
    return f"{n:>6} {solver:>6} {mode:>6} {res.status:>12} {obj:>14} {gap:>10} {wall:>8.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,5000,10000", help="binaries per instance, comma-separated")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per solve (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    solvers = available_solvers()
    print(f"python {platform.python_version()}, {platform.machine()}, solvers: {', '.join(solvers)}, "
          f"threads=1, time limit {args.time_limit:g} s per solve, seed {args.seed}")
    print(f"{'n':>6} {'solver':>6} {'mode':>6} {'status':>12} {'objective':>14} {'gap':>10} {'seconds':>8}")
    for n in (int(s) for s in args.sizes.split(",")):
        problem = knapsack_with_setup(n, seed=args.seed)
        for solver in solvers:
            for mode, gap in (("exact", None), ("gap1%", 0.01)):
                t0 = time.perf_counter()
                res = solve(problem, solver=solver, gap=gap, time_limit=args.time_limit)
                print(_row(len(problem.binaries), solver, mode, res, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main()
