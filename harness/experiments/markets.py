"""Build the market data source an experiment config names."""

from __future__ import annotations

import pandas as pd

from harness.data.files import duration_text
from harness.data.source import MarketDataSource
from harness.data.synthetic import SyntheticMarket
from harness.experiments.config import MarketConfig
from harness.types import Timeframe


def build_market(config: MarketConfig, timeframe: Timeframe = "1h") -> MarketDataSource:
    """The `MarketDataSource` for `config` (synthetic, parquet store, Tardis files, Deribit API).

    `timeframe` is the simulation's bar: sources that resample raw quotes (Tardis, Deribit)
    build their bars at it.
    """
    if config.source == "synthetic":
        return SyntheticMarket(seed=config.seed, world=config.world, anchor=config.anchor)
    if config.source == "parquet":
        from harness.data.files import FileDataSource

        return FileDataSource(config.path)  # type: ignore[arg-type]
    if config.source == "tardis":
        from harness.data.tardis import TardisDataSource

        return TardisDataSource(config.files or [config.path], timeframe=timeframe)  # type: ignore[list-item]
    from harness.data.deribit import DeribitDataSource

    kwargs: dict[str, object] = {"timeframe": timeframe}
    if config.base_url:
        kwargs["base_url"] = config.base_url
    if config.cache_dir:
        kwargs["cache_dir"] = config.cache_dir
    return DeribitDataSource(**kwargs)  # type: ignore[arg-type]


def market_fingerprint(source: MarketDataSource, config: MarketConfig) -> str:
    """A short description identifying the market data of a run."""
    fp = getattr(source, "fingerprint", None)
    if callable(fp):
        return str(fp())
    return f"{config.source}({config.path or ','.join(config.files) or config.base_url or ''})"


def mark_cadence(source: MarketDataSource, underlying: str, bar: pd.Timedelta) -> dict | None:
    """How often the source refreshes option marks, for the run manifest (None: every instant).

    A store whose chain snapshots are sparser than the simulation's bars marks open calls
    with the last snapshot until the next one (stale, never invented), so drawdowns are then
    measured at the store's cadence, not at every bar.
    """
    cadence = getattr(source, "snapshot_cadence", None)
    if not callable(cadence):
        return None
    try:
        every = pd.Timedelta(cadence(underlying))
    except ValueError:
        return None
    stale = every > bar
    return {
        "snapshot_every": duration_text(every),
        "bar": duration_text(bar),
        "stale_marks": stale,
        "note": (
            "option marks between snapshots are the last snapshot (stale, never invented); "
            "drawdowns are measured at the snapshot cadence"
            if stale
            else "a chain snapshot at every bar"
        ),
    }
