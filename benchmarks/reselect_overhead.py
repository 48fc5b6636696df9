"""Overhead of per-epoch re-selection: velocity pass (hooks) + re-solve + switch, as a share of the epoch.

A small MobileNetV2-style model (inverted residual blocks, 32×32 inputs, 10 classes) trains for a few
epochs on deterministic synthetic data (one fixed random pattern per class plus noise; no downloads)
with plain SGD, under a cortex-m7 (or host) byte budget, re-selecting its neurons after every epoch with
:class:`budgetplan.runtime.reselect.Reselector`. Per epoch it prints the training seconds, the velocity pass
(forward hooks on 10 validation samples, φ/Δφ/v update), the re-solve (planner call including the exact
re-pricing), the ``set_update`` switch, and their sum as a share of the training time (goal ≤ 5 %).

Run: ``.venv/bin/python benchmarks/reselect_overhead.py [--strategy ilp|greedy] [--target cortex-m7|host]
[--epochs 5] [--samples 1024]``. Timings are wall clock on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from torch import nn

from budgetplan.runtime.reselect import Reselector
from budgetplan.selection.planner import planner_for
from budgetplan.model.update_set import UpdateSet
from budgetplan.model.zoo import ConvBNAct, InvertedResidual

print = functools.partial(print, flush=True)  # noqa: A001 - rows appear as they are computed


class SmallMobileNetV2(nn.Module):
    """MobileNetV2 layout at a small scale: stem, 5 inverted residual blocks, 1×1 head, classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNAct(3, 16, 3, stride=2),
            InvertedResidual(16, 16, 1, 1),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
            InvertedResidual(24, 32, 2, 4),
            InvertedResidual(32, 32, 1, 4),
            ConvBNAct(32, 128, 1),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def synthetic(samples: int, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic images: class pattern (fixed) + Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 3, 32, 32, generator=gen)
    labels = torch.arange(samples) % classes
    images = patterns[labels] + 1.5 * torch.randn(samples, 3, 32, 32, generator=gen)
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", default="ilp", choices=("ilp", "greedy"))
    parser.add_argument("--target", default="cortex-m7")
    parser.add_argument("--gap", type=float, default=0.01,
                        help="relative gap of the re-solves (default 0.01, the Reselector's; 0 = exact)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pretrain-epochs", type=int, default=2,
                        help="full training first (BatchNorm in train mode), as a pretrained model would be")
    parser.add_argument("--share", type=float, default=0.25,
                        help="budget = inference peak + SHARE × (full fine-tuning − inference peak)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = SmallMobileNetV2()
    x, y = synthetic(args.samples)
    val_x, val_y = synthetic(10, seed=1)
    pretrain = nn.Module.train(model, True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(args.pretrain_epochs):  # the seed fine-tunes pretrained models: give BatchNorm statistics
        for i in range(0, len(x), args.batch):
            opt.zero_grad()
            nn.functional.cross_entropy(pretrain(x[i:i + args.batch]), y[i:i + args.batch]).backward()
            opt.step()
    x, y = synthetic(args.samples, seed=2)  # fine-tune on fresh samples of the same classes

    started = time.perf_counter()
    probe = planner_for(model, x[:1], target=args.target, ram=1 << 30)
    full = probe.price(UpdateSet.full(model)).peak_bytes
    none = probe.price(UpdateSet.none()).peak_bytes
    budget = int(none + args.share * (full - none))
    planner = planner_for(model, x[:1], target=args.target, ram=budget, time_limit=30.0)
    sel = Reselector(planner, (val_x, val_y), scores="velocity", strategy=args.strategy, gap=args.gap)
    compiled = sel.compile(model)
    setup = time.perf_counter() - started
    groups = len(planner.linear_model.groups)
    print(f"model: small MobileNetV2 ({sum(p.numel() for p in model.parameters())} parameters, {groups} groups), "
          f"target {args.target}, budget {budget} B (inference {none} B, full {full} B), strategy "
          f"{args.strategy}{f' (gap {args.gap})' if args.strategy == 'ilp' else ''}; set-up (trace, initial plan, compile, baseline) {setup:.2f} s; "
          f"velocity memory {sel.tracker.stored_bytes} B; torch threads 1")
    print(f"{'epoch':>5s} {'train s':>8s} {'velocity s':>10s} {'solve s':>8s} {'solver s':>8s} {'switch s':>8s} "
          f"{'share':>7s} "
          f"{'changed':>7s} {'selected':>8s} {'peak B':>8s} {'fits':>5s} {'status':>9s} {'loss':>7s}")
    shares = []
    for epoch in range(1, args.epochs + 1):
        opt = torch.optim.SGD(compiled.trainable_parameters(), lr=0.05)
        compiled.train()
        started = time.perf_counter()
        total = 0.0
        for i in range(0, len(x), args.batch):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(compiled(x[i:i + args.batch]), y[i:i + args.batch])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x[i:i + args.batch])
        train = time.perf_counter() - started
        compiled = sel.step(compiled)
        log = sel.log[-1]
        share = log.overhead_seconds / train
        shares.append(share)
        solver = f"{log.solver_seconds:8.3f}" if log.solver_seconds is not None else f"{'-':>8s}"
        print(f"{epoch:5d} {train:8.2f} {log.score_seconds:10.3f} {log.solve_seconds:8.3f} {solver} {log.switch_seconds:8.4f} "
              f"{100 * share:6.2f}% {log.groups_changed:7d} {log.groups_selected:8d} {log.predicted_peak_bytes:8d} "
              f"{str(log.fits):>5s} {str(log.solver_status):>9s} {total / len(x):7.3f}")
    print(f"mean share {100 * sum(shares) / len(shares):.2f}% (goal <= 5%); max {100 * max(shares):.2f}%")


if __name__ == "__main__":
    main()
