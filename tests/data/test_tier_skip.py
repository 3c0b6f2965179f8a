"""The tier skip of a selective store load: which decisions need the left-out low
days-to-expiry tiers (`atm_needs_lower`), and that leaving them out never changes a selected
row or a band mark (issue 18, tenth round).

Reference: the same store read with the skip switched off (`tier_floor` -> None).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.data.chain_scan import ChainColumns
from harness.data.chain_select import ChainSelection, atm_needs_lower
from harness.data.files import write_chain_atomic
from harness.data.importers import import_synthetic
from harness.data.low_tiers import in_windows, rows_in_windows, windows_of
from harness.data.store_schema import DTE_COLUMN
from tests.store_replay_fixtures import band_marks, selected_rows

DAY = 86_400 * 10**9
START, END = "2024-02-01", "2024-02-22"
TIMES_4H = pd.date_range("2024-02-01T04:00", "2024-02-15", freq="4h", tz="UTC")
TIMES_1H = pd.date_range("2024-02-03T01:00", "2024-02-10", freq="1h", tz="UTC")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every expiry (dailies listed 4 days out), and the same store with Friday expiries only
    (a week between expiries: the ATM pick is often far from the floor)."""
    every = tmp_path_factory.mktemp("every")
    import_synthetic(
        "BTC", START, END, "4h", every, seed=5, calls_only=True, progress=False, max_dte=20.0
    )
    weekly = tmp_path_factory.mktemp("weekly")
    import_synthetic(
        "BTC", START, END, "4h", weekly, seed=5, calls_only=True, progress=False, max_dte=20.0
    )
    for path in sorted((weekly / "BTC" / "chain").glob("*/part.parquet")):
        frame = pq.read_table(path).to_pandas().drop(columns=[DTE_COLUMN])
        write_chain_atomic(frame[frame["expiry"].dt.day_of_week == 4].reset_index(drop=True), path)
    # without ATM summaries: these tests read the left-out tiers (test_atm_summary.py reads
    # the summaries, with these as its fallback)
    for root in (every, weekly):
        for path in (root / "BTC" / "chain").glob("*/atm.arrow"):
            path.unlink()
    return {"every": every, "weekly": weekly}


def _check(root: Path, times: pd.DatetimeIndex, sel: ChainSelection, max_dte: float) -> dict:
    got, source = selected_rows(root, times, sel, max_dte)
    want, reference = selected_rows(root, times, sel, max_dte, "no_skip")
    pd.testing.assert_frame_equal(got, want)
    # marks of every selected name (the band's from the small table, others by a scan)
    marks = pd.date_range(times[0], times[-1] + pd.Timedelta(days=max_dte), freq="4h")
    np.testing.assert_array_equal(
        band_marks(source, got, marks), band_marks(reference, want, marks)
    )
    return dict(source.scan_stats)


def test_a_week_between_expiries_sends_some_decisions_two_tiers_down(stores) -> None:
    # band 5-9 days, ATM target 4.5: the four-day tier settles most decisions; when the
    # nearest expiry is under 2 days and the next 8.5 away, the tiers under 2 days are read
    sel = ChainSelection(
        min_dte=5.0, max_dte=9.0, min_delta=0.1, max_delta=0.4, atm_dte=4.5, first_row_at=()
    )
    stats = _check(stores["weekly"], TIMES_4H, sel, 15.0)
    assert stats["low_decisions"] > stats["low_decisions_deeper"] > 0


