"""The one test of "is this value a number", shared by the reward checks (`rewards/base.py`), the
run log (`runlog.py`) and the trackers (`trackers.py`), so a value a reward returns is logged and
plotted the same everywhere."""

from __future__ import annotations

import math
import numbers
from typing import Any


def as_number(v: Any, finite: bool = False) -> float | None:
    """`v` as a Python float when it is a real number: an int, float or bool, a numpy scalar, or a
    one-element array or tensor. None for anything else (strings, None, larger arrays, complex)
    and, with `finite=True`, for NaN and +-inf too (JSON has no NaN; W&B plots none)."""
    if not isinstance(v, numbers.Real):
        item = getattr(v, "item", None)
        if not callable(item):
            return None
        try:  # a numpy or torch scalar; a larger array raises
            v = item()
        except (ValueError, RuntimeError, TypeError):
            return None
        if not isinstance(v, numbers.Real):
            return None
    x = float(v)
    return None if finite and not math.isfinite(x) else x
