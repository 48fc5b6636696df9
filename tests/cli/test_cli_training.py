"""``budgetplan estimate`` and ``budgetplan measure`` through the command line.

Most cases run in-process through typer's ``CliRunner``; two run the installed program in a subprocess.
Numbers are checked against facts computed here without budgetplan: parameter and buffer sizes from the
model, FLOPs from PyTorch's ``FlopCounterMode``, optimizer state from a real ``torch.optim`` step,
input sizes from forward hooks, data types from the target TOML files. The models are the zoo's
``tinycnn`` and a few tiny ones written below.

Every input error must come out as exactly one line on stderr, exit code 2, no traceback. The last
section keeps docs/cli.md and docs/json-output.md true for the two commands.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from budgetplan.model import zoo
from budgetplan.cli import app
from cli_support import (
    BIASNET_MODULE,
    DOCS,
    ROOT,
    assert_cli_error,
    assert_trimmed,
    cli_argv,
    doc_example,
    doc_section,
    documented_fields,
    enter_models_dir,
    invoke,
    run,
    run_doc_examples,
    write_models_module,
)

TARGETS_DIR = ROOT / "targets"

MEMORY_KINDS = ("activations", "weights", "gradients", "optimizer", "other")
FLOP_KINDS = {"forward", "backward", "backward_to_activations", "backward_to_parameters"}
QUANTITIES = [
    "saved activations (bytes)", "parameter gradients (bytes)", "optimizer state (bytes)",
    "peak live bytes", "forward FLOPs", "backward FLOPs",
]

MOD = "cli_training_models"  # written into a temporary directory (a unique name in sys.modules)
MODULE_SOURCE = BIASNET_MODULE + '''

class Unused(nn.Module):
    """A module with a parameter the forward pass never uses (a spare head)."""

    input_shape = (2, 8)

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.spare = nn.Linear(8, 4)

    def forward(self, x):
        return self.a(x)


class Twice(nn.Module):
    """One Linear applied twice: its weight gets two gradients that autograd adds up."""

    input_shape = (2, 8)

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.lin(torch.tanh(self.lin(x))))
'''


# --------------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------------


def run_json(command: str, *args: str) -> dict[str, Any]:
    """``budgetplan COMMAND ARGS --json -``, checked to succeed quietly; the parsed document."""
    result = invoke(command, *args, "--json", "-")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)  # all of stdout is the JSON document


def estimate(*args: str) -> dict[str, Any]:
    return run_json("estimate", *args)


def target_file(name: str) -> dict[str, Any]:
    return tomllib.loads((TARGETS_DIR / f"{name}.toml").read_text())


def dtype_bytes(dtype_name: str) -> int:
    """Bytes per element of a dtype named in a target file ("int8", "float32"), from torch."""
    return getattr(torch, dtype_name).itemsize


M7 = target_file("stm32f746")  # --target cortex-m7
HOST = target_file("host")
M7_USABLE = 256 * 1024  # 320 KiB SRAM - 64 KiB reserved (targets/stm32f746.toml)
HOST_USABLE = 8 * 1024**3


def params_of(model: nn.Module, prefixes: Iterable[str]) -> dict[str, nn.Parameter]:
    """Parameters named ``prefix`` or under module ``prefix``; ``all`` = every parameter."""
    prefixes = list(prefixes)
    return {n: p for n, p in model.named_parameters()
            if "all" in prefixes or any(n == q or n.startswith(q + ".") for q in prefixes)}


def fresh(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def flop_count(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FlopCounterMode total of one forward pass."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fresh(model)(torch.randn(*shape))
    return int(counter.get_total_flops())


def backward_flop_count(model: nn.Module, shape: tuple[int, ...], trained: Iterable[str]) -> int:
    """FlopCounterMode total of the backward of ``sum(model(x))`` with only ``trained`` requiring grad
    (no grouped convolutions here, where FlopCounterMode over-counts)."""
    net = fresh(model)
    names = set(trained)
    for n, p in net.named_parameters():
        p.requires_grad_(n in names)
    loss = net(torch.randn(*shape)).sum()
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    return int(counter.get_total_flops())


def real_optimizer_state_bytes(model: nn.Module, shape: tuple[int, ...], trained: Iterable[str],
                               optimizer: str) -> int:
    """Bytes of every tensor in ``torch.optim``'s state after one real step on ``trained``."""
    net = fresh(model)
    names = set(trained)
    params = []
    for n, p in net.named_parameters():
        p.requires_grad_(n in names)
        if n in names:
            params.append(p)
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=1e-3)
    else:
        opt = torch.optim.SGD(params, lr=1e-2, momentum=0.9 if optimizer == "sgd-momentum" else 0.0)
    net(torch.randn(*shape)).sum().backward()
    opt.step()
    storages: dict[int, int] = {}
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    assert len(opt.state) in (0, len(params))
    return sum(storages.values())


