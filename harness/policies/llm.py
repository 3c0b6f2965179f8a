"""LLMPolicy: a prompt + model turned into a replayable covered-call policy.

At each decision it renders the prompt from the state and the candidate table, asks the model
(through the response cache), validates the answer against the contract, and returns the chosen
candidate or None (DO_NOTHING). `prefetch` asks many decisions concurrently first so the
sequential replay only reads the cache. Every decision leaves an `LLMDecisionRecord`.

Errors: a bad answer never raises (it is recorded as invalid, with the provider's refusal or
truncation named, and `on_invalid` applies); a call that still fails after its retries
(`LLMCallError`: unreachable, timeout, rate-limited, server, bad request) is recorded as an error
and the decision is DO_NOTHING unless `on_error="abort"`. `LLMUnavailable` (key missing or
rejected, out of credit, unknown model) and `CacheMissError` (read_only cache without the answer)
do raise: the run cannot be meaningful.

Requests follow the model family (reasoning models: `max_completion_tokens`, no temperature) and
the sampling settings (`n` for several votes, separate requests where the server ignores it).

Run health (docs/llm.md): `prefetch` sends the first uncached request alone; if it fails (a 400
only when it repeats with the same text) the policy raises `LLMUnavailable` before any other
request leaves. During the prefetch the policy stops asking (`halted`) after
`max_consecutive_errors` failed decisions in a row, once errors or invalid answers already
exceed `max_error_rate` / `max_invalid_rate` of the decisions to ask, or when a spend cap would
be passed. Every answer (each choice of an `n` request) and every failed request is written to
the run's transcript when one is attached; a replay serves every request from those records.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from harness.llm.anonymize import Anchor, AnonymizedView, PlainView
from harness.llm.batch import BatchItem, BatchProvider, BatchResult, OpenAIBatchProvider
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
from harness.llm.choice import ChatChoice
from harness.llm.client import (
    DEFAULT_API_KEY_ENV,
    MASK,
    ChatClient,
    ChatRequest,
    ChatResponse,
    LLMCallError,
    LLMError,
    LLMUnavailable,
)
from harness.llm.contract import AnswerCheck, response_format_for, validate_answer
from harness.llm.cost import PriceTable, Usage
from harness.llm.health import FAILURE_KINDS, FailureKind, classify_failure, probe_skips
from harness.llm.model_family import infer_reasoning_model
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
from harness.policies.batch_prefetch import (
    BatchContext,
    BatchOutcome,
    BatchPrefetch,
    Unsubmitted,
)
from harness.state import DecisionState
from harness.timestamps import TimestampLike, to_utc
from harness.types import CallCandidate

log = logging.getLogger("harness.llm")

Policy = Callable[[DecisionState, Sequence[CallCandidate]], CallCandidate | None]
BUILTIN_ON_INVALID = ("do_nothing", "retry")
# Answer budget assumed by spend caps when `max_tokens` is not set.
UNBOUNDED_ANSWER_TOKENS = 4096


ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_HIDDEN = "<hidden: not an environment variable name>"
REASONING_MAX_TOKENS = 8000  # default budget of reasoning models: reasoning counts against it
# Request fields the harness sets itself; `extra_body` must not override them silently.
_OWN_FIELDS = {
    "model": "model",
    "messages": "prompt",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "response_format": "structured_output",
    "n": "samples",
    "reasoning_effort": "reasoning_effort",
}


_BYTE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*$", re.IGNORECASE)


class BatchPoll(BaseModel):
    """How often a batch job is polled: `initial_s`, growing by `factor` up to `max_s`, and how
    long to wait in all (`max_wait_s`; a batch still running then is left for `--resume`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_s: float = Field(5.0, gt=0, description="First wait between two polls, seconds.")
    max_s: float = Field(300.0, gt=0, description="Longest wait between two polls, seconds.")
    factor: float = Field(1.5, ge=1, description="Backoff factor between polls.")
    max_wait_s: float = Field(
        26 * 3600.0, gt=0, description="Give up waiting after this long (24h window + margin)."
    )


class BatchSettings(BaseModel):
    """The `batch:` block of an LLM policy: limits, polling and what to do with leftovers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    leftovers: Literal["live", "resubmit", "error"] = Field(
        "live",
        description="Failed items and items missing from the output: asked live, resubmitted "
        "in another batch (at most `max_resubmits` times), or recorded as errors.",
    )
    max_requests: int = Field(
        50_000, ge=1, description="Requests per input file (OpenAI: at most 50,000)."
    )
    max_bytes: int = Field(
        200 * 1024**2, ge=1, description="Bytes per input file; '200MB' style text accepted."
    )
    max_resubmits: int = Field(2, ge=0, le=20, description="Resubmit rounds of a leftover.")
    poll: BatchPoll = Field(default_factory=BatchPoll)

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            found = _SIZE.match(value)
            if found is None:
                raise ValueError(
                    f"max_bytes {value!r} is not a size: give bytes (an integer) or text like "
                    "'200MB', '512KB', '1GB'"
                )
            unit = found.group(2).upper()
            unit = unit if unit.endswith("B") or not unit else unit + "B"
            return int(float(found.group(1)) * _BYTE_UNITS[unit])
        return value


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
    max_tokens: int | None = Field(
        400, ge=1, description=f"Answer token budget ({REASONING_MAX_TOKENS} for reasoning models)."
    )
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] | None = Field(
        None, description="None: max_completion_tokens for reasoning models, else max_tokens."
    )
    reasoning_model: bool | None = Field(
        None, description="None: inferred from the model name (o1/o3/o4/gpt-5 families)."
    )
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    samples: int = Field(1, ge=1, le=64, description="Answers per decision, majority vote.")
    sample_with_n: bool = Field(
        True, description="Ask for all samples in one request (`n`); separate requests if not."
    )
    min_vote_share: float = Field(
        0.0, ge=0, le=1, description="Share of valid votes a SELL needs, else DO_NOTHING."
    )
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
    structured_output: bool | Literal["json_schema", "json_object"] = Field(
        True,
        description="true/json_schema: strict schema; json_object: JSON mode; false: none "
        "(a request steps down when the server rejects the field).",
    )
    extra_headers: dict[str, str] = Field(
        default_factory=dict,
        description="Sent with every request; values masked when written.",
        repr=False,
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Merged into every request body (provider options)."
    )
    extra_query: dict[str, str] = Field(
        default_factory=dict, description="URL query parameters, e.g. Azure api-version."
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
    # Batch execution (docs/llm.md "Batch mode").
    execution: Literal["live", "batch"] = Field(
        "live",
        description="live: one HTTP request per answer; batch: the prefetch goes through the "
        "provider's batch API (half price, answers within 24h).",
    )
    batch: BatchSettings = Field(default_factory=BatchSettings)

    @model_validator(mode="before")
    @classmethod
    def _hide_pasted_key(cls, data: Any) -> Any:
        # A key pasted where the variable name belongs must not be echoed by the error message
        # (pydantic prints the input value), so the value is replaced before it is checked.
        if isinstance(data, dict):
            value = data.get("api_key_env")
            if isinstance(value, str) and not ENV_NAME.fullmatch(value):
                data = {**data, "api_key_env": _HIDDEN}
        return data

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.fullmatch(value):
            raise ValueError(
                "api_key_env must be the NAME of the environment variable holding the key "
                "(capitals, digits and underscores, like OPENAI_API_KEY), or null for a server "
                "that needs no key; the value given is not shown in case it is the key itself"
            )
        return value

    @field_validator("extra_body")
    @classmethod
    def _own_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(value) & set(_OWN_FIELDS))
        if clash:
            fields = ", ".join(f"{k!r} (use `{_OWN_FIELDS[k]}`)" for k in clash)
            raise ValueError(f"extra_body must not set {fields}")
        return value

    @field_serializer("extra_headers")
    def _mask_headers(self, value: dict[str, str]) -> dict[str, str]:
        # Header values can carry keys: every dump (config.yaml, manifest, reports) masks them.
        return {name: MASK for name in value}

    @property
    def is_reasoning_model(self) -> bool:
        """`reasoning_model`, else inferred from the model name."""
        if self.reasoning_model is not None:
            return self.reasoning_model
        return infer_reasoning_model(self.model)

    @property
    def token_param(self) -> str:
        """The request field carrying the token budget."""
        if self.max_tokens_param is not None:
            return self.max_tokens_param
        return "max_completion_tokens" if self.is_reasoning_model else "max_tokens"

    @property
    def token_budget(self) -> int | None:
        """`max_tokens`, or the reasoning default when it was not set for a reasoning model."""
        if self.is_reasoning_model and "max_tokens" not in self.model_fields_set:
            return REASONING_MAX_TOKENS
        return self.max_tokens

    @property
    def format_level(self) -> str | None:
        """json_schema / json_object / None, from `structured_output`."""
        if self.structured_output is True:
            return "json_schema"
        return self.structured_output or None

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
class BatchLoad:
    """What `LLMPolicy.load_batch_results` did with a batch output file."""

    stored: int  # answers put into the cache
    failed: int  # items that came back as errors (not cached)
    matched: frozenset[str] = frozenset()  # custom_ids that were requests of these decisions
    errors: tuple[str, ...] = ()


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
    execution: str = "live"  # live | batch (config `execution`)
    batch_answers: int = 0  # requests answered by batch in this run (counted in calls_made)
    batch_submitted: int = 0  # requests handed to batch jobs in this run
    batch_ids: tuple[str, ...] = ()  # batch jobs of this policy in the run folder's ledger
    batch_leftovers_live: int = 0  # failed / missing batch items asked live instead
    cost_usd_live: float = 0.0  # part of cost_usd_incurred paid at live prices
    cost_usd_batch: float = 0.0  # part of cost_usd_incurred paid at batch prices
    cost_usd_batch_at_live_prices: float = 0.0  # what the batch answers would have cost live

    def as_dict(self) -> dict[str, Any]:
        """Plain dict."""
        out = asdict(self)
        out["batch_ids"] = list(self.batch_ids)
        return out


@dataclass(slots=True)
class _Asked:
    """One answer (a choice of a request) or one failed request inside a decision."""

    request: ChatRequest
    lookup: CacheLookup | None = None
    error: str | None = None
    calls: int = 0  # HTTP requests, counted on the request's first choice only
    check: AnswerCheck | None = None
    choice_index: int = 0
    superseded: bool = False  # a failed `n` request whose samples were asked one by one
    failure: FailureKind | None = None  # harness.llm.health kind of `error`
    execution: str = "live"  # "batch": the answer (or failure) came from a batch job

    @property
    def attempt(self) -> int:
        """The `on_invalid: retry` attempt index of the request (0 first)."""
        return self.request.attempt

    @property
    def sample(self) -> int:
        """Vote index of this answer."""
        return self.request.sample_index + self.choice_index

    @property
    def choice(self) -> ChatChoice | None:
        """The answer, None for a failed request."""
        return self.lookup.entry.choice(self.choice_index) if self.lookup is not None else None


@dataclass(frozen=True, slots=True)
class _Plan:
    time: pd.Timestamp
    messages: tuple[tuple[str, str], ...]
    names: dict[str, str]  # shown name -> real instrument name
    response_format: str | None  # canonical JSON of the response_format asked for
    requests: tuple[ChatRequest, ...]  # one per sample, or one asking for `n` samples
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
    batch_answers: int = 0  # requests answered by a batch job in this run
    batch_cost: float = 0.0  # what they cost (batch prices)
    batch_cost_list: float = 0.0  # what they would have cost live


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
            extra_headers=config.extra_headers,
            extra_query=config.extra_query,
        )
        self._extra_body = canonical_json(config.extra_body) if config.extra_body else None
        self._warned_n = False
        self._warn_settings()
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
        # Batch mode (harness.policies.batch_prefetch): answers and final failures by key.
        self._batch_context: BatchContext | None = None
        self._batched: dict[str, CachedResponse] = {}
        self._batch_served: set[str] = set()
        self._batch_errors: dict[str, LLMError] = {}
        self._batch_unsent: set[str] = set()
        self._batch_stop: tuple[str, str] | None = None  # ("spend" | "batch", reason)
        self._batch_outcome = BatchOutcome()

    def __repr__(self) -> str:
        return f"LLMPolicy(name={self.name!r}, prompt_id={self.prompt_id!r})"

    def _warn_settings(self) -> None:
        cfg = self.config
        greedy = cfg.temperature == 0 and not cfg.is_reasoning_model
        if cfg.samples > 1 and greedy and cfg.seed is None:
            log.warning(
                "%s: samples=%d at temperature 0 without a seed: the samples are the same "
                "greedy answer, so the vote adds cost and no information; set a temperature "
                "> 0 (and a seed to make them reproducible)",
                self.name,
                cfg.samples,
            )
        if cfg.is_reasoning_model:
            set_here = {"temperature", "top_p"} & cfg.model_fields_set
            if any(getattr(cfg, f) is not None for f in set_here):
                log.warning(
                    "%s: %s is a reasoning model: %s not sent (these models accept only the "
                    "default); set `reasoning_model: false` if the server takes it",
                    self.name,
                    cfg.model,
                    " and ".join(sorted(set_here)),
                )

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
            try:
                record = self._decide(plan, state, candidates)
            except (TranscriptMissing, Unsubmitted):
                self._not_asked.add(plan.time)
                return None
            except SpendCapReached as exc:
                self._stop("spend", str(exc))
                return None
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
        if todo and self._batching:
            self._batch_rounds(todo)
        if todo:
            _run_coroutine(lambda: self._aprefetch(todo, progress))
        if self._batch_stop is not None:
            self._stop(*self._batch_stop)
        return self.summary()

    @property
    def _batching(self) -> bool:
        """Batch mode applies: `execution: batch`, not a replay, and a cache that may be asked."""
        return (
            self.config.execution == "batch"
            and self._answers is None
            and self.cache_mode != "read_only"
        )

    def _open_plans(
        self, items: Sequence[tuple[DecisionState, Sequence[CallCandidate]]]
    ) -> list[_Plan]:
        """The plans of the decisions with candidates not decided yet, each once."""
        if self.config.anonymize and self._anchor is None and items:
            first = min(items, key=lambda item: to_utc(item[0].time))[0]
            self.set_anchor(first.time, first.spot)
        plans: dict[str, _Plan] = {}
        for state, candidates in items:
            if not candidates:
                continue
            plan = self._plan(state, candidates)
            if plan.key not in self._memo:
                plans.setdefault(plan.key, plan)
        return list(plans.values())

    def batch_requests(
        self, items: Sequence[tuple[DecisionState, Sequence[CallCandidate]]]
    ) -> list[BatchItem]:
        """The batch lines of what deciding `items` still needs given the cache: first
        attempts, then (once their answers are in the cache) missing samples and retries.
        Sends nothing (`harness batch export`)."""
        prefetch = BatchPrefetch(self)
        return [prefetch.item(p) for p in prefetch.collect(self._open_plans(items))]

    def load_batch_results(
        self,
        items: Sequence[tuple[DecisionState, Sequence[CallCandidate]]],
        results: Sequence[BatchResult],
    ) -> BatchLoad:
        """Put the answers of a batch output (`harness batch import`) into the cache as live
        answers would be; results whose custom_id is no request of `items` are counted unknown.
        Failed items are counted, never cached."""
        by_id = {r.custom_id: r for r in results}
        prefetch = BatchPrefetch(self)
        plans = self._open_plans(items)
        stored = failed = 0
        errors: list[str] = []
        used: set[str] = set()
        while True:
            # Each pass can unlock the next round (retries need the first answers).
            todo = [p for p in prefetch.collect(plans) if p.key in by_id and p.key not in used]
            if not todo:
                break
            for p in prefetch.writing_chunks(todo):
                used.add(p.key)
                try:
                    prefetch.store(p, by_id[p.key])
                    stored += 1
                except LLMError as exc:
                    failed += 1
                    self._batch_errors[p.key] = exc  # settles the request for this pass only
                    errors.append(f"{p.key[:16]}: {exc}")
        self._batch_errors.clear()
        self._batched.clear()
        return BatchLoad(
            stored=stored, failed=failed, matched=frozenset(used), errors=tuple(errors)
        )

    def _batch_rounds(self, items: Sequence[tuple[DecisionState, Sequence[CallCandidate]]]) -> None:
        """Send what the prefetch needs by batch first (harness.policies.batch_prefetch)."""
        if self._batch_context is None:
            raise ValueError(
                f"{self.name}: execution 'batch' needs a ledger for its batch jobs: run it with "
                "`harness run` (batches.json in the run folder) or attach_run(batch=...)"
            )
        outcome = BatchPrefetch(self, self._batch_context).run(self._open_plans(items))
        total = self._batch_outcome
        total.submitted += outcome.submitted
        total.answered += outcome.answered
        total.failed += outcome.failed
        total.rounds += outcome.rounds
        total.leftovers_live += outcome.leftovers_live
        total.not_submitted += outcome.not_submitted

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
            execution=self.config.execution,
            batch_answers=t.batch_answers,
            batch_submitted=self._batch_outcome.submitted,
            batch_ids=self._batch_ids(),
            batch_leftovers_live=self._batch_outcome.leftovers_live,
            cost_usd_live=t.cost - t.batch_cost,
            cost_usd_batch=t.batch_cost,
            cost_usd_batch_at_live_prices=t.batch_cost_list,
        )

    def _batch_ids(self) -> tuple[str, ...]:
        ctx = self._batch_context
        if ctx is None:
            return ()
        return tuple(ctx.ledger.batch_ids(policy=self.name))

    # -- run integrity -------------------------------------------------------------------------

    def attach_run(
        self,
        *,
        transcript: TranscriptWriter | None = None,
        spend_caps: Sequence[SpendCap] = (),
        answers: TranscriptBook | None = None,
        batch: BatchContext | None = None,
    ) -> None:
        """Write every request to `transcript`, obey run-level `spend_caps` (with the policy's
        own `max_cost_usd`), with `answers` serve every request from a run's transcripts
        (replay: no cache, no network), and in batch mode keep batch jobs in `batch`'s ledger."""
        self._transcript = transcript
        self._caps = self._own_caps + tuple(spend_caps)
        self._answers = answers
        self._batch_context = batch

    @property
    def halted(self) -> str | None:
        """Why the policy stopped asking before its last decision (None: it did not stop)."""
        return self._halt[1] if self._halt is not None else None

    @property
    def halted_for_spend(self) -> bool:
        """True when a spend cap stopped the policy (the run can be resumed with more budget)."""
        return self._halt is not None and self._halt[0] == "spend"

    @property
    def halted_waiting(self) -> bool:
        """True when batches were still running at the end of `batch.poll.max_wait_s` (the run
        can be resumed: it polls the same batches)."""
        return self._halt is not None and self._halt[0] == "batch"

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

    def _reserve(self, request: ChatRequest, *, batch: bool = False) -> Reservation | None:
        """Hold the worst-case cost of `request` (at batch prices with `batch`) on every spend
        cap (None when uncapped)."""
        if not self._caps:
            return None
        price = self.prices.price_for(request.model)
        if price is None:
            amount = 0.0  # unpriced models cost 0 in every report; the caps cannot see them
        else:
            prompt = count_message_tokens(request.messages, request.model)
            # An `n` request can bill n full answers.
            answer = (request.max_tokens or UNBOUNDED_ANSWER_TOKENS) * request.n
            usage = Usage(prompt_tokens=prompt, completion_tokens=answer)
            amount = price.cost_usd(usage)
            if batch and price.batch_discount is not None:
                amount = price.batch_cost_usd(usage) or 0.0
        where = "by batch" if batch else "at"
        return reserve(self._caps, amount, f"{self.name} {where} {request.model}")

    def _replayed(self, request: ChatRequest, when: pd.Timestamp, key: str) -> list[_Asked]:
        """The run's recorded outcome of `request`: its answers (every choice of an `n` request,
        one record per sample) or its failure."""
        assert self._answers is not None
        book = self._answers
        first = book.find(self.name, when, request.attempt, request.sample_index, key)
        if first.response is None:
            failure = first.error_kind if first.error_kind in FAILURE_KINDS else None
            return [_Asked(request, error=first.error or "error", failure=failure)]  # type: ignore[arg-type]
        records = [first]
        for i in range(1, request.n):
            try:
                more = book.find(self.name, when, request.attempt, request.sample_index + i, key)
            except TranscriptMissing:
                break
            if more.cache_key != key or more.response is None:
                break  # the server returned fewer choices; the rest were asked one by one
            records.append(more)
        usage = first.usage or {}
        choices = [
            ChatChoice(
                content=r.response.content,
                reasoning=r.response.reasoning,
                finish_reason=r.response.finish_reason,
                refusal=r.response.refusal,
            ).as_dict()
            for r in records
            if r.response is not None
        ]
        head = first.response
        entry = CachedResponse(
            key=key,
            text=head.content or "",
            content_null=head.content is None,
            reasoning=head.reasoning,
            finish_reason=head.finish_reason,
            refusal=head.refusal,
            choices=choices,
            usage=Usage.from_dict(usage),
            cost_usd=first.cost_usd,
            latency_s=first.latency_s,
            request_params=first.request.params,
        )
        return self._answered(request, CacheLookup(entry, "cache"))

    def _transcribe(
        self, asked: _Asked, when: pd.Timestamp, payload: dict[str, Any], key: str
    ) -> None:
        """One transcript record per answer (choice) or failed request (INTERFACES section 2).

        An `n` request's usage, cost and latency are on its first choice's record only, so
        sums over the file count the request once."""
        if self._transcript is None:
            return
        entry = asked.lookup.entry if asked.lookup is not None else None
        choice = asked.choice
        response = None
        if choice is not None:
            response = TranscriptResponse(
                content=choice.content,
                reasoning=choice.reasoning,
                finish_reason=choice.finish_reason,
                refusal=choice.refusal,
            )
        if entry is not None and entry.sent_params:
            params = dict(entry.sent_params)  # as sent: token parameter, response_format used
        else:
            skip = ("messages", "base_url", "model", "extra_header_names")
            params = {k: v for k, v in payload.items() if k not in skip}
        if self.client.header_names:
            params["extra_headers"] = {name: MASK for name in self.client.header_names}
        if self.client.extra_query and "extra_query" not in params:
            params["extra_query"] = dict(self.client.extra_query)
        first_choice = asked.choice_index == 0
        self._transcript.write(
            TranscriptRecord(
                policy=self.name,
                decision_time=when.isoformat(),
                attempt=asked.attempt,
                sample=asked.sample,
                cache_key=key,
                from_cache=asked.lookup.hit if asked.lookup is not None else False,
                execution="replay" if self._answers is not None else asked.execution,
                model=asked.request.model,
                base_url=self.client.base_url,
                prompt_id=self.prompt_id,
                request=TranscriptRequest(
                    messages=list(payload.get("messages") or asked.request.message_dicts()),
                    params=params,
                ),
                response=response,
                usage=entry.usage.as_dict() if entry is not None and first_choice else {},
                cost_usd=entry.cost_usd if entry is not None and first_choice else 0.0,
                latency_s=entry.latency_s if entry is not None and first_choice else 0.0,
                error=asked.error,
                error_kind=asked.failure,
                n_choices=entry.n_choices if entry is not None else None,
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
        level = cfg.format_level
        response_format = (
            canonical_json(response_format_for(list(names)))
            if level == "json_schema"
            else canonical_json({"type": "json_object"})
            if level == "json_object"
            else None
        )
        if cfg.samples > 1 and cfg.sample_with_n:
            requests: tuple[ChatRequest, ...] = (
                self._request(messages, response_format, sample=0, n=cfg.samples),
            )
        else:
            requests = tuple(
                self._request(messages, response_format, sample=i) for i in range(cfg.samples)
            )
        payloads = tuple(self.client.key_payload(r) for r in requests)
        keys = tuple(cache_key(p) for p in payloads)
        return _Plan(when, messages, names, response_format, requests, payloads, keys)

    def _request(
        self,
        messages: tuple[tuple[str, str], ...],
        response_format: str | None,
        *,
        sample: int,
        n: int = 1,
        attempt: int = 0,
    ) -> ChatRequest:
        """The request for vote `sample` (or `n` votes from `sample` on), retry `attempt`."""
        cfg = self.config
        reasoning = cfg.is_reasoning_model
        return ChatRequest(
            model=cfg.model,
            messages=messages,
            # OpenAI reasoning models reject any temperature/top_p but the default.
            temperature=None if reasoning else cfg.temperature,
            top_p=None if reasoning else cfg.top_p,
            # Distinct seeds per sample: with a fixed seed k samples would be k copies.
            seed=None if cfg.seed is None else cfg.seed + sample,
            max_tokens=cfg.token_budget,
            max_tokens_param=cfg.token_param,
            response_format=response_format,
            sample_index=sample,
            n=n,
            reasoning_effort=cfg.reasoning_effort,
            extra_body=self._extra_body,
            attempt=attempt,
        )

    def _missing_samples(self, plan: _Plan, asked: list[_Asked]) -> list[ChatRequest]:
        """Separate requests for the votes an `n` request did not bring back."""
        samples = self.config.samples
        if plan.requests[0].n == 1:
            return []
        got = {a.sample for a in asked if a.lookup is not None}
        rejected = [a for a in asked if a.failure == "bad_request" and _names_n(a.error)]
        if not got and not rejected:
            return []  # the request failed like any other: recorded as an error
        for a in rejected:
            a.superseded = True
        if len(got) < samples and not self._warned_n:
            self._warned_n = True
            log.info(
                "%s: %s returned %d of %d choices for `n`; the other samples are asked one "
                "by one (set `sample_with_n: false` to skip the `n` request)",
                self.name,
                self.client.base_url,
                len(got),
                samples,
            )
        return [
            self._request(plan.messages, plan.response_format, sample=i)
            for i in range(samples)
            if i not in got
        ]

    def _retry_requests(self, plan: _Plan, asked: list[_Asked]) -> list[ChatRequest]:
        if self.config.on_invalid != "retry":
            return []
        out = []
        for a in asked:
            if a.lookup is None or a.request.attempt >= 1:
                continue
            a.check = self._check(a, plan)
            if a.check.valid:
                continue
            names = ", ".join(plan.names)
            feedback = (
                f"Your answer was invalid: {a.check.reason}. Reply again with exactly one JSON "
                f'object: {{"analysis": "...", "action": "SELL_CALL", "instrument_name": <one '
                f'of: {names}>, "rationale": "..."}} or {{"analysis": "...", "action": '
                f'"DO_NOTHING", "instrument_name": null, "rationale": "..."}}.'
            )
            text = a.choice.text if a.choice is not None else ""
            messages = (
                *plan.messages,
                ("assistant", text or "(empty answer)"),
                ("user", feedback),
            )
            out.append(
                self._request(
                    messages, plan.response_format, sample=a.sample, attempt=a.request.attempt + 1
                )
            )
        return out

    # -- asking --------------------------------------------------------------------------------

    def _entry(self, response: ChatResponse) -> CachedResponse:
        return CachedResponse.from_response(
            response, self.prices.cost_usd(self.config.model, response.usage)
        )

    def _batch_entry(self, response: ChatResponse) -> CachedResponse:
        """The cache entry of an answer that came by batch: priced at the batch discount (list
        price when the price table gives the model none), one request made."""
        price = self.prices.price_for(self.config.model)
        cost = 0.0
        if price is not None:
            batch_cost = price.batch_cost_usd(response.usage)
            cost = price.cost_usd(response.usage) if batch_cost is None else batch_cost
        entry = CachedResponse.from_response(response, cost)
        return entry.model_copy(update={"attempts": 1, "latency_s": 0.0})

    def batch_provider(self) -> BatchProvider:
        """The batch API of this policy's endpoint, with its key, headers and timeouts."""
        cfg = self.config
        return OpenAIBatchProvider(
            base_url=self.client.base_url,
            api_key_env=cfg.api_key_env,
            timeout_s=cfg.timeout_s,
            extra_headers=cfg.extra_headers,
            extra_query=cfg.extra_query,
            retry=self.client.retry,
        )

    def _known_asked(
        self, request: ChatRequest, entry: CachedResponse | None, error: LLMError | None
    ) -> list[_Asked]:
        """The `_Asked` of an answer (or final failure) already known, not counted or written."""
        if error is not None:
            return [_Asked(request, error=str(error), failure=classify_failure(error))]
        assert entry is not None
        lookup = CacheLookup(entry, "cache")
        count = max(1, min(entry.n_choices, request.n))
        return [_Asked(request, lookup=lookup, choice_index=i) for i in range(count)]

    def _from_batch(self, request: ChatRequest, key: str) -> list[_Asked] | None:
        """The batch's outcome of `request` the first time it is asked in this run (an answer
        counted like a live one, or its final failure); None when the batch had none for it."""
        if key in self._batch_unsent:
            raise Unsubmitted(key)
        entry = self._batched.get(key)
        if entry is not None and key not in self._batch_served:
            self._batch_served.add(key)
            asked = self._answered(request, CacheLookup(entry, "live"))
            t = self._totals
            t.batch_answers += 1
            t.batch_cost += entry.cost_usd
            t.batch_cost_list += self.prices.cost_usd(self.config.model, entry.usage)
            for a in asked:
                a.execution = "batch"
            return asked
        if entry is not None:
            return self._answered(request, CacheLookup(entry, "shared"))
        error = self._batch_errors.get(key)
        if error is not None:
            return [
                _Asked(
                    request, error=str(error), failure=classify_failure(error), execution="batch"
                )
            ]
        return None

    def _miss(self, when: pd.Timestamp) -> CacheMissError:
        return CacheMissError(
            f"no cached answer for the decision at {when.isoformat()} (policy {self.name}, "
            f"prompt {self.prompt_id}); the cache "
            f"{self.cache.directory if self.cache else ''} is read_only"
        )

    def _answered(self, request: ChatRequest, lookup: CacheLookup) -> list[_Asked]:
        """One `_Asked` per choice of `lookup` (at most `request.n`), accounted once."""
        entry = lookup.entry
        calls = 0
        if lookup.hit:
            self._totals.served += 1
            self._totals.saved += entry.cost_usd
        else:
            calls = entry.attempts
            self._totals.usage += entry.usage
            self._totals.cost += entry.cost_usd
        self._totals.calls += calls
        count = max(1, min(entry.n_choices, request.n))
        return [
            _Asked(request, lookup=lookup, calls=calls if i == 0 else 0, choice_index=i)
            for i in range(count)
        ]

    def _done(
        self, asked: list[_Asked], when: pd.Timestamp, payload: dict[str, Any], key: str
    ) -> list[_Asked]:
        """Write the request's answers (one per choice) or its failure to the transcript."""
        for a in asked:
            self._transcribe(a, when, payload, key)
        return asked

    def _failed(self, request: ChatRequest, exc: LLMCallError) -> list[_Asked]:
        self._totals.calls += exc.attempts
        return [_Asked(request, error=str(exc), failure=classify_failure(exc), calls=exc.attempts)]

    def _ask(
        self,
        request: ChatRequest,
        when: pd.Timestamp,
        payload: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> list[_Asked]:
        payload = payload or self.client.key_payload(request)
        key = key or cache_key(payload)
        if self._answers is not None:
            return self._done(self._replayed(request, when, key), when, payload, key)
        probed = self._probed.pop(key, None)
        if probed is not None:
            return probed  # the health probe's answers, already counted and transcribed
        batched = self._from_batch(request, key)
        if batched is not None:
            return self._done(batched, when, payload, key)

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
            return self._done(self._failed(request, exc), when, payload, key)
        return self._done(self._answered(request, lookup), when, payload, key)

    async def _aask(
        self,
        request: ChatRequest,
        when: pd.Timestamp,
        payload: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> list[_Asked]:
        payload = payload or self.client.key_payload(request)
        key = key or cache_key(payload)
        if self._answers is not None:
            return self._done(self._replayed(request, when, key), when, payload, key)
        probed = self._probed.pop(key, None)
        if probed is not None:
            return probed  # the health probe's answers, already counted and transcribed
        batched = self._from_batch(request, key)
        if batched is not None:
            return self._done(batched, when, payload, key)

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
            return self._done(self._failed(request, exc), when, payload, key)
        return self._done(self._answered(request, lookup), when, payload, key)

    def _decide(
        self, plan: _Plan, state: DecisionState, candidates: Sequence[CallCandidate]
    ) -> LLMDecisionRecord:
        started = time.perf_counter()
        asked = [a for r, p, k in plan.asks() for a in self._ask(r, plan.time, p, k)]
        for request in self._missing_samples(plan, asked):
            asked += self._ask(request, plan.time)
        for request in self._retry_requests(plan, asked):
            asked += self._ask(request, plan.time)
        return self._conclude(plan, asked, state, candidates, started)

    async def _adecide(
        self, plan: _Plan, state: DecisionState, candidates: Sequence[CallCandidate]
    ) -> LLMDecisionRecord:
        started = time.perf_counter()

        async def ask_all(requests: Sequence[tuple[ChatRequest, Any, Any]]) -> list[_Asked]:
            done = await asyncio.gather(*(self._aask(r, plan.time, p, k) for r, p, k in requests))
            return [a for group in done for a in group]

        asked = await ask_all(list(plan.asks()))
        missing = self._missing_samples(plan, asked)
        if missing:
            asked += await ask_all([(r, None, None) for r in missing])
        retries = self._retry_requests(plan, asked)
        if retries:
            asked += await ask_all([(r, None, None) for r in retries])
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
            # A batch's answers and final failures are settled already: only live requests
            # are probed.
            settled = key in self._batched or key in self._batch_errors or key in self._batch_unsent
            cached = settled or (
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
            failed = first[0] if first[0].error is not None else None
            n_rejected = request.n > 1 and _names_n(failed.error if failed else None)
            if failed is not None and failed.failure == "bad_request" and n_rejected:
                # The server takes one choice per request: the samples are asked one by one
                # (`_missing_samples`), that is no reason to skip the policy.
                self._probed[key] = first
                return
            if failed is not None and failed.failure == "bad_request":
                # A 400 may be about this one prompt: ask once more, skip only if it repeats.
                again = await self._aask(request, plan.time, payload, key)
                if again[0].error == failed.error:
                    raise LLMUnavailable(
                        f"{self.name}: the first request was rejected twice with the same "
                        f"error: {failed.error}"
                    )
                first = again
                failed = first[0] if first[0].error is not None else None
        except SpendCapReached as exc:
            self._stop("spend", str(exc))
            return
        if failed is not None and probe_skips(failed.failure or "other"):
            raise LLMUnavailable(
                f"{self.name}: the first request failed ({failed.failure}): {failed.error}"
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
                        except (TranscriptMissing, Unsubmitted):
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
            choice = asked.choice
            check = validate_answer(choice.text if choice is not None else None, list(plan.names))
            if not check.valid and choice is not None and asked.lookup is not None:
                reason = _why_invalid(check.reason or "invalid", choice, asked)
                check = AnswerCheck(False, reason=reason)
            asked.check = check
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
        note = ""
        by_sample: dict[int, list[_Asked]] = {}
        for a in asked:
            by_sample.setdefault(a.sample, []).append(a)
        votes: Counter[str | None] = Counter()
        rationale: dict[str | None, str] = {}
        reasons: list[str] = []
        errors = [a.error for a in asked if a.error is not None and not a.superseded]
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
            share = top / sum(votes.values())
            if shown is not None and share < self.config.min_vote_share:
                note = (
                    f"SELL {plan.names.get(shown, shown)} had {share:.0%} of the valid votes, "
                    f"under min_vote_share {self.config.min_vote_share:.0%}"
                )
                shown = None
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

        answers = [a for a in asked if a.choice is not None]
        # An `n` request's choices share one lookup: its usage and cost count once.
        lookups = list({id(a.lookup): a.lookup for a in answers if a.lookup}.values())
        usage = sum((lk.entry.usage for lk in lookups), Usage())
        record = LLMDecisionRecord(
            decision_time=plan.time,
            policy=self.name,
            model=self.config.model,
            prompt_id=self.prompt_id,
            raw_answers=tuple(a.choice.text for a in answers if a.choice is not None),
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
            note=note,
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


_N_PARAM = re.compile(r"['\"`]n['\"`]|\bn\s*(must|should|is|:|=|>)", re.IGNORECASE)


def _names_n(error: str | None) -> bool:
    """True when a 400's text is about the `n` parameter (the server takes one choice only)."""
    return bool(error and _N_PARAM.search(error))


def _why_invalid(reason: str, choice: ChatChoice, asked: _Asked) -> str:
    """The invalid reason, with what the provider said about why the answer is missing."""
    if choice.refusal:
        return f"the model refused: {choice.refusal[:300]}"
    request = asked.request
    if choice.finish_reason == "length":
        budget = (
            f"raise `max_tokens` in the policy config (sent as {request.max_tokens_param}="
            f"{request.max_tokens})"
        )
        if reason in ("empty answer", "no answer after the reasoning"):
            entry = asked.lookup.entry if asked.lookup is not None else None
            spent = (
                " by reasoning" if choice.reasoning or (entry and entry.reasoning_tokens) else ""
            )
            return (
                f"no answer: the token limit was used up{spent} (finish_reason: length); {budget}"
            )
        return f"answer truncated at the token limit (finish_reason: length; {reason}); {budget}"
    if choice.finish_reason == "content_filter":
        return f"the provider's content filter stopped the answer ({reason})"
    return reason


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
