"""The rooms' import contracts (pyproject.toml [tool.importlinter]) hold, and a broken one fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from layers import assemble, lint


def test_contracts_hold(tmp_path: Path) -> None:
    assemble(tmp_path)
    result = lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, upward", [
    ("cost_models/flops.py", "from budgetplan.model import graph"),  # the floor imports the planner
    ("selection/planner.py", "from budgetplan.runtime import compiled"),  # selection reaches into runtime
    ("pricing/inference.py", "import budgetplan.cli"),  # anything imports the CLI
    ("model/graph.py", "from budgetplan.pricing import family"),  # a lower room imports a higher one
])
def test_an_upward_import_breaks_the_build(tmp_path: Path, module: str, upward: str) -> None:
    package = assemble(tmp_path)
    path = package / module
    path.write_text(path.read_text() + f"\n\ndef _upward() -> None:\n    {upward}  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
