"""Lets ``import shop`` work in the example's tests, as it would for an installed package."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
