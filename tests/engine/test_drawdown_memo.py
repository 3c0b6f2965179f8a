"""Label drawdowns kept per period: reused ones equal a fresh computation, inputs that differ
miss, paths with gaps never reuse, and the memo is bounded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.data.synthetic import SyntheticMarket
from harness.engine.drawdown_memo import DrawdownInputs, DrawdownMemo
from harness.simulator import CoveredCallSimulator, SimulatorCaches
from harness.types import CallSimulationConfig

MARKET = SyntheticMarket(seed=6)


def _cfg(**kw: Any) -> CallSimulationConfig:
    base: dict[str, Any] = dict(
        underlying="BTC",
        start="2024-02-01",
        end="2024-03-10",
        timeframe="1h",
        decision_interval_bars=6,
        target_dte=4.0,
        dte_tolerance=2.0,
        target_delta=0.2,
    )
    return CallSimulationConfig(**{**base, **kw})


def _labels(source: Any, cfg: CallSimulationConfig, caches: SimulatorCaches) -> pd.DataFrame:
    return CoveredCallSimulator(source, cfg, caches=caches).counterfactual_labels()


class _Counting(DrawdownMemo):
    """A memo that counts the drawdowns it handed out."""

    hits = 0

    def lookup(self, inputs: DrawdownInputs) -> tuple[np.ndarray, np.ndarray]:
        found, dd = super().lookup(inputs)
        self.hits += int(found.sum())
        return found, dd


def _shared(memo: DrawdownMemo | None = None) -> SimulatorCaches:
    return SimulatorCaches(drawdowns=memo if memo is not None else _Counting())


@pytest.mark.parametrize(
    "second",
    [
        {"target_delta": 0.25},  # another band: same inputs where the bands overlap
        {"slippage_bps": 40.0},  # same band, other cash (premium)
        {"fee_rate": 0.0006},  # same band, other cash (open fee)
        {"delivery_fee_rate": 0.01},  # same band, other final value (ITM calls)
        {"fill": "mid"},
    ],
)
def test_reused_drawdowns_equal_fresh_labels(second: dict[str, Any]) -> None:
    caches = _shared()
    first = _cfg()
    other = _cfg(**second)
    _labels(MARKET, first, caches)
    got = _labels(MARKET, other, caches)
    want = _labels(MARKET, other, SimulatorCaches())
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    if "target_delta" in second or "delivery_fee_rate" in second:
        # overlapping calls (and OTM calls, whose final value the delivery fee leaves) reuse
        assert caches.drawdowns.hits > 0  # type: ignore[attr-defined]


def test_trades_take_their_labels_drawdowns_and_equal_a_fresh_replay() -> None:
    from harness.policies.rules import always_sell

    caches = _shared()
    sim = CoveredCallSimulator(MARKET, _cfg(), caches=caches)
    sim.counterfactual_labels()
    before = caches.drawdowns.hits  # type: ignore[attr-defined]
    got = sim.simulate_policy(always_sell(0.2))
    assert caches.drawdowns.hits > before  # type: ignore[attr-defined]
    want = CoveredCallSimulator(MARKET, _cfg(), caches=SimulatorCaches()).simulate_policy(
        always_sell(0.2)
    )
    assert got.trades and got.trades == want.trades


class _Gappy:
    """The synthetic market with no mark at every fifth bar (paths with gaps)."""

    def __init__(self, inner: SyntheticMarket) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def option_mark_ranges(self, names, times, first, last):
        out = self.inner.option_mark_ranges(names, times, first, last)
        bars = np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last, strict=True)])
        return np.where(bars % 5 == 0, np.nan, out) if len(bars) else out


def test_paths_with_gaps_never_reuse_a_drawdown() -> None:
    source = _Gappy(MARKET)
    caches = _shared()
    for delta in (0.2, 0.25):
        got = _labels(source, _cfg(target_delta=delta), caches)
        want = _labels(source, _cfg(target_delta=delta), SimulatorCaches())
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert caches.drawdowns.hits == 0  # type: ignore[attr-defined]


def test_the_memo_is_bounded_and_stays_right() -> None:
    sells = _labels(MARKET, _cfg(target_delta=0.15), SimulatorCaches())["action"] == "SELL_CALL"
    first = int(sells.sum())
    memo = _Counting(max_entries=first + 10)  # the next band's new entries do not fit
    caches = _shared(memo)
    for delta in (0.15, 0.25, 0.15):
        got = _labels(MARKET, _cfg(target_delta=delta), caches)
        assert 0 < len(memo) <= first + 10
        want = _labels(MARKET, _cfg(target_delta=delta), SimulatorCaches())
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    # the 0.25 band dropped the 0.15 band's entries: its second run found none of them
    assert memo.hits < first


def test_lookup_misses_unless_every_input_is_equal() -> None:
    memo = DrawdownMemo()
    names = ["A", "B"]
    codes = np.array([0, 1, 0])
    bars = np.array([5, 5, 6])
    last = np.array([20, 30, 20])
    cash = np.array([1.0, 2.0, 3.0])
    final = np.array([0.5, 0.25, -0.0])
    stored = DrawdownInputs(names, codes, np.ones(3, bool), bars, last, cash, final)
    memo.store(stored, np.array([7.0, 8, 9]))
    usable = np.ones(3, bool)
    again = ["B", "A"], np.array([1, 0, 1]), usable
    found, dd = memo.lookup(DrawdownInputs(*again, bars, last, cash, final))
    assert found.tolist() == [True, True, True]
    assert dd.tolist() == [7.0, 8.0, 9.0]
    for changed in (
        (np.array([5, 5, 7]), last, cash, final),
        (bars, np.array([20, 30, 21]), cash, final),
        (bars, last, np.array([1.0, 2.0, np.nextafter(3.0, 4.0)]), final),
        (bars, last, cash, np.array([0.5, 0.25, 0.0])),  # -0.0 vs 0.0: other bits
    ):
        found, _ = memo.lookup(DrawdownInputs(*again, *changed))
        assert found.tolist() == [True, True, False]
    unusable = DrawdownInputs(
        ["B", "A"], np.array([1, 0, 1]), np.zeros(3, bool), bars, last, cash, final
    )
    found, _ = memo.lookup(unusable)
    assert not found.any()
