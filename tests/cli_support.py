"""What the CLI test files share: the environment, in-process and subprocess runners, the check that an
input error is exactly one line on stderr with exit code 2, a module of hand-written models importable by
name, and the readers and runners of the examples in docs/."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from budgetplan.cli import app

ENV = {"COLUMNS": "200", "OMP_NUM_THREADS": "1"}
SUBPROCESS_ENV = {**os.environ, **ENV}
SUBPROCESS_TIMEOUT = 300
CONSOLE_SCRIPT = Path(sys.executable).with_name("budgetplan")
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

runner = CliRunner()


def invoke(*args: str) -> Any:
    """Run the CLI in-process (typer's runner)."""
    return runner.invoke(app, list(args), env=ENV)


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        script: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI in a subprocess: ``python -m budgetplan.cli`` or the console script."""
    cmd = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "budgetplan.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, env=env or SUBPROCESS_ENV, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)


def assert_one_line_error(exit_code: int | None, stdout: str, stderr: str, *needles: str) -> str:
    """Exit code 2, no traceback anywhere, nothing on stdout, exactly one non-empty stderr line that
    starts with ``error:`` and contains every needle. Returns the line."""
    assert "Traceback" not in stderr + stdout, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert exit_code == 2, (exit_code, line)
    assert stdout.strip() == "", stdout
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def assert_cli_error(result: Any, *needles: str) -> str:
    """:func:`assert_one_line_error` for a CliRunner result (and no exception other than the exit)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return assert_one_line_error(result.exit_code, result.stdout, result.stderr, *needles)


BIASNET_MODULE = '''\
import torch
from torch import nn


class BiasNet(nn.Module):
    """Two convs with their own biases (no BatchNorm), a ReLU after each, a linear head."""

    input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))
'''
"""The start of a test file's models module: ``BiasNet`` (the file appends its own models)."""


def write_models_module(work: Path, name: str, source: str) -> Path:
    """Write ``source`` to ``work/NAME.py`` and import it as ``NAME`` (a name unique in sys.modules).
    Returns ``work``."""
    (work / f"{name}.py").write_text(source)
    spec = importlib.util.spec_from_file_location(name, work / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return work


def enter_models_dir(work: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run from ``work`` with it on sys.path, so that the CLI finds the module ``NAME`` written there;
    returns that module."""
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    return sys.modules[name]


def doc_section(doc: str, heading: str) -> str:
    """From ``heading`` (a line start) to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = doc.index(heading)
    body = doc[start + len(heading):]
    ends = [m.start() for m in re.finditer(r"^#{1,%d} " % len(level), body, re.MULTILINE)]
    return body[:ends[0]] if ends else body


def documented_fields(section: str) -> set[str]:
    """The backticked names in the first column of the markdown tables of ``section``."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


def doc_example(doc: str, label: str) -> tuple[str, dict[str, Any]]:
    """The command line and the document of a labelled example block (```json LABEL)."""
    pattern = rf"^`(budgetplan [^`]+)`[^\n]*\n(?:[^\n]*\n)*?```json {label}\n"
    (command,) = re.findall(pattern, doc, re.MULTILINE)
    (block,) = re.findall(rf"```json {label}\n(.*?)```", doc, re.DOTALL)
    return command, json.loads(block)


def cli_argv(command: str) -> list[str]:
    """A documented ``budgetplan ...`` command line as CLI arguments."""
    argv = shlex.split(command)
    assert argv[0] == "budgetplan"
    return argv[1:]


def assert_trimmed(example: list[Any], actual: list[Any]) -> None:
    """Every entry of a shortened list is an entry of the real one, in the same order."""
    it = iter(actual)
    assert example and all(any(entry == other for other in it) for entry in example), example


def doc_command_lines(section: str) -> tuple[dict[str, str], list[str]]:
    """Files written by ``cat > NAME <<'EOF'`` and the ``budgetplan ...`` lines of the sh blocks."""
    files: dict[str, str] = {}
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        for name, body in re.findall(r"^cat > (\S+) <<'EOF'\n(.*?)^EOF$", block, re.DOTALL | re.MULTILINE):
            files[name] = body
        commands += [line for line in block.splitlines() if line.startswith("budgetplan ")]
    return files, commands


def run_doc_examples(command: str, at_least: int) -> None:
    """The examples of docs/cli.md's section on ``budgetplan COMMAND`` (``at_least`` lines of them), run
    in-process as written, in order, in the current directory (the files its sh blocks write are written
    there first): exit 0; exit 1 where the line's comment says ``exit 1``; the one-line error where it says
    ``error: ...``. The part of a line before a pipe is the budgetplan command."""
    files, lines = doc_command_lines(doc_section((DOCS / "cli.md").read_text(), f"## `budgetplan {command}"))
    assert len(lines) >= at_least
    for name, body in files.items():
        Path(name).write_text(body)
    for line in lines:
        text, _, comment = line.partition("  # ")
        text = text.split(" | ", 1)[0].strip()
        result = invoke(*cli_argv(text))
        comment = comment.strip()
        if comment.startswith("error:"):
            expected = comment.removeprefix("error: ").split("...", 1)[0].strip()
            assert_cli_error(result, expected)
            continue
        expected_code = 1 if comment.startswith("exit 1") else 0
        assert result.exit_code == expected_code, (line, result.exit_code, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        if "--json -" in text:
            json.loads(result.stdout)
