"""How planning scales with the model: a ladder from MobileNetV2-w0.35 to a GPT-2-small-sized decoder.

Each model is planned in a fresh process (so peak memory is its own), on ``host`` (budget: 30 % of the way
from the frozen step to full fine-tuning, under the linear bound) and on ``cortex-m7`` at 512 KiB (the
microcontroller family; too small for the big models, whose ILP is then infeasible, but every stage still
runs). Printed per stage — trace, record, price, linear model, solve, re-price, report — wall seconds and
the process's peak resident memory during the stage, plus the neuron groups and the ILP's size. Another
fresh process runs one eager forward+backward of the same model (every parameter trained; the best of two
runs) as the reference: ``plan/eager`` is the ratio of the planner's total to that time, ``RSS/eager`` the
ratio of the planning process's peak resident memory to the eager process's.

Stages (what is timed):

* trace — ``torch.fx.symbolic_trace`` or ``torch.export`` (:func:`budgetplan.model.tracing.trace_model`);
* record — one recording pass over the graph (:func:`budgetplan.model.graph.build_layer_graph`);
* price — what every update set's pricing starts from: the full backward analysis (host; saved-tensor
  rules, workspace probes) or the microcontroller memory layout (``mcu``);
* linear model — the bound's expressions and the classes of interchangeable groups;
* solve — building and solving the ILP, then deriving the update set;
* re-price — the exact model on the chosen update set (timed as a second call of ``Planner.price``;
  the solve stage is the plan call minus it);
* report — the plan file's document and the HTML report.

The transformer models are built from ``transformers`` configs (no download: random weights), attention
through SDPA. The ladder's slope is the least-squares slope of log(seconds) on log(groups) per stage,
over the host rows (1 = linear in groups). Writes ``--svg`` (default ``scale.svg``): seconds against
groups on log–log axes, one line per stage. Then the issue's calls, each in a fresh process:
``budgetplan.plan(model, x, target="host", ram=...)`` on ViT-Base (600M) and GPT-2 (1G), end to end,
against the eager reference (time and peak RSS). ``--cli`` also times ``budgetplan analyze mobilenetv2-w0.35
--target cortex-m7 --ram 256k`` against ``python -c "import torch"`` (medians of 5).

Run: ``nice -n 10 .venv/bin/python benchmarks/scale.py [--models mobilenetv2-w0.35,resnet50,vit-small,vit-base,gpt2]
[--svg scale.svg] [--cli]`` (about 10 minutes on 2 shared cores; GPT-2 needs ~3 GB).
Needs the ``bench`` extra (``pip install -e '.[bench]'``: transformers).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

print = functools.partial(print, flush=True)

MODELS = ["mobilenetv2-w0.35", "resnet50", "vit-small", "vit-base", "gpt2"]
STAGES = ["trace", "record", "price", "linear model", "solve", "re-price", "report"]
TARGETS = [("host", None), ("cortex-m7", 512 * 1024)]
HOST_FRACTION = 0.3  # host budget: this far from the frozen step's bound to full fine-tuning's
GOALS = [("vit-base", "600M"), ("gpt2", "1G")]  # the calls: plan() end to end, fresh process


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def build_model(name: str) -> tuple[Any, Any]:
    """The model (train mode) and its example input."""
    import torch
    from torch import nn

    class Logits(nn.Module):
        """A transformers model that returns its logits tensor (the planner's and eager's loss input)."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).logits

    torch.manual_seed(0)
    if name in ("mobilenetv2-w0.35", "resnet50"):
        from budgetplan.model import zoo

        model, entry = zoo.build(name)
        return model.train(), torch.randn(entry.input_shape)
    if name.startswith("vit-"):
        from transformers import ViTConfig, ViTForImageClassification

        hidden, heads = {"vit-small": (384, 6), "vit-base": (768, 12)}[name]
        config = ViTConfig(hidden_size=hidden, num_hidden_layers=12, num_attention_heads=heads,
                           intermediate_size=4 * hidden, image_size=224, patch_size=16, num_labels=1000,
                           attn_implementation="sdpa")
        return Logits(ViTForImageClassification(config)).train(), torch.randn(1, 3, 224, 224)
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257,
                            attn_implementation="sdpa", use_cache=False)
        return Logits(GPT2LMHeadModel(config)).train(), torch.randint(0, 50257, (1, 256))
    raise SystemExit(f"unknown model {name!r}; use one of: {', '.join(MODELS)}")


