"""Selective loads that differ only in their delta band share one window, with unchanged rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.chain_scan import ChainColumns
from harness.data.chain_select import ChainSelection
from harness.data.synthetic import SyntheticMarket

TIMES = pd.date_range("2024-03-01", "2024-05-01", freq="4h", tz="UTC")
SHARED = SyntheticMarket(seed=7)


def _assert_same(a: ChainColumns, b: ChainColumns) -> None:
    for field in ("as_of", "expiry", "quote_time", "code", "is_call"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.names.tolist() == b.names.tolist()
    assert set(a.values) == set(b.values)
    for c in a.values:
        np.testing.assert_array_equal(a.values[c], b.values[c])


def _selection(lo: float, width: float, dte: int, follow: bool) -> ChainSelection:
    return ChainSelection(
        min_dte=dte - 2 - 1e-6,
        max_dte=dte + 2 + 1e-6,
        min_delta=lo,
        max_delta=lo + width,
        atm_dte=dte,
        follow=follow,
    )


@settings(max_examples=25, deadline=None)
@given(
    st.floats(0.02, 0.6),
    st.floats(0.0, 0.3),
    st.sampled_from([3, 7, 14]),
    st.booleans(),
)
def test_a_band_on_a_shared_window_equals_a_fresh_market(
    lo: float, width: float, dte: int, follow: bool
) -> None:
    sel = _selection(lo, width, dte, follow)
    # another band first, so the shared market answers this one from its kept window
    SHARED.selected_chain_columns("BTC", TIMES, _selection(0.2, 0.1, dte, follow), max_dte=30.0)
    got = SHARED.selected_chain_columns("BTC", TIMES, sel, max_dte=30.0)
    want = SyntheticMarket(seed=7).selected_chain_columns("BTC", TIMES, sel, max_dte=30.0)
    _assert_same(got, want)


def test_bands_of_one_window_reuse_it_and_other_windows_do_not() -> None:
    market = SyntheticMarket(seed=7)
    for lo in (0.1, 0.2, 0.3):
        market.selected_chain_columns("BTC", TIMES, _selection(lo, 0.1, 7, False), max_dte=15.0)
    assert len(market._windows) == 1  # the DTE window, ATM target, times and limit agree
    market.selected_chain_columns("BTC", TIMES, _selection(0.2, 0.1, 5, False), max_dte=15.0)
    market.selected_chain_columns("BTC", TIMES[:-6], _selection(0.2, 0.1, 7, False), max_dte=15.0)
    assert len(market._windows) == 3
