"""Benchmark: import a synthetic Tardis `options_chain` CSV into the Parquet store.

Generates Tardis-format files (the real 24-column header, microsecond timestamps, coin prices
for BTC inverse options and USDC prices for a quarter of SOL_USDC linear ones, IVs in percent,
empty cells for missing sides) in a temp dir, then imports each in a fresh
subprocess so peak memory (max RSS) belongs to the import alone. Prints rows/s and peak RSS for
two file sizes at the same block size (memory should not grow with the file) and for two block
sizes. Target: >= 500k rows/s.

    .venv/bin/python benchmarks/bench_tardis_import.py [--rows 4000000] [--gz]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from harness.data.tardis import TARDIS_COLUMNS

DAY_US = 86_400_000_000
START_US = 1_591_574_400_000_000  # 2020-06-08 00:00 UTC
EXPIRIES = ("9JUN20", "10JUN20", "12JUN20", "19JUN20", "26JUN20", "25SEP20")
EXPIRY_US = {
    "9JUN20": 1_591_689_600_000_000,
    "10JUN20": 1_591_776_000_000_000,
    "12JUN20": 1_591_948_800_000_000,
    "19JUN20": 1_592_553_600_000_000,
    "26JUN20": 1_593_158_400_000_000,
    "25SEP20": 1_601_020_800_000_000,
}


def make_table(rows: int, seed: int = 7, linear_share: float = 0.25) -> pa.Table:
    """A day of synthetic options_chain rows in time order (about 800 instruments).

    BTC inverse options (coin prices) and, for `linear_share` of the instruments, SOL_USDC
    linear options (USDC prices), so the import's linear path is measured too.
    """
    rng = np.random.default_rng(seed)
    strikes = np.arange(6000, 14000 + 1, 250)
    sol_strikes = np.arange(20, 45 + 1, 1)
    names, kinds, strike_col, expiry_col, linear_col = [], [], [], [], []
    for expiry in EXPIRIES:
        for k in strikes:
            for letter, kind in (("C", "call"), ("P", "put")):
                names.append(f"BTC-{expiry}-{k}-{letter}")
                kinds.append(kind)
                strike_col.append(float(k))
                expiry_col.append(EXPIRY_US[expiry])
                linear_col.append(False)
    n_sol = round(len(names) * linear_share / max(1e-9, 1.0 - linear_share))
    sol = [
        (expiry, k, letter, kind)
        for expiry in EXPIRIES
        for k in sol_strikes
        for letter, kind in (("C", "call"), ("P", "put"))
    ][:n_sol]
    for expiry, k, letter, kind in sol:
        names.append(f"SOL_USDC-{expiry}-{k}-{letter}")
        kinds.append(kind)
        strike_col.append(float(k))
        expiry_col.append(EXPIRY_US[expiry])
        linear_col.append(True)
    n_inst = len(names)
    inst = rng.integers(0, n_inst, rows)
    ts = START_US + np.sort(rng.integers(0, DAY_US - 1, rows))
    linear = np.asarray(linear_col)[inst]
    walk = np.cumsum(rng.normal(0, 0.5, rows))
    f = np.where(linear, 32.0 + walk / 300.0, 9700.0 + walk)
    strike = np.asarray(strike_col)[inst]
    # Inverse options are quoted in coin, linear ones in USDC per coin.
    mark_coin = np.maximum(np.abs(f - strike) / f * 0.3, 0.0005)
    mark = np.where(linear, mark_coin * f, mark_coin).round(4)
    bid = np.where(rng.random(rows) < 0.15, np.nan, (mark * 0.95).round(4))
    ask = np.where(rng.random(rows) < 0.10, np.nan, (mark * 1.05).round(4))
    iv = rng.uniform(40, 120, rows).round(2)
    greeks_missing = rng.random(rows) < 0.02
    data = {
        "exchange": pa.array(["deribit"] * rows).dictionary_encode(),
        "symbol": pa.DictionaryArray.from_arrays(pa.array(inst.astype(np.int32)), pa.array(names)),
        "timestamp": ts,
        "local_timestamp": ts + rng.integers(100, 5000, rows),
        "type": pa.DictionaryArray.from_arrays(pa.array(inst.astype(np.int32)), pa.array(kinds)),
        "strike_price": strike,
        "expiration": np.asarray(expiry_col, dtype=np.int64)[inst],
        "open_interest": rng.uniform(0, 500, rows).round(1),
        "last_price": mark,
        "bid_price": pa.array(bid, from_pandas=True),
        "bid_amount": rng.uniform(0, 50, rows).round(1),
        "bid_iv": pa.array(np.where(np.isnan(bid), np.nan, iv - 3), from_pandas=True),
        "ask_price": pa.array(ask, from_pandas=True),
        "ask_amount": rng.uniform(0, 50, rows).round(1),
        "ask_iv": pa.array(np.where(np.isnan(ask), np.nan, iv + 3), from_pandas=True),
        "mark_price": mark,
        "mark_iv": iv,
        "underlying_index": pa.array(
            np.where(linear, "index_price", "SYN.BTC-9JUN20").tolist()
        ).dictionary_encode(),
        "underlying_price": f.round(2),
    }
    for g, scale in (
        ("delta", 0.5),
        ("gamma", 0.001),
        ("vega", 3.0),
        ("theta", -40.0),
        ("rho", 0.1),
    ):
        values = (rng.random(rows) * scale).round(5)
        data[g] = pa.array(np.where(greeks_missing, np.nan, values), from_pandas=True)
    table = pa.table({c: data[c] for c in TARDIS_COLUMNS})
    # Write strings as plain strings (dictionary arrays are not a CSV type).
    return table.cast(
        pa.schema(
            [
                pa.field(f.name, pa.string()) if pa.types.is_dictionary(f.type) else f
                for f in table.schema
            ]
        )
    )


def write_file(path: Path, rows: int) -> None:
    """Write a synthetic Tardis file (gzip when the name ends in .gz)."""
    table = make_table(rows)
    options = pacsv.WriteOptions(quoting_style="none")
    if path.name.endswith(".gz"):
        with pa.CompressedOutputStream(str(path), "gzip") as out:
            pacsv.write_csv(table, out, options)
    else:
        pacsv.write_csv(table, str(path), options)


def run_import(path: Path, out: Path, block_size: int) -> dict[str, float]:
    """Import in this process; report rows, seconds and peak RSS (MiB)."""
    from harness.data.importers import import_tardis

    t0 = time.perf_counter()
    summary = import_tardis([path], out, timeframe="1h", progress=False, block_size=block_size)
    seconds = time.perf_counter() - t0
    peak_mib = peak_rss_mib()
    return {
        "rows": summary.rows_read,
        "seconds": seconds,
        "peak_mib": peak_mib,
        "bars": summary.rows_written,
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB.

    VmHWM belongs to the process image, so unlike ru_maxrss it does not include what the
    parent held when it forked this child.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def baseline_rss() -> float:
    """Peak RSS (MiB) of a process that only imports the harness and its libraries."""
    code = (
        "import harness.data.importers, pathlib;"
        "line = [l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith('VmHWM:')][0];"
        "print(int(line.split()[1]) / 1024.0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(run.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--gz", action="store_true", help="also benchmark a .csv.gz file")
    parser.add_argument(
        "--child", nargs=3, metavar=("FILE", "OUT", "BLOCK"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        path, out, block = args.child
        print(json.dumps(run_import(Path(path), Path(out), int(block))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        cases = [
            (args.rows // 4, 16 << 20, False),
            (args.rows, 16 << 20, False),
            (args.rows, 4 << 20, False),
        ]
        if args.gz:
            cases.append((args.rows, 16 << 20, True))
        print(f"baseline RSS (python + harness imports): {baseline_rss():.0f} MiB")
        print(
            f"{'rows':>10} {'file':>8} {'MiB':>6} {'block':>6} {'seconds':>8} {'rows/s':>10} {'peak RSS':>9}"
        )
        for i, (rows, block, gz) in enumerate(cases):
            path = tmpdir / f"options_chain_{rows}.csv{'.gz' if gz else ''}"
            if not path.exists():
                write_file(path, rows)
            out = tmpdir / f"store{i}"
            res = subprocess.run(
                [sys.executable, __file__, "--child", str(path), str(out), str(block)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            size_mib = path.stat().st_size / 2**20
            print(
                f"{int(r['rows']):>10} {'csv.gz' if gz else 'csv':>8} {size_mib:>6.0f} {block >> 20:>4}Mi "
                f"{r['seconds']:>8.2f} {r['rows'] / r['seconds']:>10,.0f} {r['peak_mib']:>7.0f}Mi"
            )


if __name__ == "__main__":
    main()
