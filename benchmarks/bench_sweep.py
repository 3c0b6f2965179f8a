"""Sweep speed: 100 rule trials (target_delta 0.10..0.40 x target_dte 3..14, two policies each)
over one year of synthetic BTC at 1h (configs/sweeps/delta_dte.yaml).

Prints, each with the load average (`os.getloadavg`, other jobs share the machine) and the CPU
time used: one `harness sweep` process on the local backend (process pool), imports and
start-up included like the `harness run` processes it is compared with; the same on the Ray
backend (including starting a loopback Ray); and `--sequential` real `harness run` processes of trial configs
spread over the grid (their mean times the trial count is the sequential figure; with
`--sequential` equal to the trial count nothing is extrapolated), with the ratios.

The host's speed drifts by tens of percent within minutes, so one measurement of each can
land in different phases. `--rounds R` repeats the three measurements R times in turn
(sequential processes, local sweep, Ray sweep), prints each round's ratios, and judges the
goals on their medians, saying in how many rounds each was met.
Run: .venv/bin/python benchmarks/bench_sweep.py [--trials 100] [--workers 2] [--sequential 5]
     [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness.experiments.config import dump_config
from harness.experiments.sweep_spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "configs" / "sweeps" / "delta_dte.yaml"


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _host_speed() -> str:
    """A fixed pure-Python loop's CPU seconds: how fast this (virtual) machine runs right now.

    The host's speed drifts by tens of percent over an hour with no job of ours running;
    figures from different moments compare only together with this line.
    """
    c0 = time.process_time()
    total = 0
    for i in range(10_000_000):
        total += i
    return f"host speed: 10M-step Python loop {time.process_time() - c0:.2f}s cpu"


def _cpu() -> float:
    """CPU seconds (user + system) of this process, its threads and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _sweep_file(tmp: Path, trials: int) -> Path:
    """The benchmark sweep: the full grid, or a seeded random sample of `trials` points of it."""
    spec = yaml.safe_load(SWEEP.read_text())
    spec["base"] = str(SWEEP.parent / spec["base"])
    if trials < 100:
        spec.update(mode="random", samples=trials, seed=0)
    path = tmp / "bench_sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _timed_sweep(path: Path, out: Path, backend: str, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds of one `harness sweep` process (imports and start-up included, as
    for the sequential `harness run` processes it is compared with)."""
    print(f"{backend}: starting ({_load()})", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(path), "--out", str(out)]
    cmd += ["--backend", backend, "--workers", str(workers), "--fresh", "--quiet"]
    c0, t0 = _cpu(), time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed, driver_cpu = time.perf_counter() - t0, _cpu() - c0
    sweep_dir = next(out.iterdir())
    data = json.loads((sweep_dir / "sweep.json").read_text())
    if done.returncode != 0 or data.get("status") != "complete":
        raise SystemExit(f"{backend}: sweep failed ({done.stderr[-2000:]}); see {sweep_dir}")
    # pool and Ray workers are not waited-for children of the harness process: their CPU comes
    # from sweep.json (the forkserver's own imports are in neither figure)
    trial_cpu = [t["cpu_s"] for t in data["trials"]]
    cpu = driver_cpu + sum(trial_cpu)
    first = sorted(trial_cpu, reverse=True)[:3]
    print(
        f"{backend}: {len(trial_cpu)} trials in {elapsed:.1f}s wall (the whole `harness sweep` "
        f"process; {data['elapsed_s']:.1f}s from its start of the trials to the last one), "
        f"{cpu:.1f}s cpu (harness process {driver_cpu:.1f}s + trials {sum(trial_cpu):.1f}s; "
        f"median trial {statistics.median(trial_cpu):.2f}s, largest "
        f"{', '.join(f'{c:.1f}' for c in first)}); {_load()} ({sweep_dir})"
    )
    print(f"  {data['headline']}")
    return elapsed, cpu


def _sequential(path: Path, out: Path, n: int) -> tuple[float, float]:
    """Mean wall and CPU time of `harness run` processes of `n` trial configs over the grid."""
    out.mkdir(parents=True, exist_ok=True)
    trials = load_sweep(path).trials
    pick = [trials[round(i * (len(trials) - 1) / max(n - 1, 1))] for i in range(n)]
    times, cpus = [], []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for t in pick:
        cfg = out / f"{t.config.name}.yaml"
        cfg.write_text(dump_config(t.config))
        c0, t0 = _cpu(), time.perf_counter()
        cmd = [sys.executable, "-m", "harness.cli", "run", str(cfg), "--out", str(out), "-q"]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
        print(f"  harness run {t.label()}: {times[-1]:.1f}s wall, {cpus[-1]:.1f}s cpu ({_load()})")
    return sum(times) / n, sum(cpus) / n


def _round(
    args: argparse.Namespace, path: Path, root: Path, n: int
) -> tuple[float | None, float | None, float | None, float]:
    """One round, printed: (sequential wall s per run, its cpu s per run, Ray sweep wall s,
    local sweep wall s); None for what was skipped."""
    per_run = per_cpu = None
    if not args.skip_sequential:
        per_run, per_cpu = _sequential(path, root / "seq", args.sequential)
        print(
            f"sequential harness run ({args.sequential} real processes): {per_run:.1f}s wall, "
            f"{per_cpu:.1f}s cpu per run; x {n} trials = {per_run * n:.0f}s wall"
        )
    if args.sequential_only:
        return per_run, per_cpu, None, float("nan")
    local, local_cpu = _timed_sweep(path, root / "local", "local", args.workers)
    print(f"local backend: {local:.1f}s total, {local / n:.2f}s wall per trial")
    ray_s = None
    if not args.skip_ray:
        ray_s, _ = _timed_sweep(path, root / "ray", "ray", args.workers)
        print(f"ray backend: {ray_s:.1f}s total (incl. Ray start), {ray_s / local:.2f}x local")
    if per_run is not None and per_cpu is not None:
        seq = per_run * n
        print(
            f"speed-up vs {n} sequential harness run: {seq / local:.1f}x wall (local), "
            f"{per_cpu * n / local_cpu:.1f}x cpu (local)"
            + (f", {seq / ray_s:.1f}x wall (ray)" if ray_s else "")
        )
    return per_run, per_cpu, ray_s, local


def _judge(name: str, values: list[float], goal: str, ok: list[bool]) -> str:
    shown = ", ".join(f"{v:.2f}x" for v in values)
    return (
        f"  {name}: median {statistics.median(values):.2f}x over {len(values)} round(s) "
        f"({shown}); goal {goal}: met in {sum(ok)} of {len(ok)}"
    )


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--sequential", type=int, default=5, help="harness run processes to time")
    ap.add_argument("--rounds", type=int, default=3, help="times to repeat the measurements")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-sequential", action="store_true")
    ap.add_argument("--sequential-only", action="store_true", help="time only harness run")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        path = _sweep_file(root, args.trials)
        n = len(load_sweep(path).trials)
        print(f"{n} trials, {args.workers} workers, {os.cpu_count()} CPUs ({_load()})")
        speedups: list[float] = []
        ray_ratios: list[float] = []
        for r in range(1, args.rounds + 1):
            print(f"round {r} of {args.rounds}")
            print(_host_speed())
            for sub in ("seq", "local", "ray"):  # each round's folders start empty
                shutil.rmtree(root / sub, ignore_errors=True)
            per_run, _, ray_s, local = _round(args, path, root, n)
            if per_run is not None and not args.sequential_only:
                speedups.append(per_run * n / local)
            if ray_s is not None:
                ray_ratios.append(ray_s / local)
        print(_host_speed())
        if speedups or ray_ratios:
            print("goals (issue 13), each round's own ratio:")
        if speedups:
            print(_judge("local vs sequential", speedups, ">= 20x", [x >= 20 for x in speedups]))
        if ray_ratios:
            print(_judge("ray vs local", ray_ratios, "<= 1.5x", [x <= 1.5 for x in ray_ratios]))


if __name__ == "__main__":
    main()
