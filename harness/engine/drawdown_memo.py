"""Label drawdowns kept per simulated period, for the next delta band of a sweep.

A hold-to-expiry candidate's max drawdown (`CoveredCallSimulator._drawdowns`) is a function of
the spot closes and the call's mark path over its bars (sale bar to last bar before expiry),
the cash it starts with (premium less the open fee) and its final value at settlement.
Simulators of one period share their closes and mark paths (`SimulatorCaches`), so a band
that offers a call already labeled by another band at the same sale bar can take that
drawdown instead of computing it again, when every input is the same: the last bar, the cash
and the final value bit for bit, and a mark path without a gap (its cells are then the
source's marks as they are, which no later load changes; a path with a gap may have been
filled by seeds or carried marks that depend on what was loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np

MAX_ENTRIES = 200_000  # drawdowns kept per period (~35 MB with its index); all dropped beyond
_BAR_BITS = 32  # key = instrument code << 32 | sale bar


@dataclass(frozen=True)
class DrawdownInputs:
    """Per candidate, what its drawdown is computed from (arrays of one length, but `names`)."""

    names: list[str]  # the instruments, indexed by `codes`
    codes: np.ndarray  # each candidate's instrument in `names`
    usable: np.ndarray  # bool: candidates that may be looked up or kept (gap-free paths)
    open_bar: np.ndarray  # sale bar (int)
    last_bar: np.ndarray  # last marked bar before expiry (int)
    cash: np.ndarray  # premium less the open fee
    final_value: np.ndarray  # value at settlement


class DrawdownMemo:
    """Drawdowns by (instrument, sale bar) with the inputs they were computed from."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._codes: dict[str, int] = {}
        self._rows: dict[int, int] = {}  # key -> row of the arrays below
        self._n = 0
        self._last = np.empty(0, np.int64)
        self._cash = np.empty(0, np.int64)  # float bits
        self._final = np.empty(0, np.int64)  # float bits
        self._dd = np.empty(0)

    def __len__(self) -> int:
        return len(self._rows)

    def _keys(self, names: list[str], codes: np.ndarray, open_bar: np.ndarray) -> np.ndarray:
        """Each candidate's key (its instrument from `names` by `codes`, and its sale bar)."""
        known = self._codes
        for n in names:
            if n not in known:
                known[n] = len(known)
        by_code = np.array([known[n] for n in names], dtype=np.int64)
        return (by_code[codes] << _BAR_BITS) | np.asarray(open_bar, dtype=np.int64)

    def lookup(self, inputs: DrawdownInputs) -> tuple[np.ndarray, np.ndarray]:
        """(found, drawdowns): per candidate whether a drawdown with exactly these inputs is
        kept, and it (NaN where not). Candidates not `usable` are never found."""
        names, codes, usable = inputs.names, inputs.codes, inputs.usable
        n = len(codes)
        found = np.zeros(n, dtype=bool)
        dd = np.full(n, np.nan)
        if n == 0 or not self._rows:
            return found, dd
        open_bar = np.asarray(inputs.open_bar, dtype=np.int64)
        keys = self._keys(names, codes, np.maximum(open_bar, 0))
        rows = np.fromiter(map(self._rows.get, keys.tolist(), repeat(-1)), np.int64, n)
        ok = (rows >= 0) & usable & (open_bar >= 0)
        r = rows[ok]
        ok[ok] = (
            (self._last[r] == np.asarray(inputs.last_bar, dtype=np.int64)[ok])
            & (self._cash[r] == _bits(inputs.cash)[ok])
            & (self._final[r] == _bits(inputs.final_value)[ok])
        )
        dd[ok] = self._dd[rows[ok]]
        return ok, dd

    def store(self, inputs: DrawdownInputs, drawdowns: np.ndarray) -> None:
        """Keep the drawdowns of the `usable` candidates (a later one of a key replaces it)."""
        open_bar = np.asarray(inputs.open_bar, dtype=np.int64)
        keep = np.asarray(inputs.usable, dtype=bool) & (open_bar >= 0)
        m = int(keep.sum())
        if m == 0 or m > self.max_entries:
            return
        if self._n + m > self.max_entries:  # bounded: start again
            self._rows.clear()
            self._n = 0
        if self._n + m > len(self._dd):
            self._grow(self._n + m)
        keys = self._keys(inputs.names, np.asarray(inputs.codes)[keep], open_bar[keep])
        a, b = self._n, self._n + m
        self._last[a:b] = np.asarray(inputs.last_bar, dtype=np.int64)[keep]
        self._cash[a:b] = _bits(inputs.cash)[keep]
        self._final[a:b] = _bits(inputs.final_value)[keep]
        self._dd[a:b] = np.asarray(drawdowns, dtype=float)[keep]
        self._rows.update(zip(keys.tolist(), range(a, b), strict=True))
        self._n = b

    def _grow(self, need: int) -> None:
        size = min(max(need, 2 * len(self._dd), 1024), max(self.max_entries, need))
        for name in ("_last", "_cash", "_final", "_dd"):
            old = getattr(self, name)
            new = np.empty(size, dtype=old.dtype)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)


def _bits(x: np.ndarray) -> np.ndarray:
    """The bits of float64 values as int64 (so -0.0 differs from 0.0 and NaNs compare)."""
    return np.ascontiguousarray(x, dtype=np.float64).view(np.int64)
