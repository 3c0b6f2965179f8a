"""Data behind the viewer's decision browser, decision page, transcript page and run compare.

Everything is read from the run folder's files (decisions.jsonl, labels.parquet,
transcripts.jsonl) and returned as plain, JSON-ready structures (rewards in the run's units).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.reports.compare import compare_runs
from harness.reports.report import RunFolder, disagreements, load_run
from harness.reports.transcripts import (
    final_answer,
    mask_secrets,
    prompt_diff,
    time_key,
    transcript_summary,
)

MAX_ROWS = 500


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, pd.Timestamp):
        return x.isoformat()
    return x


@dataclass(frozen=True)
class Filters:
    """Decision browser filters: one policy's view, disagreements only, a minimum reward gap."""

    policy: str | None = None
    disagree: bool = False
    min_gap: float | None = None  # best-in-hindsight reward minus the policy's (or the spread)
    offset: int = 0
    limit: int = MAX_ROWS


def decision_rows(run: RunFolder, f: Filters) -> dict[str, Any]:
    """Decision times (newest last) with each compared policy's choice and reward, filtered."""
    d = run.decisions
    if d.empty:
        return {"total": 0, "policies": [], "rows": []}
    policies = [p for p in run.policies if p in set(d["policy"])]
    choice = d.pivot(index="decision_time", columns="policy", values="label")
    reward = d.pivot(index="decision_time", columns="policy", values="reward")
    best = d.groupby("decision_time")["best_reward"].max()
    spread = reward.max(axis=1) - reward.min(axis=1)
    keep = pd.Series(True, index=choice.index)
    if f.disagree:
        differ = disagreements(d[d["policy"].isin(run.compared)], top=None)["decision_time"]
        keep &= choice.index.isin(differ)
    if f.policy:
        if f.policy not in reward.columns:
            raise KeyError(f"policy {f.policy!r} has no decisions in this run")
        gap = best - reward[f.policy]
    else:
        gap = spread
    if f.min_gap is not None:
        keep &= gap >= f.min_gap
    times = choice.index[keep.to_numpy()]
    rows = []
    for t in times[f.offset : f.offset + f.limit]:
        rows.append(
            {
                "decision_time": t.isoformat(),
                "gap": _clean(float(gap.loc[t])),
                "best_reward": _clean(float(best.loc[t])),
                "choices": {
                    p: {
                        "choice": choice.loc[t, p] if isinstance(choice.loc[t, p], str) else None,
                        "reward": _clean(float(reward.loc[t, p])),
                        "has_transcript": (p, time_key(t)) in run.transcripts,
                    }
                    for p in policies
                },
            }
        )
    return {"total": len(times), "policies": policies, "rows": rows}


def _raw_rows(run_dir: Path, t: pd.Timestamp) -> dict[str, dict[str, Any]]:
    key = time_key(t)
    out: dict[str, dict[str, Any]] = {}
    path = run_dir / "decisions.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            if row.get("decision_time") and time_key(row["decision_time"]) == key:
                out[str(row["policy"])] = row
        except (json.JSONDecodeError, ValueError, TypeError, AttributeError):
            continue
    return out


def _labels_at(run_dir: Path, t: pd.Timestamp) -> pd.DataFrame:
    path = run_dir / "labels.parquet"
    if not path.is_file():
        return pd.DataFrame()
    try:
        labels = pd.read_parquet(path, filters=[("decision_time", "==", t)])
    except Exception:  # an older pyarrow or a type mismatch: read all and filter here
        labels = pd.read_parquet(path)
        labels = labels[pd.to_datetime(labels["decision_time"], utc=True) == t]
    return labels


