"""Reproduce the seed paper's comparison (Quélennec et al. 2023, Table 1) at small scale, offline, with
byte budgets: which neurons to fine-tune when one training step must fit a memory budget.

Setup (docs/reproduction.md says why):

* data — scikit-learn's bundled digits (1797 8×8 images, nothing downloaded), upsampled to 32×32, grey
  replicated to 3 channels. Per seed the images are split in two disjoint halves: the **source** task is
  the first half as they are; the **target** task is the second half rotated by 90° and inverted (dark
  digits on a light background) — a domain shift that the pre-trained network does not solve (≈ 10 %
  accuracy) and fine-tuning does. The target half is split into a training set, 10 held-out images (the
  velocity / gradient-norm batch, as in the paper) and a test set;
* network — a MobileNetV2-style net (inverted residual blocks with depthwise convolutions and
  BatchNorm, ``budgetplan.model.zoo.InvertedResidualNet``), pre-trained on the source task once per seed
  (kept in memory);
* budgets — three **byte** budgets per target, chosen so that the planner's parameter-maximising ILP
  updates about the paper's shares of the conv parameters (8.8 %, 21.2 %, 30.8 %): a bisection on the
  budget, printed. ``cortex-m7`` (tiny-training cost model, int8, batch 1) and ``host`` (PyTorch eager
  fp32 at the training batch size);
* strategies — ``full`` (every parameter, no budget), ``static`` (the parameter-maximising ILP plan,
  kept all along: the paper's SU analogue), ``random`` (a random fill of the byte budget, re-drawn every
  epoch), ``velocity-greedy`` (the seed: NEq velocity per parameter, greedy fill, every epoch),
  ``velocity-ilp`` (the same scores, the ILP), ``grad-norm`` (TraDy's gradient norm per parameter,
  greedy fill, every epoch). Every budgeted strategy trains through ``budgetplan.compile`` and (except
  ``static``) re-selects through ``budgetplan.runtime.reselect.Reselector``; every epoch's plan is re-priced
  with the exact cost model and must fit;
* training — SGD without momentum, cosine learning rate over all steps, BatchNorm frozen
  (``compile``'s default: running statistics of the pre-trained model, as on a device where BN is
  folded); accuracy on the target test set after the last epoch;
* static experiment — several fixed random sub-networks of one budget, trained to the end: the spread.

Run:
    .venv/bin/python benchmarks/seed_repro.py --out /tmp/seed_repro            # full (≈ 15–20 min, 2 cores)
    .venv/bin/python benchmarks/seed_repro.py --quick --out /tmp/seed_repro_q  # CI smoke (≤ 2 min)

Writes ``results.json``, ``table.md`` and ``seed_repro.svg`` into ``--out`` (refuses to overwrite them
without ``--force``) and prints the table. Needs scikit-learn (``pip install -e '.[experiments]'``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

print = functools.partial(print, flush=True)  # noqa: A001 - progress appears as it happens

PAPER_SHARES = (0.088, 0.212, 0.308)  # conv-parameter shares of the paper's three budgets (BRIEF §1)
# On host (fp32, batch 32) the smallest budget that trains anything already trains ~42 % of the conv
# parameters (activations dominate; the late layers' weights are almost free): the paper's shares cannot
# be aimed at. Host budgets are the inference peak plus these fractions of what full fine-tuning adds.
HOST_FRACTIONS = (0.02, 0.08, 0.25)
RESELECT_GAP = 0.01  # relative MIP gap of the per-epoch ILP re-selections
RESELECT_TIME_LIMIT = 10.0  # seconds per per-epoch ILP solve
STRATEGIES = ("full", "static", "random", "random-ilp", "velocity-greedy", "velocity-ilp", "grad-norm")
REFERENCES = ("no fine-tuning", "from scratch")
OUTPUT_FILES = ("results.json", "table.md", "seed_repro.svg")
TARGETS = ("cortex-m7", "host")


@dataclass(frozen=True)
class Config:
    """Sizes of one run (full or quick)."""

    seeds: int
    epochs: int  # fine-tuning epochs
    pretrain_epochs: int
    source_images: int  # source-task images used for pre-training (≤ half of the 1797)
    target_train: int  # target-task training images
    val_images: int  # held-out images for velocity / gradient norm (the paper: 10)
    batch: int
    lr: float  # fine-tuning learning rate (cosine to 0)
    pretrain_lr: float
    shares: tuple[float, ...]  # mcu targets: budgets aimed at these conv-parameter shares
    host_fractions: tuple[float, ...]  # host targets: inference peak + this fraction of full's extra bytes
    targets: tuple[str, ...]
    static_subnets: int  # fixed random sub-networks in the static experiment (per seed)
    static_budget: int  # index of the static experiment's budget
    static_target: str
    image_size: int = 32
    batchnorm: str = "train"  # compile's BatchNorm policy while fine-tuning (docs/reproduction.md: why)


FULL = Config(seeds=3, epochs=10, pretrain_epochs=15, source_images=897, target_train=256, val_images=10,
              batch=32, lr=0.05, pretrain_lr=0.1, shares=PAPER_SHARES, host_fractions=HOST_FRACTIONS,
              targets=TARGETS, static_subnets=6, static_budget=1, static_target="cortex-m7")
QUICK = Config(seeds=1, epochs=4, pretrain_epochs=6, source_images=600, target_train=192, val_images=10,
               batch=32, lr=0.05, pretrain_lr=0.1, shares=(PAPER_SHARES[1],), host_fractions=(HOST_FRACTIONS[1],),
               targets=TARGETS, static_subnets=2, static_budget=0, static_target="cortex-m7")


# --------------------------------------------------------------------------------------------------
# Data: scikit-learn's digits, a source task and a shifted target task
# --------------------------------------------------------------------------------------------------


@dataclass
class Tasks:
    source_x: torch.Tensor
    source_y: torch.Tensor
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("seed_repro needs scikit-learn (bundled digits data): pip install -e '.[experiments]'")
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # 1797 × 8 × 8 in [0, 1]
    return images, torch.tensor(digits.target, dtype=torch.long)


def _to_input(images: torch.Tensor, size: int, shifted: bool) -> torch.Tensor:
    x = F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    if shifted:
        x = 1.0 - torch.rot90(x, 1, (2, 3))  # rotated by 90°, inverted
    return ((x - 0.5) / 0.5).repeat(1, 3, 1, 1)


def build_tasks(seed: int, cfg: Config) -> Tasks:
    """The source and target tasks of one seed (a seeded split of the 1797 digits)."""
    images, labels = _load_digits()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(1000 + seed))
    half = len(images) // 2
    src, tgt = perm[:half][: cfg.source_images], perm[half:]
    n_train, n_val = cfg.target_train, cfg.val_images
    tr, va, te = tgt[:n_train], tgt[n_train:n_train + n_val], tgt[n_train + n_val:]
    return Tasks(
        _to_input(images[src], cfg.image_size, False), labels[src],
        _to_input(images[tr], cfg.image_size, True), labels[tr],
        _to_input(images[va], cfg.image_size, True), labels[va],
        _to_input(images[te], cfg.image_size, True), labels[te],
    )


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


def tiny_mobilenet(seed: int) -> nn.Module:
    """A MobileNetV2-style network for 32×32 inputs: stem 16, six inverted residual blocks (expand 4,
    depthwise 3×3), a 1×1 feature conv of 96 channels, a linear classifier for 10 classes (≈ 25 k
    parameters, 89 % of them in convolutions)."""
    from budgetplan.model.zoo import BlockSpec, InvertedResidualNet

    blocks = [BlockSpec(1, 3, 8, 1), BlockSpec(4, 3, 16, 2), BlockSpec(4, 3, 16, 1), BlockSpec(4, 3, 24, 2),
              BlockSpec(4, 3, 24, 1), BlockSpec(4, 3, 32, 1)]
    torch.manual_seed(seed)
    return InvertedResidualNet(blocks, width=1.0, stem_channels=16, last_channels=96, num_classes=10)


def conv_weights(model: nn.Module) -> dict[str, int]:
    """Conv weight name → elements."""
    return {f"{name}.weight": m.weight.numel() for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def conv_share(update: Any, shapes: dict[str, tuple[int, ...]], convs: dict[str, int]) -> float:
    """Share of the conv weights' elements that ``update`` trains."""
    trained = 0
    for name, elements in convs.items():
        chans = update.channels(name)
        if chans is None:
            trained += elements
        elif chans:
            trained += len(chans) * math.prod(shapes[name][1:])
    return trained / sum(convs.values())


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum()) for i in range(0, len(x), 256))
    model.train(was)
    return correct / len(x)


