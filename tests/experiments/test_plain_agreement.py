"""The agreement of policies with a plain row at every decision, from their choices."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from harness.experiments.runner import _agreement, _plain_agreement

_choice = st.one_of(st.none(), st.just(""), st.sampled_from(["BTC-A", "BTC-B", "BTC-C"]))


@st.composite
def _choices(draw: st.DrawFn) -> dict[str, list[str | None]]:
    n = draw(st.integers(0, 30))
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=3))
    return {p: draw(st.lists(_choice, min_size=n, max_size=n)) for p in names}


@given(_choices())
def test_plain_agreement_is_the_agreement_of_the_rows(choices) -> None:
    rows = [
        {"policy": p, "decision_time": f"t{i}", "instrument_name": c}
        for p, cs in choices.items()
        for i, c in enumerate(cs)
    ]
    got, want = _plain_agreement(choices), _agreement(rows, list(choices))
    assert got.keys() == want.keys()
    for a in want:
        assert got[a].keys() == want[a].keys()
        for b, x in want[a].items():
            assert got[a][b] == x or (math.isnan(x) and math.isnan(got[a][b]))
