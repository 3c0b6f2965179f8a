"""Config builder and file helpers shared by the run-integrity tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KEY_ENV = "HARNESS_HEALTH_KEY"
SECRET = "sk-health-NEVER-WRITE-ME-5a4b3c2d1e0f"


def fast_llm(url: str, key_env: str = KEY_ENV, **llm: Any) -> dict[str, Any]:
    """An LLM policy entry `llm` (gpt-4o-mini) at `url` with fast retries; `llm` overrides."""
    return {
        "name": "llm",
        "type": "llm",
        "model": "gpt-4o-mini",
        "base_url": url,
        "api_key_env": key_env,
        "seed": 1,
        "max_concurrency": 4,
        "max_attempts": 2,
        "initial_backoff_s": 0.001,
        "max_backoff_s": 0.01,
        "max_retry_after_s": 0.01,
        "timeout_s": 5.0,
        **llm,
    }


def config(tmp: Path, url: str, *, name: str = "health", **llm: Any) -> dict:
    """always_sell + oracle + one LLM policy `llm` at `url` with fast retries."""
    settings = fast_llm(url, **llm)
    return {
        "name": name,
        "market": {"source": "synthetic", "seed": 3},
        "simulation": {
            "underlying": "BTC",
            "start": "2024-02-01",
            "end": "2024-03-05",
            "timeframe": "1h",
            "decision_interval_bars": 12,
        },
        "policies": [
            {"name": "always_sell", "type": "rule", "rule": "always_sell"},
            {"name": "oracle", "type": "rule", "rule": "oracle"},
            settings,
        ],
        "baseline": "always_sell",
        "cache": {"dir": str(tmp / "cache"), "mode": "read_write"},
        "bootstrap_resamples": 200,
    }


def rows(run_dir: Path, policy: str | None = None) -> list[dict]:
    """decisions.jsonl rows (of one policy)."""
    out = [json.loads(x) for x in (run_dir / "decisions.jsonl").read_text().splitlines()]
    return [r for r in out if policy is None or r["policy"] == policy]


def manifest(run_dir: Path) -> dict:
    """manifest.json."""
    return json.loads((run_dir / "manifest.json").read_text())


def assert_secret_nowhere(roots: list[Path], secret: str) -> int:
    """Fail if `secret` is in any file under `roots`; return how many files were read."""
    n = 0
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file():
                n += 1
                assert secret.encode() not in p.read_bytes(), p
    return n
