"""Run-vs-run comparison for prompt iteration: the same policy name in two run folders.

Rows of `decisions.jsonl` are lined up by `decision_time`; the reward change is run B minus
run A on the aligned decisions, with a CI from `harness.stats.paired_comparison` (its default interval, named in the report).
Decisions present in only one run are counted and listed, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.reports.document import (
    Section,
    Table,
    fmt_int,
    fmt_reward,
    fmt_share,
    fmt_time,
    fmt_usd,
    reading,
    render_document,
    reward_unit,
)
from harness.reports.report import read_decisions, read_json
from harness.reports.transcripts import final_answer, prompt_diff, read_transcripts, time_key
from harness.stats import DEFAULT_CI_METHOD, ci_method_label, paired_comparison

MAX_CHANGED_ROWS = 50
MAX_UNMATCHED_LISTED = 10


@dataclass(frozen=True)
class ChangedDecision:
    """One aligned decision whose choice differs between run A and run B (rewards in run units)."""

    decision_time: pd.Timestamp
    choice_a: str
    choice_b: str
    reward_a: float
    reward_b: float

    @property
    def reward_change(self) -> float:
        """Reward B minus reward A."""
        return self.reward_b - self.reward_a


@dataclass(frozen=True)
class PolicyRunComparison:
    """One policy in run A vs run B over their aligned decisions (rewards in run units)."""

    policy: str
    n_aligned: int
    only_in_a: tuple[pd.Timestamp, ...]  # decision times scored in A but not in B
    only_in_b: tuple[pd.Timestamp, ...]
    changed: tuple[ChangedDecision, ...]  # in time order
    mean_reward_a: float
    mean_reward_b: float
    mean_change: float  # mean of (B - A) per aligned decision
    ci_low: float  # 95% interval of mean_change (harness.stats default ci_method)
    ci_high: float
    block_length: int
    wins: int  # aligned decisions where B earned more than A
    losses: int
    ties: int
    invalid_rate_a: float  # over the aligned decisions
    invalid_rate_b: float
    error_rate_a: float
    error_rate_b: float
    cost_a_usd: float  # sum of llm cost_usd over the aligned decisions
    cost_b_usd: float
    calls_made_b: int  # LLM calls B actually made over the aligned decisions
    served_from_cache_b: int  # aligned decisions B answered from the cache
    prompt_id_a: str | None
    prompt_id_b: str | None
    model_a: str | None
    model_b: str | None

    @property
    def n_changed(self) -> int:
        """Number of aligned decisions whose choice changed."""
        return len(self.changed)

    @property
    def cost_change_usd(self) -> float:
        """LLM cost B minus A, USD."""
        return self.cost_b_usd - self.cost_a_usd


@dataclass(frozen=True)
class RunComparison:
    """Run B vs run A, per policy present in both."""

    run_a: Path
    run_b: Path
    run_id_a: str
    run_id_b: str
    reward_kind: str | None
    policies: tuple[PolicyRunComparison, ...]
    policies_only_in_a: tuple[str, ...]
    policies_only_in_b: tuple[str, ...]
    notes: tuple[str, ...]

    def policy(self, name: str) -> PolicyRunComparison:
        """The comparison of one policy (KeyError if it was not compared)."""
        for p in self.policies:
            if p.policy == name:
                return p
        raise KeyError(name)


@dataclass(frozen=True)
class _Run:
    path: Path
    manifest: dict[str, Any]
    comparison: dict[str, Any]
    decisions: pd.DataFrame

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.path.name)

    @property
    def reward_kind(self) -> str | None:
        return self.comparison.get("reward_kind") or self.manifest.get("reward_kind")

    def rows(self, policy: str) -> pd.DataFrame:
        d = self.decisions
        return d[d["policy"] == policy].set_index("decision_time").sort_index()

    def manifest_id(self, key: str, policy: str, rows: pd.DataFrame, column: str) -> str | None:
        """Prompt/model id from the manifest, else the most common one in the decision rows."""
        value = (self.manifest.get(key) or {}).get(policy)
        if value:
            return str(value)
        ids = rows[column].dropna()
        return str(ids.mode().iloc[0]) if len(ids) else None


def _load(run_dir: Path) -> _Run:
    run_dir = Path(run_dir)
    path = run_dir / "decisions.jsonl"
    if not path.is_file():
        raise ValueError(f"run folder {run_dir} has no decisions.jsonl")
    notes: list[str] = []
    return _Run(
        path=run_dir,
        manifest=read_json(run_dir / "manifest.json", notes),
        comparison=read_json(run_dir / "comparison.json", notes),
        decisions=read_decisions(path),
    )


def _block_length(a: _Run, b: _Run) -> int:
    """Block length of run B's comparison.json, else run A's, else 1 (i.i.d.)."""
    for run in (b, a):
        value = run.comparison.get("block_length")
        try:
            if value is not None and int(value) >= 1:
                return int(value)
        except (TypeError, ValueError):
            continue
    return 1


def _policies(a: _Run, b: _Run, policy: str | None) -> tuple[list[str], list[str], list[str]]:
    in_a = a.decisions["policy"].drop_duplicates().tolist()
    in_b = b.decisions["policy"].drop_duplicates().tolist()
    if policy is not None:
        for run, names in ((a, in_a), (b, in_b)):
            if policy not in names:
                raise ValueError(f"policy {policy!r} has no decisions in run folder {run.path}")
        return [policy], [], []
    common = [p for p in in_a if p in in_b]
    if not common:
        raise ValueError(f"run folders {a.path} and {b.path} have no policy name in common")
    return common, [p for p in in_a if p not in in_b], [p for p in in_b if p not in in_a]


def _rate(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _compare_policy(a: _Run, b: _Run, policy: str, block_length: int) -> PolicyRunComparison:
    ra, rb = a.rows(policy), b.rows(policy)
    common = ra.index.intersection(rb.index).sort_values()
    xa, xb = ra.loc[common], rb.loc[common]
    stats = paired_comparison(
        policy,
        policy,
        xb["reward"].to_numpy(dtype=float),
        xa["reward"].to_numpy(dtype=float),
        xb["choice"].tolist(),
        xa["choice"].tolist(),
        block_length=block_length,
    )
    differ = (xa["choice"] != xb["choice"]).to_numpy()
    changed = tuple(
        ChangedDecision(t, ca, cb, float(wa), float(wb))
        for t, ca, cb, wa, wb in zip(
            common[differ],
            xa["choice"][differ],
            xb["choice"][differ],
            xa["reward"][differ],
            xb["reward"][differ],
            strict=True,
        )
    )
    return PolicyRunComparison(
        policy=policy,
        n_aligned=len(common),
        only_in_a=tuple(ra.index.difference(rb.index)),
        only_in_b=tuple(rb.index.difference(ra.index)),
        changed=changed,
        mean_reward_a=_rate(xa["reward"].dropna()),
        mean_reward_b=_rate(xb["reward"].dropna()),
        mean_change=stats.mean_diff,
        ci_low=stats.ci_low,
        ci_high=stats.ci_high,
        block_length=block_length,
        wins=stats.wins,
        losses=stats.losses,
        ties=stats.ties,
        invalid_rate_a=_rate(~xa["valid"].astype(bool)),
        invalid_rate_b=_rate(~xb["valid"].astype(bool)),
        error_rate_a=_rate(xa["error"].notna()),
        error_rate_b=_rate(xb["error"].notna()),
        cost_a_usd=float(xa["llm_cost_usd"].sum()),
        cost_b_usd=float(xb["llm_cost_usd"].sum()),
        calls_made_b=round(float(xb["llm_calls_made"].sum())),
        served_from_cache_b=int(xb["llm_cache_hit"].sum()),
        prompt_id_a=a.manifest_id("prompt_ids", policy, ra, "prompt_id"),
        prompt_id_b=b.manifest_id("prompt_ids", policy, rb, "prompt_id"),
        model_a=a.manifest_id("model_ids", policy, ra, "model"),
        model_b=b.manifest_id("model_ids", policy, rb, "model"),
    )


def _run_notes(a: _Run, b: _Run) -> list[str]:
    notes = []
    fa, fb = a.manifest.get("data_fingerprint"), b.manifest.get("data_fingerprint")
    if fa and fb and fa != fb:
        notes.append(f"The runs used different market data ({fa} vs {fb}).")
    for run in (a, b):
        status = run.manifest.get("status")
        if status and status != "complete":
            notes.append(f"Run {run.run_id} has status {status!r}.")
    return notes


def compare_runs(run_a: Path, run_b: Path, policy: str | None = None) -> RunComparison:
    """Compare run B against run A per policy name on decisions aligned by decision_time."""
    a, b = _load(run_a), _load(run_b)
    ka, kb = a.reward_kind, b.reward_kind
    if ka and kb and ka != kb:
        raise ValueError(f"runs {a.path} and {b.path} use different rewards ({ka} vs {kb})")
    names, only_a, only_b = _policies(a, b, policy)
    block_length = _block_length(a, b)
    return RunComparison(
        run_a=a.path,
        run_b=b.path,
        run_id_a=a.run_id,
        run_id_b=b.run_id,
        reward_kind=kb or ka,
        policies=tuple(_compare_policy(a, b, p, block_length) for p in names),
        policies_only_in_a=tuple(only_a),
        policies_only_in_b=tuple(only_b),
        notes=tuple(_run_notes(a, b)),
    )


# --------------------------------------------------------------------------- rendering


def _arrow(x: str, y: str) -> str:
    return x if x == y else f"{x} → {y}"


def _summary_table(cmp: RunComparison, unit: str) -> Table:
    cols = ["Policy", "Aligned", "Only in A", "Only in B", "Changed", "Mean reward A"]
    cols += ["Mean reward B", "Change (B − A)", "95% CI", "B wins / losses / ties"]
    rows = [
        [
            p.policy,
            fmt_int(p.n_aligned),
            fmt_int(len(p.only_in_a)),
            fmt_int(len(p.only_in_b)),
            fmt_int(p.n_changed),
            fmt_reward(p.mean_reward_a, unit),
            fmt_reward(p.mean_reward_b, unit),
            fmt_reward(p.mean_change, unit),
            f"{fmt_reward(p.ci_low, unit)} to {fmt_reward(p.ci_high, unit)}",
            f"{p.wins:,} / {p.losses:,} / {p.ties:,}",
        ]
        for p in cmp.policies
    ]
    return Table(cols, rows, ["l"] + ["r"] * (len(cols) - 1))


def _ops_table(cmp: RunComparison) -> Table:
    cols = ["Policy", "Invalid A → B", "Errors A → B", "LLM cost A → B", "Cost change"]
    cols += ["B calls made", "B served from cache", "Prompt A → B", "Model A → B"]
    rows = [
        [
            p.policy,
            f"{fmt_share(p.invalid_rate_a, 2)} → {fmt_share(p.invalid_rate_b, 2)}",
            f"{fmt_share(p.error_rate_a, 2)} → {fmt_share(p.error_rate_b, 2)}",
            f"{fmt_usd(p.cost_a_usd, 4)} → {fmt_usd(p.cost_b_usd, 4)}",
            fmt_usd(p.cost_change_usd, 4),
            fmt_int(p.calls_made_b),
            fmt_int(p.served_from_cache_b),
            _arrow(p.prompt_id_a or "—", p.prompt_id_b or "—"),
            _arrow(p.model_a or "—", p.model_b or "—"),
        ]
        for p in cmp.policies
    ]
    return Table(cols, rows, ["l"] + ["r"] * 6 + ["l", "l"])


def _changed_section(p: PolicyRunComparison, unit: str) -> Section:
    title = f"{p.policy}: changed decisions"
    paragraphs: list[str] = []
    bullets = [
        f"Only in {side} ({len(times):,}): "
        + ", ".join(fmt_time(t) for t in times[:MAX_UNMATCHED_LISTED])
        + (" …" if len(times) > MAX_UNMATCHED_LISTED else "")
        for side, times in (("A", p.only_in_a), ("B", p.only_in_b))
        if times
    ]
    if not p.changed:
        paragraphs.append(f"No choice changed on the {p.n_aligned:,} aligned decisions.")
        return Section(title, paragraphs, bullets=bullets)
    # Largest reward impact first: that is where the prompt change mattered.
    ranked = sorted(
        p.changed, key=lambda c: -abs(c.reward_change) if np.isfinite(c.reward_change) else 0.0
    )
    shown = ranked[:MAX_CHANGED_ROWS]
    paragraphs.append(
        f"{p.n_changed:,} of {p.n_aligned:,} aligned decisions changed choice "
        f"({fmt_share(p.n_changed / p.n_aligned)}); "
        + (
            f"the {len(shown)} with the largest reward change are listed."
            if len(shown) < p.n_changed
            else "all listed, largest reward change first."
        )
    )
    rows = [
        [
            fmt_time(c.decision_time),
            c.choice_a,
            c.choice_b,
            fmt_reward(c.reward_a, unit),
            fmt_reward(c.reward_b, unit),
            fmt_reward(c.reward_change, unit),
        ]
        for c in shown
    ]
    cols = ["Time (UTC)", "Choice A", "Choice B", "Reward A", "Reward B", "Change"]
    table = Table(cols, rows, ["l", "l", "l", "r", "r", "r"])
    return Section(title, paragraphs, table=table, bullets=bullets)


MAX_ANSWER_CHARS = 400


def _answers_section(
    p: PolicyRunComparison,
    ta: dict[tuple[str, str], list[dict[str, Any]]],
    tb: dict[tuple[str, str], list[dict[str, Any]]],
) -> Section | None:
    """Prompt diff and both raw answers for the changed decisions (from transcripts.jsonl)."""
    ranked = sorted(
        p.changed, key=lambda c: -abs(c.reward_change) if np.isfinite(c.reward_change) else 0.0
    )[:MAX_CHANGED_ROWS]
    rows, diff = [], []
    for c in ranked:
        key = (p.policy, time_key(c.decision_time))
        ra, rb = ta.get(key), tb.get(key)
        if not (ra or rb):
            continue
        diff = diff or prompt_diff(ra, rb)
        rows.append(
            [
                fmt_time(c.decision_time),
                c.choice_a,
                c.choice_b,
                (final_answer(ra) or "—")[:MAX_ANSWER_CHARS],
                (final_answer(rb) or "—")[:MAX_ANSWER_CHARS],
            ]
        )
    if not rows:
        return None
    return Section(
        f"{p.policy}: prompts and answers behind the changes",
        [
            "The prompt diff (first changed decision with a transcript in both runs), then both "
            "runs' raw answers for the changed decisions, largest reward change first. "
            "`harness view` shows the full transcripts."
        ],
        preformatted="\n".join(diff) if diff else "",
        table=Table(
            ["Time (UTC)", "Choice A", "Choice B", "Answer A", "Answer B"],
            rows,
            ["l"] * 5,
        ),
    )


def render_comparison(cmp: RunComparison) -> tuple[str, str]:
    """Render a run comparison to (Markdown, self-contained HTML)."""
    unit = reward_unit(cmp.reward_kind)
    header = [
        ("Run A", f"{cmp.run_id_a} ({cmp.run_a})"),
        ("Run B", f"{cmp.run_id_b} ({cmp.run_b})"),
        ("Reward", f"{cmp.reward_kind} ({unit})" if unit else str(cmp.reward_kind or "—")),
        ("Policies compared", ", ".join(p.policy for p in cmp.policies)),
    ]
    if cmp.policies:
        header.append(("Bootstrap block length", f"{cmp.policies[0].block_length:,} decisions"))
    if cmp.policies_only_in_a:
        header.append(("Policies only in A", ", ".join(cmp.policies_only_in_a)))
    if cmp.policies_only_in_b:
        header.append(("Policies only in B", ", ".join(cmp.policies_only_in_b)))
    readings = [
        reading(f"{p.policy} in B", "A", p.mean_change, p.ci_low, p.ci_high, unit)
        for p in cmp.policies
    ]
    sections = [
        Section(
            "Reward change (B − A)",
            [
                "Same policy name, decisions aligned by decision time; "
                f"95% CI: {ci_method_label(DEFAULT_CI_METHOD)}."
            ],
            table=_summary_table(cmp, unit),
            bullets=readings,
        ),
        Section(
            "Validity, cost and cache (aligned decisions)",
            table=_ops_table(cmp),
        ),
        *(_changed_section(p, unit) for p in cmp.policies),
    ]
    ta, tb = read_transcripts(cmp.run_a), read_transcripts(cmp.run_b)
    for p in cmp.policies:
        section = _answers_section(p, ta, tb)
        if section is not None:
            sections.append(section)
    title = f"Run comparison: {cmp.run_id_a} → {cmp.run_id_b}"
    return render_document(title, header, list(cmp.notes), sections)


def write_comparison(cmp: RunComparison, out_dir: Path) -> tuple[Path, Path]:
    """Write run_comparison.md and self-contained run_comparison.html into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, html = render_comparison(cmp)
    md_path, html_path = out_dir / "run_comparison.md", out_dir / "run_comparison.html"
    md_path.write_text(md, encoding="utf-8")
    html_path.write_text(html, encoding="utf-8")
    return md_path, html_path
