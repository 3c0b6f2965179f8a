"""One choice of a chat completion as the harness keeps it (no SDK import: the cache reads it
without loading the openai SDK)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ChatChoice:
    """One choice of a completion: the answer text, reasoning kept apart, why it stopped."""

    content: str | None  # the message content as received (None when the server sent null)
    reasoning: str | None = None  # reasoning_content / reasoning field, else <think> blocks
    finish_reason: str | None = None
    refusal: str | None = None

    @property
    def text(self) -> str:
        """The content, '' when the server sent none."""
        return self.content or ""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "content": self.content,
            "reasoning": self.reasoning,
            "finish_reason": self.finish_reason,
            "refusal": self.refusal,
        }
