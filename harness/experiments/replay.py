"""`harness replay RUN_DIR`: re-run a run's config from the answers pinned in its folder.

Every LLM request is served from the run's transcripts.jsonl (no cache, no network, no key);
rule policies and the market are recomputed. The replay is written as a new run folder and its
decisions.jsonl is checked against the original's, row by row, on the fields that define a
decision: decision time, policy, action, instrument, validity, reward, raw answer, rationale.
Timing, cache-hit and cost fields may differ; replayed LLM rows carry `"replayed": true`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.experiments.config import parse_config
from harness.experiments.masking import ENV_NAME
from harness.experiments.runner import RunSummary, run_experiment
from harness.llm.transcripts import TRANSCRIPTS_FILE, TranscriptBook, read_transcripts

COMPARED = (
    "decision_time",
    "policy",
    "action",
    "instrument_name",
    "valid",
    "invalid_reason",
    "error",
    "reward",
)
COMPARED_LLM = ("raw", "rationale")
SHOWN_DIFFERENCES = 20


@dataclass(frozen=True)
class ReplayResult:
    """What a replay reproduced: rows compared, rows identical, the first differences."""

    run_dir: Path
    replay_dir: Path
    rows: int
    identical: int
    differences: list[str] = field(default_factory=list)
    prompt_changes: int = 0  # requests whose rendered prompt differs from the original's
    summary: RunSummary | None = None

    @property
    def reproduced(self) -> bool:
        """True when every decision row is identical on the compared fields."""
        return not self.differences and self.rows == self.identical


def _rows(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[(row["policy"], row["decision_time"])] = row
    return out


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in COMPARED}
    llm = row.get("llm")
    if isinstance(llm, dict):
        out.update({f"llm.{k}": llm.get(k) for k in COMPARED_LLM})
    return out


def _load_run_config(run_dir: Path) -> Any:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml)")
    data = yaml.safe_load(path.read_text())
    manifest = run_dir / "manifest.json"
    skipped = json.loads(manifest.read_text()).get("skipped") or {} if manifest.is_file() else {}
    # A policy the run skipped never decided anything: the replay leaves it out too.
    baseline = data.get("baseline") or (data.get("policies") or [{}])[0].get("name")
    data["policies"] = [
        p
        for p in data.get("policies") or []
        if not (isinstance(p, dict) and p.get("name") in skipped and p.get("name") != baseline)
    ]
    # A replay sends nothing: no policy needs a key, and a masked `api_key_env` must not fail.
    for entry in data.get("policies") or []:
        if isinstance(entry, dict) and entry.get("type") == "llm":
            env = entry.get("api_key_env")
            if env is not None and not ENV_NAME.fullmatch(str(env)):
                entry["api_key_env"] = None
    data["name"] = f"{data.get('name', 'run')}-replay"
    return parse_config(data, str(path))


def replay_run(
    run_dir: str | Path, *, out_dir: str | Path | None = None, quiet: bool = False
) -> ReplayResult:
    """Replay `run_dir` into a new run folder under `out_dir` (default: next to it) and compare."""
    src = Path(run_dir)
    config = _load_run_config(src)
    book = TranscriptBook.read(src / TRANSCRIPTS_FILE)
    summary = run_experiment(
        config,
        out_dir=out_dir if out_dir is not None else src.parent,
        answers=book,
        quiet=quiet,
    )
    original = _rows(src / "decisions.jsonl")
    replayed = _rows(summary.run_dir / "decisions.jsonl")
    differences: list[str] = []
    identical = 0
    for key in sorted(original.keys() | replayed.keys()):
        a, b = original.get(key), replayed.get(key)
        if a is None or b is None:
            where = "replay" if a is None else "original"
            differences.append(f"{key[0]} at {key[1]}: only in the {where}")
            continue
        fa, fb = _fields(a), _fields(b)
        changed = [k for k in fa if fa[k] != fb.get(k)]
        if changed:
            differences.append(
                f"{key[0]} at {key[1]}: "
                + ", ".join(f"{k} {fa[k]!r} -> {fb.get(k)!r}" for k in changed)
            )
        else:
            identical += 1
    keys_then = {r.slot: r.cache_key for r in read_transcripts(src / TRANSCRIPTS_FILE)}
    keys_now = {r.slot: r.cache_key for r in read_transcripts(summary.run_dir / TRANSCRIPTS_FILE)}
    prompt_changes = sum(1 for slot, k in keys_now.items() if keys_then.get(slot) not in (None, k))
    return ReplayResult(
        run_dir=src,
        replay_dir=summary.run_dir,
        rows=len(original),
        identical=identical,
        differences=differences,
        prompt_changes=prompt_changes,
        summary=summary,
    )
