"""Re-inject each bug the suite once missed and show that its named test now fails on it.

Usage: `make known-bugs` (or `python tests/known_bugs.py [--only NAME ...]`). Not collected by
pytest and not part of CI: it runs the named tests once per bug (a minute or two in all).

For every bug: copy the tree to a scratch folder, replace one exact snippet (it must occur
exactly once, so an edit to the code that moves the snippet is reported, never silently
skipped), run the bug's named tests there and expect them to fail; the same tests must pass on
the unmodified copy. Prints one line per bug and exits non-zero when a bug goes unnoticed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("harness", "tests", "configs", "prompts", "pyproject.toml")
SIM = "harness/simulator.py"
ACCOUNTING = "tests/test_simulator_accounting.py"


@dataclass(frozen=True)
class KnownBug:
    """One realistic single-point bug: where, the exact edit, and the tests that must catch it."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        "look-ahead spot (next bar's close)",
        "harness/engine/features.py",
        "spot = np.where(has, close[jj], np.nan)",
        "spot = np.where(has, close[np.minimum(jj + 1, len(close) - 1)], np.nan)",
        (
            "tests/engine/test_features.py::"
            "test_every_feature_at_an_exact_bar_matches_a_plain_loop",
            f"{ACCOUNTING}::test_look_ahead_spot_is_the_bar_at_t_even_when_later_bars_differ",
        ),
    ),
    KnownBug(
        "realized vol on a 252-day year",
        "harness/engine/features.py",
        "bars_per_year = pd.Timedelta(days=365) / bar",
        "bars_per_year = pd.Timedelta(days=252) / bar",
        ("tests/engine/test_features.py::test_realized_vol_is_annualised_on_a_365_day_year",),
    ),
    KnownBug(
        "Sharpe/Sortino scaled by periods, not sqrt(periods)",
        "harness/engine/metrics.py",
        "return float(mean / dev * np.sqrt(periods))",
        "return float(mean / dev * periods)",
        (
            "tests/engine/test_metrics.py::"
            "test_sharpe_and_sortino_are_annualised_with_sqrt_of_periods",
        ),
    ),
    KnownBug(
        "premium booked one bar after the sale",
        SIM,
        "cash[a:] += tr.premium_usd - tr.open_fee_usd",
        "cash[a + 1 :] += tr.premium_usd - tr.open_fee_usd",
        (f"{ACCOUNTING}::test_premium_is_in_equity_at_the_sale_bar",),
    ),
    KnownBug(
        "fallback settlement takes the last 1-minute close",
        SIM,
        'price = float(fine["close"].mean())',
        'price = float(fine["close"].iloc[-1])',
        (f"{ACCOUNTING}::test_fallback_settlement_is_the_30_minute_average_of_1m_closes",),
    ),
    KnownBug(
        "delta band edge exclusive",
        SIM,
        '& (np.abs(col["delta"] - c.target_delta) <= c.delta_tolerance + 1e-9)',
        '& (np.abs(col["delta"] - c.target_delta) < c.delta_tolerance)',
        (f"{ACCOUNTING}::test_delta_band_edges_are_inclusive",),
    ),
    KnownBug(
        "calls expiring after end offered",
        SIM,
        "after_end = st.expiry_ns > c.end_ts.value",
        "after_end = np.zeros(len(st), bool)",
        (f"{ACCOUNTING}::test_calls_expiring_after_end_are_never_offered",),
    ),
    KnownBug(
        "chain store answers an exact snapshot time with the previous one",
        "harness/data/store.py",
        'i = int(np.searchsorted(as_ns(self.times), t, side="right")) - 1',
        'i = int(np.searchsorted(as_ns(self.times), t, side="left")) - 1',
        ("tests/data/test_store_instants.py::test_exact_snapshot_time_returns_that_snapshot",),
    ),
    KnownBug(
        "cache key without the temperature",
        "harness/llm/client.py",
        '"temperature": self.temperature,\n            "top_p"',
        '"top_p"',
        ("tests/llm/test_cache_key_params.py::test_each_request_field_changes_the_key",),
    ),
    KnownBug(
        "prompt premium column shows the mark",
        "harness/llm/prompts.py",
        '"premium": view.price(c.premium_usd),',
        '"premium": view.price(c.mark_price),',
        ("tests/llm/test_prompt_columns.py::test_v1_table_columns_show_their_fields",),
    ),
    KnownBug(
        "percentile bootstrap tail not halved (90% reported as 95%)",
        "harness/stats.py",
        "    alpha = (1.0 - confidence) / 2.0\n    lo, hi = np.quantile",
        "    alpha = 1.0 - confidence\n    lo, hi = np.quantile",
        (
            "tests/test_stats_coverage.py::test_interval_width_matches_the_normal_theory_width",
            "tests/test_stats_coverage.py::"
            "test_paired_bootstrap_covers_the_true_mean_95_percent_of_the_time",
        ),
    ),
    KnownBug(
        "bootstrap-t (the default interval) tail not halved",
        "harness/stats.py",
        "    alpha = (1.0 - confidence) / 2.0\n    q_lo, q_hi",
        "    alpha = 1.0 - confidence\n    q_lo, q_hi",
        ("tests/test_stats_bootstrap_t.py",),
    ),
    KnownBug(
        "mean_regret sign flipped",
        "harness/experiments/runner.py",
        '"mean_regret": float((best - s.rewards).mean()) if n else 0.0,',
        '"mean_regret": float((s.rewards - best).mean()) if n else 0.0,',
        ("tests/experiments/test_run_metrics.py::test_mean_reward_and_regret_match_a_plain_loop",),
    ),
)


