"""Run health: whether each policy counts (`ok`), never ran (`skipped`) or ran badly (`failed`).

Written to manifest.json as `policy_status` (docs/run_folder.md). Rates are over *asked*
decisions (decisions with at least one candidate, where the policy had to choose), never over
all decision times. Skipped and failed policies are left out of every paired comparison.
Also: the identity check that makes `--resume` refuse a run whose prompts or models changed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.llm.transcripts import TRANSCRIPTS_FILE, read_transcripts


class ResumeRefused(ValueError):
    """`--resume` would mix decisions of a different prompt or model into one run."""


@dataclass
class PolicyTally:
    """Counts of one policy's decision rows (resumed rows included)."""

    asked: int = 0
    errors: int = 0
    invalid: int = 0  # invalid answers, failed calls not included
    error_texts: Counter[str] = field(default_factory=Counter)

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one decisions.jsonl row."""
        if not row.get("candidates"):
            return  # no choice to make: not an asked decision
        self.asked += 1
        error = row.get("error")
        if error is not None:
            self.errors += 1
            self.error_texts[str(error)] += 1
        elif not row.get("valid", True):
            self.invalid += 1

    def add_valid(self, *, offered: bool) -> None:
        """Count one valid row without error: `add` of it (`offered`: it has candidates)."""
        self.asked += offered

    @property
    def error_rate(self) -> float:
        """Failed share of asked decisions."""
        return self.errors / self.asked if self.asked else 0.0

    @property
    def invalid_rate(self) -> float:
        """Invalid share of asked decisions."""
        return self.invalid / self.asked if self.asked else 0.0


def llm_status(
    tally: PolicyTally,
    *,
    max_error_rate: float,
    max_invalid_rate: float,
    halted: str | None = None,
    stopped_for_spend: bool = False,
) -> dict[str, Any]:
    """The `policy_status` entry of an LLM policy that ran."""
    out: dict[str, Any] = {
        "status": "ok",
        "asked": tally.asked,
        "errors": tally.errors,
        "invalid": tally.invalid,
        "error_rate": round(tally.error_rate, 4),
        "invalid_rate": round(tally.invalid_rate, 4),
    }
    if tally.error_texts:
        out["top_error"] = tally.error_texts.most_common(1)[0][0]
    reasons = []
    if halted:
        reasons.append(halted)
    if tally.error_rate > max_error_rate:
        reasons.append(
            f"error rate {tally.error_rate:.2f} over asked decisions > max_error_rate "
            f"{max_error_rate:g}"
        )
    if tally.invalid_rate > max_invalid_rate:
        reasons.append(
            f"invalid rate {tally.invalid_rate:.2f} over asked decisions > max_invalid_rate "
            f"{max_invalid_rate:g}"
        )
    if tally.asked == 0 and halted:
        reasons.append("no decision was asked")
    if reasons:
        out["status"] = "failed"
        out["reason"] = "; ".join(reasons)
    if stopped_for_spend:
        out["stopped"] = True
    return out


def counted(status: Mapping[str, Mapping[str, Any]], name: str) -> bool:
    """True when `name` may enter comparisons and headlines (status ok or unknown)."""
    return status.get(name, {}).get("status", "ok") == "ok"


def check_resume_identity(
    run_dir: Path,
    done_rows: Iterable[Mapping[str, Any]],
    identities: Mapping[str, tuple[str, str]],
) -> None:
    """Raise `ResumeRefused` when a policy's prompt id or model differs from what the run used.

    `identities` maps an LLM policy name to (prompt_id, model) as they are now; the run's are
    read from its decision rows, its transcripts and (for a finished run) its manifest.
    """
    seen: dict[str, set[tuple[str, str]]] = {}

    def note(policy: Any, prompt_id: Any, model: Any) -> None:
        if policy in identities and prompt_id and model:
            seen.setdefault(str(policy), set()).add((str(prompt_id), str(model)))

    for row in done_rows:
        llm = row.get("llm")
        if isinstance(llm, dict):
            note(row.get("policy"), llm.get("prompt_id"), llm.get("model"))
    for rec in read_transcripts(run_dir / TRANSCRIPTS_FILE):
        note(rec.policy, rec.prompt_id, rec.model)
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
        except ValueError:
            m = {}
        for policy, prompt_id in (m.get("prompt_ids") or {}).items():
            note(policy, prompt_id, (m.get("model_ids") or {}).get(policy))
    for policy, (prompt_id, model) in identities.items():
        for old_prompt, old_model in sorted(seen.get(policy, ())):
            if old_prompt != prompt_id:
                raise ResumeRefused(
                    f"{run_dir}: cannot resume: policy {policy}'s prompt changed since the run "
                    f"started ({old_prompt} -> {prompt_id}); restore it or start a new run"
                )
            if old_model != model:
                raise ResumeRefused(
                    f"{run_dir}: cannot resume: policy {policy}'s model changed since the run "
                    f"started ({old_model} -> {model}); start a new run"
                )
