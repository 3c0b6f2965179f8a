"""Where sweep trials run: inline, a local process pool, or a Ray cluster.

Trials that share a market (same market section and bar) load it once per worker process:
`market_for` keeps an in-process cache keyed by that market, and a pool or Ray worker runs
many trials. On Ray, the driver builds each market once and puts it into the object store;
workers fetch it once and keep it. Ray workers run a trial in a scratch folder and send the
run folder's files back, so the sweep folder needs no shared filesystem.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from harness.data.source import MarketDataSource
from harness.experiments.config import ExperimentConfig, parse_config
from harness.experiments.markets import build_market
from harness.experiments.sweep_market import SharedChains, share_chains
from harness.experiments.sweep_outputs import TrialBoard, trial_board
from harness.experiments.sweep_pool import worker_context

Backend = Literal["local", "ray"]
DRIVER = "driver"  # outcome status: the trial must run in the driver (the cache writer)
_MARKETS: dict[str, MarketDataSource] = {}
_MAX_MARKETS = 4  # markets kept per worker process (a year of 1h synthetic BTC is ~100 MB)
_WORKER = False  # True in a pool or Ray worker process (see `_settle_worker`)
FULL_GC_EVERY = 10  # trials between full collections in a worker (its only collections)
_TRIALS_SINCE_FULL_GC = 0


@dataclass(frozen=True)
class TrialTask:
    """One trial to run: its folder (on the driver), resolved config and report choice."""

    index: int
    trial_dir: str
    config_json: str  # the resolved config (`config_json`), parsed where the trial runs
    html_report: bool
    cache_mode: str | None = None
    files: dict[str, bytes] | None = None  # Ray: the folder's files so far, for a remote resume
    # an LLM trial whose requests the driver prefetched: replay it from the cache read-only,
    # and hand it back to the driver (status "driver") if any answer is missing there
    llm_replay: bool = False


@dataclass(frozen=True)
class TrialOutcome:
    """What running a trial gave: `complete` or `failed` (with the error), and the time taken."""

    index: int
    status: str
    error: str | None
    elapsed_s: float
    files: dict[str, bytes] | None = None  # Ray: the run folder's files, written by the driver
    cpu_s: float = 0.0  # CPU seconds of the process that ran it, during the trial
    # a complete trial's leaderboard entries, summarized where it ran (the driver then only
    # gathers them instead of reading every trial's decisions after the last one finished)
    board: TrialBoard | None = None


def config_json(config: ExperimentConfig) -> str:
    """The resolved config as JSON text, for a trial task (30x cheaper to write than YAML)."""
    return json.dumps(config.model_dump(mode="json"))


def market_key(config: ExperimentConfig) -> str:
    """Identity of a trial's market: the market section and the bar it is loaded at."""
    return json.dumps(
        {"market": config.market.model_dump(mode="json"), "timeframe": config.simulation.timeframe},
        sort_keys=True,
    )


def market_for(config: ExperimentConfig) -> MarketDataSource:
    """The market of `config` from this process's cache, built on first use."""
    key = market_key(config)
    source = _MARKETS.get(key)
    if source is None:
        source = _keep(key, build_market(config.market, config.simulation.timeframe))
    return source


def prepare_markets(configs: Sequence[ExperimentConfig]) -> dict[str, MarketDataSource]:
    """Each distinct market of `configs`, built and warmed once here (the driver), by key.

    Warming builds every chain the trials will ask in one request, so workers receive the
    chain arrays instead of each building them again.
    """
    groups: dict[str, list[ExperimentConfig]] = {}
    for cfg in configs:
        groups.setdefault(market_key(cfg), []).append(cfg)
    out: dict[str, MarketDataSource] = {}
    for key, cfgs in groups.items():
        source = market_for(cfgs[0])
        if isinstance(source, SharedChains):
            source.warm([c.simulation for c in cfgs])
        out[key] = source
    return out


def _install(markets: dict[str, MarketDataSource]) -> None:
    """Pool initializer: keep the driver's prepared markets in this worker process."""
    for key, source in markets.items():
        _keep(key, source)
    _settle_worker()


def _settle_worker() -> None:
    """Mark this process a sweep worker and move what it holds now out of the cyclic GC's way.

    A worker keeps its modules and markets (millions of objects) for its whole life; every
    full collection walked all of them, about a tenth of a trial's CPU. Frozen, they are
    never walked again (they are still freed by reference counting). The automatic
    collector then stays off in this process: `run_trial` collects every `FULL_GC_EVERY`
    trials instead (see `_trial_gc`).
    """
    global _WORKER
    _WORKER = True
    gc.collect()
    gc.freeze()
    gc.disable()


