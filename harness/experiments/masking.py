"""Secrets a run must never write: the API keys its LLM policies use and header values.

`RunSecrets.scrub` masks them in every text the runner writes (config.yaml, manifest.json,
decisions.jsonl, transcripts.jsonl, reports, console lines). A key pasted where a variable
name belongs (`api_key_env: "sk-..."`) is masked too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

MASK = "***"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Shorter values are not masked: replacing e.g. "1" everywhere would garble the files.
MIN_SECRET_LEN = 8
_KEY_LIKE = re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_\-]{8,}")


class RunSecrets:
    """The secret strings of a run's LLM policies, and `scrub` to mask them."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = sorted({v for v in values if len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)

    @classmethod
    def of_policies(cls, entries: Iterable[Any]) -> RunSecrets:
        """Secrets of LLM policy entries: the keys in the environment variables they name,
        any `api_key_env` that is not a variable name, and every header value."""
        values: list[str] = []
        for entry in entries:
            env = getattr(entry, "api_key_env", None)
            if isinstance(env, str) and env.strip():
                if ENV_NAME.fullmatch(env.strip()):
                    values.append(os.environ.get(env.strip(), "").strip())
                else:
                    values.append(env)  # a key pasted in place of a variable name
                    values.append(env.strip())
            headers = getattr(entry, "extra_headers", None)
            if isinstance(headers, dict):
                values.extend(str(v) for v in headers.values())
        return cls(values)

    def scrub(self, text: str) -> str:
        """`text` with every secret masked."""
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def scrub_key_like(self, text: str) -> str:
        """`scrub`, and mask anything shaped like an API key (for error texts and reasons)."""
        return _KEY_LIKE.sub(lambda m: m.group(1) + "-" + MASK, self.scrub(text))

    def config_text(self, data: dict[str, Any]) -> str:
        """YAML of a config mapping (`model_dump(mode="json")`) with secrets masked as quoted
        strings, so the file still parses (a bare `***` is a YAML alias)."""
        data = json.loads(json.dumps(data))
        for entry in data.get("policies") or []:
            if not isinstance(entry, dict):
                continue
            env = entry.get("api_key_env")
            if isinstance(env, str) and not ENV_NAME.fullmatch(env.strip()):
                entry["api_key_env"] = MASK
            headers = entry.get("extra_headers")
            if isinstance(headers, dict):
                entry["extra_headers"] = {k: MASK for k in headers}
        text = yaml.safe_dump(data, sort_keys=False)
        return self.scrub(text).replace(f": {MASK}\n", f": '{MASK}'\n")

    def scrub_files(self, paths: Iterable[Path]) -> None:
        """Rewrite text files in place with secrets masked (reports written by other code)."""
        if not self.values:
            return
        for path in paths:
            if not path.is_file():
                continue
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            clean = self.scrub(text)
            if clean != text:
                path.write_text(clean, encoding="utf-8", errors="surrogateescape")
