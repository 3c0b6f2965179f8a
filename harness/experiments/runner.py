"""The experiment runner: every policy on the same decisions, a run folder, paired statistics.

Each policy is scored at every decision time with a flat state (no open call) against the
counterfactual labels, so rewards pair up decision by decision; each policy's portfolio is
also replayed for equity curves and metrics. See docs/run_folder.md for the files written.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness import __version__, strict_json
from harness.data.source import MarketDataSource
from harness.experiments.config import (
    ExperimentConfig,
    LLMPolicyEntry,
    ModelPolicyEntry,
    PythonPolicyEntry,
    RulePolicyEntry,
    with_execution,
)
from harness.experiments.decision_lines import DecisionLines
from harness.experiments.markets import build_market, mark_cadence, market_fingerprint
from harness.experiments.masking import RunSecrets
from harness.experiments.preflight import check_config
from harness.experiments.rewards import REWARD_UNITS, with_reward
from harness.experiments.run_health import (
    PolicyTally,
    check_resume_identity,
    counted,
    llm_status,
)
from harness.experiments.run_tables import write_parquet
from harness.experiments.sweep_market import SharedChains
from harness.llm.batch import BATCHES_FILE, BatchLedger
from harness.llm.budget import SpendCap
from harness.llm.cache import CacheMissError, CacheMode, ResponseCache
from harness.llm.client import LLMUnavailable
from harness.llm.prompts import load_prompt
from harness.llm.transcripts import TRANSCRIPTS_FILE, TranscriptBook, TranscriptWriter
from harness.policies.batch_prefetch import BatchContext
from harness.policies.learned import load_learned_policy
from harness.policies.llm import LLMPolicy
from harness.policies.oracles import ORACLES, oracle
from harness.policies.python import load_python_policy
from harness.policies.rules import make_rule
from harness.simulator import CoveredCallSimulator, PolicyFn
from harness.state import DecisionState
from harness.stats import PairedComparison, all_pairs, paired_comparison
from harness.timestamps import iso_strings
from harness.types import CallCandidate, OptionSnapshot, SimulatedTrade, SimulationResult

log = logging.getLogger(__name__)

LLM_HOWTO = "or replay a warm cache offline with --cache-mode read_only"


class LLMRequiredError(RuntimeError):
    """`--require-llm` was given and an LLM policy was skipped or failed.

    Raised after the run folder is complete; `summary` is the finished run's summary.
    """

    def __init__(self, message: str, summary: RunSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; carries the run folder so the caller can print how to resume."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


class NoDecisionsError(ValueError):
    """The configured period produced no decision time (one-line reason in the message)."""


@dataclass(frozen=True)
class RunSummary:
    """What a finished run produced: where, which policies ran or were skipped, headline numbers."""

    run_dir: Path
    name: str
    policies: list[str]
    skipped: dict[str, str]
    metrics: dict[str, dict[str, float]]
    comparison: list[PairedComparison]
    llm_usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    resumed_decisions: int = 0
    policy_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: str = "complete"  # complete | stopped (a spend cap stopped it: resume to go on)
    resume_hint: str | None = None
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # per batch-mode policy


def _llm_not_ok(summary: RunSummary, llm_names: Sequence[str]) -> list[str]:
    return [
        f"{n} {summary.policy_status.get(n, {}).get('status', 'skipped')}"
        for n in llm_names
        if not counted(summary.policy_status, n) or n in summary.skipped
    ]


@dataclass
class _Scored:
    choices: list[str | None]
    rewards: np.ndarray
    invalid: int = 0
    errors: int = 0
    tally: PolicyTally = field(default_factory=PolicyTally)
    partial: bool = False  # some decisions were not asked (stopped policy): no portfolio replay
    plain: bool = False  # a valid, error-free row without LLM answer at every decision, kept as is


def run_config_text(config: ExperimentConfig) -> str:
    """The config.yaml text of a run of `config`: resolved YAML with secret values masked."""
    llm_entries = [p for p in config.policies if isinstance(p, LLMPolicyEntry)]
    return RunSecrets.of_policies(llm_entries).config_text(config.model_dump(mode="json"))


def create_run_dir(out_dir: str | Path, name: str) -> Path:
    """Create and return a new, never-existing run folder `<out_dir>/<UTC stamp>-<6 hex>-<name>`.

    The random suffix keeps ids unique when runs (or sweep trials, or processes) start in the
    same second; names still sort by start time. `mkdir(exist_ok=False)` is the arbiter, so
    two processes can never share a folder.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%SZ")
        run_dir = root / f"{stamp}-{secrets.token_hex(3)}-{name}"
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _iso(ts: pd.Timestamp) -> str:
    return ts.isoformat()


_FLUSH_EVERY = 200  # rule-policy decisions.jsonl rows between flushes (also flushed per policy)
_FLUSH_AFTER_S = 1.0  # ... or seconds since the last flush, whichever comes first
_WRITE_BUFFER = 1 << 20  # decisions.jsonl's write buffer (bytes): _FLUSH_EVERY rows fit


def _read_done(path: Path) -> dict[tuple[str, str], dict]:
    """Rows already in decisions.jsonl keyed by (policy, decision_time); a torn last line is dropped."""
    done: dict[tuple[str, str], dict] = {}
    if not path.exists():
        return done
    good: list[str] = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a killed run was writing
        done[(row["policy"], row["decision_time"])] = row
        good.append(line)
    path.write_text("".join(x + "\n" for x in good))
    return done


