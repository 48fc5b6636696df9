"""The device's arena for a microcontroller plan: TinyEngine's training step, every tensor at an offset.

An ``mcu`` plan is priced as a list of the device's tensors (:class:`~budgetplan.pricing.mcu.exact.DeviceTensor`:
int8 activations, 1-bit masks, int8 trained weights and int32 biases, fp32 gradients, each with its
first and last schedule step; an in-place depthwise conv's output continues its input's block). This
module places exactly those tensors in one static arena, with the placement code of
:mod:`budgetplan.runtime.arena` (:func:`~budgetplan.runtime.arena.plan_blocks`), in two ways:

* **first fit, longest lifetime first** — TinyEngine's planner (``GeneralMemoryScheduler`` with
  ``sort_by_lifetime``): each block at the lowest offset where it fits;
* **best fit, largest first** — the host arena's planner;

and, when neither reaches the lower bound within :data:`SEARCH_TOLERANCE`, a small deterministic local
search (:func:`_search`). The smallest arena is the one exported. An in-place chain is one block: its tensors share one offset
and follow one another in time (after a stride-2 depthwise conv the block holds only a quarter, and
later tensors may use the rest). The kernel scratch buffers (the largest im2col and kernel buffer)
sit on top, live at every step, as TinyEngine reports its peak: arena high-water + im2col + kernel.
Offsets and sizes are multiples of 4 bytes. The plan's ``peak_bytes`` is the arena's lower bound
(the largest sum of live tensors + scratch), so ``arena_bytes / peak_bytes - 1`` is the fragmentation
that placement adds; :func:`~budgetplan.runtime.arena.check_arena` proves the placement sound.

Units: bytes; lifetimes are indices into the estimate's timeline (``steps``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from budgetplan.pricing.mcu.exact import ALIGNMENT, DeviceTensor, McuTrainingEstimate
from budgetplan.runtime.arena import (
    ArenaBuffer,
    ArenaPlan,
    Placement,
    check_arena,
    peak_live_bytes,
    place_block,
    plan_blocks,
)

__all__ = ["DeviceArena", "plan_device_arena"]

SCRATCH = ("im2col", "kernel")
SEARCH_TOLERANCE = 0.005  # search when the better of the two arenas is more than 0.5 % above the bound
SEARCH_TRIES = 100  # re-placements tried at most by the local search
SEARCH_LIFT = 48  # blocks lifted and put back at most per re-placement (the largest of the neighbourhood)


@dataclass
class DeviceArena:
    """The placements of an ``mcu`` estimate's tensors and the one exported (``arena``: the smallest of
    ``first_fit`` (TinyEngine's), ``best_fit`` and, when it ran, ``searched``).

    ``steps``: ``phase:label`` of each schedule step (the lifetimes index it); ``tensors``: the device
    tensors by name; ``plan_peak_bytes``: the estimate's peak (the arena's lower bound).
    """

    arena: ArenaPlan
    first_fit: ArenaPlan
    best_fit: ArenaPlan
    steps: list[str]
    tensors: dict[str, DeviceTensor]
    plan_peak_bytes: int
    plan_peak_at: str
    scratch: dict[str, int]
    options: dict[str, bool] = field(default_factory=dict)
    searched: ArenaPlan | None = None

    @property
    def agreement(self) -> float:
        """``arena_bytes / plan_peak_bytes - 1``: what the placement adds to the plan's peak."""
        return self.arena.arena_bytes / self.plan_peak_bytes - 1.0 if self.plan_peak_bytes else 0.0

    def buffer_info(self) -> dict[str, str]:
        """A short description per buffer (kind, dtype, the block it continues), for the C header."""
        info: dict[str, str] = {}
        for name, t in self.tensors.items():
            cont = f", continues {t.alias_of}" if t.alias_of else ""
            info[name] = f"({t.kind}, {t.dtype}{cont})"
        for kind in SCRATCH:
            info[f"scratch:{kind}"] = f"({kind} buffer of the int8 kernels, every step)"
        return info

    def dtypes(self) -> dict[str, str]:
        """Each buffer's element type."""
        out = {name: t.dtype for name, t in self.tensors.items()}
        out.update({"scratch:im2col": "int16", "scratch:kernel": "int16"})
        return out

    def to_dict(self) -> dict[str, Any]:
        """``arena.json``: the exported arena (:meth:`ArenaPlan.to_dict`, readable by
        :meth:`ArenaPlan.from_dict`) with each buffer's kind, dtype, alias and step names, the schedule's
        steps, both placements' sizes and the plan's peak."""
        data = self.arena.to_dict()
        for b in data["buffers"]:
            t = self.tensors.get(b["name"])
            b["kind"] = t.kind if t else "scratch"
            b["dtype"] = self.dtypes().get(b["name"], "")
            b["alias_of"] = t.alias_of if t else None
            b["first_step"], b["last_step"] = self.steps[b["first"]], self.steps[b["last"]]
        data.update({
            "runtime": "tinyengine-int8",
            "plan_peak_bytes": self.plan_peak_bytes,
            "plan_peak_at": self.plan_peak_at,
            "agreement": round(self.agreement, 6),
            "scratch": dict(self.scratch),
            "options": dict(self.options),
            "placements": {name: {"algorithm": a.algorithm, "arena_bytes": a.arena_bytes,
                                  "fragmentation": round(a.fragmentation, 6)}
                           for name, a in (("first_fit", self.first_fit), ("best_fit", self.best_fit),
                                           ("searched", self.searched)) if a is not None},
            "steps": list(self.steps),
        })
        return data

    def summary(self) -> dict[str, Any]:
        """The figures ``budgetplan export`` prints (bytes)."""
        return {"arena_bytes": self.arena.arena_bytes, "algorithm": self.arena.algorithm,
                "first_fit_bytes": self.first_fit.arena_bytes, "best_fit_bytes": self.best_fit.arena_bytes,
                "searched_bytes": None if self.searched is None else self.searched.arena_bytes,
                "peak_live_bytes": self.arena.peak_live_bytes, "plan_peak_bytes": self.plan_peak_bytes,
                "agreement": round(self.agreement, 6), "tensors": len(self.tensors)}


