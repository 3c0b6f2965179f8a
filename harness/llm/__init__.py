"""LLM layer: chat client, response cache, retries, rate limits, cost, prompts, answer contract.

`harness.policies.llm.LLMPolicy` composes these into a policy; see docs/llm.md.
"""

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
from harness.llm.client import (
    ChatClient,
    ChatRequest,
    ChatResponse,
    LLMCallError,
    LLMError,
    LLMUnavailable,
)
from harness.llm.contract import (
    AnswerCheck,
    LLMAnswer,
    answer_json_schema,
    extract_first_json_object,
    response_format_for,
    validate_answer,
)
from harness.llm.cost import ModelPrice, PriceTable, Usage
from harness.llm.prompts import PromptTemplate, build_context, load_prompt
from harness.llm.ratelimit import RateLimiter
from harness.llm.retry import RetryPolicy

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
    "ChatClient",
    "ChatRequest",
    "ChatResponse",
    "LLMAnswer",
    "LLMCallError",
    "LLMError",
    "LLMUnavailable",
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
    "extract_first_json_object",
    "load_prompt",
    "response_format_for",
    "validate_answer",
]