class _Guarded:
    """Wraps a policy so a choice outside the offered candidates counts as invalid, not a crash."""

    def __init__(self, policy: PolicyFn, name: str) -> None:
        self.policy = policy
        self.__name__ = name
        self.invalid: dict[pd.Timestamp, str] = {}

    def __call__(
        self, state: DecisionState, candidates: Sequence[CallCandidate]
    ) -> OptionSnapshot | None:
        choice = self.policy(state, candidates)
        if choice is None:
            return None
        for c in candidates:
            if c is choice or c.instrument_name == getattr(choice, "instrument_name", None):
                return c
        self.invalid[pd.Timestamp(state.time)] = (
            f"chose {getattr(choice, 'instrument_name', choice)!r}, not an offered candidate"
        )
        return None


class ExperimentRunner:
    """Runs one `ExperimentConfig` into a run folder."""

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        out_dir: str | Path = "runs",
        cache_mode: CacheMode | None = None,
        require_llm: bool = False,
        resume: str | Path | None = None,
        quiet: bool = False,
        max_cost_usd: float | None = None,
        answers: TranscriptBook | None = None,
        config_path: str | Path | None = None,
        market: MarketDataSource | None = None,
        html_report: bool = True,
        batch: bool = False,
    ) -> None:
        if batch:
            config = with_execution(config, "batch")
        self.config = config
        self.batch_flag = batch
        # A replay serves every LLM request from the run's transcripts: no cache, no network.
        self.answers = answers
        # a sweep passes a market shared by its trials (loaded once) and skips HTML charts
        self.market = market
        self.html_report = html_report
        self.cache_mode: CacheMode = (
            "off" if answers is not None else (cache_mode or config.cache.mode)
        )
        self.require_llm = require_llm
        self._lines: DecisionLines | None = None
        self.quiet = quiet
        self.console = Console(stderr=True, quiet=quiet)
        self.max_cost_usd = max_cost_usd
        self.config_path = str(config_path) if config_path is not None else None
        llm_entries = [p for p in config.policies if isinstance(p, LLMPolicyEntry)]
        self.secrets = RunSecrets.of_policies(llm_entries)
        config_text = run_config_text(config)
        self.resuming = resume is not None
        if resume is not None:
            self.run_dir = Path(resume)
            if not (self.run_dir / "config.yaml").exists():
                raise FileNotFoundError(
                    f"{self.run_dir}: not a run folder (no config.yaml) to resume"
                )
            if (self.run_dir / "config.yaml").read_text() != config_text:
                hint = ""
                if (
                    not batch
                    and run_config_text(with_execution(config, "batch"))
                    == (self.run_dir / "config.yaml").read_text()
                ):
                    hint = " (the run was started with --batch: resume with --batch too)"
                raise ValueError(
                    f"{self.run_dir}: its config.yaml differs from the config given; "
                    f"resume only with the same config{hint}"
                )
            check_resume_identity(
                self.run_dir,
                _read_done(self.run_dir / "decisions.jsonl").values(),
                {
                    p.name: (load_prompt(p.prompt, p.prompts_dir).prompt_id, p.model)
                    for p in llm_entries
                },
            )
        else:
            self.run_dir = create_run_dir(out_dir, config.name)
            (self.run_dir / "config.yaml").write_text(config_text)

    # ------------------------------------------------------------------ prefetch
    def prefetch_llm(self) -> dict[str, dict[str, Any]]:
        """Ask every LLM request of this run into the response cache; score and write nothing.

        For a sweep driver, the one cache writer: afterwards the run itself can replay in
        another process with the cache opened `read_only`. Decisions already in the folder's
        decisions.jsonl are not asked. Returns each LLM policy's summary (`LLMRunSummary`
        as a dict), or `{"skipped": reason}` for a policy that cannot run.
        """
        cfg = self.config
        entries = [p for p in cfg.policies if isinstance(p, LLMPolicyEntry)]
        if not entries:
            return {}
        done = _read_done(self.run_dir / "decisions.jsonl")
        source = self.market or build_market(cfg.market, cfg.simulation.timeframe)
        if isinstance(source, SharedChains):
            sim = source.simulator(cfg.simulation)
        else:
            sim = CoveredCallSimulator(source, cfg.simulation)
        labels = with_reward(
            sim.counterfactual_labels(), cfg.reward.kind, cfg.reward.drawdown_penalty
        )
        items = sim.flat_items()
        out: dict[str, dict[str, Any]] = {}
        # batch-mode policies send the trial's uncached requests as batch jobs, recorded in the
        # trial folder's batches.json (a re-run of the sweep polls them instead of resubmitting)
        batch = self._batch_context()
        with ExitStack() as stack:
            cache = None
            if self.cache_mode != "off":
                cache = stack.enter_context(ResponseCache(cfg.cache.dir))
            for entry in entries:
                policy, why = self._build_policy(entry, labels, cache, stack)
                if policy is None or not isinstance(policy, LLMPolicy):
                    out[entry.name] = {"skipped": why}
                    continue
                policy.attach_run(transcript=None, batch=batch)
                if policy.config.anonymize and items:
                    policy.set_anchor(items[0][0].time, items[0][0].spot)  # as `run` does
                todo = [
                    it for it in items if (entry.name, _iso(pd.Timestamp(it[0].time))) not in done
                ]
                try:
                    if todo:
                        policy.prefetch(todo, progress=not self.quiet)
                except (LLMUnavailable, CacheMissError) as exc:
                    out[entry.name] = {"skipped": self.secrets.scrub_key_like(str(exc))}
                    continue
                out[entry.name] = policy.summary().as_dict()
        return out

    # ------------------------------------------------------------------ main
    def run(self) -> RunSummary:
        """Run every policy, write every file of the run folder and return a summary."""
        started = pd.Timestamp.now(tz="UTC")
        t0 = time.perf_counter()
        cfg = self.config
        decisions_path = self.run_dir / "decisions.jsonl"
        done = _read_done(decisions_path)
        # A fresh run keeps its decisions.jsonl objects in memory for the report and the
        # agreement table (no re-read); a resumed run reads the file (it holds earlier rows).
        # (a plain row is kept as a tuple until read: `_row_objects`)
        self._rows: list[dict[str, Any] | tuple[Any, ...]] | None = (
            [] if not decisions_path.exists() or decisions_path.stat().st_size == 0 else None
        )
        self._equity: pd.DataFrame | None = None
        self._trades: pd.DataFrame | None = None
        self._plain: dict[str, _Scored] = {}  # policies whose rows are all plain (report table)
        self._ran: list[str] | None = None  # the policies that ran, once all have
        with self._progress() as progress:
            load = progress.add_task("loading market", total=None)
            source = self.market or build_market(cfg.market, cfg.simulation.timeframe)

            def tick(i: int, n: int) -> None:
                progress.update(load, completed=i, total=n)

            if isinstance(source, SharedChains):
                # a sweep's market: simulators (candidates, labels) and mark paths are shared
                sim = source.simulator(cfg.simulation, progress=tick)
            else:
                sim = CoveredCallSimulator(source, cfg.simulation, progress=tick)
            progress.update(load, description="labelling candidates")
            labels = with_reward(
                sim.counterfactual_labels(), cfg.reward.kind, cfg.reward.drawdown_penalty
            )
            progress.update(load, description="market loaded", completed=1, total=1)
            times = sim.decision_times()
            if len(times) == 0:
                raise NoDecisionsError(_no_decisions_reason(cfg))
            items = sim.flat_items()
            # each decision's ISO time once per run: every policy's rows and resume keys use it
            times_iso = iso_strings(times)
            self._labels = labels
            self._index_labels(labels, times)

            scored: dict[str, _Scored] = {}
            results: dict[str, SimulationResult] = {}
            skipped: dict[str, str] = {}
            status: dict[str, dict[str, Any]] = {}
            llm_usage: dict[str, dict[str, Any]] = {}
            prompt_ids: dict[str, str] = {}
            model_ids: dict[str, str] = {}
            seeds: dict[str, Any] = {"market": cfg.market.seed, "bootstrap": cfg.seed}
            resumed = 0
            batches: dict[str, dict[str, Any]] = {}
            spend_stops: list[str] = []
            run_caps = (
                (SpendCap(self.max_cost_usd, "run --max-cost"),)
                if self.max_cost_usd is not None
                else ()
            )
            # rows reach the file at the flushes below (every _FLUSH_EVERY rows, each LLM
            # row): a buffer that holds what lies between two flushes writes it in one call,
            # not one per 8 KB (a sweep trial writes ~4 MB; those calls were ~3% of its CPU)
            with (
                ExitStack() as stack,
                decisions_path.open("a", buffering=_WRITE_BUFFER) as out,
            ):
                cache = None
                if (
                    any(isinstance(p, LLMPolicyEntry) for p in cfg.policies)
                    and self.cache_mode != "off"
                ):
                    cache = stack.enter_context(ResponseCache(cfg.cache.dir))
                transcript = None
                if any(isinstance(p, LLMPolicyEntry) for p in cfg.policies):
                    transcript = stack.enter_context(
                        TranscriptWriter(
                            self.run_dir / TRANSCRIPTS_FILE, redact=self.secrets.scrub_key_like
                        )
                    )
                batch_context = self._batch_context()
                for entry in cfg.policies:
                    policy, why = self._build_policy(entry, labels, cache, stack)
                    if policy is None:
                        self._skip(entry.name, why, skipped, status)
                        continue
                    if isinstance(policy, LLMPolicy):
                        policy.attach_run(
                            transcript=transcript,
                            spend_caps=run_caps,
                            answers=self.answers,
                            batch=batch_context,
                        )
                        prompt_ids[entry.name] = policy.prompt_id
                        model_ids[entry.name] = policy.config.model
                        seeds[entry.name] = policy.config.seed
                        if policy.config.anonymize and items:
                            # day 0 and spot 100 are the run's first decision, also on --resume
                            policy.set_anchor(items[0][0].time, items[0][0].spot)
                        todo = [
                            it
                            for it in items
                            if (entry.name, _iso(pd.Timestamp(it[0].time))) not in done
                        ]
                        try:
                            if todo:
                                policy.prefetch(todo, progress=not self.quiet)
                        except (LLMUnavailable, CacheMissError) as exc:
                            self._skip(entry.name, f"{exc} ({self._howto()})", skipped, status)
                            continue
                    guarded = _Guarded(policy, entry.name)
                    try:
                        s, n_resumed = self._score(
                            entry.name,
                            guarded,
                            policy,
                            items,
                            times,
                            times_iso,
                            done,
                            out,
                            progress,
                        )
                        resumed += n_resumed
                        if not s.partial:
                            task = progress.add_task(f"replaying {entry.name}", total=None)
                            before = policy.summary() if self._live_replay(policy) else None
                            results[entry.name] = sim.simulate_policy(guarded, name=entry.name)
                            progress.update(task, completed=1, total=1)
                            if before is not None:
                                self._note_live_replay(entry.name, policy, before)
                    except (LLMUnavailable, CacheMissError) as exc:
                        self._skip(entry.name, str(exc), skipped, status)
                        continue
                    scored[entry.name] = s
                    if s.plain:
                        self._plain[entry.name] = s
                    if isinstance(policy, LLMPolicy):
                        llm_usage[entry.name] = policy.summary().as_dict()
                        if policy.config.execution == "batch" and self.answers is None:
                            batches[entry.name] = self._batch_facts(llm_usage[entry.name])
                        status[entry.name] = llm_status(
                            s.tally,
                            max_error_rate=policy.config.max_error_rate,
                            max_invalid_rate=policy.config.max_invalid_rate,
                            halted=self.secrets.scrub_key_like(policy.halted or "") or None,
                            stopped_for_spend=policy.halted_for_spend or policy.halted_waiting,
                        )
                        if policy.halted_for_spend or policy.halted_waiting:
                            spend_stops.append(entry.name)
                        if status[entry.name]["status"] != "ok":
                            self.console.print(
                                f"[red]failed[/] {entry.name}: {status[entry.name]['reason']}",
                                markup=True,
                                highlight=False,
                            )
                    else:
                        status[entry.name] = {"status": "ok"}
        ran = [p.name for p in cfg.policies if p.name in scored]
        self._ran, self._times_iso = ran, times_iso  # `plain_rewards`
        metrics = self._metrics(ran, scored, results, llm_usage)
        comparison = self._compare([n for n in ran if counted(status, n)], scored, sim)
        # all_pairs covers the same policies as `pairs`: failed ones enter no comparison
        self._scored_for_pairs = {n: scored[n] for n in ran if counted(status, n)}
        self._write_outputs(sim, labels, results, metrics, comparison, ran)
        run_status = "stopped" if spend_stops else "complete"
        resume_hint = self._resume_hint(spend_stops) if spend_stops else None
        manifest = {
            "name": cfg.name,
            "run_id": self.run_dir.name,
            "package_version": __version__,
            "git_commit": _git_commit(),
            "data_fingerprint": market_fingerprint(source, cfg.market),
            "market_marks": mark_cadence(source, cfg.simulation.underlying, sim.bar),
            "started_at": started.isoformat(),
            "finished_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "status": run_status,
            "policies": ran,
            "baseline": cfg.baseline_name,
            "reward": cfg.reward.model_dump(),
            "reward_units": REWARD_UNITS[cfg.reward.kind],
            "prompt_ids": prompt_ids,
            "model_ids": model_ids,
            "seeds": seeds,
            "skipped": skipped,
            "policy_status": {p.name: status[p.name] for p in cfg.policies if p.name in status},
            "n_decisions": len(times),
            "decision_period": [_iso(times[0]), _iso(times[-1])] if len(times) else None,
            "liquidity_gates": vars(sim.gate_counts),
            "llm_usage": llm_usage,
            "cache_mode": self.cache_mode,
            "resumed_decisions": resumed,
        }
        if self.max_cost_usd is not None:
            manifest["max_cost_usd"] = self.max_cost_usd
        if resume_hint is not None:
            manifest["resume"] = resume_hint
        if self.answers is not None:
            manifest["replay"] = True
        if batches:
            manifest["batches"] = batches
        (self.run_dir / "manifest.json").write_text(
            self.secrets.scrub(strict_json.dumps(manifest, indent=2, default=str))
        )
        self._write_report(times_iso, items, ran)
        self.secrets.scrub_files(self.run_dir.glob("*.md"))
        self.secrets.scrub_files(self.run_dir.glob("*.html"))
        summary = RunSummary(
            run_dir=self.run_dir,
            name=cfg.name,
            policies=ran,
            skipped=skipped,
            metrics=metrics,
            comparison=comparison,
            llm_usage=llm_usage,
            elapsed_s=time.perf_counter() - t0,
            resumed_decisions=resumed,
            policy_status=status,
            status=run_status,
            resume_hint=resume_hint,
            batches=batches,
        )
        if self.require_llm:
            bad = _llm_not_ok(
                summary, [p.name for p in cfg.policies if isinstance(p, LLMPolicyEntry)]
            )
            if bad:
                raise LLMRequiredError(
                    f"--require-llm: {', '.join(bad)} (run folder {self.run_dir})", summary
                )
        return summary

    def _skip(
        self,
        name: str,
        reason: str,
        skipped: dict[str, str],
        status: dict[str, dict[str, Any]],
    ) -> None:
        reason = self.secrets.scrub_key_like(reason)
        skipped[name] = reason
        status[name] = {"status": "skipped", "reason": reason}
        self.console.print(f"[yellow]skipped[/] {name}: {reason}", markup=True, highlight=False)

    def _batch_context(self) -> BatchContext | None:
        """The ledger (batches.json) and progress lines of the run's batch-mode policies."""
        batching = [
            p
            for p in self.config.policies
            if isinstance(p, LLMPolicyEntry) and p.execution == "batch"
        ]
        if not batching or self.answers is not None or self.cache_mode == "read_only":
            return None
        ledger = BatchLedger(self.run_dir / BATCHES_FILE)
        said: list[bool] = []

        def progress(line: str) -> None:
            self.console.print(line, markup=False, highlight=False)
            if not said:
                said.append(True)
                self.console.print(
                    f"batch jobs are recorded in {self.run_dir / BATCHES_FILE}; if this process "
                    f"stops, resume with: {self._resume_command()}",
                    markup=False,
                    highlight=False,
                )

        return BatchContext(
            ledger=ledger,
            metadata={"harness_run": self.run_dir.name[:64]},
            progress=progress,
        )

    def _resume_command(self) -> str:
        config = self.config_path or "CONFIG"
        flag = " --batch" if self.batch_flag else ""
        return f"harness run {config} --resume {self.run_dir}{flag}"

    def _batch_facts(self, usage: dict[str, Any]) -> dict[str, Any]:
        """What the batch mode of one policy did, for the manifest and `harness run`."""
        return {
            "submitted": usage.get("batch_submitted", 0),
            "answered": usage.get("batch_answers", 0),
            "leftovers_asked_live": usage.get("batch_leftovers_live", 0),
            "batch_ids": usage.get("batch_ids", []),
            "ledger": BATCHES_FILE,
            "resume": self._resume_command(),
        }

    def _live_replay(self, policy: PolicyFn) -> bool:
        """True when the portfolio replay may ask a batch-mode policy live (calls left open)."""
        return (
            isinstance(policy, LLMPolicy)
            and policy.config.execution == "batch"
            and self.answers is None
            and not self.config.simulation.hold_to_expiry
        )

    def _note_live_replay(self, name: str, policy: PolicyFn, before: Any) -> None:
        assert isinstance(policy, LLMPolicy)
        after = policy.summary()
        live = after.calls_made - before.calls_made
        self.console.print(
            f"{name}: hold_to_expiry is false, so decisions with a call open depend on the "
            f"position and were asked live during the portfolio replay ({live} live requests, "
            f"{after.served_from_cache - before.served_from_cache} from the cache); only the "
            "flat decisions went by batch",
            markup=False,
            highlight=False,
        )

    def _resume_hint(self, stopped: Sequence[str]) -> str:
        return (
            f"spend cap reached or batches still running ({', '.join(stopped)}); everything "
            f"done is kept. Resume with: {self._resume_command()} (add --max-cost USD if a "
            "spend cap stopped it)"
        )

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=self.quiet,
        )

    def _howto(self) -> str:
        """What to do about an LLM policy that cannot run, for this run's cache mode."""
        if self.cache_mode == "read_only":
            # Suggesting read_only during a read_only run would send the user in a circle.
            return (
                "the cache has no answer for it: run once with --cache-mode read_write "
                "and the API key to fill the cache"
            )
        return LLM_HOWTO

    # ------------------------------------------------------------------ policies
    def _build_policy(
        self,
        entry: RulePolicyEntry | LLMPolicyEntry | PythonPolicyEntry | ModelPolicyEntry,
        labels: pd.DataFrame,
        cache: ResponseCache | None,
        stack: ExitStack,
    ) -> tuple[PolicyFn | None, str]:
        sim_cfg = self.config.simulation
        if isinstance(entry, PythonPolicyEntry):
            return load_python_policy(entry.ref, entry.params), ""
        if isinstance(entry, RulePolicyEntry):
            if entry.rule in ORACLES:
                return ORACLES[entry.rule](labels), ""
            params = dict(entry.params)
            if entry.rule != "never_sell":
                params.setdefault("target_delta", sim_cfg.target_delta)
            return make_rule(entry.rule, params), ""
        if isinstance(entry, ModelPolicyEntry):
            return _model_policy(entry), ""
        fallback = None
        if entry.on_invalid not in ("do_nothing", "retry"):
            params = (
                {"target_delta": sim_cfg.target_delta} if entry.on_invalid != "never_sell" else {}
            )
            fallback = (
                oracle(labels)
                if entry.on_invalid == "oracle"
                else make_rule(entry.on_invalid, params)
            )
        llm_cfg = entry.model_copy(update={"name": entry.name, "cache_dir": self.config.cache.dir})
        policy = LLMPolicy.from_config(
            llm_cfg, fallback=fallback, cache=cache, cache_mode=self.cache_mode
        )
        stack.callback(policy.close)
        if self.answers is not None:
            return policy, ""  # a replay needs no key: nothing leaves the machine
        try:
            policy.ensure_available()
        except LLMUnavailable as exc:
            return None, f"{exc} ({self._howto()})"
        return policy, ""

    def _index_labels(self, labels: pd.DataFrame, times: pd.DatetimeIndex) -> None:
        t_ns = pd.DatetimeIndex(labels["decision_time"]).as_unit("ns").asi8
        names = labels["instrument_name"].to_numpy(dtype=object)
        rewards = labels["reward"].to_numpy(dtype=float)
        self._reward_of = dict(
            zip(zip(t_ns.tolist(), names.tolist(), strict=True), rewards.tolist(), strict=True)
        )
        # per decision time, the first row of the highest reward (a group-by's idxmax,
        # sorted in numpy: the group-by was most of this method)
        row = np.arange(len(rewards))
        nan = np.isnan(rewards)
        order = np.lexsort((row, -np.where(nan, -np.inf, rewards), t_ns))
        first = np.ones(len(order), dtype=bool)
        first[1:] = t_ns[order][1:] != t_ns[order][:-1]
        best = order[first]
        if nan[best].any():  # as idxmax: a time whose rewards are all missing has no best
            raise ValueError("idxmax with skipna=True encountered all NA values in a group.")
        by_t = dict(
            zip(
                t_ns[best].tolist(),
                zip(names[best].tolist(), rewards[best].tolist(), strict=True),
                strict=True,
            )
        )
        self._best = [by_t[t] for t in times.as_unit("ns").asi8.tolist()]

    def _decision_lines(
        self, items: list[tuple[DecisionState, list[CallCandidate]]], times_iso: list[str]
    ) -> DecisionLines:
        """The run's decisions.jsonl line builder (made once: every policy's rows share it)."""
        if self._lines is None or self._lines.items is not items:
            self._lines = DecisionLines(items, times_iso)
        return self._lines

    def _score(
        self,
        name: str,
        guarded: _Guarded,
        policy: PolicyFn,
        items: list[tuple[DecisionState, list[CallCandidate]]],
        times: pd.DatetimeIndex,
        times_iso: list[str],
        done: dict[tuple[str, str], dict],
        out: Any,
        progress: Progress,
    ) -> tuple[_Scored, int]:
        task = progress.add_task(f"scoring {name}", total=len(items))

        def advance() -> None:
            if not self.quiet:  # a quiet run draws no bar: skip rich's locking per row
                progress.advance(task)

        choices: list[str | None] = []
        rewards = np.zeros(len(items))
        invalid = errors = resumed = kept = 0
        tally = PolicyTally()
        is_llm = isinstance(policy, LLMPolicy)
        partial = isinstance(policy, LLMPolicy) and policy.incomplete
        flushed = time.monotonic()
        # the parts of a row that depend only on the decision are encoded once per run
        lines = self._decision_lines(items, times_iso)
        policy_text = strict_json.dumps(name)
        times_ns = times.as_unit("ns").asi8.tolist()
        for i, ((state, cands), t_iso, t_ns) in enumerate(
            zip(items, times_iso, times_ns, strict=True)
        ):
            prior = done.get((name, t_iso)) if done else None  # done: a resumed run's rows
            if prior is not None:
                choice_name = prior["instrument_name"]
                rewards[i] = prior["reward"]
                invalid += int(not prior["valid"])
                errors += int(prior.get("error") is not None)
                tally.add(prior)
                choices.append(choice_name)
                resumed += 1
                advance()
                continue
            choice = guarded(state, cands)
            if partial and cands and policy.record_for(times[i]) is None:
                # A stopped policy did not ask this decision: no row (a resume asks it).
                choices.append(None)
                advance()
                continue
            choice_name = choice.instrument_name if choice is not None else None
            reward = self._reward_of[(t_ns, choice_name)] if choice_name else 0.0
            best_name, best_reward = self._best[i]
            if best_name is not None and best_name != best_name:
                best_name = None  # NaN: no best instrument
            bad = guarded.invalid.get(times[i]) if guarded.invalid else None
            if not (bad or is_llm):
                # a valid decision without error or LLM answer: its line, and its row object
                # only when something reads it (`_row_objects`)
                line = lines.plain_line(i, policy_text, choice_name, reward, best_reward, best_name)
                tally.add_valid(offered=bool(cands))
                safe = self.secrets.scrub(line)
                out.write(safe + "\n")
                if i % _FLUSH_EVERY == 0 or time.monotonic() - flushed > _FLUSH_AFTER_S:
                    out.flush()  # as below for a rule decision
                    flushed = time.monotonic()
                if self._rows is not None:
                    # as below: the row itself unless scrubbing changed its text
                    plain = safe == line
                    self._rows.append(
                        (lines, i, name, choice_name, reward, best_reward, best_name)
                        if plain
                        else json.loads(safe)
                    )
                    kept += plain
                choices.append(choice_name)
                rewards[i] = reward
                advance()
                continue
            own: dict[str, Any] = {
                "action": "SELL_CALL" if choice_name else "DO_NOTHING",
                "instrument_name": choice_name,
                "valid": True,
                "invalid_reason": None,
                "error": None,
                "reward": reward,
                "best_reward": best_reward,
                "best_instrument": best_name,
                "regret": best_reward - reward,
                "llm": None,
            }
            row = lines.row(i, name, own)  # the same object; own's fields are set on it below
            if bad:
                row["valid"], row["invalid_reason"] = False, bad
            if isinstance(policy, LLMPolicy):
                rec = policy.record_for(times[i])
                if rec is not None:
                    row["valid"] = rec.valid and not bad
                    row["invalid_reason"] = rec.invalid_reason or bad
                    row["error"] = rec.error
                    row["llm"] = {
                        "model": rec.model,
                        "prompt_id": rec.prompt_id,
                        "cache_hit": rec.cache_hit,
                        "calls_made": rec.calls_made,
                        "prompt_tokens": rec.prompt_tokens,
                        "completion_tokens": rec.completion_tokens,
                        "cached_tokens": rec.cached_tokens,
                        "cost_usd": rec.cost_usd,
                        "cost_saved_usd": rec.cost_usd_saved,
                        "latency_s": rec.latency_s,
                        "raw": "\n---\n".join(rec.raw_answers),
                        "rationale": rec.rationale,
                        "fallback_used": rec.fallback_used,
                    }
                    if self.answers is not None:
                        row["llm"]["replayed"] = True  # timing, cache and cost fields differ
            invalid += int(not row["valid"])
            errors += int(row["error"] is not None)
            tally.add(row)
            # own's fields as the row now has them (only an invalid or LLM row changed them)
            now = {k: row[k] for k in own} if bad or is_llm else own
            line = lines.line(i, policy_text, now)
            safe = self.secrets.scrub(line)
            out.write(safe + "\n")
            if is_llm:
                out.flush()  # an answer costs money: on disk at once for --resume
            elif i % _FLUSH_EVERY == 0 or time.monotonic() - flushed > _FLUSH_AFTER_S:
                # a rule decision is cheap to redo after a kill; a slow python or model
                # policy's progress still reaches the disk every second
                out.flush()
                flushed = time.monotonic()
            if self._rows is not None:
                # the written object: the row itself when scrubbing left it unchanged and the
                # report reads only plain fields of it (a non-finite float, written as null, is
                # NaN to the report either way)
                plain = safe == line and row["llm"] is None and row["error"] is None
                plain = plain and type(row["valid"]) is bool
                self._rows.append(row if plain else json.loads(safe))
                kept += plain and row["valid"] is True
            choices.append(choice_name)
            rewards[i] = reward
            advance()
        out.flush()
        scored = _Scored(
            choices=choices,
            rewards=rewards,
            invalid=invalid,
            errors=errors,
            tally=tally,
            partial=partial,
            # every decision has a plain row in memory: the report's table comes from arrays
            plain=not is_llm and kept == len(items) and self._rows is not None,
        )
        return scored, resumed

    # ------------------------------------------------------------------ outputs
    def _metrics(
        self,
        ran: list[str],
        scored: dict[str, _Scored],
        results: dict[str, SimulationResult],
        llm_usage: dict[str, dict[str, Any]],
    ) -> dict[str, dict[str, float]]:
        best = np.array([b for _, b in self._best]) if self._best else np.zeros(0)
        out: dict[str, dict[str, float]] = {}
        for name in ran:
            s = scored[name]
            n = len(s.rewards)
            # A stopped policy has no portfolio replay: decision metrics only.
            m = dict(results[name].metrics) if name in results else {}
            m.update(
                {
                    "n_decisions": float(n),
                    "n_asked": float(s.tally.asked),
                    "mean_reward": float(s.rewards.mean()) if n else 0.0,
                    "total_reward": float(s.rewards.sum()),
                    "mean_regret": float((best - s.rewards).mean()) if n else 0.0,
                    "sell_rate": float(np.mean([c is not None for c in s.choices])) if n else 0.0,
                    # over asked decisions: a decision without candidates cannot fail
                    "invalid_rate": s.tally.invalid_rate,
                    "error_rate": s.tally.error_rate,
                    "cost_usd": float(llm_usage.get(name, {}).get("cost_usd_incurred", 0.0)),
                    # of which at live and at batch prices (docs/llm.md "Batch mode")
                    "cost_usd_live": float(llm_usage.get(name, {}).get("cost_usd_live", 0.0)),
                    "cost_usd_batch": float(llm_usage.get(name, {}).get("cost_usd_batch", 0.0)),
                }
            )
            out[name] = m
        return out

    def _block_length(self, sim: CoveredCallSimulator) -> int:
        c = self.config.simulation
        spacing = sim.bar * c.decision_interval_bars
        life = pd.Timedelta(days=c.target_dte + c.dte_tolerance)
        return max(1, math.ceil(life / spacing))

    def _compare(
        self, ran: list[str], scored: dict[str, _Scored], sim: CoveredCallSimulator
    ) -> list[PairedComparison]:
        base = self.config.baseline_name
        if base not in scored:
            return []
        b = scored[base]
        block = self._block_length(sim)
        return [
            paired_comparison(
                name,
                base,
                scored[name].rewards,
                b.rewards,
                scored[name].choices,
                b.choices,
                block_length=block,
                seed=self.config.seed,
            )
            for name in ran
            if name != base
        ]

    def _all_pairs(self, ran: list[str], sim: CoveredCallSimulator) -> list[PairedComparison]:
        """Every pair of the policies that ran (earlier minus later in config order), Holm-adjusted."""
        scored = self._scored_for_pairs
        names = [n for n in ran if n in scored]
        return all_pairs(
            {n: scored[n].rewards for n in names},
            {n: scored[n].choices for n in names},
            block_length=self._block_length(sim),
            seed=self.config.seed,
        )

    def _write_outputs(
        self,
        sim: CoveredCallSimulator,
        labels: pd.DataFrame,
        results: dict[str, SimulationResult],
        metrics: dict[str, dict[str, float]],
        comparison: list[PairedComparison],
        ran: list[str],
    ) -> None:
        d = self.run_dir
        trade_rows = []
        for name in (n for n in ran if n in results):
            for t in results[name].trades:
                row = {"policy": name}
                row.update({f: getattr(t, f) for f in t.__dataclass_fields__})
                trade_rows.append(row)
        trade_cols = ["policy", *SimulatedTrade.__dataclass_fields__]
        trades = pd.DataFrame(trade_rows, columns=trade_cols)
        trades.to_csv(d / "trades.csv", index=False)
        self._trades = trades  # the report's from memory (it compares trades within the run)
        eq = [
            pd.DataFrame(
                {
                    "timestamp": r.equity_curve.index,
                    "policy": name,
                    "equity": r.equity_curve.to_numpy(),
                    "hodl": r.hodl_curve.to_numpy(),
                    "equity_vs_hodl": r.equity_vs_hodl.to_numpy(),
                }
            )
            for name, r in ((n, results[n]) for n in ran if n in results)
        ]
        equity = (
            pd.concat(eq, ignore_index=True)
            if eq
            else pd.DataFrame(columns=["timestamp", "policy", "equity", "hodl", "equity_vs_hodl"])
        )
        write_parquet(equity, d / "equity.parquet")
        # the report reads the frame just written from memory (a Parquet round trip keeps it)
        self._equity = equity if not equity.empty else None
        write_parquet(labels, d / "labels.parquet", drop=("best_reward", "reward_regret"))
        (d / "metrics.json").write_text(strict_json.dumps(metrics, indent=2, default=_json_float))
        agreement = (
            _plain_agreement({n: self._plain[n].choices for n in ran})
            if self._all_plain(ran)
            else _agreement(self._decision_objects(), ran)
        )
        every_pair = self._all_pairs(ran, sim)
        (d / "comparison.json").write_text(
            strict_json.dumps(
                {
                    "baseline": self.config.baseline_name,
                    "reward_kind": self.config.reward.kind,
                    "block_length": self._block_length(sim),
                    "pairs": [c.to_dict() for c in comparison],
                    "all_pairs": [c.to_dict() for c in every_pair],
                    "agreement": agreement,
                },
                indent=2,
                default=_json_float,
            )
        )

    def _all_plain(self, ran: list[str]) -> bool:
        """True when decisions.jsonl holds exactly one plain row per decision of each policy
        that ran, all in memory: the report's table and the agreement come from the arrays."""
        n_times = len(self._best)
        return (
            self._rows is not None
            and bool(ran)
            and set(self._plain) == set(ran)
            and len(self._rows) == len(ran) * n_times  # no other policy's rows
        )

    def written_decisions(self) -> list[dict[str, Any]] | None:
        """decisions.jsonl's objects as the last `run` wrote them, in file order; None after a
        resumed run (the file then also holds an earlier run's rows: read it instead)."""
        return self._row_objects() if getattr(self, "_rows", None) is not None else None

    def plain_rewards(self) -> tuple[list[str], dict[str, np.ndarray]] | None:
        """(decision times as written, each policy's reward per decision) when the last `run`
        wrote exactly one plain row per decision of each policy (a fresh rule run): the
        rewards of decisions.jsonl without its row objects. None otherwise."""
        ran = getattr(self, "_ran", None)
        if ran is None or not self._all_plain(ran):
            return None
        return self._times_iso, {n: self._plain[n].rewards for n in ran}

    def _row_objects(self) -> list[dict[str, Any]]:
        """The rows kept in memory as objects: a plain row is kept as the arguments of
        `DecisionLines.plain_row` until something reads it, and made here (once)."""
        rows = self._rows
        assert rows is not None
        for j, r in enumerate(rows):
            if type(r) is tuple:
                lines, i, policy, *rest = r
                rows[j] = lines.plain_row(i, policy, *rest)
        return rows  # type: ignore[return-value]

    def _decision_objects(self) -> list[dict[str, Any]]:
        """decisions.jsonl's objects: from memory on a fresh run, else read (torn lines skipped)."""
        if self._rows is not None:
            return self._row_objects()
        rows = []
        for line in (self.run_dir / "decisions.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def _write_report(
        self,
        times_iso: list[str],
        items: list[tuple[DecisionState, list[CallCandidate]]],
        ran: list[str],
    ) -> None:
        try:
            from harness.reports.report import write_report
            from harness.reports.rule_decisions import PlainChoices, plain_decisions_frame
        except ImportError:  # report module not available in a trimmed install
            return
        try:
            decisions = None
            if self._all_plain(ran):
                # every row in memory is plain: the table from the scored arrays, not the dicts
                decisions = plain_decisions_frame(
                    times_iso,
                    [len(cands) for _, cands in items],
                    [b for _, b in self._best],
                    [PlainChoices(n, self._plain[n].choices, self._plain[n].rewards) for n in ran],
                )
            write_report(
                self.run_dir,
                html=self.html_report,
                # the rows are read only when the table is not made from the arrays
                decision_rows=(
                    self._row_objects() if decisions is None and self._rows is not None else None
                ),
                equity=self._equity,
                decisions=decisions,
                trades=self._trades,
            )
        except Exception as exc:  # the run's data is written; a broken chart must not lose it
            log.exception("report failed")
            self.console.print(f"[red]report failed[/]: {exc}")