def input_numel(model: nn.Module, submodule: nn.Module, shape: tuple[int, ...]) -> int:
    """Elements of ``submodule``'s input in one forward pass (a forward pre-hook)."""
    seen: list[int] = []
    handle = submodule.register_forward_pre_hook(lambda _m, args: seen.append(args[0].numel()))
    try:
        with torch.no_grad():
            model(torch.randn(*shape))
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def state_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of the model (what eager PyTorch holds for weights)."""
    return sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()])


def mcu_param_bytes(model: nn.Module, trained: dict[str, int]) -> int:
    """SRAM bytes of trained parameters on cortex-m7: weights in weight_dtype, 1-D ones in bias_dtype."""
    shapes = dict(model.named_parameters())
    return sum(n * dtype_bytes(M7["bias_dtype"] if shapes[name].dim() == 1 else M7["weight_dtype"])
               for name, n in trained.items())


@pytest.fixture(scope="module")
def tinycnn() -> tuple[nn.Module, tuple[int, ...]]:
    model, entry = zoo.build("tinycnn")
    return model, tuple(entry.input_shape)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models_module(tmp_path_factory.mktemp("cli_training"), MOD, MODULE_SOURCE)


@pytest.fixture
def in_models(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run from the directory of the hand-written models, importable as ``cli_training_models``."""
    return enter_models_dir(models_dir, MOD, monkeypatch)


def check_timeline(data: dict[str, Any]) -> None:
    """The peak is the maximum of the timeline, and every point's breakdown adds up."""
    timeline = data["timeline"]
    assert timeline, "empty timeline"
    phases = ["forward", "backward", "step"]
    last = 0
    for point in timeline:
        assert set(point) == {"phase", "label", "live_bytes", "breakdown"}, point
        assert set(point["breakdown"]) == set(MEMORY_KINDS)
        assert point["live_bytes"] == sum(point["breakdown"].values()), point
        assert point["live_bytes"] <= data["peak_bytes"], point
        index = phases.index(point["phase"])
        assert index >= last, "phases out of order"
        last = index
    assert data["peak_bytes"] == max(p["live_bytes"] for p in timeline)
    at_peak = [p for p in timeline if p["live_bytes"] == data["peak_bytes"]]
    assert data["peak_at"] in {f"{p['phase']}:{p['label']}" for p in at_peak}
    assert data["memory_at_peak"]["total"] == data["peak_bytes"]
    assert {k: data["memory_at_peak"][k] for k in MEMORY_KINDS} in [p["breakdown"] for p in at_peak]


# --------------------------------------------------------------------------------------------------
# estimate on host: values against PyTorch
# --------------------------------------------------------------------------------------------------


def test_estimate_host_json(tinycnn: tuple[nn.Module, tuple[int, ...]]) -> None:
    model, shape = tinycnn
    data = estimate("tinycnn", "--target", "host", "--update", "fc", "--ram", "1G")
    for key in ("model", "target", "optimizer", "peak_bytes", "memory", "memory_at_peak", "peak_at", "flops",
                "latency_s", "trained_parameters", "backward_layers", "timeline", "budget_bytes", "fits"):
        assert key in data, key
    assert (data["model"], data["target"], data["optimizer"]) == ("zoo:tinycnn", "host", "sgd")
    memory = data["memory"]
    assert set(memory) == {*MEMORY_KINDS, "total"}
    assert all(isinstance(memory[k], int) and memory[k] >= 0 for k in memory)
    assert memory["total"] == sum(memory[k] for k in MEMORY_KINDS)

    fc = dict(model.fc.named_parameters())
    assert memory["gradients"] == 4 * sum(p.numel() for p in model.fc.parameters()) == 2600
    assert data["trained_parameters"] == {f"fc.{n}": p.numel() for n, p in fc.items()}
    assert memory["optimizer"] == 0  # plain SGD keeps no state
    assert memory["weights"] == state_bytes(model)  # every parameter and buffer, fp32 (frozen ones too)
    assert memory["other"] == math.prod(shape) * 4  # the input
    assert memory["activations"] == input_numel(model, model.fc, shape) * 4  # only fc's input is saved

    flops = data["flops"]
    assert set(flops) == FLOP_KINDS
    assert flops["forward"] == flop_count(model, shape)
    assert flops["backward"] == flops["backward_to_activations"] + flops["backward_to_parameters"]
    assert flops["backward"] == backward_flop_count(model, shape, ["fc.weight", "fc.bias"])
    assert flops["backward_to_activations"] == 0  # nothing before fc is trained

    macs_per_second = HOST["clock_hz"] * HOST["macs_per_cycle"]
    assert data["latency_s"] == pytest.approx((flops["forward"] + flops["backward"]) / 2 / macs_per_second)
    check_timeline(data)
    assert data["budget_bytes"] == 1024**3
    assert data["fits"] is True


