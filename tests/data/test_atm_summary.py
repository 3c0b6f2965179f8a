"""The ATM summary written next to each chain partition (`harness/data/atm_summary.py`): it
holds exactly the rows the ATM rule can pick, and a selective load that answers decisions
from it gives the same rows and band marks as reading the left-out tiers (issue 18, store8).

Reference: the same store read with the summaries ignored (`summary_answers` -> all False)
and with the tier skip switched off.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.data.atm_summary import (
    SUMMARY_MAX_DTE,
    summary_path,
    summary_table,
)
from harness.data.chain_select import ChainSelection
from harness.data.files import compact_chain, merge_chain, write_chain_atomic
from harness.data.importers import import_synthetic
from harness.data.side_files import WRITE_ID_KEY
from harness.data.store_schema import DTE_COLUMN, STORE_SCAN_COLUMNS
from tests.store_replay_fixtures import band_marks, chain_parts, copy_store, selected_rows

START, END = "2024-02-01", "2024-03-20"
TIMES_4H = pd.date_range("2024-02-01T04:00", "2024-03-10", freq="4h", tz="UTC")
TIMES_1H = pd.date_range("2024-02-26T01:00", "2024-03-04", freq="1h", tz="UTC")
SEL = ChainSelection(
    min_dte=5.0, max_dte=9.0, min_delta=0.1, max_delta=0.4, atm_dte=7.0, first_row_at=()
)


def _summary_id(part: Path) -> bytes:
    with pa.OSFile(str(summary_path(part))) as source:
        return pa.ipc.open_file(source).schema.metadata[WRITE_ID_KEY]


def _check(root: Path, times: pd.DatetimeIndex, sel: ChainSelection, max_dte: float = 15.0) -> dict:
    got, source = selected_rows(root, times, sel, max_dte)
    marks = pd.date_range(times[0], times[-1] + pd.Timedelta(days=max_dte), freq="4h")
    for mode in ("no_summary", "no_skip"):
        want, reference = selected_rows(root, times, sel, max_dte, mode)
        pd.testing.assert_frame_equal(got, want)
        np.testing.assert_array_equal(
            band_marks(source, got, marks), band_marks(reference, want, marks)
        )
    return dict(source.scan_stats)


# ---------------------------------------------------------------- what the summary holds


def _reference_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (as_of, expiry) of calls with a finite IV and days left: the rows at the least
    money gap |K/S - 1| and every NaN gap, by a plain group-by."""
    dte = (frame["expiry"] - frame["as_of"]).dt.total_seconds() / 86_400.0
    ok = (
        (frame["kind"] == "call")
        & np.isfinite(frame["mark_iv"])
        & (frame["expiry"] > frame["as_of"])
        & (dte <= SUMMARY_MAX_DTE)
    )
    cand = frame[ok].copy()
    cand["money"] = (cand["strike"] / cand["underlying_price"] - 1.0).abs()
    least = cand.groupby(["as_of", "expiry"])["money"].transform("min")  # skips NaN
    keep = cand["money"].isna() | (cand["money"] == least)
    return cand[keep].drop(columns="money")


def _chain_table(frame: pd.DataFrame) -> pa.Table:
    dte = (frame["expiry"] - frame["as_of"]).dt.total_seconds() / 86_400.0
    return pa.Table.from_pandas(frame.assign(**{DTE_COLUMN: dte}), preserve_index=False)


def _key(frame: pd.DataFrame) -> list[tuple]:
    return sorted(zip(frame["as_of"], frame["instrument_name"], strict=True))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 60),
    nan_iv=st.floats(0.0, 0.5),
    nan_spot=st.floats(0.0, 0.2),
)
def test_summary_holds_the_rows_a_group_by_picks(seed, n, nan_iv, nan_spot) -> None:
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2024-03-01", tz="UTC")
    as_of = t0 + pd.to_timedelta(rng.integers(0, 3, n) * 4, unit="h")
    expiry = t0 + pd.to_timedelta(rng.integers(0, 12, n) * 12, unit="h")
    strike = rng.choice([90.0, 95.0, 100.0, 105.0, 110.0], n)
    spot = np.where(rng.random(n) < nan_spot, np.nan, rng.choice([99.0, 100.0, 102.5], n))
    frame = pd.DataFrame(
        {
            "as_of": as_of,
            "instrument_name": [f"BTC-{k}-{e:%d%H}-C" for k, e in zip(strike, expiry, strict=True)],
            "kind": np.where(rng.random(n) < 0.8, "call", "put"),
            "strike": strike,
            "expiry": expiry,
            "underlying_price": spot,
            "mark_iv": np.where(rng.random(n) < nan_iv, np.nan, 50.0),
            "quote_time": as_of,
        }
    )
    for col in STORE_SCAN_COLUMNS:
        if col not in frame:
            frame[col] = 1.0
    frame = frame.drop_duplicates(["as_of", "instrument_name"]).reset_index(drop=True)
    got = summary_table(_chain_table(frame), "id").to_pandas()
    assert _key(got) == _key(_reference_summary(frame))


