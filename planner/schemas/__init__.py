"""The documents budgetplan reads, their JSON Schemas, and the one reader every file goes through.

Four kinds of document are read from files the user names; each has a JSON Schema here, shipped with
the package (``budgetplan schema NAME`` prints it) and applied with ``jsonschema`` before anything else
looks at the document:

* ``plan`` — the plan file ``analyze --out`` writes (docs/plan-format.md);
* ``update`` — a bare update list ``{"update": [...]}`` given to ``--update`` (docs/update-sets.md);
* ``config`` — a tiny-training sparse-update config (``--update FILE``, ``--strategy config:FILE``);
* ``scores`` — a scores file for ``analyze --objective FILE`` (JSON, or a tensor file read as the same
  mapping).

:func:`read_document` is the reader: a regular file (not a directory, device or pipe) of at most
:data:`MAX_DOCUMENT_BYTES`, UTF-8 text, JSON (or YAML where allowed) nested at most :data:`MAX_DEPTH`
deep, without duplicate keys, ``NaN``/``Infinity`` or integers longer than :data:`MAX_INT_DIGITS`
digits; then the schema. Every failure is one :class:`~budgetplan.errors.InputError` line that names
the file and the place in it (``plan.json: model.group_size: must be an integer, got string "abc"``).

The schemas are the contract: a document that validates is read, one that does not is refused. What a
schema cannot say (a channel index against the model's dim 0, a parameter name the model has) the
readers check against the model afterwards.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from budgetplan.errors import InputError

__all__ = ["MAX_DEPTH", "MAX_DOCUMENT_BYTES", "MAX_INT_DIGITS", "PLAN_FORMAT", "PLAN_VERSION", "SCHEMAS",
           "check_depth", "describe_error", "is_valid", "load_schema", "parse_json", "read_bytes", "read_document",
           "schema_text", "validate", "validate_plan"]

#: schema name -> file in this package
SCHEMAS: dict[str, str] = {
    "plan": "plan.schema.json",
    "update": "update.schema.json",
    "config": "config.schema.json",
    "scores": "scores.schema.json",
}

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
"""Largest document file read, in bytes (a plan of a model with a million channels is a few MiB)."""
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects in a document (budgetplan's own documents nest 4 deep)."""
MAX_INT_DIGITS = 30
"""Longest integer literal in a document, in digits (int64 has 19)."""

_SHOWN = 40  # characters of a value quoted in a message


# --------------------------------------------------------------------------------------------------
# Reading: bytes, text, JSON/YAML
# --------------------------------------------------------------------------------------------------


