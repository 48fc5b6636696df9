"""tiny-training's memory ladder, its published schemes against the ILP, and the real models at 256 KiB.

Three tables on tiny-training's own models (the zoo built-ins ``mbv2-w0.35-tt``, ``mcunet-5fps-tt``,
``proxyless-w0.3-tt``: the architectures of its ``.pkl`` files), 128×128, batch 1, cortex-m7 (STM32F746,
256 KiB budget), priced by budgetplan's mcu cost model (TinyEngine's runtime, docs/cost-model.md):

1. **The ladder** full update → sparse update → + operator reordering → + in-place depthwise convs →
   + fused update, for each of the model's five published schemes (``tt:<model>/<label>``), beside the
   paper's measured peaks (Lin et al. 2022: full / sparse / sparse + reordering). For every rung: the
   peak in KiB and where it sits; for the last rung, the largest tensors live at the peak.
2. **The ILP against the hand-searched schemes**: for each of the 15 schemes, the ILP plans with budget =
   that scheme's priced peak (objective: parameters trained); its plan is re-priced with the exact
   model. Columns: the scheme's label and tiny-training's analytic memory of it (its label
   convention, KiB), its parameters, the ILP's parameters, both peaks, and whether the ILP's fits.
3. **What ``analyze`` says at 256 KiB** for the three models, the zoo's look-alikes
   (``mobilenetv2-w0.35``, ``mcunet``, ``proxylessnas-w0.3``) and, when ``transformers`` is installed
   (``pip install -e '.[experiments]'``), a transformers ``MobileNetV2`` (depth 0.35, 128×128, built from
   its config, no download) saved with ``torch.export``: fits or not, trained share, where the peak
   is and what holds it there.

Run: ``.venv/bin/python benchmarks/tinyengine_ladder.py`` (a minute or two on 2 cores; ``--quick``: the
ladder only).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import torch

from budgetplan.model import zoo
from budgetplan.model.graph import build_layer_graph
from budgetplan.model.tracing import trace_model
from budgetplan.model.update_set import UpdateSet, from_sparse_update_config
from budgetplan.pipeline import analyze_model
from budgetplan.pricing.mcu.exact import McuTrainingEstimate, estimate_mcu, mcu_layout
from budgetplan.selection.planner import Planner
from budgetplan.targets import load_target

print = functools.partial(print, flush=True)  # rows appear as they are computed

M7 = load_target("cortex-m7")
KIB = 1024
MODELS = [  # zoo name, scheme key, paper: full / sparse / sparse + reorder (KB, measured)
    ("mbv2-w0.35-tt", "mbv2-w0.35", (2939, 335, 141)),
    ("proxyless-w0.3-tt", "proxyless-w0.3", (2745, 326, 135)),
    ("mcunet-5fps-tt", "mcunet-5fps", (3650, 560, 173)),
]
LABELS = {"mbv2-w0.35": ("49kb", "73kb", "99kb", "123kb", "138kb"),
          "mcunet-5fps": ("49kb", "74kb", "99kb", "124kb", "148kb"),
          "proxyless-w0.3": ("49kb", "74kb", "98kb", "120kb", "148kb")}
RUNGS = [  # name, runtime options
    ("sparse", {"reorder": False, "inplace": False, "fuse_update": False}),
    ("+reorder", {"reorder": True, "inplace": False, "fuse_update": False}),
    ("+in-place", {"reorder": True, "inplace": True, "fuse_update": False}),
    ("+fused", {"reorder": True, "inplace": True, "fuse_update": True}),
]


def _graph(name: str):
    model, entry = zoo.build(name)
    x = torch.randn(entry.input_shape)
    return model, build_layer_graph(trace_model(model, (x,)), (x,))


def _at(est: McuTrainingEstimate) -> str:
    """Where the peak sits, shortened: phase and layer."""
    phase, _, label = est.peak_at.partition(":")
    return f"{phase[:3]} {label.replace('.conv', '').replace(' (weight update)', ' (upd)')}"


def _holders(est: McuTrainingEstimate, n: int = 4) -> str:
    """The largest tensors live at the peak (KiB), and the kernel scratch."""
    step = next(i for i, p in enumerate(est.timeline) if f"{p.phase}:{p.label}" == est.peak_at)
    live = sorted((t for t in est.device_tensors if t.first <= step <= t.last), key=lambda t: -t.nbytes)
    weights = sum(t.nbytes for t in live if t.kind in ("weight", "bias"))
    parts = [f"{t.name} {t.nbytes / KIB:.1f}" for t in live if t.kind not in ("weight", "bias")][:n]
    parts.append(f"trained weights+biases {weights / KIB:.1f}")
    parts.append(f"scratch {sum(est.scratch.values()) / KIB:.1f}")
    return ", ".join(parts)


def ladder() -> None:
    print("1. The ladder: peak KiB (where), 128x128, batch 1, cortex-m7; paper = Lin et al. 2022, measured KB")
    header = f"{'model':18s} {'scheme':6s} " + " ".join(f"{r:>26s}" for r, _ in RUNGS)
    for name, key, paper in MODELS:
        model, graph = _graph(name)
        layout = mcu_layout(graph, M7)
        full = estimate_mcu(graph, UpdateSet.full(model), M7, layout=layout, **RUNGS[0][1])
        frozen = estimate_mcu(graph, UpdateSet.none(), M7, layout=layout)
        print()
        print(f"{name}: paper full {paper[0]} / sparse {paper[1]} / sparse+reorder {paper[2]} KB; "
              f"budgetplan full update {full.peak_bytes / KIB:.0f} KiB ({_at(full)}); the int8 forward alone "
              f"(nothing trained) {frozen.peak_bytes / KIB:.1f} KiB ({_at(frozen)})")
        print(header)
        last: list[tuple[str, McuTrainingEstimate]] = []
        for label in LABELS[key]:
            update = from_sparse_update_config(f"tt:{key}/{label}", model)
            cells = []
            for _, options in RUNGS:
                est = estimate_mcu(graph, update, M7, layout=layout, **options)
                cells.append(f"{est.peak_bytes / KIB:6.1f} {_at(est)[:19]:19s}")
            last.append((label, est))
            print(f"{name:18s} {label:6s} " + " ".join(f"{c:>26s}" for c in cells))
        for label, est in last:
            print(f"  {label} at the last rung: {_holders(est)}")


def schemes_vs_ilp() -> None:
    print()
    print("2. The ILP against tiny-training's schemes: budget = the scheme's priced peak (bytes), objective = "
          "parameters trained")
    print(f"{'model':18s} {'scheme':6s} {'tt KiB':>7s} {'scheme params':>13s} {'ILP params':>10s} {'x':>5s} "
          f"{'budget':>8s} {'ILP peak':>8s} {'fits':>5s} {'ILP s':>6s}")
    for name, key, _ in MODELS:
        model, graph = _graph(name)
        for label in LABELS[key]:
            update = from_sparse_update_config(f"tt:{key}/{label}", model)
            scheme = estimate_mcu(graph, update, M7)
            started = time.perf_counter()
            result = Planner(graph, M7, scheme.peak_bytes, time_limit=60.0).plan(strategy="ilp")
            seconds = time.perf_counter() - started
            ours, theirs = sum(result.estimate.trained_parameters.values()), sum(scheme.trained_parameters.values())
            tt_kib = scheme.tiny_training["kib"] if scheme.tiny_training else float("nan")
            print(f"{name:18s} {label:6s} {tt_kib:7.2f} {theirs:13,d} {ours:10,d} {ours / theirs:5.2f} "
                  f"{scheme.peak_bytes:8d} {result.estimate.peak_bytes:8d} {result.fits!s:>5s} {seconds:6.1f}")


def _hf_mobilenetv2(directory: Path) -> Path | None:
    """A transformers MobileNetV2 (depth 0.35, 128x128, 10 classes, random weights from its config) saved with
    torch.export, or None without transformers."""
    try:
        from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
    except ImportError:
        return None

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(pixel_values=x).logits

    config = MobileNetV2Config(depth_multiplier=0.35, image_size=128, num_labels=10)
    model = Logits(MobileNetV2ForImageClassification(config).eval())
    path = directory / "transformers-mobilenetv2-0.35.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 128, 128),)), str(path))
    return path


def real_models() -> None:
    print()
    print("3. analyze at 256 KiB on cortex-m7 (ILP, objective parameters)")
    print(f"{'model':38s} {'fits':>5s} {'trained':>9s} {'share %':>8s} {'peak KiB':>9s}  peak at / what holds it")
    with tempfile.TemporaryDirectory() as tmp:
        sources: list[tuple[str, object]] = [(n, n) for n in ("mbv2-w0.35-tt", "mcunet-5fps-tt", "proxyless-w0.3-tt",
                                                               "mobilenetv2-w0.35", "mcunet", "proxylessnas-w0.3")]
        hf = _hf_mobilenetv2(Path(tmp))
        if hf is None:
            print("(transformers is not installed: pip install -e '.[experiments]' for the transformers MobileNetV2)")
        else:
            sources.append(("transformers MobileNetV2 0.35 (.pt2)", str(hf)))
        for title, source in sources:
            analysis = analyze_model(source, target=M7, ram="256k", time_limit=60.0)  # type: ignore[arg-type]
            est = analysis.plan.estimate
            total = sum(m.numel for m in analysis.model_graph.graph.parameters.values())
            trained = sum(est.trained_parameters.values())
            print(f"{title:38s} {analysis.plan.fits!s:>5s} {trained:9,d} {100 * trained / total:8.2f} "
                  f"{est.peak_bytes / KIB:9.1f}  {est.peak_at}")
            print(f"{'':38s} {'':>5s} {'':>9s} {'':>8s} {'':>9s}  {_holders(est, 3)}")  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the ladder only")
    args = parser.parse_args()
    ladder()
    if not args.quick:
        schemes_vs_ilp()
        real_models()


if __name__ == "__main__":
    main()
