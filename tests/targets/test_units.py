"""Byte sizes and shapes: budgetplan.units."""

from __future__ import annotations

import re

import pytest

from budgetplan.errors import BudgetplanError, InputError
from budgetplan.units import MAX_BYTES, MAX_DIMS, format_bytes, parse_bytes, parse_shape

KiB = 1024
MiB = 1024**2
GiB = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256k", 256 * KiB),
        ("256K", 256 * KiB),
        ("256KB", 256 * KiB),
        ("256kb", 256 * KiB),
        ("256KiB", 256 * KiB),
        ("256kib", 256 * KiB),
        ("256 k", 256 * KiB),
        ("  256 KiB  ", 256 * KiB),
        ("0.5M", 524288),
        ("0.5MB", 524288),
        ("0.5 MiB", 524288),
        ("1MiB", MiB),
        ("1m", MiB),
        ("2G", 2 * GiB),
        ("2GiB", 2 * GiB),
        ("1.5KiB", 1536),
        (".5k", 512),
        ("262144", 262144),
        ("262144B", 262144),
        ("262144 b", 262144),
        ("262_144", 262144),
        ("1", 1),
        ("+4k", 4 * KiB),
        ("1T", 1024**4),
    ],
)
def test_parse_bytes_accepts(text: str, expected: int) -> None:
    value = parse_bytes(text)
    assert value == expected
    assert type(value) is int


def test_kb_and_kib_are_both_1024() -> None:
    # Embedded practice: "256 KB of SRAM" is 262144 bytes, never 256000.
    assert parse_bytes("256KB") == parse_bytes("256KiB") == 262144 != 256000
    assert parse_bytes("1MB") == 1048576 != 1000000


@pytest.mark.parametrize(
    "text",
    ["", "   ", "-1", "-256k", "0", "0k", "0.0M", "nan", "NaN", "inf", "abc", "k", "256kk", "256 kibs",
     "256 kilobytes", "12 34", "1..5k", "1,5k", "0x100", "256k!", "1e999"],
)
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(InputError) as info:
        parse_bytes(text)
    message = str(info.value)
    assert "\n" not in message
    # BudgetplanError collapses runs of whitespace so that the message stays one line.
    assert message.startswith(" ".join(f"invalid size '{text}'".split()))
    assert "256k" in message  # an example of the right syntax


@pytest.mark.parametrize("text", ["0.3k", "1.5", "0.1KiB", "1e-3M"])
def test_parse_bytes_rejects_fractional_bytes(text: str) -> None:
    with pytest.raises(InputError, match="whole number of bytes"):
        parse_bytes(text)


def test_parse_bytes_rejects_non_strings() -> None:
    with pytest.raises(InputError):
        parse_bytes(None)  # type: ignore[arg-type]


def test_input_error_is_a_budgetplan_error_with_exit_code_2() -> None:
    with pytest.raises(BudgetplanError) as info:
        parse_bytes("lots")
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (100, "100 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (262144, "256.0 KiB"),
        (327680, "320.0 KiB"),
        (MiB, "1.0 MiB"),
        (MiB - 1, "1.0 MiB"),  # 1023.999 KiB rounds up: printed in the next unit, not "1024.0 KiB"
        (1536 * KiB, "1.5 MiB"),
        (3 * GiB, "3.0 GiB"),
        (2 * 1024**4, "2.0 TiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize("n", [1024, 1536, 262144, 327680, MiB, 3 * GiB])
def test_format_then_parse_round_trips_for_exact_sizes(n: int) -> None:
    assert parse_bytes(format_bytes(n)) == n


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1x3x128x128", (1, 3, 128, 128)),
        ("1X3X128X128", (1, 3, 128, 128)),
        ("1 x 3 x 128 x 128", (1, 3, 128, 128)),
        ("1,3,128,128", (1, 3, 128, 128)),
        ("(1, 3, 128, 128)", (1, 3, 128, 128)),
        ("[1, 3, 96, 96]", (1, 3, 96, 96)),
        ("(128,)", (128,)),
        ("10", (10,)),
        (" 2x3 ", (2, 3)),
    ],
)
def test_parse_shape_accepts(text: str, expected: tuple[int, ...]) -> None:
    assert parse_shape(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "()", "1x0x128x128", "1x-3x128", "1xx3", "1x3x", "x3", "1.5x3", "ax3", "1x3,128", "1;3;128",
     "(1, 3, 128", "1x3x128x128x", "١x3"],
)
def test_parse_shape_rejects(text: str) -> None:
    with pytest.raises(InputError) as info:
        parse_shape(text)
    message = str(info.value)
    assert "\n" not in message
    assert f"'{text}'" in message
    assert "1x3x128x128" in message  # an example


# --------------------------------------------------------------------------------------------------
# limits (issue 12): sizes beyond any device, shapes that overflow, texts too long to be either
# --------------------------------------------------------------------------------------------------


def test_parse_bytes_limit_is_256_tib() -> None:
    assert parse_bytes("256T") == 2**48 == MAX_BYTES
    for text in ("257T", "9999999999999999999999T", "1e99", str(2**48 + 1), "1e30k"):
        with pytest.raises(InputError, match="more than any device has"):
            parse_bytes(text)


def test_parse_bytes_refuses_overlong_text_before_parsing() -> None:
    with pytest.raises(InputError, match="5000 characters is not a size") as info:
        parse_bytes("9" * 5000)  # int() of it would raise ValueError (Python's digit limit)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(("text", "needle"), [
    ("1x3x99999999999999999999x1", "beyond a 64-bit count (overflow)"),
    ("2097152x2097152x2097152", "beyond a 64-bit count"),  # 2**63 elements
    ("x".join(["1"] * (MAX_DIMS + 1)), f"{MAX_DIMS + 1} dimensions; at most {MAX_DIMS}"),
    ("1x" + "9" * 5000, "characters is not a shape"),
])
def test_parse_shape_limits(text: str, needle: str) -> None:
    with pytest.raises(InputError, match=re.escape(needle)):
        parse_shape(text)
    assert parse_shape("1x3x100000x100000") == (1, 3, 100000, 100000)  # its bytes are judged where it is allocated
