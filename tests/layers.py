"""Check the import contracts of pyproject.toml ([tool.importlinter]) with import-linter.

The design card keeps ``planner/`` (``budgetplan``), ``cost_models/`` (``budgetplan.cost_models``) and
``targets/`` (``budgetplan.targets``) side by side at the top of the repository and joins them through
setuptools' ``package-dir``. import-linter reads a package from one folder, so this assembles the
installed layout (a copy of the ``.py`` files) in a temporary folder and runs ``lint-imports`` on it.

``python tests/layers.py`` exits with lint-imports' code (``make test`` runs it); the tests import
:func:`assemble` and :func:`lint` to check that a broken contract fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: folder in the repository -> folder inside the package
PARTS = {"planner": "", "cost_models": "cost_models", "targets": "targets"}


def assemble(dest: Path) -> Path:
    """Copy the package's Python files into ``dest/budgetplan`` as they are installed; returns that folder."""
    package = dest / "budgetplan"
    for folder, inside in PARTS.items():
        for source in (ROOT / folder).rglob("*.py"):
            target = package / inside / source.relative_to(ROOT / folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return package


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with the repository's contracts on an assembled tree (its parent folder)."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(exe) if exe.exists() else "lint-imports", "--no-cache", str(ROOT / "pyproject.toml")],
                          cwd=tree, env=env, capture_output=True, text=True)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        assemble(Path(tmp))
        result = lint(Path(tmp))
    summary = [line for line in result.stdout.splitlines() if "KEPT" in line or "BROKEN" in line
               or line.startswith(("Contracts:", "-", "budgetplan"))]
    print("\n".join(summary) if result.returncode == 0 else result.stdout + result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
