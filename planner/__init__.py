"""budgetplan: memory-budget planner and compiler for on-device training of PyTorch models."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("budgetplan")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

from budgetplan.errors import BudgetplanError, InputError

__all__ = ["BudgetplanError", "InputError", "__version__"]
