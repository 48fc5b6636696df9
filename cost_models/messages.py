"""One line of an exception, as budgetplan reports failures (the CLI's error line, a probe's reason).

Pure Python (no torch): :mod:`budgetplan.errors` re-exports :func:`first_line` for the planner, and the
cost models, which import nothing from the planner, use it from here.
"""

from __future__ import annotations

import re

__all__ = ["first_line"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # terminal colour and cursor sequences
MAX_LINE = 300  # characters of one reported line


def first_line(exc: BaseException | str, *, with_type: bool = False) -> str:
    """The first non-empty line of an exception's message, without terminal escape sequences, at most
    :data:`MAX_LINE` characters; the exception's type name when the message is empty.
    ``with_type`` prefixes ``"TypeName: "``."""
    text = _ANSI.sub("", str(exc))
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = "".join(ch for ch in line if ch.isprintable())[:MAX_LINE]
    if isinstance(exc, str):
        return line
    name = type(exc).__name__
    if with_type:
        return f"{name}: {line}" if line else name
    return line or name