def _keep(key: str, source: MarketDataSource) -> MarketDataSource:
    """Keep `source` (with shared chains) in this process, dropping the oldest past the limit."""
    if len(_MARKETS) >= _MAX_MARKETS:
        _MARKETS.pop(next(iter(_MARKETS)))
    _MARKETS[key] = share_chains(source)
    return _MARKETS[key]


def needs_cache_writer(config: ExperimentConfig) -> bool:
    """True for trials with LLM policies: they run where the one response-cache writer lives."""
    return any(p.type == "llm" for p in config.policies)


def prefetch_trial(task: TrialTask) -> dict[str, dict[str, Any]]:
    """Ask every LLM request of a trial into the response cache, here (the cache writer).

    Returns each LLM policy's summary (see `ExperimentRunner.prefetch_llm`).
    """
    from harness.experiments.runner import ExperimentRunner

    config = parse_config(json.loads(task.config_json), task.trial_dir)
    runner = ExperimentRunner(
        config,
        resume=task.trial_dir,
        cache_mode=task.cache_mode,  # type: ignore[arg-type]
        quiet=True,
        market=market_for(config),
    )
    return runner.prefetch_llm()


def replayable(summaries: dict[str, dict[str, Any]]) -> bool:
    """Whether a prefetch left every answer of the trial in the cache (nothing skipped,
    halted or failed), so a worker can replay it with the cache opened read-only."""
    return all(
        "skipped" not in s and not s.get("halted") and not s.get("errors")
        for s in summaries.values()
    )


@contextmanager
def _trial_gc() -> Iterator[None]:
    """In a sweep worker: no automatic cyclic GC, one full collection every `FULL_GC_EVERY` trials.

    A trial makes hundreds of thousands of short-lived objects (states, candidates, rows),
    almost all freed by reference counting; the automatic collector ran several passes over
    the worker's heap per trial. What a trial leaves in reference cycles is small (about 300
    objects: progress bars, JSON encoder closures, template contexts; no arrays or frames),
    so a full collection every tenth trial (counted in that trial's time) keeps memory flat
    at about 6 ms per trial; collecting the youngest generation after every trial cost 9-10
    ms, because it walked what the worker keeps between trials each time. Elsewhere (the
    driver, a user's process) the collector is left alone.
    """
    if not _WORKER:
        yield
        return
    global _TRIALS_SINCE_FULL_GC
    gc.disable()  # off since `_settle_worker`; again in case a trial's code turned it on
    try:
        yield
    finally:
        _TRIALS_SINCE_FULL_GC += 1
        if _TRIALS_SINCE_FULL_GC >= FULL_GC_EVERY:
            gc.collect()
            _TRIALS_SINCE_FULL_GC = 0


def run_trial(task: TrialTask, market: MarketDataSource | None = None) -> TrialOutcome:
    """Run one trial into its folder (resuming decisions already there); never raises."""
    t0, c0 = time.perf_counter(), time.process_time()
    with _trial_gc():
        status, error, board = _run_trial(task, market)
    return TrialOutcome(
        task.index,
        status,
        error,
        time.perf_counter() - t0,
        cpu_s=time.process_time() - c0,
        board=board,
    )


def _run_trial(
    task: TrialTask, market: MarketDataSource | None
) -> tuple[str, str | None, TrialBoard | None]:
    """(status, error, leaderboard entries) of running one trial; see `run_trial`."""
    from harness.experiments.runner import ExperimentRunner, LLMRequiredError

    try:
        config = parse_config(json.loads(task.config_json), task.trial_dir)
        runner = ExperimentRunner(
            config,
            resume=task.trial_dir,
            cache_mode="read_only" if task.llm_replay else task.cache_mode,  # type: ignore[arg-type]
            require_llm=task.llm_replay,
            quiet=True,
            market=market or market_for(config),
            html_report=task.html_report,
        )
        runner.run()
    except LLMRequiredError as exc:
        if not task.llm_replay:
            raise
        # an answer the prefetch did not leave in the cache (or no copy of the cache on this
        # node): the folder is not finished, the driver runs the trial with the cache writer
        (Path(task.trial_dir) / "manifest.json").unlink(missing_ok=True)
        return DRIVER, str(exc), None
    except Exception as exc:
        return "failed", "".join(traceback.format_exception_only(exc)).strip(), None
    try:
        plain = runner.plain_rewards()  # a fresh rule trial: no row objects needed
        rows = runner.written_decisions() if plain is None else None
        board = trial_board(Path(task.trial_dir), rows, plain_rewards=plain)
    except Exception:  # the driver reads the folder again and reports the error
        board = None
    return "complete", None, board


