"""Compiled training steps vs their plans, on models that ``tests/test_compile.py`` does not use.

For each model: calibrate BatchNorm statistics on random data (as a pretrained model's are), make a
plan with ``budgetplan.plan`` on the host target under a budget that forces channel subsets
(the forward-only peak plus 25 % of the gap to full training; the planner's own choice, not
hand-picked rows), compile it, and compare one real step measured by PyTorch's own accounting
(``budgetplan.runtime.measure.measure_step``: ``saved_tensors_hooks``, ``.grad``, optimizer state, live bytes
of a dispatch mode) with ``compiled.estimate(...)`` (the host cost model), for SGD and Adam:

  act       saved-for-backward activation bytes, predicted / measured, error
  grad      parameter-gradient bytes (rows only for subsets), predicted / measured, error
  opt       optimizer state bytes (0 with SGD), predicted / measured, error
  peak      peak bytes of the step, predicted / measured, error
  plan%     the plan's own predicted peak (``PlanResult.estimate``) vs the measured SGD peak
  uncomp%   predicted vs measured peak of the *uncompiled* model training the same tensors whole (eager
            PyTorch, no compile): when it shows the same error, the error is the model's eager code

Then three real optimizer steps (SGD with momentum 0.9, then Adam, each on a fresh compile) with a
scaled loss: ``frozen`` says whether every frozen weight and every frozen row stayed bit-identical
(``torch.equal`` on the state dict, buffers included), ``moved`` how many trained tensors changed in
their trained rows.

Errors are (predicted − measured) / measured. Run: ``.venv/bin/python benchmarks/compile_accuracy.py``
(three to four minutes on 2 shared cores).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import budgetplan
from budgetplan.model import zoo
from budgetplan.model.modes import graph_in_training_modes, training_modes
from budgetplan.runtime.compiled import CompiledModule
from budgetplan.runtime.measure import measure_step
from budgetplan.pipeline import estimate_update
from budgetplan.targets import resolve_target
from budgetplan.model.update_set import UpdateSet

ROOT = Path(__file__).resolve().parent.parent


def _styles() -> dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]]:
    spec = importlib.util.spec_from_file_location("model_styles", ROOT / "tests" / "model_styles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_styles"] = module
    spec.loader.exec_module(module)
    return module.STYLE_MODELS


STYLES = _styles()

# None of these is used by tests/test_compile.py (tv_resnet, tv_resnext, mobilenetv2-w0.35, vit-tiny,
# timm_vit, tinycnn).
MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "resnet18@64": lambda: (zoo.build("resnet18", num_classes=10)[0], (1, 3, 64, 64)),
    "mcunet@64": lambda: (zoo.build("mcunet", num_classes=10)[0], (1, 3, 64, 64)),
    "proxylessnas-w0.3@64": lambda: (zoo.build("proxylessnas-w0.3", num_classes=10)[0], (1, 3, 64, 64)),
    **{name: STYLES[name] for name in ("unet", "timm_mlp_mixer", "timm_convnext", "hf_vit_sdpa",
                                       "tv_mobilenetv3", "timm_efficientnet")},
}
SHARE = 0.25  # budget = forward-only peak + SHARE x (full-training peak - forward-only peak)


@dataclass
class Row:
    """One model's figures (bytes) and checks."""

    model: str
    subsets: int
    tensors: int
    figures: dict[str, tuple[int, int]]  # "act/sgd", ... -> (predicted, measured)
    plan_peak: int
    source: str  # "plan" (the planner's choice) or "derived" (explicit subsets of the plan's tensors)
    eager_peak: tuple[int, int]  # the uncompiled model training the same tensors whole: predicted, measured
    frozen_ok: bool
    moved: tuple[int, int]
    seconds: float


def calibrated(name: str) -> tuple[nn.Module, torch.Tensor]:
    model, shape = MODELS[name]()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.train()
        for _ in range(3):
            model(torch.randn(4, *shape[1:]))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    return model, x


def make_plan(model: nn.Module, x: torch.Tensor) -> tuple[object, str]:
    """The planner's choice under the budget (see :data:`SHARE`): ``(PlanResult, "plan")``. When the
    planner trains no channel subset there (small models: whole tensors are cheap), the same tensors
    with explicit subsets instead: every 2-D+ weight of the plan on rows ``[0:n/2]`` or, every other one,
    on the even rows (a copy, not a view), biases and norms whole: ``(UpdateSet, "derived")``."""
    host = resolve_target("host")
    graph = graph_in_training_modes(model, (x,), batchnorm="frozen")
    low = estimate_update(graph, UpdateSet.none(), host).peak_bytes
    high = estimate_update(graph, UpdateSet({n: None for n, _ in model.named_parameters()}), host).peak_bytes
    plan = budgetplan.plan(model, x, target="host", ram=int(low + SHARE * (high - low)),
                                   strategy="greedy")
    if plan.update.has_channel_subsets():
        return plan, "plan"
    shapes = {n: p.shape for n, p in model.named_parameters()}
    entries: dict[str, tuple[int, ...] | None] = {}
    for i, name in enumerate(plan.update.parameter_names()):
        rows = shapes[name][0] if len(shapes[name]) >= 2 else 0
        if rows >= 4:
            entries[name] = tuple(range(rows // 2)) if i % 2 == 0 else tuple(range(0, rows, 2))
        else:
            entries[name] = None
    return UpdateSet(entries), "derived"


def three_steps(model: nn.Module, plan: object, x: torch.Tensor, optimizer: str) -> tuple[bool, int, int]:
    """Three real steps on a fresh compile of a copy: (frozen bit-identical, trained tensors moved, trained)."""
    work = copy.deepcopy(model)
    compiled = budgetplan.compile(work, plan, example_inputs=x)
    update = compiled.update
    before = {k: v.clone() for k, v in compiled.state_dict().items()}
    params = compiled.trainable_parameters()
    opt = (torch.optim.SGD(params, lr=0.05, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=1e-2))
    for step in range(3):
        opt.zero_grad()
        xs = torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + step))
        # scaled: at random init early gradients can sit below float32's resolution for an SGD update
        (1e4 * compiled(xs).float().square().mean()).backward()
        opt.step()
    after = compiled.state_dict()
    params_by_name = dict(compiled.module.named_parameters())
    frozen_ok, moved, trained = True, 0, 0
    for key, old in before.items():
        new = after[key]
        if key not in params_by_name or not update.is_updated(key):
            frozen_ok &= torch.equal(new, old)
            continue
        chans = update.channels(key)
        trained += 1
        if chans is None:
            moved += int(not torch.equal(new, old))
            continue
        mask = torch.ones(old.shape[0], dtype=torch.bool)
        mask[list(chans)] = False
        frozen_ok &= torch.equal(new[mask], old[mask])
        moved += int(not torch.equal(new[~mask], old[~mask]))
    compiled.release()
    return frozen_ok, moved, trained


