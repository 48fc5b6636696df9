"""Logging and progress for people: budgetplan's log records on stderr through rich, solves as spinners.

The library never prints: it logs on loggers named after its modules (``budgetplan.runtime.reselect``,
``budgetplan.selection.velocity``, ``budgetplan.integrations.lightning``, ...), and brackets long work
(the Reselector's solves) with two INFO records that carry ``extra={"progress": "start"}`` and
``extra={"progress": "end"}``. Code anywhere in the
library can do the same without importing anything of this module.

:func:`configure_logging` is what a program calls once (the CLI's root callback does, with ``--quiet`` /
``--verbose``; a training script may too): a :class:`RichProgressHandler` on the ``budgetplan`` logger.
On a terminal a ``start`` record becomes a transient spinner line with the elapsed time,
replaced by the ``end`` record's line; elsewhere (a file, CI) the ``start`` record is a plain line and the
``end`` record is dropped (the caller's summary line follows). Levels:
``"quiet"`` = errors only and no spinner, ``"normal"`` = INFO, ``"verbose"`` = DEBUG.
"""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["LEVELS", "RichProgressHandler", "configure_logging"]

#: verbosity name -> level of the ``budgetplan`` logger
LEVELS = {"quiet": logging.ERROR, "normal": logging.INFO, "verbose": logging.DEBUG}


class RichProgressHandler(logging.Handler):
    """Log records as rich lines; ``progress`` start/end records as a spinner on a terminal (module
    docstring). ``console``: where to draw (default: a console on the process's stderr). Records still
    propagate to the root logger: a program that also configures the root logger sees them twice."""

    def __init__(self, console: Console | None = None, *, spinners: bool = True, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.console = console or Console(stderr=True)  # the current sys.stderr at every write
        self.spinners = spinners and self.console.is_terminal
        self.lines = RichHandler(console=self.console, show_time=False, show_path=False, markup=False,
                                 rich_tracebacks=False)
        self._progress: Progress | None = None
        self._tasks: list[Any] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kind = getattr(record, "progress", None)
            if self.spinners and kind == "start":
                self._start(record)
                return
            if kind == "end":
                if self.spinners and self._tasks:
                    self._stop()
                    self.lines.emit(record)
                return  # as plain lines, the start line and the caller's summary say it all
            self.lines.emit(record)
        except Exception:  # noqa: BLE001 - a handler must not raise into the code that logs
            self.handleError(record)

    def _start(self, record: logging.LogRecord) -> None:
        if self._progress is None:
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                      console=self.console, transient=True)
            self._progress.start()
        self._tasks.append(self._progress.add_task(record.getMessage(), total=None))

    def _stop(self) -> None:
        assert self._progress is not None
        self._progress.remove_task(self._tasks.pop())
        if not self._tasks:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        while self._tasks:
            self._stop()
        super().close()


def configure_logging(verbosity: str = "normal", *, console: Console | None = None,
                      spinners: bool = True) -> RichProgressHandler:
    """Send the ``budgetplan`` logger's records to a :class:`RichProgressHandler` at the level of
    ``verbosity`` (``quiet``, ``normal``, ``verbose``; :data:`LEVELS`), replacing one installed by an
    earlier call. ``quiet`` shows no spinners. Returns the handler."""
    if verbosity not in LEVELS:
        raise ValueError(f"unknown verbosity {verbosity!r}; use one of: {', '.join(LEVELS)}")
    logger = logging.getLogger("budgetplan")
    for old in [h for h in logger.handlers if isinstance(h, RichProgressHandler)]:
        logger.removeHandler(old)
        old.close()
    handler = RichProgressHandler(console, spinners=spinners and verbosity != "quiet")
    logger.addHandler(handler)
    logger.setLevel(LEVELS[verbosity])
    return handler
