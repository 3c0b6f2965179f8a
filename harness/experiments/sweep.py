"""Run a sweep: expand the sweep file, run its trials as run folders, write the sweep outputs.

The sweep folder is `<out>/<stamp>-<6 hex>-<name>/` with `sweep.yaml`, `sweep.json`,
`trials/<trial-id>/` (normal run folders), `leaderboard.parquet` and `sweep_report.html`.
Running the same sweep file again (same resolved trials) continues the newest such folder:
finished trials are skipped, interrupted ones resume from their decisions.jsonl.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from harness import strict_json
from harness.data.source import MarketDataSource
from harness.experiments.config import ExperimentConfig, parse_config
from harness.experiments.ray_cluster import init_ray
from harness.experiments.runner import create_run_dir, run_config_text
from harness.experiments.sweep_backends import (
    DRIVER,
    Backend,
    TrialOutcome,
    TrialTask,
    config_json,
    market_key,
    needs_cache_writer,
    prefetch_trial,
    prepare_markets,
    replayable,
    run_inline,
    run_local,
    run_ray,
    write_back,
)
from harness.experiments.sweep_market import builds_chains
from harness.experiments.sweep_outputs import (
    TrialBoard,
    TrialRecord,
    build_leaderboard,
    headline,
    heatmaps,
    render_report,
    selection_statistics,
)
from harness.experiments.sweep_spec import Sweep, Trial, describe, load_sweep

SWEEP_JSON = "sweep.json"
SAVE_EVERY_S = 1.0  # sweep.json while trials finish: rewritten at most this often


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep run produced."""

    sweep_dir: Path
    n_trials: int
    n_complete: int
    n_failed: int
    n_already_done: int
    sentence: str
    elapsed_s: float


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(strict_json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)  # a kill never leaves a torn sweep.json


def _find_previous(out: Path, sweep: Sweep) -> Path | None:
    """The newest sweep folder under `out` holding this very sweep (same resolved trials)."""
    found = []
    for p in out.glob(f"*-{sweep.spec.name}/{SWEEP_JSON}"):
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("sweep", {}).get("sweep_hash") == sweep.sweep_hash:
            found.append(p.parent)
    return max(found, key=lambda d: d.name) if found else None


def _is_finished(trial_dir: Path) -> bool:
    try:
        return json.loads((trial_dir / "manifest.json").read_text()).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return False


def run_order(
    tasks: list[TrialTask],
    configs: dict[int, ExperimentConfig],
    markets: dict[str, MarketDataSource],
) -> list[TrialTask]:
    """The order trials are handed to workers in.

    Trials sharing a market next to each other, so a worker reuses the market it holds. Where
    the driver builds full chains (`builds_chains`), longest DTE first, so the kept chains are
    built once at the widest expiry limit; otherwise shortest DTE first: those trials trade
    most and take longest, and longest-first leaves the fewest seconds at the end with one
    worker busy and the other done.
    """

    def key(task: TrialTask) -> tuple[str, float, int]:
        cfg = configs[task.index]
        market = market_key(cfg)
        dte = cfg.simulation.target_dte
        return market, -dte if builds_chains(markets[market]) else dte, task.index

    return sorted(tasks, key=key)


