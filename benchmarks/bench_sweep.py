"""Sweep speed: 100 rule trials (target_delta 0.10..0.40 x target_dte 3..14, two policies each)
over one year of synthetic BTC at 1h (configs/sweeps/delta_dte.yaml).

Prints: wall time of the sweep on the local backend (process pool); on the Ray backend
(including starting a loopback Ray); and the time of `--sequential` plain `harness run`
processes of sampled trial configs, extrapolated to all trials, with the ratio.
Run: .venv/bin/python benchmarks/bench_sweep.py [--trials 100] [--workers 2] [--sequential 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness.experiments.config import dump_config
from harness.experiments.sweep import run_sweep
from harness.experiments.sweep_spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "configs" / "sweeps" / "delta_dte.yaml"


def _sweep_file(tmp: Path, trials: int) -> Path:
    """The benchmark sweep: the full grid, or a seeded random sample of `trials` points of it."""
    spec = yaml.safe_load(SWEEP.read_text())
    spec["base"] = str(SWEEP.parent / spec["base"])
    if trials < 100:
        spec.update(mode="random", samples=trials, seed=0)
    path = tmp / "bench_sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _timed_sweep(path: Path, out: Path, backend: str, workers: int) -> float:
    t0 = time.perf_counter()
    s = run_sweep(path, backend=backend, workers=workers, out_dir=out, quiet=True, fresh=True)
    elapsed = time.perf_counter() - t0
    if s.n_complete != s.n_trials:
        raise SystemExit(f"{backend}: {s.n_failed} trials failed; see {s.sweep_dir}/sweep.json")
    print(f"{backend}: {s.n_trials} trials in {elapsed:.1f}s ({s.sweep_dir})")
    print(f"  {s.sentence}")
    return elapsed


def _sequential(path: Path, out: Path, n: int) -> float:
    """Mean wall time of `harness run` processes of `n` trial configs spread over the grid."""
    out.mkdir(parents=True, exist_ok=True)
    trials = load_sweep(path).trials
    pick = [trials[round(i * (len(trials) - 1) / max(n - 1, 1))] for i in range(n)]
    times = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for t in pick:
        cfg = out / f"{t.config.name}.yaml"
        cfg.write_text(dump_config(t.config))
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "harness.cli", "run", str(cfg), "--out", str(out), "-q"]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
        print(f"  harness run {t.label()}: {times[-1]:.1f}s")
    return sum(times) / len(times)


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--sequential", type=int, default=3, help="harness run processes to time")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--sequential-only", action="store_true", help="time only harness run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        path = _sweep_file(root, args.trials)
        n = len(load_sweep(path).trials)
        print(f"{n} trials, {args.workers} workers, {os.cpu_count()} CPUs")
        per_run = _sequential(path, root / "seq", args.sequential)
        seq_total = per_run * n
        print(f"sequential harness run: {per_run:.1f}s per run, {seq_total:.0f}s for {n}")
        if args.sequential_only:
            return
        local = _timed_sweep(path, root / "local", "local", args.workers)
        skip = args.skip_ray
        ray_s = None if skip else _timed_sweep(path, root / "ray", "ray", args.workers)
        print(f"local backend: {local:.1f}s total, {local / n:.2f}s per trial")
        if ray_s is not None:
            print(f"ray backend: {ray_s:.1f}s total (incl. Ray start), {ray_s / local:.2f}x local")
        print(
            f"sequential harness run: {per_run:.1f}s per run (mean of {args.sequential}), "
            f"{seq_total:.0f}s extrapolated to {n}; sweep speed-up {seq_total / local:.1f}x"
        )
        if ray_s is not None:
            print(f"sweep speed-up on Ray: {seq_total / ray_s:.1f}x")


if __name__ == "__main__":
    main()
