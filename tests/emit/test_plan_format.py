"""The plan file (docs/plan-format.md) and the CI gate (docs/ci.md) stay true.

* The JSON Schema is the file shipped in the package (``budgetplan schema plan`` prints it; the doc
  links it) and is applied with jsonschema's reference validator: every plan ``analyze`` writes
  (strategies, targets, optimizers, options) validates and reads back, broken documents do not, and
  ``read_plan`` refuses each of them in one line. The doc's field tables list exactly the document's
  keys, in order.
* ``analyze --out`` twice gives byte-identical files, with no wall-clock time in them, and the HTML it
  writes beside them is ``render_html`` of that plan file.
* Every ``budgetplan ...`` command line in docs/ci.md uses only commands and options that exist (read
  from the typer app), and the doc's tinycnn walk-through runs with the exit codes it states.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
from typer.testing import CliRunner

from budgetplan.cli import app
from budgetplan.emit.plan_file import read_plan
from budgetplan.errors import InputError
from budgetplan.pipeline import analyze_model
from budgetplan.emit.report_html import render_html
from budgetplan.schemas import is_valid, load_schema

ROOT = Path(__file__).resolve().parents[2]
PLAN_DOC = ROOT / "docs" / "plan-format.md"
CI_DOC = ROOT / "docs" / "ci.md"
ENV = {"COLUMNS": "200", "OMP_NUM_THREADS": "1"}
KINDS = ("activations", "weights", "gradients", "optimizer", "other")


# --------------------------------------------------------------------------------------------------
# the schema: shipped in the package, printed by `budgetplan schema plan`, linked from the doc
# --------------------------------------------------------------------------------------------------


def plan_schema() -> dict[str, Any]:
    return load_schema("plan")


def reference_errors(document: Any) -> list[str]:
    """The errors of the reference implementation (jsonschema's draft 2020-12 validator, without the
    fast paths budgetplan.schemas adds for long integer arrays)."""
    return [e.message for e in jsonschema.Draft202012Validator(plan_schema()).iter_errors(document)]


def doc_example() -> dict[str, Any]:
    blocks = re.findall(r"```json\n(.*?)```", PLAN_DOC.read_text(encoding="utf-8"), re.DOTALL)
    (example,) = [json.loads(b) for b in blocks if '"format": "budgetplan-plan"' in b]
    return example


def test_the_doc_links_the_one_shipped_schema() -> None:
    text = PLAN_DOC.read_text(encoding="utf-8")
    assert "planner/schemas/plan.schema.json" in text and "budgetplan schema plan" in text
    blocks = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
    assert not any('"$schema"' in b for b in blocks), "the doc must link the schema file, not hold a copy"
    shipped = ROOT / "planner" / "schemas" / "plan.schema.json"
    printed = invoke("schema", "plan")
    assert printed.exit_code == 0 and printed.stdout == shipped.read_text(encoding="utf-8")
    jsonschema.Draft202012Validator.check_schema(plan_schema())


def test_the_schema_enums_are_budgetplans_own_lists() -> None:
    from budgetplan.pricing.host.exact import OPTIMIZERS
    from budgetplan.selection.solver import STATUSES
    from budgetplan.selection.planner import STRATEGIES, SCORE_KINDS
    from budgetplan.targets import FAMILIES

    props = plan_schema()["properties"]
    (solver,) = [branch for branch in props["solver"]["anyOf"] if branch.get("type") == "object"]
    assert set(props["optimizer"]["enum"]) == set(OPTIMIZERS)
    assert set(solver["properties"]["status"]["enum"]) == set(STATUSES)
    assert set(props["strategy"]["enum"]) == set(STRATEGIES) | {"config"}
    assert set(props["scores"]["enum"]) == set(SCORE_KINDS) | {"user", "-"}
    assert set(props["target"]["properties"]["family"]["enum"]) == set(FAMILIES)


# --------------------------------------------------------------------------------------------------
# real plans
# --------------------------------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=ENV, catch_exceptions=False)


@pytest.fixture(scope="module")
def cli_plans(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``analyze --out`` twice into two files (the second with --force over an existing file), plus --html."""
    d = tmp_path_factory.mktemp("plans")
    first, second, page = d / "a.json", d / "b.json", d / "a.html"
    second.write_text("stale")
    r1 = invoke("analyze", "tinycnn", "--target", "cortex-m7", "--ram", "64k", "--out", str(first),
                "--html", str(page))
    r2 = invoke("analyze", "tinycnn", "--target", "cortex-m7", "--ram", "64k", "--out", str(second), "--force")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    return first, second, page


