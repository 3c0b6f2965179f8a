"""The ATM summary of a chain partition: the call rows the ATM rule can pick, per snapshot and
expiry, written next to the partition (`atm.arrow`, paired with it by a write id in both
footers and the partition file's size and mtime) whenever the partition is written, so a
selective load can answer the ATM rule at a decision without decoding the low days-to-expiry
tiers (docs/data.md "ATM summary").

Per (as_of, expiry) of the calls with a usable IV (finite `mark_iv`, expiry after as_of), the
summary keeps the rows nearest the money by each row's own underlying price (|K/S - 1|) and the
rows whose money gap is NaN: whichever expiry the rule picks at a decision, the rows it keeps
are among them (`store_selection_mask`: nearest `atm_dte`, then nearest the money, NaN gaps
kept). It also lists every snapshot time of the file. A partition holding a quote stamped after
its bar close gets no summary (the point-in-time window then reaches back a bar further).
Files without one (written before it existed, CSV) are read as before.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.data.chain_parquet import as_of_unit, column_stats
from harness.data.chain_scan import times_ns
from harness.data.side_files import WRITE_ID_KEY, open_paired
from harness.data.store_schema import DTE_COLUMN, DTE_SLACK, STORE_SCAN_COLUMNS

SNAPSHOTS_KEY = b"harness.snapshots"  # every distinct as_of of the partition (int64 ns), base64
SUMMARY_NAME = "atm.arrow"  # next to the partition's part.parquet (Arrow IPC file)
_SUMMARY_COLUMNS = (*STORE_SCAN_COLUMNS, DTE_COLUMN)
# rows of at most this many days to expiry are summarised: the tiers a selective load leaves
# out for a band starting up to ~8 days (`tier_floor`); a higher floor reads the tiers
SUMMARY_MAX_DTE = 8.0


def summary_path(part: Path) -> Path:
    """Where the ATM summary of the chain partition file `part` lives."""
    return part.with_name(SUMMARY_NAME)


def summary_table(table: pa.Table, write_id: str) -> pa.Table | None:
    """The ATM summary of a chain partition `table` (store columns + `DTE_COLUMN`), its
    snapshot times and `write_id` in the schema metadata; None when the partition holds a
    quote after its bar close or lacks a column the summary needs."""
    if any(c not in table.column_names for c in _SUMMARY_COLUMNS):
        return None
    as_of = times_ns(table.column("as_of"))
    quote = times_ns(table.column("quote_time"))
    if (quote > as_of).any():
        return None
    expiry = times_ns(table.column("expiry"))
    iv = table.column("mark_iv").to_numpy()
    is_call = pc.equal(table.column("kind"), "call").to_numpy(zero_copy_only=False)
    low = table.column(DTE_COLUMN).to_numpy() <= SUMMARY_MAX_DTE
    cand = np.flatnonzero(is_call & low & np.isfinite(iv) & (expiry > as_of))
    keep = np.empty(0, dtype=np.int64)
    if len(cand):
        strike = table.column("strike").to_numpy()[cand]
        spot = table.column("underlying_price").to_numpy()[cand]
        with np.errstate(invalid="ignore", divide="ignore"):
            money = np.abs(strike / spot - 1.0)
        # per (as_of, expiry): the rows at the smallest finite gap, and every NaN gap
        order = np.lexsort((expiry[cand], as_of[cand]))
        cand, money = cand[order], money[order]
        group = np.r_[0, np.cumsum((np.diff(as_of[cand]) != 0) | (np.diff(expiry[cand]) != 0))]
        gap = np.where(np.isnan(money), np.inf, money)
        starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
        least = np.minimum.reduceat(gap, starts)[group]
        # (as_of, expiry) order, file order (strike) inside: readers search by as_of
        keep = cand[np.isnan(money) | ((money == least) & np.isfinite(least))]
    rows = table.select(list(_SUMMARY_COLUMNS)).take(pa.array(keep, type=pa.int64()))
    snapshots = np.unique(as_of).astype("<i8")
    return rows.replace_schema_metadata(
        {
            WRITE_ID_KEY: write_id.encode(),
            SNAPSHOTS_KEY: base64.b64encode(snapshots.tobytes()),
        }
    )


@dataclass(frozen=True)
class FileSummary:
    """What a selective load knows of one partition file it read: its as_of span (ns,
    inclusive; None when unknown), and its snapshot times and ATM rows (None: no summary;
    rows sorted by as_of, whose as_of, expiry, quote_time (ns) and days are `times`)."""

    span: tuple[int, int] | None
    snapshots: np.ndarray | None = None
    rows: pa.Table | None = None
    times: dict[str, np.ndarray] | None = None

    @classmethod
    def of(cls, rows: pa.Table, snapshots: np.ndarray) -> FileSummary:
        """A summary over `rows` (in `summary_table` order) and `snapshots`."""
        times = {c: times_ns(rows.column(c)) for c in ("as_of", "expiry", "quote_time")}
        times["days"] = rows.column(DTE_COLUMN).to_numpy()
        span = (int(snapshots[0]), int(snapshots[-1]))
        return cls(span, snapshots, rows, times)


def file_summary(reader: pq.ParquetFile, path: Path) -> FileSummary:
    """The summary of the open chain partition `path` (a span only when it has none, or
    when the summary file is not the one written with it)."""
    rows = open_paired(reader, path, summary_path(path))
    if rows is not None and set(_SUMMARY_COLUMNS) <= set(rows.column_names):
        try:
            encoded = base64.b64decode((rows.schema.metadata or {}).get(SNAPSHOTS_KEY, b""))
            snapshots = np.frombuffer(encoded, dtype="<i8")
        except ValueError:
            snapshots = np.empty(0, dtype="<i8")  # unreadable: as if there were none
        if len(snapshots):
            return FileSummary.of(rows, snapshots)
    return FileSummary(_as_of_span(reader))


def _as_of_span(reader: pq.ParquetFile) -> tuple[int, int] | None:
    """The file's as_of span from its row-group statistics (None without them)."""
    meta = reader.metadata
    unit = as_of_unit(reader)
    spans = [
        stats for i, stats in enumerate(column_stats(reader, "as_of")) if meta.row_group(i).num_rows
    ]
    if not spans or not unit or any(s is None for s in spans):
        return None
    return min(s[0] for s in spans) * unit, max(s[1] for s in spans) * unit  # type: ignore[index]


