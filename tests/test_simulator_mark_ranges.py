"""Labels fetch every expiry's mark paths in one `option_mark_ranges` request.

Sources without it (per-expiry `option_marks`) must give the same labels, drawdowns included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.data.files import FileDataSource
from harness.data.importers import import_synthetic
from harness.data.synthetic import SyntheticMarket
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig

CFG = CallSimulationConfig(
    underlying="BTC",
    start="2024-03-01",
    end="2024-03-15",
    timeframe="1h",
    decision_interval_bars=4,
    target_dte=3.0,
    dte_tolerance=2.0,
)


class PerExpiry:
    """A source that counts its mark requests and offers only per-expiry `option_marks`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int]] = []  # (method, names requested)

    def __getattr__(self, name: str) -> Any:
        if name == "option_mark_ranges":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def option_marks(self, names, times):
        self.calls.append(("option_marks", len(names)))
        return self.inner.option_marks(names, times)


class Counting(PerExpiry):
    """`PerExpiry` plus the source's `option_mark_ranges` (counted too)."""

    def option_mark_ranges(self, names, times, first, last):
        self.calls.append(("option_mark_ranges", len(names)))
        return self.inner.option_mark_ranges(names, times, first, last)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labels")
    import_synthetic(
        "BTC", "2024-03-01", "2024-03-22", "4h", root, seed=5, calls_only=True, progress=False
    )
    return root


@pytest.mark.parametrize("kind", ["store", "synthetic"])
def test_labels_make_one_mark_request_for_every_expiry(kind: str, store: Path) -> None:
    def inner() -> Any:
        return FileDataSource(store) if kind == "store" else SyntheticMarket(seed=5)

    one = Counting(inner())
    sim = CoveredCallSimulator(one, CFG)
    before = len(one.calls)
    labels = sim.counterfactual_labels()
    requests = one.calls[before:]
    sells = labels[labels["action"] == "SELL_CALL"]
    assert sells["expiry"].nunique() > 5  # several expiries, still one request
    assert requests == [("option_mark_ranges", sells["instrument_name"].nunique())]

    per_expiry = PerExpiry(inner())
    old = CoveredCallSimulator(per_expiry, CFG)
    before = len(per_expiry.calls)
    expected = old.counterfactual_labels()
    assert [m for m, _ in per_expiry.calls[before:]] == ["option_marks"] * sells["expiry"].nunique()
    pd.testing.assert_frame_equal(labels, expected)
    assert labels["max_drawdown_pct"].gt(0).sum() > 10


def test_store_labels_read_no_file_again(store: Path) -> None:
    source = FileDataSource(store)
    sim = CoveredCallSimulator(source, CFG)
    scans = source.scan_stats["scans"]
    sim.counterfactual_labels()
    assert source.scan_stats["scans"] == scans
