"""Custom policies from user code: `type: python` config entries (`ref: "pkg.module:function"`).

The referenced callable is the policy itself, `policy(state, candidates, **params)`, returning
one of the candidates or None (do nothing); the entry's `params` are passed as keyword
arguments on every call. The signature is checked when the policy is loaded, so a wrong
parameter is reported before anything runs.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any


class PythonPolicyError(ValueError):
    """A `type: python` entry whose ref cannot be imported or whose params do not fit."""


def split_ref(ref: str) -> tuple[str, str]:
    """`"pkg.module:function"` -> ("pkg.module", "function"); ValueError when malformed."""
    module, sep, attr = ref.partition(":")
    if not sep or not module.strip() or not attr.strip():
        raise ValueError(f'ref {ref!r} must look like "package.module:function"')
    return module.strip(), attr.strip()


def load_python_policy(ref: str, params: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """Import the policy function named by `ref` and bind `params` as keyword arguments."""
    module_name, attr = split_ref(ref)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PythonPolicyError(
            f"ref {ref!r}: cannot import module {module_name!r}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PythonPolicyError(f"ref {ref!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PythonPolicyError(f"ref {ref!r}: {attr!r} is not callable")
    kwargs = dict(params or {})
    try:
        inspect.signature(obj).bind(None, [], **kwargs)
    except TypeError as exc:
        raise PythonPolicyError(
            f"ref {ref!r}: the policy must accept (state, candidates"
            f"{', ' + ', '.join(kwargs) if kwargs else ''}): {exc}"
        ) from None
    except ValueError:
        pass  # builtins without an inspectable signature: trust the user
    policy = functools.partial(obj, **kwargs) if kwargs else obj
    if isinstance(policy, functools.partial):
        functools.update_wrapper(policy, obj)
    return policy