@pytest.mark.parametrize("update", ["fc", "features.8,fc", "features.4.weight,features.9", "all"])
def test_estimate_host_gradients_and_flops(tinycnn: tuple[nn.Module, tuple[int, ...]], update: str) -> None:
    model, shape = tinycnn
    trained = params_of(model, update.split(","))
    data = estimate("tinycnn", "--update", update)
    assert data["trained_parameters"] == {n: p.numel() for n, p in trained.items()}
    assert data["memory"]["gradients"] == 4 * sum(p.numel() for p in trained.values())
    assert data["flops"]["forward"] == flop_count(model, shape)
    assert data["flops"]["backward"] == backward_flop_count(model, shape, trained)
    check_timeline(data)
    assert data["budget_bytes"] == HOST_USABLE and data["fits"] is True  # no --ram: the target's usable RAM


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-momentum", "adam"])
def test_estimate_optimizer_state_is_torchs(tinycnn: tuple[nn.Module, tuple[int, ...]],
                                            optimizer: str) -> None:
    """memory.optimizer equals the bytes torch.optim really keeps after one step (Adam: exp_avg,
    exp_avg_sq and a 0-d step counter per parameter)."""
    model, shape = tinycnn
    update = "features.8,features.9,fc"  # a conv weight, a BatchNorm's weight and bias, the classifier
    trained = params_of(model, update.split(","))
    data = estimate("tinycnn", "--update", update, "--optimizer", optimizer)
    assert data["optimizer"] == optimizer
    expected = real_optimizer_state_bytes(model, shape, trained, optimizer)
    assert data["memory"]["optimizer"] == expected
    if optimizer == "adam":
        assert expected == 2 * 4 * sum(p.numel() for p in trained.values()) + 4 * len(trained)
    # the step allocates the state: the timeline ends holding it
    assert data["timeline"][-1]["breakdown"]["optimizer"] == expected


def test_fits_flips_with_the_budget() -> None:
    base = estimate("tinycnn", "--update", "all")
    peak = base["peak_bytes"]
    assert estimate("tinycnn", "--update", "all", "--ram", "1G")["fits"] is True
    tiny = estimate("tinycnn", "--update", "all", "--ram", "1k")
    assert (tiny["fits"], tiny["budget_bytes"], tiny["peak_bytes"]) == (False, 1024, peak)
    exact = estimate("tinycnn", "--update", "all", "--ram", str(peak))
    assert exact["fits"] is True and exact["budget_bytes"] == peak  # the peak fits a budget of itself
    below = estimate("tinycnn", "--update", "all", "--ram", str(peak - 1))
    assert below["fits"] is False
    m7 = estimate("tinycnn", "--target", "cortex-m7", "--update", "fc")
    assert m7["target"] == "stm32f746" and m7["budget_bytes"] == M7_USABLE and m7["fits"] is True
    m7_tight = estimate("tinycnn", "--target", "cortex-m7", "--update", "fc", "--ram", "16k")
    assert m7_tight["fits"] is False and m7_tight["peak_bytes"] == m7["peak_bytes"]


def test_estimate_table(tinycnn: tuple[nn.Module, tuple[int, ...]]) -> None:
    result = invoke("estimate", "tinycnn", "--target", "cortex-m7", "--update", "fc", "--ram", "16k")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = " ".join(result.stdout.split())  # rich wraps the title to the table's width
    for text in ("one training step of zoo:tinycnn on stm32f746 (sgd)", "activations", "weights",
                 "gradients", "optimizer", "650 parameters trained in 2 tensors", "FLOPs: forward 5.60M",
                 "budget 16.0 KiB: does not fit", "note: tiny-training conventions"):
        assert text in out, text
    fits = invoke("estimate", "tinycnn", "--target", "cortex-m7", "--update", "fc")
    assert "budget 256.0 KiB: fits" in fits.stdout


def test_estimate_input_shape_scales_with_batch(tinycnn: tuple[nn.Module, tuple[int, ...]]) -> None:
    model, _ = tinycnn
    one = estimate("tinycnn", "--update", "fc")
    two = estimate("tinycnn", "--update", "fc", "--input-shape", "2x3x32x32")
    assert two["flops"]["forward"] == flop_count(model, (2, 3, 32, 32)) == 2 * one["flops"]["forward"]
    assert two["memory"]["other"] == 2 * 3 * 32 * 32 * 4
    assert two["memory"]["gradients"] == one["memory"]["gradients"]  # parameter gradients do not scale