def run(name: str) -> Row:
    start = time.perf_counter()
    model, x = calibrated(name)
    plan, source = make_plan(model, x)
    update = plan.update if source == "plan" else plan  # type: ignore[attr-defined]
    subsets = sum(1 for n in update.parameter_names() if update.channels(n))
    figures: dict[str, tuple[int, int]] = {}
    for optimizer in ("sgd", "adam"):
        compiled: CompiledModule = budgetplan.compile(copy.deepcopy(model), plan, example_inputs=x)
        predicted = compiled.estimate(optimizer=optimizer)
        measured = measure_step(compiled, (x,), None, optimizer=optimizer)
        figures[f"act/{optimizer}"] = (predicted.memory.activations, measured.saved_activation_bytes)
        figures[f"grad/{optimizer}"] = (predicted.memory.gradients, measured.gradient_bytes)
        figures[f"opt/{optimizer}"] = (predicted.memory.optimizer, measured.optimizer_state_bytes)
        figures[f"peak/{optimizer}"] = (predicted.peak_bytes, measured.peak_bytes)
    # the same tensors trained whole by the uncompiled model: is a peak error the model's eager code?
    whole = UpdateSet({n: None for n in update.parameter_names()})
    reference = copy.deepcopy(model)
    with training_modes(reference, "frozen"):
        eager_pred = budgetplan.compile(copy.deepcopy(model), whole, example_inputs=x).estimate().peak_bytes
        eager_meas = measure_step(reference, (x,), whole).peak_bytes
    ok_sgd, moved_sgd, trained = three_steps(model, plan, x, "sgd")
    ok_adam, moved_adam, _ = three_steps(model, plan, x, "adam")
    plan_peak = int(plan.estimate.peak_bytes) if source == "plan" else -1  # type: ignore[attr-defined]
    return Row(name, subsets, len(update), figures, plan_peak, source, (eager_pred, eager_meas), ok_sgd and ok_adam, (min(moved_sgd, moved_adam), trained),
               time.perf_counter() - start)


def err(pred: int, meas: int) -> str:
    if pred == meas:
        return "0.00 %"
    return f"{100.0 * (pred - meas) / meas:+.2f} %" if meas else "n/a"


def main() -> int:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}; host cost model; budget = forward peak + {SHARE:.0%} of (full-training "
          "peak - forward peak); errors = (predicted - measured) / measured")
    header = (f"{'model':<22} {'subsets':>9} {'act B pred/meas':>20} {'err':>7} {'grad B pred/meas':>18} {'err':>7} "
              f"{'Adam opt B pred/meas':>21} {'err':>7} {'peak sgd err':>12} {'peak adam err':>13} {'plan%':>8} "
              f"{'uncomp%':>8} {'update':>7} {'frozen':>6} {'moved':>6} {'s':>4}")
    print(header)
    rows = []
    for name in MODELS:
        row = run(name)
        rows.append(row)
        f = row.figures
        act, grad, opt = f["act/sgd"], f["grad/sgd"], f["opt/adam"]
        same = all(f[f"{q}/sgd"] == f[f"{q}/adam"] for q in ("act", "grad")) and f["opt/sgd"] == (0, 0)
        print(f"{row.model:<22} {f'{row.subsets}/{row.tensors}':>9} {f'{act[0]}/{act[1]}':>20} {err(*act):>7} "
              f"{f'{grad[0]}/{grad[1]}':>18} {err(*grad):>7} {f'{opt[0]}/{opt[1]}':>21} {err(*opt):>7} "
              f"{err(*f['peak/sgd']):>12} {err(*f['peak/adam']):>13} {err(row.plan_peak, f['peak/sgd'][1]) if row.plan_peak >= 0 else '-':>8} "
              f"{err(*row.eager_peak):>8} {row.source:>7} {str(row.frozen_ok):>6} {f'{row.moved[0]}/{row.moved[1]}':>6} {row.seconds:>4.0f}"
              + ("" if same else "  (SGD and Adam act/grad differ, or SGD state != 0)"))
        sys.stdout.flush()
    print("peak bytes predicted/measured (SGD):", ", ".join(f"{r.model} {r.figures['peak/sgd'][0]}/"
                                                          f"{r.figures['peak/sgd'][1]}" for r in rows))
    worst = max(abs(p - m) / max(m, 1) for r in rows for p, m in r.figures.values())
    print(f"worst error {100 * worst:.2f} %; frozen weights bit-identical everywhere: "
          f"{all(r.frozen_ok for r in rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
