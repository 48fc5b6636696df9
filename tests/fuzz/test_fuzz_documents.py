"""Property-based fuzzing of the files budgetplan reads: plan files, update lists, tiny-training configs and
scores files — mutated from good ones, built from scratch, or raw bytes.

Beyond the invariants of :mod:`fuzz_support`, one property ties the readers to their schemas: a file
that a command accepts (exit 0 or 1) is valid under its JSON Schema, checked here by jsonschema's
reference validator (no reader may accept what the contract refuses, e.g. a truthy string).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource

from budgetplan.schemas import SCHEMAS, load_schema
from fuzz_support import SCORES, SPARSE_CONFIG, examples, plan_document, run_case, workdir

_REGISTRY = Registry().with_resources((load_schema(n)["$id"], Resource.from_contents(load_schema(n)))
                                      for n in SCHEMAS)


def reference_valid(document: Any, name: str) -> bool:
    """jsonschema's own draft 2020-12 validator on a shipped schema."""
    validator = jsonschema.Draft202012Validator(load_schema(name), registry=_REGISTRY)
    return next(iter(validator.iter_errors(document)), None) is None


# --------------------------------------------------------------------------------------------------
# JSON values, typed near misses, and edits of a document
# --------------------------------------------------------------------------------------------------

NEAR_MISSES = ["false", "true", "0", "1", "", "null", "NaN", "all", "64k", "1x3x32x32", 1.0, 0, 1, -1, 2**63,
               2**64, 10**30, 0.5, 1e308, True, False, None, [], {}, [0], [True], [0, 0], [-1], ["0"], {"a": 1}]
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=12) | st.sampled_from(NEAR_MISSES))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _paths(value: Any, prefix: tuple[Any, ...] = (), limit: int = 400) -> list[tuple[Any, ...]]:
    """Every place in a JSON document (objects and arrays, the first few items of long arrays)."""
    out = [prefix]
    if len(out) >= limit:
        return out
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, prefix + (key,), limit)
    elif isinstance(value, list):
        for i, item in enumerate(value[:3]):
            out += _paths(item, prefix + (i,), limit)
    return out


def _edit(document: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    document = copy.deepcopy(document)
    if not path:
        return value if how == "replace" else document
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if how == "replace":
        parent[key] = value
    elif how == "delete":
        del parent[key]
    elif how == "insert" and isinstance(parent, dict):
        parent[f"{key}_extra" if isinstance(key, str) else "extra"] = value
    elif how == "insert" and isinstance(parent, list):
        parent.insert(key, value)
    elif how == "repeat" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    return document


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


def _same_type(value: Any) -> Any:
    """Another value of the JSON type of ``value`` (a plausible hand edit)."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-3, 2**40) | st.sampled_from([0, 1, 2**31, 2**63 - 1, 2**63])
    if isinstance(value, float):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(value, str):
        return st.text(max_size=12) | st.sampled_from(["sgd", "adam", "ilp", "host", "forward:fc", "sha256:" + "0" * 64])
    if isinstance(value, list):
        return st.lists(st.integers(0, 80), max_size=6, unique=True) | st.just([])
    return json_values


@st.composite
def edited(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one to three edits at places drawn from it: a value replaced by any value or by
    one of the same type, a key or an item removed, added or repeated."""
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(document)))
        how = draw(st.sampled_from(["replace", "retype", "retype", "delete", "insert", "repeat"]))
        if how == "retype":
            document = _edit(document, path, "replace", draw(_same_type(_at(document, path))))
        else:
            document = _edit(document, path, how, draw(json_values))
    return document