def test_no_summary_for_a_quote_after_its_bar_close() -> None:
    t0 = pd.Timestamp("2024-03-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "as_of": [t0],
            "instrument_name": ["BTC-1MAR24-100-C"],
            "kind": ["call"],
            "strike": [100.0],
            "expiry": [t0 + pd.Timedelta(days=2)],
            "underlying_price": [100.0],
            "mark_iv": [50.0],
            "quote_time": [t0 + pd.Timedelta(seconds=1)],
        }
    )
    for col in STORE_SCAN_COLUMNS:
        if col not in frame:
            frame[col] = 1.0
    assert summary_table(_chain_table(frame), "id") is None


def test_every_partition_write_pairs_a_summary(weekly_store, tmp_path) -> None:
    root = copy_store(weekly_store, tmp_path)
    for part in chain_parts(root):
        assert pq.ParquetFile(part).metadata.metadata[WRITE_ID_KEY] == _summary_id(part)
    # a merge rewrites the month and its summary with a new id
    part = chain_parts(root)[0]
    before = pq.ParquetFile(part).metadata.metadata[WRITE_ID_KEY]
    frame = pq.read_table(part).to_pandas().drop(columns=[DTE_COLUMN])
    merge_chain(root, "BTC", frame.iloc[:10])
    after = pq.ParquetFile(part).metadata.metadata[WRITE_ID_KEY]
    assert after != before
    assert _summary_id(part) == after


def test_compaction_folds_day_summaries(tmp_path) -> None:
    root = tmp_path / "days"
    import_synthetic(
        "BTC", "2024-02-01", "2024-02-04", "4h", root, seed=3, calls_only=True, progress=False
    )
    frame = pd.concat([pq.read_table(p).to_pandas() for p in chain_parts(root)])
    shutil.rmtree(root / "BTC" / "chain")
    merge_chain(root, "BTC", frame.drop(columns=[DTE_COLUMN]))  # day partitions
    assert all(summary_path(p).exists() for p in chain_parts(root))
    compact_chain(root, "BTC")
    folders = sorted(p.name for p in (root / "BTC" / "chain").iterdir())
    assert folders == ["month=2024-02"]
    assert summary_path(chain_parts(root)[0]).exists()


def test_compaction_gives_older_tiered_months_a_summary(weekly_store, tmp_path) -> None:
    root = copy_store(weekly_store, tmp_path)
    for part in chain_parts(root):  # as an older version wrote them: no write id, no summary
        reader = pq.ParquetFile(part)
        groups = [reader.read_row_group(i) for i in range(reader.num_row_groups)]
        meta = {k: v for k, v in reader.schema_arrow.metadata.items() if k != WRITE_ID_KEY}
        with pq.ParquetWriter(part, reader.schema_arrow.with_metadata(meta)) as writer:
            for group in groups:
                writer.write_table(group.replace_schema_metadata(meta))
        summary_path(part).unlink()
    assert _check(root, TIMES_4H, SEL)["summary_decisions"] == 0
    done = compact_chain(root, "BTC")
    assert done.summarised == ("2024-02", "2024-03") and done.relaid == ()
    assert "rewritten with an ATM summary" in str(done)
    stats = _check(root, TIMES_4H, SEL)
    assert stats["low_decisions"] == stats["summary_decisions"] > 0
    assert compact_chain(root, "BTC").summarised == ()  # nothing left to rewrite


# ---------------------------------------------------------------- the load answers from it


def test_summary_answers_the_weekly_decisions(weekly_store) -> None:
    stats = _check(weekly_store, TIMES_4H, SEL)
    assert stats["low_decisions"] == stats["summary_decisions"] > 0