def read_bytes(path: str | os.PathLike[str], what: str, *, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; one-line :class:`InputError` otherwise.

    ``what`` names the file in messages (``"plan file"`` gives ``plan file not found: x.json``).
    """
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {name}") from None
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, ELOOP, EACCES, an embedded NUL byte
        reason = getattr(exc, "strerror", None) or "not a usable path"
        raise InputError(f"cannot read {what} {name}: {reason}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {name} is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {name} is not a regular file (a device, pipe or socket)")
    if info.st_size > limit:
        raise InputError(f"{what} {name} is {info.st_size:,} bytes; budgetplan reads files of at most "
                         f"{limit:,} bytes")
    try:
        with open(name, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    if len(data) > limit:  # it grew since the stat
        raise InputError(f"{what} {name} is larger than {limit:,} bytes")
    return data


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); a binary file is refused in one line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}); "
                         "is it a binary file?") from None
    if "\x00" in text:
        raise InputError(f"{where} is not text (it holds NUL bytes); is it a binary file?")
    return text.removeprefix("\ufeff")


# strings (skipped whole, escapes included) and the brackets outside them
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def check_depth(text: str, where: str, *, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON text nested deeper than ``limit`` before a parser recurses into it (linear time)."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                raise InputError(f"{where} is nested more than {limit} levels deep")
        elif token in "]}":
            depth -= 1


def _no_duplicates(where: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InputError(f"{where}: key {_quote(key)} appears twice in one object")
            out[key] = value
        return out
    return hook


def _parse_int(where: str) -> Any:
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise InputError(f"{where}: the number {text[:_SHOWN]}… has more than {MAX_INT_DIGITS} digits")
        return int(text)
    return parse


def _parse_float(where: str) -> Any:
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise InputError(f"{where}: the number {text[:_SHOWN]} is out of range")
        return value
    return parse


def _no_constant(where: str) -> Any:
    def parse(name: str) -> Any:
        raise InputError(f"{where}: {name} is not a JSON number")
    return parse


def parse_json(text: str, where: str) -> Any:
    """Strict JSON: bounded depth, no duplicate keys, no ``NaN``/``Infinity``, no overlong integers."""
    check_depth(text, where)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(where), parse_int=_parse_int(where),
                          parse_float=_parse_float(where), parse_constant=_no_constant(where))
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:  # check_depth makes this unreachable; kept as a guard
        raise InputError(f"{where} is nested too deeply") from None


def parse_yaml(text: str, where: str) -> Any:
    """YAML through ``yaml.safe_load``, refusing aliases (a few bytes can expand to gigabytes) and
    nesting deeper than :data:`MAX_DEPTH`; the result must be plain JSON data."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise InputError(f"{where} is YAML but PyYAML is not installed; convert it to JSON") from None
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise InputError(f"{where}: YAML aliases (*name) are not accepted; write the values out")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise InputError(f"{where} is nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    _check_plain(data, where)
    return data


def _check_plain(data: Any, where: str) -> None:
    """Only what JSON can hold: objects with string keys, arrays, strings, finite numbers, booleans, null."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise InputError(f"{where}: object keys must be strings, got {_describe_value(key)}")
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}: {value} is not a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) > MAX_INT_DIGITS:
            raise InputError(f"{where}: a number has more than {MAX_INT_DIGITS} digits")
        elif not (value is None or isinstance(value, (str, int, float, bool))):
            raise InputError(f"{where}: {_describe_value(value)} is not a JSON value")


def read_document(path: str | os.PathLike[str], what: str, schema: str | None = None, *,
                  yaml_suffixes: bool = False) -> Any:
    """Read, parse and validate one document file (see the module docstring).

    Args:
        path: the file.
        what: how messages name it (``"plan file"``, ``"scores file"``).
        schema: a name from :data:`SCHEMAS` to validate against, or None to only parse.
        yaml_suffixes: parse ``.yaml``/``.yml`` files as YAML (else everything is JSON).
    """
    name = os.fspath(path)
    text = decode_text(read_bytes(name, what), name)
    if yaml_suffixes and Path(name).suffix.lower() in (".yaml", ".yml"):
        data = parse_yaml(text, name)
    else:
        data = parse_json(text, name)
    if schema is not None:
        validate(data, schema, name)
    return data


# --------------------------------------------------------------------------------------------------
# Schemas and validation
# --------------------------------------------------------------------------------------------------


def schema_text(name: str) -> str:
    """The schema file ``name`` exactly as shipped (``budgetplan schema NAME`` prints it)."""
    if name not in SCHEMAS:
        raise InputError(f"unknown schema {_quote(name)}; use one of: {', '.join(SCHEMAS)}")
    return resources.files(__name__).joinpath(SCHEMAS[name]).read_text(encoding="utf-8")


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema ``name`` as a dict (shared: do not modify)."""
    return json.loads(schema_text(name))


@functools.cache
def _validator(name: str) -> Any:
    """A draft 2020-12 validator of schema ``name`` that resolves the other schemas by their ``$id``."""
    import jsonschema
    from referencing import Registry, Resource

    registry: Registry = Registry().with_resources(
        (load_schema(n)["$id"], Resource.from_contents(load_schema(n))) for n in SCHEMAS)
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                       {"items": _fast_items, "uniqueItems": _fast_unique_items})
    schema = load_schema(name)
    cls.check_schema(schema)
    return cls(schema, registry=registry)


def validate(document: Any, name: str, where: str) -> None:
    """Raise a one-line :class:`InputError` naming the first place ``document`` breaks schema ``name``."""
    error = next(iter(_validator(name).iter_errors(document)), None)
    if error is not None:
        raise InputError(f"{where}: {describe_error(error)}")


PLAN_FORMAT = "budgetplan-plan"
PLAN_VERSION = 1


def validate_plan(document: Any, where: str) -> None:
    """A plan document: first its ``format`` and ``version`` (so that a plan of another version says so),
    then the plan schema."""
    if not isinstance(document, dict) or document.get("format") != PLAN_FORMAT:
        raise InputError(f"{where} is not a budgetplan plan file (no \"format\": \"{PLAN_FORMAT}\")")
    version = document.get("version")
    if type(version) is int and version != PLAN_VERSION:  # true is not version 1
        raise InputError(f"{where} is plan format version {version}; this budgetplan reads version {PLAN_VERSION}")
    validate(document, "plan", where)


def is_valid(document: Any, name: str) -> bool:
    """True when ``document`` satisfies schema ``name``."""
    return next(iter(_validator(name).iter_errors(document)), None) is None


# jsonschema checks an array item by item through its generic machinery (~7 µs an item); a plan can hold
# hundreds of thousands of channel indices. For the plain number schemas the schemas use for such
# arrays the same checks run here in one pass, and any failure falls back to jsonschema for its error.
_SIMPLE_KEYS = frozenset({"type", "minimum", "maximum"})


def _plain_number(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    if kind == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, (int, float))


def _fast_items(validator: Any, items: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    from jsonschema import Draft202012Validator

    if (isinstance(instance, list) and isinstance(items, dict) and "prefixItems" not in schema
            and set(items) <= _SIMPLE_KEYS and items.get("type") in ("integer", "number")):
        kind, low, high = items["type"], items.get("minimum", -math.inf), items.get("maximum", math.inf)
        if all(_plain_number(v, kind) and low <= v <= high for v in instance):
            return
    yield from Draft202012Validator.VALIDATORS["items"](validator, items, instance, schema)


def _fast_unique_items(validator: Any, unique: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if not unique or not isinstance(instance, list):
        return
    if all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in instance):
        seen: set[Any] = set()
        for value in instance:
            if value in seen:
                yield ValidationError(f"has {_describe_value(value)} twice", validator="uniqueItems",
                                      validator_value=unique, instance=instance, schema=schema)
                return
            seen.add(value)
        return
    from jsonschema import Draft202012Validator

    for _error in Draft202012Validator.VALIDATORS["uniqueItems"](validator, unique, instance, schema):
        yield ValidationError("has repeated items", validator="uniqueItems", validator_value=unique,
                              instance=instance, schema=schema)
        return


# --------------------------------------------------------------------------------------------------
# One line per error
# --------------------------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _quote(text: str) -> str:
    shown = text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
    return json.dumps(shown, ensure_ascii=True)


def _describe_value(value: Any) -> str:
    """``string "abc"``, ``integer 5``, ``array of 3 items``, ``object``."""
    kind = _json_type(value)
    if isinstance(value, str):
        return f"string {_quote(value)}"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'s' if len(value) != 1 else ''}" if value else "an empty array"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        text = json.dumps(value)
        return f"{kind} {text if len(text) <= _SHOWN else text[:_SHOWN] + '…'}"
    return kind


def _place(path: Any) -> str:
    """``model.group_size``, ``update[3].channels``; ``the document`` for the root."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = str(part)
            key = key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,60}", key) else _quote(key)
            out += f".{key}" if out else key
    return out or "the document"


_ARTICLE = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "a boolean (true or "
            "false)", "array": "an array", "object": "an object", "null": "null"}


def _expected_types(types: Any) -> str:
    names = [types] if isinstance(types, str) else list(types)
    return " or ".join(_ARTICLE.get(t, t) for t in names)


def _alternatives(error: Any) -> str | None:
    """For an ``anyOf``: "must be X or Y, got Z" when every branch failed on its type or const."""
    parts: list[str] = []
    for sub in error.context or []:
        if list(sub.relative_path):
            return None
        if sub.validator == "type":
            parts.append(_expected_types(sub.validator_value))
        elif sub.validator == "const":
            parts.append(json.dumps(sub.validator_value))
        elif sub.validator == "enum":
            parts.append(" or ".join(json.dumps(v) for v in sub.validator_value))
        else:
            return None
    if not parts:
        return None
    return f"must be {' or '.join(dict.fromkeys(parts))}, got {_describe_value(error.instance)}"


def _deepest(error: Any) -> Any:
    """The most telling error under an ``anyOf``/``oneOf``: from the branch whose type fits the value."""
    candidates = [e for e in error.context or [] if e.validator not in ("type", "const", "enum")
                  or list(e.relative_path)]
    if not candidates:
        return None
    return max(candidates, key=lambda e: len(e.absolute_path))


def describe_error(error: Any) -> str:
    """One line: where in the document, and what is wrong there (the place is left out for the root)."""
    while error.validator in ("anyOf", "oneOf") and _alternatives(error) is None and _deepest(error) is not None:
        error = _deepest(error)
    where = _place(error.absolute_path)
    return f"{where}: {_what(error)}" if where != "the document" else _what(error)


def _what(error: Any) -> str:
    if error.validator in ("anyOf", "oneOf"):
        return _alternatives(error) or " ".join(str(error.message).split())[:200]
    if "propertyNames" in error.schema_path:
        return f"the key {_quote(str(error.instance))} is not allowed (keys must be 1 to 4096 characters)"
    value, rule, got = error.instance, error.validator_value, _describe_value(error.instance)
    kind = error.validator
    if kind == "type":
        message = f"must be {_expected_types(rule)}, got {got}"
    elif kind == "required":
        missing = next((k for k in rule if isinstance(value, dict) and k not in value), rule[0])
        message = f"has no {_quote(missing)} (required)"
    elif kind == "const":
        message = f"must be {json.dumps(rule)}, got {got}"
    elif kind == "enum":
        message = f"must be one of {', '.join(json.dumps(v) for v in rule)}; got {got}"
    elif kind == "minimum":
        message = f"must be at least {rule}, got {got}"
    elif kind == "maximum":
        message = f"must be at most {rule}, got {got}"
    elif kind == "pattern":
        form = error.schema.get("description") or f"of the form {rule}"
        message = f"must be {form}, got {got}"
    elif kind == "maxLength":
        message = f"is longer than {rule} characters"
    elif kind == "minLength":
        message = "must not be empty" if rule == 1 else f"is shorter than {rule} characters"
    elif kind == "minItems":
        message = "must not be empty" if rule == 1 else f"must have at least {rule} items"
    elif kind == "maxItems":
        message = f"has more than {rule} items"
    elif kind == "minProperties":
        message = "must not be empty" if rule == 1 else f"must have at least {rule} keys"
    elif kind == "additionalProperties":
        known = list((error.schema.get("properties") or {}).keys())
        extra = [k for k in value if k not in known] if isinstance(value, dict) else []
        key = extra[0] if extra else "?"
        near = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {_quote(near[0])}?)" if near else (f" (known: {', '.join(known)})" if known else "")
        message = f"unknown key {_quote(key)}{hint}"
    elif kind == "uniqueItems":
        message = error.message
    elif kind == "propertyNames":
        message = f"a key is not allowed: {_describe_value(value)}"
    else:
        message = " ".join(str(error.message).split())[:200]
    return message
