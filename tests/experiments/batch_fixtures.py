"""Scripted answers, configs and file readers shared by the batch-mode run tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.experiments.run_health_fixtures import fast_llm
from tests.llm.batch_server import completion

KEY_ENV = "HARNESS_BATCH_KEY"
SECRET = "sk-batch-NEVER-WRITE-ME-9f8e7d6c5b4a"
FAST_POLL = {"initial_s": 0.01, "max_s": 0.05, "factor": 1.5}


def names_of(body: dict[str, Any]) -> list[str]:
    """Candidate names offered in a request (the enum of its strict answer schema)."""
    schema = body["response_format"]["json_schema"]["schema"]
    return list(schema["properties"]["instrument_name"]["anyOf"][0]["enum"])


def digest(body: dict[str, Any]) -> int:
    """A stable number of the request's user message (what differs between decisions)."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return int(hashlib.sha256(user.encode()).hexdigest()[:8], 16)


def pick(body: dict[str, Any]) -> dict[str, Any]:
    """Deterministic answer: DO_NOTHING for a third of the decisions, else sell one candidate."""
    h, names = digest(body), names_of(body)
    if h % 3 == 0 or not names:
        answer = {"action": "DO_NOTHING", "instrument_name": None}
    else:
        answer = {"action": "SELL_CALL", "instrument_name": names[h % len(names)]}
    answer = {"analysis": "scripted", **answer, "rationale": f"h {h % 97}"}
    return completion(answer, usage=(1000, 200, 0))


def config(
    tmp: Path,
    url: str,
    *,
    name: str = "batchrun",
    cache: str = "cache",
    start: str = "2024-02-01",
    end: str = "2024-03-05",
    timeframe: str = "1h",
    interval: int = 24,
    hold_to_expiry: bool = True,
    **llm: Any,
) -> dict[str, Any]:
    """always_sell + one LLM policy `llm` at `url` (gpt-4o-mini: priced, batch_discount 0.5)."""
    batch = {"poll": FAST_POLL, **llm.pop("batch", {})}
    settings = fast_llm(url, KEY_ENV, batch=batch, **llm)
    return {
        "name": name,
        "market": {"source": "synthetic", "seed": 3},
        "simulation": {
            "underlying": "BTC",
            "start": start,
            "end": end,
            "timeframe": timeframe,
            "decision_interval_bars": interval,
            "hold_to_expiry": hold_to_expiry,
        },
        "policies": [
            {"name": "always_sell", "type": "rule", "rule": "always_sell"},
            settings,
        ],
        "baseline": "always_sell",
        "cache": {"dir": str(tmp / cache), "mode": "read_write"},
        "bootstrap_resamples": 200,
    }


def choices(run_dir: Path, policy: str = "llm") -> dict[str, tuple[str, str | None]]:
    """decision_time -> (action, instrument) of one policy's decision rows."""
    out = {}
    for line in (run_dir / "decisions.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["policy"] == policy:
            out[row["decision_time"]] = (row["action"], row["instrument_name"])
    return out


def transcripts(run_dir: Path) -> list[dict[str, Any]]:
    """transcripts.jsonl records."""
    path = run_dir / "transcripts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def manifest(run_dir: Path) -> dict[str, Any]:
    """manifest.json."""
    return json.loads((run_dir / "manifest.json").read_text())


def metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json."""
    return json.loads((run_dir / "metrics.json").read_text())
