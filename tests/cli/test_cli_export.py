"""``budgetplan export`` through the CLI: the files it writes (a graph that runs and matches an eager
step, an arena the checker accepts — for a microcontroller plan the device's arena, within 2 % of the
plan's peak —, a header gcc accepts, a sparse-update config that imports back), refusing to overwrite,
and one-line errors (a plan for another model: exit 2)."""

from __future__ import annotations

import copy
import json
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from budgetplan.model import zoo
from budgetplan.runtime.arena import ArenaPlan, check_arena
from budgetplan.runtime.training_step import eager_sgd_step
from budgetplan.model.update_set import from_plan_json, from_sparse_update_config

from cli_support import assert_cli_error, assert_one_line_error, invoke, run


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tinycnn plan whose set is a sparse-update config (the classifier and the last conv's rows 0:32)."""
    d = tmp_path_factory.mktemp("plan")
    cfg = d / "sparse.json"
    cfg.write_text(json.dumps({"n_bias_update": 1, "manual_weight_idx": [2], "weight_update_ratio": [0.5]}))
    path = d / "plan.json"
    result = invoke("analyze", "tinycnn", "--target", "cortex-m7", "--ram", "256k", "--strategy",
                    f"config:{cfg}", "--out", str(path))
    assert result.exit_code == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def compiled_dir(plan_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out") / "build"
    result = invoke("export", "tinycnn", "--plan", str(plan_file), "--out", str(out), "--json", "-")
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout)


def test_compile_writes_every_file_and_the_arena_is_sound(compiled_dir: tuple[Path, dict]) -> None:
    out, summary = compiled_dir
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["step.py", "schedule.json", "arena.json", "budgetplan_plan.h", "sparse_update_config.json"])
    document = json.loads((out / "arena.json").read_text())
    arena = ArenaPlan.from_dict(document)
    assert check_arena(arena) == []
    assert summary["arena_bytes"] == arena.arena_bytes >= summary["peak_live_bytes"] > 0
    assert summary["matches_eager"] is True and summary["max_abs_diff"] <= 1e-4
    schedule = json.loads((out / "schedule.json").read_text())
    assert {u["parameter"] for u in schedule["updates"]} >= {"module.fc.weight", "module.fc.bias"}
    assert schedule["peak_live_bytes"] == summary["step_peak_live_bytes"]
    # a cortex-m7 plan: the arena is the device's (int8 activations, fp32 gradients), the plan's peak is
    # its lower bound and the placement adds at most 2 %
    assert document["runtime"] == "tinyengine-int8"
    assert summary["peak_live_bytes"] == summary["plan_peak_bytes"] == document["plan_peak_bytes"]
    assert summary["arena_bytes"] <= 1.02 * summary["plan_peak_bytes"]
    assert summary["device_arena"]["first_fit_bytes"] == document["placements"]["first_fit"]["arena_bytes"]
    assert {b["dtype"] for b in document["buffers"] if b["kind"] == "activation"} == {"int8"}


