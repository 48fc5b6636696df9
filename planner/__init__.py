"""budgetplan: memory-budget planner and compiler for on-device training of PyTorch models."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("budgetplan")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

from budgetplan.errors import BudgetplanError, InputError

__all__ = ["BudgetplanError", "CompiledModule", "EpochLog", "InputError", "Planner", "Reselector",
           "VelocityTracker", "__version__", "compile", "plan", "planner_for"]

# Imported on first use (module __getattr__): ``import budgetplan`` stays light (no tracing/solver modules).
_LAZY = {"compile": "budgetplan.compile", "CompiledModule": "budgetplan.compile", "plan": "budgetplan.compile",
         "Planner": "budgetplan.planning", "Reselector": "budgetplan.reselect", "EpochLog": "budgetplan.reselect",
         "planner_for": "budgetplan.reselect", "VelocityTracker": "budgetplan.velocity"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        # ``budgetplan.compile`` is the submodule itself, made callable (``budgetplan.compile(model, plan)``
        # calls ``budgetplan.compile.compile``), so ``import budgetplan.compile as m`` and the call agree.
        return module if name == "compile" else getattr(module, name)
    raise AttributeError(f"module 'budgetplan' has no attribute {name!r}")
