"""What the CLI test files share: the environment, in-process and subprocess runners, and the check that
an input error is exactly one line on stderr with exit code 2."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

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
