"""`transcripts.jsonl`: every LLM request a run made or took from the cache, with its answer.

One JSON object per request (docs/run_folder.md): the rendered messages, the request
parameters (never a key; header values masked), the raw answer, reasoning, finish_reason,
usage, cost, latency, cache key and whether it came from the cache. It pins a run's answers
to its folder: `harness replay` re-runs a run from this file alone, with no cache and no
network. Readers tolerate missing optional keys (older or partial lines).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from harness import strict_json

TRANSCRIPTS_FILE = "transcripts.jsonl"
MASK = "***"
# Request parameters whose values may carry credentials: every value is masked when written.
_MASKED_PARAMS = ("extra_headers", "headers", "default_headers")


class TranscriptRequest(BaseModel):
    """The request as sent: messages in wire format and the other parameters."""

    model_config = ConfigDict(frozen=True, extra="allow")

    messages: list[dict[str, Any]] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)


class TranscriptResponse(BaseModel):
    """What the server answered (None in a record whose request failed)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    content: str | None = None
    reasoning: str | None = None
    finish_reason: str | None = None
    refusal: str | None = None


class TranscriptRecord(BaseModel):
    """One LLM request of a run and its outcome (INTERFACES section 2)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    policy: str
    decision_time: str  # ISO-8601 UTC
    attempt: int = 0  # on_invalid=retry attempt index, 0 first
    sample: int = 0  # vote index when samples > 1
    cache_key: str | None = None
    from_cache: bool = False
    execution: str = "live"  # live | batch | replay
    model: str | None = None
    base_url: str | None = None
    prompt_id: str | None = None
    request: TranscriptRequest = Field(default_factory=TranscriptRequest)
    response: TranscriptResponse | None = None
    usage: dict[str, int] = Field(default_factory=dict)
    cost_usd: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    error_kind: str | None = None  # harness.llm.health failure kind of `error`
    n_choices: int | None = None  # choices the request brought back (`n` sampling)

    @property
    def time(self) -> pd.Timestamp:
        """`decision_time` as a UTC timestamp."""
        return pd.Timestamp(self.decision_time).tz_convert("UTC")

    @property
    def slot(self) -> tuple[str, str, int, int]:
        """(policy, decision_time, attempt, sample): what replay matches on."""
        return (self.policy, self.time.isoformat(), self.attempt, self.sample)


def mask_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with every header value replaced by the mask."""
    out = dict(params)
    for name in _MASKED_PARAMS:
        value = out.get(name)
        if isinstance(value, dict):
            out[name] = {k: MASK for k in value}
    return out


class TranscriptWriter:
    """Appends records to a run folder's transcripts.jsonl (thread-safe, one flushed line each).

    `redact` is applied to every line before it is written (the run's secrets and anything
    shaped like an API key).
    """

    def __init__(self, path: str | Path, redact: Callable[[str], str] | None = None) -> None:
        self.path = Path(path)
        self._redact = redact or (lambda text: text)
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")
        self.written = 0

    def write(self, record: TranscriptRecord) -> None:
        """Append one record."""
        data = record.model_dump(mode="json")
        data["request"]["params"] = mask_params(data["request"].get("params") or {})
        line = self._redact(strict_json.dumps(data, ensure_ascii=False, default=str))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            self.written += 1

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()

    def __enter__(self) -> TranscriptWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_transcripts(path: str | Path) -> Iterator[TranscriptRecord]:
    """Records of a transcripts.jsonl file in order (a torn last line is ignored)."""
    p = Path(path)
    if not p.exists():
        return
    with p.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield TranscriptRecord.model_validate_json(line)
            except ValueError:
                continue  # the line a killed run was writing


class TranscriptMissing(LookupError):
    """The run's transcripts hold no answer for a request (replay only)."""


class TranscriptBook:
    """A run's transcripts indexed by (policy, decision_time, attempt, sample) for replay.

    When a slot holds several records (a later `--resume` asked again), the last one that
    has an answer wins, and a record whose cache key matches the request is preferred.
    """

    def __init__(self, records: Iterable[TranscriptRecord]) -> None:
        self._slots: dict[tuple[str, str, int, int], list[TranscriptRecord]] = {}
        for record in records:
            self._slots.setdefault(record.slot, []).append(record)

    @classmethod
    def read(cls, path: str | Path) -> TranscriptBook:
        """Index the records of a transcripts.jsonl file."""
        return cls(read_transcripts(path))

    def __len__(self) -> int:
        return sum(len(v) for v in self._slots.values())

    def policies(self) -> set[str]:
        """Policies with at least one record."""
        return {slot[0] for slot in self._slots}

    def find(
        self,
        policy: str,
        decision_time: pd.Timestamp,
        attempt: int,
        sample: int,
        cache_key: str | None = None,
    ) -> TranscriptRecord:
        """The record answering this request, or raise `TranscriptMissing`."""
        slot = (policy, pd.Timestamp(decision_time).tz_convert("UTC").isoformat(), attempt, sample)
        found = self._slots.get(slot)
        if not found:
            raise TranscriptMissing(
                f"no transcript for policy {policy} at {slot[1]} (attempt {attempt}, "
                f"sample {sample})"
            )
        if cache_key is not None:
            same = [r for r in found if r.cache_key == cache_key]
            if same:
                found = same
        answered = [r for r in found if r.response is not None]
        return (answered or found)[-1]