class SweepRunner:
    """Runs one sweep file into a sweep folder."""

    def __init__(
        self,
        path: str | Path,
        *,
        backend: Backend = "local",
        workers: int | None = None,
        address: str | None = None,
        out_dir: str | Path = "runs",
        trial_reports: bool = False,
        fresh: bool = False,
        quiet: bool = False,
    ) -> None:
        self.sweep = load_sweep(path)  # every sweep-file problem is raised here, before any run
        self.backend = backend
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.address = address
        self.out = Path(out_dir)
        self.trial_reports = trial_reports
        self.console = Console(stderr=True, quiet=quiet)
        previous = None if fresh else _find_previous(self.out, self.sweep)
        if previous is not None:
            self.dir = previous
            self.console.print(f"continuing sweep {previous}")
        else:
            self.dir = create_run_dir(self.out, self.sweep.spec.name)
            shutil.copyfile(self.sweep.path, self.dir / "sweep.yaml")
        (self.dir / "trials").mkdir(exist_ok=True)
        self.state = self._load_state()
        self.llm_prefetch: dict[str, Any] | None = None
        self._boards: dict[int, TrialBoard] = {}  # leaderboard entries the workers sent back

    def _load_state(self) -> dict[str, dict[str, Any]]:
        p = self.dir / SWEEP_JSON
        if not p.exists():
            return {}
        return {t["key"]: t for t in json.loads(p.read_text()).get("trials", [])}

    def _trial_dir(self, trial: Trial) -> Path:
        prior = self.state.get(trial.key)
        if prior is not None and (self.dir / "trials" / prior["trial_id"]).is_dir():
            return self.dir / "trials" / prior["trial_id"]
        d = create_run_dir(self.dir / "trials", f"t{trial.index:03d}")
        (d / "config.yaml").write_text(run_config_text(trial.config))
        return d

    def _save(self, extra: dict[str, Any] | None = None) -> None:
        data = {
            "sweep": describe(self.sweep),
            "sweep_id": self.dir.name,
            "axes": self.sweep.axes,
            "trials": [self.state[t.key] for t in self.sweep.trials if t.key in self.state],
        }
        data.update(extra or {})
        _write_json(self.dir / SWEEP_JSON, data)

    def run(self) -> SweepSummary:
        """Run every unfinished trial, then write sweep.json, leaderboard and report."""
        t0 = time.perf_counter()
        trials = self.sweep.trials
        dirs: dict[int, Path] = {}
        todo: list[Trial] = []
        for trial in trials:
            d = dirs[trial.index] = self._trial_dir(trial)
            done = _is_finished(d)
            entry = self.state.get(trial.key, {})
            self.state[trial.key] = {
                "index": trial.index,
                "key": trial.key,
                "trial_id": d.name,
                "point": trial.point,
                "status": "complete" if done else "pending",
                "error": None if done else entry.get("error"),
                "elapsed_s": entry.get("elapsed_s"),
                "cpu_s": entry.get("cpu_s"),
            }
            if not done:
                todo.append(trial)
        already = len(trials) - len(todo)
        self._save({"status": "running"})
        self.console.print(
            f"sweep {self.dir.name}: {len(trials)} trials, {already} already finished, "
            f"{len(todo)} to run ({self.backend}, {self.workers} worker(s))"
        )
        saved = float("-inf")  # when sweep.json was last written (time.monotonic)
        for n, outcome in enumerate(self._execute(todo, dirs), start=1):
            trial = trials[outcome.index]
            rec = self.state[trial.key]
            if outcome.board is not None:
                self._boards[outcome.index] = outcome.board
            rec.update(
                status=outcome.status,
                error=outcome.error,
                elapsed_s=outcome.elapsed_s,
                cpu_s=outcome.cpu_s,
            )
            # at most once a second (a 100-trial sweep rewrote it 100 times), and at once on a
            # failure; a kill in between loses only the newest timings: finished trials are
            # found by their manifest on resume
            if outcome.status != "complete" or time.monotonic() - saved >= SAVE_EVERY_S:
                self._save({"status": "running"})
                saved = time.monotonic()
            mark = "done" if outcome.status == "complete" else f"FAILED: {outcome.error}"
            self.console.print(
                f"[{n}/{len(todo)}] trial {trial.index} ({trial.label()}): {mark} "
                f"in {outcome.elapsed_s:.1f}s",
                markup=False,
                highlight=False,
            )
        elapsed = time.perf_counter() - t0
        sentence = self._outputs(dirs, elapsed)
        n_failed = sum(1 for t in trials if self.state[t.key]["status"] == "failed")
        n_complete = sum(1 for t in trials if self.state[t.key]["status"] == "complete")
        return SweepSummary(self.dir, len(trials), n_complete, n_failed, already, sentence, elapsed)

    def _execute(self, todo: list[Trial], dirs: dict[int, Path]) -> Iterator[TrialOutcome]:
        def task(t: Trial) -> TrialTask:
            return TrialTask(t.index, str(dirs[t.index]), config_json(t.config), self.trial_reports)

        llm = [task(t) for t in todo if needs_cache_writer(t.config)]
        spread = [task(t) for t in todo if not needs_cache_writer(t.config)]
        parallel = self.backend == "ray" or self.workers > 1
        # LLM trials: the driver (the one response-cache writer) asks every request first,
        # then the replays are spread like rule trials, reading the cache read-only; trials
        # the prefetch could not fully answer run here, one after another, as a plain run would
        replays, here = self._prefetch(llm) if parallel and llm else ([], llm)
        spread += replays
        configs = {t.index: t.config for t in todo}
        # every market built and its chains warmed once, here, then shipped to the workers
        markets = prepare_markets([configs[t.index] for t in spread])
        spread = run_order(spread, configs, markets)
        back: list[TrialTask] = []  # replays a worker could not serve from the cache
        by_index = {t.index: t for t in spread}

        def taken(outcomes: Iterable[TrialOutcome]) -> Iterator[TrialOutcome]:
            for outcome in outcomes:
                if outcome.status == DRIVER:
                    back.append(replace(by_index[outcome.index], llm_replay=False, cache_mode=None))
                    continue
                yield outcome

        if self.backend == "ray":
            started = init_ray(self.address, self.workers)
            try:
                for outcome in taken(run_ray(spread, configs, markets)):
                    if outcome.files:
                        write_back(dirs[outcome.index], outcome.files)
                    yield outcome
            finally:
                if started:
                    import ray

                    ray.shutdown()
        elif self.workers > 1 and len(spread) > 1:
            yield from taken(run_local(spread, self.workers, markets))
        else:
            yield from taken(run_inline(spread))
        if back:
            self.console.print(
                f"{len(back)} LLM trial(s) lacked cached answers in a worker; running them here"
            )
        yield from run_inline([*back, *here])

    def _prefetch(self, tasks: list[TrialTask]) -> tuple[list[TrialTask], list[TrialTask]]:
        """Ask every LLM request of `tasks` into the cache here; (replayable, to run here).

        Trials run one after another, each asking its decisions concurrently (the policy's
        `max_concurrency`); a request an earlier trial asked is a cache hit (single-flight),
        so the sweep pays once per distinct prompt, model and decision. A policy with
        `execution: batch` sends each trial's uncached requests as batch jobs (ledger in the
        trial folder), trial after trial, so a request an earlier trial's batch answered is not
        submitted again. Not built: one provider batch over every trial's requests at once.
        """
        t0 = time.perf_counter()
        replays: list[TrialTask] = []
        here: list[TrialTask] = []
        totals = {
            "trials": len(tasks),
            "calls_made": 0,
            "served_from_cache": 0,
            "batch_submitted": 0,
            "cost_usd": 0.0,
        }
        for n, t in enumerate(tasks, start=1):
            cache_off = parse_config(json.loads(t.config_json), t.trial_dir).cache.mode
            if cache_off == "off":
                here.append(t)  # no cache to share: the trial asks the model itself, here
                continue
            try:
                summaries = prefetch_trial(t)
            except Exception as exc:  # the trial itself will fail (and say why) when run here
                self.console.print(f"prefetch of trial {t.index} failed: {exc}", markup=False)
                here.append(t)
                continue
            for s in summaries.values():
                totals["calls_made"] += int(s.get("calls_made", 0))
                totals["served_from_cache"] += int(s.get("served_from_cache", 0))
                totals["batch_submitted"] += int(s.get("batch_submitted", 0))
                totals["cost_usd"] += float(s.get("cost_usd_incurred", 0.0))
            if replayable(summaries):
                replays.append(replace(t, llm_replay=True))
            else:
                here.append(t)
            self.console.print(
                f"prefetched LLM requests of trial {t.index} ({n}/{len(tasks)})", markup=False
            )
        totals.update(
            replayed_in_workers=len(replays),
            run_in_driver=len(here),
            elapsed_s=time.perf_counter() - t0,
        )
        self.llm_prefetch = totals
        return replays, here

    def _outputs(self, dirs: dict[int, Path], elapsed: float) -> str:
        trials = self.sweep.trials
        finished = [
            TrialRecord(t.index, dirs[t.index].name, t.point, dirs[t.index])
            for t in trials
            if self.state[t.key]["status"] == "complete"
        ]
        axes = self.sweep.axes
        board, series = build_leaderboard(finished, axes, self._boards)
        stats = selection_statistics(board, series)
        unit = "USD" if trials[0].config.reward.kind == "pnl_vs_hodl" else "bps"
        sentence = headline(stats, board, {t.index: t.label() for t in trials}, unit)
        board.to_parquet(self.dir / "leaderboard.parquet", index=False)
        failed = [
            {"index": t.index, "trial_id": dirs[t.index].name, "error": self.state[t.key]["error"]}
            for t in trials
            if self.state[t.key]["status"] == "failed"
        ]
        status = "complete" if not failed else "complete_with_failures"
        self._save(
            {
                "status": status,
                "finished_at": pd.Timestamp.now(tz="UTC").isoformat(),
                "backend": self.backend,
                "workers": self.workers,
                "elapsed_s": elapsed,
                "headline": sentence,
                "selection": stats,
                "llm_prefetch": self.llm_prefetch,
            }
        )
        info = dict(describe(self.sweep))
        info.update(
            axis_names=axes,
            n_complete=len(finished),
            elapsed_s=elapsed,
            backend=self.backend,
            workers=self.workers,
        )
        html = render_report(
            title=f"Sweep report: {self.sweep.spec.name}",
            sentence=sentence,
            sweep=info,
            board=board,
            stats=stats,
            maps=heatmaps(board, axes, self.sweep.spec.mode),
            failed=failed,
            axes=axes,
            unit=unit,
        )
        (self.dir / "sweep_report.html").write_text(html, encoding="utf-8")
        return sentence


def run_sweep(
    path: str | Path,
    *,
    backend: Backend = "local",
    workers: int | None = None,
    address: str | None = None,
    out_dir: str | Path = "runs",
    trial_reports: bool = False,
    fresh: bool = False,
    quiet: bool = False,
) -> SweepSummary:
    """Run the sweep file at `path` (continuing an unfinished folder of it) and summarize."""
    return SweepRunner(
        path,
        backend=backend,
        workers=workers,
        address=address,
        out_dir=out_dir,
        trial_reports=trial_reports,
        fresh=fresh,
        quiet=quiet,
    ).run()
