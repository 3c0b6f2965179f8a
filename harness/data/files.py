"""The local market-data store (Parquet or CSV) and `FileDataSource`, which serves it.

Layout (see docs/data.md), one directory per underlying under the store root:

    <root>/<UNDERLYING>/meta.json                          chain timeframe and provenance
    <root>/<UNDERLYING>/spot/<timeframe>.parquet           spot bars, labeled by close time
    <root>/<UNDERLYING>/chain/month=YYYY-MM/part.parquet   chain bars (CHAIN_COLUMNS + quote_time)
    <root>/<UNDERLYING>/chain/date=YYYY-MM-DD/part.parquet the same, one UTC day (streamed imports)
    <root>/<UNDERLYING>/settlement.parquet                 official delivery prices by expiry

Every file may be a `.csv` with the same columns instead of `.parquet`. A chain partition holds
the last snapshot of each instrument in each bar, stamped `as_of` = bar close; `quote_time` is
the exchange time of that snapshot. A month partition holds every bar of its UTC month; once
it exists, day partitions of that month are ignored (they can only be leftovers of an
interrupted `compact_chain`) and new rows of that month are merged into it. All writes go to a
temporary file that is then renamed, so an interrupted import never leaves a file that looks
complete.

The pieces `FileDataSource` reads with live next to this module: the row schema and DTE tiers
(`store_schema`), the Parquet scan (`chain_parquet`), the low-tier second pass (`low_tiers`)
and the point-in-time tables it serves (`point_in_time`).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from harness import strict_json
from harness.data.atm_summary import (
    FileSummary,
    file_summary,
    summary_answers,
    summary_path,
    summary_rows_at,
    summary_table,
)
from harness.data.chain_parquet import (
    Codes,
    DeferredValues,
    LowGroups,
    ScanWindow,
    defer_values,
    read_chain_files,
    scan_pool,
    split_low,
    take_deferred,
)
from harness.data.chain_scan import (
    ChainColumns,
    columns_from_arrow,
    columns_to_frame,
    concat_columns,
    empty_columns,
    float_values,
    scan_filter,
)
from harness.data.chain_select import ChainSelection, atm_needs_lower, store_selection_mask
from harness.data.errors import DataError
from harness.data.low_marks import band_marks_from_file, marks_path, marks_table
from harness.data.low_tiers import (
    TIER_BELOW,
    LowRead,
    SecondPass,
    as_of_spans,
    band_only,
    decode_low_groups,
    finish_low,
    first_of_each,
    grown,
    in_windows,
    rows_in_windows,
    tier_floor,
    windows_of,
)
from harness.data.point_in_time import (
    ChainTable,
    ChainTableSource,
    MarkPeriod,
    coin_of,
    underlying_of,
    utc_times,
)
from harness.data.scan_threads import file_pool, scan_threads
from harness.data.side_files import WRITE_ID_KEY, has_write_id, write_paired
from harness.data.source import (
    OHLC_COLUMNS,
    empty_chain_frame,
    empty_ohlc,
    frame_to_snapshots,
    inclusive_range,
    range_positions,
)
from harness.data.store_schema import DTE_COLUMN, DTE_SLACK, DTE_TIERS, normalize_store_chain
from harness.instruments import parse_instrument_name
from harness.timestamps import TimestampLike, to_utc, utc_index
from harness.types import TIMEFRAMES, OptionSnapshot, Timeframe, timeframe_delta

SETTLEMENT_COLUMNS: tuple[str, ...] = ("expiry", "price", "source")
CHAIN_ROW_GROUP_ROWS = 1 << 20  # a tier larger than this is split (bounds decode memory)
_QUERY_CHUNK = 256  # decision times per point-in-time pass of a bulk scan


# ---------------------------------------------------------------- paths and atomic writes


def parse_duration(text: str | pd.Timedelta) -> pd.Timedelta:
    """A duration such as "4h", "1d" or "30min" (pandas spells days "D")."""
    if isinstance(text, pd.Timedelta):
        return text
    value = str(text).strip()
    if value[:-1].isdigit() and value.endswith("d"):
        value = value[:-1] + "D"
    return pd.Timedelta(value)


def duration_text(step: pd.Timedelta) -> str:
    """A duration as "1d", "4h" or "30min" (what `parse_duration` reads back)."""
    for unit, size in (("d", pd.Timedelta(days=1)), ("h", pd.Timedelta(hours=1))):
        if step % size == pd.Timedelta(0):
            return f"{step // size}{unit}"
    return f"{step // pd.Timedelta(minutes=1)}min"


def underlying_dir(root: str | os.PathLike[str], underlying: str) -> Path:
    """Directory of one underlying in the store (upper-case name)."""
    return Path(root) / underlying.upper()


def spot_path(
    root: str | os.PathLike[str], underlying: str, timeframe: str, ext: str = "parquet"
) -> Path:
    """Path of the spot bars of `underlying` at `timeframe`."""
    return underlying_dir(root, underlying) / "spot" / f"{timeframe}.{ext}"


def chain_partition_path(
    root: str | os.PathLike[str], underlying: str, day: pd.Timestamp, ext: str = "parquet"
) -> Path:
    """Path of the chain partition holding bars that close on UTC date `day`."""
    return underlying_dir(root, underlying) / "chain" / f"date={day:%Y-%m-%d}" / f"part.{ext}"


def chain_month_path(
    root: str | os.PathLike[str], underlying: str, day: pd.Timestamp, ext: str = "parquet"
) -> Path:
    """Path of the chain partition holding bars that close in the UTC month of `day`."""
    return underlying_dir(root, underlying) / "chain" / f"month={day:%Y-%m}" / f"part.{ext}"


def settlement_path(root: str | os.PathLike[str], underlying: str, ext: str = "parquet") -> Path:
    """Path of the delivery-price table of `underlying`."""
    return underlying_dir(root, underlying) / f"settlement.{ext}"


def meta_path(root: str | os.PathLike[str], underlying: str) -> Path:
    """Path of the metadata JSON of `underlying` (chain timeframe, provenance)."""
    return underlying_dir(root, underlying) / "meta.json"


def _temp_sibling(path: Path) -> Path:
    # Same directory so the final rename is atomic (same filesystem); a leading dot and the
    # .tmp suffix keep half-written files out of every glob the reader uses.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _arrow_table(frame: pd.DataFrame) -> pa.Table:
    """`frame` as an Arrow table whose float NaNs stay NaN (not null): readers then get
    numpy columns without a fill pass."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i, field in enumerate(table.schema):
        if pa.types.is_floating(field.type) and table.column(i).null_count:
            values = frame[field.name].to_numpy(dtype=np.float64)
            table = table.set_column(i, field, pa.array(values, from_pandas=False))
    return table


