"""A plain-DDP re-selection run on several CPU processes (gloo), as a user's torchrun script does it.

``torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port PORT tests/integrations/ddp_job.py OUT
[--epochs 4]`` (the test's way), or ``python tests/integrations/ddp_job.py OUT --port PORT [--world 2]``
(``torch.multiprocessing.spawn``). Each rank writes OUT/rank{r}.pt: the update set of every epoch, the
final state dict, the initial parameters, the EpochLogs, the last velocities, and per epoch what DDP's
reducer covers (tensors, bytes; from DDP's own logging data) next to the trained tensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from job_common import GLOBAL_BATCH, LR, SAMPLES, budget, data, make_model, shard


def worker(rank: int, world: int, port: int | None, out: str, epochs: int) -> None:
    torch.set_num_threads(1)
    init = "env://" if port is None else f"tcp://127.0.0.1:{port}"  # env://: torchrun's variables
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        from budgetplan.integrations.distributed import reduced_bytes_per_step, reselect_ddp
        from budgetplan.runtime.reselect import Reselector
        from budgetplan.selection.planner import planner_for

        x, y, val = data()
        model = make_model()
        planner = planner_for(model, x[:1], target="host", ram=budget(model, x))
        sel = Reselector(planner, val, scores="velocity", strategy="ilp", time_limit=20.0)
        compiled = sel.compile(model)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        ddp = DistributedDataParallel(compiled)
        updates, covered, rebuilt = [], [], 0
        for _ in range(epochs):
            updates.append(compiled.update.to_json()["update"])
            info = ddp._get_ddp_logging_data()  # what DDP's reducer was built over (torch's own record)
            covered.append((info.get("num_parameter_tensors"), info.get("total_parameter_size_bytes"),
                            len(compiled.trainable_parameters()), reduced_bytes_per_step(compiled)))
            optimizer = torch.optim.SGD(compiled.trainable_parameters(), lr=LR)
            compiled.train()
            for step in range(SAMPLES // GLOBAL_BATCH):
                index = shard(step, rank, world)
                optimizer.zero_grad()
                nn.functional.cross_entropy(ddp(x[index]), y[index]).backward()
                optimizer.step()
            before = ddp
            ddp = reselect_ddp(sel, ddp)
            rebuilt += ddp is not before
        updates.append(compiled.update.to_json()["update"])
        compiled.sync()
        torch.save({"updates": updates, "state": {k: v.clone() for k, v in model.state_dict().items()},
                    "initial": initial, "log": [dataclasses.asdict(e) for e in sel.log],
                    "velocity": sel.tracker.velocity, "covered": covered, "rebuilt": rebuilt,
                    "reselector": sel.state_dict()}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--port", type=int)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    if "RANK" in os.environ:  # started by torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None, args.out, args.epochs)
    else:
        mp.spawn(worker, args=(args.world, args.port, args.out, args.epochs), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
