"""Built-in models: shapes, published parameter counts, determinism, and one-line errors for bad names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from budgetplan.errors import InputError, ModelLoadError
from budgetplan.model.zoo import ZooEntry, build, is_zoo_name, list_models, lookup

LISTED = [entry.name for entry in list_models()]

# Published torchvision figures (1000 classes): an oracle independent of this code.
PUBLISHED_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "mobilenetv2": 3_504_872}


@pytest.fixture(scope="module")
def zoo() -> dict[str, tuple[nn.Module, ZooEntry]]:
    """Every listed model, built once for the module (and never trained or stepped by the tests)."""
    return {name: build(name) for name in LISTED}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def eval_mode(zoo: dict[str, tuple[nn.Module, ZooEntry]]) -> Iterator[None]:
    """Run a test with every zoo model in eval mode and no grad, so BN statistics stay untouched."""
    for model, _ in zoo.values():
        model.eval()
    with torch.no_grad():
        yield
    for model, _ in zoo.values():
        model.train()


def test_list_models_entries() -> None:
    entries = list_models()
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    assert {"resnet18", "resnet50", "mobilenetv2", "mobilenetv2-w0.35", "mobilenetv2-w0.5",
            "mobilenetv2-w0.75", "mcunet", "proxylessnas-w0.3", "tinycnn", "vit-tiny"} <= set(names)
    for entry in entries:
        assert is_zoo_name(entry.name)
        assert lookup(entry.name) == entry
        assert entry.description and "\n" not in entry.description
        assert len(entry.input_shape) == 4 and entry.input_shape[:2] == (1, 3)
    by_name = {e.name: e for e in entries}
    for name in ("resnet18", "resnet50", "mobilenetv2"):
        assert by_name[name].input_shape == (1, 3, 224, 224)
        assert by_name[name].num_classes == 1000
    for name in ("mobilenetv2-w0.35", "mobilenetv2-w0.5", "mobilenetv2-w0.75", "mcunet", "proxylessnas-w0.3"):
        assert by_name[name].input_shape == (1, 3, 128, 128)
        assert by_name[name].num_classes == 1000
    assert by_name["tinycnn"].input_shape == by_name["vit-tiny"].input_shape == (1, 3, 32, 32)


def test_models_are_returned_in_train_mode(zoo: dict[str, tuple[nn.Module, ZooEntry]]) -> None:
    assert all(model.training for model, _ in zoo.values())


@pytest.mark.usefixtures("eval_mode")
@pytest.mark.parametrize("name", LISTED)
def test_forward_shape(zoo: dict[str, tuple[nn.Module, ZooEntry]], name: str) -> None:
    model, entry = zoo[name]
    shape = entry.input_shape
    if shape[-1] == 224 and name != "resnet18":  # one 224x224 forward is enough; pooling is adaptive
        shape = (*shape[:2], 96, 96)
    out = model(torch.randn(shape))
    assert out.shape == (1, entry.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["tinycnn", "vit-tiny", "mcunet"])
def test_train_mode_forward_and_backward(name: str) -> None:
    model, entry = build(name)
    model(torch.randn(entry.input_shape)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_parameter_counts(zoo: dict[str, tuple[nn.Module, ZooEntry]], name: str) -> None:
    assert _params(zoo[name][0]) == PUBLISHED_PARAMS[name]


def _round8(value: float) -> int:
    """The paper's channel rounding: nearest multiple of 8, at least 8, at most 10 % below ``value``."""
    rounded = max(8, int(value + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * value else rounded


def _mobilenetv2_formula(width: float, classes: int = 1000) -> int:
    """MobileNetV2 parameters summed layer by layer from Table 2 of the paper (conv + 2 per BN channel)."""
    stages = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]
    channels = _round8(32 * width)
    total = 3 * channels * 3 * 3 + 2 * channels
    for expand, out, repeats in stages:
        out = _round8(out * width)
        for _ in range(repeats):
            hidden = round(channels * expand)
            if expand != 1:
                total += channels * hidden + 2 * hidden  # 1x1 expand + BN
            total += hidden * 3 * 3 + 2 * hidden  # 3x3 depthwise + BN
            total += hidden * out + 2 * out  # 1x1 project + BN
            channels = out
    last = _round8(1280 * max(1.0, width))
    total += channels * last + 2 * last
    return total + last * classes + classes


def test_mobilenetv2_formula_reproduces_the_published_count() -> None:
    assert _mobilenetv2_formula(1.0) == PUBLISHED_PARAMS["mobilenetv2"]


@pytest.mark.parametrize("name,width", [("mobilenetv2-w0.35", 0.35), ("mobilenetv2-w0.5", 0.5),
                                        ("mobilenetv2-w0.75", 0.75)])
def test_narrow_mobilenetv2_counts(
    zoo: dict[str, tuple[nn.Module, ZooEntry]], name: str, width: float
) -> None:
    assert _params(zoo[name][0]) == _mobilenetv2_formula(width)


def test_mobilenetv2_w035_is_in_the_published_ballpark(zoo: dict[str, tuple[nn.Module, ZooEntry]]) -> None:
    # Published: ≈1.66-1.7M parameters with a 1000/1001-class head.
    assert 1_600_000 < _params(zoo["mobilenetv2-w0.35"][0]) < 1_800_000


def test_narrow_channels_are_multiples_of_8(zoo: dict[str, tuple[nn.Module, ZooEntry]]) -> None:
    for name in ("mobilenetv2-w0.35", "proxylessnas-w0.3"):
        convs = [m for m in zoo[name][0].modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(c.out_channels % 8 == 0 for c in convs)


def _depthwise_kernels(model: nn.Module) -> set[int]:
    return {
        m.kernel_size[0]
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
    }


def test_mixed_kernel_networks(zoo: dict[str, tuple[nn.Module, ZooEntry]]) -> None:
    assert _depthwise_kernels(zoo["mcunet"][0]) == {3, 5, 7}
    assert _depthwise_kernels(zoo["proxylessnas-w0.3"][0]) == {3, 5, 7}
    assert _depthwise_kernels(zoo["mobilenetv2-w0.35"][0]) == {3}
    mcunet = zoo["mcunet"][0]
    ratios = {
        m.out_channels // m.in_channels
        for m in mcunet.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.out_channels > m.in_channels
        and m.out_channels % m.in_channels == 0 and m.out_channels != 1000
    }
    assert {3, 4, 6} <= ratios


def test_vit_tiny_uses_linear_attention_projections(zoo: dict[str, tuple[nn.Module, ZooEntry]]) -> None:
    names = [n for n, m in zoo["vit-tiny"][0].named_modules() if isinstance(m, nn.Linear)]
    for part in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.0", "mlp.2"):
        assert sum(n.endswith(part) for n in names) >= 2
    assert any(isinstance(m, nn.LayerNorm) for m in zoo["vit-tiny"][0].modules())


@pytest.mark.parametrize("name", LISTED)
def test_builds_are_bit_identical(zoo: dict[str, tuple[nn.Module, ZooEntry]], name: str) -> None:
    torch.manual_seed(987654321)  # the caller's seed must not matter
    model, entry = build(name)
    assert entry == zoo[name][1]
    reference = zoo[name][0].state_dict()
    state = model.state_dict()
    assert list(state) == list(reference)
    for key, value in state.items():
        assert torch.equal(value, reference[key]), f"{name}: {key} differs between builds"


def test_build_leaves_global_rng_alone() -> None:
    torch.manual_seed(7)
    state = torch.get_rng_state()
    build("tinycnn")
    build("mobilenetv2-w0.35")
    assert torch.equal(torch.get_rng_state(), state)


def test_different_models_get_different_weights() -> None:
    first, _ = build("mobilenetv2-w0.5")
    second, _ = build("mobilenetv2-w0.75")
    assert not torch.equal(first.features[0][0].weight[:8], second.features[0][0].weight[:8])


def test_names_are_normalised() -> None:
    model, entry = build("  MobileNetV2-W0.350 ")
    assert entry.name == "mobilenetv2-w0.35"
    assert lookup("mobilenetv2-w1").name == "mobilenetv2-w1.0"
    assert lookup("mobilenetv2-w1").input_shape == (1, 3, 128, 128)
    assert _params(model) == _mobilenetv2_formula(0.35)


def test_num_classes_override() -> None:
    model, entry = build("tinycnn", num_classes=3)
    assert entry.num_classes == 3
    assert model(torch.randn(entry.input_shape)).shape == (1, 3)
    assert lookup("resnet18", num_classes=5).num_classes == 5
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError):
            build("tinycnn", num_classes=bad)  # type: ignore[arg-type]


def test_unknown_name_suggests_neighbours() -> None:
    with pytest.raises(ModelLoadError) as info:
        build("resnet19")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown model 'resnet19'; did you mean: resnet18")
    assert "built-in models:" in message and "vit-tiny" in message
    assert not is_zoo_name("resnet19")


@pytest.mark.parametrize(
    "name",
    ["mobilenetv2-wfoo", "mobilenetv2-w0", "mobilenetv2-w-0.5", "mobilenetv2-w", "mobilenetv2-wnan",
     "mobilenetv2-winf", "mobilenetv2-w1e-1", "mobilenetv2-w100", "proxylessnas-w0.0"],
)
def test_malformed_width_is_a_one_line_error(name: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        lookup(name)
    assert "\n" not in str(info.value)
    assert "width" in str(info.value)
    assert not is_zoo_name(name)


def test_non_string_name() -> None:
    with pytest.raises(ModelLoadError):
        build(None)  # type: ignore[arg-type]
    assert not is_zoo_name("")


def test_zoo_models_are_fx_traceable(zoo: dict[str, tuple[nn.Module, ZooEntry]]) -> None:
    for name in ("tinycnn", "vit-tiny", "mcunet", "resnet18"):
        torch.fx.symbolic_trace(zoo[name][0])


# --------------------------------------------------------------------------------------------------
# tiny-training's three MCU networks, checked conv by conv against its own .pkl configs
# --------------------------------------------------------------------------------------------------

TT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "tiny-training"
TT_MODELS = {"mbv2-w0.35-tt": ("mbv2-w0.35", 51), "mcunet-5fps-tt": ("mcunet-5fps", 42),
             "proxyless-w0.3-tt": ("proxyless-w0.3", 60)}


@pytest.mark.parametrize("name", sorted(TT_MODELS))
def test_tiny_training_builtins_work_without_the_files(
    zoo: dict[str, tuple[nn.Module, ZooEntry]], name: str
) -> None:
    model, entry = zoo[name]
    assert entry.input_shape == (1, 3, 128, 128) and entry.num_classes == 10
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == TT_MODELS[name][1]
    assert all(c.bias is not None for c in convs)  # BatchNorm folded, as on the device
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 10


def _pkl_convs(config: dict) -> list[tuple[str, dict]]:
    """tiny-training's conv list from a .pkl dict: first_conv, each block's pointwise1/depthwise/
    pointwise2 (when present), feature_mix; the classifier is not a conv for tiny-training."""
    convs = [("first_conv", config["first_conv"])]
    for i, block in enumerate(config["blocks"]):
        convs += [(f"blocks.{i}.{k}", block[k]) for k in ("pointwise1", "depthwise", "pointwise2")
                  if block[k] is not None]
    if config["feature_mix"] is not None:
        convs.append(("feature_mix", config["feature_mix"]))
    return convs


@pytest.mark.skipif(not TT_DIR.is_dir(), reason=f"tiny-training's .pkl files are not at {TT_DIR} "
                    "(the checkout's ../shared/tiny-training)")
@pytest.mark.parametrize("name", sorted(TT_MODELS))
def test_tiny_training_builtins_match_the_pkl_layer_by_layer(
    zoo: dict[str, tuple[nn.Module, ZooEntry]], name: str
) -> None:
    from budgetplan.model.tiny_training import read_config

    config = read_config(TT_DIR / f"{TT_MODELS[name][0]}.pkl")
    model, entry = zoo[name]
    expected = _pkl_convs(config)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(expected) == TT_MODELS[name][1]
    sides: dict[str, tuple[int, int]] = {}
    def record(name: str):  # noqa: ANN202
        return lambda mod, inputs, out: sides.__setitem__(name, (inputs[0].shape[-1], out.shape[-1]))

    hooks = [m.register_forward_hook(record(n)) for n, m in convs]
    try:
        with torch.no_grad():
            model.eval()
            model(torch.randn(entry.input_shape))
    finally:
        model.train()
        for h in hooks:
            h.remove()
    for (module_name, conv), (pkl_name, ref) in zip(convs, expected):
        assert module_name == f"{pkl_name}.conv"
        k = ref["kernel_size"][0] if isinstance(ref["kernel_size"], tuple) else ref["kernel_size"]
        got = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.groups,
               conv.padding, sides[module_name])
        want = (ref["in_channel"], ref["out_channel"], (k, k), (ref["stride"],) * 2, ref["groups"],
                ((k - 1) // 2,) * 2, (ref["in_shape"], ref["out_shape"]))
        assert got == want, f"{name}: {pkl_name}"
        assert tuple(conv.weight.shape) == ref["params"]["weight"].shape
    assert [b.residual for b in model.blocks] == [b["residual"] is not None for b in config["blocks"]]
    assert [b.pointwise1 is None for b in model.blocks] == [b["pointwise1"] is None for b in config["blocks"]]
    assert model.feature_mix is None and config["feature_mix"] is None
    assert model.classifier.in_features == config["classifier"]["in_channel"]
