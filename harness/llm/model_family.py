"""Which models are OpenAI-style reasoning models (o-series, gpt-5): they take
`max_completion_tokens` instead of `max_tokens`, reject a non-default `temperature`/`top_p`, and
spend part of the token budget on hidden reasoning."""

from __future__ import annotations

import re

# o1, o1-mini, o3-mini, o4-mini-high, gpt-5, gpt-5-mini, gpt-5.1; not gpt-5-chat-latest (a chat
# model), not gpt-4o / omni-moderation.
_REASONING = re.compile(r"^(o[1-9][0-9]*(-.*)?|gpt-5(\.[0-9]+)?(-(?!chat).*)?)$")


def infer_reasoning_model(model: str) -> bool:
    """True when `model` (also with a provider prefix, `openai/o3-mini`) names a reasoning model."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    return bool(_REASONING.match(name))
