"""Importers the CLI calls to fill the local store, and `open_market_source` for configs.

    harness data fetch deribit --underlying BTC --start ... --end ... --timeframe 1h --out data/
        -> fetch_deribit("BTC", start, end, "1h", "data/")
    harness data import tardis FILES... --out data/  -> import_tardis(files, "data/")
    harness data import cdd FILE --underlying BTC --out data/  -> import_cdd(file, "BTC", "data/")

Each returns an `ImportSummary`. Every file is written atomically (temp file, then rename) and
merged with what the store already holds, so an interrupted or failed import loses nothing that
was written before, and re-running it is safe.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from harness.data.errors import DataError
from harness.data.files import (
    FileDataSource,
    check_chain_timeframe,
    compact_chain,
    duration_text,
    merge_chain,
    merge_spot,
    parse_duration,
    update_meta,
)
from harness.data.source import MarketDataSource
from harness.data.tardis import DEFAULT_BLOCK_SIZE, TardisResampler, front_underlying_bars
from harness.types import TIMEFRAMES, Timeframe, timeframe_delta


@dataclass(frozen=True, slots=True)
class Gap:
    """A run of missing bars: first and last missing bar close (UTC) and how many."""

    start: pd.Timestamp
    end: pd.Timestamp
    missing_bars: int


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """What an import or fetch did: rows read and written, files written, gaps, gated rows."""

    source: str
    underlyings: tuple[str, ...]
    timeframe: str
    rows_read: int
    rows_written: int
    files_written: tuple[str, ...]
    gaps: tuple[Gap, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """A few human-readable lines for the CLI."""
        lines = [
            f"{self.source}: {', '.join(self.underlyings) or '-'} at {self.timeframe}: "
            f"read {self.rows_read:,} rows, wrote {self.rows_written:,} rows "
            f"to {len(self.files_written)} file(s)"
        ]
        gated = {k: v for k, v in self.counts.items() if v}
        if gated:
            lines.append("  counts: " + ", ".join(f"{k}={v:,}" for k, v in sorted(gated.items())))
        if self.gaps:
            total = sum(g.missing_bars for g in self.gaps)
            lines.append(f"  gaps: {len(self.gaps)} ({total:,} missing bars)")
            lines.extend(
                f"    {g.start.isoformat()} .. {g.end.isoformat()} ({g.missing_bars} bars)"
                for g in self.gaps[:10]
            )
            if len(self.gaps) > 10:
                lines.append(f"    ... and {len(self.gaps) - 10} more")
        return "\n".join(lines)


@contextmanager
def _progress(enabled: bool, unit_bytes: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    size_col = DownloadColumn() if unit_bytes else MofNCompleteColumn()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        size_col,
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        yield bar


def open_market_source(params: Mapping[str, Any]) -> MarketDataSource:
    """Build a MarketDataSource from config params, e.g. {source: parquet, path: data/}.

    Sources: `parquet`/`csv`/`files` -> FileDataSource(path); `tardis` -> TardisDataSource(
    files, timeframe); `deribit` -> DeribitDataSource(base_url, cache_dir, timeframe). Optional
    `max_staleness` (e.g. "1h") for all of them.
    """
    kind = str(params.get("source", "")).lower()
    stale = params.get("max_staleness")
    if kind in ("parquet", "csv", "files", "file", "store"):
        if "path" not in params:
            raise DataError(f"market source {kind!r} needs a `path` (the store directory)")
        return FileDataSource(params["path"], max_staleness=stale)
    if kind == "tardis":
        from harness.data.tardis import TardisDataSource

        files = params.get("files") or params.get("path")
        if not files:
            raise DataError("market source 'tardis' needs `files` (options_chain CSV paths)")
        return TardisDataSource(files, timeframe=params.get("timeframe", "1h"), max_staleness=stale)
    if kind == "deribit":
        from harness.data.deribit import DeribitDataSource

        return DeribitDataSource(
            base_url=params.get("base_url"),
            history_url=params.get("history_url"),
            cache_dir=params.get("cache_dir"),
            timeframe=params.get("timeframe", "1h"),
            max_staleness=stale,
        )
    raise DataError(f"unknown market source {kind!r}: use parquet, csv, tardis or deribit")


# ---------------------------------------------------------------- Tardis


def import_tardis(
    files: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    timeframe: Timeframe = "1h",
    progress: bool = True,
    underlyings: Sequence[str] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    spot_from_chain: bool = True,
) -> ImportSummary:
    """Stream Tardis options_chain files into the store's chain partitions (and a spot proxy).

    With `spot_from_chain`, bars of the nearest-expiry `underlying_price` are merged into
    `spot/<timeframe>` where the store has no spot bar yet (real spot data always wins).
    """
    timeframe_delta(timeframe)
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"file(s) not found: {', '.join(missing)}")
    root = Path(out)
    resampler = TardisResampler(timeframe, underlyings=underlyings, block_size=block_size)
    written: set[str] = set()
    seen: set[str] = set()
    counts: Counter[str] = Counter()

    def store(frame: pd.DataFrame) -> None:
        for underlying, part in frame.groupby("underlying", sort=True):
            u = str(underlying)
            check_chain_timeframe(root, u, timeframe)
            merge_chain(root, u, part)
            if spot_from_chain:
                spot = front_underlying_bars(part)
                merge_spot(root, u, timeframe, spot, keep_existing=True)
                written.add(f"{u}/spot/{timeframe}")
            if u not in seen:
                update_meta(root, u, chain_timeframe=timeframe)
                seen.add(u)
            written.update(
                f"{u}/chain/date={d:%Y-%m-%d}" for d in part["as_of"].dt.floor("D").unique()
            )

    with _progress(progress, unit_bytes=True) as bar:
        for path in paths:
            task = bar.add_task(f"tardis {path.name}", total=path.stat().st_size) if bar else None

            def advance(done: int, total: int, task: Any = task) -> None:
                if bar is not None:
                    bar.update(task, completed=done, total=total)

            for frame in resampler.read_file(path, progress=advance):
                store(frame)
            for u in seen:
                update_meta(root, u, sources=[f"tardis:{path.name}"])
        store(resampler.finish())
    for u in seen:
        update_meta(root, u, sources=[f"tardis:{p.name}" for p in paths])
        # streamed chunks land in day partitions; one pass folds them into month files
        done = compact_chain(root, u)
        written.difference_update(w for w in list(written) if w.startswith(f"{u}/chain/date="))
        written.update(f"{u}/chain/month={m}" for m in done.months)
    counts.update(resampler.counts)
    rows_read = counts.pop("rows_read", 0)
    counts.pop("files", None)
    return ImportSummary(
        source="tardis",
        underlyings=tuple(sorted(seen)),
        timeframe=timeframe,
        rows_read=rows_read,
        rows_written=counts.pop("bars_written", 0),
        files_written=tuple(sorted(written)),
        counts=dict(counts),
    )


# ---------------------------------------------------------------- CryptoDataDownload


def _gaps(missing: pd.DatetimeIndex, bar: pd.Timedelta) -> tuple[Gap, ...]:
    """Group missing bar closes into runs."""
    if len(missing) == 0:
        return ()
    values = missing.sort_values()
    breaks = [
        0,
        *[i for i in range(1, len(values)) if values[i] - values[i - 1] != bar],
        len(values),
    ]
    return tuple(
        Gap(start=values[a], end=values[b - 1], missing_bars=b - a)
        for a, b in itertools.pairwise(breaks)
    )


def import_cdd(
    file: str | os.PathLike[str],
    underlying: str,
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    timeframe: Timeframe | None = None,
    drop_partial: bool = True,
) -> ImportSummary:
    """Import a CryptoDataDownload spot CSV into `spot/<timeframe>` of `underlying` (new bars win)."""
    from harness.data.cdd import read_cdd

    with _progress(progress, unit_bytes=False) as bar:
        task = bar.add_task(f"cdd {Path(file).name}", total=2) if bar else None
        parsed = read_cdd(
            file, underlying=underlying, timeframe=timeframe, drop_partial=drop_partial
        )
        if bar is not None:
            bar.advance(task)
        u = underlying.upper()
        root = Path(out)
        merge_spot(
            root,
            u,
            parsed.timeframe,
            parsed.bars.loc[:, ["open", "high", "low", "close", "volume"]],
        )
        update_meta(root, u, sources=[f"cdd:{Path(file).name}"])
        if bar is not None:
            bar.advance(task)
    return ImportSummary(
        source="cdd",
        underlyings=(u,),
        timeframe=parsed.timeframe,
        rows_read=parsed.rows_read,
        rows_written=len(parsed.bars),
        files_written=(f"{u}/spot/{parsed.timeframe}",),
        gaps=_gaps(parsed.missing, timeframe_delta(parsed.timeframe)),
        counts={
            "duplicates_dropped": parsed.duplicates_dropped,
            "partial_dropped": parsed.partial_dropped,
            "missing_bars": len(parsed.missing),
        },
    )


# ---------------------------------------------------------------- Deribit


def fetch_deribit(
    underlying: str,
    start: Any,
    end: Any,
    timeframe: Timeframe,
    out: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    history_url: str | None = None,
    use_history: bool = True,
    requests_per_second: float = 5.0,
) -> ImportSummary:
    """Fetch spot (perpetual) bars, reconstructed chains and delivery prices from Deribit.

    Bar closes in [start, end]. Responses about the past are cached in `cache_dir` (default
    `<out>/.cache/deribit`), so re-running an interrupted fetch costs no requests for what was
    already fetched. With `base_url` (a mirror or test server) the history API defaults to it.
    """
    from harness.data.deribit import (
        build_chain,
        delivery_series,
        index_name_for,
        list_option_instruments,
        source_timeframe,
        spot_instrument_for,
    )
    from harness.data.deribit_client import DeribitClient
    from harness.data.files import merge_settlements
    from harness.data.source import inclusive_range

    s, e = inclusive_range(start, end)
    bar = timeframe_delta(timeframe)
    u = underlying.upper()
    root = Path(out)
    check_chain_timeframe(root, u, timeframe)
    cache = Path(cache_dir) if cache_dir is not None else root / ".cache" / "deribit"
    counts: Counter[str] = Counter()
    written: list[str] = []
    with DeribitClient(
        base_url,
        history_url=history_url or base_url,
        cache_dir=str(cache),
        requests_per_second=requests_per_second,
        burst=max(5, int(requests_per_second)),
    ) as client:
        spot = client.chart_candles(spot_instrument_for(u), s, e, timeframe)
        src_tf = source_timeframe(timeframe)
        spot_src = (
            spot
            if src_tf == timeframe
            else client.chart_candles(spot_instrument_for(u), s - bar, e, src_tf)
        )
        expected = pd.date_range(s.ceil(bar), e.floor(bar), freq=bar)
        missing = pd.DatetimeIndex(expected.difference(spot.index))
        if len(spot):
            merge_spot(root, u, timeframe, spot.loc[:, ["open", "high", "low", "close", "volume"]])
            written.append(f"{u}/spot/{timeframe}")
        instruments = list_option_instruments(client, u, use_history=use_history)
        alive = [i for i in instruments if i.creation <= e and i.expiration > s - bar]
        with _progress(progress, unit_bytes=False) as pbar:
            task = pbar.add_task(f"deribit {u} options", total=len(alive)) if pbar else None
            chain = build_chain(
                client,
                alive,
                spot_src["close"],
                s,
                e,
                timeframe,
                counts,
                on_instrument=(lambda _name: pbar.advance(task)) if pbar else None,
            )
        if len(chain):
            merge_chain(root, u, chain, by_month=True)
            written.extend(_month_partitions(u, chain["as_of"]))
        deliveries = delivery_series(client.get_delivery_prices(index_name_for(u)))
        if len(deliveries):
            merge_settlements(
                root,
                u,
                pd.DataFrame(
                    {
                        "expiry": deliveries.index,
                        "price": deliveries.to_numpy(),
                        "source": "deribit",
                    }
                ),
            )
            written.append(f"{u}/settlement")
        counts["requests"] = client.stats["requests"]
        counts["cache_hits"] = client.stats["cache_hits"]
        counts["retries"] = client.stats["retries"]
        counts["settlements"] = len(deliveries)
    update_meta(
        root,
        u,
        chain_timeframe=timeframe,
        spot_source=f"deribit:{spot_instrument_for(u)} (perpetual as spot proxy)",
        sources=[f"deribit:{s.isoformat()}..{e.isoformat()}"],
    )
    return ImportSummary(
        source="deribit",
        underlyings=(u,),
        timeframe=timeframe,
        rows_read=len(spot) + counts["chain_rows"] + counts["bars_without_trades"],
        rows_written=len(spot) + len(chain),
        files_written=tuple(written),
        gaps=_gaps(missing, bar),
        counts=dict(counts),
    )


# ---------------------------------------------------------------- the embedded synthetic market


def _month_partitions(underlying: str, as_of: pd.Series) -> list[str]:
    """Store names of the month partitions holding bars at `as_of`."""
    months = pd.DatetimeIndex(as_of).strftime("%Y-%m").unique()
    return [f"{underlying}/chain/month={m}" for m in months]


def snapshot_timeframe(first: pd.Timestamp, every: pd.Timedelta) -> Timeframe:
    """The coarsest bar grid (epoch-aligned) holding every snapshot `first + k * every`."""
    fits = [
        tf
        for tf in TIMEFRAMES
        if every % timeframe_delta(tf) == pd.Timedelta(0)
        and (first.value % timeframe_delta(tf).value) == 0
    ]
    if not fits:
        raise DataError(
            f"snapshots every {every} from {first.isoformat()} sit on no bar grid "
            f"({', '.join(TIMEFRAMES)}); start on a whole minute and use a whole-minute step"
        )
    return max(fits, key=timeframe_delta)  # type: ignore[return-value]


def import_synthetic(
    underlying: str,
    start: Any,
    end: Any,
    every: str | pd.Timedelta,
    out: str | os.PathLike[str],
    *,
    seed: int = 7,
    calls_only: bool = False,
    max_dte: float | None = None,
    spot_timeframe: Timeframe = "1h",
    progress: bool = True,
) -> ImportSummary:
    """Write the embedded synthetic market into the store, laid out like a real import.

    Chain snapshots at `start`, `start + every`, ... <= `end` (both kinds unless `calls_only`;
    every listed expiry unless `max_dte` days; `quote_time` = snapshot time), spot bars at `spot_timeframe` from 31 days before `start`
    (the simulator's feature history) to `end`, and the delivery price of every expiry in
    the chain up to `end`. meta.json gets the chain bar grid and, when snapshots are sparser
    than it, `snapshot_every`. Values are bit-for-bit the embedded market's.
    """
    from harness.data.files import merge_settlements
    from harness.data.source import inclusive_range
    from harness.data.synthetic import SyntheticMarket

    s, e = inclusive_range(start, end)
    step = parse_duration(every)
    if step <= pd.Timedelta(0):
        raise DataError(f"--every must be positive, got {every!r}")
    u = underlying.upper()
    root = Path(out)
    tf = snapshot_timeframe(s, step)
    check_chain_timeframe(root, u, tf)
    market = SyntheticMarket(seed=seed)
    times = pd.date_range(s, e, freq=step)
    kinds = ("call",) if calls_only else ("call", "put")
    months = [g for _, g in pd.Series(times, index=times).groupby(times.year * 12 + times.month)]
    written: set[str] = set()
    rows = 0
    expiries: set[pd.Timestamp] = set()
    with _progress(progress, unit_bytes=False) as bar:
        task = bar.add_task(f"synthetic {u} chains", total=len(months)) if bar else None
        for month in months:
            # a month at a time keeps memory at one month of chain rows
            chain = market.chain_frame(
                u, pd.DatetimeIndex(month.index), kinds=kinds, max_dte=max_dte
            )
            if len(chain):
                merge_chain(root, u, chain.assign(quote_time=chain["as_of"]), by_month=True)
                rows += len(chain)
                expiries.update(pd.DatetimeIndex(chain["expiry"].unique()))
                written.update(_month_partitions(u, chain["as_of"]))
            if bar is not None:
                bar.advance(task)
    spot = market.get_spot_ohlc(u, s - pd.Timedelta(days=31), e, spot_timeframe)
    merge_spot(root, u, spot_timeframe, spot)
    written.add(f"{u}/spot/{spot_timeframe}")
    settled = sorted(x for x in expiries if x <= e)
    if settled:
        merge_settlements(
            root,
            u,
            pd.DataFrame(
                {
                    "expiry": pd.DatetimeIndex(settled),
                    "price": [market.settlement_price(u, x) for x in settled],
                    "source": f"synthetic(seed={seed})",
                }
            ),
        )
        written.add(f"{u}/settlement")
    meta: dict[str, Any] = {
        "chain_timeframe": tf,
        "spot_source": f"synthetic(seed={seed})",
        "sources": [
            f"synthetic(seed={seed}):{s.isoformat()}..{e.isoformat()} every {duration_text(step)}"
        ],
    }
    if step != timeframe_delta(tf):
        meta["snapshot_every"] = duration_text(step)
    update_meta(root, u, **meta)
    return ImportSummary(
        source="synthetic",
        underlyings=(u,),
        timeframe=tf,
        rows_read=rows,
        rows_written=rows + len(spot) + len(settled),
        files_written=tuple(sorted(written)),
        counts={"snapshots": len(times), "spot_bars": len(spot), "settlements": len(settled)},
    )