def pretrain(seed: int, tasks: Tasks, cfg: Config) -> dict[str, torch.Tensor]:
    """Pre-train on the source task (SGD momentum 0.9, cosine, BatchNorm in train mode); the state dict."""
    model = tiny_mobilenet(seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.pretrain_lr, momentum=0.9, weight_decay=4e-5)
    batch = 64
    steps = cfg.pretrain_epochs * math.ceil(len(tasks.source_x) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(cfg.pretrain_epochs):
        order = torch.randperm(len(tasks.source_x), generator=gen)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(tasks.source_x[idx]), tasks.source_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class RunResult:
    strategy: str
    target: str | None
    budget: str | None  # the budget's label (its aim)
    budget_bytes: int | None
    seed: int
    accuracy: float
    seconds: float
    epochs: list[dict[str, Any]] = field(default_factory=list)  # per epoch: plan in use while training it
    subnet: int | None = None  # static experiment: which random sub-network


class RandomScores:
    """Scores for a random selection that uses the budget as well as the ILP does: every neuron group
    scores ``u · elements`` with ``u`` uniform in [0, 1), re-drawn at every call (every epoch). The ILP
    then trains about as many parameters as the parameter-maximising plan, but random ones — the
    paper's random baseline (random neurons, the same amount), where the greedy random fill spends the
    budget on a few expensive groups."""

    def __init__(self, planner: Any, seed: int) -> None:
        self.groups: dict[str, list[int]] = {}
        for g in planner.linear_model.groups:
            self.groups.setdefault(g.parameter, []).append(g.elements)
        self.rng = torch.Generator().manual_seed(seed)

    def __call__(self, model: Any) -> dict[str, list[float]]:
        return {name: [float(u) * e for u, e in zip(torch.rand(len(sizes), generator=self.rng), sizes)]
                for name, sizes in self.groups.items()}


def _cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * step / total))


