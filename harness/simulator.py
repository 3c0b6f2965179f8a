"""The covered-call replay engine: point-in-time states, candidates, trades and labels.

The market is loaded once into arrays (spot bars, a `ChainStore` of call chains at every
decision time, option mark paths on demand); every query after that is a slice or a
vectorized mask. A policy at decision time t sees only bars labeled <= t and the chain
quoted at t; hold-to-expiry outcomes (which use later data) exist only as labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from harness.data.source import BulkChainSource, MarketDataSource, SettlementSource
from harness.data.store import ChainStore, ProgressFn
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
    CallCandidate,
    CallSimulationConfig,
    DecisionRecord,
    OptionSnapshot,
    SimulatedTrade,
    SimulationResult,
)

log = logging.getLogger(__name__)

PolicyFn = Callable[[DecisionState, Sequence[CallCandidate]], OptionSnapshot | None]

_DAY_NS = 86400 * 10**9
_LOOKBACK = pd.Timedelta(days=31)  # enough history for the 30-day realized vol


class InvalidChoiceError(ValueError):
    """A policy returned an option that was not among the candidates it was offered."""


@dataclass(frozen=True)
class GateCounts:
    """How many calls in the DTE and delta band each liquidity gate removed (all decisions)."""

    in_band: int
    no_bid: int
    bid_below_min: int
    crossed: int
    spread_too_wide: int
    expires_after_end: int
    offered: int


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
    ) -> None:
        self.source = data_source
        self.config = config
        self.underlying = config.underlying
        self.bar = config.bar
        self.size = config.call_size  # whole lots of contract_size coins
        self.last_no_trade_reason: str | None = None
        self._paths: dict[str, tuple[int, np.ndarray]] = {}
        self._settlements: dict[int, float] = {}
        self._labels: pd.DataFrame | None = None
        self._outcome_cache: dict[str, np.ndarray] | None = None
        self._hints: tuple[np.ndarray, np.ndarray] | None = None
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
        )
        self._features = spot_features(self.bar_ns, self.close, self.bar, self.dec_ns)
        self._features["atm_iv"] = self._atm_iv()
        self._build_candidates()

    def _atm_iv(self) -> np.ndarray:
        """Mark IV of the call nearest the money in the expiry nearest target_dte, per decision."""
        st = self.store
        out = np.full(len(self.dec_ns), np.nan)
        if len(st) == 0:
            return out
        dec = np.repeat(np.arange(len(st.times)), st.row_stop - st.row_start)
        dte_gap = np.abs(st.dte_days() - self.config.target_dte)
        money_gap = np.abs(st.columns["strike"] / st.columns["underlying_price"] - 1.0)
        iv = st.columns["mark_iv"]
        ok = np.isfinite(iv) & (st.dte_days() > 0)
        order = np.lexsort((money_gap, dte_gap, ~ok, dec))
        first = np.r_[True, dec[order][1:] != dec[order][:-1]]
        best = order[first]
        good = ok[best]
        out[dec[best][good]] = iv[best][good]
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
        ok = in_band & ~after_end & ~no_bid & ~below_min & ~crossed & ~wide & fillable
        self.gate_counts = GateCounts(
            in_band=int(in_band.sum()),
            no_bid=int((in_band & no_bid).sum()),
            bid_below_min=int((in_band & below_min).sum()),
            crossed=int((in_band & crossed).sum()),
            spread_too_wide=int((in_band & wide).sum()),
            expires_after_end=int((in_band & after_end).sum()),
            offered=int(ok.sum()),
        )
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

    def _candidate(self, k: int) -> CallCandidate:
        st = self.store
        r = int(self.cand_row[k])
        col = st.columns

        def opt(x: float) -> float | None:
            return None if x != x else float(x)

        f = self.cand_fields
        hist_reward, hist_count = self._history_hints()
        return CallCandidate(
            instrument_name=str(st.names[r]),
            underlying=self.underlying,
            kind="call",
            strike=float(col["strike"][r]),
            expiry=pd.Timestamp(int(st.expiry_ns[r]), tz="UTC"),
            as_of=pd.Timestamp(int(st.as_of_ns[r]), tz="UTC"),
            underlying_price=float(col["underlying_price"][r]),
            mark_price=float(col["mark_price"][r]),
            bid_price=opt(col["bid_price"][r]),
            ask_price=opt(col["ask_price"][r]),
            mark_iv=float(col["mark_iv"][r]),
            delta=float(col["delta"][r]),
            gamma=float(col["gamma"][r]),
            vega=float(col["vega"][r]),
            theta=float(col["theta"][r]),
            open_interest=float(col["open_interest"][r]),
            mark_price_coin=opt(col["mark_price_coin"][r]),
            bid_price_coin=opt(col["bid_price_coin"][r]),
            ask_price_coin=opt(col["ask_price_coin"][r]),
            bid_iv=opt(col["bid_iv"][r]),
            ask_iv=opt(col["ask_iv"][r]),
            dte_days=float(self.cand_dte[k]),
            premium_usd=float(self.cand_premium[k]),
            premium_pct=float(f["premium_pct"][k]),
            annualized_yield_pct=float(f["annualized_yield_pct"][k]),
            strike_distance_pct=float(f["strike_distance_pct"][k]),
            breakeven=float(f["breakeven"][k]),
            hist_reward=opt(hist_reward[k]),
            hist_count=int(hist_count[k]),
        )

    def _history_hints(self) -> tuple[np.ndarray, np.ndarray]:
        """Point-in-time history hints of every candidate (harness.engine.hints), computed once."""
        if self._hints is None:
            c = self.config
            rows = self.cand_row
            expiry = self.store.expiry_ns[rows]
            settle_of: dict[int, float] = {}
            for e in np.unique(expiry):
                try:
                    settle_of[int(e)] = self.settlement_price(pd.Timestamp(int(e), tz="UTC"))
                except ValueError:  # no settlement data: that label is simply not history
                    settle_of[int(e)] = np.nan
            settle = np.array([settle_of[int(e)] for e in expiry])
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

    def _candidates_at(self, i: int) -> list[CallCandidate]:
        return [self._candidate(k) for k in range(self.cand_start[i], self.cand_stop[i])]

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

    def _state(self, i: int, position: PositionState | None, cash: float) -> DecisionState:
        f = self._features

        def val(name: str) -> float | None:
            x = f[name][i]
            return None if not np.isfinite(x) else float(x)

        iv, rv = val("atm_iv"), val("realized_vol_7d")
        return DecisionState(
            time=pd.Timestamp(int(self.dec_ns[i]), tz="UTC").to_pydatetime(),
            underlying=self.underlying,
            spot=float(f["spot"][i]),
            return_1d=val("return_1d"),
            return_7d=val("return_7d"),
            realized_vol_7d=rv,
            realized_vol_30d=val("realized_vol_30d"),
            atm_iv=iv,
            iv_rv_spread=None if iv is None or rv is None else iv - rv,
            coins_held=self.config.initial_spot_position,
            cash_usd=cash,
            position=position,
        )

    def build_state(self, t: TimestampLike) -> DecisionState:
        """The flat (no open call) point-in-time state at decision time t."""
        return self._state(self._decision_index(t), None, 0.0)

    # ------------------------------------------------------------------ outcomes
    def _bar_at_or_before(self, t_ns: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bar_ns, t_ns, side="right") - 1

    def settlement_price(self, expiry: pd.Timestamp) -> float:
        """Price (USD) a call of `expiry` settles at: the source's delivery price, else a TWAP.

        Sources that know the exchange delivery price (SettlementSource) give it; otherwise
        the average of 1-minute closes over the 30 minutes before expiry when the source has
        them, else the close of the bar at expiry.
        """
        key = int(expiry.value)
        if key in self._settlements:
            return self._settlements[key]
        price: float | None = None
        if isinstance(self.source, SettlementSource):
            price = self.source.settlement_price(self.underlying, expiry)
        if price is None:
            try:
                fine = self.source.get_spot_ohlc(
                    self.underlying, expiry - pd.Timedelta(minutes=29), expiry, "1m"
                )
            except (ValueError, NotImplementedError):
                fine = None
            if fine is not None and len(fine) == 30:
                price = float(fine["close"].mean())
        if price is None:
            j = self._bar_at_or_before(np.array([key]))[0]
            if j < 0 or self.bar_ns[j] < key - self.bar.value:
                raise ValueError(f"no spot bar at expiry {expiry.isoformat()} to settle against")
            price = float(self.close[j])
        self._settlements[key] = price
        return price

    def _ensure_paths(self, names: np.ndarray, first_bar: np.ndarray, last_bar: np.ndarray) -> None:
        """Load mark paths (USD per coin, on the bar grid) for instruments over bar ranges."""
        need: dict[str, tuple[int, int]] = {}
        for n, a, b in zip(names, first_bar, last_bar, strict=True):
            have = self._paths.get(n)
            if have is not None and have[0] <= a and have[0] + len(have[1]) - 1 >= b:
                continue
            lo, hi = need.get(n, (a, b))
            need[n] = (min(lo, a), max(hi, b))
        if not need:
            return
        if isinstance(self.source, BulkChainSource):
            # one vectorized request per expiry: its instruments share the window's last bar
            by_last: dict[int, list[str]] = {}
            for n, (_, b) in need.items():
                by_last.setdefault(b, []).append(n)
            groups = {(min(need[n][0] for n in g), b): g for b, g in by_last.items()}
            for (a, b), group in groups.items():
                times = pd.to_datetime(self.bar_ns[a : b + 1], utc=True)
                marks = self.source.option_marks(group, times)
                for n, row in zip(group, marks, strict=True):
                    self._paths[n] = (a, _ffill(row))
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
                self._paths[n] = (a, _ffill(closes))

    def _settlement_flows(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Settlement price, payoff and delivery fee per coin (USD) of candidate rows `ks`."""
        c = self.config
        rows = self.cand_row[ks]
        settle = np.array(
            [
                self.settlement_price(pd.Timestamp(int(e), tz="UTC"))
                for e in self.store.expiry_ns[rows]
            ]
        )
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
        self._ensure_paths(names, open_bar, last_bar)
        dd = self._drawdowns(names, open_bar, last_bar, premium - open_fee, settle - payoff - dfee)
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
    ) -> np.ndarray:
        """Max drawdown (%) of the covered position value S - C + cash from open to settlement."""
        out = np.zeros(len(names))
        by_last: dict[int, list[int]] = {}
        for r, b in enumerate(last_bar):
            by_last.setdefault(int(b), []).append(r)
        for b, rs in by_last.items():
            idx = np.array(rs)
            a0 = int(open_bar[idx].min())
            width = b - a0 + 1
            marks = np.full((len(idx), width), np.nan)
            for j, r in enumerate(idx):
                start, path = self._paths[names[r]]
                lo = max(a0, start)
                hi = min(b, start + len(path) - 1)
                if hi >= lo:
                    marks[j, lo - a0 : hi - a0 + 1] = path[lo - start : hi - start + 1]
            values = self.close[a0 : b + 1][None, :] - marks + cash[idx][:, None]
            cols = np.arange(width)[None, :]
            values = np.where(cols >= (open_bar[idx] - a0)[:, None], values, np.nan)
            values = np.concatenate([values, (final_value + cash)[idx][:, None]], axis=1)
            out[idx] = covered_drawdown_pct(values)
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
        size = self.size
        st = self.store
        rows = self.cand_row
        sell = pd.DataFrame(
            {
                "decision_time": pd.to_datetime(self.dec_ns[self.cand_dec], utc=True),
                "action": "SELL_CALL",
                "instrument_name": st.names[rows],
                "strike": o["strike"],
                "expiry": pd.to_datetime(o["expiry"], utc=True),
                "dte_days": self.cand_dte,
                "delta": st.columns["delta"][rows],
                "mark_iv": st.columns["mark_iv"][rows],
                "underlying_price": o["underlying_price"],
                "mark_price": st.columns["mark_price"][rows],
                "bid_price": st.columns["bid_price"][rows],
                "ask_price": st.columns["ask_price"][rows],
                "premium": size * o["premium"],
                "premium_per_coin": o["premium"],
                "fees": size * (o["open_fee"] + o["delivery_fee"]),
                "settlement_price": o["settlement_price"],
                "payoff": size * o["payoff"],
                "in_the_money": o["payoff"] > 0,
                "pnl_vs_hodl": size * o["pnl_vs_hodl"],
                "pnl_coin": size * o["pnl_coin"],
                "return_bps": o["pnl_vs_hodl"] / o["underlying_price"] * 1e4,
                "max_drawdown_pct": o["max_drawdown_pct"],
            }
        )
        spot = self._features["spot"]
        nothing = pd.DataFrame(
            {
                "decision_time": pd.to_datetime(self.dec_ns, utc=True),
                "action": "DO_NOTHING",
                "instrument_name": None,
                "underlying_price": spot,
                "premium": 0.0,
                "premium_per_coin": 0.0,
                "fees": 0.0,
                "payoff": 0.0,
                "in_the_money": False,
                "pnl_vs_hodl": 0.0,
                "pnl_coin": 0.0,
                "return_bps": 0.0,
                "max_drawdown_pct": np.nan,
            }
        )
        labels = pd.concat([sell, nothing], ignore_index=True)
        labels["_order"] = np.r_[np.zeros(len(sell)), np.ones(len(nothing))]
        labels = labels.sort_values(["decision_time", "_order", "expiry", "strike"], kind="stable")
        labels = labels.drop(columns="_order").reset_index(drop=True)
        best = labels.groupby("decision_time")["pnl_vs_hodl"].transform("max")
        labels["best_pnl_vs_hodl"] = best
        labels["regret"] = best - labels["pnl_vs_hodl"]
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
        for i in range(len(self.dec_ns)):
            t = int(self.dec_ns[i])
            if pos is not None and t >= pos_expiry:
                _, payoff, dfee = self._settlement_flows(np.array([pos.row]))
                cash -= size * float(payoff[0] + dfee[0])
                pos = None
            offered_names = tuple(
                str(n)
                for n in self.store.names[self.cand_row[self.cand_start[i] : self.cand_stop[i]]]
            )
            if pos is not None and c.hold_to_expiry:
                decisions.append(
                    DecisionRecord(
                        decision_time=pd.Timestamp(t, tz="UTC"),
                        candidate_names=offered_names,
                        chosen=None,
                        asked=False,
                        note="call open",
                    )
                )
                continue
            position_state = self._position_state(pos, i) if pos is not None else None
            offered = self._candidates_at(i)
            state = self._state(i, position_state, cash)
            choice = policy(state, offered)
            if choice is None:
                decisions.append(
                    DecisionRecord(
                        decision_time=pd.Timestamp(t, tz="UTC"),
                        candidate_names=offered_names,
                        chosen=None,
                        asked=True,
                        note="holding"
                        if pos is not None
                        else ("no candidates" if not offered else ""),
                    )
                )
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
                    decision_time=pd.Timestamp(t, tz="UTC"),
                    candidate_names=offered_names,
                    chosen=str(choice.instrument_name),
                    asked=True,
                )
            )
        trades = self._trades(opened, closes, size)
        return self._result(trades, decisions, name or getattr(policy, "__name__", "policy"))

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
        idx = pd.to_datetime(self.bar_ns[j0:j1], utc=True).rename("timestamp")
        spot = self.close[j0:j1]
        n = len(spot)
        cash = np.zeros(n)
        liability = np.zeros(n)
        for tr in trades:
            a = int(np.searchsorted(self.bar_ns, tr.open_time.value, side="left")) - j0
            # settled (or bought back) at the first bar labeled at or after the close instant
            b = int(np.searchsorted(self.bar_ns, tr.close_time.value, side="left")) - j0
            b = min(b, n - 1)
            cash[a:] += tr.premium_usd - tr.open_fee_usd
            cash[b:] -= tr.payoff_usd + tr.close_fee_usd
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


def _ffill(values: np.ndarray) -> np.ndarray:
    """Carry the last known mark forward over gaps (stale marks, never invented ones)."""
    v = np.asarray(values, dtype=float)
    if not np.isnan(v).any():
        return v
    idx = np.where(np.isnan(v), 0, np.arange(len(v)))
    np.maximum.accumulate(idx, out=idx)
    out = v[idx]
    return out
