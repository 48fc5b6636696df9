"""Hypothesis profiles for the fuzz suite, and a count of what it generated.

``default``: a fixed set of cases (``derandomize``: every run of ``make test`` tries the same ones, in
about a minute); ``long`` (``BUDGETPLAN_FUZZ=long``): ten times as many per test, drawn at random, for a
session on its own. No example database is written (nothing lands in the repository).
``BUDGETPLAN_FUZZ_LOG=FILE`` appends every case (argv, exit code, last stderr line) to FILE as JSON lines.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

from fuzz_support import TALLY

settings.register_profile(
    "default", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.register_profile(
    "long", derandomize=False, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.load_profile("long" if os.environ.get("BUDGETPLAN_FUZZ") == "long" else "default")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001 - pytest hook
    """One line per fuzz test: cases run and their exit codes (the closing count of issue 12)."""
    if not TALLY:
        return
    total: Counter[int] = Counter()
    terminalreporter.section("budgetplan fuzz")
    for test, codes in sorted(TALLY.items()):
        total.update(codes)
        spread = ", ".join(f"exit {code}: {n}" for code, n in sorted(codes.items()))
        terminalreporter.write_line(f"{test}: {sum(codes.values())} cases ({spread})")
    spread = ", ".join(f"exit {code}: {n}" for code, n in sorted(total.items()))
    terminalreporter.write_line(f"all: {sum(total.values())} generated cases ({spread})")