def finetune(strategy: str, seed: int, tasks: Tasks, state: dict[str, torch.Tensor], cfg: Config,
             ctx: TargetContext | None = None, budget: Budget | None = None, subnet: int | None = None,
             run_seed: int = 0) -> RunResult:
    """Fine-tune the pre-trained network on the target task with one strategy; the final test accuracy.

    ``ctx``/``budget``: the target and byte budget (budgeted strategies). ``subnet``: the static
    experiment's random sub-network number (a fixed random fill of the budget)."""
    from budgetplan.runtime.compiled import compile as compile_model
    from budgetplan.runtime.reselect import Reselector
    from budgetplan.model.update_set import UpdateSet

    started = time.perf_counter()
    model = tiny_mobilenet(seed)
    if strategy == "from scratch":
        torch.manual_seed(run_seed)
    else:
        model.load_state_dict(state)
    if strategy == "no fine-tuning":
        return RunResult(strategy, None, None, None, seed, accuracy(model, tasks.test_x, tasks.test_y),
                         time.perf_counter() - started)

    selector = None
    planner = budget.planner if budget is not None else None
    if strategy in ("full", "from scratch"):
        # from scratch: BatchNorm must learn its statistics (a fresh net has none to freeze)
        compiled = compile_model(model, UpdateSet.full(model),
                                 batchnorm="train" if strategy == "from scratch" else cfg.batchnorm)
        current = lambda: (compiled.update, None, True)  # noqa: E731 - no budget
    elif strategy == "static" or subnet is not None:
        if subnet is None:
            plan = budget.static_plan
        elif strategy == "static-random":  # a random fill of the bytes (as the random strategy's epochs)
            plan = planner.plan(strategy="random", scores="params", seed=1000 * seed + subnet)
        else:  # static-random-ilp: random neurons, about as many parameters as the static ILP plan
            plan = planner.plan(strategy="ilp", scores=RandomScores(planner, 1000 * seed + subnet)(None))
        compiled = compile_model(model, plan, batchnorm=cfg.batchnorm)
        current = lambda: (plan.update, plan.estimate.peak_bytes, plan.fits)  # noqa: E731
    else:
        val = (tasks.val_x, tasks.val_y)
        if strategy == "random":
            selector = Reselector(planner, val, strategy="random", initial="random", seed=run_seed)
        elif strategy == "random-ilp":
            selector = Reselector(planner, val, scores=RandomScores(planner, run_seed), strategy="ilp",
                                  initial=budget.static_plan, seed=run_seed)
        elif strategy == "velocity-greedy":
            selector = Reselector(planner, val, scores="velocity", strategy="greedy", initial=budget.static_plan,
                                  seed=run_seed)
        elif strategy == "velocity-ilp":
            selector = Reselector(planner, val, scores="velocity", strategy="ilp", initial=budget.static_plan,
                                  seed=run_seed)
        elif strategy == "grad-norm":
            selector = Reselector(planner, val, scores="grad-norm", strategy="greedy", initial=budget.static_plan,
                                  seed=run_seed)
        else:
            raise ValueError(strategy)
        compiled = selector.compile(model, batchnorm=cfg.batchnorm)
        current = lambda: (selector.plan.update, selector.plan.estimate.peak_bytes,  # noqa: E731
                           selector.plan.estimate.peak_bytes <= selector.planner.budget_bytes)

    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    convs = conv_weights(model)
    steps_per_epoch = math.ceil(len(tasks.train_x) / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(run_seed)
    step = 0
    epochs: list[dict[str, Any]] = []
    compiled.train()
    for epoch in range(cfg.epochs):
        update, peak, fits = current()
        epochs.append({"epoch": epoch, "conv_share": conv_share(update, shapes, convs), "peak_bytes": peak,
                       "fits": bool(fits), "trained_elements": update.num_trained_elements(shapes)})
        opt = torch.optim.SGD(compiled.trainable_parameters(), lr=cfg.lr, momentum=0.0)
        order = torch.randperm(len(tasks.train_x), generator=gen)
        for i in range(0, len(order), cfg.batch):
            for group in opt.param_groups:
                group["lr"] = _cosine_lr(cfg.lr, step, total)
            idx = order[i:i + cfg.batch]
            loss = F.cross_entropy(compiled(tasks.train_x[idx]), tasks.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if selector is not None and epoch + 1 < cfg.epochs:
            compiled = selector.step(compiled)
    if selector is not None:
        for entry, log in zip(epochs, selector.log):
            entry["selection"] = log.source
            entry["groups_changed"] = log.groups_changed
            entry["overhead_seconds"] = round(log.overhead_seconds, 3)
            entry["kept_previous"] = log.kept_previous
    compiled.sync()
    acc = accuracy(compiled, tasks.test_x, tasks.test_y)
    return RunResult(strategy, ctx.name if ctx else None, budget.label if budget else None,
                     budget.bytes if budget else None, seed, acc, time.perf_counter() - started, epochs, subnet)


# --------------------------------------------------------------------------------------------------
# Targets and byte budgets
# --------------------------------------------------------------------------------------------------


@dataclass
class Budget:
    label: str  # what the budget aims at: "8.8 %" (conv-parameter share) or "+2 %" (host overhead)
    bytes: int
    planner: Any  # for re-selection: ILP stopped at a 1 % gap or after RESELECT_TIME_LIMIT seconds
    static_plan: Any  # the parameter-maximising ILP plan, solved to optimality
    achieved_share: float  # conv share the static ILP plan actually trains


@dataclass
class TargetContext:
    name: str
    batch: int  # batch size of the priced step
    graph: Any
    target: Any
    inference_peak: int
    full_peak: int
    budgets: list[Budget] = field(default_factory=list)


def make_target(name: str, cfg: Config) -> TargetContext:
    """Trace the network for ``name`` (cortex-m7: batch 1, tiny-training; host: the training batch) in the
    modes the compiled module trains in (train mode, BatchNorm per ``cfg.batchnorm``)."""
    from budgetplan.model.modes import training_modes
    from budgetplan.model.graph import build_layer_graph
    from budgetplan.targets import resolve_target
    from budgetplan.selection.planner import Planner
    from budgetplan.model.tracing import trace_model
    from budgetplan.model.update_set import UpdateSet

    target = resolve_target(name)
    batch = 1 if target.family == "mcu" else cfg.batch
    model = tiny_mobilenet(0)
    inputs = (torch.zeros(batch, 3, cfg.image_size, cfg.image_size),)
    with training_modes(model, cfg.batchnorm):
        graph = build_layer_graph(trace_model(model, inputs), inputs)
    probe = Planner(graph, target, 1 << 40)
    inference = int(probe.price(UpdateSet.none()).peak_bytes)
    full = int(probe.price(UpdateSet.full(model)).peak_bytes)
    return TargetContext(name, batch, graph, target, inference, full)


def _static(ctx: TargetContext, budget: int, shapes: dict, convs: dict) -> tuple[Any, Any, float]:
    from budgetplan.selection.planner import Planner

    planner = Planner(ctx.graph, ctx.target, budget)
    plan = planner.plan(strategy="ilp", scores="params")
    return planner, plan, conv_share(plan.update, shapes, convs)


def _reselect_planner(ctx: TargetContext, budget: int) -> Any:
    """The planner the re-selecting strategies share: the ILP may stop at a 1 % relative gap (random and
    velocity scores break the interchangeable-group counting, and a proof of optimality then costs
    seconds per epoch); plans are re-priced and checked against the budget all the same."""
    from budgetplan.selection.planner import Planner

    return Planner(ctx.graph, ctx.target, budget, gap=RESELECT_GAP, time_limit=RESELECT_TIME_LIMIT)


def host_budget(ctx: TargetContext, fraction: float, shapes: dict, convs: dict) -> Budget:
    """The inference peak plus ``fraction`` of the bytes full fine-tuning adds to it."""
    budget = int(ctx.inference_peak + fraction * (ctx.full_peak - ctx.inference_peak))
    _, plan, achieved = _static(ctx, budget, shapes, convs)
    return Budget(f"+{100 * fraction:.0f} %", budget, _reselect_planner(ctx, budget), plan, achieved)


def find_budget(ctx: TargetContext, share: float, shapes: dict, convs: dict) -> Budget:
    """The smallest byte budget (to 0.5 % of the range) whose parameter-maximising ILP plan trains at least
    ``share`` of the conv weights."""

    def static(budget: int) -> tuple[Any, Any, float]:
        return _static(ctx, budget, shapes, convs)

    lo, hi = ctx.inference_peak, ctx.full_peak
    best = static(hi)
    while hi - lo > max(64, 0.005 * (ctx.full_peak - ctx.inference_peak)):
        mid = (lo + hi) // 2
        candidate = static(mid)
        if candidate[2] >= share:
            hi, best = mid, candidate
        else:
            lo = mid
    _, plan, achieved = best
    return Budget(f"{100 * share:.1f} %", hi, _reselect_planner(ctx, hi), plan, achieved)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def render_table(contexts: list[TargetContext], runs: list[RunResult], cfg: Config) -> str:
    """The Markdown table: mean ± std of the target test accuracy (%) per strategy × budget, and the mean
    share of conv parameters trained (over epochs and seeds)."""
    cells = [(ctx.name, b) for ctx in contexts for b in ctx.budgets]
    head = "| strategy | " + " | ".join(f"{name} {b.label} ({_kib(b.bytes)})" for name, b in cells) + " |"
    lines = [head, "|---|" + "---|" * len(cells)]

    def cell(strategy: str, name: str | None, b: Budget | None) -> str:
        sel = [r for r in runs if r.strategy == strategy and r.subnet is None
               and (b is None or (r.target == name and r.budget_bytes == b.bytes))]
        if not sel:
            return "–"
        mean, std = _mean_std([100 * r.accuracy for r in sel])
        shares = [e["conv_share"] for r in sel for e in r.epochs]
        trained = f" ({100 * statistics.fmean(shares):.0f} %)" if shares and b is not None else ""
        return f"{mean:.1f} ± {std:.1f}{trained}"

    for strategy in REFERENCES + STRATEGIES:
        budgeted = strategy not in REFERENCES + ("full",)
        row = [cell(strategy, name, b if budgeted else None) for name, b in cells]
        lines.append(f"| {strategy} | " + " | ".join(row) + " |")
    return "\n".join(lines)


PAIRS = (("velocity-greedy", "random"), ("velocity-ilp", "random-ilp"), ("velocity-ilp", "static"),
         ("velocity-greedy", "static"), ("grad-norm", "random"), ("random-ilp", "static"))


def render_pairs(contexts: list[TargetContext], runs: list[RunResult]) -> str:
    """Paired differences (same seed, same budget) between strategies, per target: mean ± std of the
    accuracy difference in points over every (seed, budget) cell, and how many cells the first wins."""
    lines = []
    acc = {(r.strategy, r.target, r.budget_bytes, r.seed): 100 * r.accuracy for r in runs if r.subnet is None}
    for ctx in contexts:
        parts = []
        for a, b in PAIRS:
            diffs = [acc[(a, ctx.name, bud.bytes, s)] - acc[(b, ctx.name, bud.bytes, s)]
                     for bud in ctx.budgets for s in sorted({r.seed for r in runs})
                     if (a, ctx.name, bud.bytes, s) in acc and (b, ctx.name, bud.bytes, s) in acc]
            if diffs:
                mean, std = _mean_std(diffs)
                wins = sum(d > 0 for d in diffs)
                parts.append(f"  {a} − {b}: {mean:+.1f} ± {std:.1f} points, ahead in {wins}/{len(diffs)} cells")
        lines.append(f"paired differences on {ctx.name} (same seed and budget):")
        lines.extend(parts)
    return "\n".join(lines)


def render_static(runs: list[RunResult], budget: Budget | None, ctx_name: str) -> str:
    if budget is None or not any(r.subnet is not None for r in runs):
        return "(static experiment not run)"
    return "\n".join(_render_static_kind(runs, budget, ctx_name, kind, what) for kind, what in (
        ("static-random", "random fills of the bytes (the random strategy's plans, kept)"),
        ("static-random-ilp", "random neurons by the ILP (as many parameters as fit, the random-ilp strategy's "
                              "plans, kept)")))


def _render_static_kind(runs: list[RunResult], budget: Budget, ctx_name: str, kind: str, what: str) -> str:
    sub = [r for r in runs if r.subnet is not None and r.strategy == kind]
    if not sub:
        return f"({kind}: not run)"
    accs = sorted(100 * r.accuracy for r in sub)
    shares = [100 * r.epochs[0]["conv_share"] for r in sub]
    static = [100 * r.accuracy for r in runs if r.strategy == "static" and r.target == ctx_name
              and r.budget_bytes == budget.bytes and r.subnet is None]
    seeds = sorted({r.seed for r in sub})
    per_seed = []
    for s in seeds:
        a = [100 * r.accuracy for r in sub if r.seed == s]
        per_seed.append(max(a) - min(a))
    lines = [
        f"static experiment, {kind}: {len(sub)} fixed sub-networks ({len(sub) // max(len(seeds), 1)} per seed × "
        f"{len(seeds)} seeds) — {what} — {ctx_name} {_kib(budget.bytes)} (the {budget.label} budget), "
        "trained to the end:",
        f"  accuracy min {accs[0]:.1f} / median {statistics.median(accs):.1f} / max {accs[-1]:.1f} %; "
        f"spread within a seed (max − min) mean {statistics.fmean(per_seed):.1f} points",
        f"  conv parameters trained by these sub-networks: {min(shares):.1f}–{max(shares):.1f} % "
        f"(the static ILP plan: {100 * budget.achieved_share:.1f} %)",
    ]
    if static:
        mean, std = _mean_std(static)
        lines.append(f"  the static ILP plan at the same budget: {mean:.1f} ± {std:.1f} %")
    return "\n".join(lines)


_COLOURS = {"full": "#444444", "static": "#1f77b4", "random": "#ff7f0e", "random-ilp": "#bcbd22",
            "velocity-greedy": "#2ca02c",
            "velocity-ilp": "#17becf", "grad-norm": "#d62728"}


def render_svg(contexts: list[TargetContext], runs: list[RunResult]) -> str:
    """Grouped bars (mean accuracy, error bar = std over seeds) per target × budget; a dashed line for
    the pre-trained model without fine-tuning. Hand-written SVG (no plotting dependency)."""
    cells = [(ctx.name, b) for ctx in contexts for b in ctx.budgets]
    left, top, bottom = 60, 40, 70
    width, height = max(120 + 150 * len(cells), left + 120 * len(STRATEGIES) + 20), 360
    plot_h = height - top - bottom
    bar_w = 18

    def y_of(acc: float) -> float:
        return top + plot_h * (1 - acc)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">Target test accuracy after fine-tuning '
           '(mean ± std over seeds), budgets in bytes</text>']
    for tick in range(0, 101, 20):
        y = y_of(tick / 100)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick} %</text>')
    for i, (name, b) in enumerate(cells):
        x0 = left + 20 + 150 * i
        for j, strategy in enumerate(STRATEGIES):
            sel = [r.accuracy for r in runs if r.strategy == strategy and r.subnet is None
                   and (strategy == "full" or (r.target == name and r.budget_bytes == b.bytes))]
            if not sel:
                continue
            mean, std = _mean_std(sel)
            x = x0 + j * bar_w
            out.append(f'<rect x="{x}" y="{y_of(mean):.1f}" width="{bar_w - 3}" height="{plot_h * mean:.1f}" '
                       f'fill="{_COLOURS[strategy]}"><title>{strategy}: {100 * mean:.1f} ± {100 * std:.1f} %</title></rect>')
            xc = x + (bar_w - 3) / 2
            out.append(f'<line x1="{xc}" y1="{y_of(min(1, mean + std)):.1f}" x2="{xc}" '
                       f'y2="{y_of(max(0, mean - std)):.1f}" stroke="black"/>')
        out.append(f'<text x="{x0 + 3.5 * bar_w}" y="{height - bottom + 16}" text-anchor="middle">{name}</text>')
        out.append(f'<text x="{x0 + 3.5 * bar_w}" y="{height - bottom + 30}" text-anchor="middle">'
                   f'{b.label} · {_kib(b.bytes)}</text>')
    none = [r.accuracy for r in runs if r.strategy == "no fine-tuning"]
    if none:
        y = y_of(statistics.fmean(none))
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="black" '
                   'stroke-dasharray="4 3"/>')
        out.append(f'<text x="{width - 22}" y="{y - 4:.1f}" text-anchor="end">no fine-tuning</text>')
    for j, strategy in enumerate(STRATEGIES):
        x = left + 120 * j
        out.append(f'<rect x="{x}" y="{height - 22}" width="10" height="10" fill="{_COLOURS[strategy]}"/>')
        out.append(f'<text x="{x + 14}" y="{height - 13}">{strategy}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


_SHARED: dict[str, Any] = {}  # set by main() before the worker processes fork


def _init_worker() -> None:
    torch.set_num_threads(_SHARED["threads"])


def _map(fn: Any, items: list, jobs: int, progress: Any, description: str, total: int) -> list:
    """``fn`` over ``items``, in ``jobs`` forked processes (they inherit ``_SHARED``), in order. The runs
    report through :func:`_report`: their lines are printed here (above the rich progress bar, which
    counts ``total`` of them) as they finish, whichever process ran them."""
    task = progress.add_task(description, total=total)

    def say(line: str) -> None:
        progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        progress.advance(task)

    if jobs <= 1 or len(items) <= 1:
        _SHARED["say"] = say
        try:
            return [fn(item) for item in items]
        finally:
            _SHARED.pop("say", None)
    import multiprocessing
    import queue as queues

    context = multiprocessing.get_context("fork")
    _SHARED["queue"] = lines = context.Queue()
    try:
        with context.Pool(min(jobs, len(items)), initializer=_init_worker) as pool:
            result = pool.map_async(fn, items, chunksize=1)
            while True:
                try:
                    say(lines.get(timeout=0.2))
                except queues.Empty:
                    if result.ready():
                        break
            return result.get()
    finally:
        _SHARED.pop("queue", None)


def _say(line: str) -> None:
    """A progress line of a worker (or of this process), printed by the parent (:func:`_map`)."""
    if "queue" in _SHARED:
        _SHARED["queue"].put(line)
    elif "say" in _SHARED:
        _SHARED["say"](line)
    else:
        print(line)


def _report(run: RunResult) -> None:
    where = f"{run.target} {_kib(run.budget_bytes)}" if run.target else "-"
    bad = [e["epoch"] for e in run.epochs if e["peak_bytes"] is not None and not e["fits"]]
    _say(f"  seed {run.seed} {run.strategy:16s} {where:22s} acc {100 * run.accuracy:5.1f} %  "
         f"{run.seconds:5.1f} s" + (f"  OVER BUDGET in epochs {bad}" if bad else "")
         + f"  [{time.perf_counter() - _SHARED['started']:.0f} s]")


def _pretrain_job(seed: int) -> tuple[int, dict[str, torch.Tensor], str]:
    cfg = _SHARED["cfg"]
    tasks = build_tasks(seed, cfg)
    t0 = time.perf_counter()
    state = pretrain(seed, tasks, cfg)
    probe = tiny_mobilenet(seed)
    probe.load_state_dict(state)
    message = (f"seed {seed}: pre-trained in {time.perf_counter() - t0:.0f} s; source train accuracy "
                         f"{100 * accuracy(probe, tasks.source_x, tasks.source_y):.1f} %; target: "
                         f"{len(tasks.train_x)} train, {len(tasks.val_x)} held-out, {len(tasks.test_x)} test images")
    _say(message)
    return seed, state, message


def _grid_job(job: tuple[int, str]) -> list[RunResult]:
    """One seed's runs of one part: the unbudgeted references, or one target's budgets × strategies (and the
    static experiment on its target)."""
    seed, part = job
    cfg, state = _SHARED["cfg"], _SHARED["states"][seed]
    tasks = build_tasks(seed, cfg)
    run_seed = 100 * seed
    runs: list[RunResult] = []

    def record(run: RunResult) -> None:
        runs.append(run)
        _report(run)

    if part == "references":
        for strategy in REFERENCES + ("full",):
            record(finetune(strategy, seed, tasks, state, cfg, run_seed=run_seed))
        return runs
    ctx = next(c for c in _SHARED["contexts"] if c.name == part)
    for budget in ctx.budgets:
        for strategy in STRATEGIES[1:]:
            record(finetune(strategy, seed, tasks, state, cfg, ctx, budget, run_seed=run_seed))
    if ctx is _SHARED["static_ctx"]:
        for kind in ("static-random", "static-random-ilp"):
            for k in range(cfg.static_subnets):
                record(finetune(kind, seed, tasks, state, cfg, ctx, _SHARED["static_budget"], subnet=k,
                                run_seed=run_seed))
    return runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="directory for results.json, table.md, seed_repro.svg")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--quick", action="store_true", help="CI smoke run: 1 seed, one budget per target, 3 epochs")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3; --quick: 1)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default 10; --quick: 3)")
    p.add_argument("--targets", help="comma-separated targets (default cortex-m7,host)")
    p.add_argument("--static-subnets", type=int, help="random sub-networks per seed in the static experiment "
                   "(default 6; --quick: 2; 0 = skip)")
    p.add_argument("--batchnorm", choices=("train", "frozen"), help="BatchNorm while fine-tuning (default train)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (default 0.05)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2: seeds × targets in "
                   "parallel; 1 = in this process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.targets is not None:
        overrides["targets"] = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if args.static_subnets is not None:
        overrides["static_subnets"] = args.static_subnets
    if args.batchnorm is not None:
        overrides["batchnorm"] = args.batchnorm
    if args.lr is not None:
        overrides["lr"] = args.lr
    if overrides:
        cfg = Config(**{**cfg.__dict__, **overrides})
    if cfg.seeds < 1 or cfg.epochs < 1:
        print("error: --seeds and --epochs must be at least 1", file=sys.stderr)
        return 2
    existing = [f for f in OUTPUT_FILES if (args.out / f).exists()]
    if existing and not args.force:
        print(f"error: {args.out / existing[0]} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    _load_digits()  # fail early without scikit-learn

    started = time.perf_counter()
    print(f"seed_repro ({'quick' if args.quick else 'full'}): {cfg.seeds} seed(s), {cfg.epochs} epochs, "
          f"targets {', '.join(cfg.targets)}")
    reference = tiny_mobilenet(0)
    shapes = {n: tuple(p.shape) for n, p in reference.named_parameters()}
    convs = conv_weights(reference)
    print(f"network: {sum(p.numel() for p in reference.parameters())} parameters, {sum(convs.values())} in "
          f"{len(convs)} convolutions")
    contexts = []
    for name in cfg.targets:
        ctx = make_target(name, cfg)
        if ctx.target.family == "mcu":
            ctx.budgets = [find_budget(ctx, share, shapes, convs) for share in cfg.shares]
        else:
            ctx.budgets = [host_budget(ctx, f, shapes, convs) for f in cfg.host_fractions]
        contexts.append(ctx)
        print(f"target {name} (step at batch {ctx.batch}): inference {ctx.inference_peak} B, full fine-tuning "
              f"{ctx.full_peak} B; budgets: " + ", ".join(
                  f"{b.label} → {b.bytes} B (static ILP trains {100 * b.achieved_share:.1f} % of conv params)"
                  for b in ctx.budgets) + f"  [{time.perf_counter() - started:.0f} s]")
    static_ctx = next((c for c in contexts if c.name == cfg.static_target), contexts[0])
    static_budget = static_ctx.budgets[min(cfg.static_budget, len(static_ctx.budgets) - 1)]

    _SHARED.update(cfg=cfg, contexts=contexts, static_ctx=static_ctx, static_budget=static_budget,
                   started=started, threads=args.threads)
    seeds = list(range(cfg.seeds))
    states: dict[int, dict[str, torch.Tensor]] = {}
    # a rich progress bar on a terminal (run lines print above it); plain lines otherwise
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(highlight=False)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        for seed, state, _ in _map(_pretrain_job, seeds, args.jobs, progress, "pre-training", len(seeds)):
            states[seed] = state
        _SHARED["states"] = states
        # one job per seed and part (the unbudgeted references; each target's grid): balanced over workers
        jobs = [(seed, part) for seed in seeds for part in ["references", *(c.name for c in contexts)]]
        per_seed = (len(REFERENCES) + 1 + sum(len(c.budgets) for c in contexts) * (len(STRATEGIES) - 1)
                    + 2 * cfg.static_subnets)
        runs = [run for chunk in _map(_grid_job, jobs, args.jobs, progress, "fine-tuning runs",
                                      per_seed * len(seeds)) for run in chunk]
    order = {name: i for i, name in enumerate(REFERENCES + STRATEGIES + ("static-random", "static-random-ilp"))}
    runs.sort(key=lambda r: (r.seed, r.target or "", r.budget_bytes or 0, order[r.strategy], r.subnet or 0))

    table = render_table(contexts, runs, cfg)
    static_text = (render_pairs(contexts, runs) + "\n\n"
                   + render_static(runs, static_budget if cfg.static_subnets else None, static_ctx.name))
    seconds = time.perf_counter() - started
    command = "benchmarks/seed_repro.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print()
    print("Target test accuracy (%), mean ± std over seeds; in parentheses the mean share of conv parameters")
    print("trained (over epochs and seeds). Columns: target, what the budget aims at (cortex-m7: the paper's")
    print("share of conv parameters; host: inference peak + a share of full fine-tuning's extra bytes), bytes.")
    print(table)
    print()
    print(static_text)
    print(f"\ntotal {seconds:.0f} s")

    document = {
        "command": command,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "targets": [{"name": c.name, "step_batch": c.batch, "inference_peak_bytes": c.inference_peak,
                     "full_peak_bytes": c.full_peak,
                     "budgets": [{"label": b.label, "bytes": b.bytes, "static_conv_share": b.achieved_share,
                                  "static_peak_bytes": int(b.static_plan.estimate.peak_bytes)} for b in c.budgets]}
                    for c in contexts],
        "static_experiment": {"target": static_ctx.name, "budget_bytes": static_budget.bytes,
                              "subnets_per_seed": cfg.static_subnets},
        "runs": [r.__dict__ for r in runs],
    }
    (args.out / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / "table.md").write_text(f"Command: `{command}` ({seconds:.0f} s)\n\n{table}\n\n```\n{static_text}\n```\n")
    (args.out / "seed_repro.svg").write_text(render_svg(contexts, runs))
    print(f"wrote {', '.join(str(args.out / f) for f in OUTPUT_FILES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
