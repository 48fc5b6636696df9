"""Targets: built-in device files, the loader and its one-line errors, and docs/targets.md."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from target_support import VALID_TARGET_TOML

import budgetplan.targets as targets_pkg
from budgetplan.errors import InputError, TargetError
from budgetplan.targets import (
    DTYPE_BYTES,
    NUMERIC_FIELDS,
    Target,
    builtin_target_names,
    list_targets,
    load_target,
)
from budgetplan.units import format_bytes

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "targets.md"
TARGET_DIR = Path(targets_pkg.__file__).resolve().parent

EXPECTED_BUILTINS = {
    "alif-e7",
    "esp32-s3",
    "host",
    "jetson-nano",
    "nrf52840",
    "nrf5340",
    "raspberry-pi-4",
    "rp2040",
    "stm32f411",
    "stm32f746",
    "stm32h743",
}

ALIASES = {
    "cortex-m7": "stm32f746",
    "cortex-m4": "nrf52840",
    "nano33ble": "nrf52840",
    "cortex-m0plus": "rp2040",
    "pico": "rp2040",
    "cortex-m33": "nrf5340",
    "cortex-m55": "alif-e7",
    "esp32s3": "esp32-s3",
    "rpi4": "raspberry-pi-4",
}

KiB = 1024
MiB = 1024**2
GiB = 1024**3

# (clock_hz, sram_bytes, flash_bytes) from BRIEF §4's device table.
BRIEF_FIGURES: dict[str, tuple[float, int, int | None]] = {
    "rp2040": (133e6, 264 * KiB, 2 * MiB),
    "stm32f411": (100e6, 128 * KiB, 512 * KiB),
    "nrf52840": (64e6, 256 * KiB, 1 * MiB),
    "stm32f746": (216e6, 320 * KiB, 1 * MiB),
    "stm32h743": (480e6, 1 * MiB, 2 * MiB),
    "nrf5340": (128e6, 512 * KiB, 1 * MiB),
    "alif-e7": (400e6, 1 * MiB, None),
    "esp32-s3": (240e6, 512 * KiB, None),
    "raspberry-pi-4": (1.5e9, 4 * GiB, None),
}

# Devices for which BRIEF §4 gives no MAC/cycle figure: their files must say theirs is an estimate.
ESTIMATED_THROUGHPUT = [
    "rp2040", "stm32f411", "nrf52840", "nrf5340", "alif-e7", "raspberry-pi-4", "jetson-nano",
]


# --------------------------------------------------------------------------------------------------
# Built-in targets
# --------------------------------------------------------------------------------------------------


def test_builtin_files_are_exactly_the_expected_devices() -> None:
    on_disk = {p.stem for p in TARGET_DIR.glob("*.toml")}
    assert on_disk == EXPECTED_BUILTINS
    assert [t.name for t in list_targets()] == sorted(EXPECTED_BUILTINS)


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_every_builtin_loads_and_is_consistent(name: str) -> None:
    t = load_target(name)
    assert isinstance(t, Target)
    assert t.name == name
    assert t.path is not None and t.path.name == f"{name}.toml"
    assert t.family in {"host", "mcu", "embedded-linux"}
    assert t.description and t.core
    assert 0 < t.usable_bytes <= t.largest_block_bytes <= t.sram_bytes
    assert t.usable_bytes == min(t.sram_bytes, t.largest_block_bytes) - t.reserved_bytes
    assert t.macs_per_second == pytest.approx(t.clock_hz * t.macs_per_cycle)
    assert t.default_input_resolution in (96, 128, 160, 224)


@pytest.mark.parametrize(("alias", "name"), sorted(ALIASES.items()))
def test_aliases_resolve(alias: str, name: str) -> None:
    assert load_target(alias).name == name
    assert alias in load_target(name).aliases


@pytest.mark.parametrize("spelling", ["CORTEX-M7", "Cortex-M7", "STM32F746", "Stm32F746", " cortex-m7 "])
def test_names_are_case_insensitive(spelling: str) -> None:
    assert load_target(spelling).name == "stm32f746"


def test_cortex_m7_default_budget_is_the_256k_of_tiny_training() -> None:
    t = load_target("cortex-m7")
    assert t.usable_bytes >= 262144
    assert t.usable_bytes == 262144
    assert t.sram_bytes == 327680  # so --ram 256k lies within SRAM
    assert t.largest_block_bytes >= 262144


def test_builtin_target_names_lists_names_and_aliases_once() -> None:
    names = builtin_target_names()
    assert len(names) == len({n.lower() for n in names})
    assert EXPECTED_BUILTINS <= set(names)
    assert set(ALIASES) <= set(names)


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_every_number_in_a_builtin_file_has_a_source(name: str) -> None:
    raw = tomllib.loads((TARGET_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    sources = raw.get("sources", {})
    for field in NUMERIC_FIELDS:
        if field in raw:
            assert sources.get(field, "").strip(), f"{name}.toml: {field} has no source"
    # The loaded target has a source for every numeric field that has a value.
    t = load_target(name)
    for field in NUMERIC_FIELDS:
        if getattr(t, field) is not None:
            assert t.sources.get(field, "").strip(), f"{name}: {field}"


@pytest.mark.parametrize("name", ESTIMATED_THROUGHPUT)
def test_throughput_without_a_brief_figure_is_marked_as_an_estimate(name: str) -> None:
    assert "estimate" in load_target(name).sources["macs_per_cycle"].lower()


@pytest.mark.parametrize(("name", "figures"), sorted(BRIEF_FIGURES.items()))
def test_builtins_match_the_brief_device_table(name: str, figures: tuple[float, int, int | None]) -> None:
    clock_hz, sram_bytes, flash_bytes = figures
    t = load_target(name)
    assert t.clock_hz == clock_hz
    assert t.sram_bytes == sram_bytes
    assert t.flash_bytes == flash_bytes


def test_largest_blocks_from_the_brief() -> None:
    assert load_target("stm32h743").largest_block_bytes == 512 * KiB
    assert load_target("rp2040").largest_block_bytes == 256 * KiB


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_dtypes_follow_the_family_conventions(name: str) -> None:
    target = load_target(name)
    if target.family == "mcu":
        assert (target.activation_dtype, target.weight_dtype, target.bias_dtype) == ("int8", "int8", "int32")
        assert (target.gradient_dtype, target.optimizer_dtype) == ("float32", "float32")
        assert target.dtype_bytes("activation") == 1
        assert target.dtype_bytes("bias") == 4
    else:
        for kind in ("activation", "weight", "gradient", "bias", "optimizer"):
            assert getattr(target, f"{kind}_dtype") == "float32"
            assert target.dtype_bytes(kind) == 4


def test_host_target() -> None:
    t = load_target("host")
    assert t.family == "host"
    assert t.sram_bytes == 8 * GiB
    assert "default budget" in t.notes
    assert "nominal" in t.sources["macs_per_cycle"]


def test_dtype_bytes_table_and_unknown_kind() -> None:
    assert DTYPE_BYTES == {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "float16": 2, "bfloat16": 2,
                           "float32": 4, "float64": 8}
    with pytest.raises(ValueError, match="activation"):
        load_target("host").dtype_bytes("activations")


def test_to_dict_is_json_and_round_trips() -> None:
    t = load_target("cortex-m7")
    data = json.loads(json.dumps(t.to_dict()))
    assert data["path"] == str(t.path)
    assert data["aliases"] == ["cortex-m7"]
    assert data["usable_bytes"] == 262144
    assert data["macs_per_second"] == pytest.approx(216e6 * 0.30)
    fields = {f.name for f in dataclasses.fields(Target)}
    rebuilt = Target(**{k: v for k, v in data.items() if k in fields} | {"path": Path(data["path"])})
    assert rebuilt == t


def test_targets_are_frozen_hashable_and_validated_on_replace() -> None:
    t = load_target("rp2040")
    assert hash(t) == hash(load_target("pico"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.sram_bytes = 1  # type: ignore[misc]
    with pytest.raises(TargetError, match="reserved_bytes"):
        dataclasses.replace(t, reserved_bytes=t.largest_block_bytes)
    with pytest.raises(TargetError, match="activation_dtype"):
        dataclasses.replace(t, activation_dtype="int4")
    smaller = dataclasses.replace(t, reserved_bytes=0)
    assert smaller.usable_bytes == 256 * KiB


def test_returned_targets_do_not_share_mutable_state() -> None:
    a = load_target("stm32f746")
    a.sources["clock_hz"] = "changed"
    assert load_target("stm32f746").sources["clock_hz"] != "changed"


# --------------------------------------------------------------------------------------------------
# Unknown names and files
# --------------------------------------------------------------------------------------------------


def test_unknown_target_suggests_nearest_names() -> None:
    with pytest.raises(TargetError) as info:
        load_target("cortex-m8")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown target 'cortex-m8'; did you mean: ")
    suggested = message.split("did you mean: ")[1].split("?")[0].split(", ")
    assert suggested[0] == "cortex-m7"
    assert "cortex-m4" in suggested
    assert "budgetplan targets" in message


def test_unknown_target_without_close_match_lists_known_targets() -> None:
    with pytest.raises(TargetError) as info:
        load_target("xyzzy")
    message = str(info.value)
    assert "did you mean" not in message
    for name in EXPECTED_BUILTINS:
        assert name in message


def test_target_error_is_an_input_error() -> None:
    with pytest.raises(InputError):
        load_target("no-such-board")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "board.toml"
    for arg in (missing, str(missing)):
        with pytest.raises(TargetError) as info:
            load_target(arg)
        message = str(info.value)
        assert "\n" not in message
        assert str(missing) in message and "not found" in message


def test_directory_is_not_a_target_file(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="not a file"):
        load_target(tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(TargetError, match="UTF-8"):
        load_target(path)


# --------------------------------------------------------------------------------------------------
# User files: valid and invalid
# --------------------------------------------------------------------------------------------------

VALID = VALID_TARGET_TOML


def _write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_user_file_with_size_strings_and_family_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    t = load_target(path)
    assert t.name == "test-board"
    assert t.sram_bytes == 327680
    assert t.flash_bytes == MiB
    assert t.reserved_bytes == 16 * KiB
    assert t.usable_bytes == 262144 - 16 * KiB
    assert t.path == path
    assert t.aliases == ()
    # dtypes left out: the mcu family's tiny-training defaults
    assert (t.activation_dtype, t.weight_dtype, t.gradient_dtype, t.bias_dtype) == ("int8", "int8", "float32",
                                                                                    "int32")
    # the same file by string path, and by a string that does not end in .toml
    assert load_target(str(path)) == t
    plain = _write(tmp_path, VALID, name="boardfile")
    assert load_target(str(plain)).name == "test-board"


def test_optional_fields_get_defaults_with_a_source(tmp_path: Path) -> None:
    text = VALID.replace("largest_block_bytes = 262144\n", "").replace("flash_bytes = \"1M\"\n", "")
    text = text.replace('largest_block_bytes = "memory map"\n', "").replace('flash_bytes = "datasheet"\n', "")
    t = load_target(_write(tmp_path, text))
    assert t.largest_block_bytes == t.sram_bytes == 327680
    assert t.sources["largest_block_bytes"].startswith("default:")
    assert t.flash_bytes is None
    assert "flash_bytes" not in t.sources


def test_embedded_linux_defaults_are_float32(tmp_path: Path) -> None:
    t = load_target(_write(tmp_path, VALID.replace('family = "mcu"', 'family = "embedded-linux"')))
    dtypes = {t.activation_dtype, t.weight_dtype, t.gradient_dtype, t.bias_dtype, t.optimizer_dtype}
    assert dtypes == {"float32"}


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


# (case id, edit of VALID, substrings the one-line message must contain)
INVALID: list[tuple[str, Callable[[str], str], list[str]]] = [
    ("syntax", _replace('core = "cortex-m4f"', 'core "cortex-m4f"'), ["TOML syntax error", "line 3"]),
    ("syntax-unclosed-string", _replace('"a test board"', '"a test board'), ["TOML syntax error", "line 2"]),
    ("missing-required", _replace('core = "cortex-m4f"\n', ""), ["core", "missing"]),
    ("missing-family", _replace('family = "mcu"\n', ""), ["family", "missing"]),
    ("wrong-type-number", _replace("clock_hz = 80_000_000", 'clock_hz = "fast"'), ["clock_hz", "number"]),
    ("wrong-type-bool", _replace("macs_per_cycle = 0.2", "macs_per_cycle = true"),
     ["macs_per_cycle", "number"]),
    ("wrong-type-size-float", _replace("largest_block_bytes = 262144", "largest_block_bytes = 262144.0"),
     ["largest_block_bytes", "integer number of bytes"]),
    ("wrong-type-size-bool", _replace('sram_bytes = "320k"', "sram_bytes = true"), ["sram_bytes"]),
    ("wrong-type-string", _replace('core = "cortex-m4f"', "core = 7"), ["core", "string"]),
    ("wrong-type-aliases", _replace('core = "cortex-m4f"', 'core = "cortex-m4f"\naliases = "tb"'),
     ["aliases", "array"]),
    ("wrong-type-resolution", _replace("default_input_resolution = 96", "default_input_resolution = 96.5"),
     ["default_input_resolution", "integer"]),
    ("unknown-field", _replace('sram_bytes = "320k"', 'sram_bytes = "320k"\nsram_byte = "320k"'),
     ["sram_byte", "unknown field", "did you mean 'sram_bytes'"]),
    ("unknown-section", _replace("[sources]", "[source]"), ["source", "did you mean 'sources'"]),
    ("unknown-dtype", _replace('family = "mcu"', 'family = "mcu"\nweight_dtype = "fp32"'),
     ["weight_dtype", "unknown dtype 'fp32'", "float32"]),
    ("unknown-family", _replace('family = "mcu"', 'family = "mcus"'), ["family", "did you mean 'mcu'"]),
    ("zero-size", _replace('sram_bytes = "320k"', "sram_bytes = 0"), ["sram_bytes", "positive"]),
    ("negative-size", _replace('flash_bytes = "1M"', "flash_bytes = -1"), ["flash_bytes", "positive"]),
    ("zero-size-string", _replace('flash_bytes = "1M"', 'flash_bytes = "0k"'), ["flash_bytes", "positive"]),
    ("bad-size-string", _replace('sram_bytes = "320k"', 'sram_bytes = "320 kilo"'),
     ["sram_bytes", "invalid size '320 kilo'"]),
    ("fractional-size-string", _replace('sram_bytes = "320k"', 'sram_bytes = "0.3k"'),
     ["sram_bytes", "whole number"]),
    ("negative-reserve", _replace('reserved_bytes = "16KiB"', "reserved_bytes = -16"), ["reserved_bytes"]),
    ("zero-clock", _replace("clock_hz = 80_000_000", "clock_hz = 0"), ["clock_hz", "positive"]),
    ("nan-clock", _replace("clock_hz = 80_000_000", "clock_hz = nan"), ["clock_hz", "positive"]),
    ("negative-macs", _replace("macs_per_cycle = 0.2", "macs_per_cycle = -0.2"), ["macs_per_cycle"]),
    ("zero-resolution", _replace("default_input_resolution = 96", "default_input_resolution = 0"),
     ["default_input_resolution"]),
    ("block-larger-than-sram", _replace("largest_block_bytes = 262144", 'largest_block_bytes = "512k"'),
     ["largest_block_bytes", "larger than sram_bytes"]),
    ("reserve-eats-block", _replace('reserved_bytes = "16KiB"', 'reserved_bytes = "256k"'),
     ["reserved_bytes", "smaller than"]),
    ("missing-source", _replace('macs_per_cycle = "estimate"\n', ""), ["sources.macs_per_cycle", "missing"]),
    ("no-sources-table", lambda text: text.split("[sources]")[0], ["sources.clock_hz", "missing"]),
    ("unknown-source-key", _replace('clock_hz = "datasheet"', 'clock_hz = "datasheet"\nclock = "x"'),
     ["sources.clock", "did you mean 'clock_hz'"]),
    ("empty-source", _replace('clock_hz = "datasheet"', 'clock_hz = "  "'), ["sources.clock_hz"]),
    ("bad-name", _replace('name = "test-board"', 'name = "test board"'), ["name", "not a valid name"]),
]


@pytest.mark.parametrize(
    ("edit", "expected"), [(e, x) for _, e, x in INVALID], ids=[c for c, _, _ in INVALID]
)
def test_invalid_file_gives_one_line_error_naming_file_and_field(
    tmp_path: Path, edit: Callable[[str], str], expected: list[str]
) -> None:
    path = _write(tmp_path, edit(VALID))
    with pytest.raises(TargetError) as info:
        load_target(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid target file '{path}'")
    for part in expected:
        assert part in message, (part, message)


def test_the_valid_base_file_really_is_valid(tmp_path: Path) -> None:
    # Guards the invalid cases above: each must fail because of its own edit, not the base text.
    load_target(_write(tmp_path, VALID))


# --------------------------------------------------------------------------------------------------
# docs/targets.md stays true
# --------------------------------------------------------------------------------------------------


def _doc_toml_blocks() -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", DOCS.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_docs_example_target_loads(tmp_path: Path) -> None:
    blocks = _doc_toml_blocks()
    assert len(blocks) == 1
    t = load_target(_write(tmp_path, blocks[0], name="my-m4-board.toml"))
    assert t.name == "my-m4-board"
    assert t.family == "mcu"
    # the values the docs quote under "Loading it from Python"
    assert t.usable_bytes == 106496 == min(196608, 131072) - 24576
    assert t.macs_per_second == 12_000_000.0
    assert t.dtype_bytes("bias") == 4
    assert t.default_input_resolution == 96
    # the docs call it complete: it sets every field
    raw = tomllib.loads(blocks[0])
    assert set(raw) == {f.name for f in dataclasses.fields(Target)} - {"path"}
    assert set(raw["sources"]) == set(NUMERIC_FIELDS)


DOC_ERROR_EDITS: list[Callable[[str], str]] = [
    _replace("sram_bytes =", "sram_byte ="),
    _replace('activation_dtype = "int8"', 'activation_dtype = "int4"'),
    _replace("reserved_bytes = 24576", 'reserved_bytes = "128k"'),
    _replace('clock_hz = "board datasheet (example)"\n', ""),
    _replace('core = "cortex-m4f"', 'core "cortex-m4f"'),
]


@pytest.mark.parametrize("edit", DOC_ERROR_EDITS)
def test_docs_error_examples_are_what_the_loader_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Callable[[str], str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, edit(_doc_toml_blocks()[0]), name="my-m4-board.toml")
    with pytest.raises(TargetError) as info:
        load_target("my-m4-board.toml")
    assert str(info.value) in DOCS.read_text(encoding="utf-8")


def test_docs_unknown_target_example_is_what_the_loader_says() -> None:
    with pytest.raises(TargetError) as info:
        load_target("cortex-m8")
    assert str(info.value) in DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_docs_table_matches_builtin_files(name: str) -> None:
    target = load_target(name)
    section = DOCS.read_text(encoding="utf-8").split("\n## Built-in targets\n", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith(f"| `{target.name}` |")]
    assert len(rows) == 1, target.name
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    name, aliases, core, _clock, sram, block, reserved, usable, flash, family, macs = cells
    assert aliases == (", ".join(f"`{a}`" for a in target.aliases) or "—")
    assert core == target.core
    assert sram == format_bytes(target.sram_bytes)
    assert block == format_bytes(target.largest_block_bytes)
    assert reserved == format_bytes(target.reserved_bytes)
    assert usable == f"{format_bytes(target.usable_bytes)} ({target.usable_bytes:,} B)"
    assert flash == (format_bytes(target.flash_bytes) if target.flash_bytes else "—")
    assert family == target.family
    assert float(macs) == target.macs_per_cycle
