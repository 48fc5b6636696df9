"""A static memory arena for one training step: an offset for every buffer, and a checker for it.

A compiled training step runs a fixed schedule of operators, so every buffer it allocates has a known
size and a known lifetime: the schedule steps from the one that writes it first to the last one that
reads or writes it (inclusive: an operator's inputs and outputs are live together). A static planner
gives each buffer a fixed byte offset inside one block of RAM, the **arena**, so that buffers whose
lifetimes intersect never share a byte; buffers that are never live at the same time may reuse the same
bytes. No allocator runs on the device.

* :func:`plan_arena` — greedy by size (largest buffer first; among the already placed buffers whose
  lifetimes intersect its own, take the smallest gap that fits, else the lowest offset above them),
  the strategy of TensorFlow Lite Micro's and MNN's planners. Offsets are multiples of ``alignment``
  bytes (16 by default: the widest SIMD load of Cortex-M/-A cores), each buffer's size is rounded up
  to it.
* :func:`plan_blocks` — the same for **blocks** of buffers that share one offset (an in-place operator's
  output continues its input's block), with a choice of order (largest or longest-lived first) and fit
  (best or first): TinyEngine's planner is first fit, longest lifetime first
  (:mod:`budgetplan.runtime.device_arena`).
* :func:`check_arena` — an independent checker (it shares no code with the planner): a sweep over the
  buffers in order of their first step that compares each with every buffer still live, and reports
  every pair whose lifetimes intersect and whose byte ranges ``[offset, offset + size)`` overlap, plus
  buffers outside the arena or misaligned.
* ``peak_live_bytes`` — the largest sum of (unrounded) buffer sizes live at one step: no arena can be
  smaller, so ``fragmentation = arena_bytes / peak_live_bytes - 1`` measures what the placement (and
  the alignment padding) costs on top of the lower bound.

Which tensors go into the arena is the caller's decision (see :mod:`budgetplan.runtime.training_step`: the
step's activations, saved tensors, gradients, temporaries and its loss; parameters, module buffers and
the input stay outside). All sizes are bytes; lifetimes are schedule step indices.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from budgetplan.errors import InputError

__all__ = ["DEFAULT_ALIGNMENT", "ArenaBuffer", "ArenaPlan", "Overlap", "check_arena", "peak_live_bytes",
           "plan_arena", "plan_blocks"]

#: Default offset alignment in bytes.
DEFAULT_ALIGNMENT = 16


@dataclass(frozen=True)
class ArenaBuffer:
    """A buffer to place: ``size`` bytes, live from schedule step ``first`` to ``last`` (inclusive)."""

    name: str
    size: int
    first: int
    last: int

    def overlaps_in_time(self, other: ArenaBuffer) -> bool:
        """True when the two lifetimes share at least one schedule step."""
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Placement:
    """A placed buffer: ``offset`` bytes from the start of the arena."""

    buffer: ArenaBuffer
    offset: int

    @property
    def end(self) -> int:
        """One past the last byte (``offset + size``)."""
        return self.offset + self.buffer.size


@dataclass
class ArenaPlan:
    """An offset for every buffer and the arena they fit in (bytes).

    ``peak_live_bytes`` is the lower bound (largest sum of sizes live at one step); ``fragmentation``
    is ``arena_bytes / peak_live_bytes - 1`` (0.0 when nothing is live).
    """

    placements: list[Placement]
    arena_bytes: int
    peak_live_bytes: int
    peak_step: int
    alignment: int
    algorithm: str = "greedy-by-size, best fit"
    notes: list[str] = field(default_factory=list)

    @property
    def fragmentation(self) -> float:
        return self.arena_bytes / self.peak_live_bytes - 1.0 if self.peak_live_bytes else 0.0

    def offset_of(self, name: str) -> int:
        """The offset of the buffer called ``name`` (KeyError when there is none)."""
        for p in self.placements:
            if p.buffer.name == name:
                return p.offset
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: sizes and offsets in bytes, lifetimes as schedule steps."""
        return {
            "format": "budgetplan-arena",
            "version": 1,
            "arena_bytes": self.arena_bytes,
            "peak_live_bytes": self.peak_live_bytes,
            "peak_step": self.peak_step,
            "fragmentation": round(self.fragmentation, 6),
            "alignment": self.alignment,
            "algorithm": self.algorithm,
            "buffers": [{**asdict(p.buffer), "offset": p.offset} for p in self.placements],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArenaPlan:
        """Read :meth:`to_dict`'s output back (e.g. to check an ``arena.json`` file)."""
        try:
            placements = [Placement(ArenaBuffer(str(b["name"]), int(b["size"]), int(b["first"]), int(b["last"])),
                                    int(b["offset"])) for b in data["buffers"]]
            return cls(placements, int(data["arena_bytes"]), int(data["peak_live_bytes"]),
                       int(data.get("peak_step", -1)), int(data["alignment"]),
                       str(data.get("algorithm", "")), list(data.get("notes", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not an arena document: {exc}") from None


def _round_up(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def peak_live_bytes(buffers: Iterable[ArenaBuffer]) -> tuple[int, int]:
    """(largest sum of buffer sizes live at one schedule step, the first step that has it); (0, -1)
    for no buffers. Bytes, unrounded."""
    events: dict[int, int] = {}
    for b in buffers:
        events[b.first] = events.get(b.first, 0) + b.size
        events[b.last + 1] = events.get(b.last + 1, 0) - b.size
    live, peak, at = 0, 0, -1
    for step in sorted(events):
        live += events[step]
        if live > peak:
            peak, at = live, step
    return peak, at


def _validate(buffers: Sequence[ArenaBuffer], alignment: int) -> None:
    if alignment < 1:
        raise InputError(f"alignment must be a positive number of bytes, got {alignment}")
    names: set[str] = set()
    for b in buffers:
        if b.size < 0 or b.first < 0 or b.last < b.first:
            raise InputError(f"buffer {b.name!r}: size {b.size} and lifetime [{b.first}, {b.last}] are invalid")
        if b.name in names:
            raise InputError(f"buffer {b.name!r} is listed twice")
        names.add(b.name)


def plan_arena(buffers: Sequence[ArenaBuffer], *, alignment: int = DEFAULT_ALIGNMENT) -> ArenaPlan:
    """Give every buffer an offset (a multiple of ``alignment`` bytes) so that no two buffers whose
    lifetimes intersect share a byte; the arena is as large as the highest end.

    Greedy by size: buffers in order of decreasing size (ties: earlier first step, then name); each is
    put into the smallest gap between the already placed, time-overlapping buffers that holds it
    (best fit), or above the highest of them. Zero-size buffers get offset 0 and take no room.
    Placements are returned in the input order.
    """
    return plan_blocks([[b] for b in buffers], alignment=alignment, order="size", fit="best")


def place_block(block: Sequence[ArenaBuffer], placed: Sequence[tuple[int, ArenaBuffer]], *,
                alignment: int = DEFAULT_ALIGNMENT, fit: str = "best") -> int:
    """The offset for one block (buffers sharing one offset, disjoint in time) among the ``placed``
    (offset, buffer) pairs: the lowest offset where every buffer of the block misses every placed buffer
    it meets in time (``fit="first"``), or the one that leaves the smallest gap above it (``"best"``;
    above everything when no gap holds it). A multiple of ``alignment``; 0 for an empty block."""
    segments = [b for b in block if b.size]
    if not segments:
        return 0

    def need(b: ArenaBuffer) -> int:
        return _round_up(b.size, alignment)

    busy = [sorted((off, off + need(q)) for off, q in placed if b.overlaps_in_time(q)) for b in segments]
    best: int | None = None
    best_slack = float("inf")
    for offset in sorted({0, *(end for intervals in busy for _, end in intervals)}):
        slack = float("inf")
        for b, intervals in zip(segments, busy):
            top = offset + need(b)
            if any(start < top and offset < end for start, end in intervals):
                break
            above = [start for start, _ in intervals if start >= top]
            if above:
                slack = min(slack, min(above) - top)
        else:
            if fit == "first":
                return offset
            if best is None or slack < best_slack:
                best, best_slack = offset, slack
            if slack == float("inf"):
                break  # every higher candidate is above everything too: no tighter gap there
    assert best is not None  # the highest end is always free
    return best


#: block orders of :func:`plan_blocks`: largest first, or longest lifetime first (TinyEngine's
#: ``sort_by_lifetime``; ties: larger first)
ORDERS = ("size", "lifetime")
#: placement rules of :func:`plan_blocks`: the smallest gap that holds the block, or the lowest offset
FITS = ("best", "first")


def plan_blocks(blocks: Sequence[Sequence[ArenaBuffer]], *, alignment: int = DEFAULT_ALIGNMENT,
                order: str | Sequence[int] = "size", fit: str = "best", algorithm: str | None = None) -> ArenaPlan:
    """Place **blocks**: each block is a list of buffers with disjoint lifetimes that share one offset
    (an operator that writes its output into its input's block; the block may hold fewer bytes after
    it). Every buffer of a block gets the block's offset, a multiple of ``alignment`` bytes, such that
    no two buffers whose lifetimes intersect share a byte.

    ``order``: ``"size"`` places the largest block first (ties: earlier first step, then name);
    ``"lifetime"`` the longest-lived first (TinyEngine's order; ties: larger first); or the block
    indices in the order to place them. ``fit``:
    ``"best"`` puts a block into the smallest gap that holds it (else above everything it meets in
    time), ``"first"`` at the lowest offset where it fits. Placements come back in input order.
    """
    if (isinstance(order, str) and order not in ORDERS) or fit not in FITS:
        raise InputError(f"unknown arena order {order!r} or fit {fit!r}")
    if not isinstance(order, str) and sorted(order) != list(range(len(blocks))):
        raise InputError("an explicit arena order must list every block index once")
    flat = [b for block in blocks for b in block]
    _validate(flat, alignment)
    for block in blocks:
        spans = sorted((b.first, b.last) for b in block if b.size)
        if any(a[1] >= b[0] for a, b in itertools.pairwise(spans)):
            raise InputError(f"the buffers of block {block[0].name!r} overlap in time")

    def key(i: int) -> tuple:
        block = blocks[i]
        size = max((b.size for b in block), default=0)
        first = min((b.first for b in block), default=0)
        name = block[0].name if block else ""
        if order == "lifetime":
            life = max((b.last for b in block), default=0) - first
            return (-life, -size, first, name)
        return (-size, first, name)

    offsets: dict[int, int] = {}
    placed: list[tuple[int, ArenaBuffer]] = []  # (offset, buffer) of every placed non-empty buffer
    for i in (sorted(range(len(blocks)), key=key) if isinstance(order, str) else order):
        offsets[i] = place_block(blocks[i], placed, alignment=alignment, fit=fit)
        placed.extend((offsets[i], b) for b in blocks[i] if b.size)
    placements = [Placement(b, offsets[i]) for i, block in enumerate(blocks) for b in block]
    arena = max((_round_up(p.end, alignment) for p in placements if p.buffer.size), default=0)
    peak, at = peak_live_bytes(flat)
    if algorithm is None:
        first = {"size": "largest", "lifetime": "longest lifetime"}.get(order, "given order") \
            if isinstance(order, str) else "given order"
        algorithm = "greedy-by-size, best fit" if (order, fit) == ("size", "best") else f"{first} first, {fit} fit"
    return ArenaPlan(placements, arena, peak, at, alignment, algorithm)


@dataclass(frozen=True)
class Overlap:
    """A problem :func:`check_arena` found: two live buffers sharing bytes (``second`` set), or one buffer
    outside the arena or misaligned (``second`` is None)."""

    first: str
    second: str | None
    message: str


def check_arena(plan: ArenaPlan) -> list[Overlap]:
    """Every violation of the arena plan; an empty list proves it sound.

    Checks, written independently of :func:`plan_arena`: each buffer lies inside ``[0, arena_bytes)``,
    has a non-negative offset that is a multiple of ``plan.alignment``; and no two buffers whose
    lifetimes share a step have intersecting byte ranges ``[offset, offset + size)`` (zero-size buffers
    hold no byte). Sweep line: buffers sorted by first step; a buffer is compared with every earlier one
    still live at its first step (two lifetimes intersect exactly when the later-starting one starts
    before the other ends).
    """
    problems: list[Overlap] = []
    for p in plan.placements:
        b = p.buffer
        if p.offset < 0 or p.offset + b.size > plan.arena_bytes:
            problems.append(Overlap(b.name, None, f"{b.name} [{p.offset}, {p.offset + b.size}) lies outside the "
                                                  f"arena of {plan.arena_bytes} bytes"))
        if plan.alignment > 0 and p.offset % plan.alignment:
            problems.append(Overlap(b.name, None, f"{b.name} offset {p.offset} is not a multiple of "
                                                  f"{plan.alignment}"))
    live: list[Placement] = []
    for p in sorted(plan.placements, key=lambda q: q.buffer.first):
        live = [q for q in live if q.buffer.last >= p.buffer.first]
        if p.buffer.size == 0:
            continue
        for q in live:
            if p.offset < q.offset + q.buffer.size and q.offset < p.offset + p.buffer.size:
                problems.append(Overlap(
                    q.buffer.name, p.buffer.name,
                    f"{q.buffer.name} [{q.offset}, {q.offset + q.buffer.size}) live at steps "
                    f"{q.buffer.first}-{q.buffer.last} overlaps {p.buffer.name} [{p.offset}, "
                    f"{p.offset + p.buffer.size}) live at steps {p.buffer.first}-{p.buffer.last}"))
        live.append(p)
    return problems
