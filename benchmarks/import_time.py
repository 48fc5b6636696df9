"""How long `import budgetplan` and `budgetplan --help` take, for this tree and optionally a git revision.

    python benchmarks/import_time.py                 # this checkout
    python benchmarks/import_time.py --rev 4ffc6f8   # ... next to another revision (its planner/,
                                                     # cost_models/, targets/ assembled in a temp folder)

Each command runs in a fresh interpreter ``--runs`` times, alternating between the trees so that load on
the machine hits both alike; the medians are printed, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from layers import PARTS  # noqa: E402  (folder in the repository -> folder inside the package)

COMMANDS = {
    "import budgetplan": "import budgetplan",
    "budgetplan --help": "import sys; sys.argv = ['budgetplan', '--help']\n"
                         "from budgetplan.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
}


def assemble_revision(rev: str, dest: Path) -> Path:
    """``rev``'s package laid out as installed, under ``dest/budgetplan``; returns ``dest``."""
    for folder, inside in PARTS.items():
        target = dest / "budgetplan" / inside
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev, folder], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "--strip-components=1", "-C", str(target)], input=archive, check=True)
    return dest


def seconds(code: str, pythonpath: str | None) -> float:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="a git revision to compare with")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": None}
        if args.rev:
            trees[args.rev] = str(assemble_revision(args.rev, Path(tmp)))
        print(f"{'command':22} " + " ".join(f"{name:>12}" for name in trees) + ("   ratio" if args.rev else ""))
        for label, code in COMMANDS.items():
            times: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(args.runs):
                for name, path in trees.items():
                    times[name].append(seconds(code, path))
            medians = {name: statistics.median(values) for name, values in times.items()}
            row = f"{label:22} " + " ".join(f"{medians[name]:>10.3f} s" for name in trees)
            if args.rev:
                row += f"   {medians['this tree'] / medians[args.rev]:.2f}"
            print(row)


if __name__ == "__main__":
    main()