@st.composite
def file_text(draw: st.DrawFn, document: Any) -> str:
    """The document as JSON, now and then damaged as text: cut short, a key twice, NaN, deep nesting."""
    text = json.dumps(document)
    damage = draw(st.integers(0, 19))
    if damage == 0 and text:
        return text[: draw(st.integers(0, len(text) - 1))]
    if damage == 1 and text.startswith("{") and len(text) > 2:
        return '{"format": "budgetplan-plan", ' + text[1:]  # possibly a key twice
    if damage == 2:
        return text.replace("0", "NaN", 1).replace("1", "Infinity", 1)
    if damage == 3:
        depth = draw(st.integers(20, 3000))
        return '{"update": ' + "[" * depth + "]" * depth + "}"
    if damage == 4:
        return "\ufeff" + text
    return text


# --------------------------------------------------------------------------------------------------
# plan files: check --plan, export --plan, estimate --update
# --------------------------------------------------------------------------------------------------

_PLAN = plan_document()


@settings(max_examples=examples(50))
@given(document=edited(_PLAN), data=st.data())
def test_fuzz_plan_files(document: Any, data: st.DataObject) -> None:
    text = data.draw(file_text(document))
    command = data.draw(st.sampled_from([["check", "tinycnn", "--ram", "64k", "--plan", "p.json"]] * 4
                                        + [["estimate", "tinycnn", "--target", "cortex-m7", "--update", "p.json"]]
                                        + [["export", "tinycnn", "--plan", "p.json", "--out", "build"]]))
    with workdir() as root:
        (root / "p.json").write_text(text, encoding="utf-8")
        result = run_case("plan files", command, root)
        if result.exit_code in (0, 1):
            parsed = json.loads(text.removeprefix("\ufeff"))
            kind = "plan" if command[0] != "estimate" or "format" in parsed else "update"
            assert reference_valid(parsed, kind), f"accepted a plan the schema refuses: {text[:300]}"


# --------------------------------------------------------------------------------------------------
# update lists and tiny-training configs: --update FILE, --strategy config:FILE
# --------------------------------------------------------------------------------------------------

CONFIG_KEYS = list(load_schema("config")["$defs"]["config"]["properties"])
config_values = st.one_of(
    json_values,
    st.integers(-2, 6), st.sampled_from(["all", "2-3", "0.5-0.25", "1-x", "2-2", " 3 ", "12-15-17"]),
    st.lists(st.integers(-1, 5), max_size=4), st.lists(st.floats(-1, 3), max_size=4),
)
configs = st.one_of(
    st.dictionaries(st.sampled_from(CONFIG_KEYS), config_values, max_size=6),
    st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=10), config_values, max_size=4),
    edited(SPARSE_CONFIG),
    st.dictionaries(st.sampled_from(CONFIG_KEYS), config_values, max_size=5).map(
        lambda c: {"backward_config": c, "run_config": {"n_epochs": 1}}),
)
update_lists = st.one_of(
    edited({"update": [{"parameter": "fc.weight", "channels": [0, 3]}, {"parameter": "fc.bias", "channels": None},
                       {"parameter": "features.8.weight", "channels": list(range(0, 64, 3))}]}),
    st.fixed_dictionaries({"update": st.lists(st.fixed_dictionaries(
        {"parameter": st.sampled_from(["fc.weight", "fc.bias", "features.8.weight", "features.0.weight", "nope"]),
         "channels": st.none() | st.lists(st.integers(-1, 70), max_size=6)}), max_size=4)}),
)


@settings(max_examples=examples(50))
@given(document=configs | update_lists | json_values, data=st.data())
def test_fuzz_update_and_config_files(document: Any, data: st.DataObject) -> None:
    text = data.draw(file_text(document))
    name = data.draw(st.sampled_from(["u.json", "u.yaml", "u.JSON"]))
    if name.endswith(".yaml"):  # JSON is YAML; now and then an alias bomb
        text = data.draw(st.sampled_from([text, text, 'a: &a ["x", "x"]\nb: &b [*a, *a]\nc: [*b, *b]\n']))
    command = data.draw(st.sampled_from([
        ["estimate", "tinycnn", "--target", "cortex-m7", "--update", name],
        ["estimate", "tinycnn", "--update", name, "--update", "fc.bias"],
        ["analyze", "tinycnn", "--ram", "128k", "--strategy", f"config:{name}"],
    ]))
    with workdir() as root:
        (root / name).write_text(text, encoding="utf-8")
        result = run_case("update and config files", command, root)
        if result.exit_code in (0, 1) and not name.endswith(".yaml"):
            parsed = json.loads(text.removeprefix("\ufeff"))
            if command[0] == "analyze":
                kind = "config"
            elif isinstance(parsed, dict) and "format" in parsed:
                kind = "plan"
            else:
                kind = "update" if isinstance(parsed, dict) and "update" in parsed else "config"
            assert reference_valid(parsed, kind), f"accepted a {kind} the schema refuses: {text[:300]}"


