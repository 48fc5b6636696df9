"""The HTML report (``budgetplan analyze --html``): structure checked on the parsed page.

The page is parsed with the stdlib ``html.parser`` into a small tree; the assertions recompute what the
page must show from the plan document itself (the timeline's points and scale, the budget line, the
exact positions of the selected neuron groups from ``update[]``), so a drawing that drifts from the
document fails. A real plan (tinycnn on a Cortex-M7 with 32 KiB) and hand-made documents (hostile
strings, group size 2, a budget far above the peak, a 300-layer model) are rendered.

When Debian's ``chromium`` is installed, a real browser renders the page to a PNG; without it that test
is reported as skipped (not passed).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import struct
import subprocess
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from budgetplan.pipeline import analyze_model
from budgetplan.emit.report_html import render_html

CATEGORIES = ("activations", "weights", "gradients", "optimizer", "other")
HOSTILE = "<script>alert(1)</script>"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# --------------------------------------------------------------------------------------------------
# a tiny DOM on html.parser
# --------------------------------------------------------------------------------------------------


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [n for n in self.iter() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)]

    def find(self, tag: str | None = None, cls: str | None = None) -> Node:
        found = self.find_all(tag, cls)
        assert found, f"no <{tag} class={cls}>"
        return found[0]

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if self.current.tag != tag:
            self.problems.append(f"</{tag}> closes <{self.current.tag}>")
            node = self.current
            while node is not None and node.tag != tag:
                node = node.parent
            if node is None:
                return
            self.current = node
        assert self.current.parent is not None
        self.current = self.current.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(page: str) -> Node:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.problems == [], builder.problems[:5]
    assert builder.current is builder.root, f"<{builder.current.tag}> never closed"
    return builder.root


def points(attr: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in (p.split(",") for p in attr.split())]


def section(root: Node, section_id: str) -> Node:
    (node,) = [n for n in root.find_all("section") if n.attrs.get("id") == section_id]
    return node


def expected_groups(document: dict[str, Any]) -> list[set[int]]:
    """The selected group indices per ``layers[]`` entry, from ``update[]`` alone."""
    size = document["model"]["group_size"]
    channels = {u["parameter"]: u["channels"] for u in document["update"]}
    out = []
    for layer in document["layers"]:
        if layer["weight"] not in channels:
            out.append(set())
        elif channels[layer["weight"]] is None:
            out.append(set(range(layer["groups_total"])))
        else:
            out.append({c // size for c in channels[layer["weight"]]})
    return out


def drawn_groups(row: Node) -> tuple[set[int], int]:
    """(the group indices drawn filled in a group-map row, the strip's cell count), checked for geometry."""
    strips = row.find_all("svg", "strip")
    if not strips:
        return set(), 0
    (strip,) = strips
    pitch, per_line = int(strip.attrs["data-pitch"]), int(strip.attrs["data-per-line"])
    total = int(strip.attrs["data-total"])
    off_cells = sum(float(r.attrs["width"]) for r in strip.find_all("rect", "off")) / pitch
    assert off_cells == pytest.approx(total)
    chosen: set[int] = set()
    for rect in strip.find_all("rect", "on"):
        first, cells = int(rect.attrs["data-first"]), int(rect.attrs["data-cells"])
        # the rectangle is where those cells are: column and line of the first, width of `cells` cells
        assert float(rect.attrs["x"]) == (first % per_line) * pitch
        assert float(rect.attrs["y"]) == (first // per_line) * pitch
        assert cells * pitch - pitch < float(rect.attrs["width"]) <= cells * pitch
        assert first // per_line == (first + cells - 1) // per_line, "a run must not cross a line end"
        run = set(range(first, first + cells))
        assert not run & chosen
        chosen |= run
    assert all(0 <= g < total for g in chosen)
    return chosen, total


# --------------------------------------------------------------------------------------------------
# documents
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_doc() -> dict[str, Any]:
    document = analyze_model("tinycnn", target="cortex-m7", ram="32k").document
    # the plan this file relies on: something trained, part of a layer, solved by a solver
    assert document["solver"] is not None and document["fits"]
    assert any(u["channels"] is not None for u in document["update"])
    return document


@pytest.fixture(scope="module")
def tiny_page(tiny_doc: dict[str, Any]) -> str:
    return render_html(tiny_doc)


def hostile_document() -> dict[str, Any]:
    """A small hand-made plan with hostile strings everywhere and group size 2."""
    def point(phase: str, label: str, act: int, w: int, g: int) -> dict[str, Any]:
        return {"phase": phase, "label": label, "live_bytes": act + w + g, "activations": act, "weights": w,
                "gradients": g, "optimizer": 0, "other": 0}

    bad_layer = 'conv"><img src=x onerror=alert(2)>'
    return {
        "format": "budgetplan-plan", "version": 1, "budgetplan_version": "0.1.0",
        "model": {"source": HOSTILE, "fingerprint": "sha256:" + "0" * 64, "input_shapes": {"x": [1, 3, 8, 8]},
                  "group_size": 2},
        "target": {"name": "<b>board</b>", "family": "mcu"},
        "budget_bytes": 4096, "strategy": "ilp", "scores": "params", "optimizer": "sgd", "reorder": True,
        "fits": True, "peak_bytes": 3000, "peak_at": f"backward:{bad_layer}", "bound_peak_bytes": 3100,
        "memory": {"activations": 1000, "weights": 500, "gradients": 1500, "optimizer": 0, "other": 0},
        "memory_at_peak": {"activations": 1000, "weights": 500, "gradients": 1500, "optimizer": 0, "other": 0},
        "flops": {"forward": 1000, "backward": 800, "backward_to_activations": 300, "backward_to_parameters": 500},
        "latency_s": 0.001, "objective": 42.0, "groups": {"selected": 3 + 5 + 50, "total": 5 + 5 + 300 + 4},
        "update": [
            {"parameter": f"{bad_layer}.weight", "channels": [0, 1, 5, 9]},  # groups 0, 2, 4
            {"parameter": "fc.weight", "channels": None},
            {"parameter": "big.weight", "channels": list(range(200, 300))},  # groups 100-149: crosses 128
            {"parameter": "</td><script>alert(3)</script>.bias", "channels": None},
        ],
        "layers": [
            {"layer": bad_layer, "op": "<conv2d>", "weight": f"{bad_layer}.weight", "groups_total": 5,
             "groups_selected": 3, "trained_elements": 120, "flops": 600},
            {"layer": "fc", "op": "linear", "weight": "fc.weight", "groups_total": 5, "groups_selected": 5,
             "trained_elements": 50, "flops": 100},
            {"layer": "big", "op": "linear", "weight": "big.weight", "groups_total": 300, "groups_selected": 50,
             "trained_elements": 500, "flops": 300},
            {"layer": "frozen", "op": "conv2d", "weight": "frozen.weight", "groups_total": 4,
             "groups_selected": 0, "trained_elements": 0, "flops": 0},
        ],
        "solver": {"name": "highs", "status": "feasible<i>", "objective": 42.0, "gap": 0.015, "variables": 9},
        "timeline": [point("forward", bad_layer, 1000, 500, 0), point("forward", "fc", 1200, 500, 0),
                     point("backward", "fc", 800, 500, 1000), point("backward", bad_layer, 1000, 500, 1500),
                     point("step", "end of step <&>", 0, 500, 0)],
        "notes": [HOSTILE, "a & b < c"],
    }


# --------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------


def test_page_is_balanced_and_self_contained(tiny_page: str, tiny_doc: dict[str, Any]) -> None:
    root = parse(tiny_page)
    assert tiny_page.startswith("<!DOCTYPE html>")
    assert root.find("title").text().startswith(f"budgetplan plan: {tiny_doc['model']['source']}")
    assert root.find("h1").text() == tiny_doc["model"]["source"]
    assert "fits" in root.find("span", "verdict").text()
    # nothing is fetched: no URLs, no src/href attributes, no style sheets or scripts from elsewhere
    for pattern in (r"https?://", r"\bsrc\s*=", r"\bhref\s*=", r"@import", r"<link\b", r"<script\b",
                    r"url\((?!#)"):
        assert not re.search(pattern, tiny_page, re.IGNORECASE), pattern
    assert not root.find_all("script") and not root.find_all("img") and not root.find_all("iframe")
    # every url(#id) points at something defined in the page
    ids = {n.attrs.get("id") for n in root.iter()}
    for ref in re.findall(r"url\(#([^)]+)\)", tiny_page):
        assert ref in ids, ref


def test_timeline_plots_every_point_stacked_by_kind(tiny_page: str, tiny_doc: dict[str, Any]) -> None:
    svg = parse(tiny_page).find("svg", "timeline")
    timeline = tiny_doc["timeline"]
    live = points(svg.find("polyline", "live").attrs["points"])
    assert len(live) == len(timeline) == int(svg.attrs["data-points"])
    xs = [x for x, _ in live]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    # y is one linear function of live_bytes (fit on the lowest and highest point, checked on all)
    lo = min(range(len(timeline)), key=lambda i: timeline[i]["live_bytes"])
    hi = max(range(len(timeline)), key=lambda i: timeline[i]["live_bytes"])
    slope = (live[hi][1] - live[lo][1]) / (timeline[hi]["live_bytes"] - timeline[lo]["live_bytes"])
    assert slope < 0  # more bytes, higher on the page
    for (_, y), p in zip(live, timeline):
        assert y == pytest.approx(live[lo][1] + slope * (p["live_bytes"] - timeline[lo]["live_bytes"]), abs=0.02)
    # one area per kind that is ever non-zero, stacked: the top of the last is the total line
    areas = svg.find_all("polygon", "area")
    drawn = [a.attrs["data-category"] for a in areas]
    assert drawn == [c for c in CATEGORIES if any(p[c] for p in timeline)]
    assert len(drawn) >= 2
    running = [0] * len(timeline)
    for area in areas:
        pts = points(area.attrs["points"])
        assert len(pts) == 2 * len(timeline)
        top, bottom = pts[: len(timeline)], pts[len(timeline):][::-1]
        cat = area.attrs["data-category"]
        for i, p in enumerate(timeline):
            assert bottom[i][1] == pytest.approx(live[lo][1] + slope * (running[i] - timeline[lo]["live_bytes"]),
                                                 abs=0.02)
            running[i] += p[cat]
            assert top[i] == pytest.approx((xs[i], live[lo][1] + slope * (running[i]
                                                                         - timeline[lo]["live_bytes"])), abs=0.02)
    assert [round(y, 2) for _, y in points(areas[-1].attrs["points"])[: len(timeline)]] == [y for _, y in live]
    # a tooltip per point
    assert len(svg.find_all("rect", "hit")) == len(timeline)


def test_budget_line_sits_at_the_budget_on_the_chart_scale(tiny_page: str, tiny_doc: dict[str, Any]) -> None:
    svg = parse(tiny_page).find("svg", "timeline")
    timeline = tiny_doc["timeline"]
    live = points(svg.find("polyline", "live").attrs["points"])
    lo = min(range(len(timeline)), key=lambda i: timeline[i]["live_bytes"])
    hi = max(range(len(timeline)), key=lambda i: timeline[i]["live_bytes"])
    slope = (live[hi][1] - live[lo][1]) / (timeline[hi]["live_bytes"] - timeline[lo]["live_bytes"])
    budget = tiny_doc["budget_bytes"]
    (line,) = svg.find_all("line", "budget")
    assert int(line.attrs["data-bytes"]) == budget
    assert float(line.attrs["y1"]) == float(line.attrs["y2"])
    expected = live[lo][1] + slope * (budget - timeline[lo]["live_bytes"])
    assert float(line.attrs["y1"]) == pytest.approx(expected, abs=0.05)
    # the same scale from the axis: the 0 tick sits at the bottom of the plot, ymax at its top
    top, height = float(svg.attrs["data-plot-top"]), float(svg.attrs["data-plot-height"])
    ymax = float(svg.attrs["data-ymax-bytes"])
    assert float(line.attrs["y1"]) == pytest.approx(top + height * (1 - budget / ymax), abs=0.01)
    assert ymax >= max(budget, tiny_doc["peak_bytes"])
    ticks = {float(t.attrs["data-bytes"]): float(t.attrs["y"]) - 4 for t in svg.find_all("text", "tick")}
    assert ticks[0.0] == pytest.approx(top + height) and ticks[max(ticks)] == pytest.approx(top)
    assert f"budget {budget / 1024:.1f} KiB" in svg.find("text", "budget-label").text()


def test_peak_and_phases_are_marked(tiny_page: str, tiny_doc: dict[str, Any]) -> None:
    svg = parse(tiny_page).find("svg", "timeline")
    timeline = tiny_doc["timeline"]
    live = points(svg.find("polyline", "live").attrs["points"])
    peak = svg.find("circle", "peak")
    index = int(peak.attrs["data-index"])
    p = timeline[index]
    assert f"{p['phase']}:{p['label']}" == tiny_doc["peak_at"] and p["live_bytes"] == tiny_doc["peak_bytes"]
    assert (float(peak.attrs["cx"]), float(peak.attrs["cy"])) == live[index]
    assert tiny_doc["peak_at"] in svg.find("text", "peak-label").text()
    # one band per run of a phase, covering exactly the x of that run's points
    runs: list[list[Any]] = []
    for i, q in enumerate(timeline):
        if runs and runs[-1][0] == q["phase"]:
            runs[-1][2] = i
        else:
            runs.append([q["phase"], i, i])
    bands = svg.find_all("rect", "phase")
    assert [b.attrs["data-phase"] for b in bands] == [r[0] for r in runs] == ["forward", "backward", "step"]
    for band, (_, first, last) in zip(bands, runs):
        x0, x1 = float(band.attrs["x"]), float(band.attrs["x"]) + float(band.attrs["width"])
        inside = [i for i, (x, _) in enumerate(live) if x0 < x < x1]
        assert inside == list(range(first, last + 1))
    labels = " ".join(t.text() for t in svg.find_all("text", "phase-label"))
    assert "forward" in labels and "backward" in labels and "step" in labels


def test_group_map_has_a_row_per_layer_with_exact_positions(tiny_page: str, tiny_doc: dict[str, Any]) -> None:
    rows = section(parse(tiny_page), "groups").find_all("tr", "gm-row")
    assert len(rows) == len(tiny_doc["layers"])
    expected = expected_groups(tiny_doc)
    filled = 0
    for row, layer, want in zip(rows, tiny_doc["layers"], expected):
        assert row.attrs["data-layer"] == layer["layer"]
        got, total = drawn_groups(row)
        assert total == layer["groups_total"]
        assert got == want, layer["layer"]
        assert len(got) == layer["groups_selected"]  # the document agrees with its own update[]
        filled += len(got)
    assert filled == sum(len(w) for w in expected) > 0
    assert any(0 < len(w) < layer["groups_total"] for w, layer in zip(expected, tiny_doc["layers"]))
    # update[] entries that are not a layer's weight are listed (tinycnn: a BatchNorm bias, fc.bias)
    others = {u["parameter"] for u in tiny_doc["update"]} - {layer["weight"] for layer in tiny_doc["layers"]}
    listed = section(parse(tiny_page), "groups").find("table", "other").text()
    assert others and all(name in listed for name in others)


def test_per_layer_bars(tiny_page: str, tiny_doc: dict[str, Any]) -> None:
    rows = section(parse(tiny_page), "layers").find_all("tr", "layer-row")
    assert len(rows) == len(tiny_doc["layers"])
    for row, layer in zip(rows, tiny_doc["layers"]):
        bar = row.find("div", "groups")
        assert (int(bar.attrs["data-selected"]), int(bar.attrs["data-total"])) == (
            layer["groups_selected"], layer["groups_total"])
        width = float(re.search(r"width:([\d.]+)%", bar.find("span", "sel").attrs["style"]).group(1))
        assert width == pytest.approx(100 * layer["groups_selected"] / layer["groups_total"], abs=0.01)
        assert f"{layer['trained_elements']:,}" in row.text()
        # memory while it runs: the largest timeline point labelled with the layer, stacked by kind
        pts = [p for p in tiny_doc["timeline"] if p["label"] == layer["layer"]]
        best = max(pts, key=lambda p: p["live_bytes"])
        segs = row.find("div", "stack").find_all("span", "seg")
        assert [s.attrs["data-category"] for s in segs] == [c for c in CATEGORIES if best[c]]
    assert "derived" in section(parse(tiny_page), "layers").find("p", "caption").text()


def test_solver_memory_compute_and_notes(tiny_page: str, tiny_doc: dict[str, Any]) -> None:
    root = parse(tiny_page)
    solver = section(root, "solver")
    assert solver.find("span", "solver-status").text() == tiny_doc["solver"]["status"] == "optimal"
    assert tiny_doc["solver"]["name"] in solver.text() and "0 %" in solver.text()
    memory = section(root, "memory")
    for row in memory.find_all("tr", "mem-row"):
        cat = row.attrs["data-category"]
        assert f"{tiny_doc['memory'][cat]:,} B" in row.text() and f"{tiny_doc['memory_at_peak'][cat]:,} B" in row.text()
    assert f"{tiny_doc['flops']['forward']:,}" in section(root, "compute").text()
    for note in tiny_doc["notes"]:
        assert note in section(root, "notes").text()


def test_hostile_strings_appear_only_escaped() -> None:
    document = hostile_document()
    page = render_html(document)
    root = parse(page)
    assert "<script" not in page.lower() and "<img" not in page.lower() and "<b>board" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not root.find_all("script") and not root.find_all("img") and not root.find_all("i")
    # no attribute was broken out of: nothing named on*, and the names come back intact as text/values
    assert not [n for n in root.iter() for a in n.attrs if a.startswith("on")]
    assert root.find("h1").text() == HOSTILE
    assert HOSTILE in root.find("title").text()
    rows = section(root, "groups").find_all("tr", "gm-row")
    assert rows[0].attrs["data-layer"] == document["layers"][0]["layer"]
    assert section(root, "solver").find("span", "solver-status").text() == "feasible<i>"
    assert HOSTILE in section(root, "notes").text() and "a & b < c" in section(root, "notes").text()
    assert "</td><script>alert(3)</script>.bias" in section(root, "groups").find("table", "other").text()


def test_group_size_two_and_runs_across_line_ends() -> None:
    document = hostile_document()
    root = parse(render_html(document))
    rows = section(root, "groups").find_all("tr", "gm-row")
    got = [drawn_groups(row)[0] for row in rows]
    assert got == [{0, 2, 4}, set(range(5)), set(range(100, 150)), set()]
    assert got == expected_groups(document)
    big = rows[2].find("svg", "strip")
    assert int(big.attrs["data-per-line"]) == 128 and float(big.attrs["height"]) == 3 * int(big.attrs["data-pitch"])
    runs = sorted((int(r.attrs["data-first"]), int(r.attrs["data-cells"])) for r in big.find_all("rect", "on"))
    assert runs == [(100, 28), (128, 22)]  # split at the end of the first line


def test_budget_far_above_the_peak_is_not_drawn_to_scale() -> None:
    document = hostile_document()
    document["budget_bytes"] = 8 * 1024**3
    svg = parse(render_html(document)).find("svg", "timeline")
    assert not svg.find_all("line", "budget")
    note = svg.find("text", "budget-offscale")
    assert int(note.attrs["data-bytes"]) == document["budget_bytes"] and "8.0 GiB" in note.text()
    assert float(svg.attrs["data-ymax-bytes"]) < 2 * document["peak_bytes"]


def test_rendering_is_deterministic_and_leaves_the_document_alone(tiny_doc: dict[str, Any]) -> None:
    before = json.dumps(tiny_doc, sort_keys=True)
    first = render_html(tiny_doc)
    assert render_html(copy.deepcopy(tiny_doc)) == first
    assert render_html(json.loads(json.dumps(tiny_doc))) == first  # as read back from the plan file
    assert json.dumps(tiny_doc, sort_keys=True) == before
    hostile = hostile_document()
    assert render_html(hostile) == render_html(hostile_document())


def test_a_large_model_stays_readable() -> None:
    """300 weight layers of 1280 groups and a 900-point timeline: strips wrap, the page stays bounded."""
    document = hostile_document()
    document["model"]["group_size"] = 1
    document["layers"] = [{"layer": f"blocks.{i}.conv", "op": "conv2d", "weight": f"blocks.{i}.conv.weight",
                           "groups_total": 1280, "groups_selected": 640 if i % 3 == 0 else 0,
                           "trained_elements": 1000, "flops": 10**6} for i in range(300)]
    # every third layer trained: contiguous halves, and every other channel in every 30th (the worst case)
    document["update"] = [{"parameter": f"blocks.{i}.conv.weight",
                           "channels": list(range(0, 1280, 2)) if i % 30 == 0 else list(range(320, 960))}
                          for i in range(0, 300, 3)]
    document["timeline"] = [dict(document["timeline"][i % 5], label=f"blocks.{i % 300}.conv")
                            for i in range(900)]
    started = time.perf_counter()
    page = render_html(document)
    assert time.perf_counter() - started < 10
    assert len(page) < 5_000_000
    root = parse(page)
    rows = section(root, "groups").find_all("tr", "gm-row")
    assert len(rows) == 300
    for row in rows[:6]:
        strip = row.find("svg", "strip")
        assert float(strip.attrs["width"]) <= 900 and int(strip.attrs["data-per-line"]) <= 128
        assert float(strip.attrs["height"]) == 10 * int(strip.attrs["data-pitch"])  # 1280 cells in 10 lines
    assert drawn_groups(rows[0])[0] == set(range(0, 1280, 2))
    assert drawn_groups(rows[3])[0] == set(range(320, 960)) and drawn_groups(rows[4])[0] == set()
    assert len(points(root.find("polyline", "live").attrs["points"])) == 900


# --------------------------------------------------------------------------------------------------
# a real browser
# --------------------------------------------------------------------------------------------------


def _png_facts(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the decompressed image data) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (apt-get install -y chromium): no browser "
                           "rendering of the report was checked")
def test_chromium_renders_the_report(tiny_page: str, tmp_path: Path) -> None:
    html_file = tmp_path / "report.html"
    html_file.write_text(tiny_page, encoding="utf-8")
    png = tmp_path / "report.png"
    cmd = [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1600", "--hide-scrollbars",
           f"--screenshot={png}", html_file.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    data = png.read_bytes()
    width, height, distinct = _png_facts(data)
    assert (width, height) == (1280, 1600)
    assert len(data) > 20_000 and distinct > 50  # a drawn page, not a blank one
