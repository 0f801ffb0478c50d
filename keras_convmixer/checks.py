"""Argument checks shared by the modules: each error names the argument and what is allowed."""

from __future__ import annotations

import numbers
from typing import Any


def check_positive_int(name: str, value: Any) -> int:
    """`value` as a Python int if it is a positive integer (NumPy's included), else a ValueError
    naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return int(value)