# --------------------------------------------------------------------------------------------------
# estimate on a microcontroller (tiny-training conventions)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", ["conv1", "conv2"])
def test_mcu_bias_only_keeps_less_than_weight(in_models: Any, conv: str) -> None:
    """Training a conv's bias needs no saved input; training its weight keeps the conv's int8 input."""
    model = in_models.BiasNet()
    shape = model.input_shape
    bias = estimate(f"{MOD}:BiasNet", "--target", "cortex-m7", "--update", f"{conv}.bias")
    weight = estimate(f"{MOD}:BiasNet", "--target", "cortex-m7", "--update", f"{conv}.weight")
    assert bias["trained_parameters"] == {f"{conv}.bias": getattr(model, conv).out_channels}
    assert bias["memory"]["activations"] < weight["memory"]["activations"]
    conv_input = input_numel(model, getattr(model, conv), shape) * dtype_bytes(M7["activation_dtype"])
    assert weight["memory"]["activations"] - bias["memory"]["activations"] == conv_input


def test_mcu_frozen_weights_are_not_in_sram(tinycnn: tuple[nn.Module, tuple[int, ...]]) -> None:
    model, _ = tinycnn
    frozen = estimate("tinycnn", "--target", "cortex-m7", "--update", "none")
    assert frozen["trained_parameters"] == {} and frozen["backward_layers"] == []
    assert {k: frozen["memory"][k] for k in ("weights", "gradients", "optimizer")} == {
        "weights": 0, "gradients": 0, "optimizer": 0}
    assert frozen["flops"]["backward"] == 0

    fc = {f"fc.{n}": p.numel() for n, p in model.fc.named_parameters()}
    grad_bytes = dtype_bytes(M7["gradient_dtype"])
    opt_bytes = dtype_bytes(M7["optimizer_dtype"])
    for optimizer, state_per_element in (("sgd", 0), ("sgd-momentum", 1), ("adam", 2)):
        data = estimate("tinycnn", "--target", "cortex-m7", "--update", "fc", "--optimizer", optimizer)
        assert data["trained_parameters"] == fc
        # only the trained classifier is in SRAM: int8 weight, int32 bias
        assert data["memory"]["weights"] == mcu_param_bytes(model, fc) == 640 * 1 + 10 * 4
        assert data["memory"]["gradients"] == 650 * grad_bytes
        assert data["memory"]["optimizer"] == state_per_element * 650 * opt_bytes
        # "other" is TinyEngine's kernel scratch (im2col, depthwise padding: BRIEF §7), the same whatever
        # is trained, so no frozen weight hides in it
        assert data["memory"]["other"] == sum(data["scratch"].values()) == sum(frozen["scratch"].values())
        assert data["memory"]["other"] == frozen["memory"]["other"]
        check_timeline(data)
    host = estimate("tinycnn", "--update", "fc")
    assert host["memory"]["weights"] == state_bytes(model)  # on the host every weight is in RAM


@pytest.mark.parametrize("update", ["fc", "*.bias", "features.8.weight[0:16],fc", "all"])
def test_mcu_no_reorder_never_lowers_the_peak(update: str) -> None:
    default = estimate("tinycnn", "--target", "cortex-m7", "--update", update)
    kept = estimate("tinycnn", "--target", "cortex-m7", "--update", update, "--no-reorder")
    assert kept["peak_bytes"] >= default["peak_bytes"]
    assert kept["memory"] == default["memory"]  # totals do not depend on the schedule
    assert kept["trained_parameters"] == default["trained_parameters"]
    # without reordering every weight gradient is held at once, at the optimizer step
    memory = kept["memory"]
    assert kept["peak_bytes"] >= memory["weights"] + memory["gradients"] + memory["optimizer"]
    assert "reordering off" in " ".join(kept["notes"]) and "reordering on" in " ".join(default["notes"])
    check_timeline(kept)
    check_timeline(default)
    if update == "all":  # eleven gradients kept instead of one layer's at a time
        assert kept["peak_bytes"] > default["peak_bytes"]


def test_mcu_flops_and_latency(tinycnn: tuple[nn.Module, tuple[int, ...]]) -> None:
    model, shape = tinycnn
    data = estimate("tinycnn", "--target", "cortex-m7", "--update", "all")
    assert data["flops"]["forward"] == flop_count(model, shape)
    macs_per_second = M7["clock_hz"] * M7["macs_per_cycle"]
    total = data["flops"]["forward"] + data["flops"]["backward"]
    assert data["latency_s"] == pytest.approx(total / 2 / macs_per_second)
    assert data["latency_s"] > estimate("tinycnn", "--update", "all")["latency_s"]  # slower than the host


