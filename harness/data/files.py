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
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
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
from harness.coins import coin_of_instrument_underlying
from harness.data.chain_scan import (
    VALUE_COLUMNS,
    ChainColumns,
    as_of_ns,
    columns_from_arrow,
    columns_from_frame,
    columns_to_frame,
    concat_columns,
    empty_columns,
    float_values,
    scan_filter,
)
from harness.data.chain_select import ChainSelection, atm_needs_lower, store_selection_mask
from harness.data.source import (
    CHAIN_COLUMNS,
    OHLC_COLUMNS,
    empty_chain_frame,
    empty_ohlc,
    frame_to_snapshots,
    inclusive_range,
    normalize_chain_frame,
    range_positions,
)
from harness.instruments import parse_instrument_name
from harness.timestamps import TimestampLike, to_utc, utc_index
from harness.types import TIMEFRAMES, OptionSnapshot, Timeframe, timeframe_delta

STORE_CHAIN_COLUMNS: tuple[str, ...] = (*CHAIN_COLUMNS, "quote_time")
# What a chain scan decodes: the underlying is the store folder's, so its column is skipped.
STORE_SCAN_COLUMNS: tuple[str, ...] = tuple(c for c in STORE_CHAIN_COLUMNS if c != "underlying")
# The value columns a chain selection, point-in-time rows and marks read for every scanned row;
# the others are converted only for the rows a selection keeps (`take_deferred`).
SELECTION_VALUES: tuple[str, ...] = (
    "strike",
    "underlying_price",
    "mark_price",
    "mark_iv",
    "delta",
)
DEFERRED_VALUES: tuple[str, ...] = tuple(c for c in VALUE_COLUMNS if c not in SELECTION_VALUES)
ROW_ID = "_row"
# what a mark row needs (the period's mark table), plus what the scan window tests
_MARK_READ = frozenset(("as_of", "expiry", "quote_time", "instrument_name", "kind", "mark_price"))
SETTLEMENT_COLUMNS: tuple[str, ...] = ("expiry", "price", "source")
# The tiered layout (docs/data.md): each Parquet chain partition holds one row group per
# (days-to-expiry tier, kind), rows sorted by time inside each, and a `days_to_expiry` column
# whose row-group statistics let a scan skip every group outside its DTE window undecoded.
DTE_COLUMN = "days_to_expiry"
DTE_TIERS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
CHAIN_ROW_GROUP_ROWS = 1 << 20  # a tier larger than this is split (bounds decode memory)
_DTE_SLACK = 1e-6  # days: float rounding of the stored column never prunes a kept row
_QUERY_CHUNK = 256  # decision times per point-in-time pass of a bulk scan
_DATETIME_CHAIN = ("as_of", "expiry", "quote_time")
_STRING_CHAIN = ("instrument_name", "underlying", "kind")


class DataError(ValueError):
    """Bad market data, naming where it came from (file and line, or request) and the problem."""

    def __init__(
        self, problem: str, *, source: str | os.PathLike[str] | None = None, line: int | None = None
    ):
        self.problem = problem
        self.source = None if source is None else str(source)
        self.line = line
        where = self.source or ""
        if line is not None:
            where = f"{where}, line {line}" if where else f"line {line}"
        super().__init__(f"{where}: {problem}" if where else problem)


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
    strike) inside, with `DTE_COLUMN` (days, float64) added so readers can prune groups.
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
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    tmp = _temp_sibling(path)
    try:
        with pq.ParquetWriter(tmp, table.schema, **_parquet_options(table.schema)) as writer:
            for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(order)], strict=True):
                if b > a or len(order) == 0:
                    writer.write_table(table.slice(a, b - a), row_group_size=CHAIN_ROW_GROUP_ROWS)
        _commit(tmp, path)
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


def normalize_store_chain(frame: pd.DataFrame) -> pd.DataFrame:
    """Return a store chain frame: CHAIN_COLUMNS (normalized) plus `quote_time` (UTC)."""
    quote = frame["quote_time"] if "quote_time" in frame.columns else frame["as_of"]
    out = normalize_chain_frame(frame)
    for col in _STRING_CHAIN:
        out[col] = out[col].astype("str")  # one string dtype whatever the file format
    for col in ("as_of", "expiry"):
        out[col] = out[col].dt.as_unit("ns")
    out["quote_time"] = pd.to_datetime(
        pd.Series(quote).reset_index(drop=True), utc=True
    ).dt.as_unit("ns")
    return out


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

    def __str__(self) -> str:
        text = (
            f"compact {self.underlying}: {self.day_files} day partition(s) -> "
            f"{len(self.months)} month partition(s), {self.rows:,} rows"
        )
        if self.relaid:
            text += f"; {len(self.relaid)} month file(s) rewritten in the tiered layout"
        return text


