"""Planner benchmark: ILP (CBC and HiGHS) vs greedy vs random, per model × budget, channel granularity.

For each instance it prints: group variables and the ILP's variables after the exact count
reformulation, solve time and status per solver, the objective (trained parameters) of ILP / greedy /
random, and whether every plan fits when re-priced with the exact cost model. It also times
``analyze``'s library path end to end (trace → price → solve → re-price) on the first budget, without
the Python/torch start-up (``import torch`` alone takes seconds on a loaded 2-core machine).

Distinct scores (the per-epoch re-solves of docs/reselection.md): every neuron gets its own
velocity-like score (log-normal, seeded; a neuron's score shared by its weight row and bias entry in
proportion to their elements, as ``VelocityTracker.group_scores`` does). For those, HiGHS is timed to a
1 % gap and to a proven optimum (``distinct 1% s``, ``distinct exact s``), and its objective is compared
with the greedy fill's under the same scores (``ilp/greedy``; at least 1 by construction, checked).

Run: ``.venv/bin/python benchmarks/solve.py [--vit-base]`` (a few minutes on 2 cores; ``--vit-base``
adds the transformers ViT-Base/16 at 224² on host, 600 MiB, distinct scores only: needs the ``bench``
extra).
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time
from pathlib import Path

from budgetplan.pipeline import analyze_model, trace_source
from budgetplan.selection.planner import Planner, plan_update
from budgetplan.selection.solver import available_solvers
from budgetplan.targets import resolve_target

print = functools.partial(print, flush=True)

TIME_LIMIT = 120.0  # seconds per solve; a solve stopped by it reports "feasible" (or "no-solution")

CASES = [
    ("mobilenetv2-w0.35", (1, 3, 128, 128), "cortex-m7", (256, 512)),
    ("mcunet", (1, 3, 128, 128), "cortex-m7", (256, 512)),
    ("proxylessnas-w0.3", (1, 3, 128, 128), "cortex-m7", (256, 512)),
    ("resnet18", (1, 3, 128, 128), "cortex-m7", (256, 1024)),
    ("resnet50", (1, 3, 224, 224), "alif-e7", (960, 4096)),
]


def velocity_like_scores(planner: Planner, seed: int = 0) -> dict[str, list[float]]:
    """One log-normal score per neuron of every grouped parameter, shared between a layer's weight row
    and bias entry by elements (what ``VelocityTracker.group_scores`` hands the planner)."""
    rng = random.Random(seed)
    model = planner.linear_model
    by_param: dict[str, list] = {}
    for g in model.groups:
        if not g.whole:
            by_param.setdefault(g.parameter, []).append(g)
    neuron: dict[tuple[str, int], float] = {}
    out: dict[str, list[float]] = {}
    for layer in planner.graph.group_owners():
        grouped = [p for p in layer.parameters if p in by_param]
        per_row = {p: by_param[p][0].elements / max(by_param[p][0].stop - by_param[p][0].start, 1) for p in grouped}
        total = sum(per_row.values())
        for p in grouped:
            out[p] = []
            for g in by_param[p]:
                v = sum(neuron.setdefault((layer.weight or p, c), rng.lognormvariate(0.0, 1.0))
                        for c in range(g.start, g.stop))
                out[p].append(v * per_row[p] / total)
    return out


def distinct_cells(planner: Planner, scores: dict[str, list[float]]) -> str:
    """HiGHS to 1 % and exact with distinct scores; objective relative to the greedy fill's."""
    greedy = planner.plan(strategy="greedy", scores=scores)
    cells = []
    best = None
    for gap in (0.01, None):
        planner.gap, planner.time_limit, planner.solver = gap, TIME_LIMIT, "highs"
        started = time.perf_counter()
        result = planner.plan(strategy="ilp", scores=scores)
        seconds = time.perf_counter() - started
        assert result.objective >= greedy.objective * (1 - 1e-9), "ILP below greedy"
        cells.append(f"{seconds:8.2f} {result.solver['status']:>9s}")
        best = result
    return " ".join(cells) + f" {best.objective / greedy.objective if greedy.objective else 1.0:12.4f}"


def main(cases: list | None = None, vit_base: bool = False) -> None:
    solvers = available_solvers()
    print(f"solvers: {', '.join(solvers)}")
    header = (f"{'model':18s} {'budget':>7s} {'groups':>6s} {'ilp vars':>8s} "
              + " ".join(f"{s + ' s':>8s} {s + ' status':>12s}" for s in solvers)
              + f" {'ilp obj':>9s} {'greedy':>9s} {'random':>9s} {'fits':>5s}"
              + f" {'distinct 1% s':>18s} {'distinct exact s':>18s} {'ilp/greedy':>12s}")
    print(header)
    print("-" * len(header))
    for name, shape, target_name, budgets_kib in CASES if cases is None else cases:
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
            planner = Planner(graph, target, budget)
            distinct = distinct_cells(planner, velocity_like_scores(planner)) if "highs" in solvers else "-"
            print(f"{name:18s} {kib:6d}k {first.groups_total:6d} {first.solver['variables']:8d} {cells} "
                  f"{first.objective:9.0f} {greedy.objective:9.0f} {rand.objective:9.0f} {fits!s:>5s} {distinct}")
            for r in results.values():
                if r.solver["status"] == "error":
                    print(f"{'':18s} {r.solver['name']} error: {r.solver['message']}")
                if r.solver["status"] == "optimal":
                    assert r.objective >= greedy.objective - 1e-6, "ILP below greedy"
        print(f"{'':18s} analyze end to end (library, after import): {end_to_end:.2f} s at "
              f"{budgets_kib[0]}k; solver {analysis.plan.solver['name']} {analysis.plan.solver['seconds']:.2f} s")
    if vit_base:
        sys.path.insert(0, str(Path(__file__).parent))
        from scale import build_model

        from budgetplan.selection.planner import planner_for

        model, x = build_model("vit-base")
        planner = planner_for(model, x, target="host", ram="600M")
        print(f"{'vit-base (host)':18s} {'600M':>7s} {len(planner.linear_model.groups):6d} distinct scores, "
              f"HiGHS to 1 % / exact, ilp/greedy: {distinct_cells(planner, velocity_like_scores(planner))}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-base", action="store_true")
    parser.add_argument("--models", help="comma-separated subset of the cases' models")
    options = parser.parse_args()
    chosen = [c for c in CASES if options.models is None or c[0] in options.models.split(",")]
    main(chosen, vit_base=options.vit_base)
