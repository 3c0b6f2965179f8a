"""Prompt token counts for plans and spend caps: a real BPE tokenizer when installed.

`bpe-openai` ships OpenAI's `o200k_base` and `cl100k_base` BPE tables inside its wheel, so it
counts offline (tiktoken downloads its tables at first use, which an offline run cannot do).
Without it, counts fall back to characters / 4. Either way the count is an estimate for other
providers' models, whose tokenizers differ.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

# Per-message overhead of the chat format (role and separators), as OpenAI documents it.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


@functools.cache
def _encoding(name: str) -> Any | None:
    try:
        import bpe_openai
    except ImportError:
        return None
    try:
        return bpe_openai.get_encoding(name)
    except Exception:  # an unknown encoding name or a broken install: fall back to chars / 4
        return None


def encoding_name(model: str) -> str:
    """The BPE table used for `model`: o200k_base for gpt-4o/4.1/5/o-series, else cl100k_base."""
    base = model.rsplit("/", 1)[-1]
    if base.startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")):
        return "o200k_base"
    return "cl100k_base"


def tokenizer_description(model: str) -> str:
    """How `count_message_tokens` counts for `model` (shown by `harness plan`)."""
    name = encoding_name(model)
    if _encoding(name) is not None:
        return f"bpe-openai {name}"
    return "characters / 4 (install bpe-openai for exact OpenAI counts)"


def count_text_tokens(text: str, model: str) -> int:
    """Tokens of `text` for `model` (BPE when available, else characters / 4)."""
    enc = _encoding(encoding_name(model))
    if enc is None:
        return (len(text) + 3) // 4
    return len(enc.encode(text))


def count_message_tokens(messages: Sequence[tuple[str, str]], model: str) -> int:
    """Prompt tokens of chat `messages` ((role, content) pairs) for `model`."""
    return TOKENS_PER_REPLY + sum(
        TOKENS_PER_MESSAGE + count_text_tokens(content, model) for _, content in messages
    )
