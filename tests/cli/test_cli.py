"""The ``budgetplan`` command line, tested for real.

Most cases run in-process through typer's ``CliRunner`` (``budgetplan.cli.app``); a few run the installed
program in a subprocess (``python -m budgetplan.cli`` and the ``budgetplan`` console script), where
PyTorch's own printing and logging reach the real stderr. Numbers are checked against facts computed here
without budgetplan: parameter counts from ``model.parameters()``, FLOPs from PyTorch's
``FlopCounterMode``, output sizes from forward hooks.

Every input error must come out as exactly one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import warnings
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
    ENV,
    SUBPROCESS_ENV,
    assert_cli_error,
    assert_one_line_error,
    invoke,
    run,
    runner,
)
from budgetplan.targets import list_targets, load_target

ROOT = Path(__file__).resolve().parents[2]
TARGETS_DIR = ROOT / "targets"
DOCS = ROOT / "docs"

MOD = "cli_fixture_models"  # the module written into the work directory (unique in sys.modules)
MODULE_SOURCE = '''\
import torch
from torch import nn


class Net(nn.Module):
    input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def make():
    return Net()


class ValueBranch(nn.Module):
    input_shape = (1, 3, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return self.conv(-x)


def value_branch():
    return ValueBranch()
'''
BRANCH_LINE = MODULE_SOURCE.splitlines().index("        if x.sum() > 0:") + 1

TYPO_TOML = """\
name = "typo-board"
core = "cortex-m4f"
family = "mcu"
clock_hz = 80_000_000
macs_per_cycle = 0.15
sram_byte = "192k"
reserved_bytes = 0

[sources]
clock_hz = "datasheet"
macs_per_cycle = "estimate"
"""



# --------------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------------










def inspect_json(*args: str) -> dict[str, Any]:
    """``budgetplan inspect ARGS --json -``, checked to succeed quietly; the parsed document."""
    result = invoke("inspect", *args, "--json", "-")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)  # all of stdout is the JSON document


def flop_count(model: nn.Module, shape: tuple[int, ...]) -> int:
    """PyTorch's own count: FlopCounterMode total for one eval forward pass."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(*shape))
    return int(counter.get_total_flops())


def output_numel(model: nn.Module, submodule: nn.Module, shape: tuple[int, ...]) -> int:
    """Elements of ``submodule``'s output in one eval forward pass, seen by a forward hook."""
    seen: list[int] = []
    handle = submodule.register_forward_hook(lambda _m, _i, out: seen.append(out.numel()))
    try:
        with torch.no_grad():
            model.eval()(torch.randn(*shape))
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a model module, a .pt2, a TorchScript file, weights, pickles and junk files."""
    work = tmp_path_factory.mktemp("cli")
    (work / f"{MOD}.py").write_text(MODULE_SOURCE)
    spec = importlib.util.spec_from_file_location(MOD, work / f"{MOD}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MOD] = module  # torch.save(model) pickles the class by this module name
    spec.loader.exec_module(module)

    torch.manual_seed(0)
    net = module.make().eval()
    example = (torch.randn(*module.Net.input_shape),)
    torch.export.save(torch.export.export(net, example), work / "net.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still loadable
        torch.jit.save(torch.jit.trace(net, example), work / "net.ts")
    torch.save(module.make().state_dict(), work / "net_weights.pt")
    bad = module.make().state_dict()
    bad["conv.weight"] = torch.zeros(8, 3, 5, 5)
    torch.save(bad, work / "bad_weights.pt")
    torch.save(net, work / "net_full.pt")  # a pickled module: needs --trust-pickle
    (work / "notes.txt").write_text("these are not the weights you are looking for\n")
    (work / "random.bin").write_bytes(bytes(range(256)) * 7 + os.urandom(512))
    (work / "typo.toml").write_text(TYPO_TOML)
    return work


@pytest.fixture
def in_work(work: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the work directory with it on sys.path (restored afterwards, with anything the loader
    added)."""
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    return work


@pytest.fixture(scope="module")
def tinycnn() -> tuple[nn.Module, tuple[int, ...]]:
    model, entry = zoo.build("tinycnn")
    return model, tuple(entry.input_shape)


# --------------------------------------------------------------------------------------------------
# inspect: values against independent facts
# --------------------------------------------------------------------------------------------------

