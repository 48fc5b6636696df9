"""Compiled-step benchmark: arena bytes vs the schedule's peak and the plan's predicted peak.

For a few zoo models × plans (ILP plans on the ``host`` target and on ``cortex-m7``), it runs what
``budgetplan export`` runs (plan → compiled module → scheduled training-step graph → arena → check →
eager comparison) and prints, in bytes: the arena, the schedule's peak of live arena bytes (the arena's
lower bound), the same graph's peak without reordering, the plan's predicted peak on its target, the
fragmentation overhead (arena / peak − 1), whether the emitted step matched an eager step, and the build
time (trace, profile, schedule, arena; seconds).

On ``host`` plans the arena holds the float32 PyTorch graph's activations, gradients and temporaries;
parameters and the input are outside it (``outside`` column), and the predicted peak is PyTorch eager's
(every gradient kept to the end, parameters and input included), so compare it with arena + outside.
On ``cortex-m7`` plans the arena is the device's (docs/export.md): TinyEngine's int8 tensors as the plan
priced them, trained weights included, so the plan's peak is its lower bound; ``peak live`` is then
that bound, ``frag %`` what the placement adds, ``first fit`` TinyEngine's own placement (bytes), and
``no-reorder``/``outside`` describe the float32 step of ``step.py``.

Run: ``.venv/bin/python benchmarks/arena.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

from budgetplan.runtime.device_step import build_device_step
from budgetplan.pipeline import analyze_model
from budgetplan.emit.plan_file import dumps_plan

print = functools.partial(print, flush=True)  # noqa: A001 - rows appear as they are computed

CASES = [
    ("tinycnn", (1, 3, 32, 32), "host", "512k"),
    ("tinycnn", (1, 3, 32, 32), "cortex-m7", "64k"),
    ("vit-tiny", (1, 3, 32, 32), "host", "2M"),
    ("mobilenetv2-w0.35", (1, 3, 64, 64), "host", "8M"),
    ("mobilenetv2-w0.35", (1, 3, 64, 64), "cortex-m7", "128k"),
    ("mcunet", (1, 3, 64, 64), "cortex-m7", "160k"),
    ("mcunet-5fps-tt", (1, 3, 128, 128), "cortex-m7", "256k"),
]


def main() -> None:
    header = (f"{'model':18s} {'input':>9s} {'target':>9s} {'budget':>6s} {'updates':>7s} {'arena':>10s} "
              f"{'peak live':>10s} {'frag %':>7s} {'first fit':>10s} {'no-reorder':>10s} {'outside':>10s} "
              f"{'plan peak':>10s} {'eager':>6s} {'build s':>7s}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, target, ram in CASES:
            analysis = analyze_model(name, target=target, ram=ram, input_shape=shape, time_limit=30.0)
            plan = Path(tmp) / f"{name}-{target}.json"
            plan.write_text(dumps_plan(analysis.document))
            started = time.perf_counter()
            build = build_device_step(name, plan)
            seconds = time.perf_counter() - started
            a = build.arena
            outside = sum(build.step.outside_bytes().values())
            first_fit = "-" if build.device_arena is None else str(build.device_arena.first_fit.arena_bytes)
            print(f"{name:18s} {'x'.join(map(str, shape[2:])):>9s} {target:>9s} {ram:>6s} "
                  f"{len(build.step.updates):7d} {a.arena_bytes:10d} {a.peak_live_bytes:10d} "
                  f"{100 * a.fragmentation:7.2f} {first_fit:>10s} {build.step.unscheduled_peak_bytes:10d} "
                  f"{outside:10d} {build.plan_peak_bytes:10d} {build.matches_eager!s:>6s} {seconds:7.1f}")


if __name__ == "__main__":
    main()
