"""Checks of plain values from plans and plan files, shared by every module that validates."""

from __future__ import annotations

import math
from typing import Any


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite, including ints too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range, e.g. 10**400 written in a plan file
        return False


def describe(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened for error messages (plan files can hold huge values)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