def test_every_expiry_week_target(stores) -> None:
    sel = ChainSelection(
        min_dte=5.0, max_dte=9.0, min_delta=0.1, max_delta=0.4, atm_dte=7.0, first_row_at=()
    )
    stats = _check(stores["every"], TIMES_4H, sel, 15.0)
    assert stats["low_rows_decoded"] > 0 and 0 < stats["low_decisions"] < len(TIMES_4H)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    store=st.sampled_from(["every", "weekly"]),
    hourly=st.booleans(),
    min_dte=st.sampled_from([2.0, 4.0, 4.000001, 5.0, 8.5]),
    width=st.sampled_from([1.0, 4.0]),
    atm_offset=st.sampled_from([-3.5, -0.5, 0.000001, 1.0, 2.0, 4.0]),
    first=st.sampled_from(["none", "some", "all"]),
    seed=st.integers(0, 2**16),
)
def test_skip_never_changes_a_row(stores, store, hourly, min_dte, width, atm_offset, first, seed):
    times = TIMES_1H if hourly else TIMES_4H
    t_ns = times.as_unit("ns").asi8
    rng = np.random.default_rng(seed)
    at = {
        "none": (),
        "some": tuple(int(t) for t in np.sort(rng.choice(t_ns, size=5, replace=False))),
        "all": None,  # every decision keeps its first row
    }[first]
    sel = ChainSelection(
        min_dte=min_dte,
        max_dte=min_dte + width,
        min_delta=0.1,
        max_delta=0.45,
        atm_dte=min_dte + atm_offset,
        first_row_at=at,
    )
    _check(stores[store], times, sel, min_dte + width + 1.0)


def _columns(expiry_days: list[float], iv: list[float], t0: int = 10 * DAY) -> ChainColumns:
    n = len(expiry_days)
    expiry = t0 + (np.asarray(expiry_days) * DAY).astype(np.int64)
    return ChainColumns(
        underlying="BTC",
        as_of=np.full(n, t0),
        expiry=expiry,
        quote_time=np.full(n, t0),
        code=np.arange(n),
        names=np.array([f"BTC-{i}-C" for i in range(n)], dtype=object),
        is_call=np.ones(n, dtype=bool),
        values={
            "mark_iv": np.asarray(iv, dtype=float),
            "strike": np.full(n, 100.0),
            "underlying_price": np.full(n, 100.0),
        },
    )


def test_atm_needs_lower_at_its_edges() -> None:
    t0 = 10 * DAY
    t_ns = np.array([t0, t0, t0, t0, t0])
    # per query (which): an expiry strictly nearer 7 than the floor (4) is -> settled; one
    # exactly as far (a tie with an expiry at the floor) -> needs the tier; only rows at or
    # under the floor (possibly stale copies) -> needs; a NaN IV does not count; none -> needs
    days = [6.0, 10.0, 10.0, 3.9, 4.0, 5.0]
    iv = [0.5, 0.5, 0.5, 0.5, 0.5, np.nan]
    which = np.array([0, 0, 1, 2, 2, 3])
    cols = _columns(days, iv)
    need = atm_needs_lower(cols, np.arange(len(days)), which, t_ns, 7.0, 4.0)
    assert need.tolist() == [False, True, True, True, True]
    # the floor as the scan uses it (tier bound + slack): a hair over 3 days away still ties
    need = atm_needs_lower(cols, np.arange(len(days)), which, t_ns, 7.0, 4.0 + 1e-6)
    assert need.tolist() == [False, True, True, True, True]
    # an ATM target at or under the floor always needs the left-out tiers
    assert atm_needs_lower(cols, np.arange(len(days)), which, t_ns, 4.0, 4.0).all()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    queries=st.lists(st.integers(0, 200), min_size=0, max_size=30),
    times=st.lists(st.integers(-20, 240), min_size=0, max_size=80),
    back=st.integers(1, 40),
    shuffled=st.booleans(),
)
def test_rows_in_windows_is_the_row_by_row_test(
    queries: list[int], times: list[int], back: int, shuffled: bool
) -> None:
    # merged point-in-time windows of 10-unit bars; sorted times (a scan's rows) take the
    # binary-search path, unsorted ones the row-by-row test
    win = windows_of(np.array(queries, dtype=np.int64), 10, back)
    t = np.sort(np.array(times, dtype=np.int64))
    if shuffled:
        t = t[::-1]
    got = rows_in_windows(t, win)
    np.testing.assert_array_equal(got, np.flatnonzero(in_windows(t, win)))
    assert got.dtype == np.int64