# --------------------------------------------------------------------------------------------------
# Update specs through the CLI: patterns, plan JSON, tiny-training sparse-update config
# --------------------------------------------------------------------------------------------------

CONV_SLICE = 32 * 3 * 3  # elements per output channel of features.8.weight (64x32x3x3)

PATTERN_CASES = [
    pytest.param("fc.weight[0:4]", {"fc.weight": 4 * 64}, id="slice"),
    pytest.param("fc.weight[0,2,5],fc.bias", {"fc.weight": 3 * 64, "fc.bias": 10}, id="list"),
    pytest.param("fc.weight[0:2],fc.weight[5]", {"fc.weight": 3 * 64}, id="union"),
    pytest.param("fc.weight[0:4],fc", {"fc.weight": 640, "fc.bias": 10}, id="whole-wins"),
    pytest.param("features.8[0:8,12]", {"features.8.weight": 9 * CONV_SLICE}, id="module-selector"),
    pytest.param("features.8.weight[::2]", {"features.8.weight": 32 * CONV_SLICE}, id="step"),
    pytest.param("features.8.weight[60:]", {"features.8.weight": 4 * CONV_SLICE}, id="open-slice"),
    pytest.param("features.8.weight[0:64]", {"features.8.weight": 64 * CONV_SLICE}, id="all-channels"),
    pytest.param("features.[48].weight",
                 {"features.4.weight": 32 * 16 * 9, "features.8.weight": 64 * CONV_SLICE},
                 id="character-class"),
]


@pytest.mark.parametrize(("spec", "expected"), PATTERN_CASES)
def test_update_patterns_with_channel_selectors(tinycnn: tuple[nn.Module, tuple[int, ...]], spec: str,
                                                expected: dict[str, int]) -> None:
    model, _ = tinycnn
    data = estimate("tinycnn", "--target", "cortex-m7", "--update", spec)
    assert data["trained_parameters"] == expected
    assert data["memory"]["gradients"] == sum(expected.values()) * dtype_bytes(M7["gradient_dtype"])
    assert data["memory"]["weights"] == mcu_param_bytes(model, expected)


