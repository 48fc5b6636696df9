"""Logging and progress for people: the Reselector logs through ``logging`` (nothing printed), its solves
become a rich spinner on a terminal and plain lines elsewhere, ``--quiet``/``--verbose`` set the level."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from budgetplan.integrations.progress import configure_logging
from budgetplan.runtime.reselect import Reselector
from budgetplan.selection.planner import planner_for

LIBRARY = Path(__file__).resolve().parents[2] / "planner"


@pytest.fixture
def restore_logger():
    """The ``budgetplan`` logger without handlers (a CLI test earlier in the session may have installed
    one), restored afterwards."""
    logger = logging.getLogger("budgetplan")
    level, handlers = logger.level, list(logger.handlers)
    for handler in handlers:
        logger.removeHandler(handler)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)


def _three_epochs() -> Reselector:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    x = torch.randn(16, 3, 8, 8)
    planner = planner_for(model, x[:1], target="host", ram=60_000)
    sel = Reselector(planner, x[:10])
    compiled = sel.compile(model)
    for _ in range(3):
        optimizer = torch.optim.SGD(compiled.trainable_parameters(), lr=0.1)
        optimizer.zero_grad()
        compiled(x).sum().backward()
        optimizer.step()
        compiled = sel.step(compiled)
    return sel


def test_reselector_logs_and_prints_nothing(restore_logger, caplog, capsys) -> None:
    with caplog.at_level(logging.INFO, logger="budgetplan"):
        sel = _three_epochs()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""  # nothing printed
    records = [r for r in caplog.records if r.name == "budgetplan.runtime.reselect"]
    steps = [r.getMessage() for r in records if r.getMessage().startswith("epoch") and "groups changed" in r.getMessage()]
    assert len(steps) == 3 and f"{sel.log[-1].groups_changed} groups changed" in steps[-1]
    starts = [r for r in records if getattr(r, "progress", None) == "start"]
    ends = [r for r in records if getattr(r, "progress", None) == "end"]
    assert len(starts) == len(ends) == 3  # the initial plan and the re-solves of epochs 2 and 3


def test_spinner_on_a_terminal_plain_lines_elsewhere(restore_logger) -> None:
    terminal, plain = io.StringIO(), io.StringIO()
    configure_logging("normal", console=Console(file=terminal, force_terminal=True, width=120))
    _three_epochs()
    configure_logging("normal", console=Console(file=plain, force_terminal=False, width=200))
    _three_epochs()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    assert "⠋" in text or "⠙" in text  # a spinner frame was drawn ...
    assert "\x1b[2K" in terminal.getvalue()  # ... and erased (transient)
    assert "solved in" in text and "groups changed" in text
    assert "solving (ilp" in plain.getvalue() and "\x1b" not in plain.getvalue()
    assert "solved in" not in plain.getvalue()  # as plain lines the summary line follows instead
    quiet = io.StringIO()
    configure_logging("quiet", console=Console(file=quiet, force_terminal=True, width=120))
    _three_epochs()
    assert quiet.getvalue() == ""


def test_cli_quiet_and_verbose(restore_logger) -> None:
    from cli_support import assert_cli_error, invoke

    assert invoke("--verbose", "targets").exit_code == 0
    assert restore_logger.level == logging.DEBUG
    assert invoke("--quiet", "targets").exit_code == 0
    assert restore_logger.level == logging.ERROR
    assert invoke("targets").exit_code == 0
    assert restore_logger.level == logging.INFO
    assert_cli_error(invoke("-q", "-v", "targets"), "--quiet and --verbose")


def test_no_prints_in_the_library() -> None:
    """print() only where the user asks for output (CompiledModule.print_summary) and in the CLI."""
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        if path.name == "cli.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"(?<![\w.])print\(", code) and "def print" not in code:
                offenders.append(f"{path.relative_to(LIBRARY)}:{number}: {line.strip()}")
    assert offenders == []
