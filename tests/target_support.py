"""A valid target file (TOML) that the target tests edit one field at a time."""

VALID_TARGET_TOML = """\
name = "test-board"
description = "a test board"
core = "cortex-m4f"
family = "mcu"
clock_hz = 80_000_000
macs_per_cycle = 0.2
sram_bytes = "320k"
largest_block_bytes = 262144
flash_bytes = "1M"
reserved_bytes = "16KiB"
default_input_resolution = 96

[sources]
clock_hz = "datasheet"
macs_per_cycle = "estimate"
sram_bytes = "datasheet"
largest_block_bytes = "memory map"
flash_bytes = "datasheet"
reserved_bytes = "measured"
default_input_resolution = "camera"
"""
