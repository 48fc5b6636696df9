"""Fine-tune under a memory budget with Lightning: BudgetCallback plans, compiles, re-selects every epoch.

The plan is for a microcontroller (an STM32F746, 64 KiB for the training step, batch 1); the Trainer
rehearses that training on this computer. Every epoch the callback measures how fast each neuron still
moves (NEq velocity on 10 held-out images), re-solves which ones to train within the budget and switches
the model to them; the optimizer and its LR schedule are rebuilt through the Trainer. Offline, seconds
on a CPU (synthetic data, a small CNN with seeded random weights):

    python examples/lightning_finetune.py                  # one process
    python examples/lightning_finetune.py --devices 2      # strategy="ddp", 2 processes (gloo)
"""

from __future__ import annotations

import argparse
import logging
import warnings

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from budgetplan.integrations.lightning import BudgetCallback
from budgetplan.integrations.progress import configure_logging
from budgetplan.model import zoo


class FineTune(pl.LightningModule):
    """An ordinary LightningModule: nothing budgetplan-specific in it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model, _ = zoo.build("tinycnn")  # pretend it is pretrained

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = nn.functional.cross_entropy(self.model(images), labels)
        self.log("loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="lightning")
    configure_logging("normal")  # budgetplan's per-epoch lines (and solve spinners on a terminal)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(256, 3, 32, 32, generator=gen), torch.randint(0, 10, (256,), generator=gen)
    val_images = torch.randn(10, 3, 32, 32, generator=gen)  # the velocity's fixed held-out batch

    callback = BudgetCallback(val_images, target="cortex-m7", ram="64k", example_input=val_images[:1])
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=args.devices,
                         strategy="ddp" if args.devices > 1 else "auto", callbacks=[callback],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    module = FineTune()
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=16))

    if trainer.global_rank == 0:
        for entry in callback.reselector.log:
            print(f"epoch {entry.epoch} ({entry.source}): {entry.groups_selected}/{entry.groups_total} groups, "
                  f"{entry.groups_changed} changed, predicted peak {entry.predicted_peak_bytes / 1024:.1f} KiB of "
                  f"{entry.budget_bytes / 1024:.0f} KiB, solve {entry.solve_seconds:.2f} s")
        frozen = [n for n, p in module.model.named_parameters() if not p.requires_grad]
        print(f"after fit: the network is plain again ({len(frozen)} parameters with requires_grad=False)")


if __name__ == "__main__":
    main()