def summary_answers(
    t_ns: np.ndarray, bar: int, stale: int, floor: float, summaries: list[FileSummary]
) -> np.ndarray:
    """Per decision time: whether the summaries answer its ATM rule for the rows of at most
    `floor` days to expiry exactly as the point-in-time rows would (never above
    `SUMMARY_MAX_DTE`).

    Holds when every file that can hold a row of its freshness window (b - stale, b] (b: the
    bar close at or before t) has a summary, no snapshot lies inside (b - stale, b) (each
    instrument's row in the window is then its row at b), and every summary row of at most
    `floor` days at b that is still alive at t is fresh (its quote younger than `stale`): a
    stale one would let the full chain pick a row the summary does not hold.
    """
    ref = t_ns - np.mod(t_ns, bar)
    ok = np.full(len(t_ns), floor <= SUMMARY_MAX_DTE)
    for s in summaries:
        if s.span is None:
            return np.zeros(len(t_ns), dtype=bool)
        touches = (s.span[0] <= ref) & (s.span[1] > ref - stale)
        if s.times is None or s.snapshots is None:
            ok &= ~touches
            continue
        inside = np.searchsorted(s.snapshots, ref, side="left") - np.searchsorted(
            s.snapshots, ref - stale, side="right"
        )
        ok &= ~(touches & (inside > 0))
        as_of = s.times["as_of"]
        low = s.times["days"] <= floor + DTE_SLACK
        bad = np.flatnonzero(low & (as_of - s.times["quote_time"] >= stale))
        if len(bad) == 0:
            continue
        # per snapshot with a stale low row (rows sorted by as_of): the latest expiry among
        # them (is one alive at t?)
        stamps, starts = np.unique(as_of[bad], return_index=True)
        latest = np.maximum.reduceat(s.times["expiry"][bad], starts)
        k = np.minimum(np.searchsorted(stamps, ref), len(stamps) - 1)
        ok &= ~((stamps[k] == ref) & (latest[k] > t_ns))
    return ok


def summary_rows_at(summaries: list[FileSummary], ref_ns: np.ndarray, floor: float) -> pa.Table:
    """The summary rows of at most `floor` days to expiry at the snapshot times `ref_ns`, in
    time order (file order among equal times)."""
    ref_ns = np.unique(ref_ns)
    parts = []
    for s in summaries:
        if s.rows is None or s.times is None or s.rows.num_rows == 0:
            continue
        as_of = s.times["as_of"]
        lo = np.searchsorted(as_of, ref_ns, side="left")
        hi = np.searchsorted(as_of, ref_ns, side="right")
        # the positions lo[k] .. hi[k] - 1 of every snapshot, one after the other
        size = hi - lo
        rows = np.arange(int(size.sum())) + np.repeat(lo - np.r_[0, np.cumsum(size)[:-1]], size)
        rows = rows[s.times["days"][rows] <= floor]
        if len(rows):
            parts.append(s.rows.take(pa.array(rows)))
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts, promote_options="permissive")