def _parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """LZ4 with byte-stream-split floats: as small as zstd on price columns, about 2x faster to read."""
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    strings = [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    return {
        "compression": "lz4",
        "use_dictionary": strings,
        "column_encoding": dict.fromkeys(floats, "BYTE_STREAM_SPLIT"),
    }


def write_table_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` (no index) to `path` as Parquet or CSV by extension, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            table = _arrow_table(frame)
            pq.write_table(table, tmp, **_parquet_options(table.schema))
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_chain_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write a store chain partition atomically; Parquet in the tiered layout (`DTE_TIERS`).

    Each (tier, kind) group becomes its own row group(s), rows sorted by (as_of, expiry,
    strike) inside, with `DTE_COLUMN` (days, float64) added so readers can prune groups,
    and its ATM summary next to it (`summary_table`).
    """
    if path.suffix == ".csv":
        write_table_atomic(frame, path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    dte = (frame["expiry"] - frame["as_of"]).dt.total_seconds().to_numpy() / 86_400.0
    group = np.searchsorted(DTE_TIERS, dte, side="left") * 2 + (frame["kind"] != "call").to_numpy()
    # (group, time, expiry, strike): a scan's rows of one snapshot then come in chain store
    # order (tiers follow expiry at a fixed time), so point-in-time queries need no sort
    order = np.lexsort(
        (
            frame["strike"].to_numpy(),
            frame["expiry"].to_numpy(),
            frame["as_of"].to_numpy(),
            group,
        )
    )
    table = _arrow_table(frame.assign(**{DTE_COLUMN: dte}).iloc[order].reset_index(drop=True))
    # the rows carry a write id in their footer; the ATM summary written after them names
    # that id and the file's size and mtime: a reader uses it only when all three match (an
    # interrupted write, an older writer or a rewrite by another tool: no match)
    write_id = uuid.uuid4().hex
    summary = summary_table(table, write_id)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), WRITE_ID_KEY: write_id.encode()}
    )
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    tmp = _temp_sibling(path)
    try:
        with pq.ParquetWriter(tmp, table.schema, **_parquet_options(table.schema)) as writer:
            for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(order)], strict=True):
                if b > a or len(order) == 0:
                    writer.write_table(table.slice(a, b - a), row_group_size=CHAIN_ROW_GROUP_ROWS)
        summary_path(path).unlink(missing_ok=True)
        marks_path(path).unlink(missing_ok=True)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    meta = pq.read_metadata(path)
    group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    for side, target in (
        (marks_table(table, group_rows, write_id), marks_path(path)),
        (summary, summary_path(path)),
    ):
        if side is None:
            continue
        tmp = _temp_sibling(target)
        try:
            write_paired(side, path, tmp)
            _commit(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def is_tiered(path: Path) -> bool:
    """Whether a chain partition file is in the tiered layout (CSV never is)."""
    return path.suffix == ".parquet" and DTE_COLUMN in pq.read_schema(path).names


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write `data` as pretty JSON to `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        tmp.write_text(strict_json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_table(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a Parquet or CSV store file into a frame, optionally only `columns` (raises
    DataError naming the file)."""
    cols = None if columns is None else list(columns)
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path, usecols=cols)
        return pq.read_table(path, columns=cols).to_pandas()
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"cannot read store file: {exc}", source=path) from exc


def _small_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A small Parquet store file (`columns` of it) as an Arrow table, read on this thread
    (one row group of ~10k rows: Arrow's thread pools cost more than they save); DataError
    naming the file."""
    try:
        return pq.ParquetFile(path, memory_map=True).read(columns=columns, use_threads=False)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"cannot read store file: {exc}", source=path) from exc


def read_spot(path: Path) -> pd.DataFrame:
    """A stored spot file as `normalize_ohlc(read_table(path))` gives it.

    A Parquet file already in that form (what `merge_spot` writes: a UTC ns `timestamp`
    strictly increasing, float64 OHLC columns) becomes the frame straight from its columns,
    without pandas' conversion, re-parsing, duplicate test and sort (4-6 ms instead of 9-15 ms
    in a fresh process, docs/performance.md store9); any other file takes the general path.
    """
    if path.suffix == ".parquet":
        frame = _ohlc_frame(_small_parquet(path))
        if frame is not None:
            return frame
    return normalize_ohlc(read_table(path))


def read_settlements(path: Path) -> dict[int, float]:
    """A stored delivery-price file as {expiry in UTC ns: price in USD}.

    A dict, not a Series: one hash look-up per expiry. `merge_settlements` writes one row per
    expiry; should a hand-made file repeat one, the first wins. Only the two columns used are
    read (the text `source` column cost more to convert than the look-ups), and a Parquet file
    whose expiry is already an Arrow timestamp goes straight from its columns, without
    pandas' conversion (1 ms instead of 7 ms in a fresh process, docs/performance.md).
    """
    stamps: list[int] | None = None
    values: list[float] = []
    if path.suffix == ".parquet":
        table = _small_parquet(path, ["expiry", "price"])
        expiry, price = table.column("expiry"), table.column("price")
        if pa.types.is_timestamp(expiry.type) and expiry.type.tz is not None:
            utc = pc.cast(expiry, pa.timestamp("ns", tz="UTC")).combine_chunks()
            stamps = utc.to_numpy(zero_copy_only=False).view("int64").tolist()
            values = pc.cast(price, pa.float64()).to_numpy().tolist()
    if stamps is None:  # CSV, or an expiry column of text or naive times
        frame = read_table(path, columns=("expiry", "price"))
        expiries = pd.DatetimeIndex(pd.to_datetime(frame["expiry"], utc=True))
        stamps = expiries.as_unit("ns").asi8.tolist()
        values = frame["price"].astype("float64").tolist()
    prices: dict[int, float] = {}
    for ns, value in zip(stamps, values, strict=True):
        prices.setdefault(ns, value)
    return prices


def _ohlc_frame(table: pa.Table) -> pd.DataFrame | None:
    """`normalize_ohlc` of a spot table already in normal form, or None when it is not."""
    names = table.column_names
    if "timestamp" not in names or not all(c in names for c in OHLC_COLUMNS):
        return None
    stamp = table.column("timestamp")
    if stamp.type != pa.timestamp("ns", tz="UTC") or stamp.null_count:
        return None
    if any(table.column(c).type != pa.float64() for c in OHLC_COLUMNS):
        return None
    ns = stamp.cast(pa.int64()).to_numpy()
    if len(ns) > 1 and not (np.diff(ns) > 0).all():
        return None  # unsorted or repeated bars: normalize_ohlc sorts and keeps the last
    index = pd.DatetimeIndex(ns.view("M8[ns]"), name="timestamp").tz_localize("UTC")
    data = {c: float_values(table.column(c)) for c in OHLC_COLUMNS}
    return pd.DataFrame(data, index=index, columns=list(OHLC_COLUMNS))


def _existing(path: Path) -> Path | None:
    # A store file may be Parquet or CSV; Parquet wins when both exist.
    for ext in ("parquet", "csv"):
        candidate = path.with_suffix(f".{ext}")
        if candidate.exists():
            return candidate
    return None


# ---------------------------------------------------------------- metadata


def read_meta(root: str | os.PathLike[str], underlying: str) -> dict[str, Any]:
    """The metadata of `underlying` ({} when the store has none)."""
    path = meta_path(root, underlying)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"invalid JSON: {exc}", source=path) from exc


def update_meta(root: str | os.PathLike[str], underlying: str, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the metadata of `underlying`; list-valued `sources` are appended."""
    meta = read_meta(root, underlying)
    for key, value in fields.items():
        if key == "sources":
            known = meta.setdefault("sources", [])
            known.extend(v for v in value if v not in known)
        else:
            meta[key] = value
    write_json_atomic(meta, meta_path(root, underlying))
    return meta


def check_chain_timeframe(root: str | os.PathLike[str], underlying: str, timeframe: str) -> None:
    """Raise DataError if the store already holds chain bars of `underlying` at another timeframe."""
    existing = read_meta(root, underlying).get("chain_timeframe")
    if existing is not None and existing != timeframe:
        raise DataError(
            f"the store holds {underlying} chain bars at {existing}; cannot add {timeframe} bars "
            "(use another --out directory)",
            source=meta_path(root, underlying),
        )


# ---------------------------------------------------------------- normalization


def normalize_ohlc(frame: pd.DataFrame) -> pd.DataFrame:
    """Return an OHLC frame with a sorted, unique UTC `timestamp` index and float columns."""
    out = frame.copy()
    if "timestamp" in out.columns:
        out = out.set_index("timestamp")
    out.index = utc_index(pd.to_datetime(out.index, utc=True))
    for col in OHLC_COLUMNS:
        out[col] = out[col].astype("float64") if col in out.columns else np.nan
    out = out.loc[:, list(OHLC_COLUMNS)]
    out = out[~out.index.duplicated(keep="last")]
    return out.sort_index()


def resample_ohlc(frame: pd.DataFrame, timeframe: Timeframe) -> pd.DataFrame:
    """Aggregate close-labeled bars to a coarser `timeframe` (bins (t - tf, t], labeled t)."""
    if frame.empty:
        return empty_ohlc()
    rule = timeframe_delta(timeframe)
    agg = frame.resample(rule, label="right", closed="right", origin="epoch").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    )
    # A bin with no source bar is a gap, not a flat bar: leave it out rather than invent it.
    counts = frame["close"].resample(rule, label="right", closed="right", origin="epoch").count()
    return agg[counts > 0]


# ---------------------------------------------------------------- writers


def merge_spot(
    root: str | os.PathLike[str],
    underlying: str,
    timeframe: str,
    frame: pd.DataFrame,
    *,
    keep_existing: bool = False,
) -> int:
    """Merge close-labeled spot bars into the store; new rows win unless `keep_existing`."""
    new = normalize_ohlc(frame)
    path = spot_path(root, underlying, timeframe)
    found = _existing(path)
    if found is not None:
        old = normalize_ohlc(read_table(found))
        parts = [new, old] if keep_existing else [old, new]
        new = pd.concat(parts)
        new = new[~new.index.duplicated(keep="first" if keep_existing else "last")].sort_index()
    write_table_atomic(new.reset_index(), path.with_suffix(found.suffix if found else ".parquet"))
    return len(new)


def merge_chain(
    root: str | os.PathLike[str], underlying: str, frame: pd.DataFrame, *, by_month: bool = False
) -> int:
    """Merge chain bars into their partitions; the latest quote per bar and instrument wins.

    Rows go to their UTC month's partition when it exists or `by_month` (importers that hold
    a month of rows at once), else to their UTC day's. Returns the number of rows written.
    """
    if frame.empty:
        return 0
    frame = normalize_store_chain(frame)
    days = frame["as_of"].dt.floor("D")
    targets: dict[pd.Timestamp, str] = {}
    for day in pd.DatetimeIndex(days.unique()):
        month = chain_month_path(root, underlying, day)
        use_month = by_month or _existing(month) is not None
        targets[day] = str(month if use_month else chain_partition_path(root, underlying, day))
    day_files = _day_partitions(underlying_dir(root, underlying) / "chain")
    written = 0
    for path_text, part in frame.groupby(days.map(targets), sort=True):
        path = Path(str(path_text))
        # a month file replaces that month's day files for readers: fold them in first
        folded = (
            [f for d, f in day_files if path == chain_month_path(root, underlying, d)]
            if path.parent.name.startswith("month=")
            else []
        )
        written += _merge_partition(path, [part], extra=folded)
        _remove_partitions(folded)
    return written


def _remove_partitions(files: Sequence[Path]) -> None:
    """Delete day partition files (and their folders when empty) folded into a month file."""
    for f in files:
        f.unlink()
        summary_path(f).unlink(missing_ok=True)
        marks_path(f).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            f.parent.rmdir()  # leave a folder that holds anything else


def _merge_partition(path: Path, parts: list[pd.DataFrame], *, extra: Sequence[Path] = ()) -> int:
    """Rewrite one chain partition with its rows plus `parts` (later rows win); returns rows."""
    found = _existing(path)
    # month file first, then day files, then new rows: on equal quote times the later one wins
    old = [normalize_store_chain(read_table(f)) for f in ([found] if found else []) + list(extra)]
    frames = [*old, *parts]
    part = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    # Stable sort: among equal quote times the later-added (new) row wins.
    part = part.sort_values(["as_of", "instrument_name", "quote_time"], kind="stable")
    part = part.drop_duplicates(["as_of", "instrument_name"], keep="last")
    write_chain_atomic(part.reset_index(drop=True), found or path)
    return len(part)


@dataclass(frozen=True)
class CompactSummary:
    """What `compact_chain` did: months written, day files folded into them, rows kept."""

    underlying: str
    months: tuple[str, ...]
    day_files: int
    rows: int
    relaid: tuple[str, ...] = ()  # month files rewritten from the untiered layout
    # tiered month files rewritten to get an ATM summary and low-tier marks
    summarised: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = (
            f"compact {self.underlying}: {self.day_files} day partition(s) -> "
            f"{len(self.months)} month partition(s), {self.rows:,} rows"
        )
        if self.relaid:
            text += f"; {len(self.relaid)} month file(s) rewritten in the tiered layout"
        if self.summarised:
            text += (
                f"; {len(self.summarised)} month file(s) rewritten with an ATM summary"
                " and low-tier marks"
            )
        return text


def compact_chain(root: str | os.PathLike[str], underlying: str) -> CompactSummary:
    """Fold the day partitions of `underlying` into month partitions (same rows, fewer files).

    Each month is written (atomically) before its day files are removed, so an interruption
    leaves either the day files alone or a complete month file that readers use instead.
    Parquet month files of the older untiered layout are rewritten in the tiered one (same
    rows; scans can then skip row groups outside their days-to-expiry window), and tiered
    ones written before ATM summaries existed (no write id) or without a low-tier marks file
    are rewritten to get them.
    """
    folder = underlying_dir(root, underlying) / "chain"
    by_month: dict[pd.Timestamp, list[Path]] = {}
    for day, path in _day_partitions(folder):
        by_month.setdefault(day.replace(day=1), []).append(path)
    rows = 0
    for month, files in sorted(by_month.items()):
        target = chain_month_path(root, underlying, month)
        found = _existing(target)
        rows += _merge_partition(found or target, [], extra=files)
        _remove_partitions(files)
    relaid, summarised = [], []
    for kind, month, path in _chain_partitions(folder):
        if kind != "month" or path.suffix != ".parquet":
            continue
        if not is_tiered(path):
            _merge_partition(path, [])
            relaid.append(f"{month:%Y-%m}")
        elif not has_write_id(path) or not marks_path(path).exists():
            # written before ATM summaries or low-tier marks existed: rewrite to get them
            _merge_partition(path, [])
            summarised.append(f"{month:%Y-%m}")
    return CompactSummary(
        underlying=underlying.upper(),
        months=tuple(f"{m:%Y-%m}" for m in sorted(by_month)),
        day_files=sum(len(f) for f in by_month.values()),
        rows=rows,
        relaid=tuple(relaid),
        summarised=tuple(summarised),
    )


def compact_store(
    root: str | os.PathLike[str], underlyings: Sequence[str] | None = None
) -> list[CompactSummary]:
    """`compact_chain` for `underlyings` (default: every underlying folder of the store)."""
    base = Path(root)
    if not base.is_dir():
        raise DataError("market data store not found", source=base)
    names = underlyings or sorted(
        p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    return [compact_chain(base, u) for u in names]


def _day_partitions(folder: Path) -> list[tuple[pd.Timestamp, Path]]:
    """(UTC day, file) of every `date=` partition under `folder`, in day order."""
    return [(p, f) for kind, p, f in _chain_partitions(folder) if kind == "date"]


def _chain_partitions(folder: Path) -> list[tuple[str, pd.Timestamp, Path]]:
    """(date | month, first UTC day, file) of every chain partition under `folder`, sorted."""
    if not folder.is_dir():
        return []
    out = []
    for entry in sorted(os.listdir(folder)):
        kind, _, value = entry.partition("=")
        if kind not in ("date", "month"):
            continue
        try:
            first = pd.Timestamp(value + ("-01" if kind == "month" else ""), tz="UTC")
        except ValueError:
            continue
        found = _existing(folder / entry / "part.parquet")
        if found is not None:
            out.append((kind, first, found))
    return out


def merge_settlements(root: str | os.PathLike[str], underlying: str, frame: pd.DataFrame) -> int:
    """Merge delivery prices (columns expiry, price, source) into the store; new rows win."""
    new = frame.loc[:, list(SETTLEMENT_COLUMNS)].copy()
    new["expiry"] = pd.to_datetime(new["expiry"], utc=True)
    new["price"] = new["price"].astype("float64")
    path = settlement_path(root, underlying)
    found = _existing(path)
    if found is not None:
        old = read_table(found)
        old["expiry"] = pd.to_datetime(old["expiry"], utc=True)
        new = pd.concat([old.loc[:, list(SETTLEMENT_COLUMNS)], new], ignore_index=True)
    new = new.drop_duplicates("expiry", keep="last").sort_values("expiry")
    write_table_atomic(new.reset_index(drop=True), found or path)
    return len(new)


class FileDataSource(ChainTableSource):
    """MarketDataSource over the local store (Parquet or CSV); also Bulk and Settlement source.

    Config: ``market: {source: parquet, path: data/}`` -> ``FileDataSource("data/")``.
    `max_staleness` (default: one chain bar) is how old a snapshot may be at query time.
    A bulk `chain_frame` reads its whole period in one columnar pass, `block_days` days of
    partitions per pyarrow scan (see docs/data.md for the memory bound); with `max_dte` it also
    keeps the marks of those options until they expire, so the simulator's mark paths and
    labels never read a file again. `threads` (default $HARNESS_SCAN_THREADS or 1) is how many
    partition files a scan decodes at once; the values are the same for any count.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_staleness: str | pd.Timedelta | None = None,
        block_days: int = 366,
        threads: int | None = None,
    ):
        self.root = Path(path)
        if not self.root.is_dir():
            raise DataError(
                "market data store not found (run `harness data ...` first)", source=self.root
            )
        if block_days < 1:
            raise ValueError(f"block_days must be at least 1, got {block_days}")
        self._max_staleness = None if max_staleness is None else pd.Timedelta(max_staleness)
        self.block_days = block_days
        # files a scan decodes at once (`scan_threads`: default 1, opt-in; same values)
        self.threads = scan_threads(threads)
        self._settlements: dict[str, dict[int, float]] = {}  # ns -> USD
        self._spot: dict[Path, pd.DataFrame] = {}
        self._mark_periods: dict[str, MarkPeriod] = {}
        self._window_cache: dict[str, tuple[Timeframe, pd.Timedelta, pd.Timedelta]] = {}
        self._with_chains: set[str] = set()
        self.gate_counts: Counter[str] = Counter()
        self.scan_stats: Counter[str] = Counter()  # files, scans, rows read (for benchmarks)

    def fingerprint(self) -> str:
        """A short description of this store for run records."""
        return f"parquet({self.root})"

    # ---- discovery

    def underlyings(self) -> list[str]:
        """Underlyings present in the store."""
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def chain_timeframe(self, underlying: str) -> Timeframe:
        """The bar length of the stored chain of `underlying`."""
        meta = read_meta(self.root, underlying)
        tf = meta.get("chain_timeframe")
        if tf not in TIMEFRAMES:
            raise DataError(
                f"no option chain stored for {underlying.upper()} (meta.json has no chain_timeframe)",
                source=meta_path(self.root, underlying),
            )
        return tf

    def snapshot_cadence(self, underlying: str) -> pd.Timedelta:
        """How often the store holds a chain snapshot of `underlying` (meta `snapshot_every`).

        Stores written bar by bar (Tardis, Deribit) have one per chain bar; a sparser store
        (e.g. `harness data import synthetic --every 1d`) says so in meta.json.
        """
        every = read_meta(self.root, underlying).get("snapshot_every")
        bar = timeframe_delta(self.chain_timeframe(underlying))
        return bar if every is None else max(parse_duration(every), bar)

    def spot_timeframes(self, underlying: str) -> list[str]:
        """Timeframes with stored spot bars for `underlying`."""
        folder = underlying_dir(self.root, underlying) / "spot"
        if not folder.is_dir():
            return []
        return sorted(
            {
                p.stem
                for p in folder.iterdir()
                if p.suffix in (".parquet", ".csv") and p.stem in TIMEFRAMES
            }
        )

    # ---- MarketDataSource

    def _spot_file(self, path: Path) -> pd.DataFrame:
        if path not in self._spot:
            self._spot[path] = read_spot(path)
        return self._spot[path]

    def get_spot_ohlc(
        self, underlying: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Stored spot bars in [start, end]; built from a finer stored timeframe if needed."""
        s, e = inclusive_range(start, end)
        want = timeframe_delta(timeframe)
        found = _existing(spot_path(self.root, underlying, timeframe))
        if found is not None:
            frame = self._spot_file(found)
        else:
            # Coarser bars from the coarsest stored timeframe that divides the wanted one.
            finer = [
                tf
                for tf in self.spot_timeframes(underlying)
                if timeframe_delta(tf) < want and want % timeframe_delta(tf) == pd.Timedelta(0)
            ]
            if not finer:
                raise DataError(
                    f"no {timeframe} spot bars for {underlying.upper()} "
                    f"(stored: {', '.join(self.spot_timeframes(underlying)) or 'none'})",
                    source=spot_path(self.root, underlying, timeframe),
                )
            src = max(finer, key=timeframe_delta)
            fine = self._spot_file(_existing(spot_path(self.root, underlying, src)))  # type: ignore[arg-type]
            fine = fine[(fine.index > s - want) & (fine.index <= e)]
            frame = resample_ohlc(fine, timeframe)
        return frame[(frame.index >= s) & (frame.index <= e)]

    def list_option_chain(self, underlying: str, as_of: TimestampLike) -> list[OptionSnapshot]:
        """Every option of `underlying` with a fresh snapshot at `as_of` (never data after it)."""
        return frame_to_snapshots(self.chain_frame(underlying, pd.DatetimeIndex([to_utc(as_of)])))

    def get_option_ohlc(
        self, instrument_name: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Bars of one option from its stored bar-close marks, USD (see ChainTable.ohlc)."""
        s, e = inclusive_range(start, end)
        underlying = underlying_of(instrument_name)
        tf = self.chain_timeframe(underlying)
        lo = s - timeframe_delta(timeframe) - timeframe_delta(tf)
        cols = self._scan(underlying, lo, e, names=[instrument_name])
        return ChainTable.from_columns(cols, tf, self._max_staleness).ohlc(
            instrument_name, s, e, timeframe
        )

    # ---- BulkChainSource

    def _windows(self, underlying: str) -> tuple[Timeframe, pd.Timedelta, pd.Timedelta]:
        """Chain bar, chain staleness and mark staleness of `underlying` (meta read once)."""
        u = underlying.upper()
        if u not in self._window_cache:
            tf = self.chain_timeframe(u)
            stale = self._max_staleness or timeframe_delta(tf)
            self._window_cache[u] = (tf, stale, max(stale, self.snapshot_cadence(u)))
        return self._window_cache[u]

    def chain_frame(
        self,
        underlying: str,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> pd.DataFrame:
        """Chains at each of `times` (CHAIN_COLUMNS), optionally narrowed to kinds / max DTE."""
        cols = self.chain_columns(underlying, times, kinds=kinds, max_dte=max_dte)
        return columns_to_frame(cols) if len(cols) else empty_chain_frame()

    def chain_columns(
        self,
        underlying: str,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
        selection: ChainSelection | None = None,
    ) -> ChainColumns:
        """`chain_frame` as columns: one columnar pass over the period's partitions.

        With `max_dte` the pass runs on until the last of those options can expire (last time + max_dte) and keeps their marks for
        `option_marks`, so a simulation reads every partition once. With `selection`, only
        the rows `store_selection_mask` keeps are copied out (the marks are kept whole).
        """
        with scan_pool():
            return self._chain_columns(
                underlying, times, kinds=kinds, max_dte=max_dte, selection=selection
            )

    def _chain_columns(
        self,
        underlying: str,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
        selection: ChainSelection | None = None,
    ) -> ChainColumns:
        """`chain_columns` inside the scan memory pool."""
        times = utc_index(pd.DatetimeIndex(times))
        u = underlying.upper()
        if len(times) == 0:
            return empty_columns(u)
        tf, stale, mark_stale = self._windows(u)
        bar = timeframe_delta(tf)
        t_ns = np.sort(times.as_unit("ns").asi8)
        ref = t_ns - np.mod(t_ns, bar.value)
        chain_back = (stale + bar).value
        lo = int(ref[0]) - max(chain_back, (mark_stale + bar).value)
        hi_chain = int(ref[-1])
        hi = hi_chain + (0 if max_dte is None else int(max_dte * 86_400e9))
        codes = Codes()
        found: list[ChainColumns] = []
        slim: list[ChainColumns] = []
        tail: ChainColumns | None = None
        held = np.zeros(0, dtype=bool)  # codes already in the selection's band
        deferred = None if selection is None else []
        # tiers of at most `floor` days to expiry are left out of the point-in-time pass and
        # read after it, for the band's marks and the few decisions that need them
        floor = tier_floor(selection)
        low_tail: ChainColumns | None = None  # the previous block's left-out rows near its end
        # the ATM summaries of every file read (windows at a block start look into the last)
        summaries: list[FileSummary] = []
        skipped = False  # whether any block left rows out (the marks then cover the band only)
        for block_lo, block_hi in self._blocks(lo, hi):
            low: list[LowGroups] | None = None if floor is None else []
            cols = self._scan(
                u,
                pd.Timestamp(block_lo, tz="UTC"),
                pd.Timestamp(block_hi, tz="UTC"),
                kinds=kinds,
                max_dte=max_dte,
                codes=codes,
                deferred=deferred,
                floor=floor,
                low=low,
                summaries=None if floor is None else summaries,
            )
            skipping = bool(low) or low_tail is not None
            skipped |= skipping
            slim.append(
                replace(cols, values={"mark_price": cols.values["mark_price"]}, names=cols.names)
            )
            rows = cols
            need_ns = np.empty(0, dtype=np.int64)  # decisions that need the left-out rows
            if block_lo <= hi_chain:
                rows = cols if tail is None else concat_columns([tail, cols], codes.names(), u)
                mine = (ref >= block_lo) & (ref <= block_hi)
                if mine.any():
                    table = ChainTable.from_columns(rows, tf, stale)
                    held = grown(held, len(codes.index))
                    chains, need_ns = self._select(
                        table,
                        t_ns[mine],
                        selection,
                        held,
                        floor + DTE_SLACK if skipping and floor is not None else None,
                        kinds=kinds,
                        max_dte=max_dte,
                    )
                    found.extend(chains)
                    self.gate_counts.update(table.gate_counts)
                # the next block's first chains look back into this one
                tail = rows.take(np.flatnonzero(rows.as_of > block_hi - chain_back))
            if not skipping or selection is None or floor is None:
                continue
            second = self._second_pass(
                u,
                low or [],
                floor,
                rows,
                low_tail,
                need_ns,
                held,
                selection,
                codes,
                deferred,
                summaries,
                tail_from=block_hi - chain_back if ref[-1] > block_hi else None,
                kinds=kinds,
                max_dte=max_dte,
            )
            slim.extend(second.marks)
            found.extend(second.found)
            held = second.held
            low_tail = second.tail
        names = codes.names()
        table = ChainTable.from_columns(
            concat_columns(slim, names, u), tf, stale, mark_staleness=mark_stale
        )
        period = MarkPeriod(kinds=frozenset(kinds), max_dte=max_dte, lo=lo, hi=hi, table=table)
        if selection is not None:
            # the band's instruments (a few % of the rows) get their own small mark table:
            # its index sorts and searches ~50x fewer rows than the whole period's
            hot_codes = np.zeros(len(names), dtype=bool)
            hot_codes[: len(held)] = held
            mark_cols = table.cols
            hot = mark_cols.take(np.flatnonzero(hot_codes[mark_cols.code]))
            period.hot = ChainTable.from_columns(hot, tf, stale, mark_staleness=mark_stale)
            period.hot_codes = hot_codes
            period.hot_only = skipped
        self._mark_periods[u] = period
        out = concat_columns(found, names, u)
        if len(out) > 1 and (np.diff(out.as_of) < 0).any():
            # decisions answered by the second pass come after the others: back in time order
            out = out.take(np.argsort(out.as_of, kind="stable"))
        return out if deferred is None else take_deferred(out, deferred, self.threads)

    def _second_pass(
        self,
        u: str,
        low: list[LowGroups],
        floor: float,
        rows: ChainColumns,
        low_tail: ChainColumns | None,
        need_ns: np.ndarray,
        held: np.ndarray,
        selection: ChainSelection,
        codes: Codes,
        deferred: list[DeferredValues] | None,
        summaries: list[FileSummary],
        *,
        tail_from: int | None,
        kinds: Sequence[str],
        max_dte: float | None,
    ) -> SecondPass:
        """The left-out rows (`low`) of one block a replay reads, and the chains of the
        decisions at `need_ns` that need them (`rows`: the block's point-in-time rows).

        Read: every left-out row of a band instrument (its marks; a band row at t has more
        than `floor` days, so its instrument's left-out rows come after t, and the band codes
        of this block and the ones before are all that can have them); the rows in the
        windows of the decisions at `need_ns`; with `tail_from`, the rows after it (the next
        block's first windows look back into them). The tier just under `floor` is read with
        the selection columns; the tiers below it with the mark columns only, unless a
        decision keeps a first row or the next block needs the tail: a decision whose ATM
        pick the next tier settles (`atm_needs_lower` with that tier's floor) never reads them.
        A decision that keeps no first row and whose ATM rule the files' summaries answer
        (`summary_answers`) reads none of them: its chain comes from `rows` and the summary
        rows at its snapshot (`_from_summaries`).
        """
        tf, stale, _ = self._windows(u)
        bar = timeframe_delta(tf).value
        back = (stale + timeframe_delta(tf)).value
        sure = np.zeros(len(need_ns), dtype=bool)
        if len(need_ns) and set(kinds) == {"call"}:
            sure = ~selection.first_row_wanted(need_ns) & summary_answers(
                need_ns, bar, stale.value, floor, summaries
            )
        by_summary, need_ns = need_ns[sure], need_ns[~sure]
        lower = TIER_BELOW.get(floor)
        far: list[LowGroups] = []  # the tiers under the next one down (None: there are none)
        for g in low:
            if lower is not None:
                _, below = split_low(g.reader, g.plan, lower)
                if below[0] or below[1]:
                    far.append(replace(g, plan=below))
        first = selection.first_row_wanted(need_ns)
        # the far tiers' windows only when a decision needs them for sure (first rows)
        far_whole = bool(far) and bool(first.any())
        win = windows_of(need_ns, bar, back)
        got, got_marks = self._read_low(
            u,
            low,
            held,
            win,
            tail_from,
            codes,
            deferred,
            windowless=None if far_whole else lower,
        )
        marks = [got, got_marks]
        narrow = [p for p in (low_tail, got) if p is not None and len(p)]
        out = SecondPass(
            marks=[
                replace(m, values={"mark_price": m.values["mark_price"]}) for m in marks if len(m)
            ],
            found=[],
            held=held,
            tail=None,
        )
        # decisions that needed the left-out rows, and those of them the summaries answered
        self.scan_stats["low_decisions"] += len(need_ns) + len(by_summary)
        self.scan_stats["summary_decisions"] += len(by_summary)
        if len(by_summary):
            self._from_summaries(
                rows, by_summary, floor, summaries, selection, out, codes, deferred, kinds, max_dte
            )
        if len(need_ns):
            # only the rows inside the decisions' windows: a query reads nothing else, and
            # an instrument's next row outside them lies after its window either way
            parts = [p.take(rows_in_windows(p.as_of, win)) for p in (rows, *narrow)]
            merged = concat_columns(parts, codes.names(), u)
            # rows of the far tiers are missing unless read whole-width: a decision whose
            # ATM pick they could change reads them in a third pass (`again`)
            deeper = None if (far_whole or not far or lower is None) else lower + DTE_SLACK
            again = self._point_in_time(
                merged, need_ns, selection, out, codes, deeper, kinds=kinds, max_dte=max_dte
            )
            self.scan_stats["low_decisions_deeper"] += len(again)
            if len(again):
                got, _ = self._read_low(
                    u, far, held, windows_of(again, bar, back), None, codes, deferred, hot=False
                )
                # far groups the tail or band marks made whole-width gave some of these rows
                merged = first_of_each(concat_columns([merged, got], codes.names(), u))
                self._point_in_time(
                    merged, again, selection, out, codes, None, kinds=kinds, max_dte=max_dte
                )
        if tail_from is not None:
            ends = [p.take(np.flatnonzero(p.as_of > tail_from)) for p in narrow]
            tail = concat_columns(ends, codes.names(), u)
            out.tail = tail if len(tail) else None
        return out

    def _from_summaries(
        self,
        rows: ChainColumns,
        times_ns: np.ndarray,
        floor: float,
        summaries: list[FileSummary],
        selection: ChainSelection,
        out: SecondPass,
        codes: Codes,
        deferred: list[DeferredValues] | None,
        kinds: Sequence[str],
        max_dte: float | None,
    ) -> None:
        """Selected chains at `times_ns` (decisions `summary_answers` accepts) from the
        first-pass `rows` in their windows plus the summary rows of at most `floor` days at
        their snapshots, into `out.found` (same rows as reading the left-out tiers)."""
        u = rows.underlying
        tf, stale, _ = self._windows(u)
        bar = timeframe_delta(tf).value
        win = windows_of(times_ns, bar, (stale + timeframe_delta(tf)).value)
        part = rows.take(rows_in_windows(rows.as_of, win))
        extra = summary_rows_at(summaries, times_ns - np.mod(times_ns, bar), floor + DTE_SLACK)
        found = [part]
        if extra.num_rows:
            cols = codes.remap(columns_from_arrow(extra, u))
            found.append(cols if deferred is None else defer_values(cols, deferred))
        # a summary row the first pass also read (a group without statistics) counts once
        merged = first_of_each(concat_columns(found, codes.names(), u))
        self._point_in_time(
            merged, times_ns, selection, out, codes, None, kinds=kinds, max_dte=max_dte
        )

    def _point_in_time(
        self,
        cols: ChainColumns,
        times_ns: np.ndarray,
        selection: ChainSelection,
        out: SecondPass,
        codes: Codes,
        floor: float | None,
        *,
        kinds: Sequence[str],
        max_dte: float | None,
    ) -> np.ndarray:
        """Selected chains at `times_ns` from `cols` into `out.found`; with `floor`, the
        times whose first row or ATM pick needs rows of at most `floor` days are returned
        instead (their rows are left out)."""
        tf, stale, _ = self._windows(cols.underlying)
        table = ChainTable.from_columns(cols, tf, stale)
        out.held = grown(out.held, len(codes.index))
        chains, need = self._select(
            table, times_ns, selection, out.held, floor, kinds=kinds, max_dte=max_dte
        )
        out.found.extend(chains)
        return need

    @staticmethod
    def _select(
        table: ChainTable,
        times_ns: np.ndarray,
        selection: ChainSelection | None,
        held: np.ndarray,
        floor: float | None,
        *,
        kinds: Sequence[str],
        max_dte: float | None,
    ) -> tuple[list[ChainColumns], np.ndarray]:
        """The chains of `table` at `times_ns` (as_of = the query time), narrowed by
        `selection` (`held`, the band codes, updated in place); with `floor`, the times whose
        first row or ATM pick needs rows of at most `floor` days are returned instead of
        answered (their rows are left out)."""
        found: list[ChainColumns] = []
        needs: list[np.ndarray] = []
        # a few hundred decision times at a time: the point-in-time rows and the selection's
        # temporaries of ~30k rows stay in cache and their memory is reused, where one pass
        # held ~0.5M-row temporaries (fresh pages: system time in a fresh process); the rows
        # and their order are the same
        for q in range(0, len(times_ns), _QUERY_CHUNK):
            at, which, q_ns = table.at_rows_ns(
                times_ns[q : q + _QUERY_CHUNK], kinds=kinds, max_dte=max_dte
            )
            if selection is not None:
                first = selection.first_row_wanted(q_ns)
                keep = store_selection_mask(table.cols, at, which, q_ns, selection, held, first)
                if floor is not None:
                    need = first | atm_needs_lower(
                        table.cols, at, which, q_ns, selection.atm_dte, floor
                    )
                    keep &= ~need[which]
                    needs.append(q_ns[need])
                at, which = at[keep], which[keep]
            found.append(replace(table.cols.take(at), as_of=q_ns[which]))
        return found, (np.concatenate(needs) if needs else np.empty(0, dtype=np.int64))

    def _read_low(
        self,
        u: str,
        low: list[LowGroups],
        held: np.ndarray,
        windows: tuple[np.ndarray, np.ndarray] | None,
        tail_from: int | None,
        codes: Codes,
        deferred: list[DeferredValues] | None,
        *,
        hot: bool = True,
        windowless: float | None = None,
    ) -> tuple[ChainColumns, ChainColumns]:
        """Rows of the left-out groups `low`: of band codes (`held`, when `hot`), in the
        merged `windows` (lo, hi] or after `tail_from`, as (rows converted like a scan's,
        deferred values left in the file; rows holding `mark_price` only). A group whose
        `as_of` statistics meet no window and not the tail gives only band rows, and only its
        mark columns are decoded. Groups of at most `windowless` days to expiry meet the
        tail only."""
        lo, hi = windows if windows is not None else (np.empty(0, np.int64),) * 2

        def wanted(as_of: np.ndarray, is_hot: np.ndarray) -> np.ndarray:
            keep = is_hot.copy() if hot else np.zeros(len(as_of), dtype=bool)
            if tail_from is not None:
                keep |= as_of > tail_from
            return keep | in_windows(as_of, (lo, hi))

        def touched(i: int, span: tuple[int, int] | None, far: set[int]) -> bool:
            if span is None:
                return True  # no statistics: it may hold any time
            if tail_from is not None and span[1] > tail_from:
                return True
            if i in far:
                return False
            j = np.searchsorted(hi, span[0], side="left")  # first window ending at or after it
            return bool(j < len(hi) and lo[j] < span[1])

        names = codes.names()
        band = np.flatnonzero(held)
        hot_names = pa.array(names[band].tolist(), type=pa.string())
        hot_codes = dict(zip(names[band].tolist(), band.tolist(), strict=True))
        defer = deferred is not None
        # in file order, full-width reads first: (groups, wanted, marks only) per read, or
        # the band marks a partition's low-tier marks file already gave
        steps: list[
            tuple[LowGroups, Callable[[np.ndarray, np.ndarray], np.ndarray], bool] | ChainColumns
        ] = []
        for g in low:
            spans = as_of_spans(g.reader)
            far: set[int] = set()
            if windowless is not None:
                below = split_low(g.reader, g.plan, windowless)[1]
                far = set(below[0]) | set(below[1])
            split: tuple[list[int], list[int]] = ([], [])  # groups read whole-width
            rest: tuple[list[int], list[int]] = ([], [])  # groups read for band marks only
            for k, part in enumerate(g.plan):
                for i in part:
                    (split if touched(i, spans[i], far) else rest)[k].append(i)
            if split[0] or split[1]:
                steps.append((replace(g, plan=split), wanted, False))
            if hot and (rest[0] or rest[1]):
                # groups the window keeps whole: their band rows from the partition's
                # low-tier marks file when it holds them (`low_marks`), else decoded
                side = None
                if g.path is not None and rest[0] and not rest[1]:
                    side = band_marks_from_file(
                        g.reader, g.path, rest[0], hot_names, u, codes, self.scan_stats
                    )
                steps.append(side if side is not None else (replace(g, plan=rest), band_only, True))

        def decode(job: tuple[LowGroups, Any, bool]) -> LowRead:
            group, keep, marks_only = job
            return decode_low_groups(
                group, u, defer, hot_names, hot_codes, keep, marks_only=marks_only
            )

        full: list[ChainColumns] = []
        marks: list[ChainColumns] = []
        # files decoded at once; merged into codes and deferred values in file order
        reads = [step for step in steps if isinstance(step, tuple)]
        with file_pool(self.threads, len(reads)) as pool:
            decoded = pool.map(decode, reads)
            for step in steps:
                if isinstance(step, ChainColumns):
                    marks.append(step)
                    continue
                part = finish_low(next(decoded), self.scan_stats, codes, deferred)
                (marks if step[2] else full).append(part)
        names = codes.names()
        return concat_columns(full, names, u), concat_columns(marks, names, u)

    def selected_chain_columns(
        self,
        underlying: str,
        times: pd.DatetimeIndex,
        selection: ChainSelection,
        *,
        max_dte: float | None = None,
    ) -> ChainColumns:
        """Call rows at `times` a replay reads (see `store_selection_mask`), in store order."""
        return self.chain_columns(
            underlying, times, kinds=("call",), max_dte=max_dte, selection=selection
        )

    def _blocks(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """[lo, hi] (ns) cut into runs of at most `block_days` days, at month starts if possible.

        Partitions are months (or days): a cut inside a month would read its file once per
        block, so each block ends at the last month start within `block_days` days of its first
        day, or at a UTC midnight when no month starts within reach (`block_days` < 31).
        """
        day = 86_400 * 10**9
        reach = self.block_days * day
        out = []
        start = lo
        while start <= hi:
            first = start - start % day
            month = pd.Timestamp(first, tz="UTC").replace(day=1)
            edges = pd.date_range(month, periods=self.block_days // 28 + 2, freq="MS", tz="UTC")
            edge_ns = edges.as_unit("ns").asi8
            within = edge_ns[(edge_ns > start) & (edge_ns <= first + reach)]
            edge = int(within[-1]) if len(within) else first + reach
            out.append((start, min(hi, edge - 1)))
            start = edge
        return out

    def option_marks(self, instrument_names: Sequence[str], times: pd.DatetimeIndex) -> np.ndarray:
        """Mark prices (USD), shape (len(names), len(times)); NaN where not listed or stale.

        Answered from the marks the last bulk `chain_frame` loaded when they cover the question;
        otherwise from one scan of those instruments' partitions.
        """
        times = utc_times(times)
        out = np.full((len(instrument_names), len(times)), np.nan)
        if len(times) == 0 or len(instrument_names) == 0:
            return out
        by_underlying: dict[str, list[int]] = {}
        for i, name in enumerate(instrument_names):
            by_underlying.setdefault(coin_of(name.split("-", 1)[0]), []).append(i)
        for u, rows in by_underlying.items():
            if not self._has_chains(u):
                continue
            names = [instrument_names[i] for i in rows]
            tf, stale, mark_stale = self._windows(u)
            bar = timeframe_delta(tf).value
            t_ns = times.as_unit("ns").asi8
            need_lo = int(t_ns.min() - t_ns.min() % bar) - mark_stale.value
            need_hi = int(t_ns.max())
            period = self._mark_periods.get(u)
            codes = None if period is None else period.table.codes_of(names)
            covered = self._covered(u, names, codes, need_lo, need_hi)
            if covered.any() and period is not None and codes is not None:
                idx = np.flatnonzero(covered)
                out[[rows[i] for i in idx]] = period.table_for(codes[idx]).marks(
                    [names[i] for i in idx], times, codes=codes[idx]
                )
            if not covered.all():
                idx = np.flatnonzero(~covered)
                missing = [names[i] for i in idx]
                cols = self._scan(
                    u,
                    pd.Timestamp(need_lo, tz="UTC"),
                    pd.Timestamp(need_hi, tz="UTC"),
                    names=missing,
                )
                table = ChainTable.from_columns(cols, tf, stale, mark_staleness=mark_stale)
                out[[rows[i] for i in idx]] = table.marks(missing, times)
        return out

    def option_mark_ranges(
        self,
        instrument_names: Sequence[str],
        times: pd.DatetimeIndex,
        first: np.ndarray,
        last: np.ndarray,
    ) -> np.ndarray:
        """Marks (USD) of name i at times[first[i]:last[i] + 1], concatenated (MarkRangeSource).

        One request for every expiry's paths: names the last bulk `chain_frame` covers are
        answered from its marks in one vectorised look-up, the others from one scan of their
        partitions over the union of their ranges.
        """
        times = utc_times(times)
        first = np.asarray(first, dtype=np.int64)
        last = np.asarray(last, dtype=np.int64)
        pos = range_positions(first, last)
        out = np.full(len(pos), np.nan)
        if len(pos) == 0:
            return out
        t_all = times.as_unit("ns").asi8
        owner = np.repeat(np.arange(len(first)), last - first + 1)
        t_ns = t_all[pos]
        by_underlying: dict[str, list[int]] = {}
        for i, name in enumerate(instrument_names):
            if last[i] >= first[i]:
                by_underlying.setdefault(coin_of(name.split("-", 1)[0]), []).append(i)
        for u, rows in by_underlying.items():
            if not self._has_chains(u):
                continue
            names = [instrument_names[i] for i in rows]
            tf, stale, mark_stale = self._windows(u)
            bar = timeframe_delta(tf).value
            lo_t, hi_t = t_all[first[rows]], t_all[last[rows]]
            need_lo = lo_t - lo_t % bar - mark_stale.value
            period = self._mark_periods.get(u)
            codes = None if period is None else period.table.codes_of(names)
            covered = self._covered(u, names, codes, need_lo, hi_t)
            # per name: its table code (covered) or -1; pairs pick their owner's code
            mine = np.full(len(first), -2, dtype=np.int64)
            if covered.any() and period is not None and codes is not None:
                mine[np.asarray(rows)[covered]] = codes[covered]
                pairs = mine[owner] >= -1
                table = period.table_for(codes[covered])
                out[pairs] = table.marks_at(mine[owner][pairs], t_ns[pairs])
            if not covered.all():
                missing = [names[i] for i in np.flatnonzero(~covered)]
                cols = self._scan(
                    u,
                    pd.Timestamp(int(need_lo[~covered].min()), tz="UTC"),
                    pd.Timestamp(int(hi_t[~covered].max()), tz="UTC"),
                    names=missing,
                )
                table = ChainTable.from_columns(cols, tf, stale, mark_staleness=mark_stale)
                mine[:] = -2
                mine[np.asarray(rows)[~covered]] = table.codes_of(missing)
                pairs = mine[owner] >= -1
                out[pairs] = table.marks_at(mine[owner][pairs], t_ns[pairs])
        return out

    def _covered(
        self,
        u: str,
        names: list[str],
        codes: np.ndarray | None,
        need_lo: int | np.ndarray,
        need_hi: int | np.ndarray,
    ) -> np.ndarray:
        """Which of `names` the loaded mark period answers completely over [need_lo, need_hi]
        (one range for all names, or one per name)."""
        period = self._mark_periods.get(u)
        if period is None or codes is None:
            return np.zeros(len(names), dtype=bool)
        need_lo = np.broadcast_to(np.asarray(need_lo, dtype=np.int64), (len(names),))
        need_hi = np.broadcast_to(np.asarray(need_hi, dtype=np.int64), (len(names),))
        inside = (need_lo >= period.lo) & (need_hi <= period.hi)
        if period.hot_only:
            hot = np.zeros(len(names), dtype=bool)
            hot[codes >= 0] = period.hot_codes[codes[codes >= 0]]
            inside &= hot
        kind_ok = np.array(
            [("call" if n.endswith("-C") else "put") in period.kinds for n in names], dtype=bool
        )
        if period.max_dte is None:
            return inside & kind_ok
        # the small table knows the expiry of its own codes without indexing the whole period
        table = period.table_for(codes)
        limit = need_lo + int(period.max_dte * 86_400e9)
        expiry = np.full(len(names), np.iinfo(np.int64).max)
        known = codes >= 0
        expiry[known] = table.expiry_of_code()[codes[known]]
        for i in np.flatnonzero(~known):
            # an option absent from the period: covered only if the dte filter cannot have hidden it
            try:
                expiry[i] = parse_instrument_name(names[i]).expiry.value
            except ValueError:
                expiry[i] = np.iinfo(np.int64).min  # not an option name: nothing to find
        return inside & kind_ok & (expiry <= limit)

    # ---- SettlementSource

    def settlement_price(self, underlying: str, expiry: pd.Timestamp) -> float | None:
        """The stored delivery price of `underlying` at `expiry` (USD), or None."""
        key = underlying.upper()
        if key not in self._settlements:
            found = _existing(settlement_path(self.root, key))
            self._settlements[key] = {} if found is None else read_settlements(found)
        value = self._settlements[key].get(to_utc(expiry).as_unit("ns").value)
        if value is None or not np.isfinite(value):
            return None
        return float(value)

    # ---- internals

    def _has_chains(self, underlying: str) -> bool:
        u = underlying.upper()
        if u not in self._with_chains:  # only a found store is remembered (imports add them)
            if not meta_path(self.root, u).exists():
                return False
            self._with_chains.add(u)
        return True

    def _chain_table(self, underlying: str, start: pd.Timestamp, end: pd.Timestamp) -> ChainTable:
        tf, stale, mark_stale = self._windows(underlying)
        cols = self._scan(underlying, start - stale - timeframe_delta(tf), end)
        return ChainTable.from_columns(cols, tf, stale, mark_staleness=mark_stale)

    def _partition_files(self, underlying: str, lo: int, hi: int) -> list[Path]:
        """Chain partition files holding bars in [lo, hi] (ns), in time order.

        A month partition stands for its whole month: day partitions of a month that has one
        are leftovers of an interrupted compaction and are skipped.
        """
        first = pd.Timestamp(lo, tz="UTC").floor("D")
        last = pd.Timestamp(hi, tz="UTC").floor("D")
        parts = _chain_partitions(underlying_dir(self.root, underlying) / "chain")
        months = {p for kind, p, _ in parts if kind == "month"}
        out = []
        for kind, start, path in parts:
            if kind == "month":
                end = start + pd.offsets.MonthBegin(1) - pd.Timedelta(days=1)
                if start <= last and end >= first:
                    out.append((start, path))
            elif first <= start <= last and start.replace(day=1) not in months:
                out.append((start, path))
        return [p for _, p in sorted(out, key=lambda x: x[0])]

    def _scan(
        self,
        underlying: str,
        lo: pd.Timestamp,
        hi: pd.Timestamp,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
        names: Sequence[str] | None = None,
        codes: Codes | None = None,
        deferred: list[DeferredValues] | None = None,
        floor: float | None = None,
        low: list[LowGroups] | None = None,
        summaries: list[FileSummary] | None = None,
    ) -> ChainColumns:
        """Chain rows of `underlying` with as_of in [lo, hi] in one columnar pass.

        With `deferred`, only the `SELECTION_VALUES` become numpy; the other value columns
        stay Arrow, appended to `deferred`, and each row carries its position in them as the
        value `ROW_ID` (see `take_deferred`). With `floor` and `low`, Parquet row groups whose
        statistics say every row has at most `floor` days to expiry are not read: they are
        appended to `low` (see `LowGroups`). `summaries` receives the ATM summary (or the
        span only) of every file read.
        """
        with scan_pool():
            return self._scan_rows(
                underlying, lo, hi, kinds, max_dte, names, codes, deferred, floor, low, summaries
            )

    def _scan_rows(
        self,
        underlying: str,
        lo: pd.Timestamp,
        hi: pd.Timestamp,
        kinds: Sequence[str],
        max_dte: float | None,
        names: Sequence[str] | None,
        codes: Codes | None,
        deferred: list[DeferredValues] | None,
        floor: float | None = None,
        low: list[LowGroups] | None = None,
        summaries: list[FileSummary] | None = None,
    ) -> ChainColumns:
        """`_scan` inside the scan memory pool."""
        u = underlying.upper()
        files = self._partition_files(u, lo.value, hi.value)
        expr = scan_filter(lo, hi, kinds=kinds, max_dte=max_dte, names=names)
        parquet = [f for f in files if f.suffix == ".parquet"]
        window = ScanWindow(
            lo=lo.value, hi=hi.value, kinds=frozenset(kinds), max_dte=max_dte, exact=names is None
        )
        parts: list[ChainColumns] = []
        opened: list[tuple[pq.ParquetFile, Path]] = []
        if parquet:
            had = None if deferred is None else len(deferred)
            codes = Codes() if codes is None else codes
            try:
                parts.extend(
                    read_chain_files(
                        parquet,
                        expr,
                        window,
                        u,
                        deferred,
                        stats=self.scan_stats,
                        codes=codes,
                        floor=floor if low is not None else None,
                        low=low,
                        opened=opened,
                        threads=self.threads,
                    )
                )
            except (pa.ArrowException, OSError, TypeError, KeyError):
                # name the broken file (or read mismatched schemas one by one)
                opened.clear()  # no summary is used: the files' spans are unknown
                parts.clear()
                if deferred is not None:
                    del deferred[had:]
                if low is not None:
                    low.clear()  # every row is read below
                parts.extend(self._read_one(f, u, expr) for f in parquet)
        parts.extend(self._read_one(f, u, expr) for f in files if f.suffix == ".csv")
        if summaries is not None:
            summaries.extend(file_summary(r, p) for r, p in opened)
            # a file read without a summary of known span (CSV, a failed read) blocks them all
            summaries.extend(FileSummary(None) for _ in range(len(files) - len(opened)))
        self.scan_stats["scans"] += 1
        self.scan_stats["files"] += len(files)
        if codes is None:
            codes = Codes()
        parts = [codes.remap(p) for p in parts]
        if deferred is not None:
            parts = [defer_values(p, deferred) for p in parts]
        cols = concat_columns(parts, codes.names(), u)
        self.scan_stats["rows"] += len(cols)
        if len(cols) > 1 and (np.diff(cols.as_of) < 0).any():
            cols = cols.take(np.argsort(cols.as_of, kind="stable"))
        return cols

    def _read_one(self, path: Path, underlying: str, expr: ds.Expression) -> ChainColumns:
        frame = normalize_store_chain(read_table(path))
        try:
            table = ds.dataset(pa.Table.from_pandas(frame, preserve_index=False)).to_table(
                filter=expr
            )
        except pa.ArrowException as exc:
            raise DataError(f"cannot read store file: {exc}", source=path) from exc
        return columns_from_arrow(table, underlying)