# --------------------------------------------------------------------------------------------------
# Peak resident memory per stage
# --------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples the process's resident memory every 2 ms; :meth:`reset` starts a new stage."""

    def __init__(self) -> None:
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def reset(self) -> None:
        self.peak = _rss_bytes()

    def read(self) -> int:
        self.peak = max(self.peak, _rss_bytes())
        return self.peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _max_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------------
# Child processes: one plan, one eager step
# --------------------------------------------------------------------------------------------------


def child_plan(name: str, target_name: str, ram: int | None) -> dict[str, Any]:
    from budgetplan.emit.plan_file import plan_document
    from budgetplan.emit.report_html import render_html
    from budgetplan.model.graph import build_layer_graph
    from budgetplan.model.modes import training_modes
    from budgetplan.model.tracing import trace_model
    from budgetplan.model.update_set import UpdateSet
    from budgetplan.pricing.gradient_flow import full_backward
    from budgetplan.selection.planner import Planner
    from budgetplan.targets import resolve_target

    model, x = build_model(name)
    target = resolve_target(target_name)
    monitor = PeakRss()
    out: dict[str, Any] = {"model": name, "target": target_name, "stages": {}, "rss": {}}
    clock = [time.perf_counter()]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        out["stages"][stage] = now - clock[0]
        out["rss"][stage] = monitor.read()
        clock[0] = time.perf_counter()
        monitor.reset()

    out["start_rss"] = _rss_bytes()
    monitor.reset()
    clock[0] = time.perf_counter()
    with training_modes(model, "frozen"):
        traced = trace_model(model, (x,))
        lap("trace")
        graph = build_layer_graph(traced, (x,))
        lap("record")
    scout = Planner(graph, target, 1)  # budget-independent parts, cached on the graph
    if target.family != "mcu":
        full_backward(graph)
    _ = scout.layout
    lap("price")
    linear = scout.linear_model
    scout.interchangeable()
    lap("linear model")
    if ram is None:
        frozen = linear.peak({})
        everything = linear.peak(linear.assignment(UpdateSet({n: None for n in graph.parameters}), graph))
        ram = int(frozen + HOST_FRACTION * (everything - frozen))
    planner = Planner(graph, target, ram, time_limit=120.0)
    result = planner.plan()
    plan_seconds = time.perf_counter() - clock[0]
    plan_rss = monitor.read()
    monitor.reset()
    started = time.perf_counter()
    planner.price(result.update)
    reprice = time.perf_counter() - started
    out["stages"]["solve"] = plan_seconds - reprice
    out["rss"]["solve"] = plan_rss
    out["stages"]["re-price"] = reprice
    out["rss"]["re-price"] = monitor.read()
    monitor.reset()
    clock[0] = time.perf_counter()
    document = plan_document(result, graph, target, model=name, optimizer="sgd", reorder=True)
    render_html(document)
    lap("report")
    monitor.stop()
    out.update(
        budget=ram, groups=len(linear.groups), points=len(linear.rows), nonzeros=len(linear.rows.cols),
        ilp_variables=(result.solver or {}).get("variables"), ilp_constraints=(result.solver or {}).get("constraints"),
        ilp_nonzeros=(result.solver or {}).get("nonzeros"), status=(result.solver or {}).get("status"),
        fits=result.fits, solver_seconds=(result.solver or {}).get("seconds"), peak_rss=_max_rss(),
        record_values=graph.cache.get("record values", "?"), trace_method=traced.method,
    )
    return out


