"""Shared fixtures: make the test folder importable (tests/model_styles.py) and keep rich output wide."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("COLUMNS", "200")
