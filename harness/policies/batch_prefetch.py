"""The batch half of an LLM policy's prefetch: its uncached requests go by the provider's batch API.

`BatchPrefetch.collect` walks every decision of the prefetch the way `LLMPolicy._adecide` would,
but instead of asking it collects the requests nobody has answered yet (first attempts; then the
separate samples an `n` request did not bring back; then the `on_invalid: retry` re-asks, which
need the first answers). Each round of such requests becomes `BatchItem`s (custom_id = the
response-cache key) sent through `harness.llm.batch.run_batches`; every answer is written to the
response cache the moment it arrives and handed to the policy, which serves it during the normal
prefetch that follows exactly as a live answer (transcript `execution: "batch"`, cost at the
price table's `batch_discount`). So the replay after it, and every later run, is unchanged.

Leftovers (items that failed, or are missing from the output of an expired or cancelled batch)
follow `batch.leftovers`: `live` leaves them to the normal prefetch (asked live), `resubmit` puts
them in the next round (at most `batch.max_resubmits` times, then they are errors), `error`
records them as failed requests with the error the batch gave (errors are never cached).

Run health in batch mode (docs/llm.md "Batch mode"): there is no live probe (it would defeat the
point of sending nothing live). A failure of the upload or of the batch as a whole that means no
request can succeed (key, auth, credit, unknown model) skips the policy, and so does a first
round in which nothing succeeded and the failures are of such a kind. Spend caps hold each
item's worst case at batch prices before it is submitted; items a cap refuses are not submitted
and the policy stops for spend (resume with more budget).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.llm.batch import (
    BatchItem,
    BatchLedger,
    BatchLimits,
    BatchProvider,
    BatchResult,
    BatchStillRunning,
    PollPolicy,
    run_batches,
)
from harness.llm.budget import Reservation, SpendCapReached, settle
from harness.llm.cache import CachedResponse, CacheMode, ResponseCache, cache_key
from harness.llm.client import (
    ChatClient,
    ChatRequest,
    ChatResponse,
    LLMError,
    LLMServerError,
    LLMUnavailable,
)
from harness.llm.health import classify_failure

# Failures of a whole first round that mean no request of the policy can succeed (skip it).
UNAVAILABLE_KINDS = frozenset({"missing_key", "auth", "payment", "model_not_found"})

log = logging.getLogger("harness.llm")

WRITE_CHUNK = 500  # answers stored per cache transaction
MISSING = "missing from the batch output (the batch expired or was cancelled before it)"


@dataclass(frozen=True)
class BatchContext:
    """What a run gives its LLM policies for batch mode: the run folder's ledger
    (`batches.json`), metadata naming the run on every batch, and where progress lines go."""

    ledger: BatchLedger
    metadata: dict[str, str] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None
    provider_for: Callable[[str, str], BatchProvider] | None = None  # None: the policy's own


@dataclass(frozen=True, slots=True)
class Pending:
    """One request the prefetch still needs, with its cache key payload and key."""

    request: ChatRequest
    payload: dict[str, Any]
    key: str


@dataclass(slots=True)
class BatchOutcome:
    """What the batch rounds of one prefetch did (for the run summary and the CLI)."""

    submitted: int = 0  # requests handed to run_batches (pending ones of an earlier run too)
    answered: int = 0
    failed: int = 0
    rounds: int = 0
    leftovers_live: int = 0
    not_submitted: int = 0  # refused by a spend cap


class BatchItemMissing(LLMServerError):
    """An item absent from the output of a finished batch (expired or cancelled first)."""


class Unsubmitted(LookupError):
    """A request a spend cap kept out of the batch: its decision is not asked in this run."""


class BatchingPolicy(Protocol):
    """What the batch rounds use of `harness.policies.llm.LLMPolicy` (which implements it;
    a Protocol so this module does not import the policy module that imports it)."""

    name: str
    config: Any  # LLMPolicyConfig
    client: ChatClient
    cache: ResponseCache | None
    cache_mode: CacheMode
    _batched: dict[str, CachedResponse]
    _batch_errors: dict[str, LLMError]
    _batch_unsent: set[str]
    _batch_stop: tuple[str, str] | None

    def _missing_samples(self, plan: Any, asked: list[Any]) -> list[ChatRequest]: ...
    def _retry_requests(self, plan: Any, asked: list[Any]) -> list[ChatRequest]: ...
    def _known_asked(
        self, request: ChatRequest, entry: CachedResponse | None, error: LLMError | None
    ) -> list[Any]: ...
    def _reserve(self, request: ChatRequest, *, batch: bool = False) -> Reservation | None: ...
    def _batch_entry(self, response: ChatResponse) -> CachedResponse: ...
    def batch_provider(self) -> BatchProvider: ...


class BatchPrefetch:
    """Runs the batch rounds of one `LLMPolicy.prefetch` (see the module docstring)."""

    def __init__(self, policy: BatchingPolicy, context: BatchContext | None = None) -> None:
        self.policy = policy
        self.context = context
        self.settings = policy.config.batch
        self.outcome = BatchOutcome()
        self._live: set[str] = set()  # keys left to the live prefetch
        self._resubmits: Counter[str] = Counter()

    # -- what is known ---------------------------------------------------------------------

    def _entry(self, key: str) -> CachedResponse | None:
        policy = self.policy
        entry = policy._batched.get(key)
        if entry is not None:
            return entry
        if policy.cache is not None and policy.cache_mode in ("read_write", "read_only"):
            return policy.cache.get(key)
        return None

    def _known(self, key: str) -> bool:
        return key in self._live or key in self.policy._batch_errors or self._entry(key) is not None

    def _as_asked(self, pending: Pending) -> list[Any]:
        """What `_aask` would return for a known request, without counting or writing it."""
        error = self.policy._batch_errors.get(pending.key)
        entry = None if error is not None else self._entry(pending.key)
        return self.policy._known_asked(pending.request, entry, error)

    def _pending(self, request: ChatRequest) -> Pending:
        payload = self.policy.client.key_payload(request)
        return Pending(request, payload, cache_key(payload))

    def needs(self, plan: Any) -> list[Pending]:
        """The requests of `plan`'s decision nobody has answered yet, in the order the live
        path asks them (first attempts, missing samples, retries); [] when it can be decided."""
        policy = self.policy
        first = [Pending(r, p, k) for r, p, k in plan.asks()]
        unknown = [p for p in first if not self._known(p.key)]
        if unknown or any(p.key in self._live for p in first):
            return unknown
        asked = [a for p in first for a in self._as_asked(p)]
        for stage in (policy._missing_samples, policy._retry_requests):
            more = [self._pending(r) for r in stage(plan, asked)]
            if not more:
                continue
            unknown = [p for p in more if not self._known(p.key)]
            if unknown or any(p.key in self._live for p in more):
                return unknown
            asked += [a for p in more for a in self._as_asked(p)]
        return []

    def collect(self, plans: Sequence[Any]) -> list[Pending]:
        """The requests every decision of `plans` still needs, each key once."""
        todo: dict[str, Pending] = {}
        for plan in plans:
            for p in self.needs(plan):
                todo.setdefault(p.key, p)
        return list(todo.values())

    def item(self, p: Pending) -> BatchItem:
        """The batch line of a pending request: custom_id = its cache key, body as sent live."""
        client = self.policy.client
        return BatchItem(
            custom_id=p.key,
            model=p.request.model,
            base_url=client.base_url,
            body=client.request_body(p.request),
        )

    # -- rounds ----------------------------------------------------------------------------

    def run(self, plans: Sequence[Any]) -> BatchOutcome:
        """Batch rounds until every decision of `plans` can be decided from what came back."""
        if self.context is None:
            raise ValueError("batch rounds need a BatchContext (the run's ledger)")
        limit = 3 + self.settings.max_resubmits  # first, samples, retry, resubmits
        for _ in range(limit):
            todo = self.collect(plans)
            if not todo or not self._round(todo):
                break
        return self.outcome

    def _round(self, todo: list[Pending]) -> bool:
        """Submit one round and take in its results; False when nothing could be submitted."""
        policy = self.policy
        holds: dict[str, Reservation | None] = {}
        sent: list[Pending] = []
        for p in todo:
            try:
                holds[p.key] = policy._reserve(p.request, batch=True)
            except SpendCapReached as exc:
                refused = [q.key for q in todo[len(sent) :]]
                policy._batch_unsent.update(refused)
                self.outcome.not_submitted += len(refused)
                policy._batch_stop = ("spend", str(exc))
                break
            sent.append(p)
        if not sent:
            return False
        first_round = self.outcome.rounds == 0
        self.outcome.rounds += 1
        self.outcome.submitted += len(sent)
        self._say(
            f"{policy.name}: {len(sent):,} requests by batch (round {self.outcome.rounds}, "
            f"model {policy.config.model})"
        )
        results: dict[str, BatchResult] = {}
        whole: LLMError | None = None
        assert self.context is not None
        try:
            results = run_batches(
                [self.item(p) for p in sent],
                self._provider_for,
                self.context.ledger,
                limits=BatchLimits(
                    max_requests=self.settings.max_requests, max_bytes=self.settings.max_bytes
                ),
                metadata={**self.context.metadata, "policy": policy.name[:64]},
                poll=self._poll(),
                progress=self.context.progress,
                resubmit=[p.key for p in sent if self._resubmits[p.key]],
            )
        except BatchStillRunning as exc:
            # Still running at the provider: nothing is lost and nothing is asked another way;
            # the policy stops here and `--resume` polls the same batches.
            for p in sent:
                self._release(holds.pop(p.key, None), 0.0)
            policy._batch_unsent.update(p.key for p in sent)
            policy._batch_stop = ("batch", str(exc))
            return False
        except LLMUnavailable:
            for p in sent:
                self._release(holds.pop(p.key, None), 0.0)
            raise
        except LLMError as exc:  # the batch as a whole failed: every item is a leftover
            whole = exc
        got = failed = 0
        first_error: LLMError | None = None
        for p in self.writing_chunks(sent):
            result = results.get(p.key)
            cost, error = 0.0, whole
            if result is not None and whole is None:
                try:
                    cost = self.store(p, result)
                    got += 1
                except LLMError as exc:
                    error = exc
            elif error is None:
                error = BatchItemMissing(f"{MISSING} ({policy.name}, key {p.key[:16]})")
            self._release(holds.pop(p.key, None), cost)
            if error is not None:
                failed += 1
                first_error = first_error or error
                self._leftover(p, error)
        self.outcome.answered += got
        self.outcome.failed += failed
        if first_round and got == 0 and first_error is not None:
            # The batch counterpart of "the first request alone": nothing came back, and what
            # came back says no request can succeed (key, credit, unknown model).
            kind = classify_failure(first_error)
            if kind in UNAVAILABLE_KINDS:
                raise LLMUnavailable(
                    f"{policy.name}: every request of the first batch failed ({kind}): "
                    f"{first_error}"
                )
        return True

    def writing(self) -> contextlib.AbstractContextManager[Any]:
        """One cache transaction around storing many answers (nothing without a cache)."""
        cache = self.policy.cache
        return cache.writing_many() if cache is not None else contextlib.nullcontext()

    def writing_chunks(self, pending: Sequence[Pending]) -> Iterator[Pending]:
        """`pending` one by one, inside one cache transaction per `WRITE_CHUNK` of them (so
        other processes sharing the cache never wait long for a commit)."""
        for start in range(0, len(pending), WRITE_CHUNK):
            with self.writing():
                yield from pending[start : start + WRITE_CHUNK]

    def store(self, p: Pending, result: BatchResult) -> float:
        """Parse one answer like a live one, cache it, hand it to the policy; its USD cost.

        Raises the result's `LLMError` (never cached) when the item failed."""
        policy = self.policy
        if result.error is not None:
            raise result.error
        if result.status_code != 200 or result.body is None:
            raise LLMServerError(
                f"batch item {p.key[:16]} came back with HTTP {result.status_code} and no answer"
            )
        response = policy.client.parse_completion(result.body, p.request)
        entry = policy._batch_entry(response)
        if policy.cache is not None:
            mode = "off" if policy.cache_mode == "off" else "read_write"
            entry = policy.cache.store(p.payload, entry, mode=mode, key=p.key)
        else:
            entry = entry.model_copy(update={"key": p.key, "key_payload": dict(p.payload)})
        policy._batched[p.key] = entry
        return entry.cost_usd

    def _leftover(self, p: Pending, error: LLMError) -> None:
        mode = self.settings.leftovers
        if mode == "live":
            self._live.add(p.key)
            self.outcome.leftovers_live += 1
        elif mode == "resubmit" and self._resubmits[p.key] < self.settings.max_resubmits:
            self._resubmits[p.key] += 1  # stays unknown: the next round asks it again
        else:
            self.policy._batch_errors[p.key] = error

    # -- plumbing --------------------------------------------------------------------------

    def _provider_for(self, base_url: str, model: str) -> BatchProvider:
        if self.context is not None and self.context.provider_for is not None:
            return self.context.provider_for(base_url, model)
        return self.policy.batch_provider()

    def _poll(self) -> PollPolicy:
        poll = self.settings.poll
        return PollPolicy(
            initial_s=poll.initial_s,
            max_s=poll.max_s,
            factor=poll.factor,
            max_wait_s=poll.max_wait_s,
        )

    def _say(self, line: str) -> None:
        if self.context is not None and self.context.progress is not None:
            self.context.progress(line)
        else:
            log.info("%s", line)

    @staticmethod
    def _release(hold: Reservation | None, cost: float) -> None:
        if hold is not None:
            settle(hold, cost)