def decision_detail(run: RunFolder, time: str) -> dict[str, Any]:
    """One decision time: state, every candidate with its counterfactual reward and who chose it."""
    t = pd.Timestamp(time)
    t = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
    raw = _raw_rows(run.path, t)
    if not raw:
        raise KeyError(f"no decision at {t.isoformat()} in this run")
    first = next(iter(raw.values()))
    chosen: dict[str | None, list[str]] = {}
    for p, r in raw.items():
        chosen.setdefault(r.get("instrument_name"), []).append(p)
    labels = _labels_at(run.path, t)
    candidates = []
    names = list(first.get("candidates") or [])
    if not labels.empty:
        for rec in labels.to_dict("records"):
            name = rec.get("instrument_name")
            name = name if isinstance(name, str) else None
            candidates.append(
                {
                    "instrument_name": name or "DO_NOTHING",
                    "strike": _clean(rec.get("strike")),
                    "expiry": _clean(rec.get("expiry")),
                    "delta": _clean(rec.get("delta")),
                    "premium": _clean(rec.get("premium")),
                    "reward": _clean(float(rec.get("reward", float("nan")))),
                    "chosen_by": chosen.get(name, []),
                }
            )
    else:  # no labels.parquet: the offered names, rewards only where a policy chose them
        reward_of = {r.get("instrument_name"): r.get("reward") for r in raw.values()}
        for name in [None, *names]:
            candidates.append(
                {
                    "instrument_name": name or "DO_NOTHING",
                    "reward": _clean(reward_of.get(name)),
                    "chosen_by": chosen.get(name, []),
                }
            )
    scored = [c for c in candidates if c.get("reward") is not None]
    best = max(scored, key=lambda c: c["reward"])["instrument_name"] if scored else None
    for c in candidates:
        c["best_in_hindsight"] = c["instrument_name"] == best
    policies = {
        p: {
            "choice": r.get("instrument_name") or "DO_NOTHING",
            "reward": _clean(r.get("reward")),
            "regret": _clean(r.get("regret")),
            "valid": r.get("valid", True),
            "invalid_reason": r.get("invalid_reason"),
            "error": mask_secrets(r.get("error")),
            "rationale": mask_secrets((r.get("llm") or {}).get("rationale")),
            "has_transcript": (p, time_key(t)) in run.transcripts,
        }
        for p, r in raw.items()
    }
    return {
        "decision_time": t.isoformat(),
        "spot": first.get("spot"),
        "state": first.get("state") or {},
        "n_candidates": len(names),
        "candidates": candidates,
        "best_in_hindsight": best,
        "policies": policies,
    }


def transcript(run: RunFolder, policy: str, time: str) -> dict[str, Any]:
    """Every LLM request of one decision (secret-masked) with totals and the decision's row."""
    t = pd.Timestamp(time)
    t = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
    recs = run.transcripts.get((policy, time_key(t)))
    if not recs:
        raise KeyError(f"no transcript for {policy} at {t.isoformat()} in this run")
    d = run.decisions
    row = d[(d["policy"] == policy) & (d["decision_time"] == t)]
    decision = None
    if not row.empty:
        r = row.iloc[0]
        decision = {
            "choice": r["label"],
            "reward": _clean(float(r["reward"])),
            "best_reward": _clean(float(r["best_reward"])),
            "rationale": mask_secrets(r["rationale"]),
        }
    return {
        "policy": policy,
        "decision_time": t.isoformat(),
        "summary": transcript_summary(recs),
        "decision": decision,
        "records": recs,
    }


def compare(run_a: RunFolder, run_b: RunFolder, policy: str | None = None) -> dict[str, Any]:
    """Two runs side by side: per policy the changed decisions with both answers, prompt diff."""
    cmp = compare_runs(run_a.path, run_b.path, policy=policy)
    policies = []
    for p in cmp.policies:
        changed = []
        diff: list[str] = []
        for c in sorted(
            p.changed, key=lambda c: -abs(c.reward_change) if math.isfinite(c.reward_change) else 0
        ):
            ka = (p.policy, time_key(c.decision_time))
            ra, rb = run_a.transcripts.get(ka), run_b.transcripts.get(ka)
            if not diff:
                diff = prompt_diff(ra, rb)
            changed.append(
                {
                    "decision_time": c.decision_time.isoformat(),
                    "choice_a": c.choice_a,
                    "choice_b": c.choice_b,
                    "reward_a": _clean(c.reward_a),
                    "reward_b": _clean(c.reward_b),
                    "reward_change": _clean(c.reward_change),
                    "answer_a": final_answer(ra),
                    "answer_b": final_answer(rb),
                }
            )
        policies.append(
            {
                "policy": p.policy,
                "n_aligned": p.n_aligned,
                "n_changed": p.n_changed,
                "mean_change": _clean(p.mean_change),
                "ci_low": _clean(p.ci_low),
                "ci_high": _clean(p.ci_high),
                "prompt_id_a": p.prompt_id_a,
                "prompt_id_b": p.prompt_id_b,
                "prompt_diff": diff,
                "changed": changed,
            }
        )
    return {
        "run_a": cmp.run_id_a,
        "run_b": cmp.run_id_b,
        "reward_kind": cmp.reward_kind,
        "policies": policies,
        "notes": list(cmp.notes),
    }


def load(path: Path) -> RunFolder:
    """A run folder loaded for the viewer."""
    return load_run(path)
