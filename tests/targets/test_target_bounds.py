"""Target files: every number is bounded (sizes by --ram's 256 TiB, rates finite and within what a
device can do), through load_target, a Target built in Python, resolve_budget and the CLI; the limits in
docs/targets.md are what the loader says."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import assert_cli_error, assert_one_line_error, invoke, run
from target_support import VALID_TARGET_TOML

from budgetplan.errors import InputError, TargetError
from budgetplan.targets import Target, load_target, resolve_budget
from budgetplan.units import MAX_BYTES

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "targets.md"

BASE = VALID_TARGET_TOML

#: the value lines of BASE, by field
_LINES = {line.split(" = ", 1)[0]: line
          for line in BASE.split("\n[sources]")[0].splitlines() if " = " in line}


def _set(**fields: str) -> str:
    """BASE with the given fields' values replaced by TOML text (only above [sources])."""
    head, sources = BASE.split("\n[sources]")
    for key, value in fields.items():
        assert _LINES[key] in head, key
        head = head.replace(_LINES[key], f"{key} = {value}", 1)
    return head + "\n[sources]" + sources


def _write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# A size as large as --ram allows everywhere (sram, block, flash) with no reserve: the upper edge.
_HUGE = {"sram_bytes": str(MAX_BYTES), "largest_block_bytes": str(MAX_BYTES), "flash_bytes": str(MAX_BYTES),
         "reserved_bytes": "0"}

# (case id, fields to set, substrings of the one-line message: the field first)
OUT_OF_BOUNDS: list[tuple[str, dict[str, str], list[str]]] = [
    ("sram-26-digits", {"sram_bytes": "99999999999999999999999999"},
     ["sram_bytes: must be at most 281,474,976,710,656 bytes", "256.0 TiB", "got 1e+26"]),
    ("sram-one-past-limit", {**_HUGE, "sram_bytes": str(MAX_BYTES + 1)},
     ["sram_bytes: must be at most", f"got {MAX_BYTES + 1}"]),
    ("sram-4000-digits", {"sram_bytes": "9" * 4000}, ["sram_bytes: must be at most", "about 4000 digits"]),
    ("block-past-limit", {**_HUGE, "largest_block_bytes": str(MAX_BYTES + 1)},
     ["largest_block_bytes: must be at most"]),
    ("flash-past-limit", {"flash_bytes": str(2**64)}, ["flash_bytes: must be at most"]),
    ("flash-string-past-limit", {"flash_bytes": '"257T"'}, ["flash_bytes", "256 TiB"]),
    ("reserve-26-digits", {"reserved_bytes": "99999999999999999999999999"},
     ["reserved_bytes: must be at most", "got 1e+26"]),
    ("clock-1e400", {"clock_hz": "1e400"}, ["clock_hz: must be a finite positive number", "got inf"]),
    ("clock-inf", {"clock_hz": "inf"}, ["clock_hz", "1 kHz to 100 GHz", "got inf"]),
    ("clock-minus-inf", {"clock_hz": "-inf"}, ["clock_hz", "got -inf"]),
    ("clock-nan", {"clock_hz": "nan"}, ["clock_hz", "got nan"]),
    ("clock-1e300", {"clock_hz": "1e300"}, ["clock_hz", "got 1e+300"]),
    ("clock-above-100GHz", {"clock_hz": "100_000_000_001"}, ["clock_hz", "1e+11"]),
    ("clock-below-1kHz", {"clock_hz": "999.9"}, ["clock_hz", "from 1000"]),
    ("clock-denormal", {"clock_hz": "1e-320"}, ["clock_hz"]),
    ("clock-400-digits", {"clock_hz": "9" * 400}, ["clock_hz", "about 400 digits"]),
    ("macs-zero", {"macs_per_cycle": "0"}, ["macs_per_cycle: must be a finite positive number", "got 0.0"]),
    ("macs-negative", {"macs_per_cycle": "-2"}, ["macs_per_cycle", "got -2.0"]),
    ("macs-denormal", {"macs_per_cycle": "1e-320"}, ["macs_per_cycle", "1e-06", "got 1e-320"]),
    ("macs-1e35", {"macs_per_cycle": "99999999999999999999999999999999999"}, ["macs_per_cycle", "1e+09"]),
    ("macs-nan", {"macs_per_cycle": "nan"}, ["macs_per_cycle", "got nan"]),
    ("resolution-1e9", {"default_input_resolution": "1_000_000_000"},
     ["default_input_resolution: must be a positive number of pixels, at most 65536", "got 1000000000"]),
    ("resolution-27-digits", {"default_input_resolution": "9" * 27},
     ["default_input_resolution", "got 1e+27"]),
    ("resolution-negative", {"default_input_resolution": "-1"}, ["default_input_resolution", "got -1"]),
    ("resolution-one-past", {"default_input_resolution": "65537"}, ["default_input_resolution", "65536"]),
]