@pytest.fixture(scope="module")
def plans(cli_plans: tuple[Path, Path, Path]) -> dict[str, dict[str, Any]]:
    """Plans that cover every nullable field in both states."""
    return {
        "ilp": json.loads(cli_plans[0].read_text(encoding="utf-8")),
        "infeasible": analyze_model("tinycnn", target="cortex-m7", ram="8k").document,
        "greedy-g4": analyze_model("tinycnn", target="cortex-m7", ram="64k", strategy="greedy",
                                   group_size=4).document,
        "host-full": analyze_model("tinycnn", target="host", strategy="full").document,
    }


def test_analyze_out_is_byte_identical_and_has_no_clock(cli_plans: tuple[Path, Path, Path]) -> None:
    first, second, _ = cli_plans
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text(encoding="utf-8")
    assert text.endswith("}\n") and not text.endswith("\n\n")
    document = json.loads(text)
    assert set(document["solver"]) == {"name", "status", "objective", "gap", "variables"}  # no "seconds"
    assert not re.search(r"\b20\d\d-\d\d-\d\d|\d\d:\d\d:\d\d", text)  # no dates or times of day
    assert str(first.parent) not in text


def test_the_html_report_is_the_plan_file_rendered(cli_plans: tuple[Path, Path, Path]) -> None:
    first, _, page = cli_plans
    assert page.read_text(encoding="utf-8") == render_html(json.loads(first.read_text(encoding="utf-8")))


def test_real_plans_validate_against_the_schema(plans: dict[str, dict[str, Any]]) -> None:
    for name, document in plans.items():
        assert reference_errors(document) == [], name
        assert is_valid(document, "plan"), name
    # the plans cover both states of every nullable field
    assert plans["ilp"]["solver"]["status"] == "optimal" and plans["ilp"]["bound_peak_bytes"] is not None
    assert plans["infeasible"]["solver"]["status"] == "infeasible"
    assert plans["infeasible"]["solver"]["objective"] is None and plans["infeasible"]["solver"]["gap"] is None
    assert plans["greedy-g4"]["solver"] is None and plans["greedy-g4"]["bound_peak_bytes"] is not None
    assert plans["host-full"]["solver"] is None and plans["host-full"]["bound_peak_bytes"] is None
    assert any(u["channels"] is None for document in plans.values() for u in document["update"])
    # (a channel list validates in test_every_plan_analyze_writes_validates_and_reads_back and test_schemas)


ROUND_TRIPS = [
    ["--target", "cortex-m7", "--ram", "64k"],
    ["--target", "cortex-m7", "--ram", "64k", "--strategy", "greedy", "--group-size", "3"],
    ["--target", "cortex-m7", "--ram", "64k", "--strategy", "random", "--seed", "5", "--no-reorder"],
    ["--target", "cortex-m4", "--ram", "96k", "--strategy", "bias-only", "--optimizer", "adam"],
    ["--target", "cortex-m7", "--ram", "128k", "--strategy", "last-k", "--last-k", "2"],
    ["--target", "cortex-m7", "--ram", "8k"],  # nothing fits: exit 1, the plan is written anyway
    ["--target", "host", "--ram", "1M", "--strategy", "full", "--optimizer", "sgd-momentum"],
    ["--target", "host", "--ram", "512k", "--objective", "uniform"],
    ["--target", "raspberry-pi-4", "--ram", "2M", "--max-flops", "9000000"],
    ["--target", "cortex-m55", "--ram", "48k", "--strategy", "config:{sparse}"],
    ["--target", "cortex-m7", "--ram", "64k", "--no-inplace", "--no-fuse-update"],  # "inplace"/"fuse_update": false
    ["--target", "cortex-m4", "--ram", "96k", "--no-fuse-update", "--strategy", "greedy", "--no-reorder"],
]


def test_every_plan_analyze_writes_validates_and_reads_back(tmp_path: Path) -> None:
    """The round trip: each `analyze --out` file validates (reference validator) and `read_plan` and
    `check --plan` accept it."""
    sparse = tmp_path / "sparse.json"
    sparse.write_text(json.dumps({"n_bias_update": 2, "manual_weight_idx": [2], "weight_update_ratio": [0.5]}))
    for i, args in enumerate(ROUND_TRIPS):
        out = tmp_path / f"plan{i}.json"
        argv = [a.format(sparse=sparse) for a in args]
        result = invoke("analyze", "tinycnn", *argv, "--out", str(out))
        assert result.exit_code in (0, 1), (argv, result.output)
        document = json.loads(out.read_text(encoding="utf-8"))
        assert reference_errors(document) == [], (argv, reference_errors(document)[:3])
        for flag, key in (("--no-inplace", "inplace"), ("--no-fuse-update", "fuse_update")):
            assert document.get(key, True) is (flag not in argv), (argv, key)
        assert read_plan(out) == document
        target = argv[argv.index("--target") + 1]
        checked = invoke("check", "tinycnn", "--target", target, "--ram", "4M", "--plan", str(out))
        assert checked.exit_code in (0, 1), (argv, checked.output)
        assert "PASS plan" in checked.stdout or "FAIL plan" in checked.stdout, checked.stdout


