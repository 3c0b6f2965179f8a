"""LLMPolicy: a prompt + model turned into a replayable covered-call policy.

At each decision it renders the prompt from the state and the candidate table, asks the model
(through the response cache), validates the answer against the contract, and returns the chosen
candidate or None (DO_NOTHING). `prefetch` asks many decisions concurrently first so the
sequential replay only reads the cache. Every decision leaves an `LLMDecisionRecord`.

Errors: a bad answer never raises (it is recorded as invalid and `on_invalid` applies); a call
that still fails after its retries is recorded as an error and the decision is DO_NOTHING unless
`on_error="abort"`. `LLMUnavailable` (missing/rejected API key, unknown model, no quota) and
`CacheMissError` (read_only cache without the answer) do raise: the run cannot be meaningful.

Run health (docs/llm.md): `prefetch` sends the first uncached request alone; if it fails (a 400
only when it repeats with the same text) the policy raises `LLMUnavailable` before any other
request leaves. During the prefetch the policy stops asking (`halted`) after
`max_consecutive_errors` failed decisions in a row, once errors or invalid answers already
exceed `max_error_rate` / `max_invalid_rate` of the decisions to ask, or when a spend cap would
be passed. Every request and its answer is written to the run's transcript when one is attached.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.llm.anonymize import Anchor, AnonymizedView, PlainView
from harness.llm.budget import Reservation, SpendCap, SpendCapReached, reserve, settle
from harness.llm.cache import (
    CachedResponse,
    CacheLookup,
    CacheMissError,
    CacheMode,
    ResponseCache,
    cache_key,
    canonical_json,
)
from harness.llm.client import (
    DEFAULT_API_KEY_ENV,
    ChatClient,
    ChatRequest,
    ChatResponse,
    LLMCallError,
    LLMUnavailable,
)
from harness.llm.contract import AnswerCheck, response_format_for, validate_answer
from harness.llm.cost import PriceTable, Usage
from harness.llm.health import classify_failure, probe_skips
from harness.llm.prompts import PromptTemplate, build_context, load_prompt
from harness.llm.ratelimit import RateLimiter
from harness.llm.retry import RetryPolicy
from harness.llm.tokens import count_message_tokens
from harness.llm.transcripts import (
    TranscriptBook,
    TranscriptMissing,
    TranscriptRecord,
    TranscriptRequest,
    TranscriptResponse,
    TranscriptWriter,
)
from harness.state import DecisionState
from harness.timestamps import TimestampLike, to_utc
from harness.types import CallCandidate

Policy = Callable[[DecisionState, Sequence[CallCandidate]], CallCandidate | None]
BUILTIN_ON_INVALID = ("do_nothing", "retry")
# Answer budget assumed by spend caps when `max_tokens` is not set.
UNBOUNDED_ANSWER_TOKENS = 4096


class LLMPolicyConfig(BaseModel):
    """Settings of an LLM policy (the `llm` policy block of an experiment config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, description="Model name as the server knows it.")
    prompt: str = Field("covered_call_v1", description="Prompt name in prompts/ (or a path stem).")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint; None = OpenAI.")
    api_key_env: str | None = Field(
        DEFAULT_API_KEY_ENV,
        description="Env var holding the API key; None for local servers that need no key.",
    )
    temperature: float | None = Field(0.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, description="Sent as seed + sample index when set.")
    max_tokens: int | None = Field(400, ge=1, description="Answer token budget.")
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    samples: int = Field(1, ge=1, le=64, description="Answers per decision, majority vote.")
    on_invalid: str = Field(
        "do_nothing", min_length=1, description="do_nothing | retry | <rule policy name>."
    )
    on_error: Literal["record", "abort"] = "record"
    max_concurrency: int = Field(8, ge=1, le=4096, description="Requests in flight in prefetch.")
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(60.0, gt=0, description="Per HTTP request, seconds.")
    max_attempts: int = Field(5, ge=1, le=100, description="HTTP attempts per request.")
    max_total_s: float = Field(300.0, gt=0, description="Retry budget per request, seconds.")
    initial_backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(30.0, ge=0)
    max_retry_after_s: float = Field(120.0, ge=0)
    structured_output: bool = Field(
        True, description="Ask with a strict JSON-schema response_format (auto fallback)."
    )
    anonymize: bool = Field(False, description="Relative days, indexed prices, aliases.")
    cache_mode: CacheMode = "read_write"
    cache_dir: str | None = Field(
        None, description="Response cache directory (default .cache/llm)."
    )
    prompts_dir: str | None = None
    prices_path: str | None = Field(None, description="Override file for model prices.")
    name: str | None = Field(None, description="Policy name in reports.")
    # Run health and spend (docs/llm.md "Run health" and "Spend control").
    max_error_rate: float = Field(
        0.1, ge=0, le=1, description="Failed share of asked decisions past which it fails."
    )
    max_invalid_rate: float = Field(
        0.5, ge=0, le=1, description="Invalid share of asked decisions past which it fails."
    )
    max_consecutive_errors: int = Field(
        20, ge=1, description="Failed decisions in a row after which the policy stops asking."
    )
    max_cost_usd: float | None = Field(
        None, ge=0, description="Spend cap of this policy per `harness run` invocation, USD."
    )

    @model_validator(mode="after")
    def _check(self) -> LLMPolicyConfig:
        if self.api_key_env is not None and not self.api_key_env.strip():
            raise ValueError("api_key_env must be an environment variable name or null")
        return self

    @property
    def policy_name(self) -> str:
        """`name`, else 'llm:<model>:<prompt>' (+ ':anon')."""
        if self.name:
            return self.name
        return f"llm:{self.model}:{self.prompt}" + (":anon" if self.anonymize else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMDecisionRecord:
    """What the LLM policy did at one decision (tokens are the original usage of the answers
    used, cached or not; `cost_usd` is what this run paid, `cost_usd_saved` what the cache saved).
    """

    decision_time: pd.Timestamp
    policy: str
    model: str
    prompt_id: str
    raw_answers: tuple[str, ...]  # every answer text received, retries included, in order
    action: str | None  # SELL_CALL / DO_NOTHING of the decision, None when it failed
    instrument_name: str | None  # real instrument name of the decision (mapped back)
    rationale: str = ""
    valid: bool
    invalid_reason: str | None = None
    error: str | None = None
    fallback_used: bool = False
    cache_hit: bool  # every answer came from the cache (no HTTP request)
    calls_made: int  # HTTP requests made for this decision, failed ones included
    samples: int = 1
    votes: dict[str, int] = field(default_factory=dict)  # choice ('DO_NOTHING' or name) -> votes
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cost_usd_saved: float = 0.0
    latency_s: float = 0.0  # wall time of the decision, seconds
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (time as ISO text)."""
        out = asdict(self)
        out["decision_time"] = self.decision_time.isoformat()
        out["raw_answers"] = list(self.raw_answers)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMRunSummary:
    """Totals of an LLM policy so far (tokens and cost incurred count live HTTP answers only)."""

    policy: str
    model: str
    prompt_id: str
    decisions: int
    calls_made: int
    served_from_cache: int  # answers read from the cache or shared with an identical request
    decisions_from_cache: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd_incurred: float
    cost_usd_saved: float
    invalid: int
    errors: int
    fallback_used: int
    model_priced: bool  # False: the price table does not list the model, costs show as 0
    asked: int = 0  # decisions where the model was asked (with candidates)
    error_rate: float = 0.0  # errors / asked
    invalid_rate: float = 0.0  # invalid / asked
    halted: str | None = None  # why the policy stopped asking before the end, if it did

    def as_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self)


@dataclass(slots=True)
class _Asked:
    """One request's outcome inside a decision."""

    request: ChatRequest
    lookup: CacheLookup | None = None
    error: str | None = None
    calls: int = 0
    check: AnswerCheck | None = None
    failure: str | None = None  # harness.llm.health kind of `error`
    attempt: int = 0  # on_invalid=retry attempt index


@dataclass(frozen=True, slots=True)
class _Plan:
    time: pd.Timestamp
    messages: tuple[tuple[str, str], ...]
    names: dict[str, str]  # shown name -> real instrument name
    requests: tuple[ChatRequest, ...]  # one per sample
    payloads: tuple[dict[str, Any], ...]  # their cache-key payloads
    keys: tuple[str, ...]  # their cache keys

    @property
    def key(self) -> str:
        """Identity of the decision: the first sample's cache key."""
        return self.keys[0]

    def asks(self) -> zip[tuple[ChatRequest, dict[str, Any], str]]:
        """(request, payload, key) per sample."""
        return zip(self.requests, self.payloads, self.keys, strict=True)


@dataclass(slots=True)
class _Totals:
    calls: int = 0
    served: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    saved: float = 0.0


class LLMPolicy:
    """`policy(state, candidates) -> CallCandidate | None` backed by a chat model."""

    def __init__(
        self,
        *,
        fallback: Policy | None = None,
        cache: ResponseCache | None = None,
        cache_mode: CacheMode | None = None,
        **config: Any,
    ) -> None:
        self._setup(LLMPolicyConfig(**config), fallback, cache, cache_mode)

    @classmethod
    def from_config(
        cls,
        config: LLMPolicyConfig,
        *,
        fallback: Policy | None = None,
        cache: ResponseCache | None = None,
        cache_mode: CacheMode | None = None,
    ) -> LLMPolicy:
        """Build from a validated `LLMPolicyConfig`."""
        self = cls.__new__(cls)
        self._setup(config, fallback, cache, cache_mode)
        return self

    def _setup(
        self,
        config: LLMPolicyConfig,
        fallback: Policy | None,
        cache: ResponseCache | None,
        cache_mode: CacheMode | None,
    ) -> None:
        if config.on_invalid not in BUILTIN_ON_INVALID and fallback is None:
            raise ValueError(
                f"on_invalid={config.on_invalid!r} names a rule policy: pass it as `fallback`"
            )
        self.config = config
        self.name = config.policy_name
        self.fallback = fallback if config.on_invalid not in BUILTIN_ON_INVALID else None
        self.cache_mode: CacheMode = cache_mode or config.cache_mode
        self.template: PromptTemplate = load_prompt(config.prompt, config.prompts_dir)
        self.prompt_id = self.template.prompt_id
        self.prices = PriceTable.load(config.prices_path)
        self.client = ChatClient(
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            timeout_s=config.timeout_s,
            retry=RetryPolicy(
                max_attempts=config.max_attempts,
                max_total_s=config.max_total_s,
                initial_backoff_s=config.initial_backoff_s,
                max_backoff_s=config.max_backoff_s,
                max_retry_after_s=config.max_retry_after_s,
            ),
            rate_limiter=RateLimiter(config.requests_per_minute, config.tokens_per_minute),
            max_concurrency=config.max_concurrency,
        )
        self._owns_cache = cache is None and self.cache_mode != "off"
        self.cache = ResponseCache(config.cache_dir) if self._owns_cache else cache
        self._anchor: Anchor | None = None
        self._records: list[LLMDecisionRecord] = []
        self._by_time: dict[pd.Timestamp, LLMDecisionRecord] = {}
        self._memo: dict[str, LLMDecisionRecord] = {}
        self._totals = _Totals()
        # Run health, spend caps, transcripts and replay (attach_run).
        self._probed: dict[str, _Asked] = {}
        self._halt: tuple[str, str] | None = None  # ("errors" | "spend", reason)
        self._not_asked: set[pd.Timestamp] = set()
        self._own_caps: tuple[SpendCap, ...] = (
            ()
            if config.max_cost_usd is None
            else (SpendCap(config.max_cost_usd, f"{self.name} max_cost_usd"),)
        )
        self._caps: tuple[SpendCap, ...] = self._own_caps
        self._transcript: TranscriptWriter | None = None
        self._answers: TranscriptBook | None = None
        self._streak = 0
        self._n_errors = 0
        self._n_invalid = 0
        self._to_ask = 0

    def __repr__(self) -> str:
        return f"LLMPolicy(name={self.name!r}, prompt_id={self.prompt_id!r})"

    # -- public API ----------------------------------------------------------------------------

    def __call__(
        self, state: DecisionState, candidates: Sequence[CallCandidate]
    ) -> CallCandidate | None:
        """Decide at `state`: a candidate to sell, or None for DO_NOTHING."""
        if not candidates:
            self._note_empty(state)
            return None
        plan = self._plan(state, candidates)
        record = self._memo.get(plan.key)
        if record is None:
            if self._halt is not None or plan.time in self._not_asked:
                return None  # a stopped policy asks nothing more; the decision has no record
            started = time.perf_counter()
            try:
                asked = [self._ask(r, plan.time, p, k) for r, p, k in plan.asks()]
                retries = self._retry_requests(plan, asked)
                asked += [self._ask(r, plan.time, attempt=1) for r in retries]
            except TranscriptMissing:
                self._not_asked.add(plan.time)
                return None
            except SpendCapReached as exc:
                self._stop("spend", str(exc))
                return None
            record = self._conclude(plan, asked, state, candidates, started)
            self._watch(record)
        return self._choice(record, state, candidates)

    def prefetch(
        self,
        items: Sequence[tuple[DecisionState, Sequence[CallCandidate]]],
        progress: bool = True,
    ) -> LLMRunSummary:
        """Ask all decisions concurrently (bounded by max_concurrency and rate limits)."""
        if self.config.anonymize and self._anchor is None and items:
            first = min(items, key=lambda item: to_utc(item[0].time))[0]
            self.set_anchor(first.time, first.spot)
        todo = [(state, candidates) for state, candidates in items if candidates]
        if todo:
            _run_coroutine(lambda: self._aprefetch(todo, progress))
        return self.summary()

    def requests_for(
        self, state: DecisionState, candidates: Sequence[CallCandidate]
    ) -> list[tuple[ChatRequest, str]]:
        """The first-attempt requests (one per sample) this policy would send at `state`, with
        their cache keys. Renders the prompt; sends nothing (for `harness plan`)."""
        return [(request, key) for request, _, key in self._plan(state, candidates).asks()]

    def record_for(self, decision_time: TimestampLike) -> LLMDecisionRecord | None:
        """The record of the decision at `decision_time` (the latest if asked twice), or None."""
        return self._by_time.get(to_utc(decision_time))

    @property
    def records(self) -> list[LLMDecisionRecord]:
        """Records of every decision asked, in the order they were concluded."""
        return list(self._records)

    def summary(self) -> LLMRunSummary:
        """Calls made, answers served from cache, tokens, cost incurred and saved, failures."""
        t = self._totals
        asked = sum(r.note != "no candidates" for r in self._records)
        errors = sum(r.error is not None for r in self._records)
        invalid = sum(not r.valid and r.error is None for r in self._records)
        return LLMRunSummary(
            policy=self.name,
            model=self.config.model,
            prompt_id=self.prompt_id,
            decisions=len(self._records),
            calls_made=t.calls,
            served_from_cache=t.served,
            decisions_from_cache=sum(r.cache_hit for r in self._records),
            prompt_tokens=t.usage.prompt_tokens,
            completion_tokens=t.usage.completion_tokens,
            cached_tokens=t.usage.cached_tokens,
            cost_usd_incurred=t.cost,
            cost_usd_saved=t.saved,
            invalid=invalid,
            errors=errors,
            fallback_used=sum(r.fallback_used for r in self._records),
            model_priced=self.prices.price_for(self.config.model) is not None,
            asked=asked,
            error_rate=errors / asked if asked else 0.0,
            invalid_rate=invalid / asked if asked else 0.0,
            halted=self.halted,
        )

    # -- run integrity -------------------------------------------------------------------------

    def attach_run(
        self,
        *,
        transcript: TranscriptWriter | None = None,
        spend_caps: Sequence[SpendCap] = (),
        answers: TranscriptBook | None = None,
    ) -> None:
        """Write every request to `transcript`, obey run-level `spend_caps` (with the policy's
        own `max_cost_usd`), and with `answers` serve every request from a run's transcripts
        (replay: no cache, no network)."""
        self._transcript = transcript
        self._caps = self._own_caps + tuple(spend_caps)
        self._answers = answers

    @property
    def halted(self) -> str | None:
        """Why the policy stopped asking before its last decision (None: it did not stop)."""
        return self._halt[1] if self._halt is not None else None

    @property
    def halted_for_spend(self) -> bool:
        """True when a spend cap stopped the policy (the run can be resumed with more budget)."""
        return self._halt is not None and self._halt[0] == "spend"

    @property
    def incomplete(self) -> bool:
        """True when some decisions were deliberately not asked (stopped, or no transcript)."""
        return self._halt is not None or bool(self._not_asked)

    def _stop(self, why: str, reason: str) -> None:
        if self._halt is None:
            self._halt = (why, reason)

    def _watch(self, record: LLMDecisionRecord) -> None:
        """Count a concluded decision towards the early-stop rules (docs/llm.md)."""
        cfg = self.config
        if record.error is not None:
            self._streak += 1
            self._n_errors += 1
        else:
            self._streak = 0
            self._n_invalid += int(not record.valid)
        if self._answers is not None:
            return  # a replay reproduces the run, it does not judge it again
        if self._streak >= cfg.max_consecutive_errors:
            self._stop(
                "errors",
                f"stopped after {self._streak} failed decisions in a row "
                f"(max_consecutive_errors {cfg.max_consecutive_errors}); last: {record.error}",
            )
        elif self._to_ask and self._n_errors > cfg.max_error_rate * self._to_ask:
            self._stop(
                "errors",
                f"stopped: {self._n_errors} failed decisions already exceed max_error_rate "
                f"{cfg.max_error_rate:g} of the {self._to_ask} to ask; last: {record.error}",
            )
        elif self._to_ask and self._n_invalid > cfg.max_invalid_rate * self._to_ask:
            self._stop(
                "errors",
                f"stopped: {self._n_invalid} invalid answers already exceed max_invalid_rate "
                f"{cfg.max_invalid_rate:g} of the {self._to_ask} decisions to ask",
            )

    def _reserve(self, request: ChatRequest) -> Reservation | None:
        """Hold the worst-case cost of `request` on every spend cap (None when uncapped)."""
        if not self._caps:
            return None
        price = self.prices.price_for(request.model)
        if price is None:
            amount = 0.0  # unpriced models cost 0 in every report; the caps cannot see them
        else:
            prompt = count_message_tokens(request.messages, request.model)
            answer = request.max_tokens or UNBOUNDED_ANSWER_TOKENS
            amount = price.cost_usd(Usage(prompt_tokens=prompt, completion_tokens=answer))
        return reserve(self._caps, amount, f"{self.name} at {request.model}")

    def _replayed(self, request: ChatRequest, when: pd.Timestamp, key: str, attempt: int) -> _Asked:
        assert self._answers is not None
        rec = self._answers.find(self.name, when, attempt, request.sample_index, key)
        if rec.response is None:
            return _Asked(request, error=rec.error or "error", attempt=attempt)
        usage = rec.usage or {}
        entry = CachedResponse(
            key=key,
            text=rec.response.content or "",
            finish_reason=rec.response.finish_reason,
            usage=Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                cached_tokens=int(usage.get("cached_tokens") or 0),
            ),
            cost_usd=rec.cost_usd,
            latency_s=rec.latency_s,
        )
        return _Asked(request, lookup=CacheLookup(entry, "cache"), attempt=attempt)

    def _transcribe(
        self, asked: _Asked, when: pd.Timestamp, payload: dict[str, Any], key: str
    ) -> None:
        if self._transcript is None:
            return
        entry = asked.lookup.entry if asked.lookup is not None else None
        response = None
        if entry is not None:
            choices = entry.response.get("choices") or [{}]
            message = (choices[0] if isinstance(choices[0], dict) else {}).get("message") or {}
            reasoning = getattr(entry, "reasoning", None) or (
                message.get("reasoning_content") or message.get("reasoning")
            )
            response = TranscriptResponse(
                content=entry.text,
                reasoning=reasoning if isinstance(reasoning, str) else None,
                finish_reason=entry.finish_reason,
                refusal=getattr(entry, "refusal", None) or message.get("refusal"),
            )
        skip = ("messages", "base_url", "model")
        self._transcript.write(
            TranscriptRecord(
                policy=self.name,
                decision_time=when.isoformat(),
                attempt=asked.attempt,
                sample=asked.request.sample_index,
                cache_key=key,
                from_cache=asked.lookup.hit if asked.lookup is not None else False,
                execution="replay" if self._answers is not None else "live",
                model=asked.request.model,
                base_url=self.client.base_url,
                prompt_id=self.prompt_id,
                request=TranscriptRequest(
                    messages=list(payload.get("messages") or asked.request.message_dicts()),
                    params={k: v for k, v in payload.items() if k not in skip},
                ),
                response=response,
                usage=entry.usage.as_dict() if entry is not None else {},
                cost_usd=entry.cost_usd if entry is not None else 0.0,
                latency_s=entry.latency_s if entry is not None else 0.0,
                error=asked.error,
            )
        )

    def set_anchor(self, anchor_time: TimestampLike, anchor_spot: float) -> None:
        """Fix day 0 and the spot shown as 100 when anonymizing (default: first state seen)."""
        self._anchor = Anchor(to_utc(anchor_time), float(anchor_spot))

    def ensure_available(self) -> None:
        """Raise `LLMUnavailable` now if a live call would need a missing API key."""
        if self.cache_mode != "read_only":
            self.client.check_available()

    def close(self) -> None:
        """Close the HTTP client, and the cache if this policy opened it."""
        self.client.close()
        if self._owns_cache and self.cache is not None:
            self.cache.close()

    def __enter__(self) -> LLMPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- planning ------------------------------------------------------------------------------

    def _view(self, state: DecisionState) -> PlainView | AnonymizedView:
        if not self.config.anonymize:
            return PlainView()
        if self._anchor is None:
            self.set_anchor(state.time, state.spot)
        assert self._anchor is not None
        return AnonymizedView(self._anchor)

    def _plan(self, state: DecisionState, candidates: Sequence[CallCandidate]) -> _Plan:
        when = to_utc(state.time)
        context, names = build_context(state, candidates, self._view(state), when=when)
        system, user = self.template.render(context)
        messages = (("system", system), ("user", user))
        cfg = self.config
        response_format = (
            canonical_json(response_format_for(list(names))) if cfg.structured_output else None
        )
        requests = tuple(
            ChatRequest(
                model=cfg.model,
                messages=messages,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                # Distinct seeds per sample: with a fixed seed k samples would be k copies.
                seed=None if cfg.seed is None else cfg.seed + i,
                max_tokens=cfg.max_tokens,
                max_tokens_param=cfg.max_tokens_param,
                response_format=response_format,
                sample_index=i,
            )
            for i in range(cfg.samples)
        )
        payloads = tuple(r.key_payload(self.client.base_url) for r in requests)
        keys = tuple(cache_key(p) for p in payloads)
        return _Plan(when, messages, names, requests, payloads, keys)

    def _retry_requests(self, plan: _Plan, asked: list[_Asked]) -> list[ChatRequest]:
        if self.config.on_invalid != "retry":
            return []
        out = []
        for a in asked:
            a.check = self._check(a, plan)
            if a.lookup is None or a.check.valid:
                continue
            names = ", ".join(plan.names)
            feedback = (
                f"Your answer was invalid: {a.check.reason}. Reply again with exactly one JSON "
                f'object: {{"action": "SELL_CALL", "instrument_name": <one of: {names}>, '
                f'"rationale": "..."}} or {{"action": "DO_NOTHING", "instrument_name": null, '
                f'"rationale": "..."}}.'
            )
            messages = (
                *plan.messages,
                ("assistant", a.lookup.entry.text or "(empty answer)"),
                ("user", feedback),
            )
            out.append(
                ChatRequest(
                    model=a.request.model,
                    messages=messages,
                    temperature=a.request.temperature,
                    top_p=a.request.top_p,
                    seed=a.request.seed,
                    max_tokens=a.request.max_tokens,
                    max_tokens_param=a.request.max_tokens_param,
                    response_format=a.request.response_format,
                    sample_index=a.request.sample_index,
                )
            )
        return out

    # -- asking --------------------------------------------------------------------------------

    def _entry(self, response: ChatResponse) -> CachedResponse:
        return CachedResponse(
            text=response.text,
            finish_reason=response.finish_reason,
            usage=response.usage,
            cost_usd=self.prices.cost_usd(self.config.model, response.usage),
            latency_s=response.latency_s,
            attempts=response.attempts,
            schema_fallback=response.schema_fallback,
            response=response.raw,
        )

    def _miss(self, when: pd.Timestamp) -> CacheMissError:
        return CacheMissError(
            f"no cached answer for the decision at {when.isoformat()} (policy {self.name}, "
            f"prompt {self.prompt_id}); the cache "
            f"{self.cache.directory if self.cache else ''} is read_only"
        )

    def _account(self, asked: _Asked) -> _Asked:
        if asked.lookup is not None:
            entry = asked.lookup.entry
            if asked.lookup.hit:
                self._totals.served += 1
                self._totals.saved += entry.cost_usd
            else:
                asked.calls = entry.attempts
                self._totals.usage += entry.usage
                self._totals.cost += entry.cost_usd
        self._totals.calls += asked.calls
        return asked

    def _done(self, asked: _Asked, when: pd.Timestamp, payload: dict[str, Any], key: str) -> _Asked:
        self._account(asked)
        self._transcribe(asked, when, payload, key)
        return asked

    def _failed(self, request: ChatRequest, exc: LLMCallError, attempt: int) -> _Asked:
        return _Asked(
            request,
            error=str(exc),
            calls=exc.attempts,
            failure=classify_failure(exc),
            attempt=attempt,
        )

    def _ask(
        self,
        request: ChatRequest,
        when: pd.Timestamp,
        payload: dict[str, Any] | None = None,
        key: str | None = None,
        attempt: int = 0,
    ) -> _Asked:
        payload = payload or request.key_payload(self.client.base_url)
        key = key or cache_key(payload)
        if self._answers is not None:
            return self._done(self._replayed(request, when, key, attempt), when, payload, key)
        probed = self._probed.pop(key, None)
        if probed is not None:
            return probed  # the health probe's answer, already counted and transcribed

        def compute() -> CachedResponse:
            hold = self._reserve(request)
            cost = 0.0
            try:
                entry = self._entry(self.client.complete(request))
                cost = entry.cost_usd
                return entry
            finally:
                if hold is not None:
                    settle(hold, cost)

        try:
            if self.cache is None:
                lookup = CacheLookup(compute(), "live")
            else:
                lookup = self.cache.get_or_compute(payload, compute, mode=self.cache_mode, key=key)
        except CacheMissError:
            raise self._miss(when) from None
        except LLMCallError as exc:
            return self._done(self._failed(request, exc, attempt), when, payload, key)
        return self._done(_Asked(request, lookup=lookup, attempt=attempt), when, payload, key)

    async def _aask(
        self,
        request: ChatRequest,
        when: pd.Timestamp,
        payload: dict[str, Any] | None = None,
        key: str | None = None,
        attempt: int = 0,
    ) -> _Asked:
        payload = payload or request.key_payload(self.client.base_url)
        key = key or cache_key(payload)
        if self._answers is not None:
            return self._done(self._replayed(request, when, key, attempt), when, payload, key)
        probed = self._probed.pop(key, None)
        if probed is not None:
            return probed  # the health probe's answer, already counted and transcribed

        async def compute() -> CachedResponse:
            hold = self._reserve(request)
            cost = 0.0
            try:
                entry = self._entry(await self.client.acomplete(request))
                cost = entry.cost_usd
                return entry
            finally:
                if hold is not None:
                    settle(hold, cost)

        try:
            if self.cache is None:
                lookup = CacheLookup(await compute(), "live")
            else:
                lookup = await self.cache.aget_or_compute(
                    payload, compute, mode=self.cache_mode, key=key
                )
        except CacheMissError:
            raise self._miss(when) from None
        except LLMCallError as exc:
            return self._done(self._failed(request, exc, attempt), when, payload, key)
        return self._done(_Asked(request, lookup=lookup, attempt=attempt), when, payload, key)

    async def _adecide(
        self, plan: _Plan, state: DecisionState, candidates: Sequence[CallCandidate]
    ) -> LLMDecisionRecord:
        started = time.perf_counter()
        asked = list(
            await asyncio.gather(*(self._aask(r, plan.time, p, k) for r, p, k in plan.asks()))
        )
        retries = self._retry_requests(plan, asked)
        if retries:
            asked += await asyncio.gather(*(self._aask(r, plan.time, attempt=1) for r in retries))
        record = self._conclude(plan, asked, state, candidates, started)
        self._watch(record)
        return record

    async def _aprobe(
        self,
        items: list[tuple[DecisionState, Sequence[CallCandidate]]],
        plans: dict[int, _Plan],
    ) -> None:
        """Send the first uncached request alone; raise `LLMUnavailable` when it fails.

        Plans rendered while looking for it are kept in `plans` for the prefetch. Nothing is
        sent when every request is answered already (memory, cache or transcripts).
        """
        if self._answers is not None or self.cache_mode == "read_only":
            return
        found: tuple[_Plan, ChatRequest, dict[str, Any], str] | None = None
        for i, (state, candidates) in enumerate(items):
            plan = plans[i] = self._plan(state, candidates)
            if plan.key in self._memo:
                continue
            request, payload, key = next(iter(plan.asks()))
            cached = (
                self.cache is not None and self.cache_mode == "read_write" and key in self.cache
            )
            if not cached:
                found = (plan, request, payload, key)
                break
        if found is None:
            return
        plan, request, payload, key = found
        try:
            first = await self._aask(request, plan.time, payload, key)
            if first.error is not None and first.failure == "bad_request":
                # A 400 may be about this one prompt: ask once more, skip only if it repeats.
                again = await self._aask(request, plan.time, payload, key)
                if again.error == first.error:
                    raise LLMUnavailable(
                        f"{self.name}: the first request was rejected twice with the same "
                        f"error: {first.error}"
                    )
                first = again
        except SpendCapReached as exc:
            self._stop("spend", str(exc))
            return
        if first.error is not None and probe_skips(first.failure or "other"):
            raise LLMUnavailable(
                f"{self.name}: the first request failed ({first.failure}): {first.error}"
            )
        self._probed[key] = first

    async def _aprefetch(
        self,
        items: list[tuple[DecisionState, Sequence[CallCandidate]]],
        progress: bool,
    ) -> None:
        bar = _Progress(len(items), self) if progress else None
        seen: set[str] = set()
        plans: dict[int, _Plan] = {}
        self._to_ask = len(items)
        # Decisions in flight are bounded here too, so a spend cap holds money only for
        # requests about to be sent, not for every queued decision.
        gate = asyncio.Semaphore(self.config.max_concurrency)

        async def one(i: int, state: DecisionState, candidates: Sequence[CallCandidate]) -> None:
            # Rendering inside the task lets the first requests leave while later prompts are
            # still being rendered. No await between the check and `seen.add`: no race.
            plan = plans.pop(i, None) or self._plan(state, candidates)
            if plan.key not in self._memo and plan.key not in seen:
                seen.add(plan.key)
                async with gate:
                    if self._halt is None:
                        try:
                            await self._adecide(plan, state, candidates)
                        except SpendCapReached as exc:
                            self._stop("spend", str(exc))
                        except TranscriptMissing:
                            self._not_asked.add(plan.time)
            if bar is not None:
                bar.advance()

        tasks: list[asyncio.Task[None]] = []
        try:
            await self._aprobe(items, plans)
            tasks = [
                asyncio.create_task(one(i, state, candidates))
                for i, (state, candidates) in enumerate(items)
            ]
            await asyncio.gather(*tasks)
        except BaseException:
            # LLMUnavailable / CacheMissError / abort: stop the other decisions before the client
            # closes under them, so none of them is recorded as a spurious transport error.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            if bar is not None:
                bar.close()
            await self.client.aclose()

    # -- concluding ----------------------------------------------------------------------------

    def _check(self, asked: _Asked, plan: _Plan) -> AnswerCheck:
        if asked.check is None:
            text = asked.lookup.entry.text if asked.lookup is not None else None
            asked.check = validate_answer(text, list(plan.names))
        return asked.check

    def _conclude(
        self,
        plan: _Plan,
        asked: list[_Asked],
        state: DecisionState,
        candidates: Sequence[CallCandidate],
        started: float,
    ) -> LLMDecisionRecord:
        samples = self.config.samples
        by_sample: dict[int, list[_Asked]] = {}
        for a in asked:
            by_sample.setdefault(a.request.sample_index, []).append(a)
        votes: Counter[str | None] = Counter()
        rationale: dict[str | None, str] = {}
        reasons: list[str] = []
        errors = [a.error for a in asked if a.error is not None]
        for group in by_sample.values():
            answered = [a for a in group if a.lookup is not None]
            for a in answered:
                check = self._check(a, plan)
                if not check.valid and check.reason:
                    reasons.append(check.reason)
            # With on_invalid=retry only the sample's last answer may vote.
            last = self._check(answered[-1], plan) if answered else None
            if last is not None and last.valid and last.answer is not None:
                choice = last.answer.instrument_name
                votes[choice] += 1
                rationale.setdefault(choice, last.answer.rationale)

        if errors and self.config.on_error == "abort":
            raise LLMCallError(
                f"{self.name}: decision at {plan.time.isoformat()} failed: {errors[0]}",
                attempts=sum(a.calls for a in asked),
            )
        valid = bool(votes)
        shown: str | None = None
        action: str | None = None
        if valid:
            top = max(votes.values())
            tied = [c for c in votes if votes[c] == top]
            # Ties go to DO_NOTHING: selling is the action that needs a majority.
            shown = None if None in tied else tied[0]
            action = "DO_NOTHING" if shown is None else "SELL_CALL"
        # The rule fallback replaces invalid answers; a decision with only transport errors is
        # DO_NOTHING (the model was never heard).
        fallback_used = not valid and bool(reasons) and self.fallback is not None

        instrument = plan.names.get(shown) if shown is not None else None
        if fallback_used:
            assert self.fallback is not None
            pick = self.fallback(state, candidates)
            instrument = pick.instrument_name if pick is not None else None
            action = "SELL_CALL" if pick is not None else "DO_NOTHING"

        lookups = [a.lookup for a in asked if a.lookup is not None]
        usage = sum((lk.entry.usage for lk in lookups), Usage())
        record = LLMDecisionRecord(
            decision_time=plan.time,
            policy=self.name,
            model=self.config.model,
            prompt_id=self.prompt_id,
            raw_answers=tuple(lk.entry.text for lk in lookups),
            action=action,
            instrument_name=instrument,
            rationale=rationale.get(shown, "") if valid else "",
            valid=valid,
            invalid_reason=None if valid else ("; ".join(dict.fromkeys(reasons)) or None),
            error="; ".join(dict.fromkeys(errors)) or None,
            fallback_used=fallback_used,
            cache_hit=bool(lookups) and all(lk.hit for lk in lookups) and not errors,
            calls_made=sum(a.calls for a in asked),
            samples=samples,
            votes={
                ("DO_NOTHING" if c is None else plan.names.get(c, c)): n for c, n in votes.items()
            },
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost_usd=sum(lk.entry.cost_usd for lk in lookups if not lk.hit),
            cost_usd_saved=sum(lk.entry.cost_usd for lk in lookups if lk.hit),
            latency_s=time.perf_counter() - started,
        )
        self._store(plan.key, record)
        return record

    def _store(self, key: str | None, record: LLMDecisionRecord) -> None:
        self._records.append(record)
        self._by_time[record.decision_time] = record
        if key is not None:
            self._memo[key] = record

    def _note_empty(self, state: DecisionState) -> None:
        when = to_utc(state.time)
        if when in self._by_time and self._by_time[when].note == "no candidates":
            return
        self._store(
            None,
            LLMDecisionRecord(
                decision_time=when,
                policy=self.name,
                model=self.config.model,
                prompt_id=self.prompt_id,
                raw_answers=(),
                action="DO_NOTHING",
                instrument_name=None,
                valid=True,
                cache_hit=False,
                calls_made=0,
                samples=0,
                note="no candidates",
            ),
        )

    def _choice(
        self,
        record: LLMDecisionRecord,
        state: DecisionState,
        candidates: Sequence[CallCandidate],
    ) -> CallCandidate | None:
        if record.fallback_used and self.fallback is not None:
            # The rule policy sees this call's state (the replay's, not the scoring pass's).
            return self.fallback(state, candidates)
        if record.instrument_name is None:
            return None
        for c in candidates:
            if c.instrument_name == record.instrument_name:
                return c
        return None


class _Progress:
    """Rich progress bar with calls, cache hits, tokens and cost so far."""

    def __init__(self, total: int, policy: LLMPolicy) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._policy = policy
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            transient=False,
        )
        self._task = self._progress.add_task(policy.name, total=total, stats=self._stats())
        self._progress.start()

    def _stats(self) -> str:
        t = self._policy._totals
        return (
            f"calls {t.calls} | cache hits {t.served} | "
            f"tokens {t.usage.total_tokens:,} | ${t.cost:.4f} (saved ${t.saved:.4f})"
        )

    def advance(self) -> None:
        self._progress.update(self._task, advance=1, stats=self._stats())

    def close(self) -> None:
        self._progress.update(self._task, stats=self._stats())
        self._progress.stop()


def _run_coroutine(factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


__all__ = [
    "LLMCallError",
    "LLMDecisionRecord",
    "LLMPolicy",
    "LLMPolicyConfig",
    "LLMRunSummary",
    "LLMUnavailable",
]