def test_update_plan_json_file(tmp_path: Path) -> None:
    plan = {
        "model": "tinycnn", "note": "other keys of a plan are ignored",
        "update": [
            {"parameter": "features.8.weight", "channels": [7, 0, 3], "bytes": 123},
            {"parameter": "fc.bias", "channels": None},
        ],
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    data = estimate("tinycnn", "--target", "cortex-m7", "--update", str(path))
    assert data["trained_parameters"] == {"features.8.weight": 3 * CONV_SLICE, "fc.bias": 10}
    same = estimate("tinycnn", "--target", "cortex-m7", "--update", "features.8.weight[0,3,7],fc.bias")
    assert data == same  # the same update set, spelled as patterns
    other_name = tmp_path / "plan.update"  # an existing file is read as JSON whatever its name
    other_name.write_text(json.dumps(plan))
    assert estimate("tinycnn", "--target", "cortex-m7", "--update", str(other_name)) == same


def test_update_sparse_update_config_file(tmp_path: Path) -> None:
    """tiny-training's backward config: biases of the last n convs (BatchNorm beta for a conv without
    a bias), weights of manual_weight_idx on their first ceil(ratio * C_out) channels, the classifier."""
    config = {"n_bias_update": 2, "manual_weight_idx": [2], "weight_update_ratio": [0.5]}
    path = tmp_path / "sparse.json"
    path.write_text(json.dumps(config))
    data = estimate("tinycnn", "--target", "cortex-m7", "--update", str(path))
    assert data["trained_parameters"] == {
        "features.5.bias": 32, "features.8.weight": 32 * CONV_SLICE, "features.9.bias": 64,
        "fc.weight": 640, "fc.bias": 10,
    }
    same = estimate("tinycnn", "--target", "cortex-m7", "--update",
                    "features.5.bias,features.8.weight[0:32],features.9.bias,fc")
    assert data == same

    nested = tmp_path / "backward_config.json"  # the nesting of tiny-training's YAML files
    nested.write_text(json.dumps({"backward_config": {"n_bias_update": "all", "freeze_fc": 1}}))
    biases = estimate("tinycnn", "--target", "cortex-m7", "--update", str(nested))
    assert biases["trained_parameters"] == {
        "features.1.bias": 16, "features.5.bias": 32, "features.9.bias": 64}


# --------------------------------------------------------------------------------------------------
# measure
# --------------------------------------------------------------------------------------------------


def check_comparison(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {row["quantity"]: row for row in data["comparison"]}
    assert [row["quantity"] for row in data["comparison"]] == QUANTITIES
    for row in data["comparison"]:
        assert set(row) == {"quantity", "predicted", "measured_traced", "measured_eager", "error_pct_traced",
                            "error_pct_eager"}
        for kind in ("traced", "eager"):
            measured, error = row[f"measured_{kind}"], row[f"error_pct_{kind}"]
            if measured == 0:
                assert error is None, row  # no percentage of zero
            else:
                assert isinstance(error, (int, float)) and not isinstance(error, bool), row
                assert error == pytest.approx(100 * (row["predicted"] - measured) / measured, abs=1e-3)
    return rows


def test_measure_json(tinycnn: tuple[nn.Module, tuple[int, ...]]) -> None:
    model, shape = tinycnn
    data = run_json("measure", "tinycnn", "--update", "fc")
    assert set(data) == {"model", "optimizer", "comparison", "prediction", "measured_eager",
                         "measured_traced"}
    assert (data["model"], data["optimizer"]) == ("zoo:tinycnn", "sgd")
    rows = check_comparison(data)
    grads = rows["parameter gradients (bytes)"]
    fc_bytes = 4 * sum(p.numel() for p in model.fc.parameters())
    assert grads["predicted"] == grads["measured_traced"] == grads["measured_eager"] == fc_bytes
    assert grads["error_pct_traced"] == grads["error_pct_eager"] == 0
    assert rows["forward FLOPs"]["measured_eager"] == flop_count(model, shape)
    assert rows["optimizer state (bytes)"]["measured_eager"] == 0  # SGD: no state, so no percentage
    for kind in ("measured_eager", "measured_traced"):
        measured = data[kind]
        assert measured["grads"] == {"fc.weight": 2560, "fc.bias": 40}
        assert measured["gradient_bytes"] == fc_bytes and measured["backward_ran"] is True
        assert measured["optimizer"] == "sgd" and measured["loss"] == "sum"
    prediction = data["prediction"]
    assert "timeline" not in prediction
    assert prediction["target"] == "host" and prediction["memory"]["gradients"] == fc_bytes
    assert prediction["peak_bytes"] == rows["peak live bytes"]["predicted"]


def test_measure_adam_errors_are_numbers(tinycnn: tuple[nn.Module, tuple[int, ...]]) -> None:
    model, shape = tinycnn
    data = run_json("measure", "tinycnn", "--update", "fc", "--optimizer", "adam")
    rows = check_comparison(data)
    for row in rows.values():  # every measured value is non-zero: every error is a number
        assert isinstance(row["error_pct_traced"], float) and isinstance(row["error_pct_eager"], float)
    state = rows["optimizer state (bytes)"]
    expected = real_optimizer_state_bytes(model, shape, ["fc.weight", "fc.bias"], "adam")
    assert state["predicted"] == state["measured_traced"] == state["measured_eager"] == expected
    assert data["measured_eager"]["optimizer_scalar_state_bytes"] == 2 * 4  # two float32 step counters


def test_measure_table_with_channel_subsets() -> None:
    result = invoke("measure", "tinycnn", "--update", "fc.weight[0:4]")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    for text in ("one training step of zoo:tinycnn on this computer (sgd)", *QUANTITIES,
                 "channel subsets were measured as whole tensors"):
        assert text in result.stdout, text


# --------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2
# --------------------------------------------------------------------------------------------------

BAD_INPUTS = [
    pytest.param(["-u", "featurs.4.weight"], ["featurs.4.weight", "matches no", "nearest: features.4.weight"],
                 id="pattern-nearest"),
    pytest.param(["-u", "layr4.*"], ["layr4.*", "matches no", "top-level names: features, fc"],
                 id="pattern-top-level"),
    pytest.param(["-u", "fc.weight[10]"], ["channel index 10", "out of range", "'fc.weight'", "size 10"],
                 id="channel-out-of-range"),
    pytest.param(["-u", "fc.weight[0:11]"], ["out of range", "size 10"], id="slice-out-of-range"),
    pytest.param(["-u", "fc.weight[-1]"], ["negative channel index"], id="negative-channel"),
    pytest.param(["-u", "fc.weight[0,0]"], ["duplicate channel"], id="duplicate-channel"),
    pytest.param(["--optimizer", "adamw"], ["unknown optimizer 'adamw'", "sgd, sgd-momentum, adam"],
                 id="unknown-optimizer"),
    pytest.param(["-u", "{tmp}/missing.json"], ["update file not found", "missing.json"], id="missing-file"),
    pytest.param(["-u", "{tmp}/broken.json"], ["broken.json", "is not valid JSON"], id="malformed-json"),
    pytest.param(["-u", "{tmp}/unknown_param.json"], ["unknown parameter 'fc.wieght'", "nearest: fc.weight"],
                 id="plan-unknown-parameter"),
    pytest.param(["-u", "{tmp}/typo_config.json"], ["freez_fc", 'did you mean "freeze_fc"'],
                 id="sparse-config-typo"),
    pytest.param(["--trace", "bogus"], ["bogus", "auto, fx or export"], id="trace-bogus"),
    pytest.param(["--input-shape", "1x4x32x32"], ["1x4x32x32"], id="shape-wrong-channels"),
    pytest.param(["--bogus"], ["--bogus"], id="unknown-option"),
]
ESTIMATE_ONLY = [
    pytest.param(["--ram", "12q"], ["invalid size '12q'", "unit"], id="ram-12q"),
    pytest.param(["--target", "cortex-m8"], ["unknown target 'cortex-m8'", "cortex-m7"], id="unknown-target"),
    pytest.param(["--target", "{tmp}/nope.toml"], ["nope.toml", "not found"], id="missing-target-file"),
]
MEASURE_ONLY = [  # measure runs on this computer: no target, no budget
    pytest.param(["--target", "cortex-m7"], ["--target", "budgetplan measure --help"], id="no-target-option"),
    pytest.param(["--ram", "1G"], ["--ram", "budgetplan measure --help"], id="no-ram-option"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad_update_files")
    (tmp / "broken.json").write_text('{"update": [\n')
    typo = {"update": [{"parameter": "fc.wieght", "channels": None}]}
    (tmp / "unknown_param.json").write_text(json.dumps(typo))
    (tmp / "typo_config.json").write_text(json.dumps({"n_bias_update": 1, "freez_fc": 1}))
    return tmp


@pytest.mark.parametrize("command", ["estimate", "measure"])
@pytest.mark.parametrize(("args", "needles"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(bad_files: Path, command: str, args: list[str],
                                      needles: list[str]) -> None:
    argv = [a.format(tmp=bad_files) for a in args]
    assert_cli_error(invoke(command, "tinycnn", *argv), *needles)


@pytest.mark.parametrize(("command", "args", "needles"),
                         [pytest.param("estimate", *p.values, id=p.id) for p in ESTIMATE_ONLY]
                         + [pytest.param("measure", *p.values, id=p.id) for p in MEASURE_ONLY])
def test_bad_option_is_one_line_exit_2(bad_files: Path, command: str, args: list[str],
                                       needles: list[str]) -> None:
    argv = [a.format(tmp=bad_files) for a in args]
    assert_cli_error(invoke(command, "tinycnn", *argv), *needles)


@pytest.mark.parametrize("command", ["estimate", "measure"])
def test_json_file_needs_force(tmp_path: Path, command: str) -> None:
    out = tmp_path / "result.json"
    out.write_text("keep me")
    assert_cli_error(invoke(command, "tinycnn", "--update", "fc", "--json", str(out)), str(out), "--force")
    assert out.read_text() == "keep me"
    forced = invoke(command, "tinycnn", "--update", "fc", "--json", str(out), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert forced.stderr.strip() == f"wrote {out}"
    assert "one training step of zoo:tinycnn" in forced.stdout  # the table still goes to stdout
    written = json.loads(out.read_text())
    assert written["model"] == "zoo:tinycnn" and written["optimizer"] == "sgd"


# --------------------------------------------------------------------------------------------------
# Known bugs (strict xfail: a fix makes these pass, and then the marker must go)
# --------------------------------------------------------------------------------------------------


def test_measure_model_with_unused_parameter(in_models: Any) -> None:
    data = run_json("measure", f"{MOD}:Unused")  # the default update set: all
    rows = check_comparison(data)
    assert rows["parameter gradients (bytes)"]["measured_eager"] == 4 * (8 * 4 + 4)  # only `a` gets a .grad


def test_empty_update_spec_is_an_error() -> None:
    assert_cli_error(invoke("estimate", "tinycnn", "--update", ""), "update")


def test_measure_parameter_used_twice(in_models: Any) -> None:
    rows = check_comparison(run_json("measure", f"{MOD}:Twice", "--update", "lin"))
    assert abs(rows["peak live bytes"]["error_pct_traced"]) < 5


# --------------------------------------------------------------------------------------------------
# The real program, in a subprocess (each run imports torch: a few seconds)
# --------------------------------------------------------------------------------------------------


def test_subprocess_console_script_estimate_json() -> None:
    """stdout holds only the JSON document, stderr nothing, and the numbers are the in-process ones."""
    args = ("estimate", "tinycnn", "--target", "cortex-m7", "--update", "features.8.weight[0:16],fc",
            "--json", "-")
    proc = run(*args, script=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout) == estimate(*args[1:-2])


def test_subprocess_measure_table() -> None:
    proc = run("measure", "tinycnn", "--update", "fc", "--optimizer", "adam")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # PyTorch's prints and warnings do not reach the terminal
    assert "one training step of zoo:tinycnn on this computer (adam)" in proc.stdout
    assert all(q in proc.stdout for q in QUANTITIES)


# --------------------------------------------------------------------------------------------------
# The documentation stays true: docs/cli.md and docs/json-output.md for estimate and measure
# --------------------------------------------------------------------------------------------------


def test_json_output_doc_estimate_matches_the_tool() -> None:
    doc = (DOCS / "json-output.md").read_text()
    section = doc_section(doc, "## `estimate --json`")
    command, example = doc_example(section, "estimate")
    assert "--json -" in command
    actual = run_json(*cli_argv(command.replace(" --json -", "")))
    shortened = ("timeline", "rules", "device_tensors")  # lists the doc cuts down
    assert {k: v for k, v in example.items() if k not in shortened} == {
        k: v for k, v in actual.items() if k not in shortened}
    for key in shortened:
        assert_trimmed(example[key], actual[key])

    assert documented_fields(doc_section(section, "### Top level")) == set(actual)
    assert documented_fields(doc_section(section, "### `memory`")) == set(actual["memory"])
    assert set(actual["memory_at_peak"]) == set(actual["memory"])
    assert documented_fields(doc_section(section, "### `flops`")) == set(actual["flops"])
    assert documented_fields(doc_section(section, "### `timeline[]`")) == set(actual["timeline"][0])
    assert set(actual["timeline"][0]["breakdown"]) == set(actual["memory"]) - {"total"}


def test_json_output_doc_measure_matches_the_tool() -> None:
    doc = (DOCS / "json-output.md").read_text()
    section = doc_section(doc, "## `measure --json`")
    command, example = doc_example(section, "measure")
    actual = run_json(*cli_argv(command.replace(" --json -", "")))
    assert set(example) == set(actual)
    for key in ("model", "optimizer", "comparison", "prediction"):
        assert example[key] == actual[key], key
    for kind in ("measured_eager", "measured_traced"):
        assert set(example[kind]) == set(actual[kind])
        for key, value in example[kind].items():
            if key in ("timeline", "saved_tensors"):
                assert_trimmed(value, actual[kind][key])
            else:
                assert value == actual[kind][key], (kind, key)

    assert documented_fields(doc_section(section, "### Top level")) == set(actual)
    assert documented_fields(doc_section(section, "### `comparison[]`")) == set(actual["comparison"][0])
    measured = doc_section(section, "### `measured_eager`, `measured_traced`")
    assert documented_fields(measured.split("#### `saved_tensors[]`")[0]) == set(actual["measured_eager"])
    assert documented_fields(doc_section(section, "#### `saved_tensors[]`")) == set(
        actual["measured_eager"]["saved_tensors"][0])


@pytest.mark.parametrize("command", ["estimate", "measure"])
def test_cli_doc_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """Every example of the command's section runs as written: success, or — when the line documents an
    error in a comment — that one-line error."""
    monkeypatch.chdir(tmp_path)
    run_doc_examples(command, at_least=3)


def test_cli_doc_synopsis_lists_every_long_option() -> None:
    """The synopsis at the top of cli.md shows every command with all of its long options
    (test_cli.py checks the per-command option tables)."""
    doc = (DOCS / "cli.md").read_text()
    (synopsis,) = re.findall(r"^```text\n(.*?)```", doc, re.DOTALL | re.MULTILINE)[:1]
    entries = {m.group(1): m.group(2) for m in re.finditer(r"^budgetplan (\w+) (.*?)(?=^budgetplan |\Z)",
                                                            synopsis, re.DOTALL | re.MULTILINE)}
    group = typer.main.get_command(app)
    assert {"estimate", "measure"} <= set(group.commands)
    for name, command in group.commands.items():
        if command.hidden:  # a deprecated alias (compile = export) is not documented on its own
            continue
        assert name in entries, name
        words = set(re.findall(r"--[a-z-]+", entries[name]))
        longs = {opt for p in command.params for opt in p.opts if opt.startswith("--")} - {"--help"}
        assert longs == words, (name, longs ^ words)
