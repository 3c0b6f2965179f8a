"""`ChainSelection` on the synthetic market: exactly the rows a reference mask keeps, same values.

The reference is computed independently here from the full call chain (every row quoted),
so a selective build that dropped a needed row or changed a quote fails.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.data.chain_scan import VALUE_COLUMNS
from harness.data.chain_select import ChainSelection, SelectiveChainSource
from harness.data.store import ChainStore
from harness.data.synthetic import SyntheticMarket

M = SyntheticMarket(seed=7)


def reference_mask(store: ChainStore, sel: ChainSelection) -> np.ndarray:
    """Rows of a full call store that `sel` keeps, by its documented rule."""
    col = store.columns
    dte = store.dte_days()
    delta = col["delta"]
    band = (dte >= sel.min_dte) & (dte <= sel.max_dte)
    band &= (delta >= sel.min_delta) & (delta <= sel.max_delta)
    frame = pd.DataFrame(
        {
            "t": store.as_of_ns,
            "name": store.names,
            "gap": np.abs(dte - sel.atm_dte),
            "money": np.abs(col["strike"] / col["underlying_price"] - 1.0),
            "band": band,
        }
    )
    nearest = frame["gap"] == frame.groupby("t")["gap"].transform("min")
    money = frame["money"].where(nearest, np.inf)
    atm = nearest & (money == money.groupby(frame["t"]).transform("min"))
    keep = band | atm.to_numpy()
    if sel.follow:
        first = frame["t"].where(frame["band"]).groupby(frame["name"]).transform("min")
        keep |= (frame["t"] >= first).to_numpy()
    return keep


def assert_selected_equals_reference(
    underlying: str, times: pd.DatetimeIndex, sel: ChainSelection, max_dte: float
) -> int:
    full = ChainStore.from_source(M, underlying, times, calls_only=True, max_dte=max_dte)
    picked = ChainStore.from_source(
        M, underlying, times, calls_only=True, max_dte=max_dte, select=sel
    )
    keep = reference_mask(full, sel)
    assert len(picked) == int(keep.sum())
    np.testing.assert_array_equal(picked.names, full.names[keep])
    np.testing.assert_array_equal(picked.as_of_ns, full.as_of_ns[keep])
    np.testing.assert_array_equal(picked.expiry_ns, full.expiry_ns[keep])
    for c in VALUE_COLUMNS:  # bit-identical quotes, NaN where the full chain has NaN
        np.testing.assert_array_equal(picked.columns[c], full.columns[c][keep], err_msg=c)
    np.testing.assert_array_equal(
        picked.row_start, np.searchsorted(picked.as_of_ns, picked.times.asi8)
    )
    return len(picked)


def test_synthetic_market_is_a_selective_source() -> None:
    assert isinstance(M, SelectiveChainSource)


@pytest.mark.parametrize("follow", [False, True])
def test_selection_keeps_band_atm_and_followed_rows(follow: bool) -> None:
    times = pd.date_range("2024-03-01", "2024-03-04", freq="1h", tz="UTC")
    sel = ChainSelection(
        min_dte=5.0, max_dte=9.0, min_delta=0.15, max_delta=0.35, atm_dte=7.0, follow=follow
    )
    n = assert_selected_equals_reference("BTC", times, sel, max_dte=15.0)
    full = ChainStore.from_source(M, "BTC", times, calls_only=True, max_dte=15.0)
    assert 0 < n < len(full) / 5  # the point: a small share of the chain


def test_selection_with_an_empty_band_keeps_the_atm_call_at_every_time() -> None:
    times = pd.date_range("2023-06-10", "2023-06-12", freq="4h", tz="UTC")
    sel = ChainSelection(min_dte=20.5, max_dte=21.5, min_delta=2.0, max_delta=3.0, atm_dte=21.0)
    n = assert_selected_equals_reference("ETH", times, sel, max_dte=43.0)
    assert n >= len(times)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target_dte=st.floats(0.3, 30.0),
    dte_tol=st.floats(0.0, 5.0),
    target_delta=st.floats(0.05, 0.9),
    delta_tol=st.floats(0.0, 0.3),
    follow=st.booleans(),
    hour=st.integers(0, 23),
)
def test_selection_matches_the_reference_for_any_band(
    target_dte: float,
    dte_tol: float,
    target_delta: float,
    delta_tol: float,
    follow: bool,
    hour: int,
) -> None:
    times = pd.date_range("2024-07-01", periods=6, freq="7h", tz="UTC") + pd.Timedelta(hours=hour)
    sel = ChainSelection(
        min_dte=target_dte - dte_tol,
        max_dte=target_dte + dte_tol,
        min_delta=target_delta - delta_tol,
        max_delta=target_delta + delta_tol,
        atm_dte=target_dte,
        follow=follow,
    )
    max_dte = max(target_dte + dte_tol, 2.0 * target_dte) + 1.0
    assert_selected_equals_reference("BTC", times, sel, max_dte=max_dte)


def test_selection_needs_calls_only() -> None:
    sel = ChainSelection(min_dte=5, max_dte=9, min_delta=0.1, max_delta=0.4, atm_dte=7)
    with pytest.raises(ValueError, match="calls_only"):
        ChainStore.from_source(M, "BTC", pd.DatetimeIndex(["2024-03-01T00:00Z"]), select=sel)
