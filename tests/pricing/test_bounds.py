"""The ILP's linear bound is an upper bound of the exact cost model on every update set, host and mcu.

The planner trusts ``bound <= budget`` to mean "the exact re-pricing fits" (docs/planner.md). Random
update sets over neuron groups (channel subsets included: group size 4, so a layer may be partly
trained) on models with depthwise, stride-2, residual, attention and classifier layers; for each, the
bound's peak (the maximum over the schedule's points of its live-bytes expressions) must be at least the
exact model's peak. The exact models themselves are checked against PyTorch (host,
tests/pricing/test_host_exact.py) and tiny-training's published figures (mcu, tests/pricing/).
"""

from __future__ import annotations

import random

import pytest

from budgetplan.selection.planner import Planner, update_from_values
from budgetplan.targets import load_target

CASES = [
    ("tinycnn", None, "host"),
    ("tinycnn", None, "cortex-m7"),
    ("mobilenetv2-w0.35", (1, 3, 64, 64), "host"),
    ("mobilenetv2-w0.35", (1, 3, 64, 64), "cortex-m7"),
    ("mcunet", (1, 3, 64, 64), "cortex-m7"),
    ("vit-tiny", None, "host"),
    ("tv_resnet", None, "host"),
    ("tv_resnet", None, "cortex-m7"),
]
SAMPLES = 12


@pytest.mark.parametrize("name, shape, target", CASES, ids=[f"{n}-{t}" for n, _, t in CASES])
def test_bound_is_at_least_the_exact_peak_on_random_update_sets(traced, name, shape, target) -> None:
    t = traced(name, shape, group_size=4)
    device = load_target(target)
    planner = Planner(t.graph, device, 1 << 40)
    bound_model = planner.linear_model
    rng = random.Random(hash((name, target)) & 0xFFFF)
    groups = [g.var for g in bound_model.groups]
    densities = [0.0, 1.0] + [rng.random() for _ in range(SAMPLES - 2)]
    for density in densities:
        values = {v: int(rng.random() < density) for v in groups}
        update = update_from_values(bound_model, values, t.graph)
        exact = planner.price(update).peak_bytes
        bound = max(v for _, v in bound_model.evaluate(bound_model.assignment(update, t.graph)))
        assert bound >= exact, (f"{name} on {target}: bound {bound:.0f} < exact {exact} bytes at density "
                                f"{density:.2f} ({len(update.parameter_names())} tensors trained)")
