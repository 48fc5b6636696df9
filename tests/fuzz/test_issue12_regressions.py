"""Issue 12 (hostile and careless input), one named test per failure it reported.

Each test reproduces the reported invocation and checks what the contract promises instead: exit 2
with exactly one ``error:`` line (``assert_cli_error``), or the right answer, and no file written or
changed on an error.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import budgetplan.pipeline
from cli_support import SUBPROCESS_ENV, assert_cli_error, invoke
from fuzz_support import snapshot


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``analyze tinycnn --ram 64k --out plan.json`` on the default target (cortex-m7)."""
    path = tmp_path_factory.mktemp("issue12") / "plan.json"
    result = invoke("analyze", "tinycnn", "--ram", "64k", "--out", str(path))
    assert result.exit_code == 0, result.output
    return path


def _edited(plan_file: Path, tmp_path: Path, change: Any, name: str = "edited.json") -> Path:
    document = json.loads(plan_file.read_text(encoding="utf-8"))
    change(document)
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# wrong verdicts and silently wrong plans
# --------------------------------------------------------------------------------------------------


def test_reorder_as_the_string_false_is_refused_not_read_as_true(plan_file: Path, tmp_path: Path) -> None:
    path = _edited(plan_file, tmp_path, lambda d: d.update(reorder="false"))
    assert_cli_error(invoke("check", "tinycnn", "--ram", "64k", "--plan", str(path)),
                     "reorder: must be a boolean (true or false), got string \"false\"")
    # the boolean false is read as false: the plan is priced without reordering (a larger peak)
    honest = _edited(plan_file, tmp_path, lambda d: d.update(reorder=False), "false.json")
    as_written = invoke("check", "tinycnn", "--ram", "64k", "--plan", str(plan_file), "--json", "-")
    without = invoke("check", "tinycnn", "--ram", "64k", "--plan", str(honest), "--json", "-")
    peaks = [int(next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "plan")["message"]
                 .split("peak ")[1].split()[0]) for r in (as_written, without)]
    assert peaks[1] >= peaks[0]


def test_version_true_is_not_version_1(plan_file: Path, tmp_path: Path) -> None:
    path = _edited(plan_file, tmp_path, lambda d: d.update(version=True))
    assert_cli_error(invoke("check", "tinycnn", "--ram", "64k", "--plan", str(path)), "version: must be 1, got true")


def test_update_given_twice_trains_both(tmp_path: Path) -> None:
    both = json.loads(invoke("estimate", "tinycnn", "--update", "fc", "--update", "features.8.weight[0:4]",
                             "--json", "-").stdout)
    joined = json.loads(invoke("estimate", "tinycnn", "--update", "fc,features.8.weight[0:4]", "--json", "-").stdout)
    assert set(both["trained_parameters"]) == {"fc.weight", "fc.bias", "features.8.weight"}
    assert both["trained_parameters"] == joined["trained_parameters"] and both["peak_bytes"] == joined["peak_bytes"]


def test_an_option_that_takes_one_value_given_twice_is_refused() -> None:
    assert_cli_error(invoke("estimate", "tinycnn", "--ram", "64k", "--ram", "32k"), "--ram is given more than once")
    assert_cli_error(invoke("check", "tinycnn", "--plan", "a.json", "--plan", "b.json"), "--plan is given more than once")


# --------------------------------------------------------------------------------------------------
# internal errors (exit 3) where the contract says exit 2
# --------------------------------------------------------------------------------------------------


def test_plan_whose_model_is_a_list_is_exit_2(plan_file: Path, tmp_path: Path) -> None:
    path = _edited(plan_file, tmp_path, lambda d: d.update(model=[1, 2]))
    assert_cli_error(invoke("check", "tinycnn", "--ram", "64k", "--plan", str(path)), "model: must be an object")


def test_plan_whose_group_size_is_text_is_exit_2(plan_file: Path, tmp_path: Path) -> None:
    path = _edited(plan_file, tmp_path, lambda d: d["model"].update(group_size="abc"))
    assert_cli_error(invoke("check", "tinycnn", "--ram", "64k", "--plan", str(path)),
                     "model.group_size: must be an integer, got string \"abc\"")


@pytest.mark.parametrize("option", ["--plan", "--update"])
def test_deeply_nested_json_is_exit_2(tmp_path: Path, option: str) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    command = "check" if option == "--plan" else "estimate"
    assert_cli_error(invoke(command, "tinycnn", option, str(path)), "nested more than 32 levels deep")


def test_binary_file_as_sparse_update_config_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "config.bin"
    path.write_bytes(bytes(range(256)) * 8)
    assert_cli_error(invoke("analyze", "tinycnn", "--strategy", f"config:{path}"), "is not UTF-8 text", "binary")


