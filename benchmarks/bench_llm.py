"""LLM policy: warm-cache replay overhead and cold-run concurrency, against a local chat server.

The server is the test suite's scripted chat-completions server (tests/llm/scripted_server.py),
run in a separate process like a real one; the client is the real openai SDK. Prints:
(a) warm-cache replay over one year with a decision every 4h (2190 synthetic decisions built
    directly from the types): the cache is warmed through the server, then a fresh LLMPolicy
    (reading the disk cache, no in-memory state) is timed on `policy(state, candidates)`;
    ms per decision, next to `always_sell` on the same inputs;
(a2) the simulator's portfolio replay of one year of the synthetic market with `always_sell`
    and with a warm-cache LLM policy that sells whenever asked (same number of asks);
(b) a cold run with 100 ms server latency, max_concurrency=16 vs 1 over 256 decisions (--cold-decisions).
Figures only, nothing asserted. Run: .venv/bin/python benchmarks/bench_llm.py [--skip-simulator]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.llm.* (the scripted server and fixtures)

from harness.llm.cache import ResponseCache  # noqa: E402
from harness.policies import always_sell  # noqa: E402
from harness.policies.llm import LLMPolicy  # noqa: E402
from tests.llm.fixtures import decisions  # noqa: E402

MODEL = "gpt-4o-mini"


@contextmanager
def chat_server(latency_s: float = 0.0) -> Iterator[str]:
    """Start the scripted server in a child process; yield its base URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.llm.scripted_server", "--latency", str(latency_s)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError("scripted server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def policy(url: str, cache: ResponseCache | None, **kw: object) -> LLMPolicy:
    """An LLM policy on the local server (no API key needed)."""
    return LLMPolicy(model=MODEL, base_url=url, api_key_env=None, cache=cache, **kw)


def warm_replay(url: str, cache_dir: Path) -> None:
    items = decisions(2190)
    with ResponseCache(cache_dir) as cache:
        t0 = time.perf_counter()
        with policy(url, cache, max_concurrency=32) as warm:
            warm.prefetch(items, progress=False)
        t_warm = time.perf_counter() - t0
    rule = always_sell()
    t0 = time.perf_counter()
    for state, candidates in items:
        rule(state, candidates)
    t_rule = time.perf_counter() - t0
    with ResponseCache(cache_dir) as cache, policy(url, cache) as replay:
        t0 = time.perf_counter()
        for state, candidates in items:
            replay(state, candidates)
        t_llm = time.perf_counter() - t0
        summary = replay.summary()
    n = len(items)
    print(f"(a) warm-cache replay, {n} decisions (1 year every 4h), cache warmed in {t_warm:.1f} s")
    print(f"    always_sell: {t_rule / n * 1000:.4f} ms/decision ({t_rule:.3f} s)")
    print(
        f"    LLMPolicy, fresh instance on the warm disk cache: {t_llm / n * 1000:.3f} ms/decision "
        f"({t_llm:.2f} s); HTTP calls {summary.calls_made}, served from cache "
        f"{summary.served_from_cache}, cost saved ${summary.cost_usd_saved:.4f}"
    )
    print(f"    overhead vs always_sell: {(t_llm - t_rule) / n * 1000:.3f} ms/decision")


def simulator_replay(url: str, cache_dir: Path) -> None:
    from harness.data.synthetic import SyntheticMarket
    from harness.simulator import CoveredCallSimulator
    from harness.types import CallSimulationConfig

    cfg = CallSimulationConfig(
        underlying="BTC",
        start="2024-01-01",
        end="2024-12-31",
        timeframe="1h",
        decision_interval_bars=4,
        target_dte=7,
        target_delta=0.25,
    )
    sim = CoveredCallSimulator(SyntheticMarket(seed=7), cfg)
    times = sim.decision_times()
    items = [(sim.build_state(t), sim.candidates(t)) for t in times]
    with ResponseCache(cache_dir) as cache, policy(url, cache, max_concurrency=32) as warm:
        warm.prefetch(items, progress=False)  # the flat scoring pass: every decision asked
    t0 = time.perf_counter()
    base = sim.simulate_policy(always_sell())
    t_rule = time.perf_counter() - t0
    with ResponseCache(cache_dir) as cache, policy(url, cache) as llm:
        t0 = time.perf_counter()
        res = sim.simulate_policy(llm)
        t_llm = time.perf_counter() - t0
        asked = len(llm.records)
    print(f"(a2) simulator replay, one year of synthetic BTC ({len(times)} decision times)")
    print(f"    simulate_policy(always_sell): {t_rule:.3f} s, {len(base.trades)} trades")
    print(
        f"    simulate_policy(LLMPolicy, warm cache, sells when asked): {t_llm:.3f} s, "
        f"{len(res.trades)} trades, asked {asked} times; ratio {t_llm / t_rule:.2f}x"
    )


def cold_run(url: str, n: int = 64) -> None:
    items = decisions(n)
    times = {}
    for concurrency in (16, 1):
        with (
            tempfile.TemporaryDirectory() as d,
            ResponseCache(d) as cache,
            policy(url, cache, max_concurrency=concurrency) as p,
        ):
            t0 = time.perf_counter()
            p.prefetch(items, progress=False)
            times[concurrency] = time.perf_counter() - t0
            assert p.summary().calls_made == n
    print(f"(b) cold run, {n} decisions, server latency 100 ms, fresh cache each")
    print(f"    max_concurrency=16: {times[16]:.2f} s; max_concurrency=1: {times[1]:.2f} s")
    print(f"    speed-up: {times[1] / times[16]:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--skip-simulator", action="store_true", help="skip (a2), which builds a market"
    )
    ap.add_argument("--cold-decisions", type=int, default=256, help="decisions in the cold run (b)")
    ap.add_argument("--skip-warm", action="store_true", help="skip (a) and (a2)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_warm:
            with chat_server() as url:
                warm_replay(url, Path(tmp) / "a")
                if not args.skip_simulator:
                    simulator_replay(url, Path(tmp) / "a2")
        with chat_server(latency_s=0.1) as url:
            cold_run(url, args.cold_decisions)


if __name__ == "__main__":
    main()
