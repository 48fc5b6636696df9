"""The pipeline's library entry points (budgetplan.pipeline): inspect → estimate → analyze → check.

What each returns is checked against PyTorch where PyTorch can say (FLOPs by ``FlopCounterMode``,
saved bytes by ``saved_tensors_hooks``, parameter counts by the module), and the steps against each
other where they must agree: a plan that ``analyze_model`` writes passes ``check_model`` at its budget
and fails below its peak, with the verdict computed from the plan file, not from the analysis.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from saved_oracle import saved_storage_bytes
from torch.utils.flop_counter import FlopCounterMode

from budgetplan.emit.plan_file import dumps_plan
from budgetplan.model import zoo
from budgetplan.pipeline import analyze_model, check_model, estimate_training, inspect_model


def test_inspect_counts_what_pytorch_counts() -> None:
    report = inspect_model("tinycnn", target="host")
    model, entry = zoo.build("tinycnn")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(entry.input_shape))
    assert report.totals.flops == counter.get_total_flops()
    assert report.totals.params == sum(p.numel() for p in model.parameters())


def test_estimate_saves_what_autograd_saves() -> None:
    step = estimate_training("tinycnn", target="host", update="fc,*.bias")
    model, entry = zoo.build("tinycnn")
    x = torch.randn(entry.input_shape)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc.") or name.endswith(".bias"))
    saved, out = saved_storage_bytes(model, x)
    out.sum().backward()  # sum saves no tensor
    assert step.memory.activations == saved
    assert step.memory.gradients == sum(p.grad.numel() * 4 for p in model.parameters() if p.grad is not None)


def test_a_plan_from_analyze_passes_check_at_its_budget_and_fails_below_its_peak(tmp_path: Path) -> None:
    analysis = analyze_model("tinycnn", target="cortex-m7", ram="96k")
    plan = analysis.plan
    assert plan.fits and not plan.update.is_empty
    path = tmp_path / "plan.json"
    path.write_text(dumps_plan(analysis.document))
    ok = {i.name: i.passed for i in check_model("tinycnn", target="cortex-m7", ram="96k", plan=path)}
    assert ok == {"inference": True, "plan": True}
    short = plan.estimate.peak_bytes - 1
    verdicts = {i.name: i.passed for i in check_model("tinycnn", target="cortex-m7", ram=short, plan=path)}
    assert verdicts["plan"] is False
    document = json.loads(path.read_text())
    assert document["update"] and document["target"]["name"]
