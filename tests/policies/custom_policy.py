"""A user's own policy for `type: python` config tests (imported by ref, not by pytest)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def highest_strike(state: Any, candidates: Sequence[Any], min_iv_rv: float = -1.0) -> Any:
    """Sell the highest-strike candidate when IV exceeds RV by `min_iv_rv`, else do nothing."""
    spread = getattr(state, "iv_rv_spread", None)
    if not candidates or (spread is not None and spread < min_iv_rv):
        return None
    return max(candidates, key=lambda c: c.strike)


def slow_always_sell(state: Any, candidates: Sequence[Any], delay_s: float = 0.05) -> Any:
    """The first candidate, after a pause (a run long enough to interrupt)."""
    time.sleep(delay_s)
    return candidates[0] if candidates else None