# --------------------------------------------------------------------------------------------------
# scores files: --objective FILE (JSON and tensor files)
# --------------------------------------------------------------------------------------------------

PARAMETERS = ["features.0.weight", "features.4.weight", "features.8.weight", "features.5.bias", "fc.weight",
              "fc.bias", "nope"]
score_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70),
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=0, max_size=70),
    st.lists(st.integers(0, 5), min_size=10, max_size=10), json_values)
scores = st.one_of(st.dictionaries(st.sampled_from(PARAMETERS), score_values, max_size=4), edited(SCORES),
                   json_values)


@settings(max_examples=examples(40))
@given(document=scores, data=st.data())
def test_fuzz_scores_files(document: Any, data: st.DataObject) -> None:
    as_tensors = data.draw(st.integers(0, 4)) == 0
    with workdir() as root:
        if as_tensors:
            import torch

            name = "s.pt"
            try:
                payload = {k: torch.tensor(v, dtype=torch.float64) for k, v in document.items()} \
                    if isinstance(document, dict) else torch.tensor(0.0)
            except (TypeError, ValueError, RuntimeError, OverflowError):
                payload = document
            torch.save(payload, root / name)
        else:
            name = "s.json"
            (root / name).write_text(data.draw(file_text(document)), encoding="utf-8")
        command = ["analyze", "tinycnn", "--ram", data.draw(st.sampled_from(["64k", "40k", "1M"])),
                   "--objective", name]
        result = run_case("scores files", command, root)
        if result.exit_code in (0, 1) and not as_tensors:
            parsed = json.loads((root / name).read_text(encoding="utf-8").removeprefix("\ufeff"))
            assert reference_valid(parsed, "scores"), f"accepted scores the schema refuses: {str(parsed)[:300]}"


# --------------------------------------------------------------------------------------------------
# raw bytes where a document is expected
# --------------------------------------------------------------------------------------------------


@settings(max_examples=examples(30))
@given(blob=st.binary(max_size=400) | st.sampled_from([b"\xff\xfe{}", b"{}\x00", b"\x80\x04K\x01.", b"PK\x03\x04"]),
       data=st.data())
def test_fuzz_raw_bytes_as_documents(blob: bytes, data: st.DataObject) -> None:
    name, command = data.draw(st.sampled_from([
        ("d.json", ["check", "tinycnn", "--ram", "64k", "--plan", "d.json"]),
        ("d.json", ["estimate", "tinycnn", "--update", "d.json"]),
        ("d.yaml", ["estimate", "tinycnn", "--update", "d.yaml"]),
        ("d.json", ["analyze", "tinycnn", "--ram", "64k", "--strategy", "config:d.json"]),
        ("d.json", ["analyze", "tinycnn", "--ram", "64k", "--objective", "d.json"]),
        ("d.pt", ["analyze", "tinycnn", "--ram", "64k", "--objective", "d.pt"]),
        ("d.toml", ["inspect", "tinycnn", "--target", "d.toml"]),
        ("d.pt", ["inspect", "fuzzmods:make", "--weights", "d.pt"]),
    ]))
    with workdir() as root:
        Path(root / name).write_bytes(blob)
        run_case("raw bytes as documents", command, root)
