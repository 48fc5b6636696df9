"""The device arena of a microcontroller plan: every tensor of TinyEngine's step at an offset.

Checked against hand-derived placements (a stride-2 in-place depthwise conv whose block later tensors
reuse), against the independent overlap checker (``check_arena``) and against a lower bound the test
computes itself from the tensor list (the largest sum of bytes live at one step), on tiny-training's
three models under their published schemes.
"""

from __future__ import annotations

import pytest
from graph_support import Stride2, layer_graph

from budgetplan.model.update_set import UpdateSet, from_sparse_update_config
from budgetplan.pricing.mcu.exact import estimate_mcu, mcu_layout
from budgetplan.runtime.arena import ArenaPlan, check_arena
from budgetplan.runtime.device_arena import plan_device_arena
from budgetplan.targets import load_target

M7 = load_target("cortex-m7")


def _lower_bound(tensors) -> int:
    steps = max(t.last for t in tensors) + 1
    return max(sum(t.nbytes for t in tensors if t.first <= s <= t.last) for s in range(steps))


def test_stride2_block_is_reused_beyond_its_quarter() -> None:
    """Hand-derived: image 3·16·16 = 768 B; the pointwise output (16·16·16 = 4096 B) is the depthwise conv's
    block; after it the block keeps 16·8·8 = 1024 B and the last conv's output (32·8·8 = 2048 B) takes the
    bytes the quarter rule frees. Peak: image + block = 4864 B, + the in-place depthwise im2col 2·18·18 =
    648 B; no placement needs more."""
    graph = layer_graph(Stride2(), (1, 3, 16, 16))
    device = plan_device_arena(estimate_mcu(graph, UpdateSet.none(), M7))
    for plan in (device.first_fit, device.best_fit, device.arena):
        assert check_arena(plan) == []
        assert plan.arena_bytes == 4864 + 648
        offsets = {p.buffer.name: p.offset for p in plan.placements}
        assert offsets["act:dw"] == offsets["act:pw"]  # in place: one block
        block = range(offsets["act:pw"], offsets["act:pw"] + 4096)
        assert offsets["act:out"] in block and offsets["act:out"] + 2048 - 1 in block
    assert device.tensors["act:dw"].alias_of == "act:pw" and device.tensors["act:dw"].nbytes == 1024


@pytest.mark.parametrize(("name", "key", "labels"), [
    ("mbv2-w0.35-tt", "mbv2-w0.35", ("49kb", "138kb")),
    ("mcunet-5fps-tt", "mcunet-5fps", ("49kb", "148kb")),
    ("proxyless-w0.3-tt", "proxyless-w0.3", ("49kb", "148kb")),
])
def test_device_arena_realises_the_plans_peak(traced, name: str, key: str, labels: tuple[str, ...]) -> None:
    t = traced(name)
    model, graph = t.model, t.graph
    layout = mcu_layout(graph, M7)
    for label in labels:
        update = from_sparse_update_config(f"tt:{key}/{label}", model)
        for options in ({}, {"inplace": False, "fuse_update": False}):
            est = estimate_mcu(graph, update, M7, layout=layout, **options)
            device = plan_device_arena(est)
            scratch = sum(est.scratch.values())
            assert _lower_bound(est.device_tensors) + scratch == est.peak_bytes
            for plan in (device.first_fit, device.best_fit, device.arena):
                assert check_arena(plan) == [] and plan.arena_bytes >= est.peak_bytes
                assert all(p.offset % 4 == 0 and p.buffer.size % 4 == 0 for p in plan.placements)
            assert device.arena.arena_bytes <= 1.02 * est.peak_bytes, (label, options, device.agreement)
            offsets = {p.buffer.name: p.offset for p in device.arena.placements}
            for t in est.device_tensors:
                if t.alias_of is not None:  # an in-place chain shares one offset, one after the other in time
                    assert offsets[t.name] == offsets[t.alias_of]
                    assert device.tensors[t.alias_of].last < t.first


def test_arena_json_reads_back_and_names_each_tensor(traced) -> None:
    t = traced("mcunet-5fps-tt")
    model, graph = t.model, t.graph
    device = plan_device_arena(estimate_mcu(graph, from_sparse_update_config("tt:mcunet-5fps/49kb", model), M7))
    data = device.to_dict()
    again = ArenaPlan.from_dict(data)
    assert check_arena(again) == [] and again.arena_bytes == device.arena.arena_bytes
    kinds = {b["kind"] for b in data["buffers"]}
    assert {"input", "activation", "mask", "weight", "bias", "activation_gradient", "scratch"} <= kinds
    dtypes = {b["kind"]: b["dtype"] for b in data["buffers"]}
    assert dtypes["activation"] == "int8" and dtypes["activation_gradient"] == "float32" and dtypes["mask"] == "bit"
    assert dtypes["weight"] == "int8" and dtypes["bias"] == "int32"
    assert set(data["placements"]) >= {"first_fit", "best_fit"} and data["plan_peak_bytes"] == device.plan_peak_bytes
    assert all(b["first_step"] == data["steps"][b["first"]] for b in data["buffers"])