def _blocks(tensors: list[DeviceTensor]) -> list[list[ArenaBuffer]]:
    """One block per in-place chain (a tensor joins the block of the tensor it continues)."""
    root: dict[str, str] = {}
    for t in tensors:
        root[t.name] = root.get(t.alias_of, t.alias_of) if t.alias_of else t.name
    blocks: dict[str, list[ArenaBuffer]] = {}
    for t in tensors:
        blocks.setdefault(root[t.name], []).append(ArenaBuffer(t.name, t.nbytes, t.first, t.last))
    return list(blocks.values())


def _with_scratch(plan: ArenaPlan, scratch: dict[str, int], last_step: int, alignment: int) -> ArenaPlan:
    """The kernel scratch buffers on top of the placed tensors, live at every step."""
    placements = list(plan.placements)
    offset = plan.arena_bytes
    for kind in SCRATCH:
        size = scratch.get(kind, 0)
        placements.append(Placement(ArenaBuffer(f"scratch:{kind}", size, 0, last_step), offset))
        offset += -(-size // alignment) * alignment
    peak, at = peak_live_bytes(p.buffer for p in placements)
    return ArenaPlan(placements, offset, peak, at, alignment, plan.algorithm)


def _search(blocks: list[list[ArenaBuffer]], bound: int, alignment: int, *, long_first: bool = False) -> ArenaPlan:
    """A deterministic local search (seeded): start from the blocks that live at every step at the bottom,
    then those held to the end (earliest first), then the others largest first, first fit; then, up to :data:`SEARCH_TRIES` times, take the block that
    reaches highest, lift every block that meets it in time (not the whole-step ones) and put them back in
    a perturbed largest-first order (first or best fit), keeping the result when the arena does not grow.
    The neighbourhood grows through short-lived blocks (a chain of forward activations must move together),
    at most :data:`SEARCH_LIFT` blocks.
    Stops within :data:`SEARCH_TOLERANCE` of ``bound``."""
    rng = random.Random(0)
    last = max((b.last for block in blocks for b in block), default=0)
    whole = [bool(block) and min(b.first for b in block) == 0 and max(b.last for b in block) == last
             for block in blocks]
    sizes = [max((b.size for b in block), default=0) for block in blocks]
    to_end = [bool(block) and max(b.last for b in block) == last for block in blocks]
    life = [max((b.last for b in block), default=0) - min((b.first for b in block), default=0) for block in blocks]
    # whole-step tensors at the bottom, then those held to the end (longest first: a staircase), then
    # (``long_first``) those that live over half the step, longest first, then the others largest first
    def tier(i: int) -> tuple[int, int, int]:
        if whole[i]:
            return (0, 0, -sizes[i])
        if to_end[i]:
            return (1, -life[i], -sizes[i])
        if long_first and 2 * life[i] > last:
            return (2, -life[i], -sizes[i])
        return (3, -sizes[i], 0)

    start = sorted(range(len(blocks)), key=lambda i: (*tier(i), i))
    plan = plan_blocks(blocks, alignment=alignment, order=start, fit="first")
    offsets = {p.buffer.name: p.offset for p in plan.placements}
    offset = [offsets[block[0].name] if block else 0 for block in blocks]
    need = [max((-(-b.size // alignment) * alignment for b in block), default=0) for block in blocks]

    span = [(min((b.first for b in block), default=0), max((b.last for b in block), default=0)) for block in blocks]
    movable = [i for i in range(len(blocks)) if not whole[i] and need[i]]
    short_life = max(1, last // 10)  # a block living at most a tenth of the step moves with its neighbours

    def height() -> int:
        return max((offset[i] + need[i] for i in range(len(blocks))), default=0)

    current = height()
    for _ in range(SEARCH_TRIES):
        if current <= bound * (1 + SEARCH_TOLERANCE):
            break
        top = max(range(len(blocks)), key=lambda i: (offset[i] + need[i], rng.random()))
        lo, hi = span[top]
        lifted: list[int] = []
        for _ in range(3):  # the blocks that meet the window, then the short ones that meet those
            lifted = [i for i in movable if span[i][0] <= hi and lo <= span[i][1]]
            short = [span[i] for i in lifted if span[i][1] - span[i][0] <= short_life]
            lo, hi = min([lo, *(a for a, _ in short)]), max([hi, *(b for _, b in short)])
        lifted = [top, *sorted((i for i in lifted if i != top), key=lambda i: -need[i])[:SEARCH_LIFT - 1]]
        lifted = [i for i in lifted if not whole[i]]
        saved = {i: offset[i] for i in lifted}
        lifted_set = set(lifted)
        placed = [(offset[j], b) for j, block in enumerate(blocks) if j not in lifted_set for b in block if b.size]
        fit = rng.choice(("first", "best"))
        for i in sorted(lifted, key=lambda i: -sizes[i] * rng.uniform(0.5, 2.0)):
            offset[i] = place_block(blocks[i], placed, alignment=alignment, fit=fit)
            placed.extend((offset[i], b) for b in blocks[i] if b.size)
        after = height()
        if after <= current:
            current = after
        else:
            for i, o in saved.items():
                offset[i] = o
    placements = [Placement(b, offset[i]) for i, block in enumerate(blocks) for b in block]
    return ArenaPlan(placements, current, plan.peak_live_bytes, plan.peak_step, alignment,
                     f"local search: whole-step tensors first, then largest first; up to {SEARCH_TRIES} "
                     "re-placements of the highest block's neighbours")


def plan_device_arena(estimate: McuTrainingEstimate, *, alignment: int = ALIGNMENT) -> DeviceArena:
    """Place an ``mcu`` estimate's device tensors (see the module docstring); every placement is checked
    with :func:`check_arena`, the smallest is returned as ``arena``."""
    tensors = list(estimate.device_tensors)
    blocks = _blocks(tensors)
    last = max(len(estimate.timeline) - 1, 0)
    first_fit = plan_blocks(blocks, alignment=alignment, order="lifetime", fit="first",
                            algorithm="first fit, longest lifetime first (TinyEngine)")
    best_fit = plan_blocks(blocks, alignment=alignment, order="size", fit="best", algorithm="best fit, largest first")
    bound = first_fit.peak_live_bytes
    searched = None
    if min(first_fit.arena_bytes, best_fit.arena_bytes) > bound * (1 + SEARCH_TOLERANCE):
        searched = _search(blocks, bound, alignment)
        if searched.arena_bytes > bound * (1 + SEARCH_TOLERANCE):  # a second start: long-lived blocks first
            second = _search(blocks, bound, alignment, long_first=True)
            searched = second if second.arena_bytes < searched.arena_bytes else searched
    plans = [_with_scratch(p, estimate.scratch, last, alignment) if p is not None else None
             for p in (first_fit, best_fit, searched)]
    for plan in plans:
        problems = check_arena(plan) if plan is not None else []
        if problems:  # a bug in the planner: never hand out an unsound arena
            raise RuntimeError(f"device arena check failed ({plan.algorithm}): {problems[0].message}")
    chosen = min((p for p in plans if p is not None), key=lambda p: p.arena_bytes)
    steps = [f"{p.phase}:{p.label}" for p in estimate.timeline]
    return DeviceArena(chosen, plans[0], plans[1], steps, {t.name: t for t in tensors}, estimate.peak_bytes,
                       estimate.peak_at, dict(estimate.scratch), dict(estimate.options), searched=plans[2])
