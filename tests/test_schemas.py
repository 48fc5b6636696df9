"""budgetplan.schemas: the one reader of the documents budgetplan reads, and their shipped JSON Schemas.

The reader's limits (regular files, size, encoding, depth, duplicate keys, non-finite numbers, long
integers, YAML aliases) each give one line; the schemas are valid draft 2020-12 schemas, resolve each
other by ``$id``, and budgetplan's fast paths for long integer arrays agree with jsonschema's reference
validator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetplan.errors import InputError
from budgetplan.schemas import (
    MAX_DEPTH,
    SCHEMAS,
    is_valid,
    load_schema,
    parse_json,
    parse_yaml,
    read_bytes,
    read_document,
    schema_text,
    validate,
)


def one_line(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert json.loads(schema_text(name)) == schema


def test_read_bytes_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    assert one_line(read_bytes, tmp_path / "missing.json", "plan file") == f"plan file not found: {tmp_path / 'missing.json'}"
    assert "is a directory" in one_line(read_bytes, tmp_path, "plan file")
    assert "not a regular file" in one_line(read_bytes, "/dev/zero", "plan file")
    assert "cannot read plan file" in one_line(read_bytes, "x" * 5000 + ".json", "plan file")  # ENAMETOOLONG
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 101)
    assert "is 101 bytes; budgetplan reads files of at most 100 bytes" in one_line(read_bytes, big, "f", limit=100)
    if os.getuid() != 0:  # root reads everything
        locked = tmp_path / "locked.json"
        locked.write_text("{}")
        locked.chmod(0)
        assert "Permission denied" in one_line(read_bytes, locked, "plan file")


def test_text_must_be_utf8_without_nul_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b'{"a": "\xff"}')
    assert "is not UTF-8 text (byte 7 is 0xff); is it a binary file?" in one_line(read_document, path, "plan file")
    path.write_bytes(b'{"a": 1}\x00')
    assert "holds NUL bytes" in one_line(read_document, path, "plan file")
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')  # a byte-order mark is fine
    assert read_document(path, "plan file") == {"a": 1}


@pytest.mark.parametrize("text, needle", [
    ('{"a": 1, "a": 2}', 'key "a" appears twice in one object'),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": -Infinity}', "-Infinity is not a JSON number"),
    ('{"a": 1e400}', "the number 1e400 is out of range"),
    ('{"a": ' + "9" * 31 + "}", "has more than 30 digits"),
    ('{"a": ', "is not valid JSON: Expecting value (line 1, column 7)"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nested more than {MAX_DEPTH} levels deep"),
    ("[" * 200_000, f"nested more than {MAX_DEPTH} levels deep"),
])
def test_strict_json(text: str, needle: str) -> None:
    assert needle in one_line(parse_json, text, "x.json")


def test_depth_counts_brackets_outside_strings_only() -> None:
    inside = '"' + "[" * 1000 + '\\"' + "{" * 1000 + '"'
    assert parse_json("[" * MAX_DEPTH + inside + "]" * MAX_DEPTH, "x.json") is not None


def test_yaml_aliases_and_depth_are_refused() -> None:
    pytest.importorskip("yaml")
    bomb = 'a: &a ["x", "x"]\nb: &b [*a, *a]\nc: [*b, *b]\n'
    assert "YAML aliases" in one_line(parse_yaml, bomb, "c.yaml")
    assert "nested more than" in one_line(parse_yaml, "[" * 100 + "]" * 100, "c.yaml")
    assert "not a JSON value" in one_line(parse_yaml, "when: 2024-01-01", "c.yaml")
    assert "not a finite number" in one_line(parse_yaml, "ratio: .inf", "c.yaml")
    assert parse_yaml("n_bias_update: 2\nfreeze_fc: 1\n", "c.yaml") == {"n_bias_update": 2, "freeze_fc": 1}


@pytest.mark.parametrize("document, needle", [
    ({"update": [{"parameter": "fc.weight", "channels": [1, 2, 2]}]}, "update[0].channels: has integer 2 twice"),
    ({"update": [{"parameter": "fc.weight", "channels": "all"}]}, 'must be an array or null, got string "all"'),
    ({"update": [{"parameter": "fc.weight", "channels": [0, 1.5]}]}, "update[0].channels[1]: must be an integer"),
    ({"update": [{"parameter": "x" * 5000}]}, "update[0].parameter: is longer than 4096 characters"),
    ({"updates": []}, 'has no "update" (required)'),
])
def test_update_schema_messages_name_the_place(document: Any, needle: str) -> None:
    assert needle in one_line(validate, document, "update", "u.json")


def test_config_schema_messages() -> None:
    assert 'unknown key "freez_fc" (did you mean "freeze_fc"?)' in one_line(
        validate, {"n_bias_update": 1, "freez_fc": 1}, "config", "c.json")
    assert 'backward_config.n_bias_update: must be an integer or "all", got string "2"' in one_line(
        validate, {"backward_config": {"n_bias_update": "2"}}, "config", "c.json")
    assert is_valid({"backward_config": {"n_bias_update": 2}, "data_provider": {"anything": [1]}}, "config")
    assert is_valid({"n_bias_update": "all", "manual_weight_idx": "21-24-27", "weight_update_ratio": "1-0.5-0.25"},
                    "config")


# The fast paths (long arrays of integers, uniqueItems) must agree with the reference validator.
integer_lists = st.lists(st.one_of(st.integers(-3, 2**64), st.booleans(), st.floats(-2, 5, allow_nan=False),
                                   st.text(max_size=2), st.none()), max_size=12)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(channels=integer_lists | st.lists(st.integers(0, 40), max_size=40))
def test_fast_paths_agree_with_the_reference_validator(channels: list[Any]) -> None:
    document = {"update": [{"parameter": "fc.weight", "channels": channels}]}
    registry = __import__("referencing").Registry().with_resources(
        (load_schema(n)["$id"], __import__("referencing").Resource.from_contents(load_schema(n))) for n in SCHEMAS)
    reference = jsonschema.Draft202012Validator(load_schema("update"), registry=registry)
    assert is_valid(document, "update") == reference.is_valid(document)
