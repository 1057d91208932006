"""Checks of plain values from plans and plan files, and the "did you mean" hint: one home for
both, shared by every module that validates."""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable

from .errors import ParamgroupsError


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


def check_number(name: str, value: Any, error: type[ParamgroupsError], *,
                 optional: bool = True) -> Any:
    """``value`` when it is a finite number >= 0 (not a bool), or ``None`` when ``optional``;
    else ``error`` saying what ``name`` must be and what it got."""
    if value is None and optional:
        return None
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number, got {describe(value)}")
    if not is_finite_number(value) or value < 0:
        raise error(f"{name} must be a finite number >= 0, got {describe(value)}")
    return value


def check_count(name: str, value: Any, error: type[ParamgroupsError]) -> int:
    """``value`` when it is a whole number >= 1 (an int, not a bool: steps, epochs); else
    ``error`` saying so."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def check_flag(name: str, value: Any, error: type[ParamgroupsError]) -> bool:
    """``value`` when it is a bool; else ``error`` saying ``name`` must be true or false."""
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {describe(value)}")
    return value


def did_you_mean(value: Any, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str | None:
    """``did you mean 'x'?`` (``did you mean a, b?`` when ``n > 1``) for the choices closest to
    ``value``, or ``None`` when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=cutoff)
    if not close:
        return None
    return f"did you mean {close[0]!r}?" if n == 1 else f"did you mean {', '.join(close)}?"


def hint(value: Any, choices: Iterable[str], *, what: str = "one of", n: int = 1,
         cutoff: float = 0.6) -> str:
    """The closest choice (:func:`did_you_mean`), else the list of them: ``did you mean 'x'?``
    or ``one of a, b, c``, for an error message about an unknown ``value``."""
    choices = list(choices)
    return did_you_mean(value, choices, n=n, cutoff=cutoff) or f"{what} {', '.join(choices)}"
