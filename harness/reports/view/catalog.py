"""Find run folders and sweeps under a runs folder and summarise each for the runs list.

A run folder has a `manifest.json`, `config.yaml` or `decisions.jsonl`; a sweep folder has a
`sweep.json` and its trials under `trials/<trial-id>/`. Ids are paths relative to the runs
folder (`<run>` or `<sweep>/trials/<trial>`), and only folders inside it are ever opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RUN_MARKERS = ("manifest.json", "config.yaml", "decisions.jsonl")


class UnknownRun(LookupError):
    """A run id that is not a run folder inside the runs folder."""


@dataclass(frozen=True)
class RunEntry:
    """One run for the runs list (money in USD)."""

    id: str
    name: str
    status: str
    started_at: str | None
    period: list[str] | None
    policies: list[str]
    policy_status: dict[str, str]
    best_per_decision: tuple[str, float] | None  # (policy, mean reward), bounds left out
    best_portfolio: tuple[str, float] | None  # (policy, PnL vs HODL USD)
    llm_cost_usd: float
    reward_kind: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class SweepEntry:
    """A sweep: its folder, its spec file's content and its trials (newest first)."""

    id: str
    name: str
    started_at: str | None
    trials: list[RunEntry] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": "sweep",
            "started_at": self.started_at,
            "trials": [t.as_dict() for t in self.trials],
        }


def _json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _bounds(path: Path) -> set[str]:
    """Names of the hindsight-bound policies of a run (by name or by `rule: oracle*`)."""
    names = {"oracle", "oracle_schedule"}
    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return names
    for entry in cfg.get("policies") or [] if isinstance(cfg, dict) else []:
        if isinstance(entry, dict) and str(entry.get("rule", "")).startswith("oracle"):
            names.add(str(entry.get("name")))
    return names


def is_run_folder(path: Path) -> bool:
    """True for a folder holding any of the files a run writes first."""
    return path.is_dir() and any((path / m).is_file() for m in RUN_MARKERS)


def resolve_run(runs_dir: Path, run_id: str) -> Path:
    """The folder of a run id, refusing anything outside `runs_dir` or not a run folder."""
    root = Path(runs_dir).resolve()
    path = (root / run_id).resolve()
    if root not in path.parents or not is_run_folder(path):
        raise UnknownRun(f"no run folder {run_id!r} under {runs_dir}")
    return path


def run_entry(runs_dir: Path, path: Path) -> RunEntry:
    """Summary of one run folder (missing files give empty fields, status `incomplete`)."""
    manifest = _json(path / "manifest.json")
    metrics = {k: v for k, v in _json(path / "metrics.json").items() if isinstance(v, dict)}
    comparison = _json(path / "comparison.json")
    status = {
        p: str((s or {}).get("status", "ok"))
        for p, s in (manifest.get("policy_status") or {}).items()
        if isinstance(s, dict)
    }
    for p in manifest.get("skipped") or {}:
        status.setdefault(p, "skipped")
    bounds = _bounds(path)
    # Headlines name real policies: the hindsight bounds always "win" and answer nothing.
    ok = [p for p in metrics if status.get(p, "ok") == "ok" and p not in bounds]

    def best(key: str) -> tuple[str, float] | None:
        vals = [
            (p, float(metrics[p][key])) for p in ok if isinstance(metrics[p].get(key), int | float)
        ]
        return max(vals, key=lambda x: x[1]) if vals else None

    usage = manifest.get("llm_usage") or {}
    cost = sum(
        float(u.get("cost_usd", u.get("cost_usd_incurred", 0.0)) or 0.0)
        for u in usage.values()
        if isinstance(u, dict)
    )
    return RunEntry(
        id=path.relative_to(Path(runs_dir).resolve()).as_posix(),
        name=str(manifest.get("name") or path.name),
        status=str(manifest.get("status") or "incomplete"),
        started_at=manifest.get("started_at"),
        period=manifest.get("decision_period"),
        policies=list(manifest.get("policies") or metrics),
        policy_status=status,
        best_per_decision=best("mean_reward"),
        best_portfolio=best("pnl_vs_hodl_usd"),
        llm_cost_usd=cost,
        reward_kind=comparison.get("reward_kind") or manifest.get("reward_kind"),
    )


def _sort_key(path: Path, started: str | None) -> tuple[str, str]:
    # The manifest's start time first; folder names (they start with a UTC stamp) break ties.
    return (started or "", path.name)


def list_runs(runs_dir: Path) -> list[RunEntry | SweepEntry]:
    """Runs and sweeps directly under `runs_dir`, newest first (sweeps with their trials)."""
    root = Path(runs_dir).resolve()
    if not root.is_dir():
        return []
    out: list[tuple[tuple[str, str], RunEntry | SweepEntry]] = []
    for child in root.iterdir():
        if not child.is_dir():
            continue
        if (child / "sweep.json").is_file():
            spec = _json(child / "sweep.json")
            trials_dir = child / "trials"
            trials = [
                run_entry(root, t)
                for t in (sorted(trials_dir.iterdir()) if trials_dir.is_dir() else [])
                if is_run_folder(t)
            ]
            trials.sort(key=lambda e: (e.started_at or "", e.id), reverse=True)
            started = spec.get("started_at") or (trials[-1].started_at if trials else None)
            entry = SweepEntry(
                id=child.name,
                name=str(spec.get("name") or child.name),
                started_at=started,
                trials=trials,
            )
            out.append((_sort_key(child, started), entry))
        elif is_run_folder(child):
            e = run_entry(root, child)
            out.append((_sort_key(child, e.started_at), e))
    out.sort(key=lambda x: x[0], reverse=True)
    return [e for _, e in out]
