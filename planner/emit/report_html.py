"""A self-contained HTML report of a plan document (``budgetplan analyze --html``).

``render_html(document)`` turns the plan file's content (:func:`budgetplan.emit.plan_file.plan_document`,
docs/plan-format.md) into **one** HTML file: inline CSS, inline SVG drawn here, no JavaScript, no
fonts, images or style sheets fetched from anywhere. The output depends on the document only (no
dates, no random ids), so the same document gives the same bytes.

Sections: the verdict (peak vs budget), the memory timeline (stacked areas by kind, budget line,
phases, peak), per-layer bars (groups, trained elements, memory while the layer runs), the map of the
selected neuron groups (exact positions, from ``update[]``), memory breakdowns, FLOPs and latency, the
solver's summary, notes and the document's identity.

Every string taken from the document is HTML-escaped (model and layer names are user data).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["CATEGORIES", "render_html", "selected_groups"]

#: The memory kinds of ``memory``, ``memory_at_peak`` and every ``timeline[]`` point, bottom to top.
CATEGORIES = ("activations", "weights", "gradients", "optimizer", "other")
COLORS = {
    "activations": "#4e79a7",
    "weights": "#f28e2b",
    "gradients": "#e15759",
    "optimizer": "#59a14f",
    "other": "#9d8f8a",
}
PHASE_FILL = {"forward": "#edf2f9", "backward": "#fbf0e8", "step": "#eaf5e8"}
BUDGET_COLOR = "#c0392b"

# The timeline chart's geometry (SVG user units; the chart scales to the page width).
CHART_W, CHART_H = 1000, 360
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 78, 20, 40, 46
#: A budget more than this many times the peak is not drawn to scale (it would flatten the chart).
BUDGET_ON_SCALE = 3.0

# The group map: at most this many cells per line of a strip, and the largest/smallest cell pitch (px).
GROUPS_PER_LINE = 128
STRIP_WIDTH = 768
MAX_PITCH, MIN_PITCH = 14, 6

_UNITS = ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))


# ------------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """HTML-escape any value (quotes too: the result is safe in text and in attribute values)."""
    return html.escape(str(value), quote=True)


def _c(value: float) -> str:
    """An SVG coordinate: two decimals, fixed."""
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def _pct(value: float) -> str:
    return f"{max(0.0, min(100.0, value)):.2f}%"


def _bytes(n: Any) -> str:
    """``65448 -> "63.9 KiB"`` (binary units, one decimal), ``100 -> "100 B"``; ``None -> "n/a"``."""
    if n is None:
        return "n/a"
    size = int(n)
    sign = "-" if size < 0 else ""
    size = abs(size)
    if size < 1024:
        return f"{sign}{size} B"
    for scale, name in _UNITS:
        if size >= scale or name == "KiB":
            value = size / scale
            if round(value, 1) >= 1024 and name != "TiB":
                continue
            return f"{sign}{value:.1f} {name}"
    return f"{sign}{size} B"  # pragma: no cover - unreachable


def _int(n: Any) -> str:
    return "n/a" if n is None else f"{int(n):,}"


def _si(n: Any, unit: str = "") -> str:
    if n is None:
        return "n/a"
    value = float(n)
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:g} {unit}".rstrip()


def _number(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    return f"{float(x):,.10g}"


def _seconds(s: Any) -> str:
    if s is None:
        return "n/a"
    s = float(s)
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _ranges(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted indices as inclusive runs: ``[0, 1, 2, 5] -> [(0, 2), (5, 5)]``."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _ranges_text(indices: Iterable[int]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in _ranges(indices))


# ------------------------------------------------------------------------------------------------
# what the document says, derived
# ------------------------------------------------------------------------------------------------


def selected_groups(document: Mapping[str, Any]) -> list[list[int]]:
    """Per entry of ``layers[]``: the indices of its weight's selected neuron groups, from ``update[]``
    (``channels`` null = every group; else channel ``c`` is in group ``c // model.group_size``)."""
    size = max(1, int((document.get("model") or {}).get("group_size") or 1))
    update = {u.get("parameter"): u.get("channels") for u in document.get("update") or []}
    out: list[list[int]] = []
    for layer in document.get("layers") or []:
        total = int(layer.get("groups_total") or 0)
        weight = layer.get("weight")
        if weight not in update:
            out.append([])
        elif update[weight] is None:
            out.append(list(range(total)))
        else:
            out.append(sorted({int(c) // size for c in update[weight] if 0 <= int(c) // size < total}))
    return out


def _peak_index(document: Mapping[str, Any], timeline: Sequence[Mapping[str, Any]]) -> int:
    live = [int(p.get("live_bytes") or 0) for p in timeline]
    peak_at = document.get("peak_at")
    peak = document.get("peak_bytes")
    for i, p in enumerate(timeline):
        if f"{p.get('phase')}:{p.get('label')}" == peak_at and live[i] == peak:
            return i
    return live.index(max(live))


def _axis(top: float) -> tuple[float, float, int, str]:
    """A y axis from 0 to at least ``top`` bytes: (axis max in bytes, tick step in units, unit, name)."""
    top = max(float(top), 1.0)
    unit, name = 1, "B"
    for scale, uname in _UNITS:
        if top >= 2 * scale:
            unit, name = scale, uname
            break
    raw = top / unit / 6
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if unit == 1:
        step = max(1, math.ceil(step))
    ticks = math.ceil(top / unit / step - 1e-9)
    return ticks * step * unit, step, unit, name


def _phase_runs(timeline: Sequence[Mapping[str, Any]]) -> list[tuple[str, int, int]]:
    """Contiguous runs of one phase: (phase, first index, last index)."""
    runs: list[tuple[str, int, int]] = []
    for i, p in enumerate(timeline):
        phase = str(p.get("phase"))
        if runs and runs[-1][0] == phase:
            runs[-1] = (phase, runs[-1][1], i)
        else:
            runs.append((phase, i, i))
    return runs


# ------------------------------------------------------------------------------------------------
# the timeline chart
# ------------------------------------------------------------------------------------------------


def _timeline_svg(document: Mapping[str, Any]) -> str:
    timeline = document.get("timeline") or []
    n = len(timeline)
    if not n:
        return '<p class="muted">This plan has no timeline.</p>'
    live = [int(p.get("live_bytes") or 0) for p in timeline]
    peak_value = max(live)
    budget = document.get("budget_bytes")
    on_scale = budget is not None and budget <= BUDGET_ON_SCALE * max(peak_value, 1)
    top = max(peak_value, int(budget) if on_scale else 0, 1)
    ymax, step, unit, unit_name = _axis(top * 1.06)
    pw = CHART_W - CHART_LEFT - CHART_RIGHT
    ph = CHART_H - CHART_TOP - CHART_BOTTOM
    dx = pw / n

    def x(i: float) -> float:
        return CHART_LEFT + (i + 0.5) * dx

    def y(v: float) -> float:
        return CHART_TOP + ph * (1 - v / ymax)

    bottom = CHART_TOP + ph
    out = [f'<svg class="timeline" viewBox="0 0 {CHART_W} {CHART_H}" role="img" '
           f'aria-label="live bytes over the training step" data-points="{n}" data-ymax-bytes="{_c(ymax)}" '
           f'data-plot-top="{CHART_TOP}" data-plot-height="{ph}" preserveAspectRatio="xMidYMid meet">']
    # phases: shaded bands, separators and names
    for phase, first, last in _phase_runs(timeline):
        x0, x1 = CHART_LEFT + first * dx, CHART_LEFT + (last + 1) * dx
        fill = PHASE_FILL.get(phase, "#f4f4f4")
        out.append(f'<rect class="phase" data-phase="{_e(phase)}" x="{_c(x0)}" y="{CHART_TOP}" '
                   f'width="{_c(x1 - x0)}" height="{ph}" fill="{fill}"/>')
        if first:
            out.append(f'<line class="phase-edge" x1="{_c(x0)}" x2="{_c(x0)}" y1="{CHART_TOP - 14}" '
                       f'y2="{bottom}" stroke="#8a94a6" stroke-width="1" stroke-dasharray="2 3"/>')
        width = x1 - x0
        if width >= 60:
            out.append(f'<text class="phase-label" x="{_c((x0 + x1) / 2)}" y="{CHART_TOP - 18}" '
                       f'text-anchor="middle">{_e(phase)} ({last - first + 1})</text>')
        else:
            out.append(f'<text class="phase-label" x="{_c(x1)}" y="{CHART_TOP - 18}" '
                       f'text-anchor="end">{_e(phase)}</text>')
    # grid and y axis
    k = 0
    while k * step * unit <= ymax + 1e-6:
        value = k * step * unit
        yy = y(value)
        label = f"{k * step:g} {unit_name}"
        out.append(f'<line class="grid" x1="{CHART_LEFT}" x2="{CHART_LEFT + pw}" y1="{_c(yy)}" y2="{_c(yy)}" '
                   f'stroke="#d5dbe3" stroke-width="1"/>')
        out.append(f'<text class="tick" data-bytes="{_c(value)}" x="{CHART_LEFT - 8}" y="{_c(yy + 4)}" '
                   f'text-anchor="end">{_e(label)}</text>')
        k += 1
    # stacked areas, in CATEGORIES order from the bottom
    base = [0.0] * n
    for cat in CATEGORIES:
        values = [int(p.get(cat) or 0) for p in timeline]
        if not any(values):
            continue
        upper = [b + v for b, v in zip(base, values)]
        pts = [f"{_c(x(i))},{_c(y(upper[i]))}" for i in range(n)]
        pts += [f"{_c(x(i))},{_c(y(base[i]))}" for i in reversed(range(n))]
        out.append(f'<polygon class="area" data-category="{cat}" points="{" ".join(pts)}" '
                   f'fill="{COLORS[cat]}" fill-opacity="0.78" stroke="none"/>')
        base = upper
    # the total, as a line
    pts = " ".join(f"{_c(x(i))},{_c(y(v))}" for i, v in enumerate(live))
    out.append(f'<polyline class="live" points="{pts}" fill="none" stroke="#1f2933" stroke-width="1.6" '
               f'stroke-linejoin="round"/>')
    # the budget
    if budget is not None and on_scale:
        yb = y(budget)
        out.append(f'<line class="budget" data-bytes="{int(budget)}" x1="{CHART_LEFT}" x2="{CHART_LEFT + pw}" '
                   f'y1="{_c(yb)}" y2="{_c(yb)}" stroke="{BUDGET_COLOR}" stroke-width="2" '
                   f'stroke-dasharray="8 5"/>')
        # the label goes to the side away from the peak, above the line (below it when the line is at the top)
        peak_right = _peak_index(document, timeline) >= n / 2
        bx, banchor = (CHART_LEFT + 6, "start") if peak_right else (CHART_LEFT + pw - 6, "end")
        by = yb - 6 if yb - 6 > CHART_TOP + 10 else yb + 15
        out.append(f'<text class="budget-label" x="{_c(bx)}" y="{_c(by)}" text-anchor="{banchor}" '
                   f'fill="{BUDGET_COLOR}">budget {_e(_bytes(budget))}</text>')
    elif budget is not None:
        out.append(f'<text class="budget-offscale" data-bytes="{int(budget)}" x="{CHART_LEFT + pw - 4}" '
                   f'y="{CHART_TOP + 14}" text-anchor="end" fill="{BUDGET_COLOR}">budget '
                   f'{_e(_bytes(budget))}: {_e(_fraction(peak_value, budget))} of it used at the peak; not '
                   f'drawn to scale</text>')
    # the peak
    ip = _peak_index(document, timeline)
    px, py = x(ip), y(live[ip])
    anchor, shift = ("end", -9) if px > CHART_LEFT + pw * 0.6 else ("start", 9)
    out.append(f'<circle class="peak" data-index="{ip}" cx="{_c(px)}" cy="{_c(py)}" r="4.5" fill="#fff" '
               f'stroke="#1f2933" stroke-width="2"/>')
    label_y = max(CHART_TOP + 12, py - 8)
    out.append(f'<text class="peak-label" x="{_c(px + shift)}" y="{_c(label_y)}" text-anchor="{anchor}">peak '
               f'{_e(_bytes(live[ip]))} at {_e(timeline[ip].get("phase"))}:{_e(timeline[ip].get("label"))}'
               f'</text>')
    # axes
    out.append(f'<line class="axis" x1="{CHART_LEFT}" x2="{CHART_LEFT}" y1="{CHART_TOP}" y2="{bottom}" '
               f'stroke="#52606d"/>')
    out.append(f'<line class="axis" x1="{CHART_LEFT}" x2="{CHART_LEFT + pw}" y1="{bottom}" y2="{bottom}" '
               f'stroke="#52606d"/>')
    tick_every = max(1, _nice_count(n / 10))
    for i in range(0, n, tick_every):
        out.append(f'<text class="xtick" x="{_c(x(i))}" y="{bottom + 15}" text-anchor="middle">{i}</text>')
    out.append(f'<text class="axis-label" x="{CHART_LEFT + pw / 2}" y="{CHART_H - 8}" text-anchor="middle">'
               f'schedule point (forward after each layer, backward while each layer runs, then the step)'
               f'</text>')
    # hover targets: one per point, with a tooltip
    for i, p in enumerate(timeline):
        parts = ", ".join(f"{cat} {_bytes(p.get(cat) or 0)}" for cat in CATEGORIES if p.get(cat))
        tip = f"#{i} {p.get('phase')}:{p.get('label')}: {_bytes(live[i])} live ({parts or 'nothing'})"
        out.append(f'<rect class="hit" x="{_c(CHART_LEFT + i * dx)}" y="{CHART_TOP}" width="{_c(dx)}" '
                   f'height="{ph}" fill="transparent"><title>{_e(tip)}</title></rect>')
    out.append("</svg>")
    return "\n".join(out)


def _nice_count(raw: float) -> int:
    if raw <= 1:
        return 1
    magnitude = 10 ** math.floor(math.log10(raw))
    return int(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw))


def _fraction(part: float, whole: float) -> str:
    return "n/a" if not whole else f"{100 * part / whole:.3g} %"


def _legend() -> str:
    items = [f'<span class="key"><span class="sw" style="background:{COLORS[c]}"></span>{c}</span>'
             for c in CATEGORIES]
    items.append('<span class="key"><span class="sw line" style="border-color:#1f2933"></span>live bytes</span>')
    items.append(f'<span class="key"><span class="sw line dashed" style="border-color:{BUDGET_COLOR}"></span>'
                 'budget</span>')
    items += [f'<span class="key"><span class="sw" style="background:{PHASE_FILL[p]};border:1px solid #cbd2d9">'
              f'</span>{p}</span>' for p in ("forward", "backward", "step")]
    return '<div class="legend">' + "".join(items) + "</div>"


# ------------------------------------------------------------------------------------------------
# per-layer bars and the group map
# ------------------------------------------------------------------------------------------------


def _stack(values: Mapping[str, int], scale: float, budget: float | None) -> str:
    """A horizontal bar stacked by memory kind, ``scale`` bytes = the full width."""
    segs = []
    for cat in CATEGORIES:
        v = int(values.get(cat) or 0)
        if v and scale:
            segs.append(f'<span class="seg" data-category="{cat}" style="width:{_pct(100 * v / scale)};'
                        f'background:{COLORS[cat]}" title="{cat} {_e(_bytes(v))}"></span>')
    mark = ""
    if budget is not None and scale and budget <= scale:
        mark = f'<span class="budget-mark" style="left:{_pct(100 * budget / scale)}"></span>'
    return f'<div class="bar stack">{"".join(segs)}{mark}</div>'


def _layers_table(document: Mapping[str, Any]) -> str:
    layers = document.get("layers") or []
    if not layers:
        return '<p class="muted">The model has no weight layers with neuron groups.</p>'
    timeline = document.get("timeline") or []
    by_label: dict[str, list[int]] = {}
    for i, p in enumerate(timeline):
        by_label.setdefault(str(p.get("label")), []).append(i)
    live = [int(p.get("live_bytes") or 0) for p in timeline]
    budget = document.get("budget_bytes")
    peak_value = max(live, default=0)
    on_scale = budget is not None and budget <= BUDGET_ON_SCALE * max(peak_value, 1)
    scale = max(peak_value, int(budget) if on_scale else 0, 1)
    max_trained = max((int(r.get("trained_elements") or 0) for r in layers), default=0) or 1
    rows = []
    for row in layers:
        total = int(row.get("groups_total") or 0)
        sel = int(row.get("groups_selected") or 0)
        trained = int(row.get("trained_elements") or 0)
        points = by_label.get(str(row.get("layer")), [])
        if points:
            best = max(points, key=lambda i: (live[i], -i))
            p = timeline[best]
            mem = (f'{_stack(p, scale, budget if on_scale else None)}<span class="num">{_e(_bytes(live[best]))} '
                   f'<span class="muted">{_e(p.get("phase"))}</span></span>')
        else:
            mem = '<span class="muted">not in the timeline</span>'
        share = 100 * sel / total if total else 0.0
        rows.append(
            f'<tr class="layer-row{" trained" if sel else ""}" data-layer="{_e(row.get("layer"))}">'
            f'<td class="name">{_e(row.get("layer"))}</td><td class="op">{_e(row.get("op"))}</td>'
            f'<td><div class="bar groups" data-selected="{sel}" data-total="{total}">'
            f'<span class="seg sel" style="width:{_pct(share)}"></span></div>'
            f'<span class="num">{sel} / {total}</span></td>'
            f'<td><div class="bar"><span class="seg trained" style="width:{_pct(100 * trained / max_trained)}">'
            f'</span></div><span class="num">{_int(trained)}</span></td>'
            f'<td>{mem}</td><td class="right">{_e(_si(row.get("flops")))}</td></tr>')
    return (
        '<table class="layers"><thead><tr><th>layer</th><th>op</th><th>groups selected</th>'
        '<th>trained elements</th><th>memory while it runs</th><th class="right">fwd FLOPs</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>'
        '<p class="caption"><b>Groups</b>: the share of the layer\'s neuron groups (output-channel groups) '
        'selected for training (<code>layers[].groups_selected</code> of <code>groups_total</code>). '
        '<b>Trained elements</b>: <code>layers[].trained_elements</code> (the weight\'s selected rows and '
        'the layer\'s own 1-D parameters), as bars relative to the largest. <b>Memory while it runs</b> is '
        'not a per-layer figure of the plan: it is <em>derived</em> from <code>timeline[]</code> — the '
        'largest of the points labelled with this layer (after its forward, or during its backward), '
        'stacked by kind, on the scale of the timeline chart; the red tick is the budget.</p>')


def _strip_geometry(layers: Sequence[Mapping[str, Any]]) -> tuple[int, int, int]:
    """(cells per line, pitch px, gap px) shared by every strip of the map."""
    largest = max((int(r.get("groups_total") or 0) for r in layers), default=1) or 1
    per_line = min(GROUPS_PER_LINE, largest)
    pitch = max(MIN_PITCH, min(MAX_PITCH, STRIP_WIDTH // per_line))
    gap = 1 if pitch < 10 else 2
    return per_line, pitch, gap


def _strip_svg(total: int, selected: Sequence[int], per_line: int, pitch: int, gap: int) -> str:
    if total <= 0:
        return '<span class="muted">no groups</span>'
    lines = math.ceil(total / per_line)
    width = min(total, per_line) * pitch
    height = lines * pitch
    cell = pitch - gap
    out = [f'<svg class="strip" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'data-total="{total}" data-per-line="{per_line}" data-pitch="{pitch}">']
    for line in range(lines):
        count = min(per_line, total - line * per_line)
        out.append(f'<rect class="off" x="0" y="{line * pitch}" width="{count * pitch}" height="{cell}" '
                   f'fill="url(#gm-cells-{pitch})"/>')
    runs = _ranges(selected)
    tips = len(runs) <= 64  # a tooltip per run while there are few; the row's own tooltip lists them all
    for first, last in runs:
        a = first
        while a <= last:  # split runs at line ends
            line = a // per_line
            b = min(last, (line + 1) * per_line - 1)
            col = a - line * per_line
            cells = b - a + 1
            tip = ("<title>" + (f"groups {a}–{b}" if cells > 1 else f"group {a}") + "</title>") if tips else ""
            out.append(f'<rect class="on" data-first="{a}" data-cells="{cells}" x="{col * pitch}" '
                       f'y="{line * pitch}" width="{cells * pitch - gap}" height="{cell}">{tip}</rect>')
            a = b + 1
    out.append("</svg>")
    return "".join(out)


def _group_map(document: Mapping[str, Any]) -> str:
    layers = document.get("layers") or []
    if not layers:
        return '<p class="muted">No weight layers.</p>'
    size = max(1, int((document.get("model") or {}).get("group_size") or 1))
    per_line, pitch, gap = _strip_geometry(layers)
    chosen = selected_groups(document)
    patterns = sorted({pitch})
    defs = "".join(
        f'<pattern id="gm-cells-{p}" width="{p}" height="{p}" patternUnits="userSpaceOnUse">'
        f'<rect width="{p - gap}" height="{p - gap}" fill="#dde3ea"/></pattern>' for p in patterns)
    rows = []
    for row, sel in zip(layers, chosen):
        total = int(row.get("groups_total") or 0)
        stated = int(row.get("groups_selected") or 0)
        warn = ""
        if stated != len(sel):
            warn = (f'<div class="warn">the document says {stated} selected; <code>update[]</code> gives '
                    f'{len(sel)}</div>')
        title = (f"selected groups: {_ranges_text(sel)}" if sel and len(sel) < total else
                 "every group selected" if sel else "nothing selected")
        rows.append(
            f'<tr class="gm-row" data-layer="{_e(row.get("layer"))}" data-weight="{_e(row.get("weight"))}" '
            f'data-groups-total="{total}" title="{_e(title)}"><td class="name">{_e(row.get("layer"))}'
            f'<div class="muted small">{_e(row.get("weight"))}</div></td>'
            f'<td>{_strip_svg(total, sel, per_line, pitch, gap)}{warn}</td>'
            f'<td class="right num">{len(sel)} / {total}</td></tr>')
    layer_weights = {r.get("weight") for r in layers}
    others = [u for u in document.get("update") or [] if u.get("parameter") not in layer_weights]
    other_html = ""
    if others:
        items = "".join(
            f'<tr><td class="name">{_e(u.get("parameter"))}</td><td>'
            f'{"all" if u.get("channels") is None else "channels " + _e(_ranges_text(u["channels"]))}</td></tr>'
            for u in others)
        other_html = ('<h3>Other trained tensors</h3><p class="caption">Entries of <code>update[]</code> that are '
                      'not the weight of a layer above (biases, normalisation parameters, …).</p>'
                      f'<table class="other"><tbody>{items}</tbody></table>')
    unit = "one output channel" if size == 1 else f"{size} consecutive output channels"
    return (
        f'<svg class="defs" width="0" height="0" aria-hidden="true"><defs>{defs}</defs></svg>'
        '<table class="groupmap"><colgroup><col class="name"><col><col class="count"></colgroup>'
        '<thead><tr><th>layer / weight</th><th>neuron groups (filled = trained)</th>'
        '<th class="right">selected</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>'
        f'<p class="caption">One cell per neuron group of the layer\'s weight (a group is {unit}, '
        f'<code>model.group_size</code> = {size}), in channel order, {per_line} per line. Filled cells are the '
        'groups trained, at their exact positions, read from <code>update[]</code> (<code>channels</code> null '
        '= the whole tensor). Hover a row or a run for the indices.</p>' + other_html)


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------


def _memory_table(document: Mapping[str, Any]) -> str:
    memory = document.get("memory") or {}
    at_peak = document.get("memory_at_peak") or {}
    scale = max([int(memory.get(c) or 0) for c in CATEGORIES] + [int(at_peak.get(c) or 0) for c in CATEGORIES]
                + [1])
    rows = []
    for cat in CATEGORIES:
        cells = []
        for src in (memory, at_peak):
            v = int(src.get(cat) or 0)
            cells.append(f'<td class="right num">{_e(_bytes(v))}<div class="muted small">{_int(v)} B</div></td>'
                         f'<td><div class="bar"><span class="seg" style="width:{_pct(100 * v / scale)};'
                         f'background:{COLORS[cat]}"></span></div></td>')
        rows.append(f'<tr class="mem-row" data-category="{cat}"><td><span class="sw" '
                    f'style="background:{COLORS[cat]}"></span>{cat}</td>{"".join(cells)}</tr>')
    sums = [sum(int(src.get(c) or 0) for c in CATEGORIES) for src in (memory, at_peak)]
    rows.append(f'<tr class="total"><td>sum</td><td class="right num">{_e(_bytes(sums[0]))}</td><td></td>'
                f'<td class="right num">{_e(_bytes(sums[1]))}</td><td></td></tr>')
    return ('<table class="memory"><thead><tr><th>kind</th><th class="right" colspan="2">over the step '
            '(<code>memory</code>)</th><th class="right" colspan="2">alive at the peak '
            '(<code>memory_at_peak</code>)</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            '<p class="caption"><code>memory</code> adds up what the step needs of each kind (activations kept '
            'for backward, trained weights in RAM, gradients, optimizer state): its sum is not the peak, '
            'since not everything is alive at once. <code>memory_at_peak</code> is what is alive at the '
            'peak; its sum is the peak.</p>')


def _compute_table(document: Mapping[str, Any]) -> str:
    flops = document.get("flops") or {}
    names = {"forward": "forward", "backward": "backward (total)",
             "backward_to_activations": "backward to activations", "backward_to_parameters":
             "backward to parameters"}
    rows = [f'<tr><td>{_e(names.get(k, k))}</td><td class="right num">{_e(_si(v, "FLOP"))}</td>'
            f'<td class="right muted">{_int(v)}</td></tr>' for k, v in flops.items()]
    rows.append(f'<tr class="total"><td>latency estimate</td><td class="right num">'
                f'{_e(_seconds(document.get("latency_s")))}</td><td class="right muted">'
                f'{_e(_number(document.get("latency_s")))} s</td></tr>')
    return (f'<table class="compute"><tbody>{"".join(rows)}</tbody></table>'
            '<p class="caption">FLOPs of one training step for the example batch (2 per multiply-accumulate). '
            'The latency is a throughput estimate: forward and backward MACs over the target\'s MAC rate.</p>')


def _solver_block(document: Mapping[str, Any]) -> str:
    solver = document.get("solver")
    if not solver:
        return (f'<p class="solver-none">No solver ran: strategy <b>{_e(document.get("strategy"))}</b> '
                'is a fixed or filled set, priced with the exact cost model.</p>')
    status = str(solver.get("status"))
    kind = {"optimal": "ok", "feasible": "meh"}.get(status, "bad")
    gap = solver.get("gap")
    gap_text = "n/a" if gap is None else f"{100 * float(gap):.4g} %"
    return (
        '<dl class="kv solver">'
        f'<dt>solver</dt><dd>{_e(solver.get("name"))}</dd>'
        f'<dt>status</dt><dd><span class="badge {kind} solver-status">{_e(status)}</span></dd>'
        f'<dt>objective</dt><dd>{_e(_number(solver.get("objective")))} '
        f'<span class="muted">(scores: {_e(document.get("scores"))})</span></dd>'
        f'<dt>gap</dt><dd>{_e(gap_text)}</dd>'
        f'<dt>binary variables</dt><dd>{_e(_number(solver.get("variables")))}</dd>'
        f'<dt>objective of the plan</dt><dd>{_e(_number(document.get("objective")))}</dd>'
        f'<dt>linear bound on the peak</dt><dd>{_e(_bytes(document.get("bound_peak_bytes")))} '
        f'<span class="muted">({_e(_int(document.get("bound_peak_bytes")))} B; the exact re-pricing gives '
        f'{_e(_int(document.get("peak_bytes")))} B)</span></dd>'
        '</dl><p class="caption">“optimal”: proved best for the linear bound of the step\'s memory; '
        '“feasible”: stopped (time limit or gap) with a plan that fits the bound; anything else: no plan '
        'from the solver. The plan\'s verdict always comes from the exact cost model.</p>')


def _identity(document: Mapping[str, Any]) -> str:
    model = document.get("model") or {}
    shapes = model.get("input_shapes") or {}
    shapes_text = ", ".join(f"{k}: {'×'.join(str(d) for d in v)}" for k, v in shapes.items()) or "n/a"
    target = document.get("target") or {}
    items = [
        ("format", f"{document.get('format')} version {document.get('version')}"),
        ("written by", f"budgetplan {document.get('budgetplan_version')}"),
        ("model", model.get("source")),
        ("fingerprint", model.get("fingerprint")),
        ("input shapes", shapes_text),
        ("group size", model.get("group_size")),
        ("target", f"{target.get('name')} ({target.get('family')})"),
        ("strategy", document.get("strategy")),
        ("scores", document.get("scores")),
        ("optimizer", document.get("optimizer")),
        ("operator reordering", "on" if document.get("reorder") else "off"),
    ]
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f'<dl class="kv identity">{body}</dl>'


# ------------------------------------------------------------------------------------------------
# the page
# ------------------------------------------------------------------------------------------------

_CSS = """
:root{color-scheme:light}
*{box-sizing:border-box}
body{margin:0;background:#f5f7fa;color:#1f2933;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1220px;margin:0 auto;padding:20px 22px 40px}
h1{font-size:22px;margin:0 0 4px;word-break:break-all}
h2{font-size:17px;margin:0 0 10px}
h3{font-size:14px;margin:16px 0 6px}
section{background:#fff;border:1px solid #e1e6ec;border-radius:8px;padding:16px 18px;margin:16px 0;
overflow-x:auto}
.sub{color:#52606d;margin:0 0 12px}
.badge{display:inline-block;padding:1px 9px;border-radius:11px;font-weight:600;font-size:13px}
.badge.ok{background:#e3f4e1;color:#1e6b1a}.badge.bad{background:#fbe2df;color:#a3271b}
.badge.meh{background:#fdf1d6;color:#8a5a00}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.card{background:#fff;border:1px solid #e1e6ec;border-radius:8px;padding:10px 12px}
.card .k{color:#616e7c;font-size:12px}.card .v{font-size:19px;font-weight:600;word-break:break-word}
.card .d{color:#616e7c;font-size:12px}
svg.timeline{width:100%;height:auto;display:block}
svg.timeline text{font:12px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#3e4c59}
svg.timeline .phase-label{font-weight:600;fill:#52606d}
svg.timeline .budget-label,svg.timeline .budget-offscale{fill:#c0392b;font-weight:600}
svg.timeline .peak-label{font-weight:600;fill:#1f2933}
svg.timeline rect.hit:hover{fill:rgba(31,41,51,.08)}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:8px 0 0;font-size:13px;color:#3e4c59}
.key{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:13px;height:13px;border-radius:2px;vertical-align:-2px;margin-right:4px}
.sw.line{height:0;border-top:2.5px solid;border-radius:0;width:22px}
.sw.line.dashed{border-top-style:dashed}
table{border-collapse:collapse;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #edf0f3;vertical-align:middle;text-align:left}
th{font-size:12px;color:#616e7c;font-weight:600;background:#fafbfc;position:sticky;top:0}
td.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;
overflow-wrap:anywhere;max-width:260px}
table.groupmap{table-layout:fixed}
table.groupmap col.name{width:250px}table.groupmap col.count{width:90px}
.right{text-align:right}.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.muted{color:#7b8794}.small{font-size:11.5px}
.bar{position:relative;display:inline-flex;vertical-align:middle;width:150px;height:12px;background:#eceff3;
border-radius:2px;overflow:hidden;margin-right:8px}
.bar.stack{width:190px;overflow:visible}
.bar .seg{display:block;height:100%}
.bar .seg.sel{background:#3d7dca}.bar .seg.trained{background:#7a5cb8}
.budget-mark{position:absolute;top:-3px;bottom:-3px;width:0;border-left:2px solid #c0392b}
tr.layer-row:not(.trained) td.name{color:#7b8794}
table.groupmap td{padding:5px 8px}
svg.strip{display:block}
svg.strip rect.on{fill:#2f6fbf}
svg.strip rect.on:hover{fill:#163f73}
svg.defs{position:absolute;width:0;height:0;overflow:hidden}
.warn{color:#a3271b;font-size:12px;font-weight:600}
.caption{color:#52606d;font-size:12.5px;margin:8px 0 0;max-width:980px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dl.kv dt{color:#616e7c}dl.kv dd{margin:0;overflow-wrap:anywhere}
ul.notes{margin:0;padding-left:20px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;background:#f0f3f6;
padding:0 3px;border-radius:3px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:16px}
.grid2>section{margin:0}
footer{color:#7b8794;font-size:12px;text-align:center;margin-top:18px}
"""


def _cards(document: Mapping[str, Any]) -> str:
    peak = document.get("peak_bytes")
    budget = document.get("budget_bytes")
    groups = document.get("groups") or {}
    update = document.get("update") or []
    layers = document.get("layers") or []
    trained = sum(int(r.get("trained_elements") or 0) for r in layers)
    solver = document.get("solver")
    head = None if peak is None or budget is None else int(budget) - int(peak)
    head_text = "n/a" if head is None else (_bytes(head) if head >= 0 else f"over by {_bytes(-head)}")
    cards = [
        ("peak", _bytes(peak), f"{_int(peak)} B at {document.get('peak_at')}"),
        ("budget", _bytes(budget), f"{_int(budget)} B, {_fraction(peak or 0, budget or 0)} used"),
        ("headroom", head_text, "budget − peak"),
        ("groups selected", f"{_int(groups.get('selected'))} / {_int(groups.get('total'))}",
         "decision units of the planner") if groups.get("total") else
        ("weight groups trained",
         f"{_int(sum(int(r.get('groups_selected') or 0) for r in layers))} / "
         f"{_int(sum(int(r.get('groups_total') or 0) for r in layers))}", "from layers[] (fixed set)"),
        ("tensors trained", _int(len(update)), f"{_int(trained)} elements in weight layers"),
        ("solver", "none" if not solver else f"{solver.get('status')}",
         "fixed strategy" if not solver else f"{solver.get('name')}"),
        ("FLOPs per step", _si(sum(int(v or 0) for k, v in (document.get("flops") or {}).items()
                                   if k in ("forward", "backward")), "FLOP"), "forward + backward"),
        ("latency", _seconds(document.get("latency_s")), "throughput estimate"),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div><div class="d">{_e(d)}</div>'
        f'</div>' for k, v, d in cards) + "</div>"


def render_html(document: dict[str, Any]) -> str:
    """The plan ``document`` (see docs/plan-format.md) as one self-contained, deterministic HTML page."""
    model = (document.get("model") or {}).get("source", "?")
    target = document.get("target") or {}
    fits = document.get("fits")
    verdict = ('<span class="badge ok verdict">fits</span>' if fits else
               '<span class="badge bad verdict">does not fit</span>')
    peak, budget = document.get("peak_bytes"), document.get("budget_bytes")
    notes = document.get("notes") or []
    notes_html = ('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>") if notes else \
        '<p class="muted">No notes.</p>'
    title = f"budgetplan plan: {model} on {target.get('name')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f'<header><h1 class="model">{_e(model)}</h1>',
        f'<p class="sub">training plan for <b>{_e(target.get("name"))}</b> ({_e(target.get("family"))}) · '
        f'budget <b>{_e(_bytes(budget))}</b> · peak <b>{_e(_bytes(peak))}</b> '
        f'({_e(_fraction(peak or 0, budget or 0))} of the budget) · {verdict} · strategy '
        f'{_e(document.get("strategy"))}, optimizer {_e(document.get("optimizer"))}</p></header>',
        _cards(document),
        '<section id="timeline"><h2>Memory over the training step</h2>',
        _timeline_svg(document),
        _legend(),
        '<p class="caption">Live bytes at every point of the schedule (<code>timeline[]</code>), stacked by '
        'kind; the line is the total (<code>live_bytes</code>). Hover the chart for each point.</p></section>',
        '<section id="layers"><h2>Per layer</h2>', _layers_table(document), "</section>",
        '<section id="groups"><h2>Selected neuron groups</h2>', _group_map(document), "</section>",
        '<section id="memory"><h2>Memory breakdown</h2>', _memory_table(document), "</section>",
        '<div class="grid2">',
        '<section id="solver"><h2>Solver</h2>', _solver_block(document), "</section>",
        '<section id="compute"><h2>Compute</h2>', _compute_table(document), "</section>",
        "</div>",
        '<section id="notes"><h2>Notes</h2>', notes_html, "</section>",
        '<section id="identity"><h2>Plan</h2>', _identity(document), "</section>",
        f'<footer>budgetplan {_e(document.get("budgetplan_version"))} · {_e(document.get("format"))} '
        f'v{_e(document.get("version"))}</footer>',
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"
