"""Per-decision values shared by simulators on one period: equal to a fresh build, keyed by
every value they are made from, and bounded."""

from __future__ import annotations

import numpy as np

from harness import simulator as simulator_module
from harness.data.synthetic import SyntheticMarket
from harness.simulator import CoveredCallSimulator, SimulatorCaches
from harness.types import CallSimulationConfig

MARKET = SyntheticMarket(seed=4)


def _cfg(**kw: object) -> CallSimulationConfig:
    base = dict(
        underlying="BTC",
        start="2024-03-01",
        end="2024-03-25",
        timeframe="1h",
        decision_interval_bars=12,
        target_dte=7.0,
        dte_tolerance=2.0,
        target_delta=0.2,
    )
    return CallSimulationConfig(**{**base, **kw})


def _fresh(cfg: CallSimulationConfig) -> CoveredCallSimulator:
    return CoveredCallSimulator(MARKET, cfg, caches=SimulatorCaches())


def test_bands_of_one_dte_share_decision_values_equal_to_fresh_ones() -> None:
    caches = SimulatorCaches()
    a, b = (CoveredCallSimulator(MARKET, _cfg(target_delta=d), caches=caches) for d in (0.15, 0.3))
    assert a._parts() is b._parts()
    assert a._record_parts()[0] is b._record_parts()[0]
    assert a._record_parts()[1] != b._record_parts()[1]  # offered names: per band
    for sim, d in ((a, 0.15), (b, 0.3)):
        fresh = _fresh(_cfg(target_delta=d))
        assert sim._parts() == fresh._parts()
        assert sim._record_parts() == fresh._record_parts()


def test_decision_values_are_not_shared_when_a_feature_differs() -> None:
    """DTE 7 and 6.8: the same decision times, but other ATM IVs (the expiry nearest the
    target differs at some decisions): each simulator keeps its own values."""
    caches = SimulatorCaches()
    a, b = (CoveredCallSimulator(MARKET, _cfg(target_dte=dte), caches=caches) for dte in (7.0, 6.8))
    np.testing.assert_array_equal(a.dec_ns, b.dec_ns)
    assert a._parts() is not b._parts()
    assert [p[6] for p in a._parts()] != [p[6] for p in b._parts()]
    assert b._parts() == _fresh(_cfg(target_dte=6.8))._parts()
    assert a._parts() == _fresh(_cfg(target_dte=7.0))._parts()


def test_shared_decision_values_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(simulator_module, "_MAX_SHARED_STATES", 2)
    caches = SimulatorCaches()
    for dte in (5.0, 6.0, 7.0):
        sim = CoveredCallSimulator(MARKET, _cfg(target_dte=dte), caches=caches)
        sim._parts()
        sim._record_parts()
    assert len(caches.parts) == 2
    assert len(caches.stamps) == 2


def test_candidates_of_bands_sharing_instants_equal_fresh_ones() -> None:
    """The second band's candidates take their as_of and expiry Timestamps from the first
    band's (the same objects), and equal a fresh simulator's candidates field by field."""
    caches = SimulatorCaches()
    sims = [CoveredCallSimulator(MARKET, _cfg(target_delta=d), caches=caches) for d in (0.15, 0.2)]
    got = [sim._all_candidates() for sim in sims]
    a = {(c.as_of.value, c.instrument_name): c for c in got[0]}
    same = [
        (a[(c.as_of.value, c.instrument_name)], c)
        for c in got[1]
        if (c.as_of.value, c.instrument_name) in a
    ]
    assert same and all(x.as_of is y.as_of and x.expiry is y.expiry for x, y in same)
    for cands, d in zip(got, (0.15, 0.2), strict=True):
        fresh = _fresh(_cfg(target_delta=d))._all_candidates()
        assert cands == fresh
        assert [(c.as_of.unit, str(c.as_of.tz), c.expiry.unit) for c in cands] == [
            (c.as_of.unit, str(c.as_of.tz), c.expiry.unit) for c in fresh
        ]
