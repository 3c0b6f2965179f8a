"""A market shared by the trials of a sweep: option chains built once, sliced per trial.

Trials that differ in target delta, DTE or rule parameters ask the same source for chains at
nearly the same decision times. `SharedChains` wraps a source with a bulk `chain_frame` and
keeps the chains it built: a later request for times it holds (and no longer expiries) is a
row filter of the kept frame, and only times it lacks are built and added.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.data.source import BulkChainSource, MarketDataSource
from harness.timestamps import as_ns

_DAY_NS = 86400 * 10**9


class SharedChains:
    """A `MarketDataSource` proxy whose `chain_frame` answers from chains already built."""

    def __init__(self, source: MarketDataSource) -> None:
        self._source = source
        # (underlying, kinds) -> (sorted decision instants in ns, max_dte or None, frame by as_of)
        self._kept: dict[tuple[str, tuple[str, ...]], tuple[np.ndarray, float | None, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_source", "_kept"):
            raise AttributeError(name)  # not during unpickling, before _source is set
        return getattr(self._source, name)

    def __getstate__(self) -> dict[str, Any]:
        return {"_source": self._source, "_kept": {}}  # ship the source, not the kept chains

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

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
        wider = kept is not None and (
            kept[1] is None or (max_dte is not None and max_dte <= kept[1])
        )
        if kept is None or not wider:
            # first request, or longer expiries than kept: build the union at the wider limit
            have = kept[0] if kept is not None else np.empty(0, np.int64)
            limit = None if max_dte is None or (kept is not None and kept[1] is None) else max_dte
            if kept is not None and kept[1] is not None and limit is not None:
                limit = max(limit, kept[1])
            t_ns = np.union1d(have, want)
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


def share_chains(source: MarketDataSource) -> MarketDataSource:
    """`source` wrapped in `SharedChains` when it builds chains in bulk, else itself."""
    if isinstance(source, SharedChains) or not isinstance(source, BulkChainSource):
        return source
    params = inspect.signature(source.chain_frame).parameters
    if "kinds" in params and "max_dte" in params:
        return SharedChains(source)  # type: ignore[return-value]
    return source
