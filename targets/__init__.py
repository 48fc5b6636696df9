"""Device descriptions ("targets") and their loader.

A target is one TOML file describing the memory and speed of a device that will run training: how
much RAM there is (bytes), how much of it the runtime needs, which data types the training runtime
uses, and how fast it multiplies (MACs per cycle at a clock in Hz). Built-in targets ship as
``*.toml`` files inside this package; users may pass a path to their own file. See ``docs/targets.md``.

Public API::

    load_target(name_or_path) -> Target      # built-in name/alias (case-insensitive) or a .toml path
    list_targets() -> list[Target]           # built-ins, sorted by name
    builtin_target_names() -> list[str]      # built-in names and aliases
    DTYPE_BYTES                              # dtype name -> bytes per element
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

from budgetplan.errors import InputError, TargetError
from budgetplan.units import MAX_BYTES, format_bytes, parse_bytes

__all__ = [
    "DTYPE_BYTES",
    "DTYPE_KINDS",
    "FAMILIES",
    "NUMERIC_FIELDS",
    "Target",
    "builtin_target_names",
    "list_targets",
    "load_target",
    "resolve_budget",
    "resolve_target",
]

#: Bytes per element of every data type a target may name.
DTYPE_BYTES: Final[dict[str, int]] = {
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "int32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
}

#: Cost-model families: ``host`` (PyTorch eager fp32 on this computer), ``mcu`` (tiny-training
#: conventions: int8 activations, frozen weights in flash, updated weights/gradients in SRAM),
#: ``embedded-linux`` (fp32 PyTorch-like on a board such as a Raspberry Pi or Jetson).
FAMILIES: Final[tuple[str, ...]] = ("host", "mcu", "embedded-linux")

#: The tensor kinds a target gives a dtype for; ``Target.dtype_bytes(kind)`` accepts these.
DTYPE_KINDS: Final[tuple[str, ...]] = ("activation", "weight", "gradient", "bias", "optimizer")

#: Numeric fields; each must have an entry in ``sources`` when the file sets it.
NUMERIC_FIELDS: Final[tuple[str, ...]] = (
    "clock_hz",
    "macs_per_cycle",
    "sram_bytes",
    "largest_block_bytes",
    "flash_bytes",
    "reserved_bytes",
    "default_input_resolution",
)

_SIZE_FIELDS: Final[tuple[str, ...]] = ("sram_bytes", "largest_block_bytes", "flash_bytes", "reserved_bytes")

#: dtypes used when a file does not set them, per family (tiny-training conventions for "mcu").
_FAMILY_DTYPES: Final[dict[str, dict[str, str]]] = {
    "mcu": {
        "activation_dtype": "int8",
        "weight_dtype": "int8",
        "gradient_dtype": "float32",
        "bias_dtype": "int32",
        "optimizer_dtype": "float32",
    },
    "host": {f"{kind}_dtype": "float32" for kind in DTYPE_KINDS},
    "embedded-linux": {f"{kind}_dtype": "float32" for kind in DTYPE_KINDS},
}

_DEFAULT_INPUT_RESOLUTION: Final[int] = 128

# Bounds of the numeric fields: wider than any real device, narrow enough that every derived number
# (usable bytes, MAC/s, a latency) is a finite float and a byte count far inside a 64-bit integer.
# Sizes share --ram's limit, budgetplan.units.MAX_BYTES (256 TiB).
#: clock_hz: 1 kHz (slower than any core that runs a network) to 100 GHz (no processor comes near it).
_CLOCK_HZ_RANGE: Final[tuple[float, float]] = (1e3, 1e11)
#: macs_per_cycle: one MAC per million cycles to a billion per cycle (the largest accelerators, a GPU
#: or a wafer-scale chip over all their cores, reach about 10**8 at most).
_MACS_PER_CYCLE_RANGE: Final[tuple[float, float]] = (1e-6, 1e9)
_RATE_RANGES: Final[dict[str, tuple[tuple[float, float], str]]] = {
    "clock_hz": (_CLOCK_HZ_RANGE, "Hz (1 kHz to 100 GHz)"),
    "macs_per_cycle": (_MACS_PER_CYCLE_RANGE, "MACs per cycle"),
}
#: default_input_resolution: at most 65536 pixels a side (no camera sensor comes near it).
_MAX_INPUT_RESOLUTION: Final[int] = 65536
_NAME_RE: Final[re.Pattern[str]] = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_NAME_RULE: Final[str] = "letters, digits, '.', '_', '+', '-', starting with a letter or digit"


@dataclass(frozen=True)
class Target:
    """One device: memory sizes in bytes, clock in Hz, data types by tensor kind.

    Attributes:
        name: canonical name (the built-in file's stem), e.g. ``"stm32f746"``.
        aliases: other names accepted by :func:`load_target`, e.g. ``("cortex-m7",)``.
        description: one line for listings.
        core: CPU/accelerator core, e.g. ``"cortex-m7"``.
        family: cost-model family, one of :data:`FAMILIES`.
        clock_hz: clock of the core that runs training, in Hz.
        macs_per_cycle: sustained multiply-accumulates per clock cycle (int8 on ``mcu``, fp32 otherwise),
            used only for latency estimates.
        sram_bytes: total RAM in bytes (on-chip SRAM for MCUs, DRAM for Linux boards and the host).
        largest_block_bytes: largest contiguous usable RAM block, in bytes.
        flash_bytes: flash/ROM for frozen weights and code, in bytes; ``None`` when not modelled.
        reserved_bytes: RAM kept for runtime, stack, RTOS, I/O buffers, in bytes.
        activation_dtype, weight_dtype, gradient_dtype, bias_dtype, optimizer_dtype: keys of
            :data:`DTYPE_BYTES`.
        default_input_resolution: default square input side in pixels (e.g. 128 for 128x128).
        sources: field name -> where the number comes from.
        notes: free text (caveats, estimates).
        path: file the target was loaded from, or ``None``.
    """

    name: str
    aliases: tuple[str, ...]
    description: str
    core: str
    family: str
    clock_hz: float
    macs_per_cycle: float
    sram_bytes: int
    largest_block_bytes: int
    flash_bytes: int | None
    reserved_bytes: int
    activation_dtype: str
    weight_dtype: str
    gradient_dtype: str
    bias_dtype: str
    optimizer_dtype: str
    default_input_resolution: int
    sources: dict[str, str] = field(hash=False)
    notes: str = ""
    path: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "aliases", tuple(self.aliases))
        try:
            _check_semantics({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        except _FieldProblem as problem:
            raise TargetError(f"invalid target '{self.name}': {problem.field}: {problem.message}") from None

    @property
    def usable_bytes(self) -> int:
        """Default training budget in bytes: ``min(sram_bytes, largest_block_bytes) - reserved_bytes``."""
        return min(self.sram_bytes, self.largest_block_bytes) - self.reserved_bytes

    @property
    def macs_per_second(self) -> float:
        """Sustained multiply-accumulates per second: ``clock_hz * macs_per_cycle``."""
        return self.clock_hz * self.macs_per_cycle

    def dtype_bytes(self, kind: str) -> int:
        """Bytes per element for a tensor kind: ``"activation"``, ``"weight"``, ``"gradient"``,
        ``"bias"`` or ``"optimizer"``."""
        if kind not in DTYPE_KINDS:
            raise ValueError(f"unknown tensor kind {kind!r}; expected one of {', '.join(DTYPE_KINDS)}")
        return DTYPE_BYTES[getattr(self, f"{kind}_dtype")]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of all fields (``path`` as ``str`` or ``None``, ``aliases`` as a list)
        plus the derived ``usable_bytes`` and ``macs_per_second``."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "aliases":
                value = list(value)
            elif f.name == "sources":
                value = dict(value)
            elif f.name == "path":
                value = None if value is None else str(value)
            data[f.name] = value
        data["usable_bytes"] = self.usable_bytes
        data["macs_per_second"] = self.macs_per_second
        return data


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


class _FieldProblem(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


_FIELD_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in dataclasses.fields(Target) if f.name != "path")
_REQUIRED: Final[tuple[str, ...]] = (
    "name",
    "core",
    "family",
    "clock_hz",
    "macs_per_cycle",
    "sram_bytes",
    "reserved_bytes",
)


def _shown(value: object) -> str:
    """A value for a message; an integer too long to print usefully by its size, so the line stays short."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**21:
        if value.bit_length() <= 1000:
            return f"{float(value):.4g}"
        article = "a negative" if value < 0 else "an"
        return f"{article} integer of about {round(value.bit_length() * math.log10(2))} digits"
    return repr(value) if isinstance(value, str) else str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _check_semantics(v: Mapping[str, Any]) -> None:
    """Invariants shared by the file loader and direct construction; ``v`` maps field names to values.

    Raises ``_FieldProblem`` naming the first offending field.
    """
    name: str = v["name"]
    if not name or not _NAME_RE.match(name):
        raise _FieldProblem("name", f"'{name}' is not a valid name ({_NAME_RULE})")
    for alias in v["aliases"]:
        if not _NAME_RE.match(alias):
            raise _FieldProblem("aliases", f"'{alias}' is not a valid name ({_NAME_RULE})")
    family: str = v["family"]
    if family not in FAMILIES:
        raise _FieldProblem("family", f"unknown family '{family}'{_did_you_mean(family, FAMILIES)}; "
                            f"expected one of {', '.join(FAMILIES)}")
    for kind in DTYPE_KINDS:
        dtype: str = v[f"{kind}_dtype"]
        if dtype not in DTYPE_BYTES:
            hint = _did_you_mean(dtype, tuple(DTYPE_BYTES))
            raise _FieldProblem(
                f"{kind}_dtype", f"unknown dtype '{dtype}'{hint}; expected one of {', '.join(DTYPE_BYTES)}"
            )
    for key, ((low, high), unit) in _RATE_RANGES.items():
        number: object = v[key]
        # written so that nan (every comparison false) and an int too large for a float are refused too
        if not _is_number(number) or not low <= number <= high:  # type: ignore[operator]
            raise _FieldProblem(
                key, f"must be a finite positive number from {low:g} to {high:g} {unit}, got {_shown(number)}"
            )
    for key in _SIZE_FIELDS:
        size: object = v[key]
        if size is None and key == "flash_bytes":
            continue
        if not isinstance(size, int) or isinstance(size, bool):
            raise _FieldProblem(key, f"must be an integer number of bytes, got {_shown(size)}")
        if key == "reserved_bytes":
            if size < 0:
                raise _FieldProblem(key, f"must be zero or a positive number of bytes, got {_shown(size)}")
        elif size <= 0:
            raise _FieldProblem(key, f"must be a positive number of bytes, got {_shown(size)}")
        if size > MAX_BYTES:
            raise _FieldProblem(
                key, f"must be at most {MAX_BYTES:,} bytes ({format_bytes(MAX_BYTES)}, the limit of --ram: "
                     f"no device has more), got {_shown(size)}"
            )
    resolution: object = v["default_input_resolution"]
    if (not isinstance(resolution, int) or isinstance(resolution, bool)
            or not 0 < resolution <= _MAX_INPUT_RESOLUTION):
        raise _FieldProblem(
            "default_input_resolution",
            f"must be a positive number of pixels, at most {_MAX_INPUT_RESOLUTION}, got {_shown(resolution)}",
        )
    sram: int = v["sram_bytes"]
    block: int = v["largest_block_bytes"]
    reserved: int = v["reserved_bytes"]
    if block > sram:
        raise _FieldProblem("largest_block_bytes", f"{block} bytes is larger than sram_bytes ({sram} bytes)")
    if reserved >= min(sram, block):
        raise _FieldProblem(
            "reserved_bytes",
            f"{reserved} bytes leaves nothing to train with: it must be smaller than "
            f"min(sram_bytes, largest_block_bytes) = {min(sram, block)} bytes",
        )
    for key, text in v["sources"].items():
        if key not in _FIELD_NAMES:
            hint = _did_you_mean(key, _FIELD_NAMES)
            raise _FieldProblem(f"sources.{key}", f"'{key}' is not a target field{hint}")
        if not isinstance(text, str) or not text.strip():
            raise _FieldProblem(
                f"sources.{key}", "must be a non-empty string saying where the number comes from"
            )


# --------------------------------------------------------------------------------------------------
# TOML loading
# --------------------------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


def _expect_str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise _FieldProblem(key, f"must be a string, got {_type_name(value)} {value!r}")
    return value


def _expect_number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _FieldProblem(key, f"must be a number, got {_type_name(value)} {_shown(value)}")
    if isinstance(value, int) and value.bit_length() > 1000:
        return value  # type: ignore[return-value]  # too large for a float: refused by its bounds
    return float(value)


def _expect_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldProblem(key, f"must be an integer, got {_type_name(value)} {_shown(value)}")
    return value


def _expect_size(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _FieldProblem(
            key,
            f"must be an integer number of bytes or a size string such as \"320k\", "
            f"got {_type_name(value)} {value!r}",
        )
    if isinstance(value, int):
        return value  # sign and size checked with the other invariants
    try:
        return parse_bytes(value)
    except InputError as exc:
        raise _FieldProblem(key, str(exc)) from None


def _expect_str_list(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _FieldProblem(key, f"must be an array of strings, got {_type_name(value)} {value!r}")
    return tuple(value)


def _expect_sources(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _FieldProblem(
            key, f"must be a table ([sources]) of field = \"where it comes from\", got {_type_name(value)}"
        )
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise _FieldProblem(f"sources.{k}", f"must be a string, got {_type_name(v)} {v!r}")
        out[k] = v
    return out


_CONVERTERS: Final[dict[str, Callable[[str, object], Any]]] = {
    "name": _expect_str,
    "aliases": _expect_str_list,
    "description": _expect_str,
    "core": _expect_str,
    "family": _expect_str,
    "clock_hz": _expect_number,
    "macs_per_cycle": _expect_number,
    "sram_bytes": _expect_size,
    "largest_block_bytes": _expect_size,
    "flash_bytes": _expect_size,
    "reserved_bytes": _expect_size,
    "activation_dtype": _expect_str,
    "weight_dtype": _expect_str,
    "gradient_dtype": _expect_str,
    "bias_dtype": _expect_str,
    "optimizer_dtype": _expect_str,
    "default_input_resolution": _expect_int,
    "sources": _expect_sources,
    "notes": _expect_str,
}
assert set(_CONVERTERS) == set(_FIELD_NAMES), "every Target field needs a TOML converter"


def _build(raw: Mapping[str, Any], path: Path | None) -> Target:
    """Turn a parsed TOML table into a Target, or raise ``_FieldProblem``."""
    for key in raw:
        if key not in _CONVERTERS:
            raise _FieldProblem(key, f"unknown field{_did_you_mean(key, _FIELD_NAMES)}")
    for key in _REQUIRED:
        if key not in raw:
            raise _FieldProblem(key, "required field is missing")
    values: dict[str, Any] = {key: _CONVERTERS[key](key, value) for key, value in raw.items()}

    family = values["family"]
    if family not in FAMILIES:  # checked before the dtype defaults, which depend on it
        raise _FieldProblem("family", f"unknown family '{family}'{_did_you_mean(family, FAMILIES)}; "
                            f"expected one of {', '.join(FAMILIES)}")

    sources: dict[str, str] = dict(values.get("sources", {}))
    for key in NUMERIC_FIELDS:
        if key in values and key not in sources:
            raise _FieldProblem(
                f"sources.{key}", f"missing: add `{key} = \"where the number comes from\"` under [sources]"
            )
    defaults: dict[str, Any] = {
        "aliases": (),
        "description": "",
        "flash_bytes": None,
        "default_input_resolution": _DEFAULT_INPUT_RESOLUTION,
        "notes": "",
        **_FAMILY_DTYPES[family],
    }
    if "largest_block_bytes" not in values:
        defaults["largest_block_bytes"] = values["sram_bytes"]
        sources["largest_block_bytes"] = "default: not set in the file, taken equal to sram_bytes"
    if "default_input_resolution" not in values:
        sources["default_input_resolution"] = f"default: not set in the file ({_DEFAULT_INPUT_RESOLUTION})"
    merged = {**defaults, **values, "sources": sources}
    _check_semantics(merged)
    return Target(**merged, path=path)


def _load_text(text: str, origin: str, path: Path | None) -> Target:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"invalid target file '{origin}': TOML syntax error: {exc}") from None
    except ValueError as exc:  # Python's limit on the digits of an integer literal (4300)
        reason = str(exc).split(";", 1)[0]
        raise TargetError(
            f"invalid target file '{origin}': a number is too long to read ({reason})"
        ) from None
    try:
        return _build(raw, path)
    except _FieldProblem as problem:
        raise TargetError(f"invalid target file '{origin}': {problem.field}: {problem.message}") from None


#: a target file is a few kB; anything larger is not one (and is not read whole)
_MAX_TARGET_FILE_BYTES: Final[int] = 1 << 20


def _read_file(path: Path) -> Target:
    if not path.exists():
        raise TargetError(f"target file '{path}' not found")
    if not path.is_file():
        raise TargetError(f"target file '{path}' is not a file")
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_TARGET_FILE_BYTES + 1)
        if len(data) > _MAX_TARGET_FILE_BYTES:
            raise TargetError(f"invalid target file '{path}': larger than {_MAX_TARGET_FILE_BYTES} bytes "
                              "(a target file is a few kB of TOML)")
        text = data.decode("utf-8")
    except OSError as exc:
        raise TargetError(f"cannot read target file '{path}': {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TargetError(
            f"invalid target file '{path}': not UTF-8 text (TOML files must be UTF-8)"
        ) from None
    return _load_text(text, str(path), path)


# --------------------------------------------------------------------------------------------------
# Built-in targets
# --------------------------------------------------------------------------------------------------


def _builtin_files() -> list[tuple[str, str, Path | None]]:
    """(stem, text, path) of every built-in ``*.toml`` shipped in this package, sorted by stem."""
    out: list[tuple[str, str, Path | None]] = []
    for entry in resources.files(__name__).iterdir():
        if entry.is_file() and entry.name.endswith(".toml"):
            path = entry if isinstance(entry, Path) else None
            out.append((entry.name[: -len(".toml")], entry.read_text(encoding="utf-8"), path))
    return sorted(out)


@lru_cache(maxsize=1)
def _builtin_index() -> tuple[dict[str, tuple[str, str, Path | None]], tuple[str, ...], tuple[str, ...]]:
    """Lower-cased name/alias -> (name, text, path); sorted names; names and aliases in display order."""
    index: dict[str, tuple[str, str, Path | None]] = {}
    names: list[str] = []
    spellings: list[str] = []
    for stem, text, path in _builtin_files():
        target = _load_text(text, f"{stem}.toml (built-in)", path)
        if target.name != stem:
            raise TargetError(
                f"invalid built-in target file '{stem}.toml': name '{target.name}' differs from the file name"
            )
        for spelling in (target.name, *target.aliases):
            key = spelling.lower()
            if key in index:
                raise TargetError(
                    f"invalid built-in target file '{stem}.toml': "
                    f"'{spelling}' is already used by '{index[key][0]}'"
                )
            index[key] = (target.name, text, path)
            spellings.append(spelling)
        names.append(target.name)
    return index, tuple(names), tuple(spellings)


def _looks_like_path(text: str) -> bool:
    return text.lower().endswith(".toml") or "/" in text or "\\" in text


def load_target(name_or_path: str | os.PathLike[str]) -> Target:
    """Load a built-in target by name or alias (case-insensitive), or a user's ``.toml`` file.

    A :class:`~pathlib.Path` (any ``os.PathLike``), or a string ending in ``.toml`` or containing a path
    separator, is read as a file; any other string is looked up among the built-ins (and, failing that,
    read as a file if one exists at that path).

    Raises:
        TargetError: unknown name (with suggestions), missing file, or an invalid file — one line naming
            the file and the field.
    """
    if isinstance(name_or_path, os.PathLike):
        return _read_file(Path(os.fspath(name_or_path)))
    if not isinstance(name_or_path, str):
        raise TargetError(
            f"invalid target {name_or_path!r}: expected a target name or a path to a .toml file"
        )
    text = name_or_path.strip()
    if _looks_like_path(text):
        return _read_file(Path(text).expanduser())
    index, names, spellings = _builtin_index()
    hit = index.get(text.lower())
    if hit is not None:
        name, body, path = hit
        return _load_text(body, f"{name}.toml (built-in)", path)
    if text and Path(text).is_file():
        return _read_file(Path(text))
    lowered = {s.lower(): s for s in spellings}
    near = [lowered[m] for m in difflib.get_close_matches(text.lower(), list(lowered), n=3, cutoff=0.6)]
    if near:
        hint = f"did you mean: {', '.join(near)}?"
    else:
        hint = f"known targets: {', '.join(names)}"
    raise TargetError(
        f"unknown target '{text}'; {hint} (see `budgetplan targets`, or pass a path to a .toml file)"
    )


def list_targets() -> list[Target]:
    """All built-in targets, sorted by name."""
    index, names, _ = _builtin_index()
    return sorted((load_target(n) for n in names), key=lambda t: t.name)


def builtin_target_names() -> list[str]:
    """Every name and alias accepted for a built-in target, targets sorted by name, each name followed by
    its aliases."""
    _, _, spellings = _builtin_index()
    return list(spellings)


def resolve_target(target: str | os.PathLike[str] | Target) -> Target:
    """A :class:`Target` object, a built-in name/alias, or a path to a target TOML file."""
    return target if isinstance(target, Target) else load_target(target)


def resolve_budget(target: Target, ram: str | int | None) -> int:
    """The byte budget: ``ram`` (``"256k"``, ``262144``) when given, else the target's usable RAM.

    A number is held to the rules of a size string (:func:`~budgetplan.units.parse_bytes`): ``0``, ``-5``,
    ``True``, ``nan`` and anything above 256 TiB are refused (``InputError``), not used as a budget.
    """
    if ram is None:
        return target.usable_bytes
    if isinstance(ram, int) and not isinstance(ram, bool) and not 0 < ram <= MAX_BYTES:
        raise InputError(f"invalid budget {_shown(ram)}: a budget must be a positive number of bytes, "
                         f"at most {MAX_BYTES:,} ({format_bytes(MAX_BYTES)}, the limit of --ram)")
    return parse_bytes(str(ram))
