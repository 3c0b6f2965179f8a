"""Token usage and its price: an editable table of USD per million tokens per model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PRICES_PATH = Path(__file__).with_name("model_prices.yaml")
PRICES_ENV = "HARNESS_MODEL_PRICES"  # optional path of a user override file


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one chat completion (`cached_tokens` is the part of the prompt the
    provider served from its own prompt cache, included in `prompt_tokens`; `reasoning_tokens`
    the part of the completion a reasoning model spent thinking, included in
    `completion_tokens` and billed with it)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage:
        """Read the `usage` object of a chat-completions response (missing fields count 0)."""
        if not usage:
            return cls()
        details = usage.get("prompt_tokens_details") or {}
        completion = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            reasoning_tokens=int(completion.get("reasoning_tokens") or 0),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Usage:
        """Read what `as_dict` wrote (missing fields count 0)."""
        data = data or {}
        return cls(**{name: int(data.get(name) or 0) for name in _USAGE_FIELDS})

    def as_dict(self) -> dict[str, int]:
        """Plain dict for JSON."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model in USD per 1 million tokens."""

    input: float
    output: float
    cached_input: float
    batch_discount: float | None = None  # batch price = list price x this; None: no batch API

    def cost_usd(self, usage: Usage) -> float:
        """USD cost of `usage` (cached prompt tokens at the cached rate)."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        uncached = usage.prompt_tokens - cached
        return (
            uncached * self.input
            + cached * self.cached_input
            + usage.completion_tokens * self.output
        ) / 1_000_000.0

    def batch_cost_usd(self, usage: Usage) -> float | None:
        """USD cost of `usage` through the provider's batch API, None when it has none."""
        if self.batch_discount is None:
            return None
        return self.cost_usd(usage) * self.batch_discount


class PriceTable:
    """Model name -> `ModelPrice`; exact match first, then the longest listed prefix."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = dict(prices)
        # Longest first so "gpt-4o-mini" wins over "gpt-4o" for "gpt-4o-mini-2024-07-18".
        self._prefixes = sorted(self._prices, key=len, reverse=True)

    @classmethod
    def load(cls, override_path: str | os.PathLike[str] | None = None) -> PriceTable:
        """Load the shipped table, then the override file (argument, else $HARNESS_MODEL_PRICES)."""
        prices = _read_prices(DEFAULT_PRICES_PATH)
        override = override_path if override_path is not None else os.environ.get(PRICES_ENV)
        if override:
            prices.update(_read_prices(Path(override)))
        return cls(prices)

    @property
    def models(self) -> tuple[str, ...]:
        """Model names listed in the table."""
        return tuple(self._prices)

    def price_for(self, model: str) -> ModelPrice | None:
        """Price of `model`, or None when the table does not list it."""
        if model in self._prices:
            return self._prices[model]
        for prefix in self._prefixes:
            if model.startswith(prefix):
                return self._prices[prefix]
        return None

    def cost_usd(self, model: str, usage: Usage) -> float:
        """USD cost of `usage` on `model`; 0.0 for unpriced models (see `price_for`)."""
        price = self.price_for(model)
        return 0.0 if price is None else price.cost_usd(usage)


def _read_prices(path: Path) -> dict[str, ModelPrice]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"model price file not found: {path}") from None
    models = raw.get("models", raw) if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f"{path}: expected a mapping `models: {{name: {{input, output}}}}`")
    prices: dict[str, ModelPrice] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise ValueError(
                f"{path}: model {name!r} needs `input` and `output` prices ($/1M tokens)"
            )
        try:
            price = ModelPrice(
                input=float(entry["input"]),
                output=float(entry["output"]),
                cached_input=float(entry.get("cached_input", entry["input"])),
                batch_discount=(
                    float(entry["batch_discount"])
                    if entry.get("batch_discount") is not None
                    else None
                ),
            )
        except (TypeError, ValueError):
            raise ValueError(f"{path}: model {name!r} has a non-numeric price") from None
        if min(price.input, price.output, price.cached_input) < 0:
            raise ValueError(f"{path}: model {name!r} has a negative price")
        if price.batch_discount is not None and not 0 < price.batch_discount <= 1:
            raise ValueError(f"{path}: model {name!r}: batch_discount must be in (0, 1]")
        prices[str(name)] = price
    return prices
