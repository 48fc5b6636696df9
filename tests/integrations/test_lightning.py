"""BudgetCallback in Lightning's own Trainer: ``strategy="ddp"`` on 2 real CPU processes (gloo,
127.0.0.1), then a fresh pair of processes resumed from an epoch checkpoint. The ranks share every
epoch's update set, DDP's reducer and the optimizers are rebuilt around the trained tensors (the LR
schedule carries on), the result equals one process training the same plans on the same global batches,
frozen parameters never move, the network is restored after fit, the loggers get every EpochLog, and the
resumed run continues with the same plans to the same weights."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", reason="Lightning is the 'lightning' extra (installed by the dev extra)")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from job_common import HERE, LR, check_untrained_rows, free_port, replay, run_job

EPOCHS = 4
RESUME_AFTER = 1  # resume from the checkpoint written at the end of epoch 1 (epochs 0 and 1 done)


def _run(out: Path, *extra: str) -> list[dict]:
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    run_job([str(HERE / "lightning_job.py"), str(out), "--epochs", str(EPOCHS), *extra], timeout=300, env=env)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("lightning")
    full = _run(out / "full")
    resumed = _run(out / "resumed", "--resume", str(out / "full" / "ckpt" / f"epoch={RESUME_AFTER}.ckpt"))
    return {"out": out, "full": full, "resumed": resumed}


def test_same_plan_on_every_rank_and_reducer_rebuilt(runs) -> None:
    a, b = runs["full"]
    assert len(a["updates"]) == EPOCHS and a["updates"] == b["updates"]
    assert len({str(u) for u in a["updates"]}) > 1, "the velocity never changed the plan"
    assert [e["source"] for e in a["log"]] == ["initial", "warm-up"] + ["velocity"] * (EPOCHS - 1)
    for tensors, nbytes, trained, trained_bytes, _ in a["covered"]:
        assert (tensors, nbytes) == (trained, trained_bytes)  # DDP's own record of its reducer
    # StepLR(2, 0.5) from configure_optimizers: the schedule survives the rebuilt optimizers
    assert [c[4] for c in a["covered"]] == pytest.approx([LR, LR, LR / 2, LR / 2])


def test_equal_to_one_process_and_frozen_untouched(runs) -> None:
    a, b = runs["full"]
    for name in a["state"]:
        assert torch.equal(a["state"][name], b["state"][name]), name
    reference = replay(a["updates"], EPOCHS, [c[4] for c in a["covered"]])
    for name, value in reference.items():
        torch.testing.assert_close(a["state"][name], value, rtol=1e-5, atol=1e-6)
    assert check_untrained_rows(a, a["updates"]) > 0


def test_network_restored_after_fit(runs) -> None:
    a, _ = runs["full"]
    assert a["released"]  # no row holder, no replaced forward
    assert all(a["requires_grad"].values())  # the flags the network had before fit


def test_loggers_get_every_epoch_log(runs) -> None:
    with open(runs["out"] / "full" / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("budgetplan/epoch")]
    a, _ = runs["full"]
    assert [int(float(r["budgetplan/epoch"])) for r in logged] == [e["epoch"] for e in a["log"]]
    for row, entry in zip(logged, a["log"]):
        assert int(float(row["budgetplan/groups_changed"])) == entry["groups_changed"]
        assert int(float(row["budgetplan/predicted_peak_bytes"])) == entry["predicted_peak_bytes"]
        assert float(row["budgetplan/solve_seconds"]) == pytest.approx(entry["solve_seconds"])


def test_resumed_run_continues_with_the_same_plan(runs) -> None:
    full, resumed = runs["full"], runs["resumed"]
    # the epochs after the checkpoint train the plans the uninterrupted run trained
    assert resumed[0]["updates"] == resumed[1]["updates"] == full[0]["updates"][RESUME_AFTER + 1:]
    # the restored velocity history gives the same next decisions and figures
    keys = ("epoch", "source", "groups_changed", "groups_selected", "predicted_peak_bytes", "objective")
    assert [{k: e[k] for k in keys} for e in resumed[0]["log"]] == [{k: e[k] for k in keys} for e in full[0]["log"]]
    for name, value in full[0]["state"].items():
        torch.testing.assert_close(resumed[0]["state"][name], value, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_from_validation_end_catches_up_the_missed_reselection(tmp_path) -> None:
    """One device, in this process: ModelCheckpoint at validation end saves after an epoch's training
    but before its re-selection; the resumed run does that re-selection first, on the same weights."""
    import warnings

    import lightning.pytorch as pl
    from job_common import budget, data, make_model
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from budgetplan.integrations.lightning import BudgetCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()
            self.updates: list = []

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.model(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", nn.functional.cross_entropy(self.model(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

        def on_train_epoch_start(self) -> None:
            self.updates.append(self.trainer.callbacks[0].compiled.update)

    def fit(out: Path, resume: Path | None = None) -> tuple[Lit, BudgetCallback]:
        x, y, val = data()
        lit = Lit()
        callback = BudgetCallback(val, example_input=x[:1], ram=budget(make_model(), x), time_limit=20.0)
        trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             callbacks=[callback, ModelCheckpoint(dirpath=out, filename="{epoch}", save_top_k=-1,
                                                                  save_on_train_epoch_end=False)])
        loader = DataLoader(TensorDataset(x, y), batch_size=16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(lit, loader, loader, ckpt_path=resume)
        return lit, callback

    full, full_cb = fit(tmp_path / "full")
    saved = torch.load(tmp_path / "full" / "epoch=1.ckpt", weights_only=True)
    state = next(iter(saved["callbacks"].values()))["reselector"]
    assert state["epoch"] == saved["epoch"] == 1  # saved before the re-selection after epoch 1
    resumed, resumed_cb = fit(tmp_path / "resumed", tmp_path / "full" / "epoch=1.ckpt")
    assert resumed.updates == full.updates[2:]
    assert [e.groups_changed for e in resumed_cb.reselector.log] == [e.groups_changed for e in full_cb.reselector.log]
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
