"""The covered-call replay engine: point-in-time states, candidates, trades and labels.

The market is loaded once into arrays (spot bars, a `ChainStore` of call chains at every
decision time, option mark paths on demand); every query after that is a slice or a
vectorized mask. A policy at decision time t sees only bars labeled <= t and the chain
quoted at t; hold-to-expiry outcomes (which use later data) exist only as labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from harness.data.chain_select import ChainSelection
from harness.data.source import (
    BulkChainSource,
    MarketDataSource,
    MarkRangeSource,
    SettlementSource,
)
from harness.data.store import ChainStore, ProgressFn
from harness.engine.drawdown_memo import DrawdownInputs, DrawdownMemo
from harness.engine.features import spot_features
from harness.engine.hints import history_hints
from harness.engine.metrics import portfolio_metrics
from harness.engine.outcomes import (
    call_payoff,
    covered_drawdown_pct,
    delivery_fee,
    purchase_price,
    sale_price,
    trading_fee,
)
from harness.state import DecisionState, PositionState
from harness.timestamps import TimestampLike, as_ns, to_utc
from harness.types import (
    TIMEFRAMES,
    CallCandidate,
    CallSimulationConfig,
    DecisionRecord,
    OptionSnapshot,
    SimulatedTrade,
    SimulationResult,
    call_candidates,
    timeframe_delta,
)

log = logging.getLogger(__name__)

PolicyFn = Callable[[DecisionState, Sequence[CallCandidate]], OptionSnapshot | None]

_DAY_NS = 86400 * 10**9
_LOOKBACK = pd.Timedelta(days=31)  # enough history for the 30-day realized vol
# The selected chain's band is wider than the candidate test (tolerance + 1e-9) by far more
# than float noise, so no candidate is ever left out of the store.
_BAND_MARGIN = 1e-6
_MAX_SHARED_STATES = 16  # decision-state lists kept per period (~2 MB each for a year at 4h)
# the features a flat DecisionState is built from (`_parts`), and so the key of shared states
_STATE_FEATURES = (
    "spot",
    "return_1d",
    "return_7d",
    "realized_vol_7d",
    "realized_vol_30d",
    "atm_iv",
)


class _PathTable(NamedTuple):
    """Held mark paths concatenated: path i is marks[offset[i] : offset[i] + length[i]], its
    first cell at bar start[i]."""

    start: np.ndarray
    length: np.ndarray
    offset: np.ndarray
    marks: np.ndarray


# instrument code of each row (first appearance order) and the instrument names by code
_Instruments = tuple[np.ndarray, list[str]]


def _instruments(names: np.ndarray) -> _Instruments:
    """Codes of `names` by first appearance, and the distinct names in that order."""
    codes, uniq = pd.factorize(np.asarray(names, dtype=object))
    return codes, uniq.tolist()


class InvalidChoiceError(ValueError):
    """A policy returned an option that was not among the candidates it was offered."""


@dataclass(frozen=True)
class GateCounts:
    """How many calls in the DTE and delta band each gate removed (all decisions).

    Each removed call counts once, under the first gate it fails in the order
    expires_after_end, no_bid, bid_below_min, crossed, spread_too_wide, unfillable, so
    `in_band` = the removed counts + `offered`.
    """

    in_band: int
    expires_after_end: int
    no_bid: int
    bid_below_min: int
    crossed: int
    spread_too_wide: int
    unfillable: int
    offered: int


@dataclass
class SimulatorCaches:
    """Market facts simulators on the same spot bars may share (a sweep's trials on one period).

    Mark paths are keyed by instrument and indexed by bar, so only simulators whose spot bars
    are identical (same source, underlying, timeframe and period) may share one.
    """

    paths: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    seeds: dict[str, dict[int, float]] = field(default_factory=dict)
    # seeds not yet in `seeds`: (instrument names by code, codes, sale bars, marks) per call,
    # added to `seeds` in order when a loaded path has a gap (only then can a seed apply)
    seed_batches: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=list
    )
    settlements: dict[int, float] = field(default_factory=dict)
    # names whose held path was built from source marks with a gap (NaN): seeds and carried
    # marks may have filled it, so a longer range is loaded anew; every other held path is
    # its source's marks as they are, and only the bars it lacks are asked for
    gappy: set[str] = field(default_factory=set)
    # flat decision states by the exact bytes of everything they are built from: trials whose
    # bands differ (delta, say) but whose decisions and features are equal share the objects
    states: dict[bytes, list[DecisionState]] = field(default_factory=dict)
    # by the same key: each decision's Python values (`_parts`) and its Timestamp (records)
    parts: dict[bytes, list[tuple[Any, ...]]] = field(default_factory=dict)
    stamps: dict[bytes, list[pd.Timestamp]] = field(default_factory=dict)
    # candidates' as_of and expiry Timestamps by ns (decision instants and expiries of the
    # period: bounded by the period, shared by every band)
    instants: dict[int, pd.Timestamp] = field(default_factory=dict)
    # label drawdowns by (instrument, sale bar) and their inputs: another band's candidate
    # with the same inputs takes it (harness.engine.drawdown_memo)
    drawdowns: DrawdownMemo = field(default_factory=DrawdownMemo)


@dataclass
class _Position:
    row: int  # candidate row
    dec: int  # decision index it was opened at
    open_fee: float
    premium: float  # fill per coin
    size: float


class CoveredCallSimulator:
    """Replays covered-call policies on one market and config; load once, query fast."""

    def __init__(
        self,
        data_source: MarketDataSource,
        config: CallSimulationConfig,
        *,
        progress: ProgressFn | None = None,
        caches: SimulatorCaches | None = None,
    ) -> None:
        self.source = data_source
        self.config = config
        self.underlying = config.underlying
        self.bar = config.bar
        self.size = config.call_size  # whole lots of contract_size coins
        self.last_no_trade_reason: str | None = None
        caches = caches or SimulatorCaches()
        self._paths = caches.paths
        self._seeds = caches.seeds  # name -> {bar: chain mark at a sale}
        self._seed_batches = caches.seed_batches
        self._settlements = caches.settlements
        self._gappy = caches.gappy
        self._shared_states = caches.states
        self._shared_parts = caches.parts
        self._shared_stamps = caches.stamps
        self._instants = caches.instants
        self._memo = caches.drawdowns
        self._key: bytes | None = None  # `_states_key`, made once
        self._labels: pd.DataFrame | None = None
        self._cand_instruments: _Instruments | None = None
        # payoff and delivery fee per coin of every candidate (labels), and what replays settled
        self._label_flows: tuple[np.ndarray, np.ndarray] | None = None
        self._settle_cost: np.ndarray | None = None
        self._settle_known: np.ndarray | None = None
        self._hints: tuple[np.ndarray, np.ndarray] | None = None
        self._offered: list[CallCandidate] | None = None  # every candidate, built once
        self._flat_states: list[DecisionState] | None = None
        self._state_parts: list[tuple[Any, ...]] | None = None
        self._records: tuple[list[pd.Timestamp], list[tuple[str, ...]], list[bool]] | None = None
        self._idle_records: dict[str, list[DecisionRecord | None]] = {}
        self._load(progress)

    # ------------------------------------------------------------------ loading
    def decision_times(self) -> pd.DatetimeIndex:
        """Decision instants: from `start` every `decision_interval_bars` bars while t + target_dte <= end."""
        c = self.config
        first = c.start_ts.ceil(self.bar)
        last = c.end_ts - pd.Timedelta(days=c.target_dte)
        if last < first:
            return pd.DatetimeIndex([], tz="UTC", name="decision_time")
        idx = pd.date_range(first, last, freq=self.bar * c.decision_interval_bars)
        return idx.as_unit("ns").rename("decision_time")

    def _load(self, progress: ProgressFn | None) -> None:
        c = self.config
        try:
            bars = self.source.get_spot_ohlc(
                self.underlying, c.start_ts - _LOOKBACK, c.end_ts, c.timeframe
            )
        except ValueError:
            # a source that starts at `start` has no history; features will say None
            bars = self.source.get_spot_ohlc(self.underlying, c.start_ts, c.end_ts, c.timeframe)
        if bars.empty:
            raise ValueError(
                f"no {c.timeframe} spot bars for {self.underlying} between "
                f"{c.start_ts.isoformat()} and {c.end_ts.isoformat()}"
            )
        self.bars = bars
        self.bar_ns = as_ns(bars.index)
        self.close = bars["close"].to_numpy(dtype=float)
        self._decisions = self.decision_times()
        self.dec_ns = as_ns(self._decisions) if len(self._decisions) else np.empty(0, np.int64)
        max_dte = max(c.target_dte + c.dte_tolerance, 2.0 * c.target_dte) + 1.0
        self.store = ChainStore.from_source(
            self.source,
            self.underlying,
            self._decisions,
            calls_only=True,
            max_dte=max_dte,
            progress=progress,
            select=self._chain_selection(),
        )
        self._spot_freshness()
        self._features = spot_features(
            self.bar_ns, self.close, self.bar, self.dec_ns, self._chain_spot
        )
        self._features["atm_iv"] = self._atm_iv()
        self._build_candidates()

    def _chain_selection(self) -> ChainSelection:
        """The chain rows this replay reads: the candidate band (widened by float margins),
        the ATM call of the expiry nearest target_dte, when calls can be bought back the
        later rows of any call that was ever in the band, and the first row (nearest expiry,
        lowest strike) only at the decisions whose last spot bar is older than the decision
        (`_spot_freshness` reads it there and nowhere else)."""
        c = self.config
        return ChainSelection(
            min_dte=c.target_dte - c.dte_tolerance - _BAND_MARGIN,
            max_dte=c.target_dte + c.dte_tolerance + _BAND_MARGIN,
            min_delta=c.target_delta - c.delta_tolerance - _BAND_MARGIN,
            max_delta=c.target_delta + c.delta_tolerance + _BAND_MARGIN,
            atm_dte=c.target_dte,
            follow=not c.hold_to_expiry,
            first_row_at=tuple(self.dec_ns[self._spot_stale_at()].tolist()),
        )

    def _spot_stale_at(self) -> np.ndarray:
        """Per decision: whether its last spot bar is older than the decision (from bars only)."""
        j = self._bar_at_or_before(self.dec_ns)
        bar_time = np.where(j >= 0, self.bar_ns[np.maximum(j, 0)], np.iinfo(np.int64).min)
        return bar_time < self.dec_ns

    def _spot_freshness(self) -> None:
        """Per decision: is the last spot bar older than the decision, and the chain's spot if fresher.

        After a gap in the spot bars the last close can be hours old while the chain quoted
        at the decision carries the underlying price of that instant (its nearest expiry's).
        """
        n = len(self.dec_ns)
        j = self._bar_at_or_before(self.dec_ns)
        bar_time = np.where(j >= 0, self.bar_ns[np.maximum(j, 0)], np.iinfo(np.int64).min)
        self.spot_stale = bar_time < self.dec_ns
        self._chain_spot = np.full(n, np.nan)
        self._spot_as_of = bar_time.copy()
        st = self.store
        for i in np.nonzero(self.spot_stale)[0]:
            sl = st.rows_at(int(i))
            if sl.stop <= sl.start:
                continue
            as_of = st.as_of_ns[sl]
            live = st.expiry_ns[sl] > self.dec_ns[i]
            if not live.any():
                continue
            # the freshest quote, and among those the nearest expiry (closest to the index)
            k = np.lexsort((st.expiry_ns[sl], -as_of, ~live))[0]
            if as_of[k] > bar_time[i]:
                self._chain_spot[i] = st.columns["underlying_price"][sl.start + k]
                self._spot_as_of[i] = as_of[k]

    def _atm_iv(self) -> np.ndarray:
        """Mark IV of the call nearest the money in the expiry nearest target_dte, per decision.

        Two grouped minimum passes over the rows with a usable IV (rows are stored by
        decision, then expiry and strike, so ties go to the earlier expiry, lower strike).
        """
        st = self.store
        out = np.full(len(self.dec_ns), np.nan)
        if len(st) == 0:
            return out
        dte = st.dte_days()
        iv = st.columns["mark_iv"]
        rows = np.nonzero(np.isfinite(iv) & (dte > 0))[0]
        if len(rows) == 0:
            return out
        dec = np.searchsorted(st.row_start, rows, side="right") - 1
        dte_gap = np.abs(dte[rows] - self.config.target_dte)
        money_gap = np.abs(st.columns["strike"][rows] / st.columns["underlying_price"][rows] - 1.0)
        keep = _group_min(dec, dte_gap)
        rows, dec, money_gap = rows[keep], dec[keep], money_gap[keep]
        keep = _group_min(dec, money_gap)
        rows, dec = rows[keep], dec[keep]
        first = np.r_[True, dec[1:] != dec[:-1]]
        out[dec[first]] = iv[rows[first]]
        return out

    def _build_candidates(self) -> None:
        c = self.config
        st = self.store
        col = st.columns
        dec_of_row = np.repeat(np.arange(len(st.times)), st.row_stop - st.row_start)
        dte = st.dte_days()
        bid, ask, mark = col["bid_price"], col["ask_price"], col["mark_price"]
        in_band = (
            st.is_call
            & (np.abs(dte - c.target_dte) <= c.dte_tolerance + 1e-9)
            & (np.abs(col["delta"] - c.target_delta) <= c.delta_tolerance + 1e-9)
        )
        after_end = st.expiry_ns > c.end_ts.value
        has_bid = np.isfinite(bid) & (bid > 0)
        no_bid = ~has_bid if c.require_bid else np.zeros(len(st), bool)
        below_min = (~(bid > c.min_bid_usd)) if c.min_bid_usd > 0 else np.zeros(len(st), bool)
        crossed = np.isfinite(bid) & np.isfinite(ask) & (bid >= ask)
        with np.errstate(invalid="ignore", divide="ignore"):
            spread_pct = (ask - bid) / ((ask + bid) / 2.0) * 100.0
        wide = np.isfinite(spread_pct) & (spread_pct > c.max_spread_pct)
        premium = sale_price(bid, ask, mark, c.fill, c.slippage_bps)
        fillable = np.isfinite(premium) & (premium > 0)
        # each removed call is counted once, by the first gate it fails, in this order
        remaining = in_band.copy()
        removed: dict[str, int] = {}
        for gate, fails in (
            ("expires_after_end", after_end),
            ("no_bid", no_bid),
            ("bid_below_min", below_min),
            ("crossed", crossed),
            ("spread_too_wide", wide),
            ("unfillable", ~fillable),
        ):
            hit = remaining & fails
            removed[gate] = int(hit.sum())
            remaining &= ~hit
        ok = remaining
        self.gate_counts = GateCounts(in_band=int(in_band.sum()), **removed, offered=int(ok.sum()))
        rows = np.nonzero(ok)[0]  # store order: decision, expiry, strike
        self.cand_row = rows
        self.cand_dec = dec_of_row[rows]
        self.cand_start = np.searchsorted(self.cand_dec, np.arange(len(self.dec_ns)), side="left")
        self.cand_stop = np.searchsorted(self.cand_dec, np.arange(len(self.dec_ns)), side="right")
        spot = col["underlying_price"][rows]
        prem = premium[rows]
        self.cand_premium = prem
        self.cand_dte = dte[rows]
        self.cand_fields = {
            "premium_pct": prem / spot * 100.0,
            "annualized_yield_pct": prem / spot * 100.0 * 365.0 / np.maximum(dte[rows], 1e-9),
            "strike_distance_pct": (col["strike"][rows] / spot - 1.0) * 100.0,
            "breakeven": col["strike"][rows] + prem,
        }

    # ------------------------------------------------------------------ queries
    def _decision_index(self, t: TimestampLike) -> int:
        ts = to_utc(t)
        i = int(np.searchsorted(self.dec_ns, ts.value))
        if i >= len(self.dec_ns) or self.dec_ns[i] != ts.value:
            raise KeyError(
                f"{ts.isoformat()} is not a decision time of this simulation "
                f"(every {self.config.decision_interval_bars} x {self.config.timeframe} "
                f"from {self.config.start_ts.isoformat()})"
            )
        return i

    def _history_hints(self) -> tuple[np.ndarray, np.ndarray]:
        """Point-in-time history hints of every candidate (harness.engine.hints), computed once."""
        if self._hints is None:
            c = self.config
            rows = self.cand_row
            expiry = self.store.expiry_ns[rows]
            expiries, which = np.unique(expiry, return_inverse=True)
            known = self._settlements
            prices: list[float] = []
            for e in expiries.tolist():
                if e in known:  # a delivery price already asked for (by int key, no Timestamp)
                    prices.append(known[e])
                    continue
                try:
                    prices.append(self.settlement_price(pd.Timestamp(e, tz="UTC")))
                except ValueError:  # no settlement data: that label is simply not history
                    prices.append(np.nan)
            settle = np.array(prices, dtype=float)[which.reshape(-1)]
            payoff = call_payoff(settle, self.store.columns["strike"][rows])
            dfee = delivery_fee(settle, payoff, c.delivery_fee_rate, c.fee_cap_fraction)
            f_open = self.store.columns["underlying_price"][rows]
            fee = trading_fee(f_open, self.cand_premium, c.fee_rate, c.fee_cap_fraction)
            realised = (self.cand_premium - fee - payoff - dfee) / f_open * 1e4
            self._hints = history_hints(
                self.dec_ns[self.cand_dec],
                expiry,
                self.store.columns["delta"][rows],
                self.cand_dte,
                realised,
            )
        return self._hints

    def _all_candidates(self) -> list[CallCandidate]:
        """Every candidate of every decision (the objects of `_candidate`), built in one pass.

        Columns become Python lists once and expiry/as_of Timestamps are made once per
        distinct instant, instead of indexing numpy scalars field by field per candidate.
        """
        if self._offered is not None:
            return self._offered
        st = self.store
        rows = self.cand_row
        col = st.columns

        def floats(x: np.ndarray) -> list[float]:
            return np.asarray(x, dtype=float).tolist()

        def opts(x: np.ndarray) -> list[float | None]:
            values = np.asarray(x, dtype=float)
            out: list[float | None] = values.tolist()  # type: ignore[assignment]
            for j in np.flatnonzero(np.isnan(values)).tolist():  # only the missing ones
                out[j] = None
            return out

        known = self._instants

        def stamps(ns: np.ndarray) -> list[pd.Timestamp]:
            uniq, inverse = np.unique(ns, return_inverse=True)
            keys = uniq.tolist()
            lack = [v for v in keys if v not in known]
            if lack:  # one conversion, then boxed; kept for the next band on this period
                made = pd.to_datetime(np.array(lack, dtype=np.int64), utc=True)
                known.update(zip(lack, made, strict=True))
            got = [known[v] for v in keys]
            return [got[j] for j in inverse.tolist()]

        hist_reward, hist_count = self._history_hints()
        f = self.cand_fields
        fields = {
            "instrument_name": [str(n) for n in st.names[rows].tolist()],
            "strike": floats(col["strike"][rows]),
            "expiry": stamps(st.expiry_ns[rows]),
            "as_of": stamps(st.as_of_ns[rows]),
            "underlying_price": floats(col["underlying_price"][rows]),
            "mark_price": floats(col["mark_price"][rows]),
            "bid_price": opts(col["bid_price"][rows]),
            "ask_price": opts(col["ask_price"][rows]),
            "mark_iv": floats(col["mark_iv"][rows]),
            "delta": floats(col["delta"][rows]),
            "gamma": floats(col["gamma"][rows]),
            "vega": floats(col["vega"][rows]),
            "theta": floats(col["theta"][rows]),
            "open_interest": floats(col["open_interest"][rows]),
            "mark_price_coin": opts(col["mark_price_coin"][rows]),
            "bid_price_coin": opts(col["bid_price_coin"][rows]),
            "ask_price_coin": opts(col["ask_price_coin"][rows]),
            "bid_iv": opts(col["bid_iv"][rows]),
            "ask_iv": opts(col["ask_iv"][rows]),
            "dte_days": floats(self.cand_dte),
            "premium_usd": floats(self.cand_premium),
            "premium_pct": floats(f["premium_pct"]),
            "annualized_yield_pct": floats(f["annualized_yield_pct"]),
            "strike_distance_pct": floats(f["strike_distance_pct"]),
            "breakeven": floats(f["breakeven"]),
            "hist_reward": opts(hist_reward),
            "hist_count": np.asarray(hist_count).astype(np.int64).tolist(),
        }
        n = len(rows)
        fields["underlying"] = [self.underlying] * n
        fields["kind"] = ["call"] * n
        self._offered = call_candidates(fields)
        return self._offered

    def _candidates_at(self, i: int) -> list[CallCandidate]:
        # Candidates are frozen: built once and reused by scoring and every replay of the
        # policies (and trials) sharing this simulator; a fresh list each call.
        return self._all_candidates()[self.cand_start[i] : self.cand_stop[i]]

    def candidates(self, t: TimestampLike) -> list[CallCandidate]:
        """Calls offered at decision time t: in the DTE and delta bands and liquid, by expiry then strike."""
        return self._candidates_at(self._decision_index(t))

    def candidates_frame(self) -> pd.DataFrame:
        """Every candidate of every decision as one frame (one row per decision x call)."""
        st = self.store
        rows = self.cand_row
        frame = st.frame.iloc[rows].reset_index(drop=True)
        frame.insert(0, "decision_time", pd.to_datetime(self.dec_ns[self.cand_dec], utc=True))
        frame["dte_days"] = self.cand_dte
        frame["premium_usd"] = self.cand_premium
        for k, v in self.cand_fields.items():
            frame[k] = v
        return frame

    def _parts(self) -> list[tuple[Any, ...]]:
        """Per decision: time, spot, the five features, iv_rv_spread, spot_as_of, spot_stale.

        Python values computed once for all decisions (columns to lists, one datetime per
        instant), so each `_state` is only the model's construction.
        """
        if self._state_parts is not None:
            return self._state_parts
        key = self._states_key()
        shared = self._shared_parts.get(key)
        if shared is not None:
            self._state_parts = shared
            return shared
        f = self._features
        n = len(self.dec_ns)

        def vals(name: str) -> list[float | None]:
            x = np.asarray(f[name], dtype=float)[:n]
            return [
                v if ok else None for v, ok in zip(x.tolist(), np.isfinite(x).tolist(), strict=True)
            ]

        def times(ns: np.ndarray) -> list[Any]:
            # one conversion of the column (the per-instant Timestamp was most of this method)
            return pd.to_datetime(ns, utc=True).to_pydatetime().tolist()  # type: ignore[no-any-return]

        r1, r7, rv, rv30, iv = (vals(k) for k in _STATE_FEATURES[1:])
        missing = np.iinfo(np.int64).min
        as_of = np.asarray(self._spot_as_of, dtype=np.int64)
        as_of_t = times(np.where(as_of == missing, 0, as_of))
        self._state_parts = list(
            zip(
                times(np.asarray(self.dec_ns, dtype=np.int64)),
                np.asarray(f["spot"], dtype=float)[:n].tolist(),
                r1,
                r7,
                rv,
                rv30,
                iv,
                [None if a is None or b is None else a - b for a, b in zip(iv, rv, strict=True)],
                [
                    None if m else t
                    for t, m in zip(as_of_t, (as_of == missing).tolist(), strict=True)
                ],
                [bool(x) for x in np.asarray(self.spot_stale)[:n].tolist()],
                strict=True,
            )
        )
        _keep(self._shared_parts, key, self._state_parts)
        return self._state_parts

    def _state(self, i: int, position: PositionState | None, cash: float) -> DecisionState:
        time, spot, r1, r7, rv7, rv30, iv, spread, as_of, stale = self._parts()[i]
        return DecisionState(
            time=time,
            underlying=self.underlying,
            spot=spot,
            return_1d=r1,
            return_7d=r7,
            realized_vol_7d=rv7,
            realized_vol_30d=rv30,
            atm_iv=iv,
            iv_rv_spread=spread,
            spot_as_of=as_of,
            spot_stale=stale,
            coins_held=self.config.initial_spot_position,
            cash_usd=cash,
            position=position,
        )

    def build_state(self, t: TimestampLike) -> DecisionState:
        """The flat (no open call) point-in-time state at decision time t."""
        return self._state(self._decision_index(t), None, 0.0)

    def flat_items(self) -> list[tuple[DecisionState, list[CallCandidate]]]:
        """(flat state, offered candidates) at every decision time, in order; states kept.

        The same as `build_state(t)` and `candidates(t)` for each of `decision_times()`;
        states are frozen, so trials sharing this simulator share them.
        """
        if self._flat_states is None:
            key = self._states_key()
            states = self._shared_states.get(key)
            if states is None:
                states = [self._state(i, None, 0.0) for i in range(len(self.dec_ns))]
                _keep(self._shared_states, key, states)
            self._flat_states = states
        return [(s, self._candidates_at(i)) for i, s in enumerate(self._flat_states)]

    def _states_key(self) -> bytes:
        """The bytes of every value `_parts` and a flat `_state` read: equal keys give equal
        states (a NaN or -0.0 that differs in its bits only misses the cache)."""
        if self._key is not None:
            return self._key
        n = len(self.dec_ns)
        f = self._features
        arrays = [
            np.asarray(self.dec_ns, dtype=np.int64),
            *(np.asarray(f[k], dtype=float)[:n] for k in _STATE_FEATURES),
            np.asarray(self._spot_as_of, dtype=np.int64),
            np.asarray(self.spot_stale, dtype=bool)[:n],
        ]
        head = f"{self.underlying}|{self.config.initial_spot_position!r}|{n}|".encode()
        self._key = head + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
        return self._key

    # ------------------------------------------------------------------ outcomes
    def _bar_at_or_before(self, t_ns: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bar_ns, t_ns, side="right") - 1

    def settlement_price(self, expiry: pd.Timestamp) -> float:
        """Price (USD) a call of `expiry` settles at: the delivery price, a TWAP, or a close at expiry.

        Sources that know the exchange delivery price (SettlementSource) give it; otherwise
        the average of 1-minute closes over the 30 minutes before expiry when the source has
        them; otherwise the close of the finest bar the source has labeled exactly at the
        expiry instant. A coarser bar (a 1d bar closes at 00:00, 8 hours before an 08:00
        expiry) is never used: without a bar at the expiry instant this raises ValueError.
        """
        key = int(expiry.value)
        if key in self._settlements:
            return self._settlements[key]
        price: float | None = None
        if isinstance(self.source, SettlementSource):
            price = self.source.settlement_price(self.underlying, expiry)
        if price is None:
            fine = self._source_bars(expiry - pd.Timedelta(minutes=29), expiry, "1m")
            if fine is not None and len(fine) == 30:
                price = float(fine["close"].mean())
        if price is None:
            price = self._close_at(expiry)
        self._settlements[key] = price
        return price

    def _source_bars(self, start: pd.Timestamp, end: pd.Timestamp, tf: str) -> pd.DataFrame | None:
        try:
            return self.source.get_spot_ohlc(self.underlying, start, end, tf)  # type: ignore[arg-type]
        except (ValueError, NotImplementedError, KeyError):
            return None

    def _close_at(self, expiry: pd.Timestamp) -> float:
        """Close of the finest bar labeled exactly at `expiry` (own bars first), else ValueError."""
        key = int(expiry.value)
        j = int(np.searchsorted(self.bar_ns, key))
        if j < len(self.bar_ns) and self.bar_ns[j] == key:
            return float(self.close[j])
        tried = []
        for tf in TIMEFRAMES:
            step = timeframe_delta(tf)
            if step >= self.bar or expiry != expiry.floor(step):
                continue
            tried.append(tf)
            bars = self._source_bars(expiry, expiry, tf)
            if bars is not None and len(bars) and bars.index[-1] == expiry:
                return float(bars["close"].iloc[-1])
        raise ValueError(
            f"cannot settle {self.underlying} calls expiring {expiry.isoformat()}: the source has "
            f"no delivery price, no 1-minute bars for the 30 minutes before expiry and no bar "
            f"labeled at the expiry instant (tried {', '.join(tried) or 'none'} and the "
            f"{self.config.timeframe} bars of the replay); add finer spot bars to the data"
        )

    def _ensure_paths(
        self,
        names: np.ndarray,
        first_bar: np.ndarray,
        last_bar: np.ndarray,
        instruments: _Instruments | None = None,
    ) -> None:
        """Load mark paths (USD per coin, on the bar grid) for instruments over bar ranges."""
        if len(names) == 0:
            return
        # one range per instrument: the union of its requests (candidates repeat instruments)
        codes, uniq_names = instruments if instruments is not None else _instruments(names)
        lo = np.full(len(uniq_names), np.iinfo(np.int64).max)
        hi = np.full(len(uniq_names), np.iinfo(np.int64).min)
        np.minimum.at(lo, codes, np.asarray(first_bar, dtype=np.int64))
        np.maximum.at(hi, codes, np.asarray(last_bar, dtype=np.int64))
        start, length = self._path_bounds(uniq_names)
        have = length >= 0
        # reload over the union with what is held: never shrink a path
        a = np.where(have, np.minimum(lo, start), lo)
        b = np.where(have, np.maximum(hi, start + length - 1), hi)
        short = np.flatnonzero(~have | (start > lo) | (start + length - 1 < hi))
        need: dict[str, tuple[int, int]] = {
            uniq_names[u]: (x, y)
            for u, x, y in zip(short.tolist(), a[short].tolist(), b[short].tolist(), strict=True)
        }
        if not need:
            return
        if isinstance(self.source, BulkChainSource) and isinstance(self.source, MarkRangeSource):
            # one request for every expiry: each instrument over its expiry group's window
            # (the group's first bar to its last, as the per-expiry requests below read it)
            names = list(need)
            first = np.array([need[n][0] for n in names], dtype=np.int64)
            last = np.array([need[n][1] for n in names], dtype=np.int64)
            groups, group_of = np.unique(last, return_inverse=True)
            group_first = np.full(len(groups), np.iinfo(np.int64).max)
            np.minimum.at(group_first, group_of, first)
            first = group_first[group_of]
            flat = self._mark_ranges(names, first, last)
            self._store_ranges(names, first, last, flat)
        elif isinstance(self.source, BulkChainSource):
            # one vectorized request per expiry: its instruments share the window's last bar
            by_last: dict[int, list[str]] = {}
            for n, (_, b) in need.items():
                by_last.setdefault(b, []).append(n)
            # one UTC index of every bar, sliced per expiry (building an index per call cost
            # more than the store's look-up of the marks)
            grid = _utc_ns_index(self.bar_ns)
            for b, group in by_last.items():
                a = min(need[n][0] for n in group)
                times = grid[a : b + 1]
                self._store_paths(group, a, self.source.option_marks(group, times))
        else:
            for n, (a, b) in need.items():
                ohlc = self.source.get_option_ohlc(
                    n,
                    pd.Timestamp(int(self.bar_ns[a]), tz="UTC"),
                    pd.Timestamp(int(self.bar_ns[b]), tz="UTC"),
                    self.config.timeframe,
                )
                grid = pd.to_datetime(self.bar_ns[a : b + 1], utc=True)
                closes = ohlc["close"].reindex(grid).to_numpy(dtype=float)
                self._store_paths([n], a, closes[None, :])

    def _mark_ranges(self, names: list[str], first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """The source's marks of names[i] over bars first[i]..last[i], concatenated in name order.

        A held path without a gap is the source's marks as they are over its bars (marks are
        point-in-time values: `MarkRangeSource`), so for one that grows on one side only the
        bars it lacks are asked for and its held marks fill the rest: the same values as
        asking for the whole range (a sweep's bands re-sell held calls from earlier bars).
        """
        # per name: (held marks, bars asked before them, bars asked after them) or None
        plan: list[tuple[np.ndarray, int, int] | None] = []
        ask_names: list[str] = []
        ask_first: list[int] = []
        ask_last: list[int] = []
        for n, a, b in zip(names, first.tolist(), last.tolist(), strict=True):
            held = self._paths.get(n)
            if held is not None and n not in self._gappy:
                start, path = held
                end = start + len(path) - 1
                before, after = start - a, b - end
                if before >= 0 and after >= 0 and (before == 0 or after == 0):
                    plan.append((path, before, after))
                    ask_names.append(n)
                    ask_first.append(a if before else end + 1)
                    ask_last.append(start - 1 if before else b)
                    continue
            plan.append(None)
            ask_names.append(n)
            ask_first.append(a)
            ask_last.append(b)
        flat = self.source.option_mark_ranges(  # type: ignore[attr-defined]
            ask_names,
            _utc_ns_index(self.bar_ns),
            np.array(ask_first, dtype=np.int64),
            np.array(ask_last, dtype=np.int64),
        )
        if all(p is None for p in plan):
            return np.asarray(flat, dtype=float)
        parts: list[np.ndarray] = []
        pos = 0
        for p, a, b in zip(plan, ask_first, ask_last, strict=True):
            got = flat[pos : pos + b - a + 1]
            pos += b - a + 1
            if p is None:
                parts.append(got)
            else:
                path, before, _ = p
                parts.extend((got, path) if before else (path, got))
        return np.concatenate(parts).astype(float, copy=False)

    def _seed_paths(
        self,
        names: np.ndarray,
        open_bar: np.ndarray,
        marks: np.ndarray,
        instruments: _Instruments | None = None,
        table: _PathTable | None = None,
    ) -> bool:
        """Give each path the chain's own mark at its sale bar when the source's path has none.

        A protocol-only source's option bars can start after the decision instant although
        the chain quotes a mark at it; a leading gap cannot be carried forward, so the sale
        bar is seeded with the mark the seller saw, then carried forward as usual. Seeds are
        kept so a path loaded again over a wider range gets them too. `table` holds the paths
        of `instruments` as they are; True when a path was changed (the table is then stale).
        """
        marks = np.asarray(marks, dtype=float)
        finite = np.flatnonzero(np.isfinite(marks))
        if len(finite) == 0:
            return False
        all_codes, uniq_names = instruments if instruments is not None else _instruments(names)
        codes = all_codes[finite]
        bars = np.asarray(open_bar, dtype=np.int64)[finite]
        values = marks[finite]
        # kept as a batch: they reach the per-instrument dicts only when a loaded path has a gap
        self._seed_batches.append((uniq_names, codes, bars, values))
        if sum(len(batch[1]) for batch in self._seed_batches) > _MAX_PENDING_SEEDS:
            self._seed_dict()  # bound the batches' memory
        # the mark of every sale bar inside its path, all instruments at once
        table = table if table is not None else self._path_table(uniq_names)
        k = bars - table.start[codes]
        inside = (k >= 0) & (k < table.length[codes])
        cell = np.where(inside, table.offset[codes] + k, 0)
        gap = inside & np.isnan(table.marks[cell]) if len(table.marks) else inside
        if not gap.any():
            return False  # every path already has a mark at every sale bar: nothing to seed
        bounds = _groups(codes)
        order = np.argsort(codes, kind="stable")
        sorted_bars, sorted_marks = bars[order].tolist(), values[order].tolist()
        for u in np.unique(codes[gap]).tolist():
            # in the callers' order: a seed fills a bar only while it has no mark (one carried
            # forward from an earlier seed counts as a mark)
            n = uniq_names[u]
            i, j = bounds[u]
            for a, mark in zip(sorted_bars[i:j], sorted_marks[i:j], strict=True):
                start, path = self._paths[n]
                x = a - start
                if 0 <= x < len(path) and np.isnan(path[x]):
                    path = path.copy()
                    path[x] = mark
                    self._paths[n] = (start, _ffill(path))
        return True

    def _seed_dict(self) -> dict[str, dict[int, float]]:
        """The seeds by instrument and sale bar, with every pending batch added in its order."""
        for uniq_names, codes, bars, values in self._seed_batches:
            # each instrument's seeds in the callers' order: later seeds win
            order = np.argsort(codes, kind="stable")
            sorted_bars, sorted_marks = bars[order].tolist(), values[order].tolist()
            for u, (i, j) in _groups(codes).items():
                self._seeds.setdefault(uniq_names[u], {}).update(
                    zip(sorted_bars[i:j], sorted_marks[i:j], strict=True)
                )
        self._seed_batches.clear()
        return self._seeds

    def _candidate_instruments(self, ks: np.ndarray) -> _Instruments:
        """`_instruments` of the names of candidate rows `ks` (every candidate's code made once)."""
        if self._cand_instruments is None:
            self._cand_instruments = _instruments(self.store.names[self.cand_row])
        codes, names = self._cand_instruments
        if len(ks) == len(codes) and np.array_equal(ks, np.arange(len(codes))):
            return codes, names
        sub, which = pd.factorize(codes[ks])
        return sub, [names[c] for c in which.tolist()]

    def _path_bounds(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """First bar and length of each held mark path (length -1 where none is held)."""
        held = [self._paths.get(n) for n in names]
        start = np.fromiter((0 if h is None else h[0] for h in held), np.int64, len(held))
        length = np.fromiter((-1 if h is None else len(h[1]) for h in held), np.int64, len(held))
        return start, length

    def _path_table(self, names: list[str]) -> _PathTable:
        """The held mark paths of `names` (all loaded) concatenated, with each one's bounds."""
        held = [self._paths[n] for n in names]
        start = np.fromiter((h[0] for h in held), np.int64, len(held))
        length = np.fromiter((len(h[1]) for h in held), np.int64, len(held))
        offset = np.cumsum(length) - length
        marks = np.concatenate([h[1] for h in held]) if held else np.empty(0)
        return _PathTable(start, length, offset, marks)

    def _store_paths(self, names: Sequence[str], start: int, raw: np.ndarray) -> None:
        """Keep freshly loaded mark paths (rows of `raw` from bar `start`): seeds fill their
        gaps, then marks carry forward."""
        raw = np.array(raw, dtype=float, ndmin=2)
        # which rows had a gap, before seeds fill it (a seeded path had a gap too)
        gap = np.isnan(raw).any(axis=1).tolist() if raw.size else [False] * len(names)
        seeds = self._seed_dict() if any(gap) else {}  # seeds fill gaps only
        for r, name in enumerate(names):
            for bar, mark in seeds.get(name, {}).items():
                j = bar - start
                if 0 <= j < raw.shape[1] and np.isnan(raw[r, j]):
                    raw[r, j] = mark
        filled = _ffill_rows(raw)
        for r, name in enumerate(names):
            self._paths[name] = (start, filled[r])
            self._mark_gappy(name, gap[r])

    def _store_ranges(
        self, names: Sequence[str], first: np.ndarray, last: np.ndarray, flat: np.ndarray
    ) -> None:
        """`_store_paths` for paths of different ranges: name i's marks over bars
        first[i]..last[i] are its slice of `flat` (concatenated in name order)."""
        flat = np.array(flat, dtype=float)
        widths = last - first + 1
        ends = np.cumsum(widths)
        starts = ends - widths
        nan = np.isnan(flat)
        gap = [False] * len(names)
        if nan.any():  # (before seeds: a seeded path had a gap too)
            count = np.r_[0, np.cumsum(nan)]
            gap = (count[ends] > count[starts]).tolist()
        seeds = self._seed_dict() if nan.any() else {}  # seeds fill gaps only
        for i, name in enumerate(names):
            for bar, mark in seeds.get(name, {}).items():
                j = bar - int(first[i])
                if 0 <= j < widths[i] and np.isnan(flat[starts[i] + j]):
                    flat[starts[i] + j] = mark
        filled = _ffill_segments(flat, starts)
        for name, a, s0, s1, g in zip(
            names, first.tolist(), starts.tolist(), ends.tolist(), gap, strict=True
        ):
            self._paths[name] = (a, filled[s0:s1])
            self._mark_gappy(name, g)

    def _mark_gappy(self, name: str, gap: bool) -> None:
        """Record whether `name`'s freshly held path came from marks with a gap."""
        if gap:
            self._gappy.add(name)
        else:
            self._gappy.discard(name)

    def _settlement_flows(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Settlement price, payoff and delivery fee per coin (USD) of candidate rows `ks`."""
        c = self.config
        rows = self.cand_row[ks]
        # one delivery price per expiry, not per candidate
        expiries, which = np.unique(self.store.expiry_ns[rows], return_inverse=True)
        known = self._settlements
        prices = [
            known[e] if e in known else self.settlement_price(pd.Timestamp(e, tz="UTC"))
            for e in expiries.tolist()
        ]
        settle = np.array(prices, dtype=float)[which.reshape(-1)]
        payoff = call_payoff(settle, self.store.columns["strike"][rows])
        dfee = delivery_fee(settle, payoff, c.delivery_fee_rate, c.fee_cap_fraction)
        return settle, payoff, dfee

    def _outcomes(self, ks: np.ndarray) -> dict[str, np.ndarray]:
        """Hold-to-expiry outcomes per coin of candidate rows `ks` (vectorized)."""
        c = self.config
        st = self.store
        rows = self.cand_row[ks]
        col = st.columns
        strike = col["strike"][rows]
        f_open = col["underlying_price"][rows]
        expiry = st.expiry_ns[rows]
        premium = self.cand_premium[ks]
        names = st.names[rows]
        settle, payoff, dfee = self._settlement_flows(ks)
        open_fee = trading_fee(f_open, premium, c.fee_rate, c.fee_cap_fraction)
        net = premium - open_fee - payoff - dfee
        coin = (premium - open_fee) / f_open - (payoff + dfee) / settle
        open_bar = self._bar_at_or_before(self.dec_ns[self.cand_dec[ks]])
        # marked bars: decision bar up to the last bar strictly before expiry
        last_bar = np.searchsorted(self.bar_ns, expiry, side="left") - 1
        last_bar = np.maximum(last_bar, open_bar)
        instruments = self._candidate_instruments(ks)
        cash, final = premium - open_fee, settle - payoff - dfee
        # drawdowns another band computed from the same inputs (gap-free paths only: their
        # cells never change, and seeds never apply to them)
        codes, uniq = instruments
        clean = np.array([n not in self._gappy for n in uniq], dtype=bool)
        found, dd = self._memo.lookup(
            DrawdownInputs(uniq, codes, clean[codes], open_bar, last_bar, cash, final)
        )
        todo = np.flatnonzero(~found)
        if len(todo):
            if len(todo) < len(ks):
                sub, which = pd.factorize(codes[todo])
                instruments = (sub, [uniq[c] for c in which.tolist()])
                names, open_bar_t, last_bar_t = names[todo], open_bar[todo], last_bar[todo]
                cash_t, final_t, marks = cash[todo], final[todo], col["mark_price"][rows[todo]]
            else:
                open_bar_t, last_bar_t, cash_t, final_t = open_bar, last_bar, cash, final
                marks = col["mark_price"][rows]
            self._ensure_paths(names, open_bar_t, last_bar_t, instruments)
            table = self._path_table(instruments[1])
            if self._seed_paths(names, open_bar_t, marks, instruments, table):
                table = self._path_table(instruments[1])  # a seed changed a path
            got = self._drawdowns(
                names, open_bar_t, last_bar_t, cash_t, final_t, instruments, table
            )
            dd[todo] = got
            codes_t, uniq_t = instruments
            clean_t = np.array([n not in self._gappy for n in uniq_t], dtype=bool)
            self._memo.store(
                DrawdownInputs(
                    uniq_t, codes_t, clean_t[codes_t], open_bar_t, last_bar_t, cash_t, final_t
                ),
                got,
            )
        return {
            "strike": strike,
            "underlying_price": f_open,
            "expiry": expiry,
            "premium": premium,
            "open_fee": open_fee,
            "delivery_fee": dfee,
            "settlement_price": settle,
            "payoff": payoff,
            "pnl_vs_hodl": net,
            "pnl_coin": coin,
            "max_drawdown_pct": dd,
            "open_bar": open_bar,
        }

    def _drawdowns(
        self,
        names: np.ndarray,
        open_bar: np.ndarray,
        last_bar: np.ndarray,
        cash: np.ndarray,
        final_value: np.ndarray,
        instruments: _Instruments | None = None,
        table: _PathTable | None = None,
    ) -> np.ndarray:
        """Max drawdown (%) of the covered position value S - C + cash from open to settlement.

        `table`, when given, holds the current paths of `instruments`."""
        out = np.zeros(len(names))
        if len(names) == 0:
            return out
        last_bar = np.asarray(last_bar, dtype=np.int64)
        open_bar = np.asarray(open_bar, dtype=np.int64)
        # S - C of every instrument once, on one flat array (its bars from its first open to
        # its last bar), built from the concatenated paths with index arithmetic; a
        # candidate's row is then a contiguous window of it, so all expiries go through one
        # loop of cache-sized chunks. Window cells past a row's last bar are masked below (NaN),
        # and NaN cells are skipped by the drawdown, so a row's values and their order are
        # those of a per-expiry matrix.
        width = last_bar - open_bar + 1
        cols = int(width.max()) + 1
        codes, uniq_names = instruments if instruments is not None else _instruments(names)
        seg_lo = np.full(len(uniq_names), np.iinfo(np.int64).max)
        seg_hi = np.full(len(uniq_names), np.iinfo(np.int64).min)
        np.minimum.at(seg_lo, codes, open_bar)
        np.maximum.at(seg_hi, codes, last_bar)
        table = table if table is not None else self._path_table(uniq_names)
        seg_len = seg_hi - seg_lo + 1
        seg_off = np.cumsum(seg_len) - seg_len
        total = int(seg_len.sum())
        cell = np.arange(total)
        bar = cell + np.repeat(seg_lo - seg_off, seg_len)
        at = cell + np.repeat(table.offset + seg_lo - seg_off - table.start, seg_len)
        # `cols` NaN cells at the end keep the last segment's windows inside the array
        flat = np.empty(total + cols)
        flat[total:] = np.nan
        if (seg_lo >= table.start).all() and (seg_hi < table.start + table.length).all():
            np.subtract(self.close[bar], table.marks[at], out=flat[:total])
        else:  # a bar outside its held path has no mark (NaN, skipped like a gap)
            k = bar - np.repeat(table.start, seg_len)
            inside = (k >= 0) & (k < np.repeat(table.length, seg_len))
            marks = np.where(inside, table.marks[np.where(inside, at, 0)], np.nan)
            np.subtract(self.close[bar], marks, out=flat[:total])
        windows = np.lib.stride_tricks.sliding_window_view(flat, cols)
        first = seg_off[codes] + open_bar - seg_lo[codes]
        # chunks of similar widths (narrowest first): each matrix is as wide as its widest row
        by_width = np.argsort(width, kind="stable")
        lo = 0
        while lo < len(names):
            hi = min(len(names), lo + max(1, _DRAWDOWN_CELLS // cols))
            idx = by_width[lo:hi]
            w = width[idx]
            n = int(w.max()) + 1
            values = windows[first[idx], :n]  # a copy (fancy index)
            values += cash[idx][:, None]
            # the cells past each row's last bar: its final value, then NaN (few: the rows of
            # a chunk have similar widths)
            values[np.arange(len(idx)), w] = (final_value + cash)[idx]
            tail = n - 1 - w
            if tail.any():
                row = np.repeat(np.arange(len(idx)) * n + w + 1, tail)
                values.reshape(-1)[row + _ramp(tail)] = np.nan
            out[idx] = covered_drawdown_pct(values)
            lo = hi
        return out

    def counterfactual_labels(self) -> pd.DataFrame:
        """Hold-to-expiry outcome of every candidate and of doing nothing, per decision (USD for `size`).

        One row per (decision_time, candidate) with action SELL_CALL plus one DO_NOTHING row
        per decision (reward 0 vs HODL). `pnl_vs_hodl`, `fees`, `premium` are for the
        configured trade size; `return_bps` is pnl_vs_hodl over the notional at open.
        """
        if self._labels is not None:
            return self._labels
        ks = np.arange(len(self.cand_row))
        o = self._outcomes(ks)
        self._label_flows = (o["payoff"], o["delivery_fee"])
        size = self.size
        st = self.store
        rows = self.cand_row
        col = st.columns
        n_dec, n_sell = len(self.dec_ns), len(rows)
        # order by (decision, sells before doing nothing, expiry, strike) with numpy keys:
        # decision indices follow decision times, and every decision has its DO_NOTHING row;
        # every column is then laid out in that order once (no frames to concatenate and sort)
        dec = np.r_[self.cand_dec, np.arange(n_dec)]
        order = np.lexsort(
            (
                np.r_[o["strike"], np.zeros(n_dec)],
                np.r_[o["expiry"], np.zeros(n_dec, dtype=np.int64)],
                np.r_[np.zeros(n_sell, dtype=np.int8), np.ones(n_dec, dtype=np.int8)],
                dec,
            )
        )
        sells = order < n_sell
        none = np.full(n_dec, np.nan)
        zero = np.zeros(n_dec)

        def put(sell: np.ndarray, nothing: np.ndarray) -> np.ndarray:
            return np.concatenate([sell, nothing])[order]

        names = np.full(n_sell + n_dec, None, dtype=object)
        names[:n_sell] = st.names[rows]
        pnl = put(size * o["pnl_vs_hodl"], zero)
        starts = np.r_[0, np.flatnonzero(np.diff(dec[order])) + 1]
        sizes = np.diff(np.r_[starts, len(pnl)])
        # NaN-skipping like groupby max; a period without decisions has no labels at all
        best = np.repeat(np.fmax.reduceat(pnl, starts), sizes) if len(pnl) else pnl
        no_time = np.full(n_dec, np.iinfo(np.int64).min)  # NaT
        labels = pd.DataFrame(
            {
                "decision_time": _utc_ns_index(put(self.dec_ns[self.cand_dec], self.dec_ns)),
                "action": pd.array(np.where(sells, "SELL_CALL", "DO_NOTHING"), dtype="str"),
                "instrument_name": pd.Series(names[order], dtype=object, copy=False),
                "strike": put(o["strike"], none),
                "expiry": _utc_ns_index(put(o["expiry"], no_time)),
                "dte_days": put(self.cand_dte, none),
                "delta": put(col["delta"][rows], none),
                "mark_iv": put(col["mark_iv"][rows], none),
                "underlying_price": put(o["underlying_price"], self._features["spot"]),
                "mark_price": put(col["mark_price"][rows], none),
                "bid_price": put(col["bid_price"][rows], none),
                "ask_price": put(col["ask_price"][rows], none),
                "premium": put(size * o["premium"], zero),
                "premium_per_coin": put(o["premium"], zero),
                "fees": put(size * (o["open_fee"] + o["delivery_fee"]), zero),
                "settlement_price": put(o["settlement_price"], none),
                "payoff": put(size * o["payoff"], zero),
                "in_the_money": put(o["payoff"] > 0, np.zeros(n_dec, dtype=bool)),
                "pnl_vs_hodl": pnl,
                "pnl_coin": put(size * o["pnl_coin"], zero),
                "return_bps": put(o["pnl_vs_hodl"] / o["underlying_price"] * 1e4, zero),
                "max_drawdown_pct": put(o["max_drawdown_pct"], none),
                "best_pnl_vs_hodl": best,
                "regret": best - pnl,
            }
        )
        self._labels = labels
        return labels

    # ------------------------------------------------------------------ trades
    def _trade(
        self, k: int, o: dict[str, np.ndarray], j: int, size: float, notes: str = ""
    ) -> SimulatedTrade:
        st = self.store
        r = int(self.cand_row[k])
        premium = float(o["premium"][j])
        settle = float(o["settlement_price"][j])
        payoff = float(o["payoff"][j])
        f_open = float(o["underlying_price"][j])
        open_fee = size * float(o["open_fee"][j])
        close_fee = size * float(o["delivery_fee"][j])
        leg = size * premium - open_fee - size * payoff - close_fee
        expiry = pd.Timestamp(int(o["expiry"][j]), tz="UTC")
        return SimulatedTrade(
            instrument_name=str(st.names[r]),
            underlying=self.underlying,
            size=size,
            open_time=pd.Timestamp(int(self.dec_ns[self.cand_dec[k]]), tz="UTC"),
            close_time=expiry,
            open_price=premium,
            close_price=payoff,
            pnl=size * (settle - f_open) + leg,
            pnl_vs_hodl=leg,
            max_drawdown_pct=float(o["max_drawdown_pct"][j]),
            notes=notes or ("expired in the money" if payoff > 0 else "expired worthless"),
            strike=float(o["strike"][j]),
            expiry=expiry,
            open_underlying_price=f_open,
            close_underlying_price=settle,
            settlement_price=settle,
            in_the_money=payoff > 0,
            premium_usd=size * premium,
            open_fee_usd=open_fee,
            close_fee_usd=close_fee,
            payoff_usd=size * payoff,
            pnl_coin=(size * premium - open_fee) / f_open - (size * payoff + close_fee) / settle,
            open_mark_price=float(st.columns["mark_price"][r]),
            open_delta=float(st.columns["delta"][r]),
            open_iv=float(st.columns["mark_iv"][r]),
        )

    def _nearest_target(self, i: int) -> int | None:
        lo, hi = self.cand_start[i], self.cand_stop[i]
        if hi <= lo:
            return None
        c = self.config
        ks = np.arange(lo, hi)
        rows = self.cand_row[ks]
        d_gap = np.abs(self.store.columns["delta"][rows] - c.target_delta)
        t_gap = np.abs(self.cand_dte[ks] - c.target_dte)
        order = np.lexsort((self.store.columns["strike"][rows], t_gap, d_gap))
        return int(ks[order[0]])

    def simulate_single_call(
        self, decision_time: TimestampLike, size: float
    ) -> SimulatedTrade | None:
        """Sell `size` coins of the call nearest target delta (then DTE) at t and hold to expiry.

        Returns None when no candidate passes the bands and gates; the reason is then in
        `last_no_trade_reason`.
        """
        i = self._decision_index(decision_time)
        k = self._nearest_target(i)
        if k is None:
            self.last_no_trade_reason = (
                f"no call within DTE {self.config.target_dte}±{self.config.dte_tolerance} and "
                f"delta {self.config.target_delta}±{self.config.delta_tolerance} passed the "
                f"liquidity gates at {to_utc(decision_time).isoformat()}"
            )
            log.info(self.last_no_trade_reason)
            return None
        self.last_no_trade_reason = None
        o = self._outcomes(np.array([k]))
        return self._trade(k, o, 0, size)

    def simulate_call(
        self, decision_time: TimestampLike, instrument_name: str, size: float
    ) -> SimulatedTrade:
        """Sell `size` coins of the offered call `instrument_name` at t and hold it to expiry.

        Raises KeyError naming the offered calls when it is not a candidate at t.
        """
        i = self._decision_index(decision_time)
        names = self.store.names[self.cand_row[self.cand_start[i] : self.cand_stop[i]]]
        hits = np.nonzero(names == instrument_name)[0]
        if len(hits) == 0:
            offered = ", ".join(str(n) for n in names) or "none"
            raise KeyError(
                f"{instrument_name} is not offered at {to_utc(decision_time).isoformat()} "
                f"(outside the DTE/delta bands or removed by a liquidity gate); offered: {offered}"
            )
        k = int(self.cand_start[i] + hits[0])
        return self._trade(k, self._outcomes(np.array([k])), 0, size)

    def trade_path(self, trade: SimulatedTrade) -> pd.DataFrame:
        """Per bar from the sale to expiry: spot, call mark and the trade's pnl vs HODL (USD).

        `pnl_vs_hodl` is premium - open fee - size x mark while open; the last row (expiry) is
        the settled figure. `covered_value` is size x spot plus that.
        """
        a = int(np.searchsorted(self.bar_ns, trade.open_time.value, side="left"))
        b = int(np.searchsorted(self.bar_ns, trade.close_time.value, side="left"))
        b = min(b, len(self.bar_ns))
        start, path = self._paths[trade.instrument_name]
        marks = path[a - start : b - start]
        cash = trade.premium_usd - trade.open_fee_usd
        spot = self.close[a:b]
        times = pd.to_datetime(self.bar_ns[a:b], utc=True)
        final_spot = (
            trade.settlement_price
            if trade.settlement_price is not None
            else trade.close_underlying_price
        )
        frame = pd.DataFrame(
            {
                "spot": np.r_[spot, final_spot],
                "call_mark": np.r_[marks, trade.payoff_usd / trade.size],
                "pnl_vs_hodl": np.r_[cash - trade.size * marks, trade.pnl_vs_hodl],
            },
            index=pd.DatetimeIndex(times.append(pd.DatetimeIndex([trade.close_time])), name="time"),
        )
        frame["covered_value"] = trade.size * frame["spot"] + frame["pnl_vs_hodl"]
        return frame

    def _match(self, i: int, choice: OptionSnapshot, offered: Sequence[CallCandidate]) -> int:
        for j, cand in enumerate(offered):
            if choice is cand or (
                choice.instrument_name == cand.instrument_name and choice.as_of == cand.as_of
            ):
                return int(self.cand_start[i]) + j
        names = ", ".join(c.instrument_name for c in offered) or "none"
        raise InvalidChoiceError(
            f"at {pd.Timestamp(int(self.dec_ns[i]), tz='UTC').isoformat()} the policy chose "
            f"{getattr(choice, 'instrument_name', choice)!r}, which is not one of the offered "
            f"candidates ({names})"
        )

    def simulate_policy(self, policy: PolicyFn, *, name: str | None = None) -> SimulationResult:
        """Replay `policy` over all decision times: hold coins, sell calls, mark every bar, settle.

        With `hold_to_expiry` the policy is asked only when no call is open. Without it, the
        policy is asked at every decision: returning a candidate while a call is open rolls
        (buys the open call back, then sells the new one); None keeps what is open.
        """
        c = self.config
        size = self.size
        decisions: list[DecisionRecord] = []
        opened: list[tuple[int, int]] = []  # (candidate row k, decision index)
        closes: dict[int, tuple[int, float, float]] = {}  # k -> (close dec, price, spot)
        pos: _Position | None = None
        pos_expiry = 0
        cash = 0.0
        stamps, names_at, stale_at = self._record_parts()
        idle = self._idle_record
        call_open = self._idle_records.setdefault("call open", [None] * len(self.dec_ns))
        for i, t in enumerate(self.dec_ns.tolist()):
            if pos is not None and t >= pos_expiry:
                cash -= size * self._settled_cost(pos.row)
                pos = None
            if pos is not None and c.hold_to_expiry:
                decisions.append(call_open[i] or idle(i, "call open"))
                continue
            position_state = self._position_state(pos, i) if pos is not None else None
            offered = self._candidates_at(i)
            state = self._state(i, position_state, cash)
            choice = policy(state, offered)
            if choice is None:
                note = "holding" if pos is not None else ("no candidates" if not offered else "")
                decisions.append(idle(i, note))
                continue
            k = self._match(i, choice, offered)
            if pos is not None:
                price, spot, fee = self._buyback(pos, i)
                closes[pos.row] = (i, price, spot)
                cash -= size * price + fee
                pos = None
            premium = float(self.cand_premium[k])
            f_open = float(self.store.columns["underlying_price"][self.cand_row[k]])
            fee = size * float(trading_fee(f_open, premium, c.fee_rate, c.fee_cap_fraction))
            pos = _Position(row=k, dec=i, open_fee=fee, premium=premium, size=size)
            pos_expiry = int(self.store.expiry_ns[self.cand_row[k]])
            cash += size * premium - fee
            opened.append((k, i))
            decisions.append(
                DecisionRecord(
                    decision_time=stamps[i],
                    candidate_names=names_at[i],
                    chosen=str(choice.instrument_name),
                    asked=True,
                    spot_stale=stale_at[i],
                )
            )
        trades = self._trades(opened, closes, size)
        return self._result(trades, decisions, name or getattr(policy, "__name__", "policy"))

    def _idle_record(self, i: int, note: str) -> DecisionRecord:
        """The record of decision i where nothing was sold ("call open": not asked).

        It depends on the decision and the note only, and records are frozen, so every replay
        on this simulator shares one object per (decision, note)."""
        made = self._idle_records.get(note)
        if made is None:
            made = self._idle_records[note] = [None] * len(self.dec_ns)
        rec = made[i]
        if rec is None:
            stamps, names_at, stale_at = self._record_parts()
            rec = made[i] = DecisionRecord(
                decision_time=stamps[i],
                candidate_names=names_at[i],
                spot_stale=stale_at[i],
                chosen=None,
                asked=note != "call open",
                note=note,
            )
        return rec

    def _settled_cost(self, k: int) -> float:
        """Payoff plus delivery fee per coin (USD) candidate k pays at expiry.

        Kept per candidate: from the labels when they exist, else for every candidate of k's
        expiry at once (its settlement price is asked for only when a replay reaches it)."""
        if self._settle_cost is None:
            self._settle_cost = np.zeros(len(self.cand_row))
            self._settle_known = np.zeros(len(self.cand_row), dtype=bool)
            if self._label_flows is not None:
                payoff, dfee = self._label_flows
                self._settle_cost[:] = payoff + dfee
                self._settle_known[:] = True
        if not self._settle_known[k]:
            expiry = self.store.expiry_ns[self.cand_row]
            ks = np.flatnonzero(expiry == expiry[k])
            _, payoff, dfee = self._settlement_flows(ks)
            self._settle_cost[ks] = payoff + dfee
            self._settle_known[ks] = True
        return float(self._settle_cost[k])

    def _record_parts(self) -> tuple[list[pd.Timestamp], list[tuple[str, ...]], list[bool]]:
        """Per decision: its Timestamp, the offered instrument names and spot_stale (kept:
        every replay on this simulator records them)."""
        if self._records is None:
            names = [str(n) for n in self.store.names[self.cand_row].tolist()]
            key = self._states_key()
            stamps = self._shared_stamps.get(key)
            if stamps is None:
                stamps = list(_utc_ns_index(self.dec_ns))  # made in C, one per decision
                _keep(self._shared_stamps, key, stamps)
            self._records = (
                stamps,
                [
                    tuple(names[a:b])
                    for a, b in zip(self.cand_start.tolist(), self.cand_stop.tolist(), strict=True)
                ],
                [bool(x) for x in self.spot_stale.tolist()],
            )
        return self._records

    def _position_state(self, pos: _Position, i: int) -> PositionState:
        st = self.store
        r = int(self.cand_row[pos.row])
        name = str(st.names[r])
        mark = self._mark_now(name, i)
        expiry = pd.Timestamp(int(st.expiry_ns[r]), tz="UTC")
        t = pd.Timestamp(int(self.dec_ns[i]), tz="UTC")
        return PositionState(
            instrument_name=name,
            strike=float(st.columns["strike"][r]),
            expiry=expiry.to_pydatetime(),
            size=pos.size,
            open_time=pd.Timestamp(int(self.dec_ns[pos.dec]), tz="UTC").to_pydatetime(),
            open_price=pos.premium,
            mark_price=mark,
            unrealized_pnl=pos.size * (pos.premium - mark) - pos.open_fee,
            dte_days=(expiry - t).total_seconds() / 86400.0,
        )

    def _store_row(self, name: str, i: int) -> int | None:
        sl = self.store.rows_at(i)
        hits = np.nonzero(self.store.names[sl] == name)[0]
        return int(sl.start + hits[0]) if len(hits) else None

    def _mark_now(self, name: str, i: int) -> float:
        r = self._store_row(name, i)
        if r is not None:
            return float(self.store.columns["mark_price"][r])
        j = int(self._bar_at_or_before(self.dec_ns[i : i + 1])[0])
        self._ensure_paths(np.array([name]), np.array([j]), np.array([j]))
        start, path = self._paths[name]
        return float(path[j - start])

    def _buyback(self, pos: _Position, i: int) -> tuple[float, float, float]:
        """Price per coin, spot and fee (USD) of buying the open call back at decision i."""
        c = self.config
        st = self.store
        name = str(st.names[self.cand_row[pos.row]])
        r = self._store_row(name, i)
        if r is None:
            mark = self._mark_now(name, i)
            spot = float(self._features["spot"][i])
            price = mark * (1.0 + c.slippage_bps / 1e4)
        else:
            col = st.columns
            spot = float(col["underlying_price"][r])
            price = float(
                purchase_price(
                    col["bid_price"][r],
                    col["ask_price"][r],
                    col["mark_price"][r],
                    c.fill,
                    c.slippage_bps,
                )
            )
            if not np.isfinite(price):
                price = float(col["mark_price"][r]) * (1.0 + c.slippage_bps / 1e4)
        fee = pos.size * float(trading_fee(spot, price, c.fee_rate, c.fee_cap_fraction))
        return price, spot, fee

    def _trades(
        self,
        opened: list[tuple[int, int]],
        closes: dict[int, tuple[int, float, float]],
        size: float,
    ) -> list[SimulatedTrade]:
        if not opened:
            return []
        ks = np.array([k for k, _ in opened])
        o = self._outcomes(ks)
        trades = []
        for j, (k, _) in enumerate(opened):
            trade = self._trade(k, o, j, size)
            if k in closes:
                trade = self._closed_early(trade, k, o, j, *closes[k])
            trades.append(trade)
        return trades

    def _closed_early(
        self,
        trade: SimulatedTrade,
        k: int,
        o: dict[str, np.ndarray],
        j: int,
        dec: int,
        price: float,
        spot: float,
    ) -> SimulatedTrade:
        c = self.config
        size = trade.size
        close_fee = size * float(trading_fee(spot, price, c.fee_rate, c.fee_cap_fraction))
        leg = trade.premium_usd - trade.open_fee_usd - size * price - close_fee
        open_bar = int(o["open_bar"][j])
        close_bar = int(self._bar_at_or_before(self.dec_ns[dec : dec + 1])[0])
        name = trade.instrument_name
        self._ensure_paths(np.array([name]), np.array([open_bar]), np.array([close_bar]))
        cash = trade.premium_usd / size - trade.open_fee_usd / size
        dd = self._drawdowns(
            np.array([name]),
            np.array([open_bar]),
            np.array([close_bar]),
            np.array([cash]),
            np.array([spot - price - close_fee / size]),
        )[0]
        return replace(
            trade,
            close_time=pd.Timestamp(int(self.dec_ns[dec]), tz="UTC"),
            close_price=price,
            pnl=size * (spot - trade.open_underlying_price) + leg,
            pnl_vs_hodl=leg,
            max_drawdown_pct=float(dd),
            notes="bought back before expiry",
            close_underlying_price=spot,
            settlement_price=None,
            in_the_money=spot > trade.strike,
            close_fee_usd=close_fee,
            payoff_usd=size * price,
            pnl_coin=(trade.premium_usd - trade.open_fee_usd) / trade.open_underlying_price
            - (size * price + close_fee) / spot,
        )

    def _result(
        self, trades: list[SimulatedTrade], decisions: list[DecisionRecord], name: str
    ) -> SimulationResult:
        c = self.config
        j0 = int(np.searchsorted(self.bar_ns, c.start_ts.value, side="left"))
        j1 = int(np.searchsorted(self.bar_ns, c.end_ts.value, side="right"))
        idx = _utc_ns_index(self.bar_ns[j0:j1]).rename("timestamp")
        spot = self.close[j0:j1]
        n = len(spot)
        cash = np.zeros(n)
        liability = np.zeros(n)
        for tr in trades:
            a = int(np.searchsorted(self.bar_ns, tr.open_time.value, side="left")) - j0
            # settled (or bought back) at the first bar labeled at or after the close instant
            b = int(np.searchsorted(self.bar_ns, tr.close_time.value, side="left")) - j0
            cash[a:] += tr.premium_usd - tr.open_fee_usd
            if b < n:
                cash[b:] -= tr.payoff_usd + tr.close_fee_usd
            else:
                # closes after the last bar of the window (a 1d bar at 00:00 before an 08:00
                # expiry): still open at the end, so it keeps being marked, not settled early
                b = n
            if b > a:
                start, path = self._paths[tr.instrument_name]
                marks = path[a + j0 - start : b + j0 - start]
                liability[a:b] += tr.size * marks
        hodl = c.initial_spot_position * spot
        equity = hodl + cash - liability
        eq = pd.Series(equity, index=idx, name="equity")
        hodl_s = pd.Series(hodl, index=idx, name="hodl")
        metrics = portfolio_metrics(eq, hodl_s, pd.Series(spot, index=idx), trades, self.bar)
        return SimulationResult(
            trades=trades,
            equity_curve=eq,
            equity_vs_hodl=(eq - hodl_s).rename("equity_vs_hodl"),
            metrics=metrics,
            hodl_curve=hodl_s,
            decisions=decisions,
            policy_name=name,
        )


# seed rows kept as batches before they are added to the per-instrument dicts (~24 MB)
_MAX_PENDING_SEEDS = 1 << 20
# cells per drawdown chunk (8 bytes each): a few hundred KiB stay in cache and bound memory
_DRAWDOWN_CELLS = 1 << 16


def _keep(shared: dict[bytes, Any], key: bytes, value: Any) -> None:
    """Keep `value` under `key`, dropping the oldest entry beyond _MAX_SHARED_STATES."""
    if len(shared) >= _MAX_SHARED_STATES:
        shared.pop(next(iter(shared)))
    shared[key] = value


def _groups(codes: np.ndarray) -> dict[int, tuple[int, int]]:
    """Code -> (first, stop) of its rows once `codes` is stably sorted."""
    if len(codes) == 0:
        return {}
    grouped = np.sort(codes, kind="stable")
    heads = np.r_[0, np.flatnonzero(np.diff(grouped)) + 1]
    return dict(
        zip(
            grouped[heads].tolist(),
            zip(heads.tolist(), np.r_[heads[1:], len(grouped)].tolist(), strict=True),
            strict=True,
        )
    )


def _ramp(lengths: np.ndarray) -> np.ndarray:
    """0, 1, .., n-1 for each n of `lengths`, concatenated."""
    ends = np.cumsum(lengths)
    return np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - lengths, lengths)


def _group_min(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Mask of the entries equal to the minimum of their group (`group` sorted ascending)."""
    starts = np.r_[0, np.nonzero(np.diff(group))[0] + 1]
    ids = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(group)]))
    return value == np.minimum.reduceat(value, starts)[ids]


def _ffill_rows(values: np.ndarray) -> np.ndarray:
    """`_ffill` of each row of a 2-D array (the input when it has no gap)."""
    if not np.isnan(values).any():
        return values
    idx = np.where(np.isnan(values), 0, np.arange(values.shape[1])[None, :])
    np.maximum.accumulate(idx, axis=1, out=idx)
    return np.take_along_axis(values, idx, axis=1)


def _ffill_segments(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """`_ffill` of each segment of a flat array (segments begin at `starts`, never carried over)."""
    if not np.isnan(values).any():
        return values
    head = np.zeros(len(values), dtype=bool)
    head[starts[starts < len(values)]] = True
    idx = np.where(np.isnan(values) & ~head, 0, np.arange(len(values)))
    np.maximum.accumulate(idx, out=idx)
    return values[idx]


def _utc_ns_index(ns: np.ndarray) -> pd.DatetimeIndex:
    """UTC DatetimeIndex of int64 nanoseconds, without pandas' generic parsing."""
    return pd.DatetimeIndex(np.asarray(ns, dtype=np.int64).view("M8[ns]")).tz_localize("UTC")


def _ffill(values: np.ndarray) -> np.ndarray:
    """Carry the last known mark forward over gaps (stale marks, never invented ones)."""
    v = np.asarray(values, dtype=float)
    if not np.isnan(v).any():
        return v
    idx = np.where(np.isnan(v), 0, np.arange(len(v)))
    np.maximum.accumulate(idx, out=idx)
    out = v[idx]
    return out
