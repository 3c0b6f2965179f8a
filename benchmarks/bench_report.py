"""Report and viewer: time to build a run's report and to answer the viewer's pages.

A fake run folder (tests/run_fixtures.py) of one year with a decision every 4h (2190 decision
times x 3 policies, one an LLM with a transcript per decision) is written to a temp folder;
then timed: load_run, build_report (all charts), write_report, and the viewer's data for the
decision browser (all rows; disagreements filter), one decision page, one transcript, and a
run-vs-run comparison. Figures only, nothing asserted.
Run: .venv/bin/python benchmarks/bench_report.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.run_fixtures

from harness.reports.report import build_report, load_run, write_report  # noqa: E402
from harness.reports.view import browse  # noqa: E402
from tests.run_fixtures import write_fake_run  # noqa: E402

N_TIMES = 2190


def timed(label: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<48} {1000 * (time.perf_counter() - t0):9.1f} ms")
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        a = write_fake_run(Path(tmp) / "a", n_times=N_TIMES)
        b = write_fake_run(
            Path(tmp) / "b", n_times=N_TIMES, llm_overrides={i: 0 for i in range(0, N_TIMES, 7)}
        )
        print(f"fake run: {N_TIMES} decision times x 3 policies, {len(a.decisions)} decision rows")
        run = timed("load_run (decisions, transcripts, tables)", lambda: load_run(a.path))
        timed("build_report (md + html + 5 charts)", lambda: build_report(run))
        timed("write_report (load + build + write)", lambda: write_report(a.path))
        timed(
            "viewer: decision browser, all rows",
            lambda: browse.decision_rows(run, browse.Filters()),
        )
        timed(
            "viewer: decision browser, disagreements only",
            lambda: browse.decision_rows(run, browse.Filters(disagree=True)),
        )
        t = a.times[N_TIMES // 2].isoformat()
        timed("viewer: one decision (labels + candidates)", lambda: browse.decision_detail(run, t))
        timed("viewer: one transcript", lambda: browse.transcript(run, "llm_v1", t))
        run_b = load_run(b.path)
        timed("viewer: compare two runs", lambda: browse.compare(run, run_b))


if __name__ == "__main__":
    main()
