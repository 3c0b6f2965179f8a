"""`execution` and `batch:` of an LLM policy: defaults, sizes, errors that name the field."""

from __future__ import annotations

import pytest

from harness.experiments.config import ConfigError, parse_config, with_execution
from harness.policies.llm import LLMPolicyConfig


def _exp(**llm: object) -> dict:
    return {
        "name": "x",
        "simulation": {"underlying": "BTC", "start": "2024-02-01", "end": "2024-03-01"},
        "policies": [{"name": "m", "type": "llm", "model": "gpt-4o-mini", **llm}],
    }


def test_defaults_are_live_with_openai_limits() -> None:
    cfg = LLMPolicyConfig(model="gpt-4o-mini")
    assert cfg.execution == "live"
    assert cfg.batch.leftovers == "live"
    assert cfg.batch.max_requests == 50_000
    assert cfg.batch.max_bytes == 200 * 1024 * 1024


@pytest.mark.parametrize(
    ("text", "size"), [("200MB", 200 * 1024**2), ("512 KB", 512 * 1024), ("1.5g", 1536 * 1024**2)]
)
def test_max_bytes_accepts_sizes(text: str, size: int) -> None:
    assert LLMPolicyConfig(model="m", batch={"max_bytes": text}).batch.max_bytes == size


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"execution": "offline"}, "policies.0.execution"),
        ({"batch": {"leftovers": "maybe"}}, "policies.0.batch.leftovers"),
        ({"batch": {"max_bytes": "lots"}}, "policies.0.batch.max_bytes"),
        ({"batch": {"max_requests": 0}}, "policies.0.batch.max_requests"),
        ({"batch": {"poll": {"initial_s": 0}}}, "policies.0.batch.poll.initial_s"),
        ({"batch": {"window": "24h"}}, "policies.0.batch.window"),
    ],
)
def test_errors_name_the_field(block: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"x.yaml: {field}:"):
        parse_config(_exp(**block), "x.yaml")


def test_run_batch_flag_sets_every_llm_policy() -> None:
    cfg = parse_config(_exp())
    assert with_execution(cfg, "batch").policies[0].execution == "batch"
    assert cfg.policies[0].execution == "live"
