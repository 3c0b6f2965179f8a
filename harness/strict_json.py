"""Strict JSON (RFC 8259) for files the harness writes: NaN and +-inf become `null`.

Python's `json` writes a bare `NaN`/`Infinity` by default, which strict parsers (browsers'
`JSON.parse`, jq, most other languages) reject. Every run-folder file goes through `dumps`;
readers treat `null` in a numeric field as undefined, as they treated NaN (docs/run_folder.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def finite_or_null(obj: Any) -> Any:
    """`obj` with every non-finite float (Python or numpy) replaced by None, recursively.

    numpy scalars become Python scalars; mappings, lists and tuples are rebuilt; anything else
    is returned as is (for `json.dumps`'s `default`).
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return finite_or_null(obj.item())
    if isinstance(obj, Mapping):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(v) for v in obj]
    return obj


def dumps(obj: Any, *, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """`json.dumps` that never writes NaN/Infinity: non-finite floats are written as null.

    `default` (for objects json cannot encode) may itself return a non-finite float; that
    is nulled too.
    """

    try:
        # The common case (plain dicts, lists, str, int, finite floats) costs one C-encoder
        # pass; anything it would have to change (a NaN, a numpy scalar, an object for
        # `default`) raises and takes the rebuilding path below, so the text is the same.
        if not kwargs and _plain_encoder is not None:
            return "".join(_plain_encoder(obj, 0))
        return json.dumps(obj, allow_nan=False, default=_not_plain, **kwargs)
    except (ValueError, _NotPlainError):
        pass

    def _default(x: Any) -> Any:
        if default is None:
            raise TypeError(f"Object of type {type(x).__name__} is not JSON serializable")
        return finite_or_null(default(x))

    return json.dumps(finite_or_null(obj), allow_nan=False, default=_default, **kwargs)


class _NotPlainError(Exception):
    """An object the plain encoder cannot write as it is (see `dumps`)."""


def _not_plain(x: Any) -> Any:
    raise _NotPlainError(type(x).__name__)


# `json.dumps(obj, allow_nan=False, default=_not_plain)`'s C encoder with the default
# separators and ASCII escaping, made once: `json.dumps` with any argument builds a new
# encoder per call, a third of the time of a short row (run folders write thousands). No
# circular-reference check (markers None): a failed pass would leave the shared markers
# dirty, and a cyclic object recursed forever on the rebuilding path anyway.
_plain_encoder = (
    None
    if json.encoder.c_make_encoder is None
    else json.encoder.c_make_encoder(
        None,
        _not_plain,
        json.encoder.encode_basestring_ascii,
        None,
        ": ",
        ", ",
        False,
        False,
        False,
    )
)


def reject_constant(name: str) -> Any:
    """`parse_constant` hook that refuses NaN/Infinity (for checks of strictness)."""
    raise ValueError(f"non-strict JSON constant {name}")
