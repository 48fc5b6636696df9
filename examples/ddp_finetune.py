"""Fine-tune under a memory budget on several processes with plain DistributedDataParallel and torchrun.

Every rank plans and compiles the same way; the Reselector makes them agree every epoch (velocities
averaged by one all-reduce, rank 0 solves, the plan is broadcast) and ``reselect_ddp`` rebuilds DDP's
reducer around the tensors the new plan trains. Offline, seconds on a CPU (gloo, synthetic data):

    torchrun --nproc_per_node 2 examples/ddp_finetune.py
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from budgetplan.integrations.distributed import reselect_ddp
from budgetplan.integrations.progress import configure_logging
from budgetplan.model import zoo
from budgetplan.runtime.reselect import Reselector
from budgetplan.selection.planner import planner_for


def main() -> None:
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank = dist.get_rank()
    torch.set_num_threads(1)
    configure_logging("normal")  # rank 0 logs one line per epoch
    torch.manual_seed(0)  # the same weights and data on every rank
    model, _ = zoo.build("tinycnn")
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(256, 3, 32, 32, generator=gen), torch.randint(0, 10, (256,), generator=gen)
    val_images = torch.randn(10, 3, 32, 32, generator=gen)  # the velocity's batch: the same on every rank

    planner = planner_for(model, val_images[:1], target="cortex-m7", ram="64k")
    sel = Reselector(planner, val_images, time_limit=30.0)  # rank 0 solves; others wait up to the time limit
    compiled = sel.compile(model)
    ddp = DistributedDataParallel(compiled)  # wrap the compiled module: its row parameters are inside
    data = TensorDataset(images, labels)
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        optimizer = torch.optim.SGD(compiled.trainable_parameters(), lr=0.05)
        compiled.train()
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            optimizer.step()
        ddp = reselect_ddp(sel, ddp)  # on every rank: same plan, reducer rebuilt when it changed
    compiled.sync()
    total = torch.tensor([float(sum(p.detach().double().sum() for p in model.parameters()))])
    sums = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(sums, total.double())
    if rank == 0:
        print(f"{dist.get_world_size()} ranks; weights identical on every rank: {len({float(s) for s in sums}) == 1}; "
              f"last plan {sel.log[-1].groups_selected}/{sel.log[-1].groups_total} groups, peak "
              f"{sel.log[-1].predicted_peak_bytes / 1024:.1f} KiB of {sel.log[-1].budget_bytes / 1024:.0f} KiB; "
              f"bytes exchanged by budgetplan this epoch: {sel.log[-1].collective_bytes}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
