"""budgetplan: memory-budget planner and compiler for on-device training of PyTorch models."""

from __future__ import annotations

from typing import Any

from budgetplan import _moved
from budgetplan.errors import BudgetplanError, InputError

__all__ = ["BudgetplanError", "CompiledModule", "EpochLog", "InputError", "Planner", "Reselector",
           "VelocityTracker", "__version__", "compile", "plan", "planner_for"]

# Imported on first use (module __getattr__): ``import budgetplan`` stays light (no tracing/solver modules).
_LAZY = {"compile": "budgetplan.runtime.compiled", "CompiledModule": "budgetplan.runtime.compiled",
         "plan": "budgetplan.selection.planner", "Planner": "budgetplan.selection.planner",
         "planner_for": "budgetplan.selection.planner", "Reselector": "budgetplan.runtime.reselect",
         "EpochLog": "budgetplan.runtime.reselect", "VelocityTracker": "budgetplan.selection.velocity"}

_moved.install()  # budgetplan.planning, budgetplan.estimate_mcu, ...: the paths of 0.1, for one release


def _version() -> str:
    """The installed distribution's version (importlib.metadata costs ~20 ms: read on first use)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("budgetplan")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0.0.0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = _version()
        globals()["__version__"] = value  # computed once
        return value
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        # ``budgetplan.compile`` is the submodule itself, made callable (``budgetplan.compile(model, plan)``
        # calls ``budgetplan.runtime.compiled.compile``), so ``import budgetplan.compile as m`` and the call agree.
        return module if name == "compile" else getattr(module, name)
    if name in _moved.MOVED:
        return _moved.resolve(name)
    raise AttributeError(f"module 'budgetplan' has no attribute {name!r}")