def run_inline(tasks: Iterable[TrialTask]) -> Iterator[TrialOutcome]:
    """Run trials one after another in this process."""
    for task in tasks:
        yield run_trial(task)


def run_local(
    tasks: list[TrialTask], workers: int, markets: dict[str, MarketDataSource] | None = None
) -> Iterator[TrialOutcome]:
    """Run trials in a pool of `workers` processes; each keeps its markets between trials.

    `markets` (from `prepare_markets`) are sent to every worker once, at its start.
    """
    if not tasks:
        return
    ctx = worker_context()  # forkserver: see sweep_pool (already started by `harness sweep`)
    with ProcessPoolExecutor(
        max_workers=max(1, workers),
        mp_context=ctx,
        initializer=_install,
        initargs=(markets or {},),
    ) as pool:
        futures = [pool.submit(run_trial, t) for t in tasks]
        for f in as_completed(futures):
            yield f.result()


# ---------------------------------------------------------------------- Ray
def _ray_trial(
    task: TrialTask, key: str, market_ref: list[Any], driver_node: str | None
) -> TrialOutcome:
    """Ray task: fetch the shared market once per worker, then run the trial.

    On the driver's node the trial writes straight into its folder; on any other node it runs
    in a scratch folder and sends the folder's files back (the sweep folder needs no shared
    filesystem). Shipping a trial's ~3.6 MB back cost the driver about 10 ms of CPU per trial
    (unpickling and writing again), taken from the trials on a small machine.
    """
    import ray

    source = _MARKETS.get(key)
    if source is None:
        # the reference is wrapped in a list so Ray hands it over unresolved: one fetch per
        # worker process, not one deserialized copy per task
        source = _keep(key, ray.get(market_ref[0]))
        _settle_worker()
    if driver_node is not None and ray.get_runtime_context().get_node_id() == driver_node:
        return run_trial(replace(task, files=None), market=source)
    with tempfile.TemporaryDirectory(prefix="harness-trial-") as tmp:
        scratch = Path(tmp) / Path(task.trial_dir).name
        write_back(scratch, task.files or {})
        local = replace(task, trial_dir=str(scratch), files=None)
        outcome = run_trial(local, market=source)
        files = {
            str(p.relative_to(scratch)): p.read_bytes() for p in scratch.rglob("*") if p.is_file()
        }
    return replace(outcome, files=files)


def resume_files(trial_dir: Path) -> dict[str, bytes]:
    """The files a trial folder already has (config, partial decisions) for a remote resume."""
    return {
        p.name: p.read_bytes()
        for p in (trial_dir / "config.yaml", trial_dir / "decisions.jsonl")
        if p.is_file()
    }


def run_ray(
    tasks: list[TrialTask],
    configs: dict[int, ExperimentConfig],
    markets: dict[str, MarketDataSource] | None = None,
    *,
    driver_node: str | None = None,
) -> Iterator[TrialOutcome]:
    """Run trials as Ray tasks; each distinct market is built here and put once in the store.

    Tasks on `driver_node` (default: this process's node) write their trial folders
    themselves; the others return their files for `write_back`. Through Ray Client
    (`ray://`) every task returns its files: the driver's folders are on the client machine.
    """
    if not tasks:
        return
    import ray
    from ray.util.client import ray as ray_client

    if driver_node is None and not ray_client.is_connected():
        driver_node = ray.get_runtime_context().get_node_id()
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_trial)
    markets = markets or {}
    refs: dict[str, Any] = {}
    pending = {}
    for task in tasks:
        cfg = configs[task.index]
        key = market_key(cfg)
        if key not in refs:
            refs[key] = ray.put(markets.get(key) or market_for(cfg))
        folder = Path(task.trial_dir).resolve()  # a worker's working directory may differ
        shipped = replace(task, trial_dir=str(folder), files=resume_files(folder))
        pending[remote.remote(shipped, key, [refs[key]], driver_node)] = task
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        task = pending.pop(done[0])
        try:
            outcome = ray.get(done[0])
        except Exception as exc:  # a worker that died: the trial stays resumable
            outcome = TrialOutcome(task.index, "failed", f"Ray task failed: {exc}", 0.0)
        yield outcome


def write_back(trial_dir: Path, files: dict[str, bytes]) -> None:
    """Write the files a remote trial sent back into its folder on the driver."""
    for rel, data in files.items():
        target = trial_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
