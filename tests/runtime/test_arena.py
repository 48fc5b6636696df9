"""The static arena: the planner's placements never overlap (checked by the independent checker and by a
brute-force byte-level oracle written here), the checker catches overlaps, and the arena is at least the
peak of live bytes."""

from __future__ import annotations

import random

import pytest

from budgetplan.runtime.arena import ArenaBuffer, ArenaPlan, Placement, check_arena, peak_live_bytes, plan_arena
from budgetplan.errors import InputError


def _brute_overlaps(plan: ArenaPlan) -> set[frozenset[str]]:
    """Oracle: every pair of buffers live at the same step that claim the same byte (step by step)."""
    pairs: set[frozenset[str]] = set()
    steps = {s for p in plan.placements for s in range(p.buffer.first, p.buffer.last + 1)}
    for s in steps:
        owners: dict[int, list[str]] = {}
        for p in plan.placements:
            if p.buffer.first <= s <= p.buffer.last:
                for byte in range(p.offset, p.offset + p.buffer.size):
                    for other in owners.get(byte, []):
                        pairs.add(frozenset((other, p.buffer.name)))
                    owners.setdefault(byte, []).append(p.buffer.name)
    return pairs


def _brute_peak(buffers: list[ArenaBuffer]) -> int:
    last = max((b.last for b in buffers), default=-1)
    return max((sum(b.size for b in buffers if b.first <= s <= b.last) for s in range(last + 1)), default=0)


def _random_buffers(rng: random.Random, n: int) -> list[ArenaBuffer]:
    out = []
    for i in range(n):
        first = rng.randrange(0, 40)
        out.append(ArenaBuffer(f"b{i}", rng.choice([0, 1, 3, 8, 17, 64, 100, 250]), first,
                               first + rng.randrange(0, 12)))
    return out


def test_checker_catches_a_deliberate_overlap() -> None:
    a = ArenaBuffer("a", 64, 0, 5)
    b = ArenaBuffer("b", 32, 3, 8)
    bad = ArenaPlan([Placement(a, 0), Placement(b, 48)], arena_bytes=96, peak_live_bytes=96, peak_step=3,
                    alignment=16)
    problems = check_arena(bad)
    assert [(p.first, p.second) for p in problems] == [("a", "b")]
    assert _brute_overlaps(bad) == {frozenset("ab")}


def test_checker_accepts_reuse_of_bytes_by_buffers_that_are_never_live_together() -> None:
    a = ArenaBuffer("a", 64, 0, 2)
    b = ArenaBuffer("b", 64, 3, 5)  # starts after a's last step: may take a's bytes
    c = ArenaBuffer("c", 64, 2, 2)  # live with a at step 2: may not
    ok = ArenaPlan([Placement(a, 0), Placement(b, 0), Placement(c, 64)], 128, 128, 2, 16)
    assert check_arena(ok) == []
    bad = ArenaPlan([Placement(a, 0), Placement(b, 0), Placement(c, 0)], 128, 128, 2, 16)
    assert {frozenset((p.first, p.second)) for p in check_arena(bad)} == {frozenset("ac")}
    assert _brute_overlaps(bad) == {frozenset("ac")}


def test_checker_reports_buffers_outside_the_arena_and_misaligned() -> None:
    a = ArenaBuffer("a", 64, 0, 1)
    problems = check_arena(ArenaPlan([Placement(a, 8)], 64, 64, 0, 16))
    assert {p.first for p in problems} == {"a"} and len(problems) == 2
    assert all(p.second is None for p in problems)


@pytest.mark.parametrize("seed", range(40))
def test_random_buffer_sets_are_placed_soundly(seed: int) -> None:
    rng = random.Random(seed)
    buffers = _random_buffers(rng, rng.randrange(1, 40))
    alignment = rng.choice([1, 4, 16])
    plan = plan_arena(buffers, alignment=alignment)
    assert check_arena(plan) == []
    assert _brute_overlaps(plan) == set()
    assert plan.peak_live_bytes == _brute_peak(buffers) == peak_live_bytes(buffers)[0]
    assert plan.arena_bytes >= plan.peak_live_bytes
    assert all(p.offset % alignment == 0 for p in plan.placements)
    assert [p.buffer for p in plan.placements] == buffers  # input order kept


@pytest.mark.parametrize("seed", range(20))
def test_checker_agrees_with_the_brute_force_oracle_on_random_placements(seed: int) -> None:
    rng = random.Random(1000 + seed)
    buffers = [b for b in _random_buffers(rng, 12) if b.size]
    placements = [Placement(b, rng.randrange(0, 8) * 16) for b in buffers]
    plan = ArenaPlan(placements, arena_bytes=10_000, peak_live_bytes=1, peak_step=0, alignment=16)
    found = {frozenset((p.first, p.second)) for p in check_arena(plan) if p.second is not None}
    assert found == _brute_overlaps(plan)


def test_disjoint_lifetimes_share_one_slot_and_the_arena_is_tight_for_a_chain() -> None:
    # a chain of layers: each output lives while the next one is computed (two live at a time)
    buffers = [ArenaBuffer(f"act{i}", 1000, i, i + 1) for i in range(10)]
    plan = plan_arena(buffers, alignment=8)
    assert check_arena(plan) == []
    assert plan.peak_live_bytes == 2000
    assert plan.arena_bytes == 2000 and plan.fragmentation == 0.0


def test_round_trip_and_bad_input() -> None:
    plan = plan_arena([ArenaBuffer("x", 10, 0, 3), ArenaBuffer("y", 20, 2, 4)])
    again = ArenaPlan.from_dict(plan.to_dict())
    assert again.placements == plan.placements and again.arena_bytes == plan.arena_bytes
    with pytest.raises(InputError):
        plan_arena([ArenaBuffer("x", 10, 3, 1)])
    with pytest.raises(InputError):
        plan_arena([ArenaBuffer("x", 10, 0, 1), ArenaBuffer("x", 5, 0, 1)])
    with pytest.raises(InputError):
        ArenaPlan.from_dict({"buffers": [{"name": "x"}]})
