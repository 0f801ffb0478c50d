"""Argument checks shared by the modules: each error names the argument and what is allowed."""

from __future__ import annotations

import numbers
from typing import Any


def _is_int(value: Any) -> bool:
    """Whether `value` is an integer (NumPy's included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_bool(name: str, value: Any) -> bool:
    """`value` if it is True or False, else a ValueError naming `name`."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False. Received: {name}={value!r}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """`value` as a Python int if it is a positive integer, else a ValueError naming `name`."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_non_negative_int(name: str, value: Any, or_none: bool = False) -> int | None:
    """`value` as a Python int if it is an integer ≥ 0 (or None, when `or_none`), else a
    ValueError naming `name`."""
    if or_none and value is None:
        return None
    if not _is_int(value) or value < 0:
        allowed = "None or an integer ≥ 0" if or_none else "an integer ≥ 0"
        raise ValueError(f"{name} must be {allowed}. Received: {name}={value!r}")
    return int(value)
