"""What the multi-process jobs and their tests share: a small model, deterministic data and its global
batches, the budget, a free port on 127.0.0.1, and a runner that kills a job's whole process group on a
timeout. Imported by path (the job scripts run as ``python tests/integrations/<job>.py``); the one-process
re-selection tests (tests/runtime/test_reselect.py) train the same model on the same data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SAMPLES = 64  # training samples
GLOBAL_BATCH = 16  # per optimizer step, over all ranks
LR = 0.2
SHARE = 0.4  # budget = inference peak + SHARE × (full fine-tuning − inference), host target


class Net(nn.Module):
    """Wide layers on small maps: the budget trains channel subsets and velocity plans change."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.c3 = nn.Conv2d(32, 64, 1)
        self.fc = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.c1(x)))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


def make_model() -> Net:
    torch.manual_seed(0)
    return Net()


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train inputs, train labels, 10 validation inputs), the same in every process."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, 3, 8, 8, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    val = torch.randn(10, 3, 8, 8, generator=gen)
    return x, y, val


def shard(step: int, rank: int, world: int) -> slice | torch.Tensor:
    """Indices of global batch ``step`` that ``rank`` trains: every ``world``-th sample (as a
    ``DistributedSampler(shuffle=False)`` deals them)."""
    start = step * GLOBAL_BATCH
    return torch.arange(start + rank, start + GLOBAL_BATCH, world)


def budget(model: nn.Module, x: torch.Tensor) -> int:
    from budgetplan.model.update_set import UpdateSet
    from budgetplan.selection.planner import planner_for

    probe = planner_for(model, x[:1], target="host", ram=1 << 30)
    full = probe.price(UpdateSet.full(model)).peak_bytes
    none = probe.price(UpdateSet.none()).peak_bytes
    return int(none + SHARE * (full - none))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python args...`` in its own session; on a timeout kill the whole group (ranks included)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(args)} timed out after {timeout} s:\n{out[-4000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{out[-6000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


def replay(updates: list, epochs: int, lrs: list[float] | None = None) -> dict[str, torch.Tensor]:
    """The one-process run on the same global batches: plan ``updates[e]`` during epoch ``e`` at learning
    rate ``lrs[e]`` (default ``LR``)."""
    import budgetplan
    from budgetplan.model.update_set import UpdateSet

    x, y, _ = data()
    model = make_model()
    compiled = budgetplan.compile(model, UpdateSet.from_json({"update": updates[0]}), example_inputs=x[:1])
    for epoch in range(epochs):
        update = UpdateSet.from_json({"update": updates[epoch]})
        if compiled.update != update.validated(model):
            compiled.set_update(update)
        optimizer = torch.optim.SGD(compiled.trainable_parameters(), lr=LR if lrs is None else lrs[epoch])
        compiled.train()
        for step in range(SAMPLES // GLOBAL_BATCH):
            index = torch.arange(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
            optimizer.zero_grad()
            nn.functional.cross_entropy(compiled(x[index]), y[index]).backward()
            optimizer.step()
    return {k: v.clone() for k, v in compiled.state_dict().items()}


def check_untrained_rows(run: dict, updates: list) -> int:
    """Rows (along dim 0) of a floating-point parameter that none of ``updates`` (the ``update`` lists of
    a rank's saved run) trains are bit-identical in the run's final state and its initial parameters.
    Returns how many parameters have such rows."""
    from budgetplan.model.update_set import UpdateSet

    sets = [UpdateSet.from_json({"update": u}) for u in updates]
    checked = 0
    for name, initial in run["initial"].items():
        if not initial.is_floating_point() or initial.dim() == 0:
            continue
        ever: set[int] = set()
        for update in sets:
            chans = update.channels(name)
            ever |= set(range(initial.shape[0])) if chans is None else set(chans)
        never = [i for i in range(initial.shape[0]) if i not in ever]
        if never:
            checked += 1
            assert torch.equal(run["state"][name][never], initial[never]), name
    return checked
