"""Per-epoch re-selection on several processes (plain DDP, gloo, CPU): time per epoch, re-selection
overhead, bytes exchanged.

The small MobileNetV2 of ``benchmarks/reselect_overhead.py`` (1108 neuron groups) trains on deterministic
synthetic data under a cortex-m7 byte budget, sharded over ``--world`` processes on 127.0.0.1, re-selecting
its neurons after every epoch with :func:`budgetplan.integrations.distributed.reselect_ddp` (velocity
all-reduce, rank 0 solves, plan broadcast, ``set_update``, DDP rebuilt). Per epoch it prints the slowest
rank's training time, the re-selection step as each rank saw it (``reselect_ddp`` wall time: velocity pass
+ collectives + rank 0's solve or the wait for it + re-pricing + switch + DDP rebuild), rank 0's solve,
the share of the epoch, the bytes of budgetplan's own collectives per rank (the ``φ`` all-reduce and the
plan broadcast: payload, as EpochLog.collective_bytes counts them) and DDP's gradient all-reduce payload
per optimizer step (trained tensors only, next to the whole model's).

Run: ``.venv/bin/python benchmarks/ddp_reselect.py [--world 2] [--epochs 5] [--samples 2048]
[--strategy ilp|greedy]``. Wall-clock figures depend on what else the machine runs; 2 processes on a
2-core machine share it with everything else.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reselect_overhead import SmallMobileNetV2, synthetic


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, out: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=10))
    try:
        from budgetplan.integrations.distributed import reduced_bytes_per_step, reselect_ddp
        from budgetplan.model.update_set import UpdateSet
        from budgetplan.runtime.reselect import Reselector
        from budgetplan.selection.planner import planner_for

        torch.manual_seed(0)
        model = SmallMobileNetV2()
        x, y = synthetic(args.samples, seed=2)
        val_x, _ = synthetic(10, seed=1)
        probe = planner_for(model, x[:1], target="cortex-m7", ram=1 << 30)
        full, none = (probe.price(UpdateSet.full(model)).peak_bytes, probe.price(UpdateSet.none()).peak_bytes)
        planner = planner_for(model, x[:1], target="cortex-m7", ram=int(none + 0.25 * (full - none)))
        sel = Reselector(planner, val_x, strategy=args.strategy, time_limit=60.0)
        compiled = sel.compile(model)
        ddp = DistributedDataParallel(compiled)
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        per_rank = args.batch // world
        rows = []
        for epoch in range(1, args.epochs + 1):
            gradient_bytes = reduced_bytes_per_step(compiled)
            optimizer = torch.optim.SGD(compiled.trainable_parameters(), lr=0.05)
            compiled.train()
            dist.barrier()
            started = time.perf_counter()
            for start in range(0, len(x), args.batch):
                index = torch.arange(start + rank * per_rank, min(start + (rank + 1) * per_rank, len(x)))
                optimizer.zero_grad()
                nn.functional.cross_entropy(ddp(x[index]), y[index]).backward()
                optimizer.step()
            train = time.perf_counter() - started
            started = time.perf_counter()
            ddp = reselect_ddp(sel, ddp)
            step = time.perf_counter() - started
            log = sel.log[-1]
            rows.append({"epoch": epoch, "train_s": train, "step_s": step, "score_s": log.score_seconds,
                         "solve_s": log.solve_seconds, "switch_s": log.switch_seconds,
                         "bytes": log.collective_bytes, "changed": log.groups_changed,
                         "selected": log.groups_selected, "source": log.source, "fits": log.fits,
                         "gradient_bytes": gradient_bytes})
        info = {"rank": rank, "rows": rows, "initial_bytes": sel.log[0].collective_bytes,
                "neurons": sum(layer.channels for layer in sel.tracker.layers), "groups": len(planner.linear_model.groups),
                "model_bytes": model_bytes, "budget": planner.budget_bytes,
                "parameters": sum(p.numel() for p in model.parameters())}
        Path(out, f"rank{rank}.json").write_text(json.dumps(info))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32, help="global batch (all ranks)")
    parser.add_argument("--strategy", default="ilp", choices=("ilp", "greedy"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        mp.spawn(worker, args=(args.world, _free_port(), out, args), nprocs=args.world, join=True)
        wall = time.perf_counter() - started
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(args.world)]
    head = ranks[0]
    print(f"small MobileNetV2: {head['parameters']} parameters ({head['model_bytes']} B), {head['neurons']} neurons "
          f"tracked, {head['groups']} groups; cortex-m7 budget {head['budget']} B; {args.world} processes (gloo, "
          f"1 thread each), {args.samples} samples/epoch, global batch {args.batch}, strategy {args.strategy}; "
          f"total wall time {wall:.1f} s (process start, tracing and planning included)")
    print(f"initial plan: rank 0 solved, plan broadcast {head['initial_bytes']} B")
    print(f"{'epoch':>5s} {'train s':>8s} {'reselect s (rank 0 / others)':>28s} {'solve s':>8s} {'velocity s':>10s} "
          f"{'share':>7s} {'bytes/rank':>10s} {'changed':>7s} {'source':>9s} {'DDP grad B/step':>15s}")
    shares = []
    for i, row in enumerate(head["rows"]):
        train = max(r["rows"][i]["train_s"] for r in ranks)
        steps = [r["rows"][i]["step_s"] for r in ranks]
        share = max(steps) / train
        shares.append(share)
        assert all(r["rows"][i]["bytes"] == row["bytes"] for r in ranks)
        print(f"{row['epoch']:5d} {train:8.2f} {steps[0]:13.3f} / {max(steps[1:], default=0):12.3f} "
              f"{row['solve_s']:8.3f} {row['score_s']:10.3f} {100 * share:6.2f}% {row['bytes']:10d} "
              f"{row['changed']:7d} {row['source']:>9s} {row['gradient_bytes']:15d}")
    print(f"mean re-selection share {100 * sum(shares) / len(shares):.2f}% of the epoch's training time; "
          f"DDP gradient payload per step {min(r['gradient_bytes'] for r in head['rows'])}-"
          f"{max(r['gradient_bytes'] for r in head['rows'])} B of {head['model_bytes']} B for the whole model; "
          f"budgetplan's collectives: {8 * head['neurons']} B of velocities (8 B x {head['neurons']} neurons) + the "
          f"plan ({(head['groups'] + 7) // 8} B of bits, hex in JSON) per rank per epoch")


if __name__ == "__main__":
    main()
