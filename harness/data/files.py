"""The local market-data store (Parquet or CSV) and `FileDataSource`, which serves it.

Layout (see docs/data.md), one directory per underlying under the store root:

    <root>/<UNDERLYING>/meta.json                          chain timeframe and provenance
    <root>/<UNDERLYING>/spot/<timeframe>.parquet           spot bars, labeled by close time
    <root>/<UNDERLYING>/chain/date=YYYY-MM-DD/part.parquet chain bars (CHAIN_COLUMNS + quote_time)
    <root>/<UNDERLYING>/settlement.parquet                 official delivery prices by expiry

Every file may be a `.csv` with the same columns instead of `.parquet`. A chain partition holds
the last snapshot of each instrument in each bar, stamped `as_of` = bar close; `quote_time` is
the exchange time of that snapshot. All writes go to a temporary file that is then renamed, so
an interrupted import never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.data.source import (
    CHAIN_COLUMNS,
    OHLC_COLUMNS,
    empty_chain_frame,
    empty_ohlc,
    frame_to_snapshots,
    inclusive_range,
    normalize_chain_frame,
)
from harness.timestamps import TimestampLike, to_utc, utc_index
from harness.types import TIMEFRAMES, OptionSnapshot, Timeframe, timeframe_delta

STORE_CHAIN_COLUMNS: tuple[str, ...] = (*CHAIN_COLUMNS, "quote_time")
SETTLEMENT_COLUMNS: tuple[str, ...] = ("expiry", "price", "source")
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


def write_table_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` (no index) to `path` as Parquet or CSV by extension, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            pq.write_table(table, tmp, compression="zstd")
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write `data` as pretty JSON to `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_table(path: Path) -> pd.DataFrame:
    """Read a Parquet or CSV store file into a frame (raises DataError naming the file)."""
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        return pq.read_table(path).to_pandas()
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


def merge_chain(root: str | os.PathLike[str], underlying: str, frame: pd.DataFrame) -> int:
    """Merge chain bars into their date partitions; the latest quote per bar and instrument wins.

    Returns the number of rows written (new and kept).
    """
    if frame.empty:
        return 0
    frame = normalize_store_chain(frame)
    days = frame["as_of"].dt.floor("D")
    written = 0
    for day, part in frame.groupby(days, sort=True):
        path = chain_partition_path(root, underlying, pd.Timestamp(day))
        found = _existing(path)
        if found is not None:
            part = pd.concat([normalize_store_chain(read_table(found)), part], ignore_index=True)
        # Stable sort: among equal quote times the later-added (new) row wins.
        part = part.sort_values(["as_of", "instrument_name", "quote_time"], kind="stable")
        part = part.drop_duplicates(["as_of", "instrument_name"], keep="last")
        write_table_atomic(part.reset_index(drop=True), found or path)
        written += len(part)
    return written


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


def _ns(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    idx = pd.DatetimeIndex(values)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    return idx.tz_convert("UTC").as_unit("ns").asi8


class ChainTable:
    """Resampled chain bars of one underlying, queried point-in-time.

    A query at time t reads the bar closing at b = t floored to the bar grid (b <= t, so
    nothing after t is ever used). Each instrument is quoted by its latest snapshot in a bar
    closing at or before b, if that snapshot is younger than `max_staleness` at b (b -
    quote_time < max_staleness; default one bar, i.e. quoted within the bar b itself) and the
    option has not expired (expiry > t). Otherwise it is left out; instruments left out for
    staleness are counted in `gate_counts["stale"]`.
    """

    def __init__(
        self, frame: pd.DataFrame, timeframe: Timeframe, max_staleness: pd.Timedelta | None = None
    ):
        self.timeframe = timeframe
        self.bar = timeframe_delta(timeframe)
        self.max_staleness = self.bar if max_staleness is None else pd.Timedelta(max_staleness)
        frame = (
            normalize_store_chain(frame)
            if len(frame)
            else normalize_store_chain(
                empty_chain_frame().assign(quote_time=pd.Series(dtype="datetime64[ns, UTC]"))
            )
        )
        frame = frame.sort_values(["as_of", "instrument_name"], kind="stable").reset_index(
            drop=True
        )
        self.frame = frame
        self._bar_ns = _ns(frame["as_of"])
        self._quote_ns = _ns(frame["quote_time"])
        self._expiry_ns = _ns(frame["expiry"])
        self._kind = frame["kind"].to_numpy(dtype=object)
        codes, uniques = pd.factorize(frame["instrument_name"])
        self._codes = codes
        self._names = pd.Index(uniques)
        self.gate_counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.frame)

    def _bar_floor(self, t_ns: np.ndarray) -> np.ndarray:
        """The latest bar close at or before each time (bars aligned to the Unix epoch)."""
        return t_ns - np.mod(t_ns, self.bar.value)

    def _window_rows(self, times_ns: np.ndarray, lookback_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices (and the query index of each) of bars in (t - lookback, t] per query t."""
        lo = np.searchsorted(self._bar_ns, times_ns - lookback_ns, side="right")
        hi = np.searchsorted(self._bar_ns, times_ns, side="right")
        lengths = hi - lo
        total = int(lengths.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        which = np.repeat(np.arange(len(times_ns)), lengths)
        starts = np.repeat(lo - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        rows = starts + np.arange(total)
        return rows, which

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
        if len(self.frame) == 0 or len(idx) == 0:
            return empty_chain_frame()
        t_ns = idx.as_unit("ns").asi8
        ref_ns = self._bar_floor(t_ns)
        stale_ns = self.max_staleness.value
        # Look one bar further back than the freshness window so instruments that just went
        # stale are seen and counted instead of silently vanishing.
        rows, which = self._window_rows(ref_ns, stale_ns + self.bar.value)
        if rows.size == 0:
            return empty_chain_frame()
        alive = self._expiry_ns[rows] > t_ns[which]
        if max_dte is not None:
            alive &= self._expiry_ns[rows] - t_ns[which] <= max_dte * 86_400e9
        if set(kinds) != {"call", "put"}:
            alive &= np.isin(self._kind[rows], list(kinds))
        rows, which = rows[alive], which[alive]
        # Rows come sorted by bar within each query, so the last per (query, instrument) is
        # that instrument's latest bar <= t.
        key = pd.DataFrame({"q": which, "c": self._codes[rows]})
        latest = ~key.duplicated(keep="last").to_numpy()
        rows, which = rows[latest], which[latest]
        fresh = (ref_ns[which] - self._quote_ns[rows]) < stale_ns
        self.gate_counts["stale"] += int((~fresh).sum())
        rows, which = rows[fresh], which[fresh]
        out = self.frame.iloc[rows].loc[:, list(CHAIN_COLUMNS)].reset_index(drop=True)
        out["as_of"] = idx[which].as_unit("ns")
        return normalize_chain_frame(out)

    def marks(self, names: Sequence[str], times: pd.DatetimeIndex) -> np.ndarray:
        """Mark prices (USD) of `names` at `times`, shape (names, times); NaN if not fresh or listed."""
        idx = utc_index(pd.DatetimeIndex(times))
        t_ns = idx.as_unit("ns").asi8
        out = np.full((len(names), len(t_ns)), np.nan)
        if len(self.frame) == 0:
            return out
        mark = self.frame["mark_price"].to_numpy(dtype=np.float64)
        stale_ns = self.max_staleness.value
        ref_ns = self._bar_floor(t_ns)
        for i, name in enumerate(names):
            code = self._names.get_indexer([name])[0]
            if code < 0:
                continue
            rows = np.flatnonzero(self._codes == code)  # ascending bar order
            pos = np.searchsorted(self._bar_ns[rows], ref_ns, side="right") - 1
            ok = pos >= 0
            sel = rows[np.where(ok, pos, 0)]
            ok &= (ref_ns - self._quote_ns[sel]) < stale_ns
            ok &= self._expiry_ns[sel] > t_ns
            out[i] = np.where(ok, mark[sel], np.nan)
        return out

    def ohlc(
        self, name: str, start: pd.Timestamp, end: pd.Timestamp, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Bars of one option from its bar-close marks (USD): open = high = low = close = mark.

        Snapshot data carries no intrabar path or traded volume, so high/low are the close and
        volume is NaN; a coarser `timeframe` takes the last mark of each bin.
        """
        rows = self.frame[self.frame["instrument_name"] == name]
        rows = rows[(rows["as_of"] >= start - timeframe_delta(timeframe)) & (rows["as_of"] <= end)]
        if rows.empty:
            return empty_ohlc()
        close = pd.Series(rows["mark_price"].to_numpy(), index=utc_index(rows["as_of"]))
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
        times = utc_index(pd.DatetimeIndex(times))
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


class FileDataSource(ChainTableSource):
    """MarketDataSource over the local store (Parquet or CSV); also Bulk and Settlement source.

    Config: ``market: {source: parquet, path: data/}`` -> ``FileDataSource("data/")``.
    `max_staleness` (default: one chain bar) is how old a snapshot may be at query time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_staleness: str | pd.Timedelta | None = None,
        cache_partitions: int = 64,
    ):
        self.root = Path(path)
        if not self.root.is_dir():
            raise DataError(
                "market data store not found (run `harness data ...` first)", source=self.root
            )
        self._max_staleness = None if max_staleness is None else pd.Timedelta(max_staleness)
        self._cache_limit = cache_partitions
        self._partitions: dict[Path, pd.DataFrame] = {}
        self._settlements: dict[str, pd.Series] = {}
        self.gate_counts: Counter[str] = Counter()

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

    def get_spot_ohlc(
        self, underlying: str, start: TimestampLike, end: TimestampLike, timeframe: Timeframe
    ) -> pd.DataFrame:
        """Stored spot bars in [start, end]; built from a finer stored timeframe if needed."""
        s, e = inclusive_range(start, end)
        want = timeframe_delta(timeframe)
        found = _existing(spot_path(self.root, underlying, timeframe))
        if found is not None:
            frame = normalize_ohlc(read_table(found))
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
            fine = normalize_ohlc(read_table(_existing(spot_path(self.root, underlying, src))))  # type: ignore[arg-type]
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
        table = self._chain_table(underlying, s - timeframe_delta(timeframe), e)
        return table.ohlc(instrument_name, s, e, timeframe)

    # ---- BulkChainSource

    # ---- SettlementSource

    def settlement_price(self, underlying: str, expiry: pd.Timestamp) -> float | None:
        """The stored delivery price of `underlying` at `expiry` (USD), or None."""
        key = underlying.upper()
        if key not in self._settlements:
            found = _existing(settlement_path(self.root, key))
            series = pd.Series(dtype="float64")
            if found is not None:
                table = read_table(found)
                series = pd.Series(
                    table["price"].astype("float64").to_numpy(),
                    index=pd.DatetimeIndex(pd.to_datetime(table["expiry"], utc=True)),
                )
            self._settlements[key] = series
        series = self._settlements[key]
        ts = to_utc(expiry)
        if ts in series.index:
            value = float(series.loc[ts])
            return value if np.isfinite(value) else None
        return None

    # ---- internals

    def _has_chains(self, underlying: str) -> bool:
        return meta_path(self.root, underlying).exists()

    def _chain_table(self, underlying: str, start: pd.Timestamp, end: pd.Timestamp) -> ChainTable:
        tf = self.chain_timeframe(underlying)
        stale = self._max_staleness or timeframe_delta(tf)
        first = (start - stale - timeframe_delta(tf)).floor("D")
        days = pd.date_range(first, end.floor("D"), freq="D")
        frames = [f for f in (self._partition(underlying, d) for d in days) if f is not None]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return ChainTable(frame, tf, stale)

    def _partition(self, underlying: str, day: pd.Timestamp) -> pd.DataFrame | None:
        found = _existing(chain_partition_path(self.root, underlying, day))
        if found is None:
            return None
        if found not in self._partitions:
            if len(self._partitions) >= self._cache_limit:
                self._partitions.pop(next(iter(self._partitions)))
            self._partitions[found] = normalize_store_chain(read_table(found))
        return self._partitions[found]


def _underlying_of(instrument_name: str) -> str:
    # Deferred import: harness.instruments is optional for readers of the store.
    from harness.instruments import parse_instrument_name

    try:
        return parse_instrument_name(instrument_name).underlying.upper()
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