def _model_policy(entry: ModelPolicyEntry) -> PolicyFn:
    """A `type: model` entry as a policy (harness.policies.learned)."""
    return load_learned_policy(
        entry.path,
        threshold=entry.threshold,
        allow_in_sample=entry.allow_in_sample,
        name=entry.name,
    )


def _json_float(x: Any) -> Any:
    if isinstance(x, np.floating | np.integer):
        return x.item()
    return str(x)


def _agreement(rows: list[dict[str, Any]], ran: list[str]) -> dict[str, dict[str, float]]:
    """Share of decisions where two policies chose the same action (decisions.jsonl's rows)."""
    choice: dict[str, dict[str, str | None]] = {n: {} for n in ran}
    for row in rows:
        if row["policy"] in choice:
            choice[row["policy"]][row["decision_time"]] = row["instrument_name"]
    out: dict[str, dict[str, float]] = {}
    for a in ran:
        out[a] = {}
        for b in ran:
            if a == b:
                continue
            common = choice[a].keys() & choice[b].keys()
            out[a][b] = (
                float(np.mean([choice[a][t] == choice[b][t] for t in common]))
                if common
                else float("nan")
            )
    return out


def _plain_agreement(choices: dict[str, list[str | None]]) -> dict[str, dict[str, float]]:
    """`_agreement` of policies with one row at every decision: their choices, decision by
    decision (the same shares: a mean of booleans does not depend on their order)."""
    out: dict[str, dict[str, float]] = {}
    for a, ca in choices.items():
        out[a] = {}
        for b, cb in choices.items():
            if a == b:
                continue
            out[a][b] = (
                float(np.mean([x == y for x, y in zip(ca, cb, strict=True)]))
                if ca
                else float("nan")
            )
    return out


