"""Held mark paths that grow ask the source only for the bars they lack.

A path loaded over a wider range (a sweep's next band sells a held call from an earlier bar)
must hold exactly what loading the whole range at once would hold: the held marks plus the
new bars' marks when the held path had no gap, and a full reload when it had one (seeds and
carried-forward marks there depend on the range).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from harness.data.synthetic import SyntheticMarket
from harness.simulator import CoveredCallSimulator, SimulatorCaches
from harness.types import CallSimulationConfig

CFG = CallSimulationConfig(
    underlying="BTC",
    start="2024-03-01",
    end="2024-03-20",
    timeframe="1h",
    decision_interval_bars=4,
    target_dte=7.0,
    dte_tolerance=2.0,
)


class Counting:
    """The synthetic market, counting the cells its `option_mark_ranges` is asked for; with
    `gap_every`, every bar whose index is a multiple of it has no mark (NaN)."""

    def __init__(self, inner: SyntheticMarket, gap_every: int = 0) -> None:
        self.inner = inner
        self.gap_every = gap_every
        self.cells = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def option_mark_ranges(self, names, times, first, last):
        self.cells += int((np.asarray(last) - np.asarray(first) + 1).sum())
        out = self.inner.option_mark_ranges(names, times, first, last)
        if self.gap_every:
            bars = np.concatenate(
                [np.arange(a, b + 1) for a, b in zip(first, last, strict=True)] or [[]]
            )
            out = np.where(bars % self.gap_every == 0, np.nan, out)
        return out


def _names_and_bar(sim: CoveredCallSimulator) -> tuple[list[str], int]:
    """Calls offered at a decision in the middle of the period, and that decision's bar."""
    i = len(sim.dec_ns) // 2
    rows = sim.cand_row[sim.cand_start[i] : sim.cand_stop[i]]
    bar = int(sim._bar_at_or_before(sim.dec_ns[i : i + 1])[0])
    return sorted({str(n) for n in sim.store.names[rows]}), bar


def _held(source: Counting, ranges: list[tuple[int, int]], names: list[str]) -> dict:
    sim = CoveredCallSimulator(source, CFG, caches=SimulatorCaches())
    for a, b in ranges:
        n = len(names)
        sim._ensure_paths(np.array(names), np.full(n, a), np.full(n, b))
    return {n: sim._paths[n] for n in names}


@pytest.mark.parametrize("gap_every", [0, 7])
def test_a_grown_path_equals_one_loaded_whole(gap_every: int) -> None:
    market = SyntheticMarket(seed=3)
    names, j = _names_and_bar(CoveredCallSimulator(market, CFG))
    assert len(names) > 3
    # later bars first, then earlier ones (before), then later ones (after); a gap lands on
    # the first bar of the first range when gap_every is 7, so a full reload is needed there
    start = j + 14 - (j + 14) % 7
    steps = [(start, start + 20), (j, start + 20), (j, start + 30)]
    grown = Counting(market, gap_every)
    got = _held(grown, steps, names)
    whole = Counting(market, gap_every)
    want = _held(whole, [(j, start + 30)], names)
    for n in names:
        assert got[n][0] == want[n][0]
        np.testing.assert_array_equal(got[n][1], want[n][1])
    asked = len(names) * ((start + 20 - start + 1) + (start - j) + 10)
    if gap_every:
        assert grown.cells > asked  # gappy paths were loaded whole again
    else:
        assert grown.cells == asked  # only the bars each path lacked
