"""as_ns: nanoseconds since the epoch, whatever the index's zone, resolution or container."""

from __future__ import annotations

from datetime import UTC

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from harness.timestamps import as_ns, iso_strings


def test_as_ns_is_the_same_instant_for_every_zone_unit_and_container() -> None:
    utc = pd.date_range("2024-03-30 22:00", periods=6, freq="1h", tz="UTC")
    want = utc.as_unit("ns").asi8
    assert want[0] == pd.Timestamp("2024-03-30 22:00", tz="UTC").value
    variants = [
        utc,
        utc.as_unit("s"),
        utc.tz_convert("Europe/Berlin"),  # crosses a DST change: instants unchanged
        utc.tz_convert("Asia/Kolkata").as_unit("ms"),
        utc.tz_localize(None),  # naive: taken as UTC
        pd.Series(utc),
        utc.tz_localize(None).to_numpy(),
        list(utc),
    ]
    for v in variants:
        got = as_ns(v)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


# instants from 1700 to 2260 (datetime64[ns]'s range), whole seconds or not
_instants = st.lists(
    st.one_of(
        st.integers(-8_000_000_000, 9_000_000_000).map(lambda s: s * 1_000_000_000),
        st.integers(-(2**62), 2**62),
    ),
    max_size=6,
)


@given(_instants, st.sampled_from(["UTC", "utc-fixed", "Europe/Berlin", "naive"]), st.booleans())
def test_iso_strings_are_each_timestamps_isoformat(ns: list[int], zone: str, as_s: bool) -> None:
    idx = pd.DatetimeIndex(pd.to_datetime(np.array(ns, dtype=np.int64), utc=True))
    if zone == "utc-fixed":
        idx = idx.tz_convert(UTC)
    elif zone == "Europe/Berlin":
        idx = idx.tz_convert(zone)
    elif zone == "naive":
        idx = idx.tz_localize(None)
    if as_s and all(v % 1_000_000_000 == 0 for v in ns):
        idx = idx.as_unit("s")
    assert iso_strings(idx) == [t.isoformat() for t in idx]


def test_iso_strings_of_decision_times() -> None:
    idx = pd.date_range("2024-01-01", periods=3, freq="4h", tz="UTC")
    assert iso_strings(idx) == [
        "2024-01-01T00:00:00+00:00",
        "2024-01-01T04:00:00+00:00",
        "2024-01-01T08:00:00+00:00",
    ]