def run_experiment(
    config: ExperimentConfig,
    *,
    out_dir: str | Path = "runs",
    cache_mode: CacheMode | None = None,
    require_llm: bool = False,
    resume: str | Path | None = None,
    quiet: bool = False,
    max_cost_usd: float | None = None,
    answers: TranscriptBook | None = None,
    config_path: str | Path | None = None,
    batch: bool = False,
) -> RunSummary:
    """Run `config` and write its run folder under `out_dir` (or continue `resume`).

    `max_cost_usd` caps what this invocation may spend on LLM calls (USD); `answers` serves
    every LLM request from a run's transcripts (replay); `config_path` is only quoted in the
    resume hint; `batch` sets `execution: batch` on every LLM policy (docs/llm.md "Batch
    mode"). The config is checked first (rule and python policy parameters, prompts,
    period length), so a bad one fails before a run folder exists. Ctrl-C raises
    `RunInterrupted` with the run folder to resume.
    """
    check_config(config)
    runner = ExperimentRunner(
        config,
        out_dir=out_dir,
        cache_mode=cache_mode,
        require_llm=require_llm,
        resume=resume,
        quiet=quiet,
        max_cost_usd=max_cost_usd,
        answers=answers,
        config_path=config_path,
        batch=batch,
    )
    try:
        return runner.run()
    except KeyboardInterrupt:
        raise RunInterrupted(runner.run_dir) from None
    except NoDecisionsError:
        if resume is None:  # nothing but config.yaml was written: leave no empty run behind
            shutil.rmtree(runner.run_dir, ignore_errors=True)
        raise


def _no_decisions_reason(cfg: ExperimentConfig) -> str:
    sim = cfg.simulation
    days = (sim.end_ts - sim.start_ts) / pd.Timedelta(days=1)
    return (
        f"no decision times between {sim.start_ts:%Y-%m-%d} and {sim.end_ts:%Y-%m-%d} "
        f"({days:.1f} days): each decision needs a call of {sim.target_dte} days "
        f"(tolerance {sim.dte_tolerance}) listed and expiring inside the data; lengthen the "
        "period or lower simulation.target_dte"
    )
