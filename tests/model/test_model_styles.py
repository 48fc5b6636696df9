"""The library-style test models: they run, torch.export traces them all, symbolic_trace fails as flagged."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from model_styles import STOCHASTIC_IN_TRAIN, STYLE_MODELS, SYMBOLIC_TRACE_FAILS, SYMBOLIC_TRACE_REASONS
from torch import nn

NAMES = sorted(STYLE_MODELS)
MAX_PARAMS = 2_000_000
MAX_INPUT = (1, 3, 64, 64)


@functools.cache
def _exported(name: str) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the eval-mode model, once per test session."""
    model, shape = STYLE_MODELS[name]()
    return torch.export.export(model.eval(), (torch.randn(shape),))


def _exported_ops(name: str) -> set[str]:
    """Names of the functions called in the exported graph, e.g. ``aten.conv2d.default``."""
    graph = _exported(name).graph
    return {str(node.target) for node in graph.nodes if node.op == "call_function"}


def test_registry_is_big_enough_and_flags_are_consistent() -> None:
    assert len(STYLE_MODELS) >= 12
    assert len(SYMBOLIC_TRACE_FAILS) >= 5
    assert SYMBOLIC_TRACE_FAILS <= set(STYLE_MODELS)
    assert set(SYMBOLIC_TRACE_REASONS) == SYMBOLIC_TRACE_FAILS
    assert STOCHASTIC_IN_TRAIN <= set(STYLE_MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_small_and_runs_forward_and_backward(name: str) -> None:
    model, shape = STYLE_MODELS[name]()
    assert model.training, "factories return train-mode models"
    assert len(shape) == 4 and all(s <= m for s, m in zip(shape, MAX_INPUT, strict=True))
    assert sum(p.numel() for p in model.parameters()) <= MAX_PARAMS
    x = torch.randn(shape)
    out = model(x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads), "every parameter takes part in the forward pass"
    with torch.no_grad():
        model.eval()
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    assert first.shape == out.shape


@pytest.mark.parametrize("name", sorted(set(NAMES) - STOCHASTIC_IN_TRAIN))
def test_train_mode_is_deterministic_unless_flagged(name: str) -> None:
    model, shape = STYLE_MODELS[name]()
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_factories_are_seeded_and_leave_global_rng_alone() -> None:
    for name in ("timm_vit", "tv_resnet", "functional"):
        state = torch.get_rng_state()
        first, _ = STYLE_MODELS[name]()
        assert torch.equal(torch.get_rng_state(), state)
        torch.manual_seed(1234)
        second, _ = STYLE_MODELS[name]()
        for (key, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
            assert torch.equal(a, b), f"{name}.{key} differs between two builds"


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_succeeds(name: str) -> None:
    program = _exported(name)
    model, shape = STYLE_MODELS[name]()
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model.eval()(x)
        got = program.module()(x)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", NAMES)
def test_symbolic_trace_fails_exactly_where_flagged(name: str) -> None:
    model, _ = STYLE_MODELS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name in SYMBOLIC_TRACE_FAILS:
            with pytest.raises(torch.fx.proxy.TraceError):
                torch.fx.symbolic_trace(model)
        else:
            torch.fx.symbolic_trace(model)


def test_models_cover_the_required_operators() -> None:
    ops = set().union(*(_exported_ops(name) for name in NAMES))
    required = (
        "aten.conv2d",
        "aten.linear",
        "aten.cat",
        "aten.add_",  # x += y
        "aten.relu_",  # ReLU(inplace=True), x.relu_()
        "aten.matmul",
        "aten.bmm",
        "aten.softmax",
        "aten.scaled_dot_product_attention",
        "aten.upsample_bilinear2d",  # F.interpolate
        "aten.pad",
        "aten.batch_norm",
        "aten.group_norm",
        "aten.layer_norm",
        "aten.silu",
        "aten.hardswish",
        "aten.hardsigmoid",
        "aten.sigmoid",
        "aten.transpose",
        "aten.view",
        "aten.adaptive_avg_pool2d",
        "aten.flatten",
    )
    missing = [op for op in required if not any(found.startswith((op + ".", op + "_.")) for found in ops)]
    assert not missing


@functools.cache
def _all_modules() -> tuple[nn.Module, ...]:
    """Every submodule of every style model (each model built once)."""
    return tuple(m for name in NAMES for m in STYLE_MODELS[name]()[0].modules())


def _modules(kind: type[nn.Module]) -> list[nn.Module]:
    """Every module of ``kind`` across all style models."""
    return [m for m in _all_modules() if isinstance(m, kind)]


def test_models_cover_the_required_layers() -> None:
    convs = _modules(nn.Conv2d)
    assert any(c.groups == c.in_channels > 1 for c in convs), "depthwise conv"
    assert any(1 < c.groups < c.in_channels for c in convs), "grouped conv"
    assert _modules(nn.GroupNorm) and _modules(nn.LayerNorm) and _modules(nn.BatchNorm2d)
    assert _modules(nn.Linear)
    assert any(getattr(m, "inplace", False) for m in _modules(nn.ReLU))


def test_a_conv_is_called_twice() -> None:
    model, shape = STYLE_MODELS["recurrent_shared_conv"]()
    calls: dict[nn.Module, int] = {}
    handles = [
        m.register_forward_hook(lambda mod, *_: calls.__setitem__(mod, calls.get(mod, 0) + 1))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    model(torch.randn(shape))
    for handle in handles:
        handle.remove()
    assert max(calls.values()) >= 2