def child_goal(name: str, ram: str) -> dict[str, Any]:
    """The issue's call, end to end: ``budgetplan.plan(model, x, target="host", ram=ram)``."""
    import budgetplan

    model, x = build_model(name)
    started = time.perf_counter()
    result = budgetplan.plan(model, x, target="host", ram=ram)
    return {"model": name, "ram": ram, "seconds": time.perf_counter() - started, "peak_rss": _max_rss(),
            "fits": result.fits, "status": (result.solver or {}).get("status")}


def child_eager(name: str) -> dict[str, Any]:
    import torch

    model, x = build_model(name)
    start_rss = _rss_bytes()
    times = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        out = model(x)
        out.float().pow(2).mean().backward()
        times.append(time.perf_counter() - started)
        del out
    return {"model": name, "seconds": min(times), "first_seconds": times[0], "peak_rss": _max_rss(),
            "start_rss": start_rss, "threads": torch.get_num_threads()}


def _run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# The CLI's own work
# --------------------------------------------------------------------------------------------------


def cli_ratio(repeats: int = 5) -> dict[str, float]:
    """Median wall seconds of ``budgetplan analyze mobilenetv2-w0.35 --target cortex-m7 --ram 256k`` and
    of ``python -c "import torch"``; the CLI's own work is the difference."""
    exe = Path(sys.executable).with_name("budgetplan")
    commands = {
        "import torch": [sys.executable, "-c", "import torch"],
        "analyze": [str(exe), "analyze", "mobilenetv2-w0.35", "--target", "cortex-m7", "--ram", "256k"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeats):
        for key, cmd in commands.items():  # interleaved: both see the same machine load
            started = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=False)
            times[key].append(time.perf_counter() - started)
    torch_s = statistics.median(times["import torch"])
    cli_s = statistics.median(times["analyze"])
    return {"import_torch_s": torch_s, "analyze_s": cli_s, "own_work_s": cli_s - torch_s,
            "ratio": (cli_s - torch_s) / torch_s}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _slope(points: list[tuple[float, float]]) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else None


COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17202a"]


