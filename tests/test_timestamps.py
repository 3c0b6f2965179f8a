"""as_ns: nanoseconds since the epoch, whatever the index's zone, resolution or container."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.timestamps import as_ns


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
