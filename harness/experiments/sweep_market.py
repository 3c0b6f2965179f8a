"""A market shared by the trials of a sweep: chains, bars and simulators built once per process.

Trials that differ in target delta, DTE or rule parameters ask the same source for chains at
nearly the same decision times. `SharedChains` wraps a source with a bulk `chain_frame` and
keeps what it built:
- chains, as a frame (`chain_frame`) and as columns (`chain_columns`, the path the simulator's
  `ChainStore` takes): a later request for times it holds (and no longer expiries) is a row
  filter of the kept rows, and only times it lacks are built and added;
- spot bars per (underlying, period, timeframe) request;
- per simulated period (underlying, timeframe, start, end) the simulator's mark paths,
  chain-mark seeds and settlement prices (`SimulatorCaches`), so a later trial's labels reuse
  every option path an earlier one loaded;
- the last few simulators by their full simulation config: trials that differ only in their
  policies (prompts, models, rule parameters) share candidates and labels outright.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.data.chain_scan import ChainColumns, ColumnarChainSource, columns_from_frame
from harness.data.chain_select import SelectiveChainSource
from harness.data.source import BulkChainSource, MarketDataSource, normalize_chain_frame
from harness.data.store import ProgressFn
from harness.simulator import CoveredCallSimulator, SimulatorCaches
from harness.timestamps import as_ns
from harness.types import CallSimulationConfig

_DAY_NS = 86400 * 10**9
_MAX_SIMULATORS = 2  # simulators kept per shared market (each holds its chain store, ~25 MB/year)
_OWN = ("_source", "_kept", "_kept_cols", "_bars", "_caches", "_sims", "_marks")


class SharedChains:
    """A `MarketDataSource` proxy whose `chain_frame` answers from chains already built."""

    def __init__(self, source: MarketDataSource) -> None:
        self._source = source
        # (underlying, kinds) -> (sorted decision instants in ns, max_dte or None, frame by as_of)
        self._kept: dict[tuple[str, tuple[str, ...]], tuple[np.ndarray, float | None, Any]] = {}
        # the same for chain columns; rows sorted by as_of, store order inside each instant
        self._kept_cols: dict[
            tuple[str, tuple[str, ...]], tuple[np.ndarray, float | None, ChainColumns]
        ] = {}
        self._bars: dict[tuple[Any, ...], pd.DataFrame] = {}
        self._caches: dict[tuple[Any, ...], SimulatorCaches] = {}
        self._sims: OrderedDict[str, CoveredCallSimulator] = OrderedDict()
        # instrument -> (sorted ns instants, marks there): every (option, bar) mark computed once
        self._marks: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in _OWN:
            raise AttributeError(name)  # not during unpickling, before _source is set
        return getattr(self._source, name)

    def __getstate__(self) -> dict[str, Any]:
        # ship the source and its chain columns (what `warm` built once in the driver); frames,
        # marks and simulators are rebuilt where they are used
        return {"_source": self._source, "_kept_cols": self._kept_cols}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_source"])  # type: ignore[misc]
        self._kept_cols.update(state.get("_kept_cols", {}))

    def warm(self, configs: Sequence[CallSimulationConfig]) -> None:
        """Build, in one request per underlying, the chains every config's simulator will ask.

        The decision times and the expiry limit follow the simulator's rules; a config they
        do not cover is still right, its simulator just builds the missing chains itself.
        Nothing is built for a `SelectiveChainSource` (the synthetic market): the simulator
        asks it for the few rows its band reads, cheaper than selecting from a full chain.
        """
        if not builds_chains(self):
            return
        by_underlying: dict[str, tuple[list[np.ndarray], float]] = {}
        for c in configs:
            first = c.start_ts.ceil(c.bar)
            last = c.end_ts - pd.Timedelta(days=c.target_dte)
            if last < first:
                continue
            times = as_ns(pd.date_range(first, last, freq=c.bar * c.decision_interval_bars))
            # the simulator's ChainStore limit (CoveredCallSimulator._load)
            limit = max(c.target_dte + c.dte_tolerance, 2.0 * c.target_dte) + 1.0
            seen, widest = by_underlying.get(c.underlying, ([], 0.0))
            by_underlying[c.underlying] = ([*seen, times], max(widest, limit))
        for underlying, (parts, limit) in by_underlying.items():
            times = pd.DatetimeIndex(pd.to_datetime(np.unique(np.concatenate(parts)), utc=True))
            self.chain_columns(underlying, times, kinds=("call",), max_dte=limit)

    # ------------------------------------------------------------------ bars
    def get_spot_ohlc(self, underlying: str, start: Any, end: Any, timeframe: Any) -> pd.DataFrame:
        """The source's spot bars, kept per request (trials of one period ask the same)."""
        key = (underlying, pd.Timestamp(start).value, pd.Timestamp(end).value, timeframe)
        bars = self._bars.get(key)
        if bars is None:
            bars = self._bars[key] = self._source.get_spot_ohlc(underlying, start, end, timeframe)
        return bars

    # ------------------------------------------------------------------ option marks
    def option_marks(self, instrument_names: Sequence[str], times: Any) -> np.ndarray:
        """The source's marks (names x times), each (instrument, instant) computed only once.

        Trials with neighbouring delta or DTE bands sell overlapping strikes over overlapping
        windows; marks are point-in-time values, so kept ones answer later requests.
        """
        t = np.asarray(as_ns(pd.DatetimeIndex(times)), dtype=np.int64)
        out = np.full((len(instrument_names), len(t)), np.nan)
        if len(t) == 0 or len(instrument_names) == 0:
            return out
        fresh: list[int] = []
        partial: dict[int, np.ndarray] = {}  # row -> mask of instants it still lacks
        for j, name in enumerate(instrument_names):
            kept = self._marks.get(name)
            if kept is None:
                fresh.append(j)
                continue
            pos = np.minimum(np.searchsorted(kept[0], t), len(kept[0]) - 1)
            hit = kept[0][pos] == t
            out[j, hit] = kept[1][pos[hit]]
            if not hit.all():
                partial[j] = ~hit
        if fresh:
            marks = self._source.option_marks([instrument_names[j] for j in fresh], times)  # type: ignore[attr-defined]
            for j, row in zip(fresh, marks, strict=True):
                out[j] = row
                self._keep_marks(instrument_names[j], t, row)
        if partial:
            lack = np.logical_or.reduce(list(partial.values()))
            t_lack = t[lack]
            rows = list(partial)
            marks = self._source.option_marks(  # type: ignore[attr-defined]
                [instrument_names[j] for j in rows], pd.to_datetime(t_lack, utc=True)
            )
            for j, row in zip(rows, marks, strict=True):
                out[j, lack] = row
                self._keep_marks(instrument_names[j], t_lack, row)
        return out

    def _keep_marks(self, name: str, t: np.ndarray, marks: np.ndarray) -> None:
        kept = self._marks.get(name)
        if kept is None:
            self._marks[name] = (t.copy(), np.array(marks, dtype=float))
            return
        all_t = np.union1d(kept[0], t)
        values = np.empty(len(all_t))
        values[np.searchsorted(all_t, kept[0])] = kept[1]
        values[np.searchsorted(all_t, t)] = marks
        self._marks[name] = (all_t, values)

    # ------------------------------------------------------------------ simulators
    def simulator(
        self, config: CallSimulationConfig, progress: ProgressFn | None = None
    ) -> CoveredCallSimulator:
        """A simulator of `config` on this market: kept per config, sharing paths per period.

        A simulator is only read after its labels are built (policies are replayed, never
        stored in it), so trials with the same simulation config can use the same one.
        """
        key = config.model_dump_json()
        sim = self._sims.get(key)
        if sim is not None:
            self._sims.move_to_end(key)
            return sim
        period = (config.underlying, config.timeframe, config.start_ts.value, config.end_ts.value)
        caches = self._caches.setdefault(period, SimulatorCaches())
        sim = CoveredCallSimulator(self, config, progress=progress, caches=caches)  # type: ignore[arg-type]
        if len(self._sims) >= _MAX_SIMULATORS:
            self._sims.popitem(last=False)
        self._sims[key] = sim
        return sim

    # ------------------------------------------------------------------ chain columns
    def _build_columns(
        self, underlying: str, t_ns: np.ndarray, kinds: tuple[str, ...], max_dte: float | None
    ) -> ChainColumns:
        times = pd.DatetimeIndex(pd.to_datetime(t_ns, utc=True))
        if isinstance(self._source, ColumnarChainSource):
            return self._source.chain_columns(underlying, times, kinds=kinds, max_dte=max_dte)
        frame = normalize_chain_frame(self._build(underlying, t_ns, kinds, max_dte))
        return columns_from_frame(frame, underlying.upper() if len(frame) else None)

    def chain_columns(
        self,
        underlying: str,
        times: pd.DatetimeIndex,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> ChainColumns:
        """The chains at `times` as columns (the rows the source would give), from kept rows."""
        key = (underlying.upper(), tuple(kinds))
        want = np.unique(as_ns(pd.DatetimeIndex(times)))
        kept = self._kept_cols.get(key)
        rebuild = _rebuild_plan(kept, want, max_dte)
        if rebuild is not None:
            t_ns, limit = rebuild
            cols = _by_instant(self._build_columns(underlying, t_ns, key[1], limit))
            self._kept_cols[key] = (t_ns, limit, cols)
        else:
            t_ns, limit, cols = kept  # type: ignore[misc]
            missing = np.setdiff1d(want, t_ns)
            if len(missing):
                extra = self._build_columns(underlying, missing, key[1], limit)
                cols = _by_instant(_append(cols, extra))
                t_ns = np.union1d(t_ns, missing)
                self._kept_cols[key] = (t_ns, limit, cols)
        # rows of the wanted instants: contiguous runs, found by searchsorted on sorted as_of
        lo = np.searchsorted(cols.as_of, want, side="left")
        hi = np.searchsorted(cols.as_of, want, side="right")
        rows = _ranges(lo, hi)
        if max_dte is not None and len(rows):
            rows = rows[(cols.expiry[rows] - cols.as_of[rows]) <= max_dte * _DAY_NS]
        return cols.take(rows)

    def _build(
        self, underlying: str, t_ns: np.ndarray, kinds: tuple[str, ...], max_dte: float | None
    ) -> pd.DataFrame:
        times = pd.DatetimeIndex(pd.to_datetime(t_ns, utc=True))
        return self._source.chain_frame(underlying, times, kinds=kinds, max_dte=max_dte)  # type: ignore[attr-defined]

    def chain_frame(
        self,
        underlying: str,
        times: pd.DatetimeIndex | Sequence,
        *,
        kinds: Sequence[str] = ("call", "put"),
        max_dte: float | None = None,
    ) -> pd.DataFrame:
        """The source's chains at `times` (same rows as the source would give), from kept chains."""
        key = (underlying.upper(), tuple(kinds))
        want = np.unique(as_ns(pd.DatetimeIndex(times)))
        kept = self._kept.get(key)
        rebuild = _rebuild_plan(kept, want, max_dte)
        if rebuild is not None:
            t_ns, limit = rebuild
            frame = self._build(underlying, t_ns, key[1], limit)
            self._kept[key] = (t_ns, limit, frame)
        else:
            t_ns, limit, frame = kept  # type: ignore[misc]
            missing = np.setdiff1d(want, t_ns)
            if len(missing):
                extra = self._build(underlying, missing, key[1], limit)
                frame = pd.concat([frame, extra], ignore_index=True)
                frame = frame.sort_values("as_of", kind="stable", ignore_index=True)
                t_ns = np.union1d(t_ns, missing)
                self._kept[key] = (t_ns, limit, frame)
        as_of = as_ns(frame["as_of"])
        rows = np.isin(as_of, want)
        if max_dte is not None:
            rows &= (as_ns(frame["expiry"]) - as_of) <= max_dte * _DAY_NS
        return frame.loc[rows].reset_index(drop=True)


def _rebuild_plan(
    kept: tuple[np.ndarray, float | None, Any] | None, want: np.ndarray, max_dte: float | None
) -> tuple[np.ndarray, float | None] | None:
    """(instants, DTE limit in days) to build anew, or None when `kept` already reaches as far.

    A first request, or one for longer expiries than kept, rebuilds the union of the kept and
    wanted instants at the wider limit (None: every expiry); otherwise only missing instants
    are added at the kept limit.
    """
    if kept is not None and (kept[1] is None or (max_dte is not None and max_dte <= kept[1])):
        return None
    have = kept[0] if kept is not None else np.empty(0, np.int64)
    limit = None if max_dte is None or (kept is not None and kept[1] is None) else max_dte
    if kept is not None and kept[1] is not None and limit is not None:
        limit = max(limit, kept[1])
    return np.union1d(have, want), limit


def _by_instant(cols: ChainColumns) -> ChainColumns:
    """`cols` with rows stably sorted by as_of (each instant's own row order kept)."""
    if len(cols) < 2 or bool(np.all(cols.as_of[1:] >= cols.as_of[:-1])):
        return cols
    return cols.take(np.argsort(cols.as_of, kind="stable"))


def _append(a: ChainColumns, b: ChainColumns) -> ChainColumns:
    """Rows of `a` then `b`, with `b`'s instrument codes moved into one shared names array."""
    if len(b) == 0:
        return a
    names = pd.Index(a.names).append(pd.Index(b.names)).unique()
    b_code = names.get_indexer(b.names)[b.code]
    return ChainColumns(
        underlying=a.underlying or b.underlying,
        as_of=np.r_[a.as_of, b.as_of],
        expiry=np.r_[a.expiry, b.expiry],
        quote_time=np.r_[a.quote_time, b.quote_time],
        code=np.r_[a.code, b_code].astype(np.int64),
        names=np.asarray(names, dtype=object),
        is_call=np.r_[a.is_call, b.is_call],
        values={k: np.r_[v, b.values[k]] for k, v in a.values.items()},
    )


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenated `arange(lo[i], hi[i])` for every i (vectorized)."""
    n = hi - lo
    total = int(n.sum())
    if total == 0:
        return np.empty(0, np.int64)
    starts = np.repeat(lo - np.r_[0, np.cumsum(n)[:-1]], n)
    return starts + np.arange(total)


def builds_chains(source: MarketDataSource) -> bool:
    """Whether a sweep builds full chains of `source` once (`SharedChains.warm`): not for a
    source that answers each simulator's few band rows itself (`SelectiveChainSource`)."""
    return isinstance(source, SharedChains) and not isinstance(source._source, SelectiveChainSource)


def share_chains(source: MarketDataSource) -> MarketDataSource:
    """`source` wrapped in `SharedChains` when it builds chains in bulk, else itself."""
    if isinstance(source, SharedChains) or not isinstance(source, BulkChainSource):
        return source
    params = inspect.signature(source.chain_frame).parameters
    if "kinds" in params and "max_dte" in params:
        return SharedChains(source)  # type: ignore[return-value]
    return source
