"""``budgetplan analyze`` and ``budgetplan check`` through the command line.

Most cases run in-process through typer's ``CliRunner``; two run the installed program in a subprocess.
Numbers are checked against facts computed here or by another command: trained parameter counts from the
plan's ``update[]`` and the model's real parameter shapes, forward FLOPs from PyTorch's
``FlopCounterMode``, the peak of a plan re-priced by ``budgetplan estimate --update plan.json``, the
latency from the target file. The models are the zoo's ``tinycnn``, ``mcunet`` at 64×64 and two tiny
ones written below. Planning runs on ``cortex-m7`` (tiny-training conventions) unless a test says
``--target host`` (PyTorch eager).

Every input error must come out as exactly one line on stderr, exit code 2, no traceback. The last
section keeps docs/cli.md and docs/json-output.md true for the two commands.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import tomllib
import xml.etree.ElementTree as ET
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
    run_doc_examples,
    write_models_module,
)
from cli_support import run as _run
from budgetplan.selection.solver import available_solvers

M7 = tomllib.loads((ROOT / "targets" / "stm32f746.toml").read_text())  # --target cortex-m7
M7_MACS_PER_SECOND = M7["clock_hz"] * M7["macs_per_cycle"]

TOP_KEYS = {"fits", "budget_bytes", "peak_bytes", "memory", "flops", "update", "solver"}
SOLVER_KEYS = {"name", "status", "objective", "gap", "seconds"}
MEMORY_KINDS = {"activations", "weights", "gradients", "optimizer", "other"}
STATUSES = {"optimal", "feasible", "infeasible", "no-solution", "unbounded", "error"}
MCUNET = ("mcunet", "--input-shape", "1x3x64x64")

MOD = "cli_planning_models"  # written into a temporary directory (a unique name in sys.modules)
MODULE_SOURCE = BIASNET_MODULE + '''

class NormMLP(nn.Module):
    """Linear, LayerNorm, ReLU, Linear: the LayerNorm's affine parameters are decided whole."""

    input_shape = (2, 8)

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.ln(self.fc1(x))))
'''


# --------------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------------


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script in a subprocess."""
    return _run(*args, cwd=cwd, script=True)


def run_json(command: str, *args: str, code: int = 0) -> dict[str, Any]:
    """``budgetplan COMMAND ARGS --json -`` with the expected exit code; the parsed document (all of
    stdout). Only ``wrote PATH`` lines (from ``--out``/``--junit``) may reach stderr."""
    result = invoke(command, *args, "--json", "-")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert all(line.startswith("wrote ") for line in result.stderr.splitlines()), result.stderr
    return json.loads(result.stdout)


def analyze(*args: str, code: int = 0) -> dict[str, Any]:
    """``budgetplan analyze ARGS --json -`` on cortex-m7 unless ``--target`` is among ARGS."""
    target = () if "--target" in args else ("--target", "cortex-m7")
    return run_json("analyze", *args, *target, code=code)


def estimate(*args: str) -> dict[str, Any]:
    return run_json("estimate", *args)


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def trained_elements(update: list[dict[str, Any]], model: nn.Module) -> dict[str, int]:
    """Trained elements per parameter, from a plan's ``update[]`` and the model's real shapes: a whole
    tensor, or the listed rows along dim 0 × the elements of one row."""
    shapes = shapes_of(model)
    counts: dict[str, int] = {}
    for entry in update:
        name, channels = entry["parameter"], entry["channels"]
        assert name in shapes, name
        shape = shapes[name]
        numel = math.prod(shape)
        if channels is None:
            counts[name] = numel
        else:
            assert channels == sorted(set(channels)), channels  # distinct, ascending
            assert channels and 0 <= channels[0] and channels[-1] < shape[0], (name, channels)
            counts[name] = len(channels) * (numel // shape[0])
    return counts


def forward_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(*shape))
    return int(counter.get_total_flops())


@pytest.fixture(scope="module")
def tinycnn() -> nn.Module:
    model, _ = zoo.build("tinycnn")
    return model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models_module(tmp_path_factory.mktemp("cli_planning"), MOD, MODULE_SOURCE)


@pytest.fixture
def in_models(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run from the directory of the hand-written models, importable as ``cli_planning_models``."""
    return enter_models_dir(models_dir, MOD, monkeypatch)


@pytest.fixture(scope="module")
def tinycnn_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """An ILP plan of tinycnn for 64 KiB on cortex-m7: the plan file (``--out``) and the ``--json -``
    document of the same run."""
    path = tmp_path_factory.mktemp("plans") / "tinycnn-64k.json"
    data = analyze("tinycnn", "--ram", "64k", "--out", str(path))
    assert path.is_file()
    return path, data


# --------------------------------------------------------------------------------------------------
# analyze --json: fields, and the plan re-priced by another command
# --------------------------------------------------------------------------------------------------


def test_analyze_json_fields_and_the_plan_file(tinycnn: nn.Module, tinycnn_plan: tuple[Path, dict]) -> None:
    path, data = tinycnn_plan
    assert TOP_KEYS <= set(data), TOP_KEYS - set(data)
    assert data["budget_bytes"] == 64 * 1024
    assert data["fits"] is True and data["peak_bytes"] <= data["budget_bytes"]
    assert set(data["memory"]) == MEMORY_KINDS
    assert data["peak_bytes"] == max(point["live_bytes"] for point in data["timeline"])
    assert data["flops"]["forward"] == forward_flops(tinycnn, (1, 3, 32, 32))
    assert data["flops"]["backward"] > 0
    solver = data["solver"]
    assert SOLVER_KEYS <= set(solver)
    assert solver["name"] in available_solvers()
    assert solver["status"] == "optimal" and solver["gap"] == 0.0
    assert solver["objective"] == data["objective"]
    assert isinstance(solver["seconds"], float) and solver["seconds"] >= 0
    assert data["update"], "64 KiB trains something on tinycnn"
    # the plan file is the same document without what varies between runs (the solver's wall time)
    plan = json.loads(path.read_text())
    assert plan["format"] == "budgetplan-plan"
    assert {k: v for k, v in plan.items() if k != "solver"} == {k: v for k, v in data.items() if k != "solver"}
    assert "seconds" not in plan["solver"]
    assert plan["solver"] == {k: solver[k] for k in plan["solver"]}


def test_objective_params_is_the_trained_parameter_count(tinycnn: nn.Module,
                                                         tinycnn_plan: tuple[Path, dict]) -> None:
    """For --objective params the objective is the number of trained elements, counted here from the
    plan's update[] and tinycnn's real parameter shapes."""
    _, data = tinycnn_plan
    counts = trained_elements(data["update"], tinycnn)
    assert data["scores"] == "params"
    assert sum(counts.values()) == data["objective"] > 0
    assert data["peak_bytes"] > data["budget_bytes"] * 0.9  # the optimum uses most of the budget


def test_estimate_reprices_the_plan_file_to_the_same_peak(tinycnn: nn.Module,
                                                           tinycnn_plan: tuple[Path, dict]) -> None:
    """The plan re-priced independently by ``estimate --update plan.json`` costs what analyze said."""
    path, data = tinycnn_plan
    est = estimate("tinycnn", "--target", "cortex-m7", "--ram", "64k", "--update", str(path))
    assert est["peak_bytes"] == data["peak_bytes"]
    assert est["peak_at"] == data["peak_at"]
    assert est["memory_at_peak"]["total"] == data["peak_bytes"]
    assert {k: est["memory"][k] for k in MEMORY_KINDS} == data["memory"]
    assert est["flops"] == data["flops"]
    assert est["fits"] is True
    assert est["trained_parameters"] == trained_elements(data["update"], tinycnn)


def test_group_size_trains_whole_groups_and_norms_whole(in_models: Any, tmp_path: Path) -> None:
    """--group-size 4: every partly trained weight or bias holds whole groups of 4 rows; a LayerNorm's
    parameters (decided as whole tensors) are listed with channels null. A scores file makes the
    LayerNorm worth training."""
    model = in_models.NormMLP()
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"ln.weight": 1000.0, "ln.bias": 1000.0, "fc1.weight": 1.0}))
    data = analyze(f"{MOD}:NormMLP", "--ram", "4k", "--group-size", "4", "--objective", str(scores))
    entries = {e["parameter"]: e["channels"] for e in data["update"]}
    assert entries.get("ln.weight", "absent") is None and entries.get("ln.bias", "absent") is None
    for name, channels in entries.items():
        if channels is not None:
            assert all(c // 4 * 4 + i in channels for c in channels for i in range(4)), (name, channels)
    assert data["model"]["group_size"] == 4
    trained = trained_elements(data["update"], model)
    assert set(trained) == set(entries)
    expected = 1000.0 * 2 + (1.0 * trained["fc1.weight"] / (16 * 8) if "fc1.weight" in trained else 0.0)
    assert data["objective"] == pytest.approx(expected)


def test_user_scores_pick_the_best_rows(tinycnn: nn.Module, tmp_path: Path) -> None:
    """Scores per group of fc.weight (row 9 best, row 0 worst): the rows trained are the best ones, and
    the objective is the sum of their scores (the counted reformulation keeps which rows, not only how
    many). At a budget that fits only some rows of fc.weight."""
    scores = tmp_path / "scores.json"
    row_scores = [float(i + 1) for i in range(10)]
    scores.write_text(json.dumps({"fc.weight": row_scores}))
    full = analyze("tinycnn", "--ram", "64k", "--objective", str(scores))
    assert {e["parameter"]: e["channels"] for e in full["update"]}["fc.weight"] is None
    assert full["objective"] == sum(row_scores)
    # fc.weight rows cost 64 int8 weight bytes + 256 float32 gradient bytes each: find a budget that
    # holds only some of them, from the smallest useful budget the tool names (one row) up
    smallest = analyze("tinycnn", "--ram", "20k", "--objective", str(scores), code=1)
    assert smallest["update"] == []
    (needed,) = {int(n) for note in smallest["notes"] for n in re.findall(r"needs (\d+) bytes", note)}
    # the group named is one the scores value (fc.weight), not a cheaper group scored 0 (fc.bias)
    assert any("fc.weight rows" in note for note in smallest["notes"]), smallest["notes"]
    assert analyze("tinycnn", "--ram", str(needed), "--objective", str(scores))["update"]
    assert analyze("tinycnn", "--ram", str(needed - 1), "--objective", str(scores), code=1)["update"] == []
    for budget in range(needed, needed + 4096, 256):
        data = analyze("tinycnn", "--ram", str(budget), "--objective", str(scores))
        entries = {e["parameter"]: e["channels"] for e in data["update"]}
        rows = entries.get("fc.weight")
        if rows is not None and 0 < len(rows) < 10:
            assert rows == list(range(10 - len(rows), 10)), rows  # the best rows
            assert data["objective"] == pytest.approx(sum(row_scores[r] for r in rows))
            break
    else:
        pytest.fail(f"no budget between {needed} and {needed + 4096} bytes trains part of fc.weight")
    # the same scores as a tensor file (torch.save of a dict of tensors) give the same plan
    tensor_file = tmp_path / "scores.pt"
    torch.save({"fc.weight": torch.tensor(row_scores)}, tensor_file)
    same = analyze("tinycnn", "--ram", str(budget), "--objective", str(tensor_file))
    assert same["update"] == data["update"] and same["objective"] == data["objective"]


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ram", ["40k", "96k"])
def test_ilp_beats_greedy_and_random(tinycnn: nn.Module, ram: str) -> None:
    ilp = analyze("tinycnn", "--ram", ram)
    greedy = analyze("tinycnn", "--ram", ram, "--strategy", "greedy")
    randoms = [analyze("tinycnn", "--ram", ram, "--strategy", "random", "--seed", str(s)) for s in (0, 1, 2)]
    assert ilp["solver"]["status"] == "optimal"
    assert ilp["objective"] >= greedy["objective"] >= 0
    assert all(ilp["objective"] >= r["objective"] for r in randoms)
    assert ilp["objective"] > min(r["objective"] for r in randoms)  # the comparison is not vacuous
    for plan in (ilp, greedy, *randoms):
        assert plan["fits"] and plan["peak_bytes"] <= plan["budget_bytes"]
        assert sum(trained_elements(plan["update"], tinycnn).values()) == plan["objective"]
        assert plan["solver"] is None or plan is ilp
    assert len({json.dumps(r["update"]) for r in randoms}) > 1  # the seed changes the random fill


def test_ilp_beats_greedy_on_mcunet() -> None:
    """mcunet at 64×64 with groups of 16 channels, 160 KiB."""
    ilp = analyze(*MCUNET, "--ram", "160k", "--group-size", "16")
    greedy = analyze(*MCUNET, "--ram", "160k", "--group-size", "16", "--strategy", "greedy")
    assert ilp["solver"]["status"] == "optimal"
    assert ilp["objective"] >= greedy["objective"] > 0
    assert ilp["peak_bytes"] <= ilp["budget_bytes"] and greedy["peak_bytes"] <= greedy["budget_bytes"]
    model, _ = zoo.build("mcunet")
    assert sum(trained_elements(ilp["update"], model).values()) == ilp["objective"]


def test_host_target_plans_with_the_eager_model(tinycnn: nn.Module, tmp_path: Path) -> None:
    """host targets plan too (the PyTorch-eager bound); the plan re-priced by ``estimate --target host``
    costs what analyze said, and the ILP is not worse than greedy there either."""
    plan = tmp_path / "host.json"
    args = ("tinycnn", "--target", "host", "--ram", "512k", "--optimizer", "adam")
    data = analyze(*args, "--out", str(plan))
    assert data["target"] == {"name": "host", "family": "host"}
    assert data["fits"] and data["peak_bytes"] <= 512 * 1024
    trained = trained_elements(data["update"], tinycnn)
    assert 0 < sum(trained.values()) == data["objective"] < sum(p.numel() for p in tinycnn.parameters())
    est = estimate(*args, "--update", str(plan))
    assert est["peak_bytes"] == data["peak_bytes"]
    assert est["trained_parameters"] == trained
    greedy = analyze(*args, "--strategy", "greedy")
    assert data["objective"] >= greedy["objective"]


def test_full_strategy_on_a_tiny_budget_exits_1(tinycnn: nn.Module) -> None:
    data = analyze("tinycnn", "--ram", "32k", "--strategy", "full", code=1)
    assert data["fits"] is False and data["peak_bytes"] > data["budget_bytes"]
    assert data["solver"] is None
    assert trained_elements(data["update"], tinycnn) == {n: p.numel() for n, p in tinycnn.named_parameters()}
    table = invoke("analyze", "tinycnn", "--target", "cortex-m7", "--ram", "32k", "--strategy", "full")
    assert table.exit_code == 1
    assert "does not fit" in table.stdout
    roomy = analyze("tinycnn", "--ram", "1M", "--strategy", "full")  # the same set fits 1 MiB: exit 0
    assert roomy["update"] == data["update"] and roomy["peak_bytes"] == data["peak_bytes"]


def test_bias_only_trains_exactly_the_biases(tinycnn: nn.Module, in_models: Any) -> None:
    for source, model in (("tinycnn", tinycnn), (f"{MOD}:BiasNet", in_models.BiasNet())):
        data = analyze(source, "--ram", "1M", "--strategy", "bias-only")
        biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
        assert {e["parameter"] for e in data["update"]} == biases
        assert all(e["channels"] is None for e in data["update"])
        assert data["fits"]


def test_last_k_trains_the_last_weight_layer(tinycnn: nn.Module, in_models: Any) -> None:
    data = analyze("tinycnn", "--ram", "1M", "--strategy", "last-k", "--last-k", "1")
    assert trained_elements(data["update"], tinycnn) == {"fc.weight": 640, "fc.bias": 10}
    bias_net = analyze(f"{MOD}:BiasNet", "--ram", "1M", "--strategy", "last-k", "--last-k", "2")
    assert {e["parameter"] for e in bias_net["update"]} == {"conv2.weight", "conv2.bias", "fc.weight", "fc.bias"}
    assert all(e["channels"] is None for e in bias_net["update"])


def test_tiny_training_config_strategy(tmp_path: Path) -> None:
    """config:PATH trains what docs/cli.md says the config means, and costs what estimate says."""
    config = tmp_path / "sparse.json"
    config.write_text(json.dumps({"n_bias_update": 2, "manual_weight_idx": [2], "weight_update_ratio": [0.5]}))
    data = analyze("tinycnn", "--ram", "1M", "--strategy", f"config:{config}")
    assert data["strategy"] == "config"
    assert {e["parameter"]: e["channels"] for e in data["update"]} == {
        "features.5.bias": None, "features.8.weight": list(range(32)), "features.9.bias": None,
        "fc.weight": None, "fc.bias": None}
    est = estimate("tinycnn", "--target", "cortex-m7", "--ram", "1M", "--update",
                   "features.5.bias,features.9.bias,features.8.weight[0:32],fc")
    assert est["peak_bytes"] == data["peak_bytes"]
    # a fixed set: one byte below its peak it is reported as not fitting, not shrunk
    small = analyze("tinycnn", "--ram", str(data["peak_bytes"] - 1), "--strategy", f"config:{config}", code=1)
    assert small["fits"] is False and small["update"] == data["update"]


# --------------------------------------------------------------------------------------------------
# Budgets that train nothing, FLOP and latency bounds
# --------------------------------------------------------------------------------------------------


def test_infeasible_budget_says_what_would_train_something() -> None:
    """Below the inference peak (20 KiB on tinycnn): exit 1 and one line that names the smallest budget
    that trains anything; that budget does train something, one byte less does not."""
    result = invoke("analyze", "tinycnn", "--target", "cortex-m7", "--ram", "8k")
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "nothing can be trained" in line]
    assert len(lines) == 1, result.stdout
    (needed,) = map(int, re.findall(r"needs (\d+) bytes", lines[0]))
    assert "within 8192 bytes" in lines[0]
    assert "does not fit" in result.stdout

    data = analyze("tinycnn", "--ram", "8k", code=1)
    assert data["fits"] is False and data["update"] == []
    assert data["solver"]["status"] == "infeasible"
    assert any(f"needs {needed} bytes" in note for note in data["notes"])

    enough = analyze("tinycnn", "--ram", str(needed))
    assert enough["update"] and enough["peak_bytes"] <= needed
    short = analyze("tinycnn", "--ram", str(needed - 1), code=1)
    assert short["update"] == [] and short["fits"] is True  # inference fits; training anything does not
    assert any("nothing can be trained" in note for note in short["notes"])


def test_max_flops_below_the_forward_pass_is_an_error(tinycnn: nn.Module) -> None:
    fwd = forward_flops(tinycnn, (1, 3, 32, 32))
    assert_cli_error(invoke("analyze", "tinycnn", "--ram", "64k", "--max-flops", str(fwd - 1)), "forward")
    # just above the forward pass: a bound on forward + backward FLOPs that the plan respects
    cap = fwd + 200_000
    data = analyze("tinycnn", "--ram", "64k", "--max-flops", str(cap))
    assert data["flops"]["forward"] + data["flops"]["backward"] <= cap
    unbounded = analyze("tinycnn", "--ram", "64k")
    assert unbounded["flops"]["forward"] + unbounded["flops"]["backward"] > cap  # so it binds
    assert data["objective"] < unbounded["objective"]


def test_max_latency_binds_and_the_repriced_latency_respects_it(tinycnn: nn.Module, tmp_path: Path) -> None:
    fwd = forward_flops(tinycnn, (1, 3, 32, 32))
    forward_latency = fwd / 2 / M7_MACS_PER_SECOND
    unbounded = analyze("tinycnn", "--ram", "64k")
    assert unbounded["latency_s"] > 1.2 * forward_latency
    bound = (forward_latency + unbounded["latency_s"]) / 2  # between the forward pass and the free plan
    plan = tmp_path / "plan.json"
    data = analyze("tinycnn", "--ram", "64k", "--max-latency", f"{bound:.6f}", "--out", str(plan))
    assert 0 < data["objective"] < unbounded["objective"]
    trained = sum(trained_elements(data["update"], tinycnn).values())
    assert trained == data["objective"] < sum(trained_elements(unbounded["update"], tinycnn).values())
    est = estimate("tinycnn", "--target", "cortex-m7", "--ram", "64k", "--update", str(plan))
    assert est["latency_s"] <= bound
    assert (est["flops"]["forward"] + est["flops"]["backward"]) / 2 / M7_MACS_PER_SECOND <= bound * (1 + 1e-9)
    assert_cli_error(invoke("analyze", "tinycnn", "--ram", "64k", "--max-latency", f"{forward_latency / 2:.6f}"),
                     "forward")


# --------------------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------------------


def test_cbc_and_highs_agree() -> None:
    cbc = analyze("tinycnn", "--ram", "64k", "--solver", "cbc")
    assert cbc["solver"]["name"] == "cbc" and cbc["solver"]["status"] == "optimal"
    if importlib.util.find_spec("highspy") is None:
        assert_cli_error(invoke("analyze", "tinycnn", "--ram", "64k", "--solver", "highs"),
                         "available solvers", "cbc")
        return
    highs = analyze("tinycnn", "--ram", "64k", "--solver", "highs")
    assert highs["solver"]["name"] == "highs" and highs["solver"]["status"] == "optimal"
    assert cbc["objective"] == highs["objective"] == cbc["solver"]["objective"] == highs["solver"]["objective"]
    assert cbc["fits"] and highs["fits"]


def test_time_limit_status_is_honest() -> None:
    """A tiny --time-limit on mcunet: whatever comes back is optimal, feasible or no-solution, and
    "optimal" never comes with a positive gap; a returned plan fits. --gap lets the solver stop early."""
    for extra in (("--time-limit", "0.01"), ("--gap", "0.5")):
        result = invoke("analyze", *MCUNET, "--target", "cortex-m7", "--ram", "160k", "--group-size", "16",
                        *extra, "--json", "-")
        assert result.exit_code in (0, 1), result.stderr
        data = json.loads(result.stdout)
        solver = data["solver"]
        assert solver["status"] in {"optimal", "feasible", "no-solution"}, solver
        if solver["status"] == "optimal":
            assert solver["gap"] == 0.0
        if solver["gap"] is not None:
            assert solver["gap"] >= 0
            if extra[0] == "--gap":
                assert solver["gap"] <= 0.5 + 1e-9
        if data["update"]:
            assert data["fits"] and data["peak_bytes"] <= data["budget_bytes"]
            assert result.exit_code == 0
        else:
            assert result.exit_code == 1


# --------------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------------


def test_check_passes_with_a_plan_from_analyze(tinycnn_plan: tuple[Path, dict]) -> None:
    path, data = tinycnn_plan
    result = invoke("check", "tinycnn", "--target", "cortex-m7", "--ram", "64k", "--plan", str(path))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["PASS inference", "PASS plan"]
    assert f"peak {data['peak_bytes']} bytes" in lines[1]


def test_check_fails_when_the_ram_is_too_small(tinycnn_plan: tuple[Path, dict]) -> None:
    path, data = tinycnn_plan
    # 32 KiB: inference (20 KiB) fits, the plan (almost 64 KiB) does not
    result = invoke("check", "tinycnn", "--target", "cortex-m7", "--ram", "32k", "--plan", str(path))
    assert result.exit_code == 1
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["PASS inference", "FAIL plan"]
    checks = run_json("check", "tinycnn", "--target", "cortex-m7", "--ram", "16k", "--plan", str(path), code=1)
    assert checks["passed"] is False
    assert [(c["name"], c["passed"]) for c in checks["checks"]] == [("inference", False), ("plan", False)]


def test_check_plan_of_another_model_is_an_input_error(tinycnn_plan: tuple[Path, dict], in_models: Any) -> None:
    path, _ = tinycnn_plan
    assert_cli_error(invoke("check", f"{MOD}:BiasNet", "--ram", "64k", "--plan", str(path)),
                     "another model", str(path))


def test_check_min_update() -> None:
    ok = run_json("check", "tinycnn", "--ram", "64k", "--min-update", "0.5")
    assert ok["passed"] is True
    (item,) = [c for c in ok["checks"] if c["name"] == "min-update"]
    share = float(re.match(r"([\d.]+) %", item["message"]).group(1))  # type: ignore[union-attr]
    assert 0.5 <= share < 99
    bad = invoke("check", "tinycnn", "--ram", "64k", "--min-update", "99")
    assert bad.exit_code == 1
    assert "FAIL min-update" in bad.stdout and "PASS inference" in bad.stdout


def test_check_junit_and_json(tinycnn_plan: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = tinycnn_plan
    junit = tmp_path / "report.xml"
    data = run_json("check", "tinycnn", "--ram", "32k", "--plan", str(path), "--min-update", "1",
                    "--junit", str(junit), code=1)
    assert set(data) == {"passed", "checks"} and data["passed"] is False
    assert [c["name"] for c in data["checks"]] == ["inference", "plan", "min-update"]
    assert all(set(c) == {"name", "passed", "message"} for c in data["checks"])
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [c["name"] for c in data["checks"]]
    assert int(suite.get("tests", -1)) == len(cases) == 3
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == [c["name"] for c in data["checks"] if not c["passed"]]
    assert int(suite.get("failures", -1)) == len(failed) >= 1
    for case in cases:
        failure = case.find("failure")
        if failure is not None:
            assert failure.get("message") and failure.text == failure.get("message")


# --------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad_planning_files")
    (tmp / "typo_scores.json").write_text(json.dumps({"fc.wieght": 1.0}))
    (tmp / "short_scores.json").write_text(json.dumps({"fc.weight": [1, 2, 3]}))
    (tmp / "broken.json").write_text("{")
    (tmp / "not_a_plan.json").write_text(json.dumps({"update": [{"parameter": "fc.weight", "channels": None}]}))
    (tmp / "exists.json").write_text("keep me")
    return tmp


ANALYZE_BAD = [
    pytest.param(["--strategy", "nope"], ["unknown strategy 'nope'", "ilp", "config:PATH"], id="strategy"),
    pytest.param(["--objective", "velocity"], ["unknown --objective 'velocity'", "params"], id="objective"),
    pytest.param(["--objective", "{tmp}/typo_scores.json"], ["unknown parameter 'fc.wieght'"], id="scores-param"),
    pytest.param(["--objective", "{tmp}/short_scores.json"], ["fc.weight", "3 entries", "10 groups"],
                 id="scores-length"),
    pytest.param(["--objective", "{tmp}/broken.json"], ["broken.json", "is not valid JSON"],
                 id="scores-broken"),
    pytest.param(["--solver", "gurobi"], ["unknown solver 'gurobi'", "cbc"], id="solver"),
    pytest.param(["--strategy", "config:{tmp}/missing.json"], ["missing.json"], id="config-missing"),
    pytest.param(["--optimizer", "adamw"], ["unknown optimizer 'adamw'"], id="optimizer"),
    pytest.param(["--gap", "1.5"], ["gap", "[0, 1)"], id="gap"),
    pytest.param(["--time-limit", "0"], ["--time-limit"], id="time-limit-zero"),
    pytest.param(["--last-k", "0"], ["--last-k"], id="last-k-zero"),
    pytest.param(["--out", "{tmp}/exists.json"], ["exists.json", "--force"], id="out-exists"),
    pytest.param(["--html", "{tmp}/exists.json"], ["exists.json", "--force"], id="html-exists"),
    pytest.param(["--out", "-"], ["--out"], id="out-stdout"),
]
CHECK_BAD = [
    pytest.param(["--plan", "{tmp}/missing.json"], ["plan file not found"], id="plan-missing"),
    pytest.param(["--plan", "{tmp}/not_a_plan.json"], ["not a budgetplan plan file"], id="not-a-plan"),
    pytest.param(["--plan", "{tmp}/broken.json"], ["broken.json", "is not valid JSON"], id="plan-broken"),
    pytest.param(["--min-update", "150"], ["--min-update", "[0, 100]"], id="min-update-range"),
    pytest.param(["--junit", "{tmp}/exists.json"], ["exists.json", "--force"], id="junit-exists"),
]


@pytest.mark.parametrize(("args", "needles"), ANALYZE_BAD)
def test_analyze_bad_input_is_one_line_exit_2(bad_files: Path, args: list[str], needles: list[str]) -> None:
    argv = [a.format(tmp=bad_files) for a in args]
    target = [] if "--target" in argv else ["--target", "cortex-m7"]
    assert_cli_error(invoke("analyze", "tinycnn", "--ram", "64k", *target, *argv),
                     *(n.format(tmp=bad_files) for n in needles))
    assert (bad_files / "exists.json").read_text() == "keep me"


@pytest.mark.parametrize(("args", "needles"), CHECK_BAD)
def test_check_bad_input_is_one_line_exit_2(bad_files: Path, args: list[str], needles: list[str]) -> None:
    argv = [a.format(tmp=bad_files) for a in args]
    assert_cli_error(invoke("check", "tinycnn", "--ram", "64k", *argv), *needles)
    assert (bad_files / "exists.json").read_text() == "keep me"


def test_out_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    out.write_text("keep me")
    assert_cli_error(invoke("analyze", "tinycnn", "--ram", "64k", "--out", str(out)), str(out), "--force")
    assert out.read_text() == "keep me"
    forced = invoke("analyze", "tinycnn", "--ram", "64k", "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert forced.stderr.strip() == f"wrote {out}"
    assert json.loads(out.read_text())["format"] == "budgetplan-plan"


# --------------------------------------------------------------------------------------------------
# Known bugs (strict xfail: a fix makes these pass, and then the marker must go)
# --------------------------------------------------------------------------------------------------


def test_no_solution_falls_back_to_the_greedy_and_is_not_reported_as_nothing_fits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A solver stopped before any plan of its own (``no-solution``): the greedy fill, its start, is the
    answer (status ``feasible``, said in the message); where the greedy trains nothing either the plan is
    empty and the note says the solver gave up, never "nothing can be trained"."""
    from budgetplan.selection import planner as planning
    from budgetplan.selection.solver import SolveResult

    def no_solution(*_args: Any, **_kwargs: Any) -> SolveResult:
        return SolveResult(status="no-solution", values={}, objective=None, gap=None, seconds=0.01,
                           solver="highs", message="no solution found within the time limit")

    greedy = analyze("tinycnn", "--ram", "64k", "--strategy", "greedy")
    assert greedy["update"]  # something can be trained within 64 KiB
    monkeypatch.setattr(planning, "solve", no_solution)
    data = analyze("tinycnn", "--ram", "64k", "--time-limit", "0.01")
    assert data["fits"] and data["update"] == greedy["update"]
    assert data["objective"] == pytest.approx(greedy["objective"])
    assert data["solver"]["status"] == "feasible" and "greedy" in data["solver"]["message"]
    assert not any("nothing can be trained" in note for note in data["notes"]), data["notes"]

    # 20 KiB: the inference peak alone, the greedy trains nothing; the solver's give-up is what is said
    empty = analyze("tinycnn", "--ram", "20k", "--time-limit", "0.01", code=1)
    assert empty["update"] == [] and empty["solver"]["status"] == "no-solution"
    assert any("stopped without a plan" in note for note in empty["notes"]), empty["notes"]
    assert not any("nothing can be trained" in note for note in empty["notes"]), empty["notes"]


def test_bias_only_table_lists_the_trained_layers() -> None:
    result = invoke("analyze", "tinycnn", "--target", "cortex-m7", "--ram", "1M", "--strategy", "bias-only")
    assert result.exit_code == 0
    assert re.search(r"^│ fc ", result.stdout, re.MULTILINE), result.stdout


# --------------------------------------------------------------------------------------------------
# The real program, in a subprocess
# --------------------------------------------------------------------------------------------------


def test_subprocess_analyze_json_is_clean(tmp_path: Path) -> None:
    """stdout holds only the JSON document (no spinner, no solver banner), stderr only ``wrote``."""
    plan = tmp_path / "plan.json"
    proc = run("analyze", "tinycnn", "--target", "cortex-m7", "--ram", "64k", "--out", str(plan), "--json", "-")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"wrote {plan}"
    data = json.loads(proc.stdout)
    assert data["fits"] and data["update"]
    assert json.loads(plan.read_text())["update"] == data["update"]


def test_subprocess_check_exit_code_and_junit(tmp_path: Path) -> None:
    junit = tmp_path / "check.xml"
    proc = run("check", "tinycnn", "--ram", "16k", "--junit", str(junit))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("FAIL inference")
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")


# --------------------------------------------------------------------------------------------------
# The documentation stays true: docs/cli.md and docs/json-output.md for analyze and check
# --------------------------------------------------------------------------------------------------


def test_json_output_doc_analyze_matches_the_tool() -> None:
    doc = (DOCS / "json-output.md").read_text()
    section = doc_section(doc, "## `analyze --json`")
    command, example = doc_example(section, "analyze")
    argv = cli_argv(command)
    assert argv[-2:] == ["--json", "-"]
    actual = run_json(*argv[:-2])
    for key in set(example) | set(actual):
        if key in ("timeline", "update"):
            assert_trimmed(example[key], actual[key])
        elif key == "solver":
            assert {k: v for k, v in example[key].items() if k != "seconds"} == {
                k: v for k, v in actual[key].items() if k != "seconds"}
        else:
            assert example.get(key) == actual.get(key), key

    top = doc_section(section, "### Top level")
    assert documented_fields(top) == set(actual)
    assert documented_fields(doc_section(section, "### `solver`")) == set(actual["solver"])
    # the nested objects are named in the top-level table (their fields: docs/plan-format.md)
    for key in ("model", "memory", "flops", "groups", "layers", "timeline"):
        row = re.search(rf"^\| `{key}` \|.*$", top, re.MULTILINE)
        assert row, key
        first = actual[key][0] if isinstance(actual[key], list) else actual[key]
        assert all(f"`{field}`" in row.group(0) for field in first), (key, row.group(0))


def test_json_output_doc_check_matches_the_tool(tinycnn_plan: tuple[Path, dict], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (DOCS / "json-output.md").read_text()
    section = doc_section(doc, "## `check --json`")
    command, example = doc_example(section, "check")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.json").write_text(tinycnn_plan[0].read_text())
    argv = cli_argv(command)
    actual = run_json(*argv[:-2], code=0 if example["passed"] else 1)
    assert example == actual
    assert documented_fields(doc_section(section, "### Top level")) == set(actual)
    assert documented_fields(doc_section(section, "### `checks[]`")) == set(actual["checks"][0])


@pytest.mark.parametrize("command", ["analyze", "check"])
def test_cli_doc_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """Every example of the command's section runs as written, in order, in an empty directory: exit 0;
    exit 1 where the line's comment says ``exit 1``; the one-line error where it says ``error: ...``."""
    monkeypatch.chdir(tmp_path)
    run_doc_examples(command, at_least=4)


def test_cli_doc_lists_every_analyze_and_check_option() -> None:
    doc = (DOCS / "cli.md").read_text()
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    for name in ("analyze", "check"):
        section = doc_section(doc, f"## `budgetplan {name}")
        for param in group.commands[name].params:
            for opt in param.opts:
                if opt.startswith("-") and opt != "--help":
                    assert f"| `{opt}" in section or f", `{opt}`" in section, (name, opt)
