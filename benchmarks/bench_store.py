"""Benchmark: the Parquet store path against the embedded market on the same values.

Writes one year of BTC calls (every expiry) into stores with `harness data import synthetic`
(daily 08:00 snapshots and 4-hour snapshots), then, each in a fresh process so peak memory
belongs to one path, builds the simulator (load) and the counterfactual labels of every
candidate through `FileDataSource` and through `SyntheticMarket` with the same config. Prints
wall and CPU seconds (the machine is shared: CPU time is the steadier figure), chain rows per
second, labels per candidate, peak RSS and the goals of issue 18. Then a pipeline figure:
a generated Tardis options_chain file -> `import_tardis` -> store -> `harness run`.

Each case runs `--rounds` store/synthetic pairs (order alternating): the two figures are
~0.2 s each and move by ~0.05 s with the host's speed, so the goals are judged on the
medians, with the count of rounds that met them.

    .venv/bin/python benchmarks/bench_store.py [--keep DIR] [--rounds 7] [--tardis-rows 2000000]
        [--skip-pipeline]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

CASES = {
    # snapshots, first snapshot, decision every N 1h bars
    "daily": ("1d", "2024-01-01T08:00", 24),
    "4h": ("4h", "2024-01-01T00:00", 4),
}
END = "2024-12-31"


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM, MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sim_config(case: str):
    from harness.types import CallSimulationConfig

    _, start, every_bars = CASES[case]
    return CallSimulationConfig(
        underlying="BTC",
        start=start,
        end=END,
        timeframe="1h",
        decision_interval_bars=every_bars,
        target_dte=7,
        target_delta=0.25,
    )


def measure(path_kind: str, case: str, store: Path) -> dict[str, float]:
    """Load + labels in this process for `path_kind` (store | synthetic)."""
    from harness.data.files import FileDataSource
    from harness.data.synthetic import SyntheticMarket
    from harness.simulator import CoveredCallSimulator

    cfg = sim_config(case)
    source = FileDataSource(store) if path_kind == "store" else SyntheticMarket(seed=7)
    w0, c0 = time.perf_counter(), time.process_time()
    sim = CoveredCallSimulator(source, cfg)
    w1, c1 = time.perf_counter(), time.process_time()
    labels = sim.counterfactual_labels()
    w2, c2 = time.perf_counter(), time.process_time()
    scan = getattr(source, "scan_stats", {})
    return {
        "load_s": w1 - w0,
        "load_cpu_s": c1 - c0,
        "labels_s": w2 - w1,
        "labels_cpu_s": c2 - c1,
        "candidates": len(sim.cand_row),
        "decisions": len(sim.decision_times()),
        "chain_rows": len(sim.store),
        "rows_scanned": int(scan.get("rows", 0)),
        "files_read": int(scan.get("files", 0)),
        "row_groups": int(scan.get("row_groups", 0)),
        "row_groups_read": int(scan.get("row_groups_read", 0)),
        "rows_decoded": int(scan.get("rows_decoded", 0)),
        # low days-to-expiry tiers a selective load reads after its point-in-time pass
        "low_row_groups_read": int(scan.get("low_row_groups_read", 0)),
        "low_rows_decoded": int(scan.get("low_rows_decoded", 0)),
        "low_rows_kept": int(scan.get("low_rows_kept", 0)),
        # low row groups whose band marks came from the partitions' marks files (not decoded)
        "low_row_groups_marks_file": int(scan.get("low_row_groups_marks_file", 0)),
        "low_rows_marks_file": int(scan.get("low_rows_marks_file", 0)),
        "low_decisions": int(scan.get("low_decisions", 0)),
        # decisions whose ATM rule the partitions' ATM summaries answered (no low tiers read)
        "summary_decisions": int(scan.get("summary_decisions", 0)),
        "label_rows": len(labels),
        "pnl_sum": float(labels["pnl_vs_hodl"].sum()),
        "peak_mib": peak_rss_mib(),
    }


def child(*args: str) -> dict:
    run = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def write_stores(root: Path) -> dict[str, tuple[Path, float, int]]:
    from harness.data.importers import import_synthetic

    out = {}
    for case, (every, start, _) in CASES.items():
        store = root / case
        t0 = time.perf_counter()
        if not (store / "BTC" / "meta.json").exists():
            summary = import_synthetic(
                "BTC", start, END, every, store, seed=7, calls_only=True, progress=False
            )
            rows = summary.rows_read
            took = time.perf_counter() - t0
        else:
            rows = sum(
                pq.ParquetFile(p).metadata.num_rows for p in store.glob("BTC/chain/*/part.parquet")
            )
            took = float("nan")
        out[case] = (store, took, rows)
    return out


def store_table(root: Path, rounds: int = 7) -> None:
    """Each case's store and synthetic children, `rounds` times in turn (the order alternates),
    one table row per child; the goals are judged on the medians of the rounds."""
    stores = write_stores(root)
    print("one year of BTC calls, every expiry; 1h bars, 7 DTE, 0.25 delta")
    for case, (store, took, rows) in stores.items():
        size = sum(p.stat().st_size for p in store.rglob("*.parquet")) / 2**20
        side = sum(p.stat().st_size for p in store.rglob("*.arrow")) / 2**20
        written = "reused (--keep)" if took != took else f"written in {took:.1f} s"
        print(
            f"  {case}: {rows:,} chain rows in the store ({size:.0f} MiB of Parquet, "
            f"{side:.0f} MiB of ATM summaries and low-tier marks), {written}"
        )
    print(
        f"{'case':>6} {'path':>9} {'load s':>7} {'(cpu)':>6} {'labels s':>8} {'(cpu)':>6} "
        f"{'rows/s':>10} {'us/cand':>8} {'(cpu)':>6} {'cands':>6} {'peak':>7}"
    )
    goals = []
    daily_us = float("nan")
    for case, (store, _, rows) in stores.items():
        # the rounds compare warm reads: files that left the page cache first cost a disk read
        # (2 s instead of 0.2 s for the 4h store once); that first read is timed and shown
        t0 = time.perf_counter()
        size = sum(len(p.read_bytes()) for p in store.rglob("*") if p.is_file())
        print(
            f"  {case}: store files read once first ({size / 2**20:.0f} MiB in "
            f"{time.perf_counter() - t0:.2f} s; the rounds read a warm page cache)"
        )
        ratios: list[float] = []
        ratios_cpu: list[float] = []
        label_us: list[float] = []
        load_s: list[float] = []
        store_total: list[float] = []
        synth_total: list[float] = []
        for r in range(rounds):
            kinds = ("store", "synthetic") if r % 2 == 0 else ("synthetic", "store")
            got = {kind: child(kind, case, str(store)) for kind in kinds}
            for kind in ("store", "synthetic"):
                _print_row(case, kind, got[kind], rows)
            s, y = got["store"], got["synthetic"]
            assert s["candidates"] == y["candidates"], "store and synthetic disagree on candidates"
            assert np.isclose(s["pnl_sum"], y["pnl_sum"], rtol=0, atol=1e-6), "pnl differs"
            ratios.append((s["load_s"] + s["labels_s"]) / (y["load_s"] + y["labels_s"]))
            ratios_cpu.append(
                (s["load_cpu_s"] + s["labels_cpu_s"]) / (y["load_cpu_s"] + y["labels_cpu_s"])
            )
            label_us.append(s["labels_s"] / s["candidates"] * 1e6)
            load_s.append(s["load_s"])
            store_total.append(s["load_s"] + s["labels_s"])
            synth_total.append(y["load_s"] + y["labels_s"])
        ratio, us, load = (float(np.median(v)) for v in (ratios, label_us, load_s))
        if case == "daily":
            daily_us = us
        print(
            f"  {case}: {s['files_read']} partitions read once, {s['row_groups_read']} of "
            f"{s['row_groups']} row groups decoded ({s['rows_decoded']:,} of {rows:,} rows), "
            f"{s['rows_scanned']:,} rows kept by the scan filter; store/synthetic "
            f"(load + labels) per round: {', '.join(f'{x:.2f}x' for x in ratios)} wall "
            f"(cpu {', '.join(f'{x:.2f}x' for x in ratios_cpu)}); median {ratio:.2f}x, "
            f"within 1.5x in {sum(x <= 1.5 for x in ratios)} of {rounds}"
        )
        if s["low_row_groups_read"] or s["low_row_groups_marks_file"]:
            print(
                f"    then {s['low_row_groups_read']} row groups of low days-to-expiry tiers "
                f"decoded ({s['low_rows_decoded']:,} rows) and the band marks of "
                f"{s['low_row_groups_marks_file']} more from the marks files (groups of "
                f"{s['low_rows_marks_file']:,} rows); {s['low_rows_kept']:,} rows kept: band "
                f"marks, tail and the windows of "
                f"{s['low_decisions'] - s['summary_decisions']:,} decisions; "
                f"{s['summary_decisions']:,} more answered by the ATM summaries"
            )
        typical = float(np.median(store_total)) / float(np.median(synth_total))
        print(
            f"    median load + labels: store {np.median(store_total):.3f} s, synthetic "
            f"{np.median(synth_total):.3f} s (ratio of the medians {typical:.2f}x)"
        )
        goals.append(
            (
                f"{case}: store load + labels within 1.5x of synthetic (median {ratio:.2f}x; "
                f"{sum(x <= 1.5 for x in ratios)} of {rounds} rounds)",
                ratio <= 1.5,
            )
        )
        if case == "4h":
            goals.append((f"4h: labels under 10 us per candidate (median {us:.1f} us)", us < 10))
            goals.append((f"4h: one year loaded in under 1 s (median {load:.2f} s)", load < 1.0))
    if "daily" in stores:
        # not one of the goals (its labels goal is the 4-hour year's): a labels call
        # has a fixed part (~17 ms: mark ranges, settlements) that 1,079 daily candidates
        # cannot spread under 10 us; the synthetic path shows the same (docs/performance.md)
        print(f"daily labels: {daily_us:.1f} us per candidate (median; both paths share the code)")
    print(f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("goals (issue 18):")
    for text, ok in goals:
        print(f"  [{'met' if ok else 'MISSED'}] {text}")


def _print_row(case: str, kind: str, r: dict, rows: int) -> None:
    # the year of chain rows both paths stand for, per second of load
    per_s = rows / r["load_s"]
    us = r["labels_s"] / max(r["candidates"], 1) * 1e6
    us_cpu = r["labels_cpu_s"] / max(r["candidates"], 1) * 1e6
    print(
        f"{case:>6} {kind:>9} {r['load_s']:>7.2f} {r['load_cpu_s']:>6.2f} "
        f"{r['labels_s']:>8.2f} {r['labels_cpu_s']:>6.2f} {per_s:>10,.0f} {us:>8.1f} {us_cpu:>6.1f} "
        f"{r['candidates']:>6} {r['peak_mib']:>5.0f}Mi"
    )


# ---------------------------------------------------------------- Tardis -> store -> run


def tardis_table(days: int, rows: int, start: str = "2024-05-01") -> pa.Table:
    """Tardis options_chain rows (the real 24-column header) quoted off the embedded market.

    Every instrument within 30 days of expiry is quoted each minute; `rows` of those quotes
    are kept at random, so instruments update at uneven times as in real ticker streams.
    """
    from harness.data.synthetic import SyntheticMarket
    from harness.data.tardis import TARDIS_COLUMNS

    market = SyntheticMarket(seed=7)
    rng = np.random.default_rng(7)
    t0 = pd.Timestamp(start, tz="UTC")
    times = pd.date_range(t0, t0 + pd.Timedelta(days=days), freq="1min", inclusive="left")
    parts = []
    per_chunk = max(rows // 24 // days, 1)
    for chunk in np.array_split(np.arange(len(times)), 24 * days):
        chain = market.chain_frame("BTC", times[chunk], max_dte=30.0)
        take = np.sort(rng.choice(len(chain), size=min(per_chunk, len(chain)), replace=False))
        parts.append(chain.iloc[take])
    q = pd.concat(parts, ignore_index=True)
    n = len(q)
    us = pd.DatetimeIndex(q["as_of"]).as_unit("us").asi8 - rng.integers(1, 59_000_000, n)
    f = q["underlying_price"].to_numpy()

    def coin(col: str) -> pa.Array:
        return pa.array((q[col] / f).round(4).to_numpy(), from_pandas=True)

    def pct(col: str) -> pa.Array:
        return pa.array((q[col] * 100).round(2).to_numpy(), from_pandas=True)

    expiry = pd.DatetimeIndex(q["expiry"])
    data = {
        "exchange": pa.array(["deribit"] * n),
        "symbol": pa.array(q["instrument_name"].astype(str).to_numpy()),
        "timestamp": pa.array(us),
        "local_timestamp": pa.array(us + rng.integers(100, 5000, n)),
        "type": pa.array(q["kind"].astype(str).to_numpy()),
        "strike_price": pa.array(q["strike"].to_numpy()),
        "expiration": pa.array(expiry.as_unit("us").asi8),
        "open_interest": pa.array(q["open_interest"].to_numpy()),
        "last_price": coin("mark_price"),
        "bid_price": coin("bid_price"),
        "bid_amount": pa.array(rng.uniform(0, 50, n).round(1)),
        "bid_iv": pct("bid_iv"),
        "ask_price": coin("ask_price"),
        "ask_amount": pa.array(rng.uniform(0, 50, n).round(1)),
        "ask_iv": pct("ask_iv"),
        "mark_price": coin("mark_price"),
        "mark_iv": pct("mark_iv"),
        "underlying_index": pa.array(["SYN.BTC"] * n),
        "underlying_price": pa.array(f.round(2)),
        "delta": pa.array(q["delta"].round(5).to_numpy()),
        "gamma": pa.array(q["gamma"].round(8).to_numpy()),
        "vega": pa.array(q["vega"].round(5).to_numpy()),
        "theta": pa.array(q["theta"].round(5).to_numpy()),
        "rho": pa.array(np.zeros(n)),
    }
    order = np.argsort(us, kind="stable")
    return pa.table({c: data[c] for c in TARDIS_COLUMNS}).take(order)


def pipeline(root: Path, rows: int, days: int) -> None:
    from harness.data.importers import import_tardis

    t0 = time.perf_counter()
    table = tardis_table(days, rows)
    path = root / "options_chain.csv"
    pacsv.write_csv(table, str(path), pacsv.WriteOptions(quoting_style="none"))
    gen = time.perf_counter() - t0
    size = path.stat().st_size / 2**20
    store = root / "tardis_store"
    t0, c0 = time.perf_counter(), time.process_time()
    summary = import_tardis([path], store, timeframe="1h", progress=False)
    imported, imported_cpu = time.perf_counter() - t0, time.process_time() - c0
    start = pd.Timestamp("2024-05-01", tz="UTC") + pd.Timedelta(hours=4)
    end = pd.Timestamp("2024-05-01", tz="UTC") + pd.Timedelta(days=days) - pd.Timedelta(hours=1)
    config = {
        "name": "tardis_pipeline",
        "market": {"source": "parquet", "path": str(store)},
        "simulation": {
            "underlying": "BTC",
            "start": start.isoformat(),
            "end": end.isoformat(),
            "timeframe": "1h",
            "decision_interval_bars": 4,
            "target_dte": 1.0,
            "dte_tolerance": 1.0,
            "target_delta": 0.3,
            "delta_tolerance": 0.2,
        },
        "policies": [
            {"name": "always_sell", "type": "rule", "rule": "always_sell"},
            {"name": "oracle", "type": "rule", "rule": "oracle"},
        ],
        "baseline": "always_sell",
        "bootstrap_resamples": 200,
    }
    cfg_path = root / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            str(cfg_path),
            "--out",
            str(root / "runs"),
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    ran = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ran_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if run.returncode != 0:
        print(run.stderr)
        raise SystemExit("harness run failed on the imported store")
    run_dir = Path(run.stdout.strip().splitlines()[-1])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    print(
        f"pipeline: Tardis options_chain csv, {summary.rows_read:,} rows over {days} days "
        f"({size:.0f} MiB; generated in {gen:.1f} s)"
    )
    print(
        f"  import_tardis -> store: {imported:.2f} s, cpu {imported_cpu:.2f} s "
        f"({summary.rows_read / imported:,.0f} rows/s, {summary.rows_written:,} 1h chain bars)"
    )
    print(
        f"  harness run (always_sell + oracle, {manifest['n_decisions']} decisions, process "
        f"start to report): {ran:.2f} s, cpu {ran_cpu:.2f} s"
    )
    print(
        f"  total import + run: {imported + ran:.2f} s (cpu {imported_cpu + ran_cpu:.2f} s); "
        f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", help="folder for the stores (reused when present)")
    parser.add_argument("--tardis-rows", type=int, default=2_000_000)
    parser.add_argument("--tardis-days", type=int, default=4)
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--rounds", type=int, default=7, help="store/synthetic pairs per case")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, case, store = args.child
        print(json.dumps(measure(kind, case, Path(store))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        store_table(root, max(1, args.rounds))
        if not args.skip_pipeline:
            pipeline(Path(tmp), args.tardis_rows, args.tardis_days)


if __name__ == "__main__":
    main()
