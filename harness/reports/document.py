"""The document model shared by the run report, the run comparison and the viewer.

Sections of tables, bullets and charts rendered to Markdown and self-contained HTML by the
jinja2 templates in `templates/`; number formatting in one place so every page agrees.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

DASH = "—"
FIGURES_DIR = "figures"
TEMPLATES_DIR = Path(__file__).parent / "templates"


# --------------------------------------------------------------------------- formatting


def finite(x: Any) -> bool:
    """True for a number that is not None, NaN or infinite."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _clean_zero(x: float, decimals: int) -> float:
    # Avoid "-0.00" for tiny negatives that round to zero.
    return 0.0 if round(x, decimals) == 0 else x


def fmt_usd(x: Any, decimals: int = 2) -> str:
    """USD amount with thousands separators, e.g. `-$1,234.50` (dash when missing)."""
    if not finite(x):
        return DASH
    v = _clean_zero(float(x), decimals)
    return f"{'-' if v < 0 else ''}${abs(v):,.{decimals}f}"


def fmt_pct(x: Any, decimals: int = 2) -> str:
    """A value already in percent, e.g. `12.34%`."""
    if not finite(x):
        return DASH
    return f"{_clean_zero(float(x), decimals):,.{decimals}f}%"


def fmt_share(x: Any, decimals: int = 1) -> str:
    """A fraction in [0, 1] shown as percent, e.g. 0.456 -> `45.6%`."""
    return fmt_pct(float(x) * 100.0, decimals) if finite(x) else DASH


def fmt_num(x: Any, decimals: int = 2) -> str:
    """Plain number with thousands separators."""
    if not finite(x):
        return DASH
    return f"{_clean_zero(float(x), decimals):,.{decimals}f}"


def fmt_int(x: Any) -> str:
    """Integer count with thousands separators."""
    return f"{round(float(x)):,}" if finite(x) else DASH


def reward_unit(reward_kind: str | None) -> str:
    """Unit of the reward for a config reward kind: `USD`, `bps` or `` when unknown."""
    if reward_kind == "return_bps":
        return "bps"
    if reward_kind == "pnl_vs_hodl":
        return "USD"
    return ""


def fmt_reward(x: Any, unit: str) -> str:
    """Reward in its unit: USD as money, bps with one decimal, unknown as a plain number."""
    if unit == "USD":
        return fmt_usd(x)
    if unit == "bps":
        return f"{fmt_num(x, 1)} bps" if finite(x) else DASH
    return fmt_num(x)


def fmt_time(ts: Any) -> str:
    """UTC timestamp as `YYYY-MM-DD HH:MM`."""
    if ts is None or (not isinstance(ts, str) and pd.isna(ts)):
        return DASH
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%d %H:%M")


def reading(subject: str, other: str, mean: float, lo: float, hi: float, unit: str) -> str:
    """One plain-English line on a paired difference and whether its 95% CI excludes zero."""
    if not finite(mean):
        return f"{subject} vs {other}: no paired decisions."
    ci = f"95% CI {fmt_reward(lo, unit)} to {fmt_reward(hi, unit)}"
    if mean == 0:
        return f"{subject} matched {other} on average ({ci})."
    verb = "beat" if mean > 0 else "trailed"
    significant = finite(lo) and finite(hi) and (lo > 0 or hi < 0)
    verdict = "significant at 95%" if significant else "not significant"
    amount = fmt_reward(abs(mean), unit)
    return f"{subject} {verb} {other} by {amount} per decision ({ci}): {verdict}."


# --------------------------------------------------------------------------- document model


@dataclass(frozen=True)
class Link:
    """A table cell or bullet that links somewhere (an anchor in the page or a viewer URL)."""

    text: str
    href: str

    def __str__(self) -> str:
        return self.text


Cell = str | Link


@dataclass(frozen=True)
class Table:
    """A rendered table: header, rows of display cells, and per-column alignment (l/r)."""

    columns: list[str]
    rows: list[list[Cell]]
    align: list[str]


@dataclass(frozen=True)
class Chart:
    """A PNG chart: file name under figures/, caption, and the image bytes."""

    name: str
    title: str
    png: bytes
    caption: str = ""

    @property
    def b64(self) -> str:
        """Base64 of the PNG, for a data URI."""
        return base64.b64encode(self.png).decode("ascii")

    @property
    def md_path(self) -> str:
        """Path of the PNG relative to the run folder."""
        return f"{FIGURES_DIR}/{self.name}.png"


@dataclass(frozen=True)
class TranscriptBlock:
    """One LLM decision's transcript as shown to a person (texts already secret-masked)."""

    anchor: str
    title: str
    facts: list[tuple[str, str]]
    messages: list[tuple[str, str]]  # (role, content) of the first request
    answers: list[tuple[str, str, str]]  # (label, raw answer, reasoning) per request


@dataclass(frozen=True)
class Section:
    """One titled block of the document; `anchor` is its HTML id."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: Table | None = None
    bullets: list[Cell] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    transcripts: list[TranscriptBlock] = field(default_factory=list)
    anchor: str = ""
    tables: list[tuple[str, Table]] = field(default_factory=list)  # extra (caption, table)
    preformatted: str = ""  # a block shown verbatim (e.g. a prompt diff)


def _md_cell(cell: Any) -> str:
    # Pipes and newlines would break a Markdown table row.
    text = str(cell).replace("|", "\\|").replace("\n", " ")
    return f"[{text}]({cell.href})" if isinstance(cell, Link) else text


def register_filters(env: jinja2.Environment) -> jinja2.Environment:
    """Add the filters and tests the document templates use to a jinja2 environment."""
    env.filters["mdcell"] = _md_cell
    env.tests["link"] = lambda x: isinstance(x, Link)
    return env


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return register_filters(env)


_HTML = _env(autoescape=True).get_template("document.html.j2")
_MD = _env(autoescape=False).get_template("document.md.j2")
_CSS = (TEMPLATES_DIR / "report.css").read_text(encoding="utf-8")


def render_document(
    title: str,
    header: Sequence[tuple[str, str]],
    notes: Sequence[str],
    sections: Sequence[Section],
    verdict: Sequence[str] = (),
) -> tuple[str, str]:
    """Render a document model to (Markdown, self-contained HTML); the verdict comes first."""
    ctx = _context(title, header, notes, sections, verdict)
    return _MD.render(**ctx), _HTML.render(**ctx)


def render_markdown(
    title: str,
    header: Sequence[tuple[str, str]],
    notes: Sequence[str],
    sections: Sequence[Section],
    verdict: Sequence[str] = (),
) -> str:
    """The Markdown of `render_document` alone (sweep trials write no HTML)."""
    return _MD.render(**_context(title, header, notes, sections, verdict))


def _context(
    title: str,
    header: Sequence[tuple[str, str]],
    notes: Sequence[str],
    sections: Sequence[Section],
    verdict: Sequence[str],
) -> dict[str, Any]:
    return {
        "title": title,
        "header": header,
        "notes": notes,
        "sections": sections,
        "verdict": verdict,
        "css": _CSS,
    }


def document_css() -> str:
    """The stylesheet of rendered documents (the viewer serves the same look)."""
    return _CSS