@pytest.mark.parametrize("shape, needles", [
    ("1x3x100000x100000", ["needs 120,000,000,000 bytes", "BUDGETPLAN_MAX_RUN_BYTES"]),
    ("1x3x99999999999999999999x1", ["beyond a 64-bit count (overflow)"]),
])
def test_huge_input_shapes_are_refused_up_front(shape: str, needles: list[str]) -> None:
    assert_cli_error(invoke("inspect", "tinycnn", "--input-shape", shape), shape, *needles)


def test_zero_width_linear_layer_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "zero_width.py").write_text(
        "from torch import nn\n\n"
        "class Net(nn.Module):\n    input_shape = (1, 16)\n\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(16, 0)\n\n"
        "    def forward(self, x):\n        return self.fc(x)\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for command in ("analyze", "estimate", "inspect"):
        assert_cli_error(invoke(command, "zero_width:Net"), "parameter 'fc.weight' has shape [0, 16]",
                         "zero-width layer")


def test_a_long_comma_separated_update_is_patterns_not_a_file_name() -> None:
    patterns = ",".join(["fc"] * 5000)
    assert len(patterns) > 4096  # longer than any file name
    result = invoke("estimate", "tinycnn", "--update", patterns, "--json", "-")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["trained_parameters"]) == {"fc.weight", "fc.bias"}
    assert_cli_error(invoke("estimate", "tinycnn", "--update", ",".join(["fcc"] * 5000)),
                     "matches no parameter or module")


# --------------------------------------------------------------------------------------------------
# hangs and memory
# --------------------------------------------------------------------------------------------------


def test_200001_channel_indices_with_a_duplicate_are_refused_at_once(plan_file: Path, tmp_path: Path) -> None:
    channels = list(range(200_000)) + [7]
    path = _edited(plan_file, tmp_path, lambda d: d["update"][0].update(channels=channels))
    start = time.perf_counter()
    assert_cli_error(invoke("check", "tinycnn", "--ram", "64k", "--plan", str(path)),
                     "update[0].channels: has integer 7 twice")
    assert time.perf_counter() - start < 30  # a hang guard (quadratic took minutes), not a speed goal
    # the same list without the duplicate goes on to the model check: out of range, also one line
    path = _edited(plan_file, tmp_path, lambda d: d["update"][0].update(channels=channels[:-1]), "nodup.json")
    assert_cli_error(invoke("estimate", "tinycnn", "--target", "cortex-m7", "--update", str(path)), "out of range")


def test_a_30000x30000_input_is_refused_without_allocating_it(tmp_path: Path) -> None:
    """In a real process, so that its peak memory can be read: the refusal names the bytes one forward
    pass would create, and the process never holds anything near them."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    run = subprocess.run([sys.executable, "-m", "budgetplan.cli", "inspect", "tinycnn", "--input-shape",
                          "1x3x30000x30000"], cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True,
                         timeout=300, check=False)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert "one forward pass creates 378,000,004,032 bytes of tensors" in line, line
    assert max(peak_kib, before) < 2 * 1024 * 1024, f"peak {peak_kib} KiB"  # far below the 10.8 GB input alone


# --------------------------------------------------------------------------------------------------
# outputs that clobber each other
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["analyze", "tinycnn", "--ram", "64k", "--out", "x", "--html", "x"],
    ["analyze", "tinycnn", "--ram", "64k", "--out", "x", "--json", "x"],
    ["analyze", "tinycnn", "--ram", "64k", "--out", "x", "--json", "./sub/../x"],
    ["check", "tinycnn", "--junit", "r.xml", "--json", "r.xml"],
    ["export", "tinycnn", "--plan", "{plan}", "--out", "DIR", "--json", "DIR/arena.json"],
    ["export", "tinycnn", "--plan", "{plan}", "--out", "sub", "--json", "sub/step.py", "--force"],
], ids=["out-html", "out-json", "out-json-spelled-otherwise", "junit-json", "export-json-in-dir",
        "export-existing-dir"])
def test_two_options_naming_one_file_are_refused(argv: list[str], plan_file: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    before = snapshot(tmp_path)
    assert_cli_error(invoke(*[a.format(plan=plan_file) for a in argv]), "name the same file")
    assert snapshot(tmp_path) == before


def test_an_output_may_not_be_an_input(plan_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "plan.json"
    copy.write_bytes(plan_file.read_bytes())
    before = copy.read_bytes()
    assert_cli_error(invoke("check", "tinycnn", "--ram", "64k", "--plan", str(copy), "--json", str(copy), "--force"),
                     "is also the --plan input")
    assert copy.read_bytes() == before


def test_a_symbolic_link_to_the_other_output_is_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real.json").write_text("keep", encoding="utf-8")
    os.symlink("real.json", tmp_path / "link.json")
    assert_cli_error(invoke("analyze", "tinycnn", "--ram", "64k", "--out", "real.json", "--json", "link.json",
                            "--force"), "name the same file")
    assert (tmp_path / "real.json").read_text(encoding="utf-8") == "keep"


def test_export_builds_in_a_temporary_directory_and_leaves_nothing_on_failure(
        plan_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt while the files are being written: no partial directory, no temporary files."""
    import budgetplan.cli as cli

    monkeypatch.chdir(tmp_path)
    calls = []
    real = cli._write_all

    def interrupted(path: str, text: str) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(cli, "_write_all", interrupted)
    result = invoke("export", "tinycnn", "--plan", str(plan_file), "--out", "build")
    assert result.exit_code == 130 and result.stderr.strip() == "interrupted", result.output
    assert sorted(os.listdir(tmp_path)) == []
    monkeypatch.setattr(cli, "_write_all", real)
    result = invoke("export", "tinycnn", "--plan", str(plan_file), "--out", "build")
    assert result.exit_code == 0, result.output
    assert {"step.py", "schedule.json", "arena.json", "budgetplan_plan.h"} <= set(os.listdir(tmp_path / "build"))
    assert sorted(os.listdir(tmp_path)) == ["build"]