def test_first_rows_still_read_the_tiers(weekly_store) -> None:
    at = tuple(int(t) for t in TIMES_4H.as_unit("ns").asi8[::7])
    sel = replace(SEL, first_row_at=at)
    stats = _check(weekly_store, TIMES_4H, sel)
    assert stats["low_decisions"] > stats["summary_decisions"] > 0


def test_a_store_without_summaries_reads_the_tiers(weekly_store, tmp_path) -> None:
    root = copy_store(weekly_store, tmp_path)
    for part in chain_parts(root):
        summary_path(part).unlink()
    stats = _check(root, TIMES_4H, SEL)
    assert stats["low_decisions"] > stats["summary_decisions"] == 0


def test_a_stale_or_missing_summary_sends_its_month_to_the_tiers(weekly_store, tmp_path) -> None:
    root = copy_store(weekly_store, tmp_path)
    feb, mar = chain_parts(root)[:2]
    summary_path(mar).unlink()  # March: none
    # February: a summary from another write (the partition rewritten without it)
    kept = summary_path(feb).read_bytes()
    frame = pq.read_table(feb).to_pandas().drop(columns=[DTE_COLUMN])
    write_chain_atomic(frame, feb)
    summary_path(feb).write_bytes(kept)
    stats = _check(root, TIMES_4H, SEL)
    assert stats["low_decisions"] > stats["summary_decisions"] == 0
    # with February's summary paired again, its decisions use it (not the ones whose
    # window reaches March)
    write_chain_atomic(frame, feb)
    stats = _check(root, TIMES_4H, SEL)
    assert stats["low_decisions"] > stats["summary_decisions"] > 0


def test_a_rewrite_by_another_tool_unpairs_the_summary(weekly_store, tmp_path) -> None:
    # pyarrow keeps the footer's write id when a table is read and written back; the
    # summary also names the rows file's size and mtime, so it is not used
    root = copy_store(weekly_store, tmp_path)
    for part in chain_parts(root):
        reader = pq.ParquetFile(part)
        groups = [reader.read_row_group(i) for i in range(reader.num_row_groups)]
        with pq.ParquetWriter(part, reader.schema_arrow) as writer:  # the same row groups
            for group in groups:
                writer.write_table(group)
        assert pq.ParquetFile(part).metadata.metadata[WRITE_ID_KEY] == _summary_id(part)
    stats = _check(root, TIMES_4H, SEL)
    assert stats["low_decisions"] > stats["summary_decisions"] == 0


def test_stale_quotes_send_their_decisions_to_the_tiers(weekly_store, tmp_path) -> None:
    root = copy_store(weekly_store, tmp_path)
    part = chain_parts(root)[0]
    frame = pq.read_table(part).to_pandas().drop(columns=[DTE_COLUMN])
    # some snapshots quoted a day before their bar close: stale at any bar up to a day
    hours = frame["as_of"].dt.hour
    old = (hours % 8 == 0) & (frame["as_of"].dt.day % 2 == 0)
    frame.loc[old, "quote_time"] = frame.loc[old, "as_of"] - pd.Timedelta(days=1)
    write_chain_atomic(frame, part)
    stats = _check(root, TIMES_4H, SEL)
    assert stats["low_decisions"] > stats["summary_decisions"] > 0


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hourly=st.booleans(),
    min_dte=st.sampled_from([2.5, 4.000001, 5.0, 8.5, 17.0]),
    width=st.sampled_from([1.0, 4.0]),
    atm_offset=st.sampled_from([-3.5, -0.5, 0.000001, 1.0, 2.0]),
    first=st.sampled_from(["none", "some"]),
    seed=st.integers(0, 2**16),
)
def test_summary_never_changes_a_row(weekly_store, hourly, min_dte, width, atm_offset, first, seed):
    times = TIMES_1H if hourly else TIMES_4H
    t_ns = times.as_unit("ns").asi8
    rng = np.random.default_rng(seed)
    at = () if first == "none" else tuple(int(t) for t in np.sort(rng.choice(t_ns, 5, False)))
    sel = ChainSelection(
        min_dte=min_dte,
        max_dte=min_dte + width,
        min_delta=0.1,
        max_delta=0.45,
        atm_dte=min_dte + atm_offset,
        first_row_at=at,
    )
    _check(weekly_store, times, sel, min_dte + width + 1.0)
