"""What the fuzz tests share: a fresh work directory per case, the CLI run in-process, and the invariants.

The invariants of issue 12, checked on every generated case:

* the exit code is 0, 1 or 2 (never 3, an internal error, and never an exception escaping);
* exit 2 prints at most one line on stderr, and no traceback anywhere;
* exit 2 leaves the directory exactly as it was: no file written, none changed, none removed;
* whatever the exit code, a file that existed before changes only when the command was given
  ``--force`` and named it as an output, and no temporary file is left behind.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from budgetplan.cli import app

#: test name -> exit code -> cases (printed at the end of the session by conftest.py)
TALLY: dict[str, Counter[int]] = defaultdict(Counter)

#: cases per test: 1x by default, 10x with BUDGETPLAN_FUZZ=long
SCALE = 10 if os.environ.get("BUDGETPLAN_FUZZ") == "long" else 1

#: the environment of every in-process run: wide output, one thread, and a small run limit so that
#: a large --input-shape is refused (or priced) in milliseconds instead of allocated
ENV = {"COLUMNS": "200", "OMP_NUM_THREADS": "1", "BUDGETPLAN_MAX_RUN_BYTES": "256M", "BUDGETPLAN_DEBUG": ""}

_runner = CliRunner()


def examples(n: int) -> int:
    """The number of cases of a test that runs ``n`` by default."""
    return n * SCALE


# --------------------------------------------------------------------------------------------------
# The files every case starts from
# --------------------------------------------------------------------------------------------------

SPARSE_CONFIG = {"n_bias_update": 2, "manual_weight_idx": [2], "weight_update_ratio": [0.5]}
SCORES = {"features.8.weight": 1.0, "fc.weight": [1, 1, 1, 1, 1, 5, 5, 5, 5, 5], "fc.bias": 0.1}
SMALL_MODULE = '''\
import torch
from torch import nn


class Net(nn.Module):
    input_shape = (1, 3, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def make():
    return Net()
'''


@functools.cache
def fixture_dir() -> Path:
    """A folder with the files a case may name: a real plan, a broken one, a binary file, a config, a
    scores file, a small model module, a file that must never change, a subfolder."""
    root = Path(tempfile.mkdtemp(prefix="bp-fuzz-fixtures-"))
    with _inside(root):
        result = _runner.invoke(app, ["analyze", "tinycnn", "--target", "cortex-m7", "--ram", "64k",
                                      "--out", "plan.json"], env=ENV)
        assert result.exit_code in (0, 1) and (root / "plan.json").is_file(), result.output
    (root / "broken.json").write_text('{"update": [', encoding="utf-8")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (root / "cfg.json").write_text(json.dumps(SPARSE_CONFIG), encoding="utf-8")
    (root / "scores.json").write_text(json.dumps(SCORES), encoding="utf-8")
    (root / "update.json").write_text(json.dumps({"update": [{"parameter": "fc.weight", "channels": [0, 3]},
                                                             {"parameter": "fc.bias", "channels": None}]}))
    (root / "deep.json").write_text("[" * 5000 + "]" * 5000, encoding="utf-8")
    (root / "fuzzmods.py").write_text(SMALL_MODULE, encoding="utf-8")
    (root / "keep.txt").write_text("keep me", encoding="utf-8")
    (root / "subdir").mkdir()
    (root / "subdir" / "inner.json").write_text("{}", encoding="utf-8")
    return root


def plan_document() -> dict[str, Any]:
    """The valid plan of the fixture folder (a fresh copy)."""
    return json.loads((fixture_dir() / "plan.json").read_text(encoding="utf-8"))


@contextlib.contextmanager
def _inside(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A fresh copy of the fixture folder as the current directory; modules imported from it and its
    entry in ``sys.path`` are removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="bp-fuzz-"))
    shutil.copytree(fixture_dir(), root, dirs_exist_ok=True)
    path_before = list(sys.path)
    modules_before = set(sys.modules)
    try:
        with _inside(root):
            yield root
    finally:
        sys.path[:] = path_before
        for name in set(sys.modules) - modules_before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if file.startswith(str(root)):
                del sys.modules[name]
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Running a case and checking it
# --------------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too) -> a hash of its content ("dir" for folders)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


_TEMP = re.compile(r"(^|/)\.[^/]*\.tmp(/|$)")


def _named(rel: str, argv: Sequence[str], root: Path) -> bool:
    """True when an argument names the file ``rel`` (or the folder that holds it)."""
    target = os.path.normpath(root / rel)
    for token in argv:
        if not token or "\x00" in token:
            continue
        with contextlib.suppress(OSError, ValueError):
            named = os.path.normpath(os.path.realpath(root / token))
            if named == os.path.realpath(target) or os.path.realpath(target).startswith(named + os.sep):
                return True
    return False


def run_case(test: str, argv: Sequence[str], root: Path, *, stdin: str | None = None) -> Any:
    """Run ``budgetplan ARGV`` in-process inside ``root`` (the current directory) and check the
    invariants (module docstring). Returns typer's result."""
    argv = list(argv)
    before = snapshot(root)
    result = _runner.invoke(app, argv, env=ENV, input=stdin)
    after = snapshot(root)
    code = result.exit_code
    TALLY[test][code] += 1
    if os.environ.get("BUDGETPLAN_FUZZ_LOG"):
        with open(os.environ["BUDGETPLAN_FUZZ_LOG"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"test": test, "argv": list(argv), "exit": code,
                                  "stderr": result.stderr.strip().splitlines()[-1:] if result.stderr else []}) + "\n")
    shown = " ".join(repr(a) if not a or re.search(r"\s", a) else a for a in argv)[:600]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(result.exception))[-3000:]
        raise AssertionError(f"an exception escaped the CLI: budgetplan {shown}\n{trace}")
    stderr = result.stderr
    assert code in (0, 1, 2), f"exit {code}: budgetplan {shown}\n{stderr[-2000:]}"
    assert "Traceback" not in result.stdout + stderr, f"traceback: budgetplan {shown}\n{stderr[-2000:]}"
    if code == 2:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) <= 1, f"{len(lines)} stderr lines: budgetplan {shown}\n{stderr[-2000:]}"
        assert "\x1b" not in stderr, f"escape code on stderr: budgetplan {shown}\n{stderr!r}"
        diff = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert not diff, f"exit 2 but files changed ({sorted(diff)[:5]}): budgetplan {shown}\n{stderr}"
    leftovers = [k for k in after if _TEMP.search(k)]
    assert not leftovers, f"temporary files left: {leftovers[:5]}: budgetplan {shown}"
    changed = [k for k in before if after.get(k) != before[k] and before[k] != "dir"]
    for rel in changed:
        assert "--force" in argv and _named(rel, argv, root), \
            f"pre-existing {rel} changed: budgetplan {shown}\n{stderr[-1000:]}"
    return result
