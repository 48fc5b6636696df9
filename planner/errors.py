"""User-facing errors.

Every failure caused by what the user handed us (a path, a model, a flag) is raised as a
:class:`BudgetplanError` with a one-line message. The CLI prints that line to stderr and exits with
``exit_code``; library callers can catch the class. Anything else escaping is a bug in budgetplan.
"""

from __future__ import annotations

import re

from budgetplan.cost_models.messages import first_line

__all__ = ["MAX_MESSAGE", "BudgetplanError", "InputError", "ModelLoadError", "TargetError", "TraceError",
           "first_line", "one_line"]

MAX_MESSAGE = 2000
"""Characters of one error line; a longer message (one that quotes a huge input) is cut with "…"."""
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?")


def one_line(message: object, limit: int = MAX_MESSAGE) -> str:
    """``message`` as one printable line: terminal escape sequences and other control characters
    removed, whitespace runs (newlines included) collapsed to one space, at most ``limit`` characters."""
    text = _ESCAPES.sub("", str(message))
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BudgetplanError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class InputError(BudgetplanError):
    """Bad input: a missing file, a malformed flag, an unknown name (exit code 2)."""


class ModelLoadError(InputError):
    """A model file or name that cannot be loaded."""


class TraceError(InputError):
    """A model that neither torch.fx nor torch.export can trace."""


class TargetError(InputError):
    """An unknown target name or an invalid target file."""