@pytest.mark.parametrize(("fields", "expected"), [(f, x) for _, f, x in OUT_OF_BOUNDS],
                         ids=[c for c, _, _ in OUT_OF_BOUNDS])
def test_out_of_bounds_number_is_one_line_naming_file_and_field(
    tmp_path: Path, fields: dict[str, str], expected: list[str]
) -> None:
    path = _write(tmp_path, _set(**fields))
    with pytest.raises(TargetError) as info:
        load_target(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    assert message.startswith(f"invalid target file '{path}': "), message
    for part in expected:
        assert part in message, (part, message)


def test_the_limits_themselves_are_accepted(tmp_path: Path) -> None:
    at_limits = _set(**_HUGE, clock_hz="1e11", macs_per_cycle="1e9", default_input_resolution="65536")
    t = load_target(_write(tmp_path, at_limits))
    assert t.sram_bytes == t.largest_block_bytes == t.flash_bytes == t.usable_bytes == MAX_BYTES == 2**48
    assert t.macs_per_second == 1e20
    low = _set(sram_bytes="1", largest_block_bytes="1", flash_bytes="1", reserved_bytes="0",
               clock_hz="1000", macs_per_cycle="1e-6", default_input_resolution="1")
    t = load_target(_write(tmp_path, low, name="low.toml"))
    assert (t.usable_bytes, t.clock_hz, t.macs_per_cycle) == (1, 1e3, 1e-6)
    assert t.macs_per_second == pytest.approx(1e-3)
    # the size strings reach the same limit: "256T" is 2**48 bytes
    t = load_target(_write(tmp_path, _set(**{**_HUGE, "sram_bytes": '"256T"'}), name="str.toml"))
    assert t.sram_bytes == MAX_BYTES


def test_an_integer_too_long_for_python_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, _set(sram_bytes="9" * 5000))
    with pytest.raises(TargetError) as info:
        load_target(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid target file '{path}': a number is too long to read"), message
    assert "4300 digits" in message


DIRECT: list[tuple[str, object]] = [
    ("clock_hz", 10**400), ("clock_hz", float("inf")), ("clock_hz", 1e-320), ("macs_per_cycle", 2e9),
    ("macs_per_cycle", float("nan")), ("sram_bytes", MAX_BYTES + 1), ("flash_bytes", 10**30),
    ("reserved_bytes", 10**5000), ("default_input_resolution", 10**9), ("clock_hz", True),
    ("sram_bytes", 1.5),
]


@pytest.mark.parametrize(("field", "value"), DIRECT, ids=[f"{f}-{i}" for i, (f, _) in enumerate(DIRECT)])
def test_a_target_built_in_python_has_the_same_bounds(field: str, value: object) -> None:
    host = load_target("host")
    with pytest.raises(TargetError) as info:
        dataclasses.replace(host, **{field: value})
    message = str(info.value)
    assert message.startswith(f"invalid target 'host': {field}: "), message
    assert "\n" not in message and len(message) < 300, message


BAD_RAM: list[object] = [0, -5, True, MAX_BYTES + 1, 10**5000, -10**5000, float("nan"), float("inf")]


@pytest.mark.parametrize("ram", BAD_RAM, ids=["0", "-5", "True", "limit+1", "5000-digits", "-5000-digits",
                                              "nan", "inf"])
def test_resolve_budget_refuses_a_number_no_device_has(ram: object) -> None:
    with pytest.raises(InputError) as info:
        resolve_budget(load_target("host"), ram)  # type: ignore[arg-type]
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_resolve_budget_takes_numbers_up_to_the_limit() -> None:
    host = load_target("host")
    assert resolve_budget(host, 65536) == 65536
    assert resolve_budget(host, MAX_BYTES) == MAX_BYTES
    assert resolve_budget(host, 262144.0) == 262144
    assert resolve_budget(host, None) == host.usable_bytes


# --------------------------------------------------------------------------------------------------
# Through the CLI: exit 2, one line on stderr, no traceback
# --------------------------------------------------------------------------------------------------

CLI_CASES: list[tuple[str, dict[str, str], str]] = [
    ("sram", {"sram_bytes": "99999999999999999999999999"}, "sram_bytes: must be at most"),
    ("clock-1e400", {"clock_hz": "1e400"}, "clock_hz: must be a finite positive number"),
    ("clock-400-digits", {"clock_hz": "9" * 400}, "clock_hz: must be a finite positive number"),
    ("macs-denormal", {"macs_per_cycle": "1e-320"}, "macs_per_cycle: must be a finite positive number"),
    ("resolution", {"default_input_resolution": "1_000_000_000"}, "default_input_resolution: must be"),
    ("reserve", {"reserved_bytes": "99999999999999999999999999"}, "reserved_bytes: must be at most"),
    ("5000-digits", {"sram_bytes": "9" * 5000}, "a number is too long to read"),
]


@pytest.mark.parametrize("command", [["inspect", "tinycnn"], ["estimate", "tinycnn", "--update", "fc"],
                                     ["analyze", "tinycnn"]])
@pytest.mark.parametrize(("fields", "needle"), [(f, n) for _, f, n in CLI_CASES],
                         ids=[c for c, _, _ in CLI_CASES])
def test_cli_refuses_an_out_of_bounds_target_in_one_line(
    tmp_path: Path, command: list[str], fields: dict[str, str], needle: str
) -> None:
    path = _write(tmp_path, _set(**fields))
    result = invoke(*command, "--target", str(path))
    assert_cli_error(result, f"error: invalid target file '{path}'", needle)


def test_installed_cli_refuses_an_out_of_bounds_target_in_one_line(tmp_path: Path) -> None:
    """The console script in a real process: exit 2, one stderr line, no traceback, nothing on stdout."""
    path = _write(tmp_path, _set(clock_hz="inf", macs_per_cycle="1e-320"))
    proc = run("inspect", "tinycnn", "--target", str(path), script=True)
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "clock_hz", "got inf")
    path = _write(tmp_path, _set(sram_bytes="99999999999999999999999999"), name="sram.toml")
    proc = run("estimate", "tinycnn", "--update", "fc", "--target", str(path), "--json", "-")
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "sram_bytes: must be at most")


