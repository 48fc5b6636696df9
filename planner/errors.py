"""User-facing errors.

Every failure caused by what the user handed us (a path, a model, a flag) is raised as a
:class:`BudgetplanError` with a one-line message. The CLI prints that line to stderr and exits with
``exit_code``; library callers can catch the class. Anything else escaping is a bug in budgetplan.
"""

from __future__ import annotations

from budgetplan.cost_models.messages import first_line

__all__ = ["BudgetplanError", "InputError", "ModelLoadError", "TargetError", "TraceError", "first_line"]


class BudgetplanError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class InputError(BudgetplanError):
    """Bad input: a missing file, a malformed flag, an unknown name (exit code 2)."""


class ModelLoadError(InputError):
    """A model file or name that cannot be loaded."""


class TraceError(InputError):
    """A model that neither torch.fx nor torch.export can trace."""


class TargetError(InputError):
    """An unknown target name or an invalid target file."""
