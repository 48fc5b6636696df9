"""benchmarks/seed_repro.py --quick as a user runs it: a subprocess, its outputs and their sanity.

The quick mode (1 seed, one budget per target, 4 epochs) takes about a minute on a loaded 2-core machine.
Nothing here is a hard-coded result: the assertions check structure and invariants (every epoch's plan
fits its budget, accuracies are fractions, fine-tuning beats the pre-trained model on the shifted task,
the outputs exist and are not silently overwritten).
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="seed_repro needs scikit-learn (the 'experiments'/'dev' extra)")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "seed_repro.py"
BUDGETED = ("static", "random", "random-ilp", "velocity-greedy", "velocity-ilp", "grad-norm")


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("seed_repro")
    proc = _run("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, json.loads((out / "results.json").read_text())


def test_outputs_written(quick):
    out, proc, doc = quick
    for name in ("results.json", "table.md", "seed_repro.svg"):
        assert (out / name).stat().st_size > 0, name
    ET.fromstring((out / "seed_repro.svg").read_text())  # well-formed SVG
    table = (out / "table.md").read_text()
    assert "--quick" in table  # the command that made it
    assert doc["command"].startswith("benchmarks/seed_repro.py")
    # the printed table is the written one
    for line in table.splitlines():
        if line.startswith("| "):
            assert line in proc.stdout


def test_grid_is_complete(quick):
    _, _, doc = quick
    runs = doc["runs"]
    budgets = [(t["name"], b["bytes"]) for t in doc["targets"] for b in t["budgets"]]
    assert {t["name"] for t in doc["targets"]} == {"cortex-m7", "host"}
    for seed in range(doc["config"]["seeds"]):
        mine = [r for r in runs if r["seed"] == seed]
        for strategy in ("no fine-tuning", "from scratch", "full"):
            assert sum(1 for r in mine if r["strategy"] == strategy) == 1, strategy
        for target, size in budgets:
            for strategy in BUDGETED:
                cell = [r for r in mine if r["strategy"] == strategy and r["target"] == target
                        and r["budget_bytes"] == size and r["subnet"] is None]
                assert len(cell) == 1, (strategy, target, size)
        for kind in ("static-random", "static-random-ilp"):
            subnets = [r for r in mine if r["subnet"] is not None and r["strategy"] == kind]
            assert len(subnets) == doc["static_experiment"]["subnets_per_seed"] >= 2, kind


def test_every_epoch_plan_fits_its_budget(quick):
    _, _, doc = quick
    epochs = doc["config"]["epochs"]
    for r in doc["runs"]:
        if r["budget_bytes"] is None:
            continue
        assert len(r["epochs"]) == epochs, r["strategy"]
        for e in r["epochs"]:
            assert e["fits"] is True and 0 < e["peak_bytes"] <= r["budget_bytes"], (r["strategy"], e)
            assert 0.0 <= e["conv_share"] <= 1.0
            assert e["trained_elements"] > 0, (r["strategy"], r["target"], e)  # a budget that trains something


def test_budgets_increase_with_their_aim_and_sit_between_inference_and_full(quick):
    _, _, doc = quick
    for t in doc["targets"]:
        sizes = [b["bytes"] for b in t["budgets"]]
        assert sizes == sorted(sizes)
        for b in t["budgets"]:
            assert t["inference_peak_bytes"] < b["bytes"] < t["full_peak_bytes"]
            assert b["static_peak_bytes"] <= b["bytes"]
            assert 0.0 < b["static_conv_share"] < 1.0


def test_dynamic_strategies_reselect(quick):
    """random re-draws its plan every epoch on the mcu target (where neuron choice is free); the velocity
    strategies start from the static plan and their first selections are logged."""
    _, _, doc = quick
    mcu = [r for r in doc["runs"] if r["target"] == "cortex-m7" and r["subnet"] is None]
    for name in ("random", "random-ilp"):
        random_run = next(r for r in mcu if r["strategy"] == name)
        assert all(e["groups_changed"] > 0 for e in random_run["epochs"][1:]), name
    static = next(r for r in mcu if r["strategy"] == "static")
    for name in ("random-ilp", "velocity-greedy", "velocity-ilp", "grad-norm"):
        run = next(r for r in mcu if r["strategy"] == name)
        assert run["epochs"][0]["selection"] == "initial"
        assert run["epochs"][0]["conv_share"] == pytest.approx(static["epochs"][0]["conv_share"])
    velocity = next(r for r in mcu if r["strategy"] == "velocity-ilp")
    assert [e["selection"] for e in velocity["epochs"][:3]] == ["initial", "warm-up", "velocity"]


def test_accuracies_and_fine_tuning_helps(quick):
    _, _, doc = quick
    runs = doc["runs"]
    for r in runs:
        assert 0.0 <= r["accuracy"] <= 1.0
    none = next(r["accuracy"] for r in runs if r["strategy"] == "no fine-tuning")
    full = next(r["accuracy"] for r in runs if r["strategy"] == "full")
    assert none < 0.3  # the shift defeats the pre-trained network ...
    assert full > none + 0.2  # ... and full fine-tuning recovers a good part of it


def test_refuses_to_overwrite(quick):
    out, _, _ = quick
    before = (out / "results.json").read_bytes()
    proc = _run("--quick", "--out", str(out), timeout=60)
    assert proc.returncode == 2
    assert "--force" in proc.stderr and "exists" in proc.stderr
    assert (out / "results.json").read_bytes() == before