# --------------------------------------------------------------------------------------------------
# docs/targets.md
# --------------------------------------------------------------------------------------------------


def _doc_example() -> str:
    (block,) = re.findall(r"^```toml\n(.*?)^```", DOCS.read_text(encoding="utf-8"), flags=re.S | re.M)
    return block


def _edit(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


@pytest.mark.parametrize("edit", [
    _edit('sram_bytes = "192k"', "sram_bytes = 196608000000000000"),
    _edit("clock_hz = 80_000_000", "clock_hz = 80_000_000_000_000"),
])
def test_docs_bound_error_examples_are_what_the_loader_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Callable[[str], str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, edit(_doc_example()), name="my-m4-board.toml")
    with pytest.raises(TargetError) as info:
        load_target("my-m4-board.toml")
    assert str(info.value) in DOCS.read_text(encoding="utf-8")


def test_docs_limits_table_matches_the_loader(tmp_path: Path) -> None:
    """The Limits table states each range; one past each end of it is refused, the ends are accepted."""
    doc = DOCS.read_text(encoding="utf-8")
    limits = doc.split("\n### Limits\n", 1)[1].split("\n## ", 1)[0]
    for text in ("256 TiB (2⁴⁸ = 281,474,976,710,656 bytes)", "1 kHz to 100 GHz (`1e3` to `1e11`)",
                 "10⁻⁶ to 10⁹ (`1e-6` to `1e9`)", "1 to 65,536 pixels"):
        assert text in limits, text
    assert MAX_BYTES == 281_474_976_710_656
    for field, inside, outside in [("clock_hz", "1e3", "999.0"), ("clock_hz", "1e11", "1.0000001e11"),
                                   ("macs_per_cycle", "1e-6", "0.99e-6"), ("macs_per_cycle", "1e9", "1.01e9"),
                                   ("default_input_resolution", "65536", "65537")]:
        load_target(_write(tmp_path, _set(**{field: inside})))
        with pytest.raises(TargetError, match=field):
            load_target(_write(tmp_path, _set(**{field: outside})))


def test_a_target_file_larger_than_a_mebibyte_is_one_line(tmp_path: Path) -> None:
    """A valid TOML file padded with a comment beyond 1 MiB is refused before it is parsed."""
    text = (Path(__file__).resolve().parents[2] / "targets" / "stm32f746.toml").read_text(encoding="utf-8")
    big = tmp_path / "big.toml"
    big.write_text(text + "#" + "x" * (1 << 20) + "\n", encoding="utf-8")
    with pytest.raises(TargetError) as excinfo:
        load_target(big)
    message = str(excinfo.value)
    assert "\n" not in message and "larger than 1048576 bytes" in message
    small = tmp_path / "small.toml"
    small.write_text(text, encoding="utf-8")
    assert load_target(small).name == "stm32f746"