def write_svg(rows: list[dict[str, Any]], path: Path) -> None:
    """Seconds per stage (and in total) against groups, log–log, host rows."""
    series = {stage: [(r["groups"], r["stages"][stage]) for r in rows] for stage in STAGES}
    series["total"] = [(r["groups"], sum(r["stages"].values())) for r in rows]
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [max(y, 1e-3) for pts in series.values() for _, y in pts]
    lx0, lx1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    w, h, left, right, top, bottom = 760, 460, 70, 190, 30, 50
    pw, ph = w - left - right, h - top - bottom

    def px(x: float) -> float:
        return left + (math.log10(x) - lx0) / max(lx1 - lx0, 1) * pw

    def py(y: float) -> float:
        return top + ph - (math.log10(max(y, 1e-3)) - ly0) / max(ly1 - ly0, 1) * ph

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
            f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>'),
           (f'<text x="{left}" y="18" font-size="14">budgetplan: seconds per stage against neuron groups '
            f'(host, log–log)</text>')]
    for e in range(lx0, lx1 + 1):
        x = px(10 ** e)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">1e{e}</text>')
    for e in range(ly0, ly1 + 1):
        y = py(10 ** e)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10 ** e:g} s</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 10}" text-anchor="middle">neuron groups</text>')
    for k, (name, pts) in enumerate(series.items()):
        pts = sorted(pts)
        colour = COLOURS[k % len(COLOURS)]
        width = 2.5 if name == "total" else 1.5
        line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="{width}"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>')
        slope = _slope(pts)
        label = f"{name} (slope {slope:.2f})" if slope is not None else name
        ly = top + 14 + 18 * k
        out.append(f'<line x1="{left + pw + 12}" y1="{ly - 4}" x2="{left + pw + 32}" y2="{ly - 4}" '
                   f'stroke="{colour}" stroke-width="{width}"/><text x="{left + pw + 38}" y="{ly}">{label}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--svg", default="scale.svg")
    parser.add_argument("--cli", action="store_true", help="also time the CLI against import torch")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, name, *rest = args.child
        if kind == "eager":
            result = child_eager(name)
        elif kind == "goal":
            result = child_goal(name, rest[0])
        else:
            ram = int(rest[1]) if len(rest) > 1 and rest[1] != "-" else None
            result = child_plan(name, rest[0], ram)
        print(json.dumps(result))
        return

    rows: list[dict[str, Any]] = []
    stage_cols = " ".join(f"{s:>12s}" for s in STAGES)
    print(f"{'model':18s} {'target':9s} {'groups':>7s} {'ILP vars/cons/nz':>18s} {stage_cols} {'total s':>8s} "
          f"{'eager s':>8s} {'plan/eager':>10s} {'RSS MB':>7s} {'eager MB':>8s} {'RSS/eager':>9s} status")
    for name in args.models.split(","):
        eager = _run_child(["--child", "eager", name])
        for target_name, ram in TARGETS:
            r = _run_child(["--child", "plan", name, target_name, str(ram) if ram else "-"])
            if "error" in r:
                print(f"{name:18s} {target_name:9s} failed: {r['error']}")
                continue
            total = sum(r["stages"].values())
            cells = " ".join(f"{r['stages'][s]:6.2f}s/{_mb(r['rss'][s]):>4s}" for s in STAGES)
            e_s = eager.get("seconds")
            ratio = f"{total / e_s:10.1f}" if e_s else f"{'-':>10s}"
            rss_ratio = f"{r['peak_rss'] / eager['peak_rss']:9.2f}" if eager.get("peak_rss") else f"{'-':>9s}"
            size = f"{r['ilp_variables']}/{r['ilp_constraints']}/{r['ilp_nonzeros']}"
            print(f"{name:18s} {target_name:9s} {r['groups']:7d} {size:>18s} {cells} {total:8.2f} "
                  f"{(e_s or 0):8.2f} {ratio} {_mb(r['peak_rss']):>7s} {_mb(eager.get('peak_rss')):>8s} "
                  f"{rss_ratio} {r['status']}{'' if r['fits'] else ' (no fit)'}")
            r["eager"] = eager
            if target_name == "host":
                rows.append(r)
    print("cells: seconds / peak resident MB of the planning process during the stage")
    if len(rows) >= 2:
        for stage in [*STAGES, "total"]:
            pts = [(r["groups"], sum(r["stages"].values()) if stage == "total" else r["stages"][stage]) for r in rows]
            slope = _slope(pts)
            print(f"slope of log(seconds) on log(groups), {stage:12s}: {slope:.2f}" if slope is not None else
                  f"slope {stage}: -")
        write_svg(rows, Path(args.svg))
        print(f"plot: {args.svg}")
    eagers = {r["model"]: r["eager"] for r in rows}
    for name, ram in GOALS:
        if name not in args.models.split(","):
            continue
        g = _run_child(["--child", "goal", name, ram])
        e = eagers.get(name) or _run_child(["--child", "eager", name])
        if "error" in g or "error" in e:
            print(f"goal {name}: failed: {g.get('error') or e.get('error')}")
            continue
        print(f"goal {name}: budgetplan.plan(model, x, target='host', ram='{ram}') {g['seconds']:.2f} s "
              f"({g['status']}, fits {g['fits']}) = {g['seconds'] / e['seconds']:.1f} x one eager forward+backward "
              f"({e['seconds']:.2f} s); peak RSS {_mb(g['peak_rss'])} MB = {g['peak_rss'] / e['peak_rss']:.2f} x "
              f"eager's {_mb(e['peak_rss'])} MB")
    if args.cli:
        c = cli_ratio()
        print(f"CLI: analyze mobilenetv2-w0.35 --target cortex-m7 --ram 256k {c['analyze_s']:.2f} s, "
              f"import torch {c['import_torch_s']:.2f} s (medians of 5): own work {c['own_work_s']:.2f} s = "
              f"{c['ratio']:.2f} x import torch")


if __name__ == "__main__":
    main()
