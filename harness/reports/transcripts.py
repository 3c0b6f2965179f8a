"""Read `transcripts.jsonl` (every LLM request of a run) and look records up per decision.

Written by the LLM layer (docs/run_folder.md); every key but `policy` and `decision_time` is
optional to a reader. Text shown to people passes through `mask_secrets` as a second guard:
the writer already masks keys, a viewer must never be the place one leaks.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from harness.llm.transcripts import TRANSCRIPTS_FILE
from harness.llm.transcripts import read_transcripts as read_records

_SECRET = re.compile(
    r"(sk-[A-Za-z0-9_\-]{6,}|(?i:bearer)\s+[A-Za-z0-9._\-]{6,}|(?i:api[_-]?key)[\"'=: ]+[^\s\"',}]{6,})"
)


def mask_secrets(text: Any) -> Any:
    """Replace anything shaped like an API key or bearer token with `***` (non-text unchanged)."""
    if not isinstance(text, str):
        return text
    return _SECRET.sub("***", text)


def _scrub(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: ("***" if k.lower() in {"authorization", "api_key", "api-key"} else _scrub(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return mask_secrets(obj)


def time_key(ts: Any) -> str:
    """Canonical ISO-8601 UTC string of a decision time, for matching records to decisions."""
    return pd.Timestamp(ts).tz_convert("UTC").isoformat()


def read_transcripts(run_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Records per (policy, canonical decision time), attempts then samples in order; {} if absent.

    Parsing is the LLM layer's (`harness.llm.transcripts`); records become secret-masked dicts.
    """
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in read_records(Path(run_dir) / TRANSCRIPTS_FILE):
        try:
            key = (rec.policy, time_key(rec.decision_time))
        except (ValueError, TypeError):
            continue
        out[key].append(_scrub(rec.model_dump()))
    for recs in out.values():
        recs.sort(key=lambda r: (int(r.get("attempt") or 0), int(r.get("sample") or 0)))
    return dict(out)


def transcript_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over one decision's records: tokens, cost (USD), cache hits, request count."""
    usage = [r.get("usage") or {} for r in records]
    return {
        "requests": len(records),
        "from_cache": sum(bool(r.get("from_cache")) for r in records),
        "prompt_tokens": sum(int(u.get("prompt_tokens") or 0) for u in usage),
        "completion_tokens": sum(int(u.get("completion_tokens") or 0) for u in usage),
        "reasoning_tokens": sum(int(u.get("reasoning_tokens") or 0) for u in usage),
        "cost_usd": float(sum(float(r.get("cost_usd") or 0.0) for r in records)),
        "errors": [str(r["error"]) for r in records if r.get("error")],
    }


def prompt_lines(records: list[dict[str, Any]] | None) -> list[str]:
    """The first request's messages as text lines, each message headed by `[role]`."""
    if not records:
        return []
    lines: list[str] = []
    for m in (records[0].get("request") or {}).get("messages") or []:
        if isinstance(m, dict):
            lines.append(f"[{m.get('role', '?')}]")
            lines.extend(str(m.get("content", "")).splitlines())
    return lines


def final_answer(records: list[dict[str, Any]] | None) -> str | None:
    """The last request's raw answer text (or its error), secret-masked; None without records."""
    if not records:
        return None
    resp = records[-1].get("response") or {}
    text = resp.get("content") if resp.get("content") is not None else records[-1].get("error")
    return mask_secrets(text)


def prompt_diff(a: list[dict[str, Any]] | None, b: list[dict[str, Any]] | None) -> list[str]:
    """Unified diff of two decisions' prompts (A -> B); [] when either is missing or equal."""
    if not a or not b:
        return []
    return list(
        difflib.unified_diff(prompt_lines(a), prompt_lines(b), "prompt A", "prompt B", lineterm="")
    )
