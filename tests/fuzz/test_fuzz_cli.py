"""Property-based fuzzing of the command line: arbitrary commands, models and option values.

The options come from the typer app itself (every option of every command, so options added later
are fuzzed too); their values from pools that mix good values, near misses and hostile ones (huge and
overflowing sizes and shapes, ``nan``, paths to binary files, folders, the command's own inputs,
escape codes), and an option is sometimes given twice. Each case runs in a fresh folder and must keep
the invariants of :mod:`fuzz_support`. A few cases also run as real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetplan.cli import app
from budgetplan.schemas import load_schema
from fuzz_support import ENV, examples, run_case, snapshot, workdir

COMMANDS = {name: cmd for name, cmd in typer.main.get_command(app).commands.items()}
#: how often each command is drawn (export builds and runs a training step: the slowest)
WEIGHTS = {"inspect": 3, "estimate": 4, "measure": 1, "analyze": 4, "check": 3, "export": 1, "compile": 0,
           "targets": 1, "schema": 1}

ESCAPES = ["\x1b[31mred\x1b[0m", "\x1b]0;title\x07", "a\u202eb", "tab\there", "new\nline", "\x07bell"]
FILES = ["plan.json", "broken.json", "binary.bin", "cfg.json", "scores.json", "update.json", "deep.json",
         "fuzzmods.py", "keep.txt", "subdir", "subdir/inner.json", "missing.json", "nodir/x.json", "./plan.json",
         "subdir/../plan.json", "", "-", "a" * 300, "b" * 5000 + ".json", "/dev/null", "/dev/zero", "/proc/self/mem"]
OUTPUTS = ["out.json", "out.html", "out2.json", "keep.txt", "plan.json", "subdir", "subdir/o.json", "nodir/o.json",
           "./out.json", "-", "", "build", "subdir/../out.json", "/dev/null", "c" * 300]

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)

# Per option: values that should work with tinycnn (drawn five times in six) and hostile ones.
GOOD: dict[str, list[str]] = {
    "--target": ["host", "cortex-m7", "cortex-m4", "STM32F746", "raspberry-pi-4"],
    "--input-shape": ["1x3x32x32", "2x3x16x16", "1,3,32,32", "(1, 3, 24, 24)"],
    "--ram": ["64k", "256k", "1M", "8k", "32768", "0.5M", "2G"],
    "--trace": ["auto", "fx", "export"], "--group-size": ["1", "2", "4", "8"],
    "--json": ["out.json", "-", "subdir/o.json"], "--out": ["out.json", "build"], "--html": ["out.html"],
    "--junit": ["junit.xml"], "--optimizer": ["sgd", "sgd-momentum", "adam"],
    "--update": ["all", "none", "fc", "fc.weight[0:4]", "*.bias", "update.json", "cfg.json", "plan.json",
                 "features.8.weight[::2],fc"],
    "--objective": ["params", "uniform", "scores.json"],
    "--strategy": ["ilp", "greedy", "random", "bias-only", "last-k", "full", "config:cfg.json"],
    "--solver": ["auto", "cbc", "highs"], "--time-limit": ["10", "0.5", "60"], "--gap": ["0", "0.01", "0.5"],
    "--max-flops": ["6000000", "1e7", "1000"], "--max-latency": ["0.06", "1", "0.001"],
    "--last-k": ["1", "2", "4"], "--seed": ["0", "3", "12345"], "--min-update": ["10", "50", "0", "100"],
    "--lr": ["0.01", "0.5"], "--plan": ["plan.json"], "--loss": ["sum", "cross-entropy"],
    "--batchnorm": ["frozen", "train"],
}
HOSTILE: dict[str, list[str]] = {
    "--target": ["m7", "plan.json", "binary.bin", "subdir", "missing.toml", "x.toml", "a" * 300],
    "--input-shape": ["1x3x33x31", "1x3x8x8", "1x1x32x32", "0x3x32x32", "3x32x32", "1x3x100000x100000",
                      "1x3x99999999999999999999x1", "1x3x30000x30000", "1x3x2048x2048", "1x3x32x32x1", "x",
                      "1xx3", "-1x3x32x32", "１x3x32x32", "x".join(["1"] * 40), "9" * 5000],
    "--ram": ["0", "-5k", "0.3k", "12q", "1e99", "256T", "257T", "9999999999999999999999T", "nan", "inf", "",
              "64 k", "1_000", "9" * 5000],
    "--trace": ["bogus", ""], "--group-size": ["0", "-1", "99999999999999999999", "abc", "", "1000000"],
    "--optimizer": ["adamw", "", "SGD"], "--solver": ["gurobi", ""],
    "--update": ["fc.weight[0,0]", "fc.weight[-1]", "fc.weight[0:99999999999999999999]", "featurs.8",
                 "broken.json", "binary.bin", "deep.json", "missing.json", "subdir", ",".join(["fc"] * 3000),
                 "", ",", "fc.weight[", "*.json", "/dev/zero", "scores.json"],
    "--objective": ["plan.json", "binary.bin", "missing.json", "velocity", "subdir", "deep.json", "cfg.json",
                    "keep.txt", "x.pt"],
    "--strategy": ["config:binary.bin", "config:deep.json", "config:missing.json", "config:", "config:plan.json",
                   "config:scores.json", "nope"],
    "--plan": ["broken.json", "binary.bin", "cfg.json", "deep.json", "missing.json", "subdir", "scores.json",
               "/dev/zero", "keep.txt"],
    "--loss": ["mse", ""], "--batchnorm": ["eval", ""], "--weights": ["binary.bin", "plan.json", "subdir"],
}
NUMBERS = ["-1", "nan", "inf", "-inf", "1e308", "1e-300", "abc", "", "99999999999999999999999"]
INTEGERS = ["0", "-1", "99999999999999999999", "abc", ""]
for _option in ("--time-limit", "--gap", "--max-flops", "--max-latency", "--min-update", "--lr"):
    HOSTILE[_option] = NUMBERS
for _option in ("--last-k", "--seed"):
    HOSTILE[_option] = INTEGERS
for _option in ("--json", "--out", "--html", "--junit"):
    HOSTILE[_option] = ["keep.txt", "plan.json", "subdir", "nodir/o.json", "", "-", "/dev/null", "c" * 300,
                        "subdir/../out.json", "./out.json", "out.json", "cfg.json", "scores.json"]

GOOD_MODELS = ["tinycnn"] * 4 + ["fuzzmods:make", "fuzzmods:Net"]
HOSTILE_MODELS = ["fuzzmods:missing", "nomodule:make", "os:getcwd", "sys:exit", "json:loads", "torch.nn:Identity",
                  "torch.nn:ReLU", "plan.json", "binary.bin", "subdir", "keep.txt", "missing.pt2", "tinycnn.pt", "",
                  " ", "zoo:tinycnn", "mobilenetv2-w0", "mobilenetv2-wabc", "TINYCNN", "a" * 5000, "a:b:c", "/dev/zero", *ESCAPES]
models = st.one_of(st.sampled_from(GOOD_MODELS), st.sampled_from(GOOD_MODELS), st.sampled_from(GOOD_MODELS),
                   st.sampled_from(HOSTILE_MODELS), text)


@st.composite
def option_value(draw: st.DrawFn, option: str) -> str:
    good, hostile = GOOD.get(option), HOSTILE.get(option, [])
    if good and draw(st.integers(0, 5)) > 0:
        return draw(st.sampled_from(good))
    if hostile and draw(st.booleans()):
        return draw(st.sampled_from(hostile))
    return draw(text | st.sampled_from(ESCAPES))


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    name = draw(st.sampled_from([n for n, w in WEIGHTS.items() for _ in range(w)]))
    command = COMMANDS[name]
    argv = [name]
    if name == "schema":
        argv.append(draw(st.sampled_from(["plan", "update", "config", "scores", "nope", ""]) | text))
        return argv
    if name != "targets":
        argv.append(draw(models))
    options = [p for p in command.params if p.param_type_name == "option"]
    if name == "export" and draw(st.integers(0, 3)) > 0:  # mostly with its two required options
        argv += ["--plan", draw(option_value("--plan")), "--out", draw(option_value("--out"))]
    chosen = draw(st.lists(st.sampled_from(options), max_size=5, unique_by=lambda p: p.name))
    if chosen and draw(st.integers(0, 5)) == 0:  # now and then an option twice
        chosen.append(draw(st.sampled_from(chosen)))
    for param in chosen:
        option = draw(st.sampled_from(param.opts))
        long_name = next((o for o in param.opts if o.startswith("--")), option)
        if param.is_flag:
            argv.append(option)
        else:
            argv += [option, draw(option_value(long_name))]
    if draw(st.integers(0, 14)) == 0:  # a stray token
        argv.insert(draw(st.integers(1, len(argv))), draw(text | st.sampled_from(ESCAPES + ["--", "-x", "--bogus"])))
    if draw(st.integers(0, 5)) == 0 and "--force" not in argv:
        argv.append("--force")
    return argv


@settings(max_examples=examples(120))
@given(argv=argvs())
def test_fuzz_cli_arguments(argv: list[str]) -> None:
    with workdir() as root:
        result = run_case("cli arguments", argv, root)
        if argv[0] == "analyze" and result.exit_code in (0, 1) and "--out" in argv:
            # what analyze writes, budgetplan reads back: the plan validates against the shipped schema
            out = root / argv[argv.index("--out") + 1]
            if out.is_file() and out.stat().st_size and out.suffix != ".html":
                document = json.loads(out.read_text(encoding="utf-8"))
                if isinstance(document, dict) and document.get("format") == "budgetplan-plan":
                    errors = list(jsonschema.Draft202012Validator(load_schema("plan")).iter_errors(document))
                    assert not errors, (argv, errors[0].message)


# --------------------------------------------------------------------------------------------------
# a few real processes: the console script, and Ctrl-C in the middle of an export
# --------------------------------------------------------------------------------------------------

SUBPROCESS_CASES = [
    ["check", "tinycnn", "--plan", "deep.json"],
    ["estimate", "tinycnn", "--update", ",".join(["fc"] * 3000), "--update", "fc.weight[0:2]"],
    ["inspect", "\x1b[31mtinycnn\x1b[0m", "--input-shape", "1x3x99999999999999999999x1"],
]


@pytest.mark.parametrize("argv", SUBPROCESS_CASES, ids=lambda a: a[0] + ":" + (a[-1][:20].encode("unicode_escape")
                                                                               .decode()))
def test_fuzz_cases_in_a_real_process(argv: list[str]) -> None:
    with workdir() as root:
        before = snapshot(root)
        env = {**os.environ, **{k: v for k, v in ENV.items() if v}}
        run = subprocess.run([sys.executable, "-m", "budgetplan.cli", *argv], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode in (0, 1, 2), run.stderr
        assert "Traceback" not in run.stderr + run.stdout
        if run.returncode == 2:
            assert len([line for line in run.stderr.splitlines() if line.strip()]) == 1, run.stderr
            assert snapshot(root) == before
        assert "\x1b" not in run.stderr


_INTERRUPTED_EXPORT = """
import os, signal, sys, threading
import budgetplan.cli
timer = threading.Timer(float(sys.argv[1]), lambda: os.kill(os.getpid(), signal.SIGINT))
timer.daemon = True
timer.start()  # after the imports: the interrupt lands while the command works
sys.argv = ["budgetplan", *sys.argv[2:]]
budgetplan.cli.main()
"""


def test_ctrl_c_during_export_leaves_no_partial_directory() -> None:
    """A real SIGINT at two moments of a real `export` (counted from the end of the imports, so that it
    lands in the command on any machine): exit 130 with the one line `interrupted` (or 0 when the command
    finished first), and the output directory either absent or complete, no temporary folder left."""
    files = {"step.py", "schedule.json", "arena.json", "budgetplan_plan.h"}
    outcomes = []
    with workdir() as root:
        env = {**os.environ, **{k: v for k, v in ENV.items() if v}}
        for delay in (0.5, 2.0):
            out = root / f"build{delay}"
            run = subprocess.run([sys.executable, "-c", _INTERRUPTED_EXPORT, str(delay), "export", "tinycnn",
                                  "--plan", "plan.json", "--out", str(out)], cwd=root, env=env,
                                 capture_output=True, text=True, timeout=300, check=False)
            outcomes.append(run.returncode)
            assert run.returncode in (0, 130), (delay, run.returncode, run.stderr)
            assert "Traceback" not in run.stderr, run.stderr
            if run.returncode == 130:
                assert run.stderr.strip().splitlines()[-1] == "interrupted", run.stderr
            if out.exists():
                assert files <= {p.name for p in out.iterdir()}, (delay, sorted(os.listdir(out)))
            assert not [p for p in root.iterdir() if p.name.startswith(".build")], sorted(os.listdir(root))
    assert 130 in outcomes, outcomes  # the early interrupt landed while the command worked