def compact_chain(root: str | os.PathLike[str], underlying: str) -> CompactSummary:
    """Fold the day partitions of `underlying` into month partitions (same rows, fewer files).

    Each month is written (atomically) before its day files are removed, so an interruption
    leaves either the day files alone or a complete month file that readers use instead.
    Parquet month files of the older untiered layout are rewritten in the tiered one (same
    rows; scans can then skip row groups outside their days-to-expiry window).
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
    relaid = []
    for kind, month, path in _chain_partitions(folder):
        if kind == "month" and path.suffix == ".parquet" and not is_tiered(path):
            _merge_partition(path, [])
            relaid.append(f"{month:%Y-%m}")
    return CompactSummary(
        underlying=underlying.upper(),
        months=tuple(f"{m:%Y-%m}" for m in sorted(by_month)),
        day_files=sum(len(f) for f in by_month.values()),
        rows=rows,
        relaid=tuple(relaid),
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


# ---------------------------------------------------------------- point-in-time chain queries


class ChainTable:
    """Resampled chain bars of one underlying, held as columns and queried point-in-time.

    A query at time t reads the bar closing at b = t floored to the bar grid (b <= t, so
    nothing after t is ever used). Each instrument is quoted by its latest snapshot in a bar
    closing at or before b, if that snapshot is younger than `max_staleness` at b (b -
    quote_time < max_staleness; default one bar, i.e. quoted within the bar b itself) and the
    option has not expired (expiry > t). Otherwise it is left out; instruments left out for
    staleness are counted in `gate_counts["stale"]`. Marks (`marks`) use `mark_staleness`
    (default `max_staleness`): a store with sparser snapshots than its bars carries the last
    snapshot's mark until the next one, never an invented value.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        timeframe: Timeframe,
        max_staleness: pd.Timedelta | None = None,
        *,
        mark_staleness: pd.Timedelta | None = None,
    ):
        cols = columns_from_frame(normalize_store_chain(frame)) if len(frame) else empty_columns()
        self._setup(cols, timeframe, max_staleness, mark_staleness)

    @classmethod
    def from_columns(
        cls,
        cols: ChainColumns,
        timeframe: Timeframe,
        max_staleness: pd.Timedelta | None = None,
        *,
        mark_staleness: pd.Timedelta | None = None,
    ) -> ChainTable:
        """A table over already-converted columns (no copy when they are sorted by as_of)."""
        table = cls.__new__(cls)
        table._setup(cols, timeframe, max_staleness, mark_staleness)
        return table

    def _setup(
        self,
        cols: ChainColumns,
        timeframe: Timeframe,
        max_staleness: pd.Timedelta | None,
        mark_staleness: pd.Timedelta | None,
    ) -> None:
        self.timeframe = timeframe
        self.bar = timeframe_delta(timeframe)
        self.max_staleness = self.bar if max_staleness is None else pd.Timedelta(max_staleness)
        self.mark_staleness = (
            self.max_staleness if mark_staleness is None else pd.Timedelta(mark_staleness)
        )
        if len(cols) > 1 and (np.diff(cols.as_of) < 0).any():
            cols = cols.take(np.argsort(cols.as_of, kind="stable"))
        self.cols = cols
        self._name_codes: pd.Index | dict[str, int] | None = None
        self._by_code: np.ndarray | None = None
        self._order_by_code: np.ndarray | None = None
        self._next: np.ndarray | None = None
        self._expiry_of_code: np.ndarray | None = None
        self._quoted_by_close: bool | None = None
        self._gap_rows: np.ndarray | None = None  # rows followed by a gap > max_staleness
        self._frame: pd.DataFrame | None = None
        self.gate_counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.cols)

    @property
    def frame(self) -> pd.DataFrame:
        """All rows as a store chain frame (CHAIN_COLUMNS + quote_time), sorted by as_of."""
        if self._frame is None:
            out = columns_to_frame(self.cols)
            out["quote_time"] = pd.to_datetime(self.cols.quote_time, utc=True)
            self._frame = out
        return self._frame

    def _bar_floor(self, t_ns: np.ndarray) -> np.ndarray:
        """The latest bar close at or before each time (bars aligned to the Unix epoch)."""
        return t_ns - np.mod(t_ns, self.bar.value)

    def _window_rows(self, times_ns: np.ndarray, lookback_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices (and the query index of each) of bars in (t - lookback, t] per query t."""
        lo = np.searchsorted(self.cols.as_of, times_ns - lookback_ns, side="right")
        hi = np.searchsorted(self.cols.as_of, times_ns, side="right")
        return _expand(lo, hi)

    def at(
        self,
        times: Sequence[TimestampLike] | pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> pd.DataFrame:
        """Chains at each of `times` as one frame with CHAIN_COLUMNS (`as_of` = query time).

        `kinds` and `max_dte` (days to expiry) only narrow the result.
        """
        idx = utc_index(pd.DatetimeIndex([to_utc(t) for t in times]))
        if len(self.cols) == 0 or len(idx) == 0:
            return empty_chain_frame()
        return columns_to_frame(self.at_columns(idx, kinds=kinds, max_dte=max_dte))

    def at_columns(
        self,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> ChainColumns:
        """`at` as columns (as_of = query time; quote_time = the snapshot's)."""
        rows, which, t_ns = self.at_rows(times, kinds=kinds, max_dte=max_dte)
        if rows.size == 0:
            return replace(empty_columns(self.cols.underlying), names=self.cols.names)
        return replace(self.cols.take(rows), as_of=t_ns[which])

    def at_rows(
        self,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`at_columns` as row indices: (rows, query index of each, query times in ns).

        Rows come in chain store order (query, calls first, expiry, strike).
        """
        idx = utc_index(pd.DatetimeIndex(times))
        c = self.cols
        t_ns = idx.as_unit("ns").asi8
        none = np.empty(0, dtype=np.int64)
        if len(c) == 0 or len(idx) == 0:
            return none, none, t_ns
        ref_ns = self._bar_floor(t_ns)
        stale_ns = self.max_staleness.value
        if self._quotes_by_bar_close():
            # A row at or before ref - stale has quote_time <= as_of <= ref - stale: never
            # fresh. Only the freshness window (ref - stale, ref] can give rows; the bar before
            # it is looked at only to count instruments that just went stale (`_stale_gaps`).
            rows, which = self._window_rows(ref_ns, stale_ns)
            self.gate_counts["stale"] += self._stale_gaps(t_ns, ref_ns, kinds, max_dte)
        else:
            # Look one bar further back than the freshness window so instruments that just
            # went stale are seen and counted instead of silently vanishing.
            rows, which = self._window_rows(ref_ns, stale_ns + self.bar.value)
        if rows.size == 0:
            return none, none, t_ns
        rows, which = self._live(rows, which, t_ns, ref_ns, kinds, max_dte)
        fresh = (ref_ns[which] - c.quote_time[rows]) < stale_ns
        self.gate_counts["stale"] += int((~fresh).sum())
        rows, which = rows[fresh], which[fresh]
        # ChainStore order (time, calls first, expiry, strike), so the store need not re-sort;
        # rows read from the tiered layout usually are in it already
        keys = (which, ~c.is_call[rows], c.expiry[rows], c.values["strike"][rows])
        if np.isnan(keys[-1]).any() or not _sorted_by(keys):  # lexsort puts NaN last
            order = np.lexsort(keys[::-1])
            rows, which = rows[order], which[order]
        return rows, which, t_ns

    def _live(
        self,
        rows: np.ndarray,
        which: np.ndarray,
        t_ns: np.ndarray,
        ref_ns: np.ndarray,
        kinds: Sequence[str],
        max_dte: float | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Window rows (query `which`) not expired at t, of `kinds`, within `max_dte`, and
        their instrument's latest row at or before the query's bar."""
        c = self.cols
        alive = c.expiry[rows] > t_ns[which]
        if max_dte is not None:
            alive &= c.expiry[rows] - t_ns[which] <= max_dte * 86_400e9
        if set(kinds) != {"call", "put"}:
            want_call = "call" in kinds
            alive &= c.is_call[rows] == want_call
        rows, which = rows[alive], which[alive]
        # An instrument's latest bar <= t in the window is its row whose next row (same
        # instrument, next in time) lies after the window; alive is per instrument and query.
        latest = self._next_as_of()[rows] > ref_ns[which]
        return rows[latest], which[latest]

    def _quotes_by_bar_close(self) -> bool:
        """Whether every row was quoted at or before its bar close (quote_time <= as_of).

        True of every store the importers write (a bar holds the last snapshot inside it);
        `at_rows` then never has to expand the bar before the freshness window.
        """
        if self._quoted_by_close is None:
            self._quoted_by_close = bool((self.cols.quote_time <= self.cols.as_of).all())
        return self._quoted_by_close

    def _stale_gaps(
        self,
        t_ns: np.ndarray,
        ref_ns: np.ndarray,
        kinds: Sequence[str],
        max_dte: float | None,
    ) -> int:
        """Instruments whose latest row at a query lies in the bar before its freshness window
        (ref - stale - bar, ref - stale]: stale (quote_time <= as_of), counted, never returned.

        Such a row's next row is more than `max_staleness` later, so only rows followed by a
        gap that long (about one per instrument: its last) are expanded over the queries.
        """
        c = self.cols
        stale_ns = self.max_staleness.value
        if self._gap_rows is None:
            self._gap_rows = np.flatnonzero(self._next_as_of() - stale_ns > c.as_of)  # no overflow
        gap = self._gap_rows
        if len(gap) == 0:
            return 0
        stamps = c.as_of[gap]
        lo = np.searchsorted(stamps, ref_ns - stale_ns - self.bar.value, side="right")
        hi = np.searchsorted(stamps, ref_ns - stale_ns, side="right")
        pos, which = _expand(lo, hi)
        if len(pos) == 0:
            return 0
        rows, which = self._live(gap[pos], which, t_ns, ref_ns, kinds, max_dte)
        return len(rows)

    def _next_as_of(self) -> np.ndarray:
        """Per row, the as_of (ns) of the same instrument's next row; int64 max for the last."""
        if self._next is None:
            c = self.cols
            order = self._code_order()
            stamps, codes = c.as_of[order], c.code[order]
            last = np.iinfo(np.int64).max
            nxt = np.full(len(c), last)
            nxt[order[:-1]] = np.where(codes[1:] == codes[:-1], stamps[1:], last)
            self._next = nxt
        return self._next

    def _code_order(self) -> np.ndarray:
        """Row indices sorted by (instrument code, as_of), ties in row order."""
        if self._order_by_code is None:
            c = self.cols
            # rows are sorted by as_of, so a stable sort by code alone orders by (code, as_of);
            # with fewer than 65,536 instruments numpy radix-sorts 16-bit keys (4x a lexsort)
            if len(c.names) < 2**16:
                self._order_by_code = np.argsort(c.code.astype(np.uint16), kind="stable")
            else:
                self._order_by_code = np.lexsort((c.as_of, c.code))
        return self._order_by_code

    def _code_index(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Rows sorted by (instrument, bar), their search keys and the key stride."""
        if self._by_code is None:
            c = self.cols
            bar_ns = self.bar.value
            base = int(c.as_of.min() // bar_ns) if len(c) else 0
            bar_idx = c.as_of // bar_ns - base
            stride = int(bar_idx.max()) + 2 if len(c) else 1
            order = self._code_order()
            self._by_code = order
            self._keys = c.code[order] * stride + bar_idx[order]
            self._stride = stride
            self._base = base
        return self._by_code, self._keys, self._stride

    def expiry_of_code(self) -> np.ndarray:
        """Expiry (ns) of each instrument code."""
        if self._expiry_of_code is None:
            out = np.zeros(len(self.cols.names), dtype=np.int64)
            out[self.cols.code] = self.cols.expiry
            self._expiry_of_code = out
        return self._expiry_of_code

    def codes_of(self, names: Sequence[str]) -> np.ndarray:
        """Code of each instrument name (-1 when the table has no row of it)."""
        if self._name_codes is None:
            # a hashed index built in C: a year holds tens of thousands of names, a Python
            # dict of them cost more than the mark look-ups it served
            index = pd.Index(self.cols.names, dtype=object)
            if index.is_unique:
                self._name_codes = index
            else:  # names repeat only in hand-built columns: the last one wins, as before
                self._name_codes = {str(n): i for i, n in enumerate(self.cols.names)}
        if isinstance(self._name_codes, pd.Index):
            found = self._name_codes.get_indexer(pd.Index(list(names), dtype=object))
            return found.astype(np.int64, copy=False)
        get = self._name_codes.get
        return np.fromiter((get(n, -1) for n in names), dtype=np.int64, count=len(names))

    def marks(
        self, names: Sequence[str], times: pd.DatetimeIndex, codes: np.ndarray | None = None
    ) -> np.ndarray:
        """Mark prices (USD) of `names` at `times`, shape (names, times).

        The latest snapshot at or before each time's bar, if younger than `mark_staleness`
        and the option has not expired; NaN otherwise or when the name is not in the table.
        """
        idx = _utc_times(times)
        t_ns = idx.as_unit("ns").asi8
        out = np.full((len(names), len(t_ns)), np.nan)
        if len(self.cols) == 0 or len(names) == 0 or len(t_ns) == 0:
            return out
        if codes is None:
            codes = self.codes_of(names)
        known = np.flatnonzero(codes >= 0)
        if len(known) == 0:
            return out
        pair_codes = np.repeat(codes[known], len(t_ns))
        out[known] = self.marks_at(pair_codes, np.tile(t_ns, len(known))).reshape(-1, len(t_ns))
        return out

    def marks_at(self, codes: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
        """Mark price (USD) of instrument code[i] at time t_ns[i] (ns), one per pair; NaN as `marks`.

        Pairs, not a names x times grid: one request answers instruments over different
        ranges (every expiry's paths at once) without the grid's unused cells.
        """
        codes = np.asarray(codes, dtype=np.int64)
        t_ns = np.asarray(t_ns, dtype=np.int64)
        out = np.full(len(codes), np.nan)
        if len(self.cols) == 0 or len(codes) == 0:
            return out
        c = self.cols
        known = codes >= 0
        order, keys, stride = self._code_index()
        ref_ns = self._bar_floor(t_ns)
        ref_idx = np.clip(ref_ns // self.bar.value - self._base, -1, stride - 2)
        query = codes * stride + ref_idx
        pos = np.searchsorted(keys, query, side="right") - 1
        ok = known & (pos >= 0) & (ref_idx >= 0)
        pos = np.where(ok, pos, 0)
        ok &= keys[pos] // stride == codes
        rows = order[pos]
        ok &= (ref_ns - c.quote_time[rows]) < self.mark_staleness.value
        ok &= c.expiry[rows] > t_ns
        return np.where(ok, c.values["mark_price"][rows], np.nan)

    def ohlc(
        self, name: str, start: pd.Timestamp, end: pd.Timestamp, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Bars of one option from its bar-close marks (USD): open = high = low = close = mark.

        Snapshot data carries no intrabar path or traded volume, so high/low are the close and
        volume is NaN; a coarser `timeframe` takes the last mark of each bin.
        """
        c = self.cols
        code = self.codes_of([name])[0]
        if code < 0:
            return empty_ohlc()
        lo = (start - timeframe_delta(timeframe)).value
        rows = np.flatnonzero((c.code == code) & (c.as_of >= lo) & (c.as_of <= end.value))
        if len(rows) == 0:
            return empty_ohlc()
        close = pd.Series(
            c.values["mark_price"][rows], index=utc_index(pd.to_datetime(c.as_of[rows], utc=True))
        )
        if timeframe_delta(timeframe) != self.bar:
            close = (
                close.resample(
                    timeframe_delta(timeframe), label="right", closed="right", origin="epoch"
                )
                .last()
                .dropna()
            )
        close = close[(close.index >= start) & (close.index <= end)]
        out = pd.DataFrame(
            {"open": close, "high": close, "low": close, "close": close, "volume": np.nan},
            index=close.index,
        )
        return out.loc[:, list(OHLC_COLUMNS)]


# ---------------------------------------------------------------- the store as a data source


class ChainTableSource:
    """`BulkChainSource` methods for sources whose chains live in `ChainTable`s.

    A subclass provides `_chain_table(underlying, start, end)` (None when it has no data for
    that underlying) and may override `_has_chains(underlying)`, which lets `option_marks`
    leave unknown underlyings as NaN rather than fail.
    """

    gate_counts: Counter[str]

    def _chain_table(
        self, underlying: str, start: pd.Timestamp, end: pd.Timestamp
    ) -> ChainTable | None:
        raise NotImplementedError

    def _has_chains(self, underlying: str) -> bool:
        return True

    def chain_frame(
        self,
        underlying: str,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> pd.DataFrame:
        """Chains at each of `times` (CHAIN_COLUMNS), optionally narrowed to kinds / max DTE."""
        times = utc_index(pd.DatetimeIndex(times))
        if len(times) == 0:
            return empty_chain_frame()
        table = self._chain_table(underlying, times.min(), times.max())
        if table is None:
            return empty_chain_frame()
        out = table.at(times, kinds=kinds, max_dte=max_dte)
        # tables may be reused across calls: move their counts so none is counted twice
        self.gate_counts.update(table.gate_counts)
        table.gate_counts.clear()
        return out

    def option_marks(self, instrument_names: Sequence[str], times: pd.DatetimeIndex) -> np.ndarray:
        """Mark prices (USD), shape (len(names), len(times)); NaN where not listed or stale."""
        times = _utc_times(times)
        out = np.full((len(instrument_names), len(times)), np.nan)
        if len(times) == 0 or len(instrument_names) == 0:
            return out
        by_underlying: dict[str, list[int]] = {}
        for i, name in enumerate(instrument_names):
            by_underlying.setdefault(_underlying_of(name), []).append(i)
        for underlying, rows in by_underlying.items():
            if not self._has_chains(underlying):
                continue
            table = self._chain_table(underlying, times.min(), times.max())
            if table is not None:
                out[rows] = table.marks([instrument_names[i] for i in rows], times)
        return out


@dataclass
class _MarkPeriod:
    """Mark columns of one underlying loaded by the last bulk `chain_frame` (ns bounds, inclusive)."""

    kinds: frozenset[str]
    max_dte: float | None
    lo: int
    hi: int
    table: ChainTable
    # the rows of the codes a selection put in its band (`hot_codes`, bool per code): the
    # simulator's mark paths are theirs, so they are looked up in this small table
    hot: ChainTable | None = None
    hot_codes: np.ndarray | None = None
    # rows of low days-to-expiry tiers were read for the band's codes only: other names are
    # not covered (`FileDataSource._covered` sends them to a scan)
    hot_only: bool = False

    def table_for(self, codes: np.ndarray) -> ChainTable:
        """The small table when it holds every one of `codes` (-1: unknown), else the full one."""
        if self.hot is None or self.hot_codes is None:
            return self.table
        known = codes[codes >= 0]
        return self.hot if bool(self.hot_codes[known].all()) else self.table


class _Codes:
    """Instrument names -> integer codes shared by every block and file of one scan."""

    def __init__(self) -> None:
        self._code: dict[str, int] = {}
        self._names: np.ndarray | None = None

    @property
    def index(self) -> dict[str, int]:
        """Name -> code of every name seen so far (its length is the number of codes)."""
        return self._code

    def remap(self, cols: ChainColumns) -> ChainColumns:
        """`cols` with codes into this scan's names (a plain dict: a month holds ~4k names)."""
        if self._names is not None and cols.names is self._names:
            return cols  # already coded by this scan
        code = self._code
        if 4 * len(cols) < len(cols.names):
            # a few rows of a large dictionary (left-out tiers read for the band): map only
            # the names they use
            used, inverse = np.unique(cols.code, return_inverse=True)
            names = cols.names[used].tolist()
            mapping = np.array([code.get(n, -1) for n in names], dtype=np.int64)
            for i in np.flatnonzero(mapping < 0).tolist():
                mapping[i] = code.setdefault(names[i], len(code))
            self._names = None
            return replace(cols, code=mapping[inverse.reshape(-1)])
        names = cols.names.tolist()
        mapping = np.array([code.get(n, -1) for n in names], dtype=np.int64)
        for i in np.flatnonzero(mapping < 0).tolist():
            mapping[i] = code.setdefault(names[i], len(code))
        self._names = None
        if len(cols) == 0 or np.array_equal(mapping, np.arange(len(mapping))):
            return cols
        return replace(cols, code=mapping[cols.code])

    def names(self) -> np.ndarray:
        if self._names is None:
            self._names = np.asarray(list(self._code), dtype=object)
        return self._names


class FileDataSource(ChainTableSource):
    """MarketDataSource over the local store (Parquet or CSV); also Bulk and Settlement source.

    Config: ``market: {source: parquet, path: data/}`` -> ``FileDataSource("data/")``.
    `max_staleness` (default: one chain bar) is how old a snapshot may be at query time.
    A bulk `chain_frame` reads its whole period in one columnar pass, `block_days` days of
    partitions per pyarrow scan (see docs/data.md for the memory bound); with `max_dte` it also
    keeps the marks of those options until they expire, so the simulator's mark paths and
    labels never read a file again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_staleness: str | pd.Timedelta | None = None,
        block_days: int = 366,
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
        self._settlements: dict[str, dict[int, float]] = {}  # ns -> USD
        self._spot: dict[Path, pd.DataFrame] = {}
        self._mark_periods: dict[str, _MarkPeriod] = {}
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
            self._spot[path] = normalize_ohlc(read_table(path))
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
        underlying = _underlying_of(instrument_name)
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
        with _scan_pool():
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
        codes = _Codes()
        found: list[ChainColumns] = []
        slim: list[ChainColumns] = []
        tail: ChainColumns | None = None
        held = np.zeros(0, dtype=bool)  # codes already in the selection's band
        deferred = None if selection is None else []
        # tiers of at most `floor` days to expiry are left out of the point-in-time pass and
        # read after it, for the band's marks and the few decisions that need them
        floor = _tier_floor(selection)
        low_tail: ChainColumns | None = None  # the previous block's left-out rows near its end
        skipped = False  # whether any block left rows out (the marks then cover the band only)
        for block_lo, block_hi in self._blocks(lo, hi):
            low: list[_LowGroups] | None = None if floor is None else []
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
                    held = _grown(held, len(codes.index))
                    # a few hundred decision times at a time: the point-in-time rows and the
                    # selection's temporaries of ~30k rows stay in cache and their memory is
                    # reused, where one pass held ~0.5M-row temporaries (fresh pages: system
                    # time in a fresh process); the rows and their order are the same
                    mine_ns = t_ns[mine]
                    first = None if selection is None else selection.first_row_wanted(mine_ns)
                    needs: list[np.ndarray] = []
                    for q in range(0, len(mine_ns), _QUERY_CHUNK):
                        at, which, q_ns = table.at_rows(
                            pd.to_datetime(mine_ns[q : q + _QUERY_CHUNK], utc=True),
                            kinds=kinds,
                            max_dte=max_dte,
                        )
                        if selection is not None and first is not None:
                            q_first = first[q : q + _QUERY_CHUNK]
                            keep = store_selection_mask(
                                table.cols, at, which, q_ns, selection, held, q_first
                            )
                            if skipping:
                                # the first row, and an ATM pick the rows read cannot settle,
                                # come from a second pass with the left-out rows
                                need = q_first | atm_needs_lower(
                                    table.cols,
                                    at,
                                    which,
                                    q_ns,
                                    selection.atm_dte,
                                    floor + _DTE_SLACK,
                                )
                                keep &= ~need[which]
                                needs.append(q_ns[need])
                            at, which = at[keep], which[keep]
                        found.append(replace(table.cols.take(at), as_of=q_ns[which]))
                    self.gate_counts.update(table.gate_counts)
                    if needs:
                        need_ns = np.concatenate(needs)
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
        period = _MarkPeriod(kinds=frozenset(kinds), max_dte=max_dte, lo=lo, hi=hi, table=table)
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
        return out if deferred is None else take_deferred(out, deferred)

    def _second_pass(
        self,
        u: str,
        low: list[_LowGroups],
        floor: float,
        rows: ChainColumns,
        low_tail: ChainColumns | None,
        need_ns: np.ndarray,
        held: np.ndarray,
        selection: ChainSelection,
        codes: _Codes,
        deferred: list[DeferredValues] | None,
        *,
        tail_from: int | None,
        kinds: Sequence[str],
        max_dte: float | None,
    ) -> _SecondPass:
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
        """
        tf, stale, _ = self._windows(u)
        bar = timeframe_delta(tf).value
        back = (stale + timeframe_delta(tf)).value
        lower = _TIER_BELOW.get(floor)
        far: list[_LowGroups] = []  # the tiers under the next one down (None: there are none)
        for g in low:
            if lower is not None:
                _, below = _split_low(g.reader, g.plan, lower)
                if below[0] or below[1]:
                    far.append(replace(g, plan=below))
        first = selection.first_row_wanted(need_ns)
        # the far tiers' windows only when a decision needs them for sure (first rows)
        far_whole = bool(far) and bool(first.any())
        win = _windows_of(need_ns, bar, back)
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
        out = _SecondPass(
            marks=[
                replace(m, values={"mark_price": m.values["mark_price"]}) for m in marks if len(m)
            ],
            found=[],
            held=held,
            tail=None,
        )
        self.scan_stats["low_decisions"] += len(need_ns)
        if len(need_ns):
            # only the rows inside the decisions' windows: a query reads nothing else, and
            # an instrument's next row outside them lies after its window either way
            parts = [p.take(np.flatnonzero(_in_windows(p.as_of, win))) for p in (rows, *narrow)]
            merged = concat_columns(parts, codes.names(), u)
            # rows of the far tiers are missing unless read whole-width: a decision whose
            # ATM pick they could change reads them in a third pass (`again`)
            deeper = None if (far_whole or not far or lower is None) else lower + _DTE_SLACK
            again = self._point_in_time(
                merged, need_ns, selection, out, codes, deeper, kinds=kinds, max_dte=max_dte
            )
            self.scan_stats["low_decisions_deeper"] += len(again)
            if len(again):
                got, _ = self._read_low(
                    u, far, held, _windows_of(again, bar, back), None, codes, deferred, hot=False
                )
                # far groups the tail or band marks made whole-width gave some of these rows
                merged = _first_of_each(concat_columns([merged, got], codes.names(), u))
                self._point_in_time(
                    merged, again, selection, out, codes, None, kinds=kinds, max_dte=max_dte
                )
        if tail_from is not None:
            ends = [p.take(np.flatnonzero(p.as_of > tail_from)) for p in narrow]
            tail = concat_columns(ends, codes.names(), u)
            out.tail = tail if len(tail) else None
        return out

    def _point_in_time(
        self,
        cols: ChainColumns,
        times_ns: np.ndarray,
        selection: ChainSelection,
        out: _SecondPass,
        codes: _Codes,
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
        out.held = _grown(out.held, len(codes.index))
        needs: list[np.ndarray] = []
        for q in range(0, len(times_ns), _QUERY_CHUNK):
            at, which, q_ns = table.at_rows(
                pd.to_datetime(times_ns[q : q + _QUERY_CHUNK], utc=True),
                kinds=kinds,
                max_dte=max_dte,
            )
            first = selection.first_row_wanted(q_ns)
            keep = store_selection_mask(table.cols, at, which, q_ns, selection, out.held, first)
            if floor is not None:
                need = first | atm_needs_lower(
                    table.cols, at, which, q_ns, selection.atm_dte, floor
                )
                keep &= ~need[which]
                needs.append(q_ns[need])
            at, which = at[keep], which[keep]
            out.found.append(replace(table.cols.take(at), as_of=q_ns[which]))
        return np.concatenate(needs) if needs else np.empty(0, dtype=np.int64)

    def _read_low(
        self,
        u: str,
        low: list[_LowGroups],
        held: np.ndarray,
        windows: tuple[np.ndarray, np.ndarray] | None,
        tail_from: int | None,
        codes: _Codes,
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
            return keep | _in_windows(as_of, (lo, hi))

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
        hot_names = pa.array(names[np.flatnonzero(held)].tolist(), type=pa.string())
        full: list[ChainColumns] = []
        marks: list[ChainColumns] = []
        for g in low:
            spans = _as_of_spans(g.reader)
            far: set[int] = set()
            if windowless is not None:
                below = _split_low(g.reader, g.plan, windowless)[1]
                far = set(below[0]) | set(below[1])
            split: tuple[list[int], list[int]] = ([], [])  # groups read whole-width
            rest: tuple[list[int], list[int]] = ([], [])  # groups read for band marks only
            for k, part in enumerate(g.plan):
                for i in part:
                    (split if touched(i, spans[i], far) else rest)[k].append(i)
            if split[0] or split[1]:
                full.append(
                    _read_low_groups(
                        replace(g, plan=split),
                        u,
                        deferred,
                        self.scan_stats,
                        codes,
                        hot_names,
                        wanted,
                    )
                )
            if hot and (rest[0] or rest[1]):
                marks.append(
                    _read_low_groups(
                        replace(g, plan=rest),
                        u,
                        deferred,
                        self.scan_stats,
                        codes,
                        hot_names,
                        lambda as_of, is_hot: is_hot,  # band marks only
                        marks_only=True,
                    )
                )
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
        times = _utc_times(times)
        out = np.full((len(instrument_names), len(times)), np.nan)
        if len(times) == 0 or len(instrument_names) == 0:
            return out
        by_underlying: dict[str, list[int]] = {}
        for i, name in enumerate(instrument_names):
            by_underlying.setdefault(_coin_of(name.split("-", 1)[0]), []).append(i)
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
        times = _utc_times(times)
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
                by_underlying.setdefault(_coin_of(name.split("-", 1)[0]), []).append(i)
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
            prices: dict[int, float] = {}
            if found is not None:
                # the two columns used: the text `source` column cost more to convert than
                # the rest of the first labels call's settlement look-ups
                table = read_table(found, columns=("expiry", "price"))
                stamps = pd.DatetimeIndex(pd.to_datetime(table["expiry"], utc=True))
                # a dict, not a Series: one hash look-up per expiry (merge_settlements
                # writes one row per expiry; should a hand-made file repeat one, the first wins)
                for ns, price in zip(
                    stamps.as_unit("ns").asi8.tolist(),
                    table["price"].astype("float64").tolist(),
                    strict=True,
                ):
                    prices.setdefault(ns, price)
            self._settlements[key] = prices
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
        codes: _Codes | None = None,
        deferred: list[DeferredValues] | None = None,
        floor: float | None = None,
        low: list[_LowGroups] | None = None,
    ) -> ChainColumns:
        """Chain rows of `underlying` with as_of in [lo, hi] in one columnar pass.

        With `deferred`, only the `SELECTION_VALUES` become numpy; the other value columns
        stay Arrow, appended to `deferred`, and each row carries its position in them as the
        value `ROW_ID` (see `take_deferred`). With `floor` and `low`, Parquet row groups whose
        statistics say every row has at most `floor` days to expiry are not read: they are
        appended to `low` (see `_LowGroups`).
        """
        with _scan_pool():
            return self._scan_rows(
                underlying, lo, hi, kinds, max_dte, names, codes, deferred, floor, low
            )

    def _scan_rows(
        self,
        underlying: str,
        lo: pd.Timestamp,
        hi: pd.Timestamp,
        kinds: Sequence[str],
        max_dte: float | None,
        names: Sequence[str] | None,
        codes: _Codes | None,
        deferred: list[DeferredValues] | None,
        floor: float | None = None,
        low: list[_LowGroups] | None = None,
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
        if parquet:
            had = None if deferred is None else len(deferred)
            codes = _Codes() if codes is None else codes
            try:
                parts.extend(
                    _read_chain_files(
                        parquet,
                        expr,
                        window,
                        u,
                        deferred,
                        stats=self.scan_stats,
                        codes=codes,
                        floor=floor if low is not None else None,
                        low=low,
                    )
                )
            except (pa.ArrowException, OSError, TypeError, KeyError):
                # name the broken file (or read mismatched schemas one by one)
                parts.clear()
                if deferred is not None:
                    del deferred[had:]
                if low is not None:
                    low.clear()  # every row is read below
                parts.extend(self._read_one(f, u, expr) for f in parquet)
        parts.extend(self._read_one(f, u, expr) for f in files if f.suffix == ".csv")
        self.scan_stats["scans"] += 1
        self.scan_stats["files"] += len(files)
        if codes is None:
            codes = _Codes()
        parts = [codes.remap(p) for p in parts]
        if deferred is not None:
            parts = [_defer_values(p, deferred) for p in parts]
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


def _read_chain_files(
    paths: Sequence[Path],
    expr: ds.Expression,
    window: ScanWindow,
    underlying: str,
    deferred: list[DeferredValues] | None,
    stats: Counter[str],
    codes: _Codes | None = None,
    floor: float | None = None,
    low: list[_LowGroups] | None = None,
) -> list[ChainColumns]:
    """The kept rows of the Parquet chain files `paths` in time order, converted file by file.

    One file's decoded Arrow columns are freed before the next is read and its kept rows are
    copied into arrays sized for every row the planned row groups hold, so a year's scan
    holds about one month of temporaries at a time, not twelve months of Arrow columns plus
    their conversion plus a concatenation (in a fresh process the pages first touched cost
    as much system time as the decode: docs/performance.md). Codes are into `codes` (a new
    `_Codes` if None). With `deferred` and groups read whole or masked, only the selection
    columns are decoded now; the deferred value columns stay in the file (`ParquetDeferred`)
    and are decoded later, for the row groups holding kept rows only. With `floor` (and a
    `low` list), the groups whose `DTE_COLUMN` statistics are at most `floor` are not read:
    they go to `low`, one `_LowGroups` per file. Returns one part (none if no row group is
    read).
    """
    codes = _Codes() if codes is None else codes
    narrow = [c for c in STORE_SCAN_COLUMNS if c not in DEFERRED_VALUES]
    readers = [_chain_reader(path) for path in paths]
    plans = [plan_row_groups(r, window) for r in readers]
    if floor is not None and low is not None:
        for k, reader in enumerate(readers):
            plans[k], left = _split_low(reader, plans[k], floor)
            if left[0] or left[1]:
                low.append(_LowGroups(reader, left, expr, window))
    bound = sum(
        r.metadata.row_group(i).num_rows
        for r, plan in zip(readers, plans, strict=True)
        for i in plan[0] + plan[1]
    )
    sink: _RowSink | None = None
    for reader, plan in zip(readers, plans, strict=True):
        schema = reader.schema_arrow
        lazy = (
            deferred is not None
            and window.exact
            and all(c in schema.names for c in DEFERRED_VALUES)
        )
        read = narrow if lazy else list(STORE_SCAN_COLUMNS)
        present = [c for c in read if c in schema.names]
        ids, pieces, whole = _file_pieces(reader, expr, present, window, stats, plan)
        if not pieces:
            continue
        if lazy and not whole:  # a group the mask could not test: read it as before
            full = [c for c in STORE_SCAN_COLUMNS if c in schema.names]
            ids, pieces, whole = _file_pieces(reader, expr, full, window, stats, plan)
            lazy = False
        # the kept rows in time order, converted once (no filtered or sorted copy)
        table, kept = kept_rows(pieces)
        if deferred is None:
            part = columns_from_arrow(table, underlying, rows=kept)
        elif lazy:
            cols = columns_from_arrow(table, underlying, values=SELECTION_VALUES, rows=kept)
            sizes = np.array([p.num_rows for p, _ in pieces], dtype=np.int64)
            part = _with_row_ids(cols, ParquetDeferred(reader, ids, sizes), deferred, kept)
        else:
            part = _selection_columns(table, underlying, deferred, kept)
        del table, pieces
        part = codes.remap(part)
        if sink is None:
            sink = _RowSink(bound, tuple(part.values))
        sink.add(part)
    return [] if sink is None else [sink.columns(underlying, codes.names())]


class _RowSink:
    """Chain columns written part after part into arrays of `bound` rows (pages never
    written are never touched, so an over-estimate costs address space, not memory)."""

    def __init__(self, bound: int, values: tuple[str, ...]):
        self.n = 0
        self.times = {k: np.empty(bound, dtype=np.int64) for k in ("as_of", "expiry", "quote_time")}
        self.code = np.empty(bound, dtype=np.int64)
        self.is_call = np.empty(bound, dtype=bool)
        self.values = {k: np.empty(bound, dtype=np.float64) for k in values}

    def add(self, cols: ChainColumns) -> None:
        """Append the rows of `cols` (codes already shared, the same value columns)."""
        a, b = self.n, self.n + len(cols)
        for k, out in self.times.items():
            out[a:b] = getattr(cols, k)
        self.code[a:b] = cols.code
        self.is_call[a:b] = cols.is_call
        for k, out in self.values.items():
            out[a:b] = cols.values[k]
        self.n = b

    def columns(self, underlying: str, names: np.ndarray) -> ChainColumns:
        """The rows appended so far."""
        n = self.n
        return ChainColumns(
            underlying=underlying,
            as_of=self.times["as_of"][:n],
            expiry=self.times["expiry"][:n],
            quote_time=self.times["quote_time"][:n],
            code=self.code[:n],
            names=names,
            is_call=self.is_call[:n],
            values={k: v[:n] for k, v in self.values.items()},
        )


def _tier_floor(selection: ChainSelection | None) -> float | None:
    """Days to expiry at or below which a selective scan may leave row groups out, or None.

    The highest tier bound (`DTE_TIERS`) under the band's lowest days to expiry: every band
    row then lies above it, so leaving those tiers out never hides a later row of a band call.
    None when nothing can be left out: no selection, `follow` (an open call's later rows run
    down to expiry), no tier bound under the band, or an ATM target inside the low tiers.
    """
    if selection is None or selection.follow:
        return None
    below = [t for t in DTE_TIERS if t < selection.min_dte - _DTE_SLACK]
    if not below or selection.atm_dte <= below[-1]:
        return None
    return below[-1]


def _grown(held: np.ndarray, n: int) -> np.ndarray:
    """`held` (bool per code) extended with False to `n` codes."""
    if len(held) >= n:
        return held
    return np.r_[held, np.zeros(n - len(held), dtype=bool)]


# the next tier bound down from each bound (the second pass reads one tier at a time)
_TIER_BELOW: dict[float, float] = dict(zip(DTE_TIERS[1:], DTE_TIERS[:-1], strict=True))


def _windows_of(times_ns: np.ndarray, bar: int, back: int) -> tuple[np.ndarray, np.ndarray]:
    """The point-in-time windows (b - back, b] of query times (b: the bar close at or
    before each), sorted and merged where they overlap."""
    ref = np.unique(times_ns - np.mod(times_ns, bar))
    lo, hi = ref - back, ref
    if len(lo) == 0:
        return lo, hi
    starts = np.flatnonzero(np.r_[True, lo[1:] >= hi[:-1]])
    ends = np.r_[starts[1:] - 1, len(lo) - 1]
    return lo[starts], hi[ends]


def _in_windows(t_ns: np.ndarray, windows: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Whether each time lies in one of the merged windows (lo, hi] (`_windows_of`)."""
    lo, hi = windows
    if len(hi) == 0:
        return np.zeros(len(t_ns), dtype=bool)
    i = np.minimum(np.searchsorted(hi, t_ns, side="left"), len(hi) - 1)
    return (lo[i] < t_ns) & (t_ns <= hi[i])


def _first_of_each(cols: ChainColumns) -> ChainColumns:
    """`cols` without repeats of an (instrument, as_of) row (the first copy stays)."""
    if len(cols) < 2:
        return cols
    order = np.lexsort((cols.as_of, cols.code))
    same = (np.diff(cols.code[order]) == 0) & (np.diff(cols.as_of[order]) == 0)
    if not same.any():
        return cols
    drop = np.zeros(len(cols), dtype=bool)
    drop[order[1:][same]] = True
    return cols.take(np.flatnonzero(~drop))


@dataclass
class _SecondPass:
    """What `FileDataSource._second_pass` gives back for one block."""

    marks: list[ChainColumns]  # left-out rows for the mark table (`mark_price` only)
    found: list[ChainColumns]  # selected chains of the decisions that needed them
    held: np.ndarray  # band codes (grown to the codes seen)
    tail: ChainColumns | None  # left-out rows the next block's first windows read


@dataclass
class _LowGroups:
    """Row groups of one chain file a selective scan left out (low days-to-expiry tiers):
    `plan` as `plan_row_groups` gives it, read later with the same filter and window."""

    reader: pq.ParquetFile
    plan: tuple[list[int], list[int]]
    expr: ds.Expression
    window: ScanWindow


def _as_of_spans(reader: pq.ParquetFile) -> list[tuple[int, int] | None]:
    """Per row group of a chain file: (min, max) `as_of` in ns from its statistics, or None."""
    meta = reader.metadata
    if meta.num_row_groups == 0:
        return []
    first = meta.row_group(0)
    where = {first.column(j).path_in_schema: j for j in range(first.num_columns)}
    as_of_type = reader.schema_arrow.field("as_of").type if "as_of" in where else None
    unit = _UNIT_NS.get(getattr(as_of_type, "unit", ""), 0)
    out: list[tuple[int, int] | None] = []
    for i in range(meta.num_row_groups):
        stats = _min_max(meta.row_group(i), where.get("as_of"))
        out.append(None if stats is None or not unit else (stats[0] * unit, stats[1] * unit))
    return out


def _split_low(
    reader: pq.ParquetFile, plan: tuple[list[int], list[int]], floor: float
) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """`plan` split into the groups to read now and those whose `DTE_COLUMN` statistics say
    every row has at most `floor` days to expiry (no statistics: read now)."""
    meta = reader.metadata
    if meta.num_row_groups == 0:
        return plan, ([], [])
    first = meta.row_group(0)
    where = {first.column(j).path_in_schema: j for j in range(first.num_columns)}
    j = where.get(DTE_COLUMN)
    if j is None:
        return plan, ([], [])

    def is_low(i: int) -> bool:
        stats = _min_max(meta.row_group(i), j)
        return stats is not None and stats[1] <= floor

    now = tuple([i for i in part if not is_low(i)] for part in plan)
    later = tuple([i for i in part if is_low(i)] for part in plan)
    return (now[0], now[1]), (later[0], later[1])


def _read_low_groups(
    low: _LowGroups,
    underlying: str,
    deferred: list[DeferredValues] | None,
    stats: Counter[str],
    codes: _Codes,
    hot_names: pa.Array,
    wanted: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    marks_only: bool = False,
) -> ChainColumns:
    """The rows of left-out groups that `wanted(as_of, is_hot)` keeps (`is_hot`: the row's
    name is in `hot_names`), converted as `_read_chain_files` converts (codes into `codes`);
    with `marks_only`, only the columns of a mark row are read and converted."""
    reader = low.reader
    schema = reader.schema_arrow
    lazy = (
        deferred is not None
        and low.window.exact
        and all(c in schema.names for c in DEFERRED_VALUES)
    )
    narrow = [c for c in STORE_SCAN_COLUMNS if c not in DEFERRED_VALUES]
    every = [c for c in STORE_SCAN_COLUMNS if c in schema.names]
    read = [c for c in narrow if c in schema.names] if lazy else every
    if marks_only:
        read = [c for c in every if c in _MARK_READ]
        lazy = False
    local: Counter[str] = Counter()
    ids, pieces, whole = _file_pieces(reader, low.expr, read, low.window, local, low.plan)
    if pieces and lazy and not whole:  # a group the mask could not test: read it whole-width
        ids, pieces, whole = _file_pieces(reader, low.expr, every, low.window, local, low.plan)
        lazy = False
    stats["low_row_groups_read"] += local["row_groups_read"]
    stats["low_rows_decoded"] += local["rows_decoded"]
    if not pieces:
        return empty_columns(underlying)
    # the rows the window keeps, in file order; only the few this pass wants are sorted
    # by as_of (the order `kept_rows` gives), and not at all for the mark table
    table = pa.concat_tables([piece for piece, _ in pieces])
    starts = np.cumsum([0] + [piece.num_rows for piece, _ in pieces])
    kept = np.concatenate(
        [
            np.arange(a, b) if keep is None else a + np.flatnonzero(keep)
            for (_, keep), a, b in zip(pieces, starts[:-1], starts[1:], strict=True)
        ]
    )
    names = table.column("instrument_name")
    if pa.types.is_dictionary(names.type):
        encoded = names.unify_dictionaries().combine_chunks()
        hot_entry = pc.is_in(encoded.dictionary, value_set=hot_names).to_numpy(zero_copy_only=False)
        is_hot = hot_entry[encoded.indices.to_numpy()[kept]]
    else:
        taken = names.combine_chunks().take(pa.array(kept))
        is_hot = pc.is_in(taken, value_set=hot_names).to_numpy(zero_copy_only=False)
    as_of = as_of_ns(table)
    rows = kept[wanted(as_of[kept], np.asarray(is_hot, dtype=bool))]
    stats["low_rows_kept"] += len(rows)
    if len(rows) == 0:
        return empty_columns(underlying)
    if not marks_only:
        rows = rows[np.argsort(as_of[rows], kind="stable")]
    # a few % of the decoded rows: Arrow gathers them first, so only they are converted
    small = table.take(pa.array(rows)) if len(rows) * 4 < table.num_rows else None
    if marks_only:
        part = _convert(table, small, rows, underlying, ("mark_price",))
    elif deferred is None:
        part = _convert(table, small, rows, underlying, VALUE_COLUMNS)
    elif lazy:
        cols = _convert(table, small, rows, underlying, SELECTION_VALUES)
        sizes = np.array([p.num_rows for p, _ in pieces], dtype=np.int64)
        part = _with_row_ids(cols, ParquetDeferred(reader, ids, sizes), deferred, rows)
    else:
        part = _selection_columns(table, underlying, deferred, rows)
    return codes.remap(part)


def _convert(
    table: pa.Table,
    small: pa.Table | None,
    rows: np.ndarray,
    underlying: str,
    values: Sequence[str],
) -> ChainColumns:
    """Rows `rows` of `table` as chain columns, from `small` (those rows, gathered) if given."""
    if small is not None:
        return columns_from_arrow(small, underlying, values=values)
    return columns_from_arrow(table, underlying, values=values, rows=rows)


@dataclass
class ParquetDeferred:
    """Deferred value columns left undecoded in a chain file: positions count the rows of
    its row groups `groups` (of `sizes` rows each) in that order, as the first pass read them."""

    reader: pq.ParquetFile
    groups: list[int]
    sizes: np.ndarray

    @property
    def num_rows(self) -> int:
        """Rows the first pass decoded from this file."""
        return int(self.sizes.sum())

    def values(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """`DEFERRED_VALUES` (float64) at `positions`, decoding only the groups holding them."""
        starts = np.r_[0, np.cumsum(self.sizes)]
        group = np.searchsorted(starts, positions, side="right") - 1
        need = np.unique(group)
        table = self.reader.read_row_groups(
            [self.groups[g] for g in need], columns=list(DEFERRED_VALUES), use_threads=False
        )
        base = np.zeros(len(self.groups), dtype=np.int64)
        base[need] = np.r_[0, np.cumsum(self.sizes[need])[:-1]]
        at = base[group] + positions - starts[group]
        return {c: float_values(table.column(c))[at] for c in DEFERRED_VALUES}


# Where a selective scan's deferred value columns wait: Arrow tables in memory, or the file.
DeferredValues = pa.Table | ParquetDeferred


def _selection_columns(
    table: pa.Table, underlying: str, deferred: list[DeferredValues], rows: np.ndarray | None = None
) -> ChainColumns:
    """Rows `rows` of `table` (default all) as chain columns holding only `SELECTION_VALUES`
    (+ `ROW_ID`); the rest deferred.

    Converting 16 float columns of ~500k rows to numpy was a third of a year's load, while a
    selective replay keeps ~2% of the rows: the other columns are converted for those only.
    """
    rest = table.select(list(DEFERRED_VALUES))  # KeyError when a file lacks one: read per file
    cols = columns_from_arrow(table, underlying, values=SELECTION_VALUES, rows=rows)
    return _with_row_ids(cols, rest, deferred, rows)


def _defer_values(cols: ChainColumns, deferred: list[DeferredValues]) -> ChainColumns:
    """Move the `DEFERRED_VALUES` of already-converted `cols` into `deferred` (no-op if done)."""
    if ROW_ID in cols.values:
        return cols
    rest = pa.table({c: cols.values[c] for c in DEFERRED_VALUES})
    return _with_row_ids(cols, rest, deferred)


def _with_row_ids(
    cols: ChainColumns,
    rest: DeferredValues,
    deferred: list[DeferredValues],
    rows: np.ndarray | None = None,
) -> ChainColumns:
    """`cols` carrying, as `ROW_ID`, the position in `deferred` of each row's `rest` values
    (`rows`: its position in `rest`; default row i of `cols` is row i of `rest`)."""
    start = sum(t.num_rows for t in deferred)
    deferred.append(rest)
    values = {c: cols.values[c] for c in SELECTION_VALUES}
    # row positions below 2**53 are exact in float64, the type every value column has
    ids = np.arange(len(cols)) if rows is None else rows
    values[ROW_ID] = (start + ids).astype(np.float64)
    return replace(cols, values=values)


def take_deferred(cols: ChainColumns, deferred: list[DeferredValues]) -> ChainColumns:
    """`cols` with the deferred value columns filled in for its rows (by `ROW_ID`)."""
    if ROW_ID not in cols.values:
        return cols  # no rows: the empty columns already hold every value column
    values = {c: v for c, v in cols.values.items() if c != ROW_ID}
    ids = cols.values[ROW_ID].astype(np.int64)
    starts = np.cumsum([0] + [d.num_rows for d in deferred])
    which = np.searchsorted(starts, ids, side="right") - 1
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(deferred) + 1))
    out = {name: np.empty(len(ids), dtype=np.float64) for name in DEFERRED_VALUES}
    for k, source in enumerate(deferred):
        a, b = bounds[k], bounds[k + 1]
        if a == b:
            continue
        at = order[a:b]
        got = (
            source.values(ids[at] - starts[k])
            if isinstance(source, ParquetDeferred)
            else _table_values(source, ids[at] - starts[k])
        )
        for name in DEFERRED_VALUES:
            out[name][at] = got[name]
    values.update(out)
    return replace(cols, values={c: values[c] for c in VALUE_COLUMNS})


def _table_values(table: pa.Table, positions: np.ndarray) -> dict[str, np.ndarray]:
    """`DEFERRED_VALUES` of an in-memory table at `positions` (float64)."""
    # Arrow's take on a chunked column first concatenates every chunk (a copy of all ~500k
    # scanned rows per column); instead each chunk is viewed as numpy and indexed by the
    # positions that fall in it, so only the kept rows are ever copied
    chunks = table.to_batches()
    starts = np.cumsum([0] + [len(c) for c in chunks])
    which = np.searchsorted(starts, positions, side="right") - 1
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(chunks) + 1))
    out = {}
    for name in DEFERRED_VALUES:
        column = np.empty(len(positions), dtype=np.float64)
        for k, chunk in enumerate(chunks):
            a, b = bounds[k], bounds[k + 1]
            if a == b:
                continue
            at = order[a:b]
            column[at] = _float_view(chunk.column(name))[positions[at] - starts[k]]
        out[name] = column
    return out


def _float_view(column: pa.Array) -> np.ndarray:
    """A float64 numpy view of an Arrow column (nulls become NaN, which copies that chunk)."""
    if not pa.types.is_float64(column.type):
        column = column.cast(pa.float64())
    return column.to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class ScanWindow:
    """What a scan keeps, for row-group pruning: as_of in [lo, hi] (ns), `kinds`, days to
    expiry <= `max_dte`; `exact` when the scan filter has no other condition."""

    lo: int
    hi: int
    kinds: frozenset[str] = frozenset(("call", "put"))
    max_dte: float | None = None
    exact: bool = True


_UNIT_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def plan_row_groups(reader: pq.ParquetFile, window: ScanWindow) -> tuple[list[int], list[int]]:
    """Row groups of a chain file to read whole and to read then filter; the rest is skipped.

    Decided from row-group statistics (as_of, kind and, in the tiered layout, `DTE_COLUMN`);
    a group without usable statistics is read and filtered, so pruning never drops a row.
    """
    meta = reader.metadata
    whole: list[int] = []
    partial: list[int] = []
    if meta.num_row_groups == 0:
        return whole, partial
    first = meta.row_group(0)
    where = {first.column(j).path_in_schema: j for j in range(first.num_columns)}
    as_of_type = reader.schema_arrow.field("as_of").type if "as_of" in where else None
    unit = _UNIT_NS.get(getattr(as_of_type, "unit", ""), 0)
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        if rg.num_rows == 0:
            continue
        inside = window.exact
        stats = _min_max(rg, where.get("as_of"))
        if stats is not None and unit:
            # raw timestamp statistics are integers in the column's unit
            lo_t, hi_t = stats[0] * unit, stats[1] * unit
            if hi_t < window.lo or lo_t > window.hi:
                continue
            inside &= window.lo <= lo_t and hi_t <= window.hi
        else:
            inside = False
        if window.max_dte is not None:
            stats = _min_max(rg, where.get(DTE_COLUMN))
            if stats is not None and stats[0] > window.max_dte + _DTE_SLACK:
                continue
            inside &= stats is not None and stats[1] < window.max_dte - _DTE_SLACK
        if window.kinds != {"call", "put"}:
            stats = _min_max(rg, where.get("kind"))
            if stats is not None and stats[0] == stats[1] and stats[0] not in window.kinds:
                continue
            inside &= stats is not None and stats[0] == stats[1] and stats[0] in window.kinds
        (whole if inside else partial).append(i)
    return whole, partial


def _min_max(rg: pq.RowGroupMetaData, j: int | None) -> tuple[Any, Any] | None:
    """(min, max) of column `j` of a row group (raw integers for timestamps); None if unknown."""
    if j is None:
        return None
    stats = rg.column(j).statistics
    if stats is None or not stats.has_min_max or stats.null_count:
        return None
    if stats.physical_type in ("INT64", "INT32"):
        return stats.min_raw, stats.max_raw
    lo, hi = stats.min, stats.max
    if isinstance(lo, bytes):
        lo, hi = lo.decode(), hi.decode()
    if isinstance(lo, float) and (lo != lo or hi != hi):
        return None  # NaN bounds prove nothing
    return lo, hi


def read_parquet_files(
    paths: Sequence[Path],
    expr: ds.Expression,
    columns: Sequence[str],
    window: ScanWindow | None = None,
    stats: Counter[str] | None = None,
) -> pa.Table:
    """Rows of the Parquet files `paths` matching `expr`, `columns` projected, in file order.

    The decoded row groups of `read_parquet_pieces`, filtered by their keep masks.
    """
    pieces = read_parquet_pieces(paths, expr, columns, window, stats)
    if not pieces:
        names = set(pq.read_schema(paths[0]).names) if paths else set()
        present = [c for c in columns if c in names]
        return pq.read_schema(paths[0]).empty_table().select(present) if paths else pa.table({})
    return pa.concat_tables(
        [piece if keep is None else piece.filter(pa.array(keep)) for piece, keep in pieces]
    )


def read_parquet_pieces(
    paths: Sequence[Path],
    expr: ds.Expression,
    columns: Sequence[str],
    window: ScanWindow | None = None,
    stats: Counter[str] | None = None,
) -> list[tuple[pa.Table, np.ndarray | None]]:
    """Decoded row groups of the Parquet files `paths` (`columns` projected), in file order,
    each with the rows of it matching `expr` as a boolean mask (None: every row matches).

    One `ParquetFile` read per file (pre-buffered, whole row groups), not a
    `pyarrow.dataset` scan: the scan's start-up (thread pool, fragment discovery, per-batch
    filter) cost more than the reads themselves on a year of month files (docs/performance.md).
    With `window` (the same conditions as `expr`), row groups outside it are never decoded and
    groups wholly inside it need no test (`plan_row_groups`). The others are tested with a
    numpy mask when the window is exact, else filtered by `expr` (their mask is then None).
    Returning masks instead of filtered copies lets the caller convert only the kept rows,
    in its own order, with one copy per column (`columns_from_arrow(rows=...)`). `stats`
    counts row groups read and skipped and rows decoded. The first file's schema decides
    which of `columns` are read; a later file lacking one, or with other types, raises (the
    caller then reads file by file and names the bad file).
    """
    stats = Counter() if stats is None else stats
    pieces: list[tuple[pa.Table, np.ndarray | None]] = []
    present: list[str] | None = None
    for path in paths:
        reader = _chain_reader(path)
        if present is None:
            names = set(reader.schema_arrow.names)
            present = [c for c in columns if c in names]
        pieces.extend(_file_pieces(reader, expr, present, window, stats)[1])
    return pieces


def _chain_reader(path: Path) -> pq.ParquetFile:
    """A chain partition opened for reading (pre-buffered row groups)."""
    # names and kinds stay dictionary-encoded: one hash of the few unique names, not of every row
    return pq.ParquetFile(path, pre_buffer=True, read_dictionary=["instrument_name", "kind"])


def _file_pieces(
    reader: pq.ParquetFile,
    expr: ds.Expression,
    columns: Sequence[str],
    window: ScanWindow | None,
    stats: Counter[str],
    plan: tuple[list[int], list[int]] | None = None,
) -> tuple[list[int], list[tuple[pa.Table, np.ndarray | None]], bool]:
    """The row groups of one file a scan decodes, the pieces of `read_parquet_pieces`, and
    whether the pieces are the whole groups (no piece filtered by `expr`). `plan`: the
    file's `plan_row_groups` when already made."""
    groups = reader.metadata.num_row_groups
    if plan is not None:
        whole, partial = plan
    elif window is None:
        whole, partial = [], list(range(groups))
    else:
        whole, partial = plan_row_groups(reader, window)
    stats["row_groups"] += groups
    stats["row_groups_read"] += len(whole) + len(partial)
    ids = sorted(whole + partial)  # file order: (tier, kind) groups, time-sorted inside
    if not ids:
        return ids, [], True
    if len(ids) == groups:
        table = reader.read(columns=list(columns), use_threads=False)
    else:
        table = reader.read_row_groups(ids, columns=list(columns), use_threads=False)
    stats["rows_decoded"] += table.num_rows
    # in file order: whole groups as zero-copy slices, only partial ones tested
    meta, at, cut = reader.metadata, 0, set(partial)
    pieces: list[tuple[pa.Table, np.ndarray | None]] = []
    whole_groups = True
    for i in ids:
        n = meta.row_group(i).num_rows
        piece = table.slice(at, n)
        at += n
        if i not in cut:
            pieces.append((piece, None))
            continue
        keep = _row_mask(piece, window)
        if keep is None:
            whole_groups = False
            pieces.append((piece.filter(expr), None))
        else:
            pieces.append((piece, keep))
    return ids, pieces, whole_groups


def kept_rows(pieces: Sequence[tuple[pa.Table, np.ndarray | None]]) -> tuple[pa.Table, np.ndarray]:
    """The pieces as one table (no copy) and the positions of their kept rows, by as_of.

    Positions are in file order among equal `as_of` (a stable sort), which is the order the
    filtered rows had before (`columns_from_arrow(table, rows=...)` converts them).
    """
    table = pa.concat_tables([piece for piece, _ in pieces])
    ids = []
    at = 0
    for piece, keep in pieces:
        n = piece.num_rows
        ids.append(np.arange(at, at + n) if keep is None else at + np.flatnonzero(keep))
        at += n
    rows = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
    if len(rows) > 1:
        as_of = as_of_ns(table)[rows]
        if (as_of[1:] < as_of[:-1]).any():
            rows = rows[np.argsort(as_of, kind="stable")]
    return table, rows


@contextlib.contextmanager
def _scan_pool() -> Iterator[None]:
    """Arrow allocations inside go to the system allocator (restored after).

    pyarrow's default mimalloc pool spends ~0.5 s of system time committing its first
    arenas in a fresh process: half the CPU of loading a year of 4-hour chains (measured in
    docs/performance.md); glibc malloc reads the same tables without it. Buffers remember
    their pool, so anything allocated here is freed correctly whatever the default is later.
    """
    previous = pa.default_memory_pool()
    if previous.backend_name != "mimalloc":
        yield
        return
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _row_mask(table: pa.Table, window: ScanWindow | None) -> np.ndarray | None:
    """Which rows of `table` pass an exact window's test, as a numpy mask; None when the mask
    cannot answer (no window or not exact: name lists; other time units, nulls), and the scan
    filter expression must decide. The mask skips Acero's per-call plan (a tenth of a year's load).
    """
    if window is None or not window.exact:
        return None
    ts = pa.timestamp("ns", tz="UTC")
    cols = [table.column(c) for c in ("as_of", "expiry")]
    if any(c.type != ts or c.null_count for c in cols):
        return None
    as_of, expiry = (c.cast(pa.int64()).to_numpy() for c in cols)
    keep = (as_of >= window.lo) & (as_of <= window.hi)
    if window.max_dte is not None:
        keep &= (expiry - as_of) <= int(window.max_dte * 86_400e9)
    if window.kinds != {"call", "put"}:
        kind = pc.is_in(table.column("kind"), value_set=pa.array(sorted(window.kinds)))
        keep &= kind.to_numpy(zero_copy_only=False).astype(bool)
    return keep


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions lo[q] .. hi[q] - 1 for every q, one after the other, and the q of each."""
    lengths = hi - lo
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    which = np.repeat(np.arange(len(lo)), lengths)
    starts = np.repeat(lo - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return starts + np.arange(total), which


def _sorted_by(keys: Sequence[np.ndarray]) -> bool:
    """Whether rows are sorted by `keys` (most significant first), ties allowed."""
    if len(keys[0]) < 2:
        return True
    undecided = np.ones(len(keys[0]) - 1, dtype=bool)
    for key in keys:
        a, b = key[:-1], key[1:]
        if (undecided & (b < a)).any():
            return False
        undecided &= b == a
    return True


def _utc_times(times: pd.DatetimeIndex | Sequence[TimestampLike]) -> pd.DatetimeIndex:
    """`times` as a UTC ns DatetimeIndex, without copies when it already is one."""
    if isinstance(times, pd.DatetimeIndex) and str(times.tz) == "UTC" and times.unit == "ns":
        return times
    return utc_index(pd.DatetimeIndex(times))


@functools.cache
def _coin_of(prefix: str) -> str:
    """The store folder of an option name's underlying part (`SOL_USDC` -> `SOL`)."""
    return coin_of_instrument_underlying(prefix)[0]


def _underlying_of(instrument_name: str) -> str:
    try:
        return _coin_of(parse_instrument_name(instrument_name).underlying)
    except ValueError as exc:
        raise DataError(f"unknown instrument name {instrument_name!r}: {exc}") from exc


def concat_chain(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate store chain frames (empty input gives an empty store frame)."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return normalize_store_chain(
            empty_chain_frame().assign(quote_time=pd.Series(dtype="datetime64[ns, UTC]"))
        )
    return pd.concat(frames, ignore_index=True)