LAYER_KEYS = {"name", "op", "parameters", "flops", "macs", "output_bytes", "neuron_groups"}
TOTAL_KEYS = {"params", "flops", "macs"}


def test_inspect_json_tinycnn_matches_pytorch(tinycnn: tuple[nn.Module, tuple[int, ...]]) -> None:
    model, shape = tinycnn
    data = inspect_json("tinycnn")
    assert data["model"] == "zoo:tinycnn"
    assert data["target"] == "host"
    assert list(data["input_shapes"].values()) == [list(shape)]
    assert isinstance(data["layers"], list) and data["layers"]
    names = {name for name, _ in model.named_parameters()}
    seen: set[str] = set()
    for layer in data["layers"]:
        assert LAYER_KEYS <= set(layer), layer
        assert isinstance(layer["parameters"], list)
        assert set(layer["parameters"]) <= names, layer["parameters"]  # qualified names of the model
        seen.update(layer["parameters"])
        assert layer["flops"] == 2 * layer["macs"]
        assert all(isinstance(layer[k], int) and layer[k] >= 0 for k in ("flops", "macs", "output_bytes"))
    assert seen == names  # every parameter is used by some layer
    totals = data["totals"]
    assert TOTAL_KEYS <= set(totals)
    assert totals["params"] == n_params(model) == 24346
    assert totals["flops"] == flop_count(model, shape)
    assert totals["macs"] * 2 == totals["flops"]
    assert totals["flops"] == sum(layer["flops"] for layer in data["layers"])
    assert data["budget_bytes"] == load_target("host").usable_bytes


def test_inspect_output_bytes_follow_the_target_dtype(tinycnn: tuple[nn.Module, tuple[int, ...]]) -> None:
    """features.0 is a conv: int8 activations on cortex-m7 (1 byte per element), float32 on host (4)."""
    model, shape = tinycnn
    numel = output_numel(model, model.features[0], shape)
    assert numel == 16 * 32 * 32

    def conv_layer(data: dict[str, Any]) -> dict[str, Any]:
        (layer,) = [l for l in data["layers"] if "features.0.weight" in l["parameters"]]
        assert "conv" in layer["op"]
        return layer

    host = conv_layer(inspect_json("tinycnn"))
    m7_data = inspect_json("tinycnn", "--target", "cortex-m7", "--ram", "256k")
    m7 = conv_layer(m7_data)
    assert host["output_bytes"] == numel * 4
    assert m7["output_bytes"] == numel * 1
    assert m7_data["target"] == "stm32f746"
    assert m7_data["budget_bytes"] == 256 * 1024


def test_inspect_table_on_cortex_m7() -> None:
    result = invoke("inspect", "tinycnn", "--target", "cortex-m7", "--ram", "256k")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "zoo:tinycnn on stm32f746" in out
    for text in ("features.0", "conv2d", "fc", "linear", "1×16×32×32", "16.0 KiB", "24,346", "256.0 KiB",
                 "fits"):
        assert text in out, text
    assert "does not fit" not in out
    assert " features.2 " not in out  # the in-place ReLU costs nothing: hidden without --all
    everything = invoke("inspect", "tinycnn", "--all")
    assert everything.exit_code == 0
    assert " features.2 " in everything.stdout and "all shown" in everything.stdout


def test_inspect_tight_budget_does_not_fit() -> None:
    result = invoke("inspect", "tinycnn", "--target", "cortex-m7", "--ram", "16k")
    assert result.exit_code == 0, result.stderr  # inspect reports; only a future `check` fails on it
    assert "vs budget 16.0 KiB: does not fit" in result.stdout


def test_inspect_pt2_file(work: Path) -> None:
    net = sys.modules[MOD].make()
    data = inspect_json(str(work / "net.pt2"))
    assert data["model"] == str(work / "net.pt2")
    assert data["trace_method"] == "export"
    assert data["input_shapes"] and list(data["input_shapes"].values()) == [[1, 3, 16, 16]]
    assert data["totals"]["params"] == n_params(net)
    assert data["totals"]["flops"] == flop_count(net, (1, 3, 16, 16))
    used = {p for layer in data["layers"] for p in layer["parameters"]}
    assert used == {name for name, _ in net.named_parameters()}