def test_emitted_step_runs_in_pytorch_and_matches_eager(compiled_dir: tuple[Path, dict], plan_file: Path) -> None:
    import budgetplan

    out, _ = compiled_dir
    namespace = runpy.run_path(str(out / "step.py"))
    model, entry = zoo.build("tinycnn")
    compiled = budgetplan.compile(model, from_plan_json(json.loads(plan_file.read_text()), model))
    x = torch.randn(entry.input_shape)
    ours = copy.deepcopy(compiled)
    namespace["train_step"](ours, x)
    reference, _ = eager_sgd_step(compiled, x, lr=namespace["LR"])
    for a, b in zip(reference.state_dict().values(), ours.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert not torch.equal(ours.state_dict()["fc.weight"], compiled.state_dict()["fc.weight"])


def test_header_lists_the_plan_and_is_valid_c(compiled_dir: tuple[Path, dict], plan_file: Path) -> None:
    out, summary = compiled_dir
    header = (out / "budgetplan_plan.h").read_text()
    assert f"#define BP_ARENA_BYTES {summary['arena_bytes']}u" in header
    assert f"#define BP_PLAN_PEAK_BYTES {json.loads(plan_file.read_text())['peak_bytes']}u" in header
    assert "#define BP_FEATURES_8_WEIGHT_N_CHANNELS 32u" in header
    assert "bp_features_8_weight_channels[32] = {0u, 1u," in header
    assert "#define BP_DTYPE_INT8 " in header and "uint32_t dtype;" in header  # the device arena's types
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    main = out.parent / "main.c"
    main.write_text('#include "budgetplan_plan.h"\n#include "budgetplan_plan.h"\n'
                    "int main(void) { return (int)(bp_buffers[0].size + bp_features_8_weight_channels[0]"
                    " + BP_ARENA_BYTES - BP_ARENA_BYTES); }\n")
    done = subprocess.run([gcc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-Wno-unused-const-variable",
                           "-fsyntax-only", "-I", str(out), str(main)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_sparse_update_config_imports_back_to_the_plan(compiled_dir: tuple[Path, dict], plan_file: Path) -> None:
    out, _ = compiled_dir
    model, _ = zoo.build("tinycnn")
    config = json.loads((out / "sparse_update_config.json").read_text())
    assert from_sparse_update_config(config, model) == from_plan_json(json.loads(plan_file.read_text()), model)


def test_existing_files_are_not_overwritten_without_force(compiled_dir: tuple[Path, dict], plan_file: Path) -> None:
    out, _ = compiled_dir
    before = (out / "step.py").read_text()
    result = invoke("export", "tinycnn", "--plan", str(plan_file), "--out", str(out))
    assert_cli_error(result, "step.py exists", "--force")
    assert (out / "step.py").read_text() == before


def test_plan_for_another_model_is_one_line_exit_2(plan_file: Path, tmp_path: Path) -> None:
    # a subprocess, as a user runs it: the input shape changes the fingerprint
    done = run("export", "tinycnn", "--plan", str(plan_file), "--out", str(tmp_path / "o"),
               "--input-shape", "1x3x64x64")
    assert_one_line_error(done.returncode, done.stdout, done.stderr, "was made for another model", "re-plan")
    assert not (tmp_path / "o").exists()
    other = invoke("export", "vit-tiny", "--plan", str(plan_file), "--out", str(tmp_path / "o"))
    assert_cli_error(other, "was made for another model")


@pytest.mark.parametrize(("args", "needles"), [
    (["--plan", "missing.json"], ["plan file not found: missing.json"]),
    (["--loss", "mse"], ["unknown --loss 'mse'"]),
    (["--lr", "0"], ["--lr must be a positive"]),
    (["--batchnorm", "maybe"], ["unknown --batchnorm"]),
])
def test_bad_options_are_one_line(args: list[str], needles: list[str], plan_file: Path, tmp_path: Path) -> None:
    full = ["export", "tinycnn", "--out", str(tmp_path / "o")]
    if "--plan" not in args:
        full += ["--plan", str(plan_file)]
    assert_cli_error(invoke(*full, *args), *needles)


def test_out_must_be_a_directory(plan_file: Path, tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    assert_cli_error(invoke("export", "tinycnn", "--plan", str(plan_file), "--out", str(afile)), "is a file")
    assert_cli_error(invoke("export", "tinycnn", "--plan", str(plan_file), "--out", str(tmp_path / "a" / "b")),
                     "does not exist")


def test_table_output_names_arena_and_plan_peak(plan_file: Path, tmp_path: Path) -> None:
    result = invoke("export", "tinycnn", "--plan", str(plan_file), "--out", str(tmp_path / "o"), "--loss",
                    "cross-entropy", "--lr", "0.1", "--batchnorm", "train")
    assert result.exit_code == 0, result.stderr
    assert "arena " in result.stdout and "plan's predicted peak" in result.stdout
    assert "fragmentation" in result.stdout and "matches" in result.stdout
    assert json.loads((tmp_path / "o" / "schedule.json").read_text())["loss"] == "cross-entropy"


def test_compile_is_a_deprecated_alias_of_export(plan_file: Path, tmp_path: Path) -> None:
    """0.1's `budgetplan compile` still writes the same files for one release, with a deprecation notice."""
    new, old = tmp_path / "new", tmp_path / "old"
    assert invoke("export", "tinycnn", "--plan", str(plan_file), "--out", str(new)).exit_code == 0
    result = invoke("compile", "tinycnn", "--plan", str(plan_file), "--out", str(old))
    assert result.exit_code == 0, result.output
    assert "deprecated" in result.output.lower()
    assert sorted(p.name for p in old.iterdir()) == sorted(p.name for p in new.iterdir())
    assert (old / "arena.json").read_text() == (new / "arena.json").read_text()
    listing = invoke("--help")
    assert listing.exit_code == 0 and "export" in listing.output
    assert " compile " not in listing.output  # hidden: the help lists export only


def test_host_plan_keeps_the_float32_step_arena(tmp_path: Path) -> None:
    plan = tmp_path / "host.json"
    assert invoke("analyze", "tinycnn", "--target", "host", "--ram", "512k", "--out", str(plan)).exit_code == 0
    result = invoke("export", "tinycnn", "--plan", str(plan), "--out", str(tmp_path / "o"), "--json", "-")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    document = json.loads((tmp_path / "o" / "arena.json").read_text())
    assert summary["device_arena"] is None and "runtime" not in document
    assert summary["peak_live_bytes"] == summary["step_peak_live_bytes"] == document["peak_live_bytes"]


def test_runtime_options_are_recorded_and_repriced(tmp_path: Path) -> None:
    """--no-inplace / --no-fuse-update are written into the plan (only when off), `check --plan` and `export`
    re-price with them; a plan without them means the defaults."""
    off, on = tmp_path / "off.json", tmp_path / "on.json"
    args = ("tinycnn", "--target", "cortex-m7", "--ram", "64k", "--strategy", "full")
    assert invoke("analyze", *args, "--no-inplace", "--no-fuse-update", "--out", str(off)).exit_code == 1
    assert invoke("analyze", *args, "--out", str(on)).exit_code == 1
    plan_off, plan_on = json.loads(off.read_text()), json.loads(on.read_text())
    assert plan_off["inplace"] is False and plan_off["fuse_update"] is False
    assert "inplace" not in plan_on and "fuse_update" not in plan_on
    assert plan_off["peak_bytes"] > plan_on["peak_bytes"]  # the same full update without the two tricks
    for plan, data in ((off, plan_off), (on, plan_on)):
        check = invoke("check", "tinycnn", "--target", "cortex-m7", "--ram", "1M", "--plan", str(plan), "--json", "-")
        assert check.exit_code == 0, check.output
        message = next(c["message"] for c in json.loads(check.stdout)["checks"] if c["name"] == "plan")
        assert f"peak {data['peak_bytes']} bytes" in message
    export = invoke("export", "tinycnn", "--plan", str(off), "--out", str(tmp_path / "o"), "--json", "-")
    assert export.exit_code == 0, export.stderr
    assert json.loads(export.stdout)["plan_peak_bytes"] == plan_off["peak_bytes"]
    assert json.loads((tmp_path / "o" / "arena.json").read_text())["options"] == {
        "reorder": True, "inplace": False, "fuse_update": False}
