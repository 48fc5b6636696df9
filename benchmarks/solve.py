"""Planner benchmark: ILP (CBC and HiGHS) vs greedy vs random, per model × budget, channel granularity.

For each instance it prints: group variables and the ILP's variables after the exact count
reformulation, solve time and status per solver, the objective (trained parameters) of ILP / greedy /
random, and whether every plan fits when re-priced with the exact cost model. It also times
``analyze``'s library path end to end (trace → price → solve → re-price) on the first budget, without
the Python/torch start-up (``import torch`` alone takes seconds on a loaded 2-core machine).

Run: ``.venv/bin/python benchmarks/solve.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import functools
import time

from budgetplan.selection.solver import available_solvers
from budgetplan.pipeline import analyze_model, trace_source
from budgetplan.targets import resolve_target
from budgetplan.selection.planner import plan_update

print = functools.partial(print, flush=True)  # noqa: A001 - rows appear as they are computed

TIME_LIMIT = 120.0  # seconds per solve; a solve stopped by it reports "feasible" (or "no-solution")

CASES = [
    ("mobilenetv2-w0.35", (1, 3, 128, 128), "cortex-m7", (256, 512)),
    ("mcunet", (1, 3, 128, 128), "cortex-m7", (256, 512)),
    ("proxylessnas-w0.3", (1, 3, 128, 128), "cortex-m7", (256, 512)),
    ("resnet18", (1, 3, 128, 128), "cortex-m7", (256, 1024)),
    ("resnet50", (1, 3, 224, 224), "alif-e7", (960, 4096)),
]


def main(cases: list | None = None) -> None:
    solvers = available_solvers()
    print(f"solvers: {', '.join(solvers)}")
    header = (f"{'model':18s} {'budget':>7s} {'groups':>6s} {'ilp vars':>8s} "
              + " ".join(f"{s + ' s':>8s} {s + ' status':>12s}" for s in solvers)
              + f" {'ilp obj':>9s} {'greedy':>9s} {'random':>9s} {'fits':>5s}")
    print(header)
    print("-" * len(header))
    for name, shape, target_name, budgets_kib in cases or CASES:
        target = resolve_target(target_name)
        started = time.perf_counter()
        analysis = analyze_model(name, target=target, ram=budgets_kib[0] * 1024, input_shape=shape)
        end_to_end = time.perf_counter() - started
        graph = trace_source(name, input_shape=shape).graph
        for kib in budgets_kib:
            budget = kib * 1024
            results = {s: plan_update(graph, target, budget, strategy="ilp", solver=s, time_limit=TIME_LIMIT)
                       for s in solvers}
            greedy = plan_update(graph, target, budget, strategy="greedy")
            rand = plan_update(graph, target, budget, strategy="random", seed=0)
            first = results[solvers[0]]
            fits = all(r.fits or r.update.is_empty for r in (*results.values(), greedy, rand))
            cells = " ".join(f"{r.solver['seconds']:8.2f} {r.solver['status']:>12s}" for r in results.values())
            print(f"{name:18s} {kib:6d}k {first.groups_total:6d} {first.solver['variables']:8d} {cells} "
                  f"{first.objective:9.0f} {greedy.objective:9.0f} {rand.objective:9.0f} {str(fits):>5s}")
            for r in results.values():
                if r.solver["status"] == "optimal":
                    assert r.objective >= greedy.objective - 1e-6, "ILP below greedy"
        print(f"{'':18s} analyze end to end (library, after import): {end_to_end:.2f} s at "
              f"{budgets_kib[0]}k; solver {analysis.plan.solver['name']} {analysis.plan.solver['seconds']:.2f} s")


if __name__ == "__main__":
    main()