# --------------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["export", "check"])
def test_another_models_plan_says_made_for_another_model(plan_file: Path, tmp_path: Path, command: str) -> None:
    """resnet18 at the tinycnn plan's 1x3x32x32 input fails in its BatchNorm (one value per channel) when
    it runs in training mode; the plan is refused before that."""
    argv = [command, "resnet18", "--plan", str(plan_file)]
    if command == "export":
        argv += ["--out", str(tmp_path / "build")]
    else:
        argv += ["--input-shape", "1x3x32x32"]
    assert_cli_error(invoke(*argv), "was made for another model", "re-plan with budgetplan analyze")
    assert not (tmp_path / "build").exists()


def test_another_input_shape_is_another_model(plan_file: Path, tmp_path: Path) -> None:
    assert_cli_error(invoke("export", "tinycnn", "--plan", str(plan_file), "--out", str(tmp_path / "b"),
                            "--input-shape", "1x3x64x64"),
                     "was made for another model (input shape 1x3x64x64, the plan's 1x3x32x32)")


def test_terminal_escape_codes_do_not_reach_the_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "loud.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n    input_shape = (1, 4)\n\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(4, 2)\n\n"
        "    def forward(self, x):\n        raise RuntimeError('\\x1b[31mExpected\\x1b[0m more \\x1b]0;t\\x07colour')\n",
        encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    line = assert_cli_error(invoke("inspect", "loud:Net"), "Expected more")
    assert "\x1b" not in line and "\x07" not in line and "[31m" not in line
    line = assert_cli_error(invoke("inspect", "\x1b[31mnope\x1b[0m.pt"), "file not found")
    assert "\x1b" not in line


def test_a_budget_beyond_any_device_is_refused() -> None:
    assert_cli_error(invoke("analyze", "tinycnn", "--ram", "9999999999999999999999T"),
                     "more than any device has", "256 TiB")


def test_memory_error_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(*args: Any, **kwargs: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(budgetplan.pipeline, "inspect_model", exhausted)
    assert_cli_error(invoke("inspect", "tinycnn"), "out of memory")


def test_keyboard_interrupt_is_one_line_exit_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(budgetplan.pipeline, "inspect_model", interrupted)
    result = invoke("inspect", "tinycnn")
    assert result.exit_code == 130 and result.stderr.strip() == "interrupted"


def test_nan_and_infinity_are_refused_for_numeric_options() -> None:
    assert_cli_error(invoke("analyze", "tinycnn", "--time-limit", "inf"), "--time-limit", "not a finite number")
    assert_cli_error(invoke("export", "tinycnn", "--plan", "p.json", "--out", "o", "--lr", "nan"),
                     "--lr", "not a finite number")


# --------------------------------------------------------------------------------------------------
# found on the way
# --------------------------------------------------------------------------------------------------


def test_analyze_never_writes_a_plan_it_cannot_read_back(tmp_path: Path) -> None:
    """--group-size 99999999999999999999 used to be planned and written; check then refused the file
    (its group_size beyond the schema's 2**31 - 1). Now the option is bounded, before any work."""
    out = tmp_path / "plan.json"
    assert_cli_error(invoke("analyze", "tinycnn", "--group-size", "99999999999999999999", "--out", str(out)),
                     "--group-size")
    assert not out.exists()
