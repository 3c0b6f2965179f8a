"""The Parquet store path and the embedded market give the same simulation on the same values.

`harness data import synthetic` writes the embedded market into a store laid out like a real
import; replaying it through `FileDataSource` must give identical candidates, premiums, fees,
payoffs, pnl_vs_hodl and trades, and identical drawdowns when the store holds a snapshot at
every bar. With sparser snapshots the marks between them are the last snapshot's (stale).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.data.files import FileDataSource, chain_month_path, chain_partition_path, read_meta
from harness.data.importers import import_synthetic, snapshot_timeframe
from harness.data.synthetic import SyntheticMarket
from harness.policies import always_sell
from harness.simulator import CoveredCallSimulator
from harness.types import CallSimulationConfig

UTC = "UTC"
START, END = "2024-02-01", "2024-02-06"
CFG = CallSimulationConfig(
    underlying="BTC",
    start=START,
    end=END,
    timeframe="1h",
    decision_interval_bars=4,
    target_dte=1.0,
    dte_tolerance=1.0,
)
LABEL_COLUMNS = [
    "decision_time",
    "action",
    "instrument_name",
    "strike",
    "premium",
    "fees",
    "settlement_price",
    "payoff",
    "pnl_vs_hodl",
    "pnl_coin",
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for every in ("1h", "4h"):
        root = tmp_path_factory.mktemp(f"store{every}")
        import_synthetic(
            "BTC", START, END, every, root, seed=7, calls_only=True, progress=False, max_dte=4.0
        )
        out[every] = root
    return out


@pytest.fixture(scope="module")
def reference() -> tuple[CoveredCallSimulator, pd.DataFrame]:
    sim = CoveredCallSimulator(SyntheticMarket(seed=7), CFG)
    return sim, sim.counterfactual_labels()


def _trade_fields(result) -> list[dict]:
    return [
        {k: v for k, v in dataclasses.asdict(t).items() if k != "max_drawdown_pct"}
        for t in result.trades
    ]


@pytest.mark.parametrize("every", ["1h", "4h"])
def test_store_and_synthetic_agree(every: str, stores, reference) -> None:
    ref_sim, ref_labels = reference
    src = FileDataSource(stores[every])
    sim = CoveredCallSimulator(src, CFG)
    labels = sim.counterfactual_labels()

    pd.testing.assert_frame_equal(
        sim.candidates_frame().astype({"instrument_name": object}),
        ref_sim.candidates_frame().astype({"instrument_name": object}),
    )
    assert len(ref_labels) > 50 and (ref_labels["action"] == "SELL_CALL").sum() > 20
    pd.testing.assert_frame_equal(
        labels[LABEL_COLUMNS].astype({"instrument_name": object}),
        ref_labels[LABEL_COLUMNS].astype({"instrument_name": object}),
    )
    a = ref_sim.simulate_policy(always_sell())
    b = sim.simulate_policy(always_sell())
    assert len(a.trades) >= 3
    assert _trade_fields(a) == _trade_fields(b)
    # every partition was read once: one pass for chains, marks and labels
    assert src.scan_stats["files"] == len(list(stores[every].glob("BTC/chain/*/part.parquet")))
    if every == "1h":
        # a snapshot at every bar: the same mark paths, so the same drawdowns and equity
        np.testing.assert_array_equal(
            labels["max_drawdown_pct"].to_numpy(), ref_labels["max_drawdown_pct"].to_numpy()
        )
        assert [t.max_drawdown_pct for t in a.trades] == [t.max_drawdown_pct for t in b.trades]
        np.testing.assert_array_equal(a.equity_curve.to_numpy(), b.equity_curve.to_numpy())
    else:
        # marks between 4h snapshots are the last snapshot: finite, measured at the store's cadence
        dd = labels.loc[labels["action"] == "SELL_CALL", "max_drawdown_pct"]
        assert np.isfinite(dd).all()
        assert src.snapshot_cadence("BTC") == pd.Timedelta(hours=4)


def test_sparse_store_marks_are_the_last_snapshot(stores) -> None:
    src = FileDataSource(stores["4h"])
    t0 = pd.Timestamp("2024-02-02 04:00", tz=UTC)
    chain = src.chain_frame("BTC", pd.DatetimeIndex([t0]), kinds=("call",))
    name = chain.loc[chain["expiry"] > t0 + pd.Timedelta(hours=8), "instrument_name"].iloc[0]
    hours = pd.date_range(t0, t0 + pd.Timedelta(hours=7), freq="h")
    marks = src.option_marks([name], hours)[0]
    snap = chain.set_index("instrument_name").loc[name, "mark_price"]
    # 04:00..07:00 carry the 04:00 snapshot; 08:00.. the next one (never an invented value)
    assert (marks[:4] == snap).all()
    assert np.isfinite(marks).all() and marks[4] != snap


def test_import_synthetic_layout_and_cli(tmp_path: Path, capsys) -> None:
    root = tmp_path / "daily"
    code = main(
        [
            "data",
            "import",
            "synthetic",
            "--seed",
            "7",
            "--underlying",
            "BTC",
            "--start",
            "2024-03-01T08:00",
            "--end",
            "2024-03-04",
            "--every",
            "1d",
            "--out",
            str(root),
            "-q",
        ]
    )
    assert code == 0
    assert "synthetic: BTC at 4h" in capsys.readouterr().out
    meta = read_meta(root, "BTC")
    assert meta["chain_timeframe"] == "4h" and meta["snapshot_every"] == "1d"
    assert json.loads((root / "BTC" / "meta.json").read_text())["spot_source"].startswith(
        "synthetic"
    )
    src = FileDataSource(root)
    assert src.snapshot_cadence("BTC") == pd.Timedelta(days=1)
    # the import holds a month of rows at once and writes the consolidated (month) layout
    assert chain_month_path(root, "BTC", pd.Timestamp("2024-03-02", tz=UTC)).is_file()
    assert not chain_partition_path(root, "BTC", pd.Timestamp("2024-03-02", tz=UTC)).exists()
    t = pd.Timestamp("2024-03-02 08:00", tz=UTC)
    got = src.chain_frame("BTC", pd.DatetimeIndex([t]))
    want = SyntheticMarket(seed=7).chain_frame("BTC", pd.DatetimeIndex([t]))
    assert set(got["kind"]) == {"call", "put"}
    key = ["instrument_name"]
    pd.testing.assert_frame_equal(
        got.sort_values(key)
        .reset_index(drop=True)
        .astype({c: object for c in ("instrument_name", "underlying", "kind")}),
        want.sort_values(key)
        .reset_index(drop=True)
        .astype({c: object for c in ("instrument_name", "underlying", "kind")}),
    )
    # daily snapshots on a 4h grid: chains are fresh-only (nothing offered at 12:00), while
    # marks carry the 08:00 snapshot until the next one
    assert len(src.chain_frame("BTC", pd.DatetimeIndex([t + pd.Timedelta(hours=4)]))) == 0
    name = want.loc[want["expiry"] > t + pd.Timedelta(days=2), "instrument_name"].iloc[0]
    later = pd.DatetimeIndex([t, t + pd.Timedelta(hours=4), t + pd.Timedelta(hours=23)])
    marks = src.option_marks([name], later)[0]
    assert (marks == want.set_index("instrument_name").loc[name, "mark_price"]).all()
    expiry = pd.Timestamp("2024-03-02 08:00", tz=UTC)
    assert src.settlement_price("BTC", expiry) == SyntheticMarket(seed=7).settlement_price(
        "BTC", expiry
    )
    spot = src.get_spot_ohlc("BTC", "2024-02-01", "2024-03-04", "1h")
    assert spot.index[0] <= pd.Timestamp("2024-02-01", tz=UTC)  # 31 days of feature history


def test_snapshot_timeframe() -> None:
    t8 = pd.Timestamp("2024-01-01 08:00", tz=UTC)
    assert snapshot_timeframe(t8, pd.Timedelta(days=1)) == "4h"
    assert snapshot_timeframe(t8.normalize(), pd.Timedelta(days=1)) == "1d"
    assert snapshot_timeframe(t8, pd.Timedelta(hours=4)) == "4h"
    assert snapshot_timeframe(t8 + pd.Timedelta(minutes=30), pd.Timedelta(hours=1)) == "15m"


def test_harness_run_on_a_sparse_store_records_stale_marks(tmp_path: Path) -> None:
    import yaml

    root = tmp_path / "daily"
    import_synthetic(
        "BTC",
        "2024-03-01T08:00",
        "2024-03-07",
        "1d",
        root,
        calls_only=True,
        max_dte=4.0,
        progress=False,
    )
    config = {
        "name": "sparse",
        "market": {"source": "parquet", "path": str(root)},
        "simulation": {
            "underlying": "BTC",
            "start": "2024-03-01T08:00",
            "end": "2024-03-06T08:00",
            "timeframe": "1h",
            "decision_interval_bars": 24,
            "target_dte": 1.0,
            "dte_tolerance": 0.5,
        },
        "policies": [{"name": "always_sell", "type": "rule", "rule": "always_sell"}],
        "baseline": "always_sell",
        "bootstrap_resamples": 100,
    }
    path = tmp_path / "sparse.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "-q"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["market_marks"]["stale_marks"] is True
    assert manifest["market_marks"]["snapshot_every"] == "1d"
    assert manifest["market_marks"]["bar"] == "1h"
    assert "stale" in manifest["market_marks"]["note"]


def test_scan_blocks_do_not_change_results(stores) -> None:
    whole = FileDataSource(stores["1h"])
    one_pass = CoveredCallSimulator(whole, CFG)
    src = FileDataSource(stores["1h"], block_days=1)
    daily = CoveredCallSimulator(src, CFG)
    assert src.scan_stats["scans"] >= 5  # one scan per day of the period
    pd.testing.assert_frame_equal(daily.candidates_frame(), one_pass.candidates_frame())
    pd.testing.assert_frame_equal(daily.counterfactual_labels(), one_pass.counterfactual_labels())
    # one pass opens every partition once; day blocks open only their period's month file
    files = len(list(stores["1h"].glob("BTC/chain/*/part.parquet")))
    assert whole.scan_stats["files"] == files
    assert 0 < src.scan_stats["files"] <= src.scan_stats["scans"]
    with pytest.raises(ValueError, match="block_days"):
        FileDataSource(stores["1h"], block_days=0)
