"""Parsing and printing of byte sizes and tensor shapes.

Sizes follow embedded practice: every prefix is binary. ``k``, ``K``, ``KB``, ``KiB`` all mean
1024 bytes; ``M``/``MB``/``MiB`` mean 1024**2 bytes; ``G``/``GB``/``GiB`` 1024**3; ``T``/``TB``/``TiB``
1024**4. Unit letters are case-insensitive (``256kib`` == ``256KiB``), a trailing ``B`` is optional, and
spaces between number and unit are allowed. A size must come out as a positive whole number of bytes:
``0.5M`` (524288 bytes) is accepted, ``0.3k`` (307.2 bytes) is rejected rather than rounded, and so is
anything above :data:`MAX_BYTES` (256 TiB: no device has that much memory, and every byte count stays
far inside a 64-bit integer).

Shapes are positive integer dimensions, at most :data:`MAX_DIMS` of them, whose product (the element
count) stays below 2**63; whether the memory of such an input is available is checked where the input
would be allocated (:mod:`budgetplan.model.loading`).
"""

from __future__ import annotations

import re
from fractions import Fraction

from budgetplan.errors import InputError

__all__ = ["BYTE_UNITS", "MAX_BYTES", "MAX_DIMS", "format_bytes", "parse_bytes", "parse_shape"]

MAX_BYTES = 2**48
"""The largest size :func:`parse_bytes` accepts: 256 TiB."""
MAX_DIMS = 16
"""The most dimensions :func:`parse_shape` accepts."""
_MAX_TEXT = 100  # characters of a size or shape worth parsing

#: Multiplier in bytes for every accepted unit spelling (keys are lower-case).
BYTE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}

_SIZE_RE = re.compile(
    r"""^\s*
    (?P<sign>[+-]?)\s*
    (?P<number>(?:\d+(?:_\d+)*)?(?:\.\d+)?(?:[eE][+-]?\d{1,2})?)   # 256, 0.5, .5, 1e6, 262_144
    \s*
    (?P<unit>[A-Za-z]*)
    \s*$""",
    re.VERBOSE,
)

_SIZE_HINT = (
    "expected a number with an optional unit k/K/KB/KiB/M/MB/MiB/G/GB/GiB (all powers of 1024), e.g. 256k"
)


def parse_bytes(text: str) -> int:
    """Parse a human size such as ``"256k"`` or ``"0.5 MiB"`` into a number of bytes.

    Returns:
        The size in bytes, always a positive integer.

    Raises:
        InputError: the text is empty, negative, zero, not a number, has an unknown unit, or does not
            come out as a whole number of bytes. The message is one line and quotes the text.
    """
    if not isinstance(text, str):
        raise InputError(f"invalid size {text!r}: {_SIZE_HINT}")
    if len(text) > _MAX_TEXT:
        raise InputError(f"invalid size '{text[:_MAX_TEXT]}…': {len(text)} characters is not a size; {_SIZE_HINT}")
    match = _SIZE_RE.match(text)
    number = match.group("number") if match else ""
    if match is None or not any(ch.isdigit() for ch in number):
        raise InputError(f"invalid size '{text}': {_SIZE_HINT}")
    unit = match.group("unit").lower()
    if unit not in BYTE_UNITS:
        raise InputError(f"invalid size '{text}': unknown unit '{match.group('unit')}'; {_SIZE_HINT}")
    value = Fraction(number.replace("_", "")) * BYTE_UNITS[unit]
    if match.group("sign") == "-":
        value = -value
    if value <= 0:
        raise InputError(f"invalid size '{text}': a size must be positive; {_SIZE_HINT}")
    if value > MAX_BYTES:
        raise InputError(f"invalid size '{text}': that is {float(value):.4g} bytes, more than any device has "
                         f"(the limit is {MAX_BYTES:,} bytes, 256 TiB)")
    if value.denominator != 1:
        raise InputError(
            f"invalid size '{text}': that is {float(value):g} bytes, not a whole number of bytes; "
            f"give an integer number of bytes or a unit that makes it whole, e.g. 256k"
        )
    return int(value)


_FORMAT_UNITS: tuple[str, ...] = ("KiB", "MiB", "GiB", "TiB")


def format_bytes(n: int) -> str:
    """Format a number of bytes for people: ``262144 -> "256.0 KiB"``, ``100 -> "100 B"``.

    Sizes under 1024 bytes are printed exactly; larger ones with one decimal in the largest binary
    unit (KiB, MiB, GiB, TiB) that keeps the figure at or above 1.0.
    """
    sign = "-" if n < 0 else ""
    size = abs(int(n))
    if size < 1024:
        return f"{sign}{size} B"
    value = float(size)
    unit = _FORMAT_UNITS[0]
    for unit in _FORMAT_UNITS:
        value /= 1024.0
        if round(value, 1) < 1024.0 or unit == _FORMAT_UNITS[-1]:
            break
    return f"{sign}{value:.1f} {unit}"


_SHAPE_HINT = "expected positive integer dimensions such as 1x3x128x128 (or 1,3,128,128)"


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse an input shape such as ``"1x3x128x128"``, ``"1,3,128,128"`` or ``"(1, 3, 128, 128)"``.

    Dimensions are separated by ``x``/``X`` or by commas (not both), may be wrapped in parentheses or
    brackets, and must each be a positive integer (element counts, not bytes).

    Raises:
        InputError: one line quoting the bad text and giving an example.
    """
    if not isinstance(text, str):
        raise InputError(f"invalid shape {text!r}: {_SHAPE_HINT}")
    if len(text) > 4 * _MAX_TEXT:
        raise InputError(f"invalid shape '{text[:_MAX_TEXT]}…': {len(text)} characters is not a shape; {_SHAPE_HINT}")
    inner = text.strip()
    if len(inner) >= 2 and (inner[0], inner[-1]) in {("(", ")"), ("[", "]")}:
        inner = inner[1:-1].strip()
        if inner.endswith(","):  # one-element tuple spelling: (128,)
            inner = inner[:-1]
    has_x = "x" in inner.lower()
    has_comma = "," in inner
    if not inner or (has_x and has_comma):
        raise InputError(f"invalid shape '{text}': {_SHAPE_HINT}")
    parts = re.split(r"[xX]" if has_x else ",", inner)
    dims: list[int] = []
    for part in parts:
        part = part.strip()
        if not part.isascii() or not part.isdigit() or int(part) <= 0:
            shown = part if part else "(empty)"
            raise InputError(
                f"invalid shape '{text}': dimension '{shown}' is not a positive integer; {_SHAPE_HINT}"
            )
        dims.append(int(part))
    if len(dims) > MAX_DIMS:
        raise InputError(f"invalid shape '{text}': {len(dims)} dimensions; at most {MAX_DIMS}")
    numel = 1
    for d in dims:
        numel *= d
    if numel >= 2**63:
        raise InputError(f"invalid shape '{text}': {numel:.3g} elements, beyond a 64-bit count (overflow)")
    return tuple(dims)
