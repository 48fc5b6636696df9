"""Inference pricing (budgetplan.pricing.inference) on the host, against PyTorch.

* FLOPs per model: ``forward_report``'s total against ``FlopCounterMode`` on one eval forward (the ops
  FlopCounterMode counts: matmuls and convolutions; depthwise included).
* The inference peak: the maximum of live activation bytes (the input included until its last use,
  parameters and buffers not) over the forward schedule, against the live storages observed on the
  traced program under ``torch.no_grad`` by a dispatch mode written here (each new storage counted from
  the op that creates it until Python frees it: the traced program drops every value after its last
  use; the input is held by the caller throughout, so the oracle may exceed the schedule by its bytes).
* Parameter bytes against the model's own tensors.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from budgetplan.model.graph import build_layer_graph
from budgetplan.model.tracing import trace_model
from budgetplan.pricing.inference import forward_report
from budgetplan.targets import load_target

HOST = load_target("host")
MODELS = [("tinycnn", None), ("mobilenetv2-w0.35", (1, 3, 64, 64)), ("vit-tiny", None), ("tv_resnet", None),
          ("timm_convnext", None)]


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of live storages created inside the mode, plus ``base`` bytes held from the start (the
    input, which the caller holds for the whole call)."""

    def __init__(self, base: int, existing: set[int]) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.base = base
        self.peak = base
        self.existing = existing  # storages of parameters, buffers and the input (views of them are not new)

    def _free(self, key: int) -> None:
        self.live.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                if s._cdata not in self.live and s._cdata not in self.existing and s.nbytes():
                    self.live[s._cdata] = s.nbytes()
                    weakref.finalize(s, self._free, s._cdata)
        self.peak = max(self.peak, self.base + sum(self.live.values()))
        return out


@pytest.mark.parametrize("name, shape", MODELS, ids=[m for m, _ in MODELS])
def test_forward_flops_peak_and_parameters_match_pytorch(traced, name: str, shape) -> None:
    t = traced(name, shape)
    model = t.model.eval()
    x = t.x
    graph = build_layer_graph(trace_model(model, (x,)), (x,))  # eval mode: the inference program
    report = forward_report(graph, HOST)

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    assert report.totals.flops == counter.get_total_flops()

    assert report.totals.params == sum(p.numel() for p in model.parameters())
    assert report.totals.param_bytes == sum(p.numel() * p.element_size() for p in model.parameters())

    program = trace_model(model, (x,)).graph_module
    existing = {s.untyped_storage()._cdata for s in [*model.parameters(), *model.buffers(), x]}
    input_bytes = x.untyped_storage().nbytes()
    oracle = _LiveBytes(input_bytes, existing)
    with torch.no_grad(), oracle:
        program(x)
    # the schedule frees the input after its last use; the caller of the program holds it to the end
    predicted = report.totals.inference_peak_bytes
    assert predicted <= oracle.peak <= predicted + input_bytes, (name, predicted, oracle.peak)
