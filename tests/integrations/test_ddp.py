"""Re-selection with plain DistributedDataParallel on 2 real CPU processes started by torchrun (gloo,
127.0.0.1): every rank has the same update set every epoch, DDP's reducer covers exactly the trained
tensors after each change, the ranks end bit-identical, equal (fp tolerance) to one process training the
same plans on the same global batches, and frozen parameters never move."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from job_common import HERE, check_untrained_rows, free_port, replay, run_job

EPOCHS = 4


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]
    run_job([*torchrun, str(HERE / "ddp_job.py"), str(out), "--epochs", str(EPOCHS)], timeout=240)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_same_plan_on_every_rank_and_it_changes(ranks) -> None:
    a, b = ranks
    assert len(a["updates"]) == EPOCHS + 1
    assert a["updates"] == b["updates"]  # the update set of every epoch, and the last one
    assert a["log"] == [{**entry, "score_seconds": x["score_seconds"], "switch_seconds": x["switch_seconds"]}
                        for entry, x in zip(b["log"], a["log"])]  # same decisions and figures (timings local)
    assert a["rebuilt"] >= 1, "the velocity never changed the plan: nothing was rebuilt"
    assert len({str(u) for u in a["updates"]}) > 1
    assert [e["source"] for e in a["log"][1:]] == ["warm-up"] + ["velocity"] * (EPOCHS - 1)
    for v_a, v_b in zip(a["velocity"].values(), b["velocity"].values()):
        assert torch.equal(v_a, v_b)  # φ averaged by the all-reduce: identical to the last bit


def test_reducer_covers_exactly_the_trained_tensors(ranks) -> None:
    for tensors, nbytes, trained, trained_bytes in ranks[0]["covered"]:
        assert (tensors, nbytes) == (trained, trained_bytes)  # DDP's own record of its reducer
    full = sum(t.numel() * t.element_size() for t in ranks[0]["initial"].values() if t.is_floating_point())
    assert all(c[1] < full for c in ranks[0]["covered"])


def test_collectives_are_counted(ranks) -> None:
    log = ranks[0]["log"]
    neurons = 16 + 32 + 64 + 4
    assert log[1]["collective_bytes"] >= 8 * neurons  # the φ all-reduce (float64 per neuron) + the plan
    assert all(entry["collective_bytes"] > 0 for entry in log)


def test_ranks_identical_and_equal_to_one_process(ranks) -> None:
    a, b = ranks
    for name in a["state"]:
        assert torch.equal(a["state"][name], b["state"][name]), name
    reference = replay(a["updates"], EPOCHS)
    for name, value in reference.items():
        torch.testing.assert_close(a["state"][name], value, rtol=1e-5, atol=1e-6)
    moved = sum(not torch.equal(a["state"][n], a["initial"][n]) for n in a["state"])
    assert moved > 0


def test_frozen_parameters_bit_identical(ranks) -> None:
    a = ranks[0]
    assert check_untrained_rows(a, a["updates"][:EPOCHS]) > 0
