"""strict_json.dumps: the one-pass encoding of plain objects gives the rebuilding path's text."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from harness import strict_json


def _reference(obj: Any, default: Any = None, **kwargs: Any) -> str:
    """The text `dumps` wrote before its fast path: rebuild with nulls, then encode."""

    def _default(x: Any) -> Any:
        if default is None:
            raise TypeError(type(x).__name__)
        return strict_json.finite_or_null(default(x))

    return json.dumps(strict_json.finite_or_null(obj), allow_nan=False, default=_default, **kwargs)


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True).map(np.float64),
    st.integers(-(2**62), 2**62).map(np.int64),
    st.booleans().map(np.bool_),
    st.floats(width=32, allow_nan=True).map(np.float32),
)
_json_like = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
    ),
    max_leaves=20,
)


@given(_json_like)
def test_dumps_equals_the_rebuilding_encoder_for_any_nested_value(obj: Any) -> None:
    assert strict_json.dumps(obj, default=str) == _reference(obj, default=str)
    assert strict_json.dumps(obj, default=str, indent=2, sort_keys=True) == _reference(
        obj, default=str, indent=2, sort_keys=True
    )


def test_a_finite_numpy_float_is_written_as_its_python_float_and_objects_go_to_default() -> None:
    assert strict_json.dumps({"x": np.float64(0.1)}) == '{"x": 0.1}'
    assert strict_json.dumps({"x": np.int64(3)}, default=str) == '{"x": 3}'  # .item(), not "3"
    assert strict_json.dumps([object()], default=lambda _: math.inf) == "[null]"
    # a row with a NaN deep inside still comes out strict
    assert strict_json.dumps({"a": [{"b": float("nan")}]}) == '{"a": [{"b": null}]}'