def _run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    """Run pytest on `tests` inside `tree`; (exit code, the failing test or the summary)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", *tests]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    failed = [line.split(" - ")[0] for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary = [line for line in lines if " passed" in line or " failed" in line]
    shown = failed[0] if failed else (summary[-1] if summary else proc.stderr.strip()[-200:])
    return proc.returncode, shown.strip("= ")


def replay(bugs: tuple[KnownBug, ...]) -> bool:
    """Inject each bug into a scratch copy and run its tests; True when every bug is caught."""
    with tempfile.TemporaryDirectory(prefix="known-bugs-") as tmp:
        tree = Path(tmp)
        for name in COPIED:
            src = ROOT / name
            if src.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", ".hypothesis")
                shutil.copytree(src, tree / name, ignore=ignore)
            else:
                shutil.copy2(src, tree / name)
        all_tests = tuple(dict.fromkeys(t for bug in bugs for t in bug.tests))
        rc, last = _run_tests(tree, all_tests)
        print(f"unmodified code: {'pass' if rc == 0 else 'FAIL'} ({last})", flush=True)
        ok = rc == 0
        for k, bug in enumerate(bugs, 1):
            target = tree / bug.path
            original = target.read_text()
            found = original.count(bug.old)
            if found != 1:
                print(f"[{k}/{len(bugs)}] {bug.name}: snippet found {found} times in {bug.path}")
                ok = False
                continue
            target.write_text(original.replace(bug.old, bug.new))
            t0 = time.perf_counter()
            try:
                rc, last = _run_tests(tree, bug.tests)
            finally:
                target.write_text(original)
            # exit code 1 is "tests failed"; 2-5 are collection or usage errors, not a catch
            verdict = "caught" if rc == 1 else ("MISSED" if rc == 0 else f"ERROR rc={rc}")
            ok &= rc == 1
            secs = time.perf_counter() - t0
            print(f"[{k}/{len(bugs)}] {bug.name}: {verdict} in {secs:.0f} s ({last})", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    """Command line entry: replay all known bugs (or those named with --only)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="substrings of bug names")
    args = parser.parse_args(argv)
    bugs = tuple(b for b in BUGS if not args.only or any(s in b.name for s in args.only))
    if not bugs:
        parser.error(f"no known bug matches {args.only}")
    ok = replay(bugs)
    print("every known bug is caught" if ok else "some known bug is NOT caught", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
