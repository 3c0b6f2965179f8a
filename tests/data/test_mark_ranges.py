"""`option_mark_ranges`: many instruments, each over its own bar range, in one request.

Each name's slice must equal `option_marks` of that name over its range, on the store (from
a bulk load's marks, from a scan, or a mix) and on the embedded market.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data.files import FileDataSource
from harness.data.importers import import_synthetic
from harness.data.source import MarkRangeSource, range_positions
from harness.data.synthetic import SyntheticMarket

GRID = pd.date_range("2024-03-02", "2024-03-12", freq="1h", tz="UTC")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ranges")
    import_synthetic("BTC", "2024-03-01", "2024-03-14", "4h", root, seed=5, progress=False)
    return root


def _names(source: FileDataSource) -> list[str]:
    frame = source.chain_frame("BTC", pd.DatetimeIndex([GRID[30]]))
    calls = frame[frame["kind"] == "call"].sort_values(["expiry", "strike"])
    puts = frame[frame["kind"] == "put"]
    return [*calls["instrument_name"].iloc[::7], *puts["instrument_name"].iloc[:2]]


def _check(source, names: list[str], first: np.ndarray, last: np.ndarray) -> np.ndarray:
    flat = source.option_mark_ranges(names, GRID, first, last)
    assert flat.shape == (int((last - first + 1).sum()),)
    ends = np.cumsum(last - first + 1)
    for i, name in enumerate(names):
        got = flat[ends[i] - (last[i] - first[i] + 1) : ends[i]]
        want = source.option_marks([name], GRID[first[i] : last[i] + 1])[0]
        np.testing.assert_array_equal(got, want)
    return flat


def _ranges(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    first = rng.integers(0, len(GRID) - 40, n)
    last = first + rng.integers(-1, 40, n)  # -1: an empty range
    return first, last


def test_range_positions_concatenate_inclusive_ranges() -> None:
    got = range_positions(np.array([5, 0, 9]), np.array([7, -1, 9]))
    assert got.tolist() == [5, 6, 7, 9]
    with pytest.raises(ValueError, match="last >= first"):
        range_positions(np.array([3]), np.array([1]))


def test_store_ranges_equal_per_name_marks_from_a_scan(store: Path) -> None:
    source = FileDataSource(store)
    names = _names(FileDataSource(store))
    first, last = _ranges(len(names))
    names.append("ETH-8MAR24-3000-C")  # no ETH chains in the store: NaN, no error
    first, last = np.r_[first, 10], np.r_[last, 20]
    assert isinstance(source, MarkRangeSource)
    flat = _check(source, names, first, last)
    assert np.isfinite(flat).sum() > 100
    assert np.isnan(flat[-11:]).all()


def test_store_ranges_from_a_bulk_load_read_no_file(store: Path) -> None:
    source = FileDataSource(store)
    source.chain_columns("BTC", GRID[:200], kinds=("call",), max_dte=4.0)
    scans = source.scan_stats["scans"]
    table = source._mark_periods["BTC"].table
    expiry = table.expiry_of_code()
    names = [
        str(n)
        for n, e in zip(table.cols.names, expiry, strict=True)
        if str(n).endswith("-C") and e <= GRID[0].value + 4 * 86_400e9
    ][::3]
    first = np.full(len(names), 0)
    last = np.full(len(names), 48)
    flat = source.option_mark_ranges(names, GRID, first, last)
    assert source.scan_stats["scans"] == scans  # answered from the loaded marks
    assert np.isfinite(flat).sum() > 0
    # a put is outside the loaded (calls-only) marks: one scan for it alone, same values
    put = next(n for n in _names(FileDataSource(store)) if n.endswith("-P"))
    mixed = source.option_mark_ranges([*names, put], GRID, np.r_[first, 0], np.r_[last, 48])
    assert source.scan_stats["scans"] == scans + 1
    np.testing.assert_array_equal(mixed[: len(flat)], flat)
    _check(source, [*names, put], np.r_[first, 0], np.r_[last, 48])


def test_synthetic_ranges_equal_per_name_marks(store: Path) -> None:
    market = SyntheticMarket(seed=5)
    names = _names(FileDataSource(store))
    first, last = _ranges(len(names))
    flat = _check(market, names, first, last)
    assert np.isfinite(flat).sum() > 100


def test_selective_load_marks_band_names_from_a_small_table(store: Path) -> None:
    from harness.data.chain_select import ChainSelection

    source = FileDataSource(store)
    band = ChainSelection(min_dte=2.0, max_dte=4.0, min_delta=0.2, max_delta=0.4, atm_dte=3.0)
    kept = source.selected_chain_columns("BTC", GRID[:200:4], band, max_dte=5.0)
    period = source._mark_periods["BTC"]
    assert period.hot is not None and period.hot_codes is not None
    # the small table holds exactly the rows of the codes that were ever in the band
    in_band = (
        (kept.values["delta"] >= 0.2)
        & (kept.values["delta"] <= 0.4)
        & ((kept.expiry - kept.as_of) >= 2 * 86_400e9)
        & ((kept.expiry - kept.as_of) <= 4 * 86_400e9)
    )
    band_names = sorted({str(kept.names[c]) for c in kept.code[in_band]})
    assert 0 < len(period.hot) < len(period.table) / 3
    assert sorted(str(period.hot.cols.names[c]) for c in np.unique(period.hot.cols.code)) == (
        band_names
    )
    # band names come from the small table without a scan; other calls of the period from
    # one scan, because this band (2-4 days) let the load leave the one-day tier out and
    # read it for the band's instruments only (`MarkPeriod.hot_only`); both equal a fresh
    # source's scan of each name (names the period holds from GRID[0] on: the DTE filter
    # cannot have hidden their early rows)
    assert period.hot_only
    table = period.table
    expiry = table.expiry_of_code()
    early = expiry <= GRID[0].value + 4 * 86_400e9
    codes = table.codes_of(band_names)
    band_names = [n for n, c in zip(band_names, codes, strict=True) if early[c]]
    others = [
        str(n)
        for i, n in enumerate(table.cols.names)
        if not period.hot_codes[i] and early[i] and str(n).endswith("-C")
    ][::5]
    assert band_names and others
    scans = source.scan_stats["scans"]
    fresh = FileDataSource(store)
    for names, new_scans in ((band_names, 0), (others, 1)):
        first = np.zeros(len(names), dtype=np.int64)
        last = np.full(len(names), 150)
        flat = source.option_mark_ranges(names, GRID, first, last)
        assert source.scan_stats["scans"] == scans + new_scans
        scans = source.scan_stats["scans"]
        want = fresh.option_marks(names, GRID[:151]).ravel()
        np.testing.assert_array_equal(flat, want)
        assert np.isfinite(flat).sum() > 100
