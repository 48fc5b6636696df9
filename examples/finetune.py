"""Fine-tune a model in memory under a memory budget: plan -> compile -> an ordinary PyTorch loop.

The plan is made for a microcontroller (an STM32F746, 64 KiB for the training step: tiny-training's
setting); the compiled module rehearses that training on this computer with PyTorch. Runs offline in
seconds on a CPU (synthetic data, a small CNN with seeded random weights):

    python examples/finetune.py
"""

from __future__ import annotations

import torch
from torch import nn

import budgetplan
from budgetplan.model import zoo

torch.manual_seed(0)
model, _ = zoo.build("tinycnn")  # any nn.Module object in memory works; pretend it is pretrained
x_example = torch.randn(1, 3, 32, 32)  # the device trains with batch 1

# 1. plan: which neurons (output channels) to train so that one step fits in 64 KiB on the device
plan = budgetplan.plan(model, x_example, target="cortex-m7", ram="64k")
# 2. compile: frozen weights stop requiring grad, channel subsets become small trainable row tensors
compiled = budgetplan.compile(model, plan, example_inputs=x_example)
compiled.print_summary()

before = {k: v.clone() for k, v in model.state_dict().items()}
optimizer = torch.optim.SGD(compiled.trainable_parameters(), lr=0.05)
loss_fn = nn.CrossEntropyLoss()
compiled.train()
for step in range(5):  # 3. an ordinary PyTorch training loop on synthetic data
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    optimizer.zero_grad()
    loss = loss_fn(compiled(images), labels)
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.4f}")

# The trained weights are in `model` itself (same keys and shapes as before).
after = compiled.state_dict()
update = compiled.update
frozen_same = all(torch.equal(after[name], before[name]) for name, _ in model.named_parameters()
                  if not update.is_updated(name))
rows_same = all(torch.equal(after[name][[i for i in range(after[name].shape[0]) if i not in chans]],
                            before[name][[i for i in range(before[name].shape[0]) if i not in chans]])
                for name, chans in update.entries.items() if chans is not None)
moved = sum(not torch.equal(after[name], before[name]) for name in update.entries)
print(f"frozen weights unchanged: {frozen_same and rows_same}; tensors trained and moved: {moved}/{len(update)}")
print(f"plan: peak {plan.estimate.peak_bytes / 1024:.1f} KiB on {plan.estimate.target} (budget "
      f"{plan.budget_bytes / 1024:.0f} KiB)")
