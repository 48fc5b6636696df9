"""tiny-training's model files and schemes as inputs: safe loading (a code-running pickle never runs),
structure checks, the float module against an int8 simulation of the file, and the shipped schemes
against the .pkl configs."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_support import assert_cli_error, invoke
from torch import nn

from budgetplan.errors import InputError, ModelLoadError
from budgetplan.model import tiny_training as tt
from budgetplan.model.loading import load_model
from budgetplan.model.update_set import from_sparse_update_config
from budgetplan.model.zoo import TinyTrainingNet, build

TT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "tiny-training"
MODELS = ("mbv2-w0.35", "mcunet-5fps", "proxyless-w0.3")
needs_pkl = pytest.mark.skipif(not TT_DIR.is_dir(), reason=f"tiny-training's .pkl files are not at {TT_DIR} "
                               "(the checkout's ../shared/tiny-training)")
# The schemes of compilation/mcu_ir_gen.py in mit-han-lab/tiny-training, by their published names.
PUBLISHED = {"mbv2-w0.35": ["49kb", "73kb", "99kb", "123kb", "138kb"],
             "mcunet-5fps": ["49kb", "74kb", "99kb", "124kb", "148kb"],
             "proxyless-w0.3": ["49kb", "74kb", "98kb", "120kb", "148kb"]}


@pytest.fixture(scope="module")
def configs() -> dict[str, dict[str, Any]]:
    return {name: tt.read_config(TT_DIR / f"{name}.pkl") for name in MODELS}


# --------------------------------------------------------------------------------------------------
# A small synthetic model file (no .pkl needed): two blocks, a 5x5 depthwise, a feature-mix conv
# --------------------------------------------------------------------------------------------------


def _conv(rng: np.random.Generator, cin: int, cout: int, k: int, stride: int, groups: int, side: int,
          relu: bool) -> dict[str, Any]:
    return {
        "in_channel": cin, "out_channel": cout, "in_shape": side, "out_shape": (side - 1) // stride + 1,
        "kernel_size": (k, k), "stride": stride, "groups": groups, "depthwise": groups > 1, "act": None,
        "params": {
            "weight": rng.integers(-127, 128, (cout, cin // groups, k, k)).astype(np.int8),
            "bias": rng.integers(-2000, 2000, cout).astype(np.int32),
            "w_scales": rng.uniform(0.002, 0.02, cout).astype(np.float32),
            "x_scale": 0.05, "x_zero": -128 if relu else 3, "y_scale": 0.05 if relu else 0.08,
            "y_zero": -128 if relu else -2,
        },
    }


def synthetic_config() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    first = _conv(rng, 3, 8, 3, 2, 1, 32, True)
    blocks = [
        {"pointwise1": None, "depthwise": _conv(rng, 8, 8, 3, 1, 8, 16, True),
         "pointwise2": _conv(rng, 8, 8, 1, 1, 1, 16, False), "residual": {"in_channel": 8, "in_shape": 16,
                                                                           "params": {}}, "se": None},
        {"pointwise1": _conv(rng, 8, 24, 1, 1, 1, 16, True), "depthwise": _conv(rng, 24, 24, 5, 2, 24, 16, True),
         "pointwise2": _conv(rng, 24, 12, 1, 1, 1, 8, False), "residual": None, "se": None},
    ]
    return {"first_conv": first, "blocks": blocks, "feature_mix": _conv(rng, 12, 32, 1, 1, 1, 8, True),
            "classifier": {k: v for k, v in _conv(rng, 32, 5, 1, 1, 1, 1, False).items()
                           if k not in ("in_shape", "out_shape")}}


def test_a_synthetic_file_loads_as_a_model(tmp_path: Path) -> None:
    path = tmp_path / "net.pkl"
    torch.save(synthetic_config(), path)
    loaded = load_model(str(path))
    assert loaded.kind == "tiny-training" and loaded.input_shape == (1, 3, 32, 32)
    model = loaded.module
    assert isinstance(model, TinyTrainingNet) and model.feature_mix is not None
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.groups) for c in convs] == [
        (3, 8, 3, 2, 1), (8, 8, 3, 1, 8), (8, 8, 1, 1, 1), (8, 24, 1, 1, 1), (24, 24, 5, 2, 24),
        (24, 12, 1, 1, 1), (12, 32, 1, 1, 1)]
    assert [b.residual for b in model.blocks] == [True, False]
    assert model.classifier.out_features == 5
    # activations: a ReLU clipped at 255 * y_scale where y_zero == -128, none on the projections
    assert model.first_conv.act.max_val == pytest.approx(255 * 0.05) and model.blocks[0].pointwise2.act is None
    # dequantised: w * w_scale per output channel, b * w_scale * x_scale
    ref = synthetic_config()["blocks"][1]["depthwise"]["params"]
    conv = model.blocks[1].depthwise.conv
    weight = ref["weight"].astype(np.float64) * ref["w_scales"][:, None, None, None]
    assert torch.allclose(conv.weight.double(), torch.from_numpy(weight))
    bias = ref["bias"].astype(np.float64) * ref["w_scales"] * ref["x_scale"]
    assert torch.allclose(conv.bias.double(), torch.from_numpy(bias))


def _mutated(path: str, value: Any) -> dict[str, Any]:
    config = synthetic_config()
    *parents, last = path.split("/")
    target: Any = config
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return config


@pytest.mark.parametrize("path,value,needle", [
    ("blocks", KeyError, "lacks blocks"),
    ("blocks", [], "non-empty list"),
    ("first_conv/params/weight", np.zeros((8, 3, 3, 3), np.float32), "numpy array of integers"),
    ("first_conv/params/weight", np.zeros((8, 3, 5, 5), np.int8), "expected (8, 3, 3, 3)"),
    ("blocks/1/depthwise/groups", 5, "groups 5"),
    ("blocks/1/pointwise2/in_channel", 16, "takes 16 input channels"),
    ("blocks/1/residual", {"params": {}}, "adds the block input"),
    ("blocks/0/se", {"fc": 1}, "squeeze-and-excitation"),
    ("blocks/0/residual", {"kernel_size": (1, 1)}, "conv shortcut"),
    ("classifier/params/y_scale", -1.0, "positive number"),
    ("classifier/kernel_size", (3, 3), "must be 1x1"),
    ("first_conv/params/x_zero", 300, "int8 zero point"),
    ("first_conv/stride", "2", "positive integer"),
])
def test_malformed_structure_is_a_one_line_error(path: str, value: Any, needle: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        tt.build_module(_mutated(path, value), "net.pkl")
    message = str(info.value)
    assert "\n" not in message and message.startswith("net.pkl: not a tiny-training model file:")
    assert needle in message, message


def test_a_numpy_only_pickle_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "arrays.pkl"
    torch.save({"weights": np.zeros(4, np.int8)}, path)
    with pytest.raises(ModelLoadError, match="not a tiny-training model file: the dict lacks first_conv"):
        load_model(str(path))


# --------------------------------------------------------------------------------------------------
# A code-running pickle never runs
# --------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_code_running_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pkl"
    config = synthetic_config()
    config["blocks"][0]["se"] = _Payload(marker)  # looks like a model file, plus one call to open()
    torch.save(config, path)
    assert not marker.exists()
    with pytest.raises(ModelLoadError) as direct:
        tt.read_config(path)
    assert "nothing from the file was executed" in str(direct.value) and "\n" not in str(direct.value)
    assert "open, which is not a numpy array global" in str(direct.value)
    with pytest.raises(ModelLoadError) as via_loader:
        load_model(str(path))
    assert "--trust-pickle" in str(via_loader.value)  # refused as any pickled code is, today
    result = invoke("inspect", str(path))
    assert_cli_error(result, "would execute code from the file")
    assert not marker.exists()


def test_pickle_globals_decide_which_loader_sees_a_file() -> None:
    assert tt.is_tiny_training_pickle(["numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
                                       "_codecs.encode"])
    assert not tt.is_tiny_training_pickle(["numpy.ndarray", "builtins.open"])
    assert not tt.is_tiny_training_pickle(["_codecs.encode"])
    assert not tt.is_tiny_training_pickle([])


# --------------------------------------------------------------------------------------------------
# The three published model files
# --------------------------------------------------------------------------------------------------


@needs_pkl
@pytest.mark.parametrize("name", MODELS)
def test_the_pkl_loads_as_the_zoo_architecture(name: str) -> None:
    loaded = load_model(str(TT_DIR / f"{name}.pkl"))
    assert loaded.kind == "tiny-training" and loaded.input_shape == (1, 3, 128, 128)
    builtin, _ = build(f"{name}-tt")
    state, reference = loaded.module.state_dict(), builtin.state_dict()
    assert list(state) == list(reference)
    assert [k for k in state if state[k].shape != reference[k].shape] == ["classifier.weight", "classifier.bias"]
    assert loaded.module.classifier.out_features == 1000  # the file's ImageNet head


def _kernel(conv: dict[str, Any]) -> int:
    k = conv["kernel_size"]
    return k[0] if isinstance(k, tuple) else k


def _qconv(conv: dict[str, Any], q: torch.Tensor) -> torch.Tensor:
    """One int8 conv as the file defines it: integer accumulation of (x - x_zero)·w + b, requantised by
    x_scale·w_scale / y_scale, plus y_zero, clamped to int8."""
    p, k = conv["params"], _kernel(conv)
    acc = F.conv2d((q - p["x_zero"]).double(), torch.from_numpy(p["weight"]).double(),
                   torch.from_numpy(p["bias"]).double(), conv["stride"], (k - 1) // 2, 1, conv["groups"])
    scale = torch.from_numpy(p["w_scales"]).double() * p["x_scale"] / p["y_scale"]
    return (torch.round(acc * scale.view(1, -1, 1, 1)) + p["y_zero"]).clamp(-128, 127)


def _int8_features(config: dict[str, Any], xq: torch.Tensor) -> torch.Tensor:
    """The pooled features of an integer simulation of the file (quantised residual adds)."""
    q = _qconv(config["first_conv"], xq)
    for block in config["blocks"]:
        start = q
        for name in ("pointwise1", "depthwise", "pointwise2"):
            if block[name] is not None:
                q = _qconv(block[name], q)
        if block["residual"] is not None:
            r, out = block["residual"]["params"], block["pointwise2"]["params"]
            real = (start - r["x_zero"]) * r["x_scale"] + (q - out["y_zero"]) * out["y_scale"]
            q = (torch.round(real / r["y_scale"]) + r["y_zero"]).clamp(-128, 127)
    head = config["classifier"]["params"]
    return ((q - head["x_zero"]) * head["x_scale"]).mean((2, 3))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small float64 convs run several times faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@needs_pkl
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", MODELS)
def test_the_float_module_tracks_an_int8_simulation_of_the_file(configs: dict, name: str) -> None:
    config = configs[name]
    model = tt.build_module(config).eval()
    first = config["first_conv"]["params"]
    noise = torch.randint(-128, 128, (2, 3, 128, 128), generator=torch.Generator().manual_seed(0)).double()
    xq = torch.round(F.avg_pool2d(noise, 5, 1, 2) * 3).clamp(-128, 127)  # a smooth int8 image
    features: dict[str, torch.Tensor] = {}
    model.pool.register_forward_hook(lambda mod, inputs, out: features.__setitem__("pool", out))
    with torch.no_grad():
        model(((xq - first["x_zero"]) * first["x_scale"]).float())
    got = features["pool"].flatten(1).double()
    want = _int8_features(config, xq)
    # int8 rounding drifts a few per cent over 40-60 layers; a wrong scale, clip or skip is far off
    assert F.cosine_similarity(got, want).min() > 0.99
    assert ((got - want).norm(dim=1) / want.norm(dim=1)).max() < 0.15


@needs_pkl
def test_cli_inspects_the_pkl() -> None:
    result = invoke("inspect", str(TT_DIR / "mcunet-5fps.pkl"), "--target", "cortex-m7")
    assert result.exit_code == 0, result.stderr
    assert "blocks.13.pointwise2.conv" in result.stdout and "input 1×3×128×128" in result.stdout


# --------------------------------------------------------------------------------------------------
# The shipped schemes
# --------------------------------------------------------------------------------------------------


def test_the_fifteen_published_schemes_ship() -> None:
    assert tt.list_schemes() == [f"tt:{m}/{label}" for m in MODELS for label in PUBLISHED[m]]
    for name in tt.list_schemes():
        doc = json.loads(tt.scheme_path(name).read_text())
        assert doc["scheme"] == name and "mcu_ir_gen.py" in doc["source"]
        assert doc["backward_config"]["enable_backward_config"] == 1
    assert (tt.SCHEME_DIR / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.parametrize("alias", ["tt:mbv2-w0.35/49kb", "TT:mbv2/49KB", "tt:mbv2-w0.35-tt/49", " tt:mbv2/49kb "])
def test_scheme_names(alias: str) -> None:
    assert tt.scheme_path(alias) == tt.SCHEME_DIR / "mbv2-w0.35" / "49kb.json"


@pytest.mark.parametrize("bad", ["tt:mbv2/50kb", "tt:resnet18/49kb", "tt:", "tt:mbv2", "tt:../mbv2-w0.35/49kb",
                                 "tt:mbv2/../../mcunet-5fps/49kb"])
def test_unknown_scheme_is_a_one_line_error(bad: str) -> None:
    with pytest.raises(InputError) as info:
        tt.scheme_path(bad)
    assert "\n" not in str(info.value) and "tt:mcunet-5fps/148kb" in str(info.value)


def _independent_count(config: dict[str, Any], scheme: dict[str, Any], classes: int) -> int:
    """Trained parameters of a scheme from the .pkl conv list alone: whole biases of the last
    n_bias_update convs; int(C_in·r) kept input channels of each weight (depthwise: channels); the
    new fp32 classifier."""
    convs = [config["first_conv"]] + [b[k] for b in config["blocks"]
                                      for k in ("pointwise1", "depthwise", "pointwise2") if b[k] is not None]
    n = len(convs)
    count = sum(c["out_channel"] for c in convs[n - scheme["n_bias_update"]:])
    for idx, ratio in zip(scheme["manual_weight_idx"], scheme["weight_update_ratio"], strict=True):
        conv, k = convs[idx], _kernel(convs[idx])
        kept = int(conv["in_channel"] * ratio)
        count += kept * k * k if conv["groups"] > 1 else conv["out_channel"] * kept * k * k
    return count + (config["classifier"]["in_channel"] + 1) * classes


@needs_pkl
@pytest.mark.parametrize("name", [f"tt:{m}/{label}" for m in MODELS for label in PUBLISHED[m]])
def test_scheme_trains_what_the_pkl_config_says(configs: dict, name: str) -> None:
    model_name = name[3:].split("/")[0]
    model, entry = build(f"{model_name}-tt")
    update = from_sparse_update_config(name, model)
    scheme = json.loads(tt.scheme_path(name).read_text())["backward_config"]
    assert update.num_trained_elements(model) == _independent_count(configs[model_name], scheme, entry.num_classes)
    # the same scheme on the module built from the file trains the same tensors
    from_file = tt.build_module(configs[model_name])
    assert from_sparse_update_config(name, from_file).parameter_names() == update.parameter_names()


def test_a_weight_ratio_keeps_whole_channel_counts() -> None:
    # every ratio of the published schemes gives whole channel counts on both dims (so the dim-0 slice of a
    # budgetplan update set trains exactly as many weights as tiny-training's input-channel slice)
    for name in tt.list_schemes():
        model, _ = build(f"{name[3:].split('/')[0]}-tt")
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        scheme = json.loads(tt.scheme_path(name).read_text())["backward_config"]
        for idx, ratio in zip(scheme["manual_weight_idx"], scheme["weight_update_ratio"], strict=True):
            assert math.isclose(convs[idx].in_channels * ratio, round(convs[idx].in_channels * ratio))
            assert math.isclose(convs[idx].out_channels * ratio, round(convs[idx].out_channels * ratio))


def test_scheme_config_copy_is_a_plain_sparse_update_config(tmp_path: Path) -> None:
    doc = json.loads(tt.scheme_path("tt:mcunet/99kb").read_text())
    path = tmp_path / "99kb.json"
    path.write_text(json.dumps(copy.deepcopy(doc)))
    model, _ = build("mcunet-5fps-tt")
    assert from_sparse_update_config(str(path), model) == from_sparse_update_config("tt:mcunet/99kb", model)


def test_update_specs_name_schemes_like_strategy_configs(tmp_path: Path) -> None:
    from budgetplan.model.update_set import resolve_update_spec

    model, _ = build("proxyless-w0.3-tt")
    want = from_sparse_update_config("tt:proxyless-w0.3/98kb", model)
    assert resolve_update_spec(model, "config:tt:proxyless-w0.3/98kb") == want
    assert resolve_update_spec(model, "tt:proxyless/98kb") == want
    path = tmp_path / "scheme.json"
    path.write_text(tt.scheme_path("tt:proxyless/98kb").read_text())
    assert resolve_update_spec(model, f"config:{path}") == want
    with pytest.raises(InputError, match="unknown tiny-training scheme"):
        resolve_update_spec(model, "config:tt:proxyless/99kb")


def test_cli_estimates_a_shipped_scheme() -> None:
    result = invoke("estimate", "mbv2-w0.35-tt", "--update", "config:tt:mbv2-w0.35/49kb", "--json", "-")
    assert result.exit_code == 0, result.stderr
    model, _ = build("mbv2-w0.35-tt")
    trained = from_sparse_update_config("tt:mbv2-w0.35/49kb", model).num_trained_elements(model)
    assert sum(json.loads(result.stdout)["trained_parameters"].values()) == trained  # 26,668
    assert_cli_error(invoke("estimate", "mbv2-w0.35-tt", "--update", "config:tt:mbv2/50kb"),
                     "unknown tiny-training scheme 'tt:mbv2/50kb'")
