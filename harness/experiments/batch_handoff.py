"""`harness batch export|import`: batch files for a batch runner elsewhere (vLLM's `run-batch`).

Export renders every decision a config (or a run folder's config.yaml) would ask, and writes the
requests the response cache does not answer yet as OpenAI batch JSONL lines (`custom_id` = the
response-cache key, `method`, `url: /v1/chat/completions`, `body` exactly as a live call would
POST it). Import reads the output JSONL of such a runner and puts every answer into the response
cache as a live answer would be stored, so a run of the same config afterwards is served from the
cache. Exporting again after an import yields the next round (separate samples the `n` request
did not return, `on_invalid: retry` re-asks), empty when the config is fully answered.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from harness.experiments.config import ExperimentConfig, LLMPolicyEntry, load_config
from harness.experiments.markets import build_market
from harness.llm.batch import BatchResult, batch_lines, parse_output_line
from harness.llm.cache import ResponseCache
from harness.policies.llm import LLMPolicy
from harness.simulator import CoveredCallSimulator
from harness.state import DecisionState
from harness.types import CallCandidate

Decisions = list[tuple[DecisionState, list[CallCandidate]]]


@dataclass(frozen=True)
class ExportResult:
    """What `export_batch_requests` wrote."""

    out: Path
    requests: int
    by_policy: dict[str, int]
    models: tuple[str, ...]


@dataclass(frozen=True)
class ImportResult:
    """What `import_batch_results` put into the cache."""

    lines: int
    stored: int
    failed: int
    already_cached: int  # answers the cache held already (an earlier import)
    unknown: int  # custom_ids that are no request of the config's LLM policies
    by_policy: dict[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    cache_dir: str = ""


def resolve_config(run_or_config: str | Path) -> ExperimentConfig:
    """The config of a run folder (its config.yaml) or of an experiment YAML file."""
    path = Path(run_or_config)
    if path.is_dir():
        path = path / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"{run_or_config}: a folder but not a run folder (no config.yaml)"
            )
    return load_config(path)


def _entries(config: ExperimentConfig, policy: str | None) -> list[LLMPolicyEntry]:
    entries = [p for p in config.policies if isinstance(p, LLMPolicyEntry)]
    if policy is not None:
        entries = [p for p in entries if p.name == policy]
        if not entries:
            known = ", ".join(p.name for p in config.policies if isinstance(p, LLMPolicyEntry))
            raise ValueError(
                f"no LLM policy named {policy!r} in the config (LLM policies: {known})"
            )
    if not entries:
        raise ValueError(f"config {config.name!r} has no LLM policy: nothing to export or import")
    return entries


def _decisions(config: ExperimentConfig) -> Decisions:
    source = build_market(config.market, config.simulation.timeframe)
    sim = CoveredCallSimulator(source, config.simulation)
    return sim.flat_items()


def _policy(
    config: ExperimentConfig, entry: LLMPolicyEntry, cache: ResponseCache, items: Decisions
) -> LLMPolicy:
    settings = entry.model_copy(update={"cache_dir": config.cache.dir})
    # A rule named by on_invalid only replaces invalid answers when deciding: not needed here.
    fallback = None if entry.on_invalid in ("do_nothing", "retry") else (lambda s, c: None)
    policy = LLMPolicy.from_config(
        settings, fallback=fallback, cache=cache, cache_mode="read_write"
    )
    if policy.config.anonymize and items:
        # day 0 and spot 100 are the run's first decision, as in `harness run`
        policy.set_anchor(items[0][0].time, items[0][0].spot)
    return policy


def export_batch_requests(
    run_or_config: str | Path,
    out: str | Path,
    *,
    policy: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write the requests of `run_or_config`'s LLM policies the cache does not answer as batch
    JSONL to `out` (one model and endpoint per file: pick one with `policy` otherwise)."""
    config = resolve_config(run_or_config)
    entries = _entries(config, policy)
    if progress:
        progress("loading market")
    items = _decisions(config)
    lines: list[bytes] = []
    by_policy: dict[str, int] = {}
    groups: set[tuple[str, str]] = set()
    with ExitStack() as stack:
        cache = stack.enter_context(ResponseCache(config.cache.dir))
        for entry in entries:
            if progress:
                progress(f"rendering {entry.name}")
            p = stack.enter_context(_policy(config, entry, cache, items))
            batch = p.batch_requests(items)
            by_policy[entry.name] = len(batch)
            groups.update((b.model, b.base_url) for b in batch)
            lines.extend(batch_lines(batch))
    if len(groups) > 1:
        shown = "; ".join(f"{m} at {u}" for m, u in sorted(groups))
        raise ValueError(
            f"the requests go to {len(groups)} models or endpoints ({shown}); a batch file holds "
            "one model: export one policy at a time with --policy NAME"
        )
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    with target.open("wb") as f:
        for line in lines:
            if line in seen:
                continue  # two policies asking the very same request: one line
            seen.add(line)
            f.write(line if line.endswith(b"\n") else line + b"\n")
    return ExportResult(
        out=target,
        requests=len(seen),
        by_policy=by_policy,
        models=tuple(sorted({m for m, _ in groups})),
    )


def read_results(path: str | Path) -> list[BatchResult]:
    """The results of a batch output (or error) JSONL file; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such batch results file")
    out = []
    with p.open("rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(parse_output_line(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{p}:{n}: not a batch output line: {exc}") from None
    return out


def import_batch_results(
    results_path: str | Path,
    config_path: str | Path,
    *,
    policy: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ImportResult:
    """Load a batch runner's output JSONL into the response cache of `config_path`'s policies
    (the config that produced the export: cache keys include model, endpoint and prompt)."""
    results = read_results(results_path)
    config = resolve_config(config_path)
    entries = _entries(config, policy)
    if progress:
        progress("loading market")
    items = _decisions(config)
    stored = failed = 0
    by_policy: dict[str, int] = {}
    errors: list[str] = []
    matched: set[str] = set()
    with ExitStack() as stack:
        cache = stack.enter_context(ResponseCache(config.cache.dir))
        for entry in entries:
            if progress:
                progress(f"matching {entry.name}")
            p = stack.enter_context(_policy(config, entry, cache, items))
            load = p.load_batch_results(items, results)
            stored += load.stored
            failed += load.failed
            by_policy[entry.name] = load.stored
            errors.extend(load.errors)
            matched |= load.matched
        rest = {r.custom_id for r in results} - matched
        already = {key for key in rest if key in cache}
    return ImportResult(
        lines=len(results),
        stored=stored,
        failed=failed,
        already_cached=len(already),
        unknown=len(rest - already),
        by_policy=by_policy,
        errors=tuple(errors),
        cache_dir=str(config.cache.dir),
    )
