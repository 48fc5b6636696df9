"""A Lightning run with BudgetCallback: Lightning's own Trainer, CPU, ``strategy="ddp"`` on 2 processes
(or one device).

``python tests/integrations/lightning_job.py OUT --epochs E [--devices 2] [--resume CKPT]``

Lightning's DDP launcher starts the other rank by running this script again (MASTER_ADDR/MASTER_PORT
come from the environment the test sets: 127.0.0.1 and a free port). Every rank writes
OUT/rank{r}.pt: the update set in use at the start of every epoch (seen from the LightningModule's
``on_train_epoch_start``), the final state dict after ``fit`` (the callback has restored the plain
network), the initial parameters, the callback's EpochLogs and what DDP's reducer covered. A
ModelCheckpoint keeps a checkpoint per epoch (OUT/ckpt/epoch=K.ckpt) and the CSV logger the metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lightning.pytorch as pl
from job_common import GLOBAL_BATCH, LR, budget, data, make_model
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from budgetplan.integrations.lightning import BudgetCallback


class LitNet(pl.LightningModule):
    """An ordinary LightningModule: its optimizer and a step LR schedule come from configure_optimizers."""

    def __init__(self) -> None:
        super().__init__()
        self.model = make_model()
        self.updates: list = []
        self.covered: list = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=LR)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 2, gamma=0.5)}

    def on_train_epoch_start(self) -> None:
        callback = next(c for c in self.trainer.callbacks if isinstance(c, BudgetCallback))
        self.updates.append(callback.compiled.update.to_json()["update"])
        model = self.trainer.strategy.model
        info = model._get_ddp_logging_data() if hasattr(model, "_get_ddp_logging_data") else {}
        trained = [p for p in self.parameters() if p.requires_grad]
        self.covered.append((info.get("num_parameter_tensors"), info.get("total_parameter_size_bytes"),
                             len(trained), sum(p.numel() * p.element_size() for p in trained),
                             self.trainer.optimizers[0].param_groups[0]["lr"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--resume")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    out = Path(args.out)
    x, y, val = data()
    lit = LitNet()
    initial = {k: v.clone() for k, v in lit.model.state_dict().items()}
    callback = BudgetCallback(val, example_input=x[:1], target="host", ram=budget(make_model(), x),
                              time_limit=20.0)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=args.devices,
                         strategy="ddp" if args.devices > 1 else "auto", logger=CSVLogger(out, name="logs"),
                         callbacks=[callback, ModelCheckpoint(dirpath=out / "ckpt", filename="{epoch}",
                                                              save_top_k=-1, save_on_train_epoch_end=True)],
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         deterministic=True, use_distributed_sampler=False)
    # the ranks' shards of each global batch, in order (Lightning's own sampler would shuffle them)
    sampler = DistributedSampler(TensorDataset(x, y), num_replicas=args.devices, rank=trainer.global_rank,
                                 shuffle=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=GLOBAL_BATCH // args.devices, sampler=sampler)
    trainer.fit(lit, loader, ckpt_path=args.resume)
    torch.save({"updates": lit.updates, "covered": lit.covered,
                "state": {k: v.clone() for k, v in lit.model.state_dict().items()}, "initial": initial,
                "log": [dataclasses.asdict(e) for e in callback.reselector.log],
                "released": not hasattr(lit, "budgetplan_rows") and "forward" not in lit.model.c3.__dict__,
                "requires_grad": {n: p.requires_grad for n, p in lit.model.named_parameters()}},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