def test_inspect_file_name_is_not_markup(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file name with brackets is printed as it is (rich would read ``[v2]`` as a style)."""
    shutil.copy(work / "net.pt2", tmp_path / "net[v2][bold].pt2")
    monkeypatch.chdir(tmp_path)
    result = invoke("inspect", "net[v2][bold].pt2")
    assert result.exit_code == 0, result.stderr
    assert "net[v2][bold].pt2 on host" in result.stdout


def test_inspect_torchscript_file(work: Path) -> None:
    net = sys.modules[MOD].make()
    data = inspect_json(str(work / "net.ts"))
    assert data["totals"]["params"] == n_params(net)
    assert data["totals"]["flops"] == flop_count(net, (1, 3, 16, 16))
    (conv,) = [l for l in data["layers"] if "conv.weight" in l["parameters"]]
    assert "conv" in conv["op"] and conv["output_bytes"] == 8 * 16 * 16 * 4


def test_inspect_factory_with_weights(in_work: Path) -> None:
    net = sys.modules[MOD].make()
    data = inspect_json(f"{MOD}:make", "--weights", "net_weights.pt")
    assert data["model"] == f"{MOD}:make (weights net_weights.pt)"
    assert data["totals"]["params"] == n_params(net)
    assert data["totals"]["flops"] == flop_count(net, (1, 3, 16, 16))


def test_inspect_factory_with_mismatched_weights(in_work: Path) -> None:
    assert_cli_error(invoke("inspect", f"{MOD}:make", "--weights", "bad_weights.pt"),
                     "bad_weights.pt", "conv.weight", "5x5")


def test_inspect_pickled_module_needs_trust(work: Path) -> None:
    path = str(work / "net_full.pt")
    assert_cli_error(invoke("inspect", path), "--trust-pickle", f"{MOD}.Net")
    data = inspect_json(path, "--trust-pickle")
    assert data["totals"]["params"] == n_params(sys.modules[MOD].make())


# --------------------------------------------------------------------------------------------------
# --json PATH and --force
# --------------------------------------------------------------------------------------------------


def test_json_file_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    first = invoke("inspect", "tinycnn", "--json", str(out))
    assert first.exit_code == 0, first.stderr
    assert first.stderr.strip() == f"wrote {out}"
    assert "zoo:tinycnn on host" in first.stdout  # the table still goes to stdout
    written = out.read_bytes()
    assert json.loads(written)["target"] == "host"

    again = invoke("inspect", "tinycnn", "--target", "cortex-m7", "--json", str(out))
    assert_cli_error(again, str(out), "--force")
    assert out.read_bytes() == written

    forced = invoke("inspect", "tinycnn", "--target", "cortex-m7", "--json", str(out), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert json.loads(out.read_text())["target"] == "stm32f746"


def test_json_path_errors(tmp_path: Path) -> None:
    assert_cli_error(invoke("inspect", "tinycnn", "--json", str(tmp_path / "no" / "such" / "dir.json")),
                     "does not exist")
    assert_cli_error(invoke("inspect", "tinycnn", "--json", str(tmp_path)), "is a directory")
    (tmp_path / "file.txt").write_text("")
    assert_cli_error(invoke("inspect", "tinycnn", "--json", str(tmp_path / "file.txt" / "x.json")),
                     "is not a directory")
    (tmp_path / "targets.json").write_text("keep me")
    assert_cli_error(invoke("targets", "--json", str(tmp_path / "targets.json")), "--force")
    assert (tmp_path / "targets.json").read_text() == "keep me"


# --------------------------------------------------------------------------------------------------
# targets, --version
# --------------------------------------------------------------------------------------------------


def test_targets_table_and_json() -> None:
    shipped = sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))
    assert len(shipped) >= 11
    table = invoke("targets")
    assert table.exit_code == 0 and table.stderr == ""
    for name in shipped:
        assert name in table.stdout, name
    assert "cortex-m7" in table.stdout and "256.0 KiB" in table.stdout

    listed = invoke("targets", "--json", "-")
    assert listed.exit_code == 0 and listed.stderr == ""
    data = json.loads(listed.stdout)
    assert [t["name"] for t in data["targets"]] == shipped
    by_name = {t["name"]: t for t in data["targets"]}
    assert by_name["stm32f746"]["usable_bytes"] == 262144
    assert "cortex-m7" in by_name["stm32f746"]["aliases"]
    for target in list_targets():
        assert by_name[target.name] == json.loads(json.dumps(target.to_dict()))


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"budgetplan {importlib.metadata.version('budgetplan')}"
    import budgetplan  # __version__ is read on first use, the same value, and the same on a second read

    assert budgetplan.__version__ == importlib.metadata.version("budgetplan") == budgetplan.__version__
    assert "__version__" in budgetplan.__all__


# --------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2
# --------------------------------------------------------------------------------------------------

BAD_INPUTS = [
    pytest.param(["inspect", "{work}/missing.pt2"], ["file not found", "missing.pt2"], id="missing-file"),
    pytest.param(["inspect", "{work}/notes.txt"], ["notes.txt", "not a model file"], id="text-file"),
    pytest.param(["inspect", "{work}/random.bin"], ["random.bin", "not a model file"], id="random-bytes"),
    pytest.param(["inspect", "{work}/net_weights.pt"], ["state_dict", "--weights"], id="state-dict-alone"),
    pytest.param(["inspect", "tinycnn", "--weights", "{work}/net_weights.pt"], ["--weights", "tinycnn"],
                 id="weights-for-zoo-model"),
    pytest.param(["inspect", "tinycnnn"], ["tinycnnn", "did you mean tinycnn"], id="unknown-model"),
    pytest.param(["inspect", "tinycnn", "--target", "cortex-m8"], ["cortex-m8", "cortex-m7"],
                 id="unknown-target"),
    pytest.param(["inspect", "tinycnn", "--target", "{work}/typo.toml"],
                 ["typo.toml", "sram_byte", "did you mean 'sram_bytes'"], id="typo-target-file"),
    pytest.param(["inspect", "tinycnn", "--target", "{work}/nope.toml"], ["nope.toml", "not found"],
                 id="missing-target-file"),
    pytest.param(["inspect", "tinycnn", "--ram", "12q"], ["invalid size '12q'", "unit"], id="ram-12q"),
    pytest.param(["inspect", "tinycnn", "--ram", "-5k"], ["invalid size '-5k'", "positive"],
                 id="ram-negative"),
    pytest.param(["inspect", "tinycnn", "--ram", "0"], ["invalid size '0'", "positive"], id="ram-zero"),
    pytest.param(["inspect", "tinycnn", "--input-shape", "1x3xfoo"], ["invalid shape '1x3xfoo'", "foo"],
                 id="shape-foo"),
    pytest.param(["inspect", "tinycnn", "--input-shape", "0x3x2x2"], ["invalid shape '0x3x2x2'"],
                 id="shape-zero"),
    pytest.param(["inspect", "tinycnn", "--input-shape", "1x4x32x32"], ["1x4x32x32", "does not fit"],
                 id="shape-wrong-channels"),
    pytest.param(["inspect", "{work}/net.pt2", "--input-shape", "2x3x16x16"], ["2x3x16x16", "static"],
                 id="shape-vs-static-export"),
    pytest.param(["inspect", "tinycnn", "--trace", "bogus"], ["bogus", "auto, fx or export"],
                 id="trace-bogus"),
    pytest.param(["inspect", "tinycnn", "--group-size", "0"], ["--group-size"], id="group-size-0"),
    pytest.param(["inspect", "tinycnn", "--group-size", "two"], ["--group-size"], id="group-size-text"),
    # click's own usage errors, made compact
    pytest.param(["inspect"], ["Missing argument", "budgetplan inspect --help"], id="missing-argument"),
    pytest.param(["inspect", "tinycnn", "--bogus"], ["--bogus", "budgetplan inspect --help"],
                 id="unknown-option"),
    pytest.param(["inspect", "tinycnn", "--ram"], ["--ram"], id="option-without-value"),
    pytest.param(["bogus"], ["bogus", "budgetplan --help"], id="unknown-command"),
    pytest.param(["--bogus"], ["--bogus"], id="unknown-root-option"),
]


@pytest.mark.parametrize(("args", "needles"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(work: Path, args: list[str], needles: list[str]) -> None:
    assert_cli_error(invoke(*(a.format(work=work) for a in args)), *needles)


def test_untraceable_model_names_the_line_and_what_to_try(in_work: Path) -> None:
    line = assert_cli_error(invoke("inspect", f"{MOD}:value_branch"), f"{MOD}.py:{BRANCH_LINE}",
                            "if x.sum() > 0", "cannot trace")
    assert ".pt2" in line.split("cannot trace", 1)[1]  # suggests exporting the model yourself
    fx_only = assert_cli_error(invoke("inspect", f"{MOD}:value_branch", "--trace", "fx"),
                               f"{MOD}.py:{BRANCH_LINE}")
    assert "--trace export" in fx_only


def test_unexpected_failure_is_one_line_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    from budgetplan import pipeline

    def boom(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(pipeline, "inspect_model", boom)
    result = invoke("inspect", "tinycnn")
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        "internal error: RuntimeError: something broke (set BUDGETPLAN_DEBUG=1 for the traceback)"
    ]
    debug = runner.invoke(app, ["inspect", "tinycnn"], env={**ENV, "BUDGETPLAN_DEBUG": "1"})
    assert isinstance(debug.exception, RuntimeError)  # the traceback is not swallowed


def test_no_arguments_prints_help() -> None:
    result = invoke()
    assert result.exit_code == 2  # click's convention for "no arguments: show help"
    assert "inspect" in result.output and "targets" in result.output


# --------------------------------------------------------------------------------------------------
# The real program, in a subprocess (each run imports torch: a few seconds)
# --------------------------------------------------------------------------------------------------


def test_subprocess_inspect_table() -> None:
    proc = run("inspect", "tinycnn", "--target", "cortex-m7", "--ram", "256k")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "zoo:tinycnn on stm32f746" in proc.stdout
    assert "features.0" in proc.stdout and "fits" in proc.stdout


def test_subprocess_console_script_factory_json(work: Path) -> None:
    """The console script, importing the factory from the current directory."""
    proc = run("inspect", f"{MOD}:make", "--weights", "net_weights.pt", "--json", "-", cwd=work, script=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    data = json.loads(proc.stdout)
    net = sys.modules[MOD].make()
    assert data["totals"]["params"] == n_params(net)
    assert data["totals"]["flops"] == flop_count(net, (1, 3, 16, 16))


def test_subprocess_untraceable_model_is_one_line(work: Path, tmp_path: Path) -> None:
    """torch.export prints the partial graph and logs warnings on the real stderr before it raises."""
    env = {**SUBPROCESS_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(work),
                                                                           os.environ.get("PYTHONPATH")]))}
    proc = run("inspect", f"{MOD}:value_branch", cwd=tmp_path, env=env)
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, f"{MOD}.py:{BRANCH_LINE}")


def test_subprocess_not_a_model_is_one_line(work: Path) -> None:
    proc = run("inspect", str(work / "random.bin"))
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "not a model file")


def test_subprocess_cheap_commands(tmp_path: Path) -> None:
    """--version, targets and usage errors do not import torch; they run as the console script."""
    version = run("--version", script=True)
    assert version.returncode == 0 and version.stderr == ""
    assert version.stdout.strip() == f"budgetplan {importlib.metadata.version('budgetplan')}"
    usage = run("inspect", "tinycnn", "--group-size", "0", script=True)
    assert_one_line_error(usage.returncode, usage.stdout, usage.stderr, "--group-size")


# --------------------------------------------------------------------------------------------------
# The documentation stays true: docs/json-output.md and docs/cli.md
# --------------------------------------------------------------------------------------------------


def _documented_fields(section: str) -> set[str]:
    """The backticked names in the first column of the markdown tables of ``section``."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


def test_json_output_doc_matches_the_tool() -> None:
    doc = (DOCS / "json-output.md").read_text()
    (block,) = re.findall(r"```json\n(.*?)```", doc, re.DOTALL)
    example = json.loads(block)
    actual = inspect_json("tinycnn", "--target", "cortex-m7", "--ram", "256k")
    assert {k: v for k, v in example.items() if k != "layers"} == {
        k: v for k, v in actual.items() if k != "layers"}
    by_name = {layer["name"]: layer for layer in actual["layers"]}
    assert example["layers"] and all(layer == by_name[layer["name"]] for layer in example["layers"])

    inspect_doc = doc.split("## `inspect --json`", 1)[1].split("### Example", 1)[0]
    top, rest = inspect_doc.split("### `layers[]`", 1)
    layers_doc, totals_doc = rest.split("### `totals`", 1)
    assert _documented_fields(top) == set(actual)
    assert _documented_fields(layers_doc) == set(actual["layers"][0])
    assert _documented_fields(totals_doc) == set(actual["totals"])
    targets_doc = doc.split("## `targets --json`", 1)[1]
    fields = {f.name for f in dataclasses.fields(load_target("host"))}
    derived = set(json.loads(invoke("targets", "--json", "-").stdout)["targets"][0]) - fields
    assert _documented_fields(targets_doc) == derived


def test_cli_doc_covers_every_command_and_option() -> None:
    doc = (DOCS / "cli.md").read_text()
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    for name, command in group.commands.items():
        if command.hidden:  # a deprecated alias (compile = export) is not documented on its own
            continue
        assert f"## `budgetplan {name}" in doc, name
        section = doc.split(f"## `budgetplan {name}", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("-") and opt != "--help":
                    assert f"`{opt}" in section or f", `{opt}`" in section, (name, opt)
    for code in ("0", "1", "2", "3"):
        assert re.search(rf"^\| {code} \| ", doc, re.MULTILINE), code


@pytest.mark.parametrize("quiet", [False, True])
def test_spinner_on_a_terminal_and_none_with_quiet(monkeypatch: pytest.MonkeyPatch, quiet: bool) -> None:
    """On a terminal, long commands (analyze, measure) draw a transient spinner on stderr; --quiet draws
    none. The terminal is a rich console forced to be one, writing into a buffer."""
    import io

    from rich.console import Console

    import budgetplan.cli as cli

    screen = io.StringIO()
    monkeypatch.setattr(cli, "err_console", Console(file=screen, force_terminal=True, width=100))
    args = ["--quiet"] if quiet else []
    for command in (["analyze", "tinycnn", "--target", "cortex-m7", "--ram", "64k"],
                    ["measure", "tinycnn", "--update", "fc"]):
        result = invoke(*args, *command)
        assert result.exit_code == 0, result.stdout
    drawn = screen.getvalue()
    if quiet:
        assert drawn == ""
    else:
        assert "tracing, pricing and solving" in drawn and "one training step" in drawn


@pytest.mark.parametrize("spelling", ["config:{}", "  config:{}", "{}"])
def test_an_update_config_file_may_not_be_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     spelling: str) -> None:
    """``--update config:c.yaml --json c.yaml --force`` would overwrite the config just read: refused
    like any other output naming an input, and the file is left as it was."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text("n_bias_update: 2\nmanual_weight_idx: [2]\nweight_update_ratio: [0.5]\n", encoding="utf-8")
    before = config.read_bytes()
    result = invoke("estimate", "tinycnn", "--target", "cortex-m7", "--update", spelling.format("c.yaml"),
                    "--json", "c.yaml", "--force")
    assert_cli_error(result, "is also the --update")
    assert config.read_bytes() == before
    # a shipped scheme is no file: naming it never blocks an output
    ok = invoke("estimate", "mbv2-w0.35-tt", "--target", "cortex-m7", "--update", "tt:mbv2-w0.35/49kb",
                "--json", str(tmp_path / "out.json"))
    assert ok.exit_code == 0, ok.stdout


@pytest.mark.parametrize("target", [{"name": "HOST", "family": "mcu"}, {"name": "stm32f746", "family": "host"},
                                    {"name": "cortex-m7", "family": "embedded-linux"}])
@pytest.mark.parametrize("command", ["export", "check"])
def test_a_plan_whose_target_family_was_edited_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           target: dict[str, str], command: str) -> None:
    """A plan whose target names a built-in target of another family is refused by the commands that use
    the plan's target (export raised an internal error on one, and silently built the host's float32 step
    on another). ``estimate --update plan.json`` reads only the plan's update list and prices it on
    ``--target``."""
    monkeypatch.chdir(tmp_path)
    made = invoke("analyze", "tinycnn", "--target", "cortex-m7", "--ram", "64k", "--out", "plan.json")
    assert made.exit_code == 0, made.stdout
    document = json.loads((tmp_path / "plan.json").read_text(encoding="utf-8"))
    document["target"] = target
    (tmp_path / "plan.json").write_text(json.dumps(document), encoding="utf-8")
    args = {"export": ["export", "tinycnn", "--plan", "plan.json", "--out", "build"],
            "check": ["check", "tinycnn", "--plan", "plan.json"]}[command]
    assert_cli_error(invoke(*args), "the plan was edited or made for another target")
    assert not (tmp_path / "build").exists()
