"""Prompt templates: Jinja2 system + user files in `prompts/`, identified by name + content hash.

A prompt named `covered_call_v1` is the pair `covered_call_v1.system.j2` and
`covered_call_v1.user.j2`. Its id, recorded with every decision, is `name@<12 hex of sha256>`
of both files, so editing a template changes the id (and, through the messages, the cache key).
Templates get the variables built by `build_context` and documented in `prompts/README.md`.
They only see market features, the open position and the candidates: never cash, coins held or
anything else that differs between the flat scoring pass and the portfolio replay.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from harness.llm.anonymize import View
from harness.state import DecisionState
from harness.timestamps import to_utc
from harness.types import CallCandidate

PROMPTS_DIR_ENV = "HARNESS_PROMPTS_DIR"
_REPO_PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
SYSTEM_SUFFIX = ".system.j2"
USER_SUFFIX = ".user.j2"


def default_prompts_dir() -> Path:
    """$HARNESS_PROMPTS_DIR, else the repository's `prompts/`, else ./prompts."""
    env = os.environ.get(PROMPTS_DIR_ENV)
    if env:
        return Path(env)
    return _REPO_PROMPTS if _REPO_PROMPTS.is_dir() else Path("prompts")


def _num(value: float | None, digits: int = 2) -> str:
    """Fixed-point number, 'n/a' for None (fixed digits keep prompts, and keys, stable)."""
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _pct(value: float | None, digits: int = 1, signed: bool = False) -> str:
    """A number already in percent, with a % sign; 'n/a' for None."""
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}%" if signed else f"{value:.{digits}f}%"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, not as ""
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    return env


_ENV = _environment()


@dataclass(frozen=True)
class PromptTemplate:
    """A loaded system + user template pair."""

    name: str
    system_source: str
    user_source: str
    _system: jinja2.Template = field(repr=False, compare=False)
    _user: jinja2.Template = field(repr=False, compare=False)

    @property
    def content_hash(self) -> str:
        """SHA-256 hex of both template sources."""
        blob = f"{self.system_source}\0{self.user_source}".encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def prompt_id(self) -> str:
        """'name@' + the first 12 hex digits of `content_hash`."""
        return f"{self.name}@{self.content_hash[:12]}"

    @classmethod
    def from_sources(cls, name: str, system_source: str, user_source: str) -> PromptTemplate:
        """Compile a template pair from strings."""
        try:
            system = _ENV.from_string(system_source)
            user = _ENV.from_string(user_source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(
                f"prompt {name!r}: template syntax error line {exc.lineno}: {exc.message}"
            ) from None
        return cls(name, system_source, user_source, system, user)

    def render(self, context: Mapping[str, Any]) -> tuple[str, str]:
        """Render (system, user) message texts; raise ValueError naming a missing variable."""
        try:
            return self._system.render(context).strip(), self._user.render(context).strip()
        except jinja2.UndefinedError as exc:
            raise ValueError(f"prompt {self.name!r}: {exc.message}") from None


def load_prompt(name: str, prompts_dir: str | os.PathLike[str] | None = None) -> PromptTemplate:
    """Load prompt `name` (a name in `prompts_dir`, or a path without the .system.j2 suffix)."""
    base = Path(prompts_dir) if prompts_dir is not None else default_prompts_dir()
    stem = Path(name)
    if not stem.is_absolute() and len(stem.parts) == 1:
        stem = base / name
    system_path = stem.with_name(stem.name + SYSTEM_SUFFIX)
    user_path = stem.with_name(stem.name + USER_SUFFIX)
    missing = [str(p) for p in (system_path, user_path) if not p.is_file()]
    if missing:
        available = sorted(p.name[: -len(SYSTEM_SUFFIX)] for p in base.glob("*" + SYSTEM_SUFFIX))
        raise FileNotFoundError(
            f"prompt {name!r} not found (missing {', '.join(missing)}); "
            f"available in {base}: {', '.join(available) or 'none'}"
        )
    return PromptTemplate.from_sources(
        stem.name,
        system_path.read_text(encoding="utf-8"),
        user_path.read_text(encoding="utf-8"),
    )


def _pct_or_none(fraction: float | None) -> float | None:
    return None if fraction is None else fraction * 100.0


def build_context(
    state: DecisionState,
    candidates: Sequence[CallCandidate],
    view: View,
    when: pd.Timestamp | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Template variables for one decision, and the map shown-name -> real instrument name.

    Percent fields (`*_pct`) are in percent; prices are in `view.price_unit`; `dte_days` in days.
    `when` is `state.time` as a UTC Timestamp when the caller already has it.
    """
    spot = state.spot
    names: dict[str, str] = {}
    rows = []
    for i, c in enumerate(candidates):
        shown = view.alias(i, c.instrument_name)
        names[shown] = c.instrument_name
        rows.append(
            {
                "name": shown,
                "strike": view.strike(c.strike),
                "moneyness": c.strike / spot,
                "strike_distance_pct": c.strike_distance_pct,
                "dte_days": c.dte_days,
                "delta": c.delta,
                "iv_pct": _pct_or_none(c.mark_iv),
                "bid": view.price(c.bid_price),
                "ask": view.price(c.ask_price),
                "mark": view.price(c.mark_price),
                "premium": view.price(c.premium_usd),
                "premium_pct": c.premium_pct,
                "annualized_yield_pct": c.annualized_yield_pct,
                "breakeven": view.price(c.breakeven),
                "breakeven_moneyness": c.breakeven / spot,
                "hist_reward_bps": c.hist_reward,
                "hist_count": c.hist_count,
            }
        )
    position = None
    if state.position is not None:
        p = state.position
        position = {
            "name": "open call" if view.anonymized else p.instrument_name,
            "strike": view.strike(p.strike),
            "moneyness": p.strike / spot,
            "dte_days": p.dte_days,
            "size": p.size,
            "open_price": view.price(p.open_price),
            "mark_price": view.price(p.mark_price),
            "unrealized_pnl": view.price(p.unrealized_pnl),
            "opened": view.time(p.open_time),
        }
    context = {
        "anonymized": view.anonymized,
        "underlying": state.underlying,
        "time": view.time(when if when is not None else to_utc(state.time)),
        "price_unit": view.price_unit,
        "market": {
            "spot": view.price(spot),
            "return_1d_pct": _pct_or_none(state.return_1d),
            "return_7d_pct": _pct_or_none(state.return_7d),
            "realized_vol_7d_pct": _pct_or_none(state.realized_vol_7d),
            "realized_vol_30d_pct": _pct_or_none(state.realized_vol_30d),
            "atm_iv_pct": _pct_or_none(state.atm_iv),
            "iv_rv_spread_pct": _pct_or_none(state.iv_rv_spread),
        },
        "position": position,
        "candidates": rows,
        "candidate_names": list(names),
        "actions": ["SELL_CALL", "DO_NOTHING"],
    }
    return context, names


CONTEXT_VARIABLES: tuple[str, ...] = (
    "anonymized",
    "underlying",
    "time",
    "price_unit",
    "market",
    "position",
    "candidates",
    "candidate_names",
    "actions",
)
