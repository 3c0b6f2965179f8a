"""Spot at given instants equals the minute path read whole (only the asked minutes are priced)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.synthetic import PATH_START, SyntheticMarket

MARKET = SyntheticMarket(seed=7)
_NS_PER_MINUTE = 60 * 10**9
FIRST = pd.Timestamp("2019-01-01", tz="UTC").value
LAST = pd.Timestamp("2031-01-01", tz="UTC").value  # the path's very last instant included


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(FIRST, LAST), min_size=1, max_size=50),
    st.sampled_from(["BTC", "ETH"]),
)
def test_spot_at_equals_the_whole_minute_path(t_ns: list[int], underlying: str) -> None:
    t = np.array(t_ns, dtype=np.int64)
    got = MARKET._spot_at_ns(underlying, t)
    minutes = (t - PATH_START.value) // _NS_PER_MINUTE
    lo, hi = int(minutes.min()), int(minutes.max())
    if hi - lo > 600_000:  # far-apart instants: read each minute alone
        want = np.array([MARKET.minute_prices(underlying, int(m), int(m))[0] for m in minutes])
    else:
        want = MARKET.minute_prices(underlying, lo, hi)[minutes - lo]
    np.testing.assert_array_equal(got, want)


def test_year_boundaries_and_the_path_end() -> None:
    edges = [pd.Timestamp(f"{y}-01-01", tz="UTC").value for y in range(2020, 2032)]
    t = np.array(sorted({e + d for e in edges for d in (-_NS_PER_MINUTE, 0)} | {LAST}))
    t = t[(t >= FIRST) & (t <= LAST)]
    minutes = (t - PATH_START.value) // _NS_PER_MINUTE
    want = np.array([MARKET.minute_prices("BTC", int(m), int(m))[0] for m in minutes])
    np.testing.assert_array_equal(MARKET._spot_at_ns("BTC", t), want)