def test_what_the_schema_cannot_say(plans: dict[str, dict[str, Any]]) -> None:
    """The invariants the doc states below the schema."""
    for name, d in plans.items():
        timeline = d["timeline"]
        for p in timeline:
            assert p["live_bytes"] == sum(p[k] for k in KINDS), name
        assert d["peak_bytes"] == max(p["live_bytes"] for p in timeline), name
        assert any(f"{p['phase']}:{p['label']}" == d["peak_at"] and p["live_bytes"] == d["peak_bytes"]
                   for p in timeline), name
        assert sum(d["memory_at_peak"].values()) == d["peak_bytes"], name
        assert d["fits"] == (d["peak_bytes"] <= d["budget_bytes"]), name
        assert d["flops"]["backward"] == d["flops"]["backward_to_activations"] + d["flops"]["backward_to_parameters"]
        size = d["model"]["group_size"]
        channels = {u["parameter"]: u["channels"] for u in d["update"]}
        for layer in d["layers"]:
            want = (0 if layer["weight"] not in channels else layer["groups_total"]
                    if channels[layer["weight"]] is None else len({c // size for c in channels[layer["weight"]]}))
            assert layer["groups_selected"] == want, (name, layer["layer"])
        if d["bound_peak_bytes"] is not None and d["update"]:
            assert d["bound_peak_bytes"] >= d["peak_bytes"], name
        for u in d["update"]:
            if u["channels"] is not None:
                assert u["channels"] == sorted(set(u["channels"])), name


def _broken(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for key in document:
        d = copy.deepcopy(document)
        del d[key]
        cases.append((f"no {key}", d))

    def case(label: str, change: Any) -> None:
        d = copy.deepcopy(document)
        change(d)
        cases.append((label, d))

    case("budget as text", lambda d: d.update(budget_bytes="64k"))
    case("budget as float", lambda d: d.update(budget_bytes=65536.5))
    case("fits as text", lambda d: d.update(fits="yes"))
    case("version 2", lambda d: d.update(version=2))
    case("version true", lambda d: d.update(version=True))
    case("another format", lambda d: d.update(format="other-plan"))
    case("peak null", lambda d: d.update(peak_bytes=None))
    case("negative live bytes", lambda d: d["timeline"][0].update(live_bytes=-1))
    case("unknown phase", lambda d: d["timeline"][-1].update(phase="idle"))
    case("reorder as text", lambda d: d.update(reorder="false"))
    case("reorder as 0", lambda d: d.update(reorder=0))
    case("in-place option as text", lambda d: d.update(inplace="false"))
    case("fused-update option as 1", lambda d: d.update(fuse_update=1))
    case("model a list", lambda d: d.update(model=[1]))
    case("group size as text", lambda d: d["model"].update(group_size="abc"))
    case("group size true", lambda d: d["model"].update(group_size=True))
    case("duplicate channels", lambda d: d["update"][0].update(channels=[0, 1, 1]))
    case("empty channel list", lambda d: d["update"][0].update(channels=[]))
    case("channel true", lambda d: d["update"][0].update(channels=[True]))
    case("update entry without channels", lambda d: d["update"][0].pop("channels"))
    case("budget beyond int64", lambda d: d.update(budget_bytes=2**64))
    case("input shape with a 0", lambda d: d["model"]["input_shapes"].update(x=[1, 0, 32, 32]))
    case("timeline point without kinds", lambda d: d["timeline"][0].pop("gradients"))
    case("channels 'all'", lambda d: d["update"][0].update(channels="all"))
    case("channel -1", lambda d: d["update"][-1].update(channels=[-1]))
    case("parameter not a string", lambda d: d["update"][0].update(parameter=3))
    case("layer without groups_total", lambda d: d["layers"][0].pop("groups_total"))
    case("memory without weights", lambda d: d["memory"].pop("weights"))
    case("flops as float", lambda d: d["flops"].update(forward=1.5))
    case("solver status unknown", lambda d: d["solver"].update(status="done"))
    case("solver a list", lambda d: d.update(solver=[]))
    case("fingerprint md5", lambda d: d["model"].update(fingerprint="md5:abc"))
    case("group size 0", lambda d: d["model"].update(group_size=0))
    case("input shape not a list", lambda d: d["model"]["input_shapes"].update(x="1x3x32x32"))
    case("notes not strings", lambda d: d.update(notes=[1]))
    case("optimizer unknown", lambda d: d.update(optimizer="rmsprop"))
    return cases


def test_the_schema_rejects_broken_documents(plans: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    document = plans["ilp"]
    cases = _broken(document)
    assert len(cases) > len(document) + 20
    path = tmp_path / "broken.json"
    for label, broken in cases:
        assert reference_errors(broken), f"the schema accepted a document with {label}"
        assert not is_valid(broken, "plan"), f"budgetplan's validator accepted a document with {label}"
        path.write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(InputError) as info:
            read_plan(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), label
    # and what the format allows: extra fields (versioning rule), nulls where documented
    extra = copy.deepcopy(document)
    extra["future_field"] = {"anything": 1}
    extra["layers"][0]["annotation"] = "ok"
    assert reference_errors(extra) == [] and is_valid(extra, "plan")
    nullable = copy.deepcopy(document)
    nullable.update(solver=None, bound_peak_bytes=None)
    nullable["update"][0]["channels"] = None
    assert reference_errors(nullable) == [] and is_valid(nullable, "plan")


def _documented_fields(section: str) -> list[str]:
    return re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE)


def test_the_field_tables_list_every_key_in_order(plans: dict[str, dict[str, Any]]) -> None:
    text = PLAN_DOC.read_text(encoding="utf-8")
    fields = text.split("## Fields", 1)[1].split("\n## ", 1)[0]
    sections = dict(re.findall(r"^### (.+?)\n(.*?)(?=^### |\Z)", fields, re.MULTILINE | re.DOTALL))
    d = plans["ilp"]
    expected = {
        "Top level": list(d),
        "`model`": list(d["model"]),
        "`target`": list(d["target"]),
        "`memory` and `memory_at_peak`": list(d["memory"]),
        "`flops`": list(d["flops"]),
        "`groups`": list(d["groups"]),
        "`update[]`": list(d["update"][0]),
        "`layers[]`": list(d["layers"][0]),
        "`solver`": list(d["solver"]),
        "`timeline[]`": list(d["timeline"][0]),
    }
    assert set(sections) == set(expected)
    for title, keys in expected.items():
        assert _documented_fields(sections[title]) == keys, title
    assert list(d["memory_at_peak"]) == list(d["memory"])
    # the schema requires every field the plans have, in order; its other properties are the runtime
    # options later releases record next to `reorder` (booleans when present)
    schema = plan_schema()
    assert schema["required"] == [k for k in d if k in schema["required"]]
    assert set(d) <= set(schema["properties"])
    for extra in set(schema["properties"]) - set(schema["required"]):
        assert schema["properties"][extra] == {"type": "boolean"}, extra


def test_the_doc_example_has_the_shape_of_a_fresh_plan(plans: dict[str, dict[str, Any]]) -> None:
    example, actual = doc_example(), plans["ilp"]
    assert reference_errors(example) == []

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shape(value[0])] if value and isinstance(value[0], dict) else "list"
        return type(value).__name__ if value is not None else "null"

    assert shape(example) == shape(actual)
    for key in ("format", "version", "budgetplan_version", "model", "target", "budget_bytes", "strategy",
                "scores", "optimizer", "reorder", "fits", "notes"):
        assert example[key] == actual[key], key
    # the cut-down timeline keeps the first and the last point of a real plan's schedule
    assert example["timeline"][0]["label"] == actual["timeline"][0]["label"]
    assert example["timeline"][-1]["label"] == actual["timeline"][-1]["label"] == "end of step"


# --------------------------------------------------------------------------------------------------
# docs/ci.md
# --------------------------------------------------------------------------------------------------


def _code_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", text, re.MULTILINE | re.DOTALL)


def _logical_lines(lang: str, body: str) -> list[str]:
    """Lines with shell continuations joined, and YAML folded scalars (``key: >-``) joined."""
    lines = body.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if lang == "yaml" and re.search(r":\s*>-?\s*$", line):
            indent = len(line) - len(line.lstrip())
            parts = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                parts.append(lines[i].strip())
                i += 1
            out.append(" ".join(p for p in parts if p))
            continue
        while i + 1 < len(lines) and (line.rstrip().endswith("\\") or (
                lang == "text" and lines[i + 1].lstrip().startswith("["))):  # a synopsis goes on
            i += 1
            line = line.rstrip().rstrip("\\") + " " + lines[i].strip()
        out.append(line)
        i += 1
    return out


def ci_commands() -> list[list[str]]:
    """Every ``budgetplan SUBCOMMAND ...`` command line in the code blocks of docs/ci.md, tokenised."""
    commands = []
    for lang, body in _code_blocks(CI_DOC.read_text(encoding="utf-8")):
        if lang not in ("sh", "yaml", "text"):
            continue
        for line in _logical_lines(lang, body):
            m = re.search(r"(?:^|[\s/:])budgetplan\s+(?=[a-z-])(.*)$", line)
            if not m or "pip install" in line:
                continue
            rest = re.split(r"\s+#\s", m.group(1))[0]
            commands.append(["budgetplan", *shlex.split(rest)])
    return commands


def test_every_command_line_in_ci_doc_uses_real_options() -> None:
    group = typer.main.get_command(app)
    commands = ci_commands()
    assert len(commands) >= 8
    seen = set()
    for tokens in commands:
        name = tokens[1]
        assert name in group.commands, f"no command '{name}': {' '.join(tokens)}"
        seen.add(name)
        command = group.commands[name]
        options = {opt: p for p in command.params for opt in p.opts + p.secondary_opts if opt.startswith("-")}
        positional = [p for p in command.params if not any(o.startswith("-") for o in p.opts)]
        args = tokens[2:]
        i, positionals = 0, 0
        while i < len(args):
            token = args[i]
            if token.startswith("-") and token not in ("-",):
                if token.startswith("[") or token == "--help":
                    i += 1
                    continue
                opt = token.split("=", 1)[0]
                assert opt in options, f"'{name}' has no option {opt}: {' '.join(tokens)}"
                param = options[opt]
                if not getattr(param, "is_flag", False) and "=" not in token:
                    assert i + 1 < len(args) and not args[i + 1].startswith("--"), f"{opt} needs a value"
                    i += 1
            elif token.startswith("["):  # the synopsis: [--option VALUE] groups
                for opt in re.findall(r"--[a-z-]+", " ".join(args[i:])):
                    assert opt in options, f"'{name}' has no option {opt} (synopsis)"
                break
            else:
                positionals += 1
            i += 1
        assert positionals <= len(positional), f"too many arguments: {' '.join(tokens)}"
    assert {"check", "analyze"} <= seen
    # the options the brief of this doc promises are there
    text = CI_DOC.read_text(encoding="utf-8")
    for opt in ("--plan", "--min-update", "--junit"):
        assert opt in {o for p in group.commands["check"].params for o in p.opts} and opt in text
    for code in ("0", "1", "2", "3"):
        assert re.search(rf"^\| {code} \| ", text, re.MULTILINE), code


def test_the_ci_doc_walkthrough_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = CI_DOC.read_text(encoding="utf-8")
    section = text.split("### Try it on a built-in model", 1)[1].split("\n## ", 1)[0]
    (lang, body), output, junit_block = _code_blocks(section)[:3]
    lines = [line for line in _logical_lines(lang, body) if line.strip()]
    assert [shlex.split(line)[:2] for line in lines] == [["budgetplan", "analyze"]] + [["budgetplan", "check"]] * 3
    monkeypatch.chdir(tmp_path)
    results = [invoke(*shlex.split(line)[1:]) for line in lines]
    assert [r.exit_code for r in results] == [0, 0, 1, 2], [r.output for r in results]
    # the printed lines, numbers aside
    def pattern(line: str) -> str:
        return re.sub(r"\\ ", " ", re.sub(r"\d+(?:\\\.\d+)?", r"\\d+(?:\\.\\d+)?", re.escape(line)))

    printed = results[1].stdout.strip().splitlines()
    documented = output[1].strip().splitlines()
    assert len(printed) == len(documented)
    for got, want in zip(printed, documented):
        assert re.fullmatch(pattern(want), got), (got, want)
    # the JUnit file of the failing run: one failure, for the plan
    root = ET.parse(tmp_path / "budgetplan-junit.xml").getroot()
    assert root.tag == "testsuite" and root.attrib["failures"] == "1"
    failed = [tc.attrib["name"] for tc in root.iter("testcase") if tc.find("failure") is not None]
    assert failed == ["plan"]
    # the doc's JUnit example is what the passing run writes (rewritten here from a fresh run)
    assert invoke(*shlex.split(lines[1])[1:], "--force").exit_code == 0
    assert (tmp_path / "budgetplan-junit.xml").read_text(encoding="utf-8") == junit_block[1]
