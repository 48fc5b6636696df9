"""The compiled training step: the scheduled fx graph updates exactly what an eager PyTorch step updates
(the oracle: ``loss.backward()`` and ``p -= lr * p.grad``), on whole parameters and on the channel
subsets of ``budgetplan.compile``; each update sits right after its gradient; frozen parts are pruned."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import budgetplan
from budgetplan.model import zoo
from budgetplan.runtime.arena import check_arena, plan_arena
from budgetplan.errors import InputError
from budgetplan.runtime.training_step import build_training_step, eager_sgd_step
from budgetplan.model.update_set import from_patterns

from model_styles import STYLE_MODELS


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name in STYLE_MODELS:
        return STYLE_MODELS[name]()
    model, entry = zoo.build(name)
    shape = (1, 3, 64, 64) if name.startswith("mobilenetv2") else entry.input_shape
    return model, shape


def _freeze_all_but(model: nn.Module, patterns: list[str]) -> None:
    us = from_patterns(model, patterns)
    for name, p in model.named_parameters():
        p.requires_grad_(us.is_updated(name))


def _assert_same_state(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if sa[key].is_floating_point():
            assert torch.allclose(sa[key], sb[key], atol=atol, rtol=1e-5), key
        else:
            assert torch.equal(sa[key], sb[key]), key


def _graph_vs_eager(model: nn.Module, x: torch.Tensor, **kw: object) -> tuple[nn.Module, nn.Module]:
    step = build_training_step(model, x, **kw)  # type: ignore[arg-type]
    torch.manual_seed(7)
    reference, ref_loss = eager_sgd_step(model, x, **kw)  # type: ignore[arg-type]
    ours = copy.deepcopy(model)
    torch.manual_seed(7)
    loss = step.run(ours, x)
    assert torch.allclose(loss, ref_loss, atol=1e-6, rtol=1e-5)
    return reference, ours


@pytest.mark.parametrize(("name", "patterns"), [
    ("tinycnn", ["features.4.weight", "features.5.bias", "fc"]),      # BatchNorm in train mode
    ("tv_resnet", ["layers.1.*", "fc"]),                               # residual blocks, x += identity
    ("timm_vit", ["blocks.1.*", "head"]),                            # attention, LayerNorm, GELU
    ("mobilenetv2-w0.35", ["all"]),                                  # depthwise convs, ReLU6, dropout
])
def test_graph_step_matches_an_eager_step(name: str, patterns: list[str]) -> None:
    model, shape = _model(name)
    _freeze_all_but(model, patterns)
    x = torch.randn(shape)
    before = copy.deepcopy(model.state_dict())
    reference, ours = _graph_vs_eager(model, x)
    _assert_same_state(reference, ours)
    # the step changed the trained parameters and left the frozen ones (and the caller's model) alone
    us = from_patterns(model, patterns)
    for pname, value in ours.named_parameters():
        changed = not torch.equal(value, before[pname])
        assert changed == us.is_updated(pname) or not changed, pname
        if not us.is_updated(pname):
            assert torch.equal(value, before[pname]), pname
    _assert_same_state(model, _with_state(model, before))


def _with_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other


def test_cross_entropy_loss_matches_eager() -> None:
    model, shape = _model("tinycnn")
    _freeze_all_but(model, ["features.8.weight", "fc"])
    reference, ours = _graph_vs_eager(model, torch.randn(shape), loss="cross-entropy", lr=0.05)
    _assert_same_state(reference, ours)


def test_compiled_module_channel_subsets_two_steps_match_eager() -> None:
    model, shape = _model("tinycnn")
    update = from_patterns(model, ["features.4.weight[0:8]", "features.8[3,5,9]", "fc.weight[0:4]",
                                   "features.5.bias"])
    compiled = budgetplan.compile(model, update)
    x = torch.randn(shape)
    step = build_training_step(compiled, x, lr=0.1)
    eager, ours = copy.deepcopy(compiled), copy.deepcopy(compiled)
    frozen_before = {n: p.detach().clone() for n, p in compiled.module.named_parameters()}
    for _ in range(2):  # the second step must see the first step's rows in the full weights
        eager, _ = eager_sgd_step(eager, x, lr=0.1)
        step.run(ours, x)
    for a, b in zip(eager.trainable_parameters(), ours.trainable_parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    _assert_same_state(eager, ours)
    after = ours.state_dict()
    # rows outside the subsets are bit-identical; the selected rows moved
    assert torch.equal(after["features.4.weight"][8:], frozen_before["features.4.weight"][8:])
    assert not torch.equal(after["features.4.weight"][:8], frozen_before["features.4.weight"][:8])
    assert torch.equal(after["fc.weight"][4:], frozen_before["fc.weight"][4:])
    assert torch.equal(after["features.0.weight"], frozen_before["features.0.weight"])


def test_each_update_follows_its_gradient_and_frees_it() -> None:
    model, shape = _model("tinycnn")
    _freeze_all_but(model, ["features.4.weight", "features.8.weight", "fc"])
    step = build_training_step(model, torch.randn(shape))
    unscheduled = build_training_step(model, torch.randn(shape), reorder=False)
    nodes = {n.name: n for n in step.nodes}
    assert {u.parameter for u in step.updates} == {"features.4.weight", "features.8.weight", "fc.weight", "fc.bias"}
    for u in step.updates:
        grad = nodes[u.gradient_node]
        # only other parameter updates may sit between the gradient and its update
        between = step.nodes[grad.index + 1:u.step]
        assert all(n.phase == "update" or n.op.startswith("aten.t") for n in between), (u, between)
        # the gradient's buffer dies at its update
        (buf,) = [b for b in step.buffers if b.name in nodes[u.update_node].reads and b.kind == "gradient"]
        assert buf.last == u.step
    # without reordering every update waits for the end of backward
    last_backward = max(n.index for n in unscheduled.nodes if n.phase == "backward" and n.op != "aten.detach.default")
    assert min(u.step for u in unscheduled.updates) > last_backward
    assert step.peak_bytes <= unscheduled.peak_bytes
    # eager order keeps every parameter gradient until the end: the reordered peak is lower here
    assert step.peak_bytes < step.unscheduled_peak_bytes == unscheduled.peak_bytes


def test_frozen_parts_are_pruned() -> None:
    model, shape = _model("tinycnn")
    _freeze_all_but(model, ["fc"])
    step = build_training_step(model, torch.randn(shape))
    ops = [n.op for n in step.nodes]
    assert not any("convolution_backward" in op for op in ops)
    _freeze_all_but(model, ["features.4.weight"])
    step = build_training_step(model, torch.randn(shape))
    conv_bwd = [n for n in step.nodes if "convolution_backward" in n.op]
    assert len(conv_bwd) == 2  # features.8 (input gradient only) and features.4 (weight gradient); not features.0


def test_buffers_are_live_wherever_they_are_used_and_the_arena_is_sound() -> None:
    model, shape = _model("tv_resnet")
    _freeze_all_but(model, ["layers.0.*", "fc"])
    step = build_training_step(model, torch.randn(shape))
    by_name = {b.name: b for b in step.buffers}
    for n in step.nodes:
        for name in n.reads + n.writes:
            b = by_name[name]
            assert b.first <= n.index <= b.last, (n, b)
    arena = plan_arena(step.arena_buffers())
    assert check_arena(arena) == []
    assert arena.peak_live_bytes == step.peak_bytes
    assert arena.arena_bytes >= arena.peak_live_bytes
    outside = step.outside_bytes()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert outside["trained"] + outside["frozen"] == params
    assert outside["input"] == 4 * 3 * 32 * 32


def test_emitted_python_file_runs_the_same_step() -> None:
    model, shape = _model("hf_vit_sdpa")
    _freeze_all_but(model, ["layer.1.*", "classifier"])
    x = torch.randn(shape)
    step = build_training_step(model, x, loss="cross-entropy")
    source = step.python_source()
    assert "pickle" not in source and "torch.load" not in source
    namespace: dict[str, object] = {}
    exec(compile(source, "step.py", "exec"), namespace)  # noqa: S102 - the file we just generated
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    loss_a = namespace["train_step"](a, x)  # type: ignore[operator]
    loss_b = step.run(b, x)
    assert torch.equal(loss_a, loss_b)
    for (na, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(ta, tb), na
    reference, _ = eager_sgd_step(model, x, loss="cross-entropy")
    _assert_same_state(reference, a)


def test_bad_input_is_one_line() -> None:
    model, shape = _model("tinycnn")
    x = torch.randn(shape)
    with pytest.raises(InputError, match="unknown loss"):
        build_training_step(model, x, loss="mse")
    with pytest.raises(InputError, match="learning rate"):
        build_training_step(model, x, lr=0)

    class Pixels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.conv(t)

    with pytest.raises(InputError, match="cross-entropy"):
        build_training_step(Pixels(), x, loss="cross-entropy")
