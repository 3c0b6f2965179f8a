"""`harness plan CONFIG`: what a run would ask and cost, without calling anyone.

Builds the market and renders every prompt each LLM policy would send (first attempts, one per
sample), then counts per policy: decisions to ask, requests, answers already in the cache,
estimated prompt tokens (`harness.llm.tokens`: bpe-openai when installed, else characters / 4),
the answer budget (the policy's `token_budget` per answer, sent as its `token_param`:
`max_completion_tokens` and 8000 by default for reasoning models; an `n` request counts
`n` answers; an upper bound), cost at live and batch prices
for the requests not cached (a policy with `execution: batch` pays the batch column), and wall
time under the configured rate limits and concurrency (batch mode: up to the 24 h window).
`on_invalid: retry` re-asks are not counted (they depend on the answers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.experiments.config import ExperimentConfig, LLMPolicyEntry
from harness.experiments.markets import build_market
from harness.llm.cache import ResponseCache
from harness.llm.cost import PriceTable, Usage
from harness.llm.tokens import count_message_tokens, tokenizer_description
from harness.policies.llm import UNBOUNDED_ANSWER_TOKENS, LLMPolicy
from harness.simulator import CoveredCallSimulator

DEFAULT_LATENCY_S = 1.0


@dataclass(frozen=True)
class PolicyPlan:
    """What one LLM policy of a config would send (tokens and USD are estimates)."""

    policy: str
    model: str
    prompt_id: str
    decisions: int  # decision times of the run
    to_ask: int  # decisions with at least one candidate
    requests: int  # first attempts: to_ask x samples, or to_ask when samples go as `n`
    cached: int  # requests the cache already answers
    prompt_tokens: int  # of the requests not cached
    max_output_tokens: int  # answer budget of the requests not cached
    token_param: str  # request field carrying the budget (max_tokens / max_completion_tokens)
    token_budget: int | None  # per answer; None: unbounded (UNBOUNDED_ANSWER_TOKENS assumed)
    tokenizer: str  # how prompt tokens were counted
    priced: bool  # the price table lists the model
    cost_live_usd: float  # prompt tokens at the input price + the full answer budget at output
    cost_batch_usd: float | None  # the same through the batch API; None: no batch price
    wall_s: float  # estimated wall time of the requests not cached
    wall_basis: str  # what bounds the wall time
    execution: str = "live"  # the policy's `execution`: which of the two costs a run pays

    @property
    def cost_usd(self) -> float:
        """The cost a run would pay: live, or batch in batch mode (list price without one)."""
        if self.execution == "batch" and self.cost_batch_usd is not None:
            return self.cost_batch_usd
        return self.cost_live_usd

    def as_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self)


def _wall(entry: LLMPolicyEntry, n: int, tokens: int, latency_s: float) -> tuple[float, str]:
    bounds = {
        f"{n} requests x {latency_s:g} s / max_concurrency {entry.max_concurrency}": n
        * latency_s
        / entry.max_concurrency
    }
    if entry.requests_per_minute:
        bounds[f"requests_per_minute {entry.requests_per_minute:g}"] = (
            n / entry.requests_per_minute * 60.0
        )
    if entry.tokens_per_minute:
        bounds[f"tokens_per_minute {entry.tokens_per_minute:g}"] = (
            tokens / entry.tokens_per_minute * 60.0
        )
    basis = max(bounds, key=lambda k: bounds[k])
    return bounds[basis], basis


def plan_experiment(
    config: ExperimentConfig,
    *,
    latency_s: float = DEFAULT_LATENCY_S,
    progress: Callable[[str], None] | None = None,
) -> list[PolicyPlan]:
    """Render every prompt of `config`'s LLM policies and estimate requests, tokens, cost, time.

    `latency_s` is the assumed seconds per request for the concurrency bound on wall time.
    """
    entries = [p for p in config.policies if isinstance(p, LLMPolicyEntry)]
    if not entries:
        return []
    if progress:
        progress("loading market")
    source = build_market(config.market, config.simulation.timeframe)
    sim = CoveredCallSimulator(source, config.simulation)
    times = sim.decision_times()
    items = [(sim.build_state(t), sim.candidates(t)) for t in times]
    cache_dir = Path(config.cache.dir)
    cache = ResponseCache(cache_dir) if cache_dir.is_dir() else None
    plans = []
    try:
        for entry in entries:
            if progress:
                progress(f"rendering {entry.name}")
            plans.append(_plan_policy(config, entry, items, cache, latency_s))
    finally:
        if cache is not None:
            cache.close()
    return plans


def _plan_policy(
    config: ExperimentConfig,
    entry: LLMPolicyEntry,
    items: list[Any],
    cache: ResponseCache | None,
    latency_s: float,
) -> PolicyPlan:
    settings = entry.model_copy(update={"cache_dir": config.cache.dir})
    readable = config.cache.mode in ("read_write", "read_only") and cache is not None
    # A rule named by on_invalid is only called on invalid answers: planning needs none.
    fallback = None if entry.on_invalid in ("do_nothing", "retry") else (lambda s, c: None)
    with LLMPolicy.from_config(
        settings, fallback=fallback, cache=cache, cache_mode="off"
    ) as policy:
        if policy.config.anonymize and items:
            policy.set_anchor(items[0][0].time, items[0][0].spot)
        asked = [(state, cands) for state, cands in items if cands]
        budget = policy.config.token_budget
        token_param = policy.config.token_param
        requests = cached = prompt_tokens = out_tokens = 0
        for state, cands in asked:
            for request, key in policy.requests_for(state, cands):
                requests += 1
                if readable and key in cache:  # type: ignore[operator]
                    cached += 1
                    continue
                prompt_tokens += count_message_tokens(request.messages, request.model)
                # An `n` request bills up to n answers.
                out_tokens += request.n * (budget or UNBOUNDED_ANSWER_TOKENS)
        prompt_id = policy.prompt_id
    live = requests - cached
    price = PriceTable.load(entry.prices_path).price_for(entry.model)
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=out_tokens)
    cost = price.cost_usd(usage) if price is not None else 0.0
    batch = price.batch_cost_usd(usage) if price is not None else None
    wall, basis = _wall(entry, live, prompt_tokens + out_tokens, latency_s)
    return PolicyPlan(
        policy=entry.name,
        model=entry.model,
        prompt_id=prompt_id,
        decisions=len(items),
        to_ask=len(asked),
        requests=requests,
        cached=cached,
        prompt_tokens=prompt_tokens,
        max_output_tokens=out_tokens,
        token_param=token_param,
        token_budget=budget,
        tokenizer=tokenizer_description(entry.model),
        priced=price is not None,
        cost_live_usd=cost,
        cost_batch_usd=batch,
        wall_s=math.ceil(wall * 10) / 10,
        wall_basis=basis,
        execution=entry.execution,
    )
