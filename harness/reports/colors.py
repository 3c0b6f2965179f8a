"""Policy colours fixed per policy name, so a policy keeps its colour in every run and chart.

A name is hashed (SHA-256, not Python's per-process salted `hash`) into a fixed palette; the
hindsight bounds and HODL have reserved colours outside the palette.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

HODL = "HODL"
FIXED = {
    "oracle": "#000000",  # per-decision bound (hindsight)
    "oracle_schedule": "#6f6f6f",  # portfolio bound (hindsight schedule)
    HODL: "#2f4f4f",  # dark slate, drawn thicker than policies
}
# Colour-blind friendly hues (Okabe-Ito and Tableau), none black, grey or HODL's dark slate.
PALETTE = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#56b4e9",
    "#d55e00",
    "#f0e442",
    "#4e79a7",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#e15759",
    "#17becf",
    "#bcbd22",
)


def _slot(name: str) -> int:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % len(PALETTE)


def policy_color(name: str) -> str:
    """The colour of one policy name (hex), the same in every run."""
    return FIXED.get(name) or PALETTE[_slot(name)]


def policy_colors(names: Iterable[str]) -> dict[str, str]:
    """Colours of the policies of one run: each its own `policy_color`, collisions resolved.

    Two names hashing to the same slot would be indistinguishable; the later name in
    alphabetical order then takes the next free slot (deterministic for the same set of names).
    """
    out: dict[str, str] = {}
    used: set[int] = set()
    for name in sorted(set(names)):
        if name in FIXED:
            out[name] = FIXED[name]
            continue
        slot = _slot(name)
        for _ in range(len(PALETTE)):
            if slot not in used:
                break
            slot = (slot + 1) % len(PALETTE)
        used.add(slot)
        out[name] = PALETTE[slot]
    return out
