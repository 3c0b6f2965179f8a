"""LLM layer: chat client, response cache, retries, rate limits, cost, prompts, answer contract.

`harness.policies.llm.LLMPolicy` composes these into a policy; see docs/llm.md. Names are
imported lazily so that e.g. `harness cache stats` does not pay for importing the openai SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.llm.anonymize import Anchor, AnonymizedView, PlainView
    from harness.llm.cache import (
        CACHE_MODES,
        CachedResponse,
        CacheLookup,
        CacheMissError,
        CacheMode,
        CacheStats,
        ResponseCache,
        cache_key,
        canonical_json,
        default_cache_dir,
    )
    from harness.llm.choice import ChatChoice
    from harness.llm.client import (
        ChatClient,
        ChatRequest,
        ChatResponse,
        LLMAuthError,
        LLMBadRequest,
        LLMCallError,
        LLMError,
        LLMKeyMissing,
        LLMModelNotFound,
        LLMPaymentRequired,
        LLMRateLimited,
        LLMServerError,
        LLMTimeout,
        LLMUnavailable,
        LLMUnreachable,
    )
    from harness.llm.contract import (
        AnswerCheck,
        LLMAnswer,
        answer_json_schema,
        response_format_for,
        validate_answer,
    )
    from harness.llm.cost import ModelPrice, PriceTable, Usage
    from harness.llm.final_answer import extract_final_json, parse_choice, split_reasoning
    from harness.llm.model_family import infer_reasoning_model
    from harness.llm.prompts import PromptTemplate, build_context, load_prompt
    from harness.llm.ratelimit import RateLimiter
    from harness.llm.retry import RetryPolicy

_EXPORTS = {
    "infer_reasoning_model": "harness.llm.model_family",
    "LLMUnreachable": "harness.llm.client",
    "LLMTimeout": "harness.llm.client",
    "LLMServerError": "harness.llm.client",
    "LLMRateLimited": "harness.llm.client",
    "LLMPaymentRequired": "harness.llm.client",
    "LLMModelNotFound": "harness.llm.client",
    "LLMKeyMissing": "harness.llm.client",
    "LLMBadRequest": "harness.llm.client",
    "LLMAuthError": "harness.llm.client",
    "ChatChoice": "harness.llm.choice",
    "Anchor": "harness.llm.anonymize",
    "AnonymizedView": "harness.llm.anonymize",
    "AnswerCheck": "harness.llm.contract",
    "CACHE_MODES": "harness.llm.cache",
    "CacheLookup": "harness.llm.cache",
    "CacheMissError": "harness.llm.cache",
    "CacheMode": "harness.llm.cache",
    "CacheStats": "harness.llm.cache",
    "CachedResponse": "harness.llm.cache",
    "ChatClient": "harness.llm.client",
    "ChatRequest": "harness.llm.client",
    "ChatResponse": "harness.llm.client",
    "LLMAnswer": "harness.llm.contract",
    "LLMCallError": "harness.llm.client",
    "LLMError": "harness.llm.client",
    "LLMUnavailable": "harness.llm.client",
    "ModelPrice": "harness.llm.cost",
    "PlainView": "harness.llm.anonymize",
    "PriceTable": "harness.llm.cost",
    "PromptTemplate": "harness.llm.prompts",
    "RateLimiter": "harness.llm.ratelimit",
    "ResponseCache": "harness.llm.cache",
    "RetryPolicy": "harness.llm.retry",
    "Usage": "harness.llm.cost",
    "answer_json_schema": "harness.llm.contract",
    "build_context": "harness.llm.prompts",
    "cache_key": "harness.llm.cache",
    "canonical_json": "harness.llm.cache",
    "default_cache_dir": "harness.llm.cache",
    "extract_final_json": "harness.llm.final_answer",
    "parse_choice": "harness.llm.final_answer",
    "split_reasoning": "harness.llm.final_answer",
    "load_prompt": "harness.llm.prompts",
    "response_format_for": "harness.llm.contract",
    "validate_answer": "harness.llm.contract",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CACHE_MODES",
    "Anchor",
    "AnonymizedView",
    "AnswerCheck",
    "CacheLookup",
    "CacheMissError",
    "CacheMode",
    "CacheStats",
    "CachedResponse",
    "ChatChoice",
    "ChatClient",
    "ChatRequest",
    "ChatResponse",
    "LLMAnswer",
    "LLMAuthError",
    "LLMBadRequest",
    "LLMCallError",
    "LLMError",
    "LLMKeyMissing",
    "LLMModelNotFound",
    "LLMPaymentRequired",
    "LLMRateLimited",
    "LLMServerError",
    "LLMTimeout",
    "LLMUnavailable",
    "LLMUnreachable",
    "ModelPrice",
    "PlainView",
    "PriceTable",
    "PromptTemplate",
    "RateLimiter",
    "ResponseCache",
    "RetryPolicy",
    "Usage",
    "answer_json_schema",
    "build_context",
    "cache_key",
    "canonical_json",
    "default_cache_dir",
    "extract_final_json",
    "infer_reasoning_model",
    "load_prompt",
    "parse_choice",
    "response_format_for",
    "split_reasoning",
    "validate_answer",
]
