"""`harness export`: one policy's decisions in a run folder as training files, with a dataset card.

The run's market is rebuilt from its `config.yaml` (the market sources are deterministic) to
recover the full point-in-time states and candidates; the policy's actions come from
`decisions.jsonl` and the rewards from `labels.parquet`. Both are checked against the rebuilt
market, so a changed data source fails loudly instead of exporting mislabeled rows.

Formats (`docs/export.md` has the exact schemas):
- `parquet`, `jsonl`: one row per decision, candidates nested; `csv`: the same, flattened;
- `openai-chat`: supervised fine-tuning, `{"messages": [system, user, assistant]}` with the
  best action in hindsight as the assistant's answer-contract JSON;
- `preference` (OpenAI DPO) and `trl-preference` (TRL `prompt`/`chosen`/`rejected`);
- `rft`: reinforcement fine-tuning, `messages` ending with the user turn plus every action's
  reward as fields a grader can read.
The chat formats use the policy's prompt if it is an LLM policy, else `covered_call_v1`;
decisions that offered no candidate are left out of them (a policy is never asked then).

Files: `data.<ext>` without a split, `train.<ext>` and `validation.<ext>` with `walk-forward`;
every export folder gets a `README.md` dataset card. The written files are read back and
checked (row counts, roles, the final assistant answer against the contract, finite rewards)
and any problem raises `ExportValidationError`.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness import __version__
from harness.experiments.config import ConfigError, ExperimentConfig, LLMPolicyEntry, load_config
from harness.experiments.markets import build_market
from harness.experiments.rewards import REWARD_UNITS
from harness.llm.anonymize import Anchor, AnonymizedView, PlainView
from harness.llm.contract import LLMAnswer, validate_answer
from harness.llm.prompts import load_prompt
from harness.simulator import CoveredCallSimulator
from harness.timestamps import to_utc
from harness.training.dataset import (
    DEFAULT_PROMPT,
    DO_NOTHING_REWARD,
    STATE_FEATURES,
    CandidateExample,
    Option,
    TrainingExample,
    View,
    build_examples,
    preference_pair,
    walk_forward_split,
)

FORMATS: tuple[str, ...] = (
    "parquet",
    "csv",
    "jsonl",
    "openai-chat",
    "preference",
    "trl-preference",
    "rft",
)
TABULAR_FORMATS: tuple[str, ...] = ("parquet", "csv", "jsonl")
SPLITS: tuple[str, ...] = ("none", "walk-forward")
CARD = "README.md"

_EXT = {"parquet": "parquet", "csv": "csv"}  # every other format is JSON lines
_STEMS = ("data", "train", "validation")
_RTOL = 1e-9  # rewards read back from decisions.jsonl went through JSON: allow rounding only


class ExportError(ValueError):
    """The run folder cannot be exported as asked; the message says why and what to do."""


class ExportValidationError(ExportError):
    """The exporter's own output failed its checks (a bug or corrupt input, never silent)."""


# --------------------------------------------------------------------------- loading a run
@dataclass(frozen=True)
class RunExamples:
    """One policy's decisions of a run folder as training examples, with their provenance."""

    run_dir: Path
    policy: str
    examples: list[TrainingExample]
    manifest: dict[str, Any]
    config_text: str
    reward_kind: str
    drawdown_penalty: float
    reward_units: str
    is_llm: bool
    prompt_id: str  # template the messages were rendered from
    prompt_note: str  # where that prompt comes from, for the card
    model: str | None


def _ext(fmt: str) -> str:
    return _EXT.get(fmt, "jsonl")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


def _decision_rows(path: Path, policy: str) -> dict[str, dict[str, Any]]:
    """Rows of `policy` in decisions.jsonl keyed by ISO decision time."""
    rows: dict[str, dict[str, Any]] = {}
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ExportError(f"{path}:{lineno}: not valid JSON ({exc})") from None
            if row.get("policy") == policy:
                rows[row["decision_time"]] = row
    return rows


def _pick_policy(run_dir: Path, manifest: dict[str, Any], policy: str | None) -> str:
    ran: list[str] = list(manifest.get("policies", []))
    skipped: dict[str, str] = dict(manifest.get("skipped", {}))
    name = policy or manifest.get("baseline")
    if name in ran:
        return str(name)
    available = ", ".join(ran) or "none"
    what = f"policy {name!r}" if policy else f"the baseline policy {name!r} (the default)"
    if name in skipped:
        raise ExportError(
            f"{run_dir}: {what} was skipped in this run ({skipped[name]}); "
            f"policies with decisions: {available} (choose one with --policy)"
        )
    raise ExportError(
        f"{run_dir}: {what} is not in this run; policies with decisions: {available}"
        + (f"; skipped: {', '.join(skipped)}" if skipped else "")
    )


def load_run(
    run_dir: str | Path,
    policy: str | None = None,
    *,
    simulator: CoveredCallSimulator | None = None,
) -> RunExamples:
    """Rebuild the run's market and return `policy`'s decisions (default: the baseline) as examples.

    `simulator`, if given, must be built from the run's config (it saves rebuilding the market
    when loading several policies); a market that differs from the run's is detected and raises.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run folder")
    for name in ("config.yaml", "decisions.jsonl", "labels.parquet"):
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir}: not a run folder (no {name}); see docs/run_folder.md")
    if not (run_dir / "manifest.json").is_file():
        raise ExportError(
            f"{run_dir}: the run did not finish (no manifest.json); complete it with "
            f"`harness run CONFIG --resume {run_dir}` first"
        )
    manifest = _read_json(run_dir / "manifest.json")
    if manifest.get("status", "complete") != "complete":
        raise ExportError(f"{run_dir}: run status is {manifest.get('status')!r}, not 'complete'")
    name = _pick_policy(run_dir, manifest, policy)
    try:
        config: ExperimentConfig = load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    entry = next((p for p in config.policies if p.name == name), None)
    if entry is None:
        raise ExportError(f"{run_dir}: policy {name!r} is in manifest.json but not in config.yaml")
    rows = _decision_rows(run_dir / "decisions.jsonl", name)
    labels = pd.read_parquet(run_dir / "labels.parquet")
    if "reward" not in labels.columns:
        raise ExportError(f"{run_dir}/labels.parquet: no `reward` column")

    sim = simulator or CoveredCallSimulator(
        build_market(config.market, config.simulation.timeframe), config.simulation
    )
    times = sim.decision_times()
    items = [(sim.build_state(t), sim.candidates(t)) for t in times]
    n_run = manifest.get("n_decisions")
    if n_run is not None and n_run != len(times):
        raise ExportError(
            f"{run_dir}: the rebuilt market has {len(times)} decision times, the run had "
            f"{n_run}: its market data changed since the run"
        )
    choices: list[tuple[str | None, bool]] = []
    for t, (_, cands) in zip(times, items, strict=True):
        row = rows.get(t.isoformat())
        if row is None:
            raise ExportError(
                f"{run_dir}/decisions.jsonl: no decision of {name!r} at {t.isoformat()}"
            )
        offered = [c.instrument_name for c in cands]
        if row.get("candidates") is not None and list(row["candidates"]) != offered:
            raise ExportError(
                f"{run_dir}: at {t.isoformat()} the rebuilt market offers {offered} but the run "
                f"offered {row['candidates']}: its market data changed since the run"
            )
        choices.append((row.get("instrument_name"), bool(row.get("valid", True))))

    view: View = PlainView()
    model = None
    if isinstance(entry, LLMPolicyEntry):
        try:
            template = load_prompt(entry.prompt, entry.prompts_dir)
        except FileNotFoundError as exc:
            raise ExportError(f"{run_dir}: policy {name!r}: {exc}") from None
        ran_with = manifest.get("prompt_ids", {}).get(name)
        if ran_with is not None and ran_with != template.prompt_id:
            raise ExportError(
                f"{run_dir}: prompt {entry.prompt!r} changed since the run (the run used "
                f"{ran_with}, the file is now {template.prompt_id}), so the exported messages "
                "would not be what the policy saw; restore the prompt files of the run first"
            )
        if entry.anonymize and items:
            # LLMPolicy.prefetch anchors day 0 and index 100 at the run's first decision
            first = items[0][0]
            view = AnonymizedView(Anchor(to_utc(first.time), first.spot))
        model = manifest.get("model_ids", {}).get(name, entry.model)
        note = f"the policy's own prompt `{entry.prompt}`" + (
            " (anonymized view)" if entry.anonymize else ""
        )
    else:
        template = load_prompt(DEFAULT_PROMPT)
        note = f"`{DEFAULT_PROMPT}` (a rule policy has no prompt; the default LLM prompt is used)"
    try:
        examples = build_examples(
            items, choices, labels, policy=name, template=template, view=view, model=model
        )
    except ValueError as exc:
        raise ExportError(f"{run_dir}: {exc}") from None
    for e in examples:
        logged = rows[to_utc(e.decision_time).isoformat()].get("reward")
        if logged is not None and not math.isclose(logged, e.reward, rel_tol=_RTOL, abs_tol=1e-6):
            raise ExportError(
                f"{run_dir}: at {to_utc(e.decision_time).isoformat()} decisions.jsonl says reward "
                f"{logged} but labels.parquet gives {e.reward}: the run folder is inconsistent"
            )
    return RunExamples(
        run_dir=run_dir,
        policy=name,
        examples=examples,
        manifest=manifest,
        config_text=(run_dir / "config.yaml").read_text(),
        reward_kind=config.reward.kind,
        drawdown_penalty=config.reward.drawdown_penalty,
        reward_units=REWARD_UNITS[config.reward.kind],
        is_llm=isinstance(entry, LLMPolicyEntry),
        prompt_id=template.prompt_id,
        prompt_note=note,
        model=model,
    )


# --------------------------------------------------------------------------- tabular rows
def _iso(value: Any) -> str:
    return to_utc(value).isoformat()


CANDIDATE_FIELDS: tuple[str, ...] = tuple(CandidateExample.model_fields)
ROW_COLUMNS: tuple[str, ...] = (
    "decision_time",
    "underlying",
    "spot",
    *STATE_FEATURES,
    "n_candidates",
    "candidates",
    "action",
    "instrument_name",
    "reward",
    "valid",
    "best_action",
    "best_instrument_name",
    "best_reward",
    "regret",
    "policy",
    "prompt_id",
    "model",
    "system_prompt",
    "user_prompt",
)


def tabular_row(example: TrainingExample) -> dict[str, Any]:
    """One decision as a JSON-ready row (ISO times, state features as columns, nested candidates)."""
    d = example.model_dump()
    d["decision_time"] = _iso(example.decision_time)
    d.update(d.pop("state"))
    d["n_candidates"] = len(example.candidates)
    d["candidates"] = [{**c, "expiry": _iso(c["expiry"])} for c in d["candidates"]]
    return {k: d[k] for k in ROW_COLUMNS}


def _example_from_row(row: dict[str, Any]) -> TrainingExample:
    data = {k: v for k, v in row.items() if k not in STATE_FEATURES and k != "n_candidates"}
    data["state"] = {k: row[k] for k in STATE_FEATURES}
    return TrainingExample.model_validate(data)


_F64, _STR = pa.float64(), pa.string()
_TS = pa.timestamp("ns", tz="UTC")
_CANDIDATE_TYPES = {"instrument_name": _STR, "name_in_prompt": _STR, "expiry": _TS}
_ROW_TYPES = {
    "decision_time": _TS,
    "n_candidates": pa.int32(),
    "valid": pa.bool_(),
    **{
        k: _STR
        for k in (
            "underlying",
            "action",
            "instrument_name",
            "best_action",
            "best_instrument_name",
            "policy",
            "prompt_id",
            "model",
            "system_prompt",
            "user_prompt",
        )
    },
}
CANDIDATE_ARROW = pa.struct([(k, _CANDIDATE_TYPES.get(k, _F64)) for k in CANDIDATE_FIELDS])
PARQUET_SCHEMA = pa.schema(
    [
        (k, pa.list_(CANDIDATE_ARROW) if k == "candidates" else _ROW_TYPES.get(k, _F64))
        for k in ROW_COLUMNS
    ]
)


def _parquet_row(example: TrainingExample) -> dict[str, Any]:
    row = tabular_row(example)
    row["decision_time"] = example.decision_time
    row["candidates"] = [
        {**r, "expiry": c.expiry}
        for r, c in zip(row["candidates"], example.candidates, strict=True)
    ]
    return row


def _csv_columns(max_candidates: int) -> list[str]:
    cols = [c for c in ROW_COLUMNS if c != "candidates"]
    for i in range(1, max_candidates + 1):
        cols += [f"candidate_{i}_{f}" for f in CANDIDATE_FIELDS]
    return cols


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    return str(value)


def _write_csv(path: Path, examples: Sequence[TrainingExample]) -> None:
    width = max((len(e.candidates) for e in examples), default=0)
    cols = _csv_columns(width)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(cols)
        for e in examples:
            row = tabular_row(e)
            for i, cand in enumerate(row.pop("candidates"), 1):
                row.update({f"candidate_{i}_{k}": v for k, v in cand.items()})
            writer.writerow([_csv_cell(row.get(c)) for c in cols])


def _read_csv(path: Path) -> list[TrainingExample]:
    out = []
    with path.open(newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {k: (None if v == "" else v) for k, v in raw.items()}
            cands = []
            for i in range(1, int(row["n_candidates"]) + 1):
                cands.append({f: row[f"candidate_{i}_{f}"] for f in CANDIDATE_FIELDS})
            row = {k: v for k, v in row.items() if not k.startswith("candidate_")}
            row["candidates"] = cands
            row["valid"] = row["valid"] == "true"
            out.append(_example_from_row(row))
    return out


def read_examples(path: str | Path) -> list[TrainingExample]:
    """Read a `parquet`, `csv` or `jsonl` export file back into `TrainingExample`s."""
    path = Path(path)
    if path.suffix == ".parquet":
        return [_example_from_row(r) for r in pq.read_table(path).to_pylist()]
    if path.suffix == ".csv":
        return _read_csv(path)
    with path.open() as fh:
        return [_example_from_row(json.loads(line)) for line in fh if line.strip()]


# --------------------------------------------------------------------------- chat rows
def _rationale(example: TrainingExample, option: Option) -> str:
    """A point-in-time description of the action (never its outcome: that would leak the label)."""
    if option.instrument_name is None:
        return "Do nothing: keep the coins uncovered at this decision."
    c = example.candidate(option.instrument_name)
    return (
        f"Sell {c.name_in_prompt}: premium {c.premium_pct:.2f}% of spot for {c.dte_days:.1f} "
        f"days at delta {c.delta:.2f}, strike {c.strike_distance_pct:+.1f}% from spot."
    )


def answer_json(example: TrainingExample, option: Option) -> str:
    """`option` as the answer contract's JSON, naming the candidate as the prompt shows it."""
    name = None
    if option.instrument_name is not None:
        name = example.candidate(option.instrument_name).name_in_prompt
    answer = {
        "action": option.action,
        "instrument_name": name,
        "rationale": _rationale(example, option),
    }
    return json.dumps(answer, ensure_ascii=False)


def _prompt_messages(example: TrainingExample) -> list[dict[str, str]]:
    assert example.system_prompt is not None and example.user_prompt is not None
    return [
        {"role": "system", "content": example.system_prompt},
        {"role": "user", "content": example.user_prompt},
    ]


def _assistant(example: TrainingExample, option: Option) -> dict[str, str]:
    return {"role": "assistant", "content": answer_json(example, option)}


def _chat_row(example: TrainingExample) -> dict[str, Any] | None:
    return {"messages": [*_prompt_messages(example), _assistant(example, example.best)]}


def _dpo_row(example: TrainingExample) -> dict[str, Any] | None:
    pair = preference_pair(example)
    if pair is None:
        return None
    return {
        "input": {"messages": _prompt_messages(example)},
        "preferred_output": [_assistant(example, pair.preferred)],
        "non_preferred_output": [_assistant(example, pair.rejected)],
    }


def _trl_row(example: TrainingExample) -> dict[str, Any] | None:
    pair = preference_pair(example)
    if pair is None:
        return None
    return {
        "prompt": _prompt_messages(example),
        "chosen": [_assistant(example, pair.preferred)],
        "rejected": [_assistant(example, pair.rejected)],
    }


def _rft_row(example: TrainingExample, reward_kind: str) -> dict[str, Any]:
    rewards = {c.name_in_prompt: c.reward for c in example.candidates}
    rewards["DO_NOTHING"] = DO_NOTHING_REWARD
    best = example.best
    return {
        "messages": _prompt_messages(example),
        "decision_time": _iso(example.decision_time),
        "reward_kind": reward_kind,
        "rewards": rewards,
        "best_action": best.action,
        "best_instrument_name": (
            None
            if best.instrument_name is None
            else example.candidate(best.instrument_name).name_in_prompt
        ),
        "best_reward": best.reward,
    }


# --------------------------------------------------------------------------- validation
def _fail(where: str, problem: str) -> ExportValidationError:
    return ExportValidationError(f"export check failed: {where}: {problem}")


def check_examples(examples: Sequence[TrainingExample]) -> None:
    """Raise ExportValidationError on a NaN/infinite reward or an inconsistent action."""
    for e in examples:
        where = _iso(e.decision_time)
        values = [e.reward, e.best_reward, e.regret, *(c.reward for c in e.candidates)]
        if not all(math.isfinite(v) for v in values):
            raise _fail(where, "a reward is NaN or infinite")
        if (e.action == "SELL_CALL") != (e.instrument_name is not None):
            raise _fail(where, f"action {e.action} with instrument {e.instrument_name!r}")
        if e.regret < -1e-9:
            raise _fail(where, f"negative regret {e.regret}")


def _check_answer(where: str, message: Any, example: TrainingExample, role: str) -> LLMAnswer:
    if not isinstance(message, dict) or message.get("role") != role:
        raise _fail(where, f"expected a {role!r} message, got {message!r:.80}")
    content = message.get("content")
    if not isinstance(content, str) or not content:
        raise _fail(where, "empty assistant message")
    try:
        answer = LLMAnswer.model_validate(json.loads(content))
    except (json.JSONDecodeError, ValueError) as exc:
        raise _fail(where, f"assistant message is not the answer contract's JSON: {exc}") from None
    shown = [c.name_in_prompt for c in example.candidates]
    check = validate_answer(content, shown)
    if not check.valid:
        raise _fail(where, f"assistant answer is invalid: {check.reason}")
    return answer


def _check_prompt(where: str, messages: Any, example: TrainingExample) -> None:
    roles = (
        [m.get("role") if isinstance(m, dict) else None for m in messages]
        if isinstance(messages, list)
        else None
    )
    if roles != ["system", "user"]:
        raise _fail(where, f"prompt roles are {roles}, expected ['system', 'user']")
    if messages[1]["content"] != example.user_prompt:
        raise _fail(where, "user message differs from the prompt the policy saw")
    missing = [
        c.name_in_prompt
        for c in example.candidates
        if c.name_in_prompt not in messages[1]["content"]
    ]
    if missing:
        raise _fail(where, f"candidates {missing} are not in the user message")


def _reward_of_answer(example: TrainingExample, answer: LLMAnswer) -> float:
    if answer.instrument_name is None:
        return DO_NOTHING_REWARD
    by_shown = {c.name_in_prompt: c.reward for c in example.candidates}
    return by_shown[answer.instrument_name]


def _check_chat_file(path: Path, fmt: str, examples: Sequence[TrainingExample]) -> None:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) != len(examples):
        raise _fail(str(path), f"{len(lines)} rows written, {len(examples)} expected")
    for lineno, (line, e) in enumerate(zip(lines, examples, strict=True), 1):
        where = f"{path.name}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(where, f"not valid JSON ({exc})") from None
        if fmt == "openai-chat":
            msgs = row.get("messages")
            if not isinstance(msgs, list) or len(msgs) != 3:
                raise _fail(where, "expected messages [system, user, assistant]")
            _check_prompt(where, msgs[:2], e)
            answer = _check_answer(where, msgs[-1], e, "assistant")
            if not math.isclose(_reward_of_answer(e, answer), e.best_reward, abs_tol=1e-9):
                raise _fail(where, "assistant answer is not the best action in hindsight")
        elif fmt in ("preference", "trl-preference"):
            keys = (
                ("input", "preferred_output", "non_preferred_output")
                if fmt == "preference"
                else ("prompt", "chosen", "rejected")
            )
            prompt = row.get(keys[0])
            if fmt == "preference":
                prompt = prompt.get("messages") if isinstance(prompt, dict) else None
            _check_prompt(where, prompt, e)
            got = []
            for key in keys[1:]:
                out = row.get(key)
                if not isinstance(out, list) or len(out) != 1:
                    raise _fail(where, f"{key} must hold exactly one assistant message")
                got.append(_reward_of_answer(e, _check_answer(where, out[0], e, "assistant")))
            if not got[0] > got[1]:
                raise _fail(where, f"preferred reward {got[0]} is not above rejected {got[1]}")
        else:  # rft
            msgs = row.get("messages")
            _check_prompt(where, msgs, e)
            if msgs[-1]["role"] != "user":
                raise _fail(where, "an RFT prompt must end with the user message")
            rewards = row.get("rewards")
            if not isinstance(rewards, dict) or set(rewards) != {
                *(c.name_in_prompt for c in e.candidates),
                "DO_NOTHING",
            }:
                raise _fail(where, "rewards must list every candidate and DO_NOTHING")
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in rewards.values()):
                raise _fail(where, "a reward is NaN, infinite or not a number")
            best = row.get("best_reward")
            if not isinstance(best, int | float) or not math.isclose(
                max(rewards.values()), best, abs_tol=1e-9
            ):
                raise _fail(where, "best_reward is not the largest reward")


def _check_tabular_file(path: Path, examples: Sequence[TrainingExample]) -> None:
    back = read_examples(path)
    if len(back) != len(examples):
        raise _fail(str(path), f"{len(back)} rows read back, {len(examples)} written")
    check_examples(back)
    for i, (a, b) in enumerate(zip(back, examples, strict=True), 1):
        if a != b:
            raise _fail(f"{path.name} row {i}", "does not read back to the example written")


# --------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class ExportedFile:
    """One written data file: its split, row count, rows per action and decision-time range."""

    path: Path
    split: str  # all | train | validation
    rows: int
    by_action: dict[str, int]
    first: pd.Timestamp | None
    last: pd.Timestamp | None


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote; `str()` is the human summary the CLI prints."""

    run_dir: Path
    out: Path
    fmt: str
    policy: str
    split: str
    files: tuple[ExportedFile, ...]
    card: Path
    decisions: int  # decisions of the policy in the run
    counted_action: str  # what `by_action` counts
    not_exported: dict[str, int] = field(default_factory=dict)  # reason -> decisions
    validation_start: pd.Timestamp | None = None
    longest_trade: pd.Timedelta | None = None
    gap: pd.Timedelta | None = None
    gap_dropped: int = 0

    def __str__(self) -> str:
        lines = [
            f"exported policy {self.policy!r} of {self.run_dir} as {self.fmt} to {self.out}"
            f" ({self.decisions} decisions in the run)"
        ]
        for f in self.files:
            counts = ", ".join(f"{a} {n}" for a, n in f.by_action.items())
            span = f", {_when(f.first)} to {_when(f.last)}" if f.first is not None else ""
            lines.append(f"  {f.path.name} ({f.split}): {f.rows} rows ({counts}){span}")
        lines.append(f"  rows per action count {self.counted_action}")
        if self.validation_start is not None and self.gap is not None:
            lines.append(
                f"  walk-forward: validation from {_when(self.validation_start)}; gap "
                f"{_days(self.gap)} > longest trade {_days(self.longest_trade)}; "
                f"{self.gap_dropped} decisions in the gap left out"
            )
        for reason, n in self.not_exported.items():
            lines.append(f"  not exported: {n} decisions ({reason})")
        lines.append(f"  dataset card: {self.card}")
        return "\n".join(lines)


def _when(ts: pd.Timestamp | None) -> str:
    return "-" if ts is None else to_utc(ts).strftime("%Y-%m-%d %H:%M UTC")


def _days(td: pd.Timedelta | None) -> str:
    return "-" if td is None else f"{td / pd.Timedelta(days=1):.2f} days"


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    ours = {CARD} | {f"{s}.{e}" for s in _STEMS for e in ("parquet", "csv", "jsonl")}
    others = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if others:
        raise ExportError(
            f"{out}: holds files an export does not write ({', '.join(others[:5])}); "
            "export into a new or empty folder"
        )
    for name in ours:  # a re-export replaces the previous one whole, whatever its format
        (out / name).unlink(missing_ok=True)


RowFn = Callable[[TrainingExample], dict[str, Any] | None]


def _chat_rows(
    fmt: str, examples: Sequence[TrainingExample], reward_kind: str
) -> tuple[list[TrainingExample], list[dict[str, Any]], Counter[str]]:
    """Rows of a chat format and the examples they came from; counts of decisions left out."""
    make: RowFn = {
        "openai-chat": _chat_row,
        "preference": _dpo_row,
        "trl-preference": _trl_row,
        "rft": lambda e: _rft_row(e, reward_kind),
    }[fmt]
    kept, rows, left_out = [], [], Counter[str]()
    for e in examples:
        if e.user_prompt is None:
            left_out["no candidate was offered, so the policy was not asked"] += 1
            continue
        row = make(e)
        if row is None:
            left_out["every action had the same reward: no preference"] += 1
            continue
        kept.append(e)
        rows.append(row)
    return kept, rows, left_out


def _write_file(
    path: Path, fmt: str, examples: Sequence[TrainingExample], reward_kind: str
) -> tuple[list[TrainingExample], Counter[str]]:
    """Write one split; returns the examples that became rows and what was left out."""
    if fmt == "parquet":
        table = pa.Table.from_pylist([_parquet_row(e) for e in examples], schema=PARQUET_SCHEMA)
        pq.write_table(table, path)
        _check_tabular_file(path, examples)
        return list(examples), Counter()
    if fmt == "csv":
        _write_csv(path, examples)
        _check_tabular_file(path, examples)
        return list(examples), Counter()
    if fmt == "jsonl":
        rows = [tabular_row(e) for e in examples]
        kept: list[TrainingExample] = list(examples)
        left_out: Counter[str] = Counter()
    else:
        kept, rows, left_out = _chat_rows(fmt, examples, reward_kind)
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    if fmt == "jsonl":
        _check_tabular_file(path, examples)
    else:
        _check_chat_file(path, fmt, kept)
    return kept, left_out


def _counted_action(fmt: str) -> str:
    if fmt in TABULAR_FORMATS:
        return "the policy's action"
    if fmt in ("preference", "trl-preference"):
        return "the preferred action (the best in hindsight)"
    return "the best action in hindsight (the training target)"


def _by_action(fmt: str, examples: Sequence[TrainingExample]) -> dict[str, int]:
    counts = Counter(e.action if fmt in TABULAR_FORMATS else e.best_action for e in examples)
    return {a: counts.get(a, 0) for a in ("SELL_CALL", "DO_NOTHING")}


def write_export(
    run: RunExamples,
    *,
    fmt: str,
    out: str | Path,
    split: str = "none",
    validation_fraction: float = 0.2,
) -> ExportSummary:
    """Write `run`'s examples in `fmt` to the folder `out` (with a split and a card), then check them."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if split not in SPLITS:
        raise ExportError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    check_examples(run.examples)
    out = Path(out)
    parts: list[tuple[str, list[TrainingExample]]]
    wf = None
    if split == "walk-forward":
        try:
            wf = walk_forward_split(run.examples, validation_fraction)
        except ValueError as exc:
            raise ExportError(f"{run.run_dir}: {exc}") from None
        parts = [("train", wf.train), ("validation", wf.validation)]
    else:
        parts = [("all", sorted(run.examples, key=lambda e: e.decision_time))]
    _prepare_out(out)
    files = []
    left_out: Counter[str] = Counter()
    for name, examples in parts:
        path = out / f"{'data' if name == 'all' else name}.{_ext(fmt)}"
        kept, skipped = _write_file(path, fmt, examples, run.reward_kind)
        left_out.update(skipped)
        times = [to_utc(e.decision_time) for e in kept]
        files.append(
            ExportedFile(
                path=path,
                split=name,
                rows=len(kept),
                by_action=_by_action(fmt, kept),
                first=min(times) if times else None,
                last=max(times) if times else None,
            )
        )
    summary = ExportSummary(
        run_dir=run.run_dir,
        out=out,
        fmt=fmt,
        policy=run.policy,
        split=split,
        files=tuple(files),
        card=out / CARD,
        decisions=len(run.examples),
        counted_action=_counted_action(fmt),
        not_exported=dict(left_out),
        validation_start=wf.validation_start if wf else None,
        longest_trade=wf.longest_trade if wf else None,
        gap=wf.gap if wf else None,
        gap_dropped=wf.dropped if wf else 0,
    )
    summary.card.write_text(dataset_card(run, summary, validation_fraction))
    return summary


def export_run(
    run_dir: str | Path,
    *,
    fmt: str,
    out: str | Path,
    policy: str | None = None,
    split: str = "none",
    validation_fraction: float = 0.2,
) -> ExportSummary:
    """Export `policy`'s decisions (default: the baseline) of a run folder as `fmt` into `out`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if split not in SPLITS:
        raise ExportError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    run = load_run(run_dir, policy)
    return write_export(run, fmt=fmt, out=out, split=split, validation_fraction=validation_fraction)


# --------------------------------------------------------------------------- dataset card
_REWARD_TEXT = {
    "pnl_vs_hodl": (
        "`pnl_vs_hodl` (USD): the option leg's result against simply holding the coins when the "
        "call is sold at the decision and held to expiry: premium at the fill, minus trading "
        "and delivery fees, minus the payoff at settlement, for the configured size"
    ),
    "return_bps": (
        "`return_bps` (basis points): `pnl_vs_hodl` per coin over the underlying price at the "
        "decision, x 10,000"
    ),
}

_SCHEMAS = {
    "tabular": """One row per decision time, in time order.

| column | meaning |
|---|---|
| `decision_time` | UTC decision instant (ISO text in jsonl/csv, `timestamp[ns, UTC]` in parquet) |
| `underlying`, `spot` | coin and its spot price (USD) at the decision |
| `return_1d`, `return_7d` | simple spot returns, fractions (null without enough history) |
| `realized_vol_7d`, `realized_vol_30d`, `atm_iv`, `iv_rv_spread` | annualized vols, fractions |
| `n_candidates` | calls offered |
| `candidates` | list of the offered calls (csv: columns `candidate_<i>_<field>`, i = 1..max) |
| `action`, `instrument_name` | what the policy did: SELL_CALL with the instrument, or DO_NOTHING with null |
| `reward` | reward of that action (DO_NOTHING = 0) |
| `valid` | false when the policy's answer was invalid or failed (it then counts as DO_NOTHING) |
| `best_action`, `best_instrument_name`, `best_reward` | best of all candidates and DO_NOTHING in hindsight |
| `regret` | `best_reward - reward` (>= 0) |
| `policy`, `model` | policy name; model for LLM policies |
| `prompt_id`, `system_prompt`, `user_prompt` | the prompt's id and its rendered messages (null when no candidate was offered) |

Candidate fields: `instrument_name`, `name_in_prompt` (the name the prompt shows: an alias such
as C1 for anonymized prompts), `strike` (USD), `expiry` (UTC), `dte_days`, `delta`, `mark_iv`
(fraction), `bid_price`, `ask_price`, `mark_price`, `premium_usd` (fill per coin before fees,
USD), `premium_pct` (% of spot), `annualized_yield_pct`, `strike_distance_pct` (% above spot),
`breakeven` (USD), `reward` (counterfactual reward of selling it and holding to expiry).""",
    "openai-chat": """OpenAI supervised fine-tuning JSONL, one decision per line:
`{"messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}]}`.
The user message is exactly the prompt the policy saw; the assistant message is the best action
in hindsight as the answer contract's JSON:
`{"action": "SELL_CALL" | "DO_NOTHING", "instrument_name": <name as shown> | null, "rationale": ...}`.
The rationale only describes the action with facts known at the decision (premium, days,
delta, strike distance): never its outcome.""",
    "preference": """OpenAI DPO JSONL, one decision per line:
`{"input": {"messages": [system, user]}, "preferred_output": [assistant], "non_preferred_output": [assistant]}`.
Preferred: the best action in hindsight. Non-preferred: the policy's own action when it earned
less, else the worst action (ties: the first in candidate order, DO_NOTHING last). Decisions
where every action earned the same are left out. Answers are in the answer contract's JSON.""",
    "trl-preference": """TRL conversational preference JSONL, one decision per line:
`{"prompt": [system, user], "chosen": [assistant], "rejected": [assistant]}`.
Chosen: the best action in hindsight. Rejected: the policy's own action when it earned less,
else the worst action. Decisions where every action earned the same are left out.""",
    "rft": """OpenAI reinforcement fine-tuning JSONL, one decision per line: `messages`
([system, user], ending with the user turn) plus fields a grader reads as `item.<field>`:
`decision_time` (ISO UTC), `reward_kind`, `rewards` (an object: each candidate's name as the
prompt shows it, and `DO_NOTHING`, to its reward), `best_action`, `best_instrument_name`
(as shown), `best_reward`. A Python grader can score a sample as
`item["rewards"].get(answer["instrument_name"] or "DO_NOTHING")` after parsing the answer
(an invalid answer should score below every action).""",
}


def _files_table(summary: ExportSummary) -> str:
    lines = [
        "| file | split | rows | SELL_CALL | DO_NOTHING | first decision | last decision |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in summary.files:
        lines.append(
            f"| `{f.path.name}` | {f.split} | {f.rows} | {f.by_action['SELL_CALL']} | "
            f"{f.by_action['DO_NOTHING']} | {_when(f.first)} | {_when(f.last)} |"
        )
    return "\n".join(lines)


def dataset_card(run: RunExamples, summary: ExportSummary, validation_fraction: float) -> str:
    """The README.md of an export folder: source, files and counts, reward, split, schema, config."""
    m = run.manifest
    kind = "LLM" if run.is_llm else "rule"
    model = f", model `{run.model}`" if run.model else ""
    penalty = (
        f" minus {run.drawdown_penalty:g} x `max_drawdown_pct` (the covered position's worst "
        "peak-to-trough fall during the trade, in percent)"
        if run.drawdown_penalty
        else " (no drawdown penalty)"
    )
    period = m.get("decision_period") or ["-", "-"]
    out = [
        f"# Training set: `{run.policy}` from run `{m.get('run_id', run.run_dir.name)}`",
        "",
        f"Written by `harness export --format {summary.fmt}"
        + (f" --split {summary.split}" if summary.split != "none" else "")
        + f"` (harness {__version__}). Rows are in decision-time order.",
        "",
        "## Source",
        f"- run folder: `{run.run_dir}` (experiment `{m.get('name', '?')}`, "
        f"status {m.get('status', '?')}, git commit `{m.get('git_commit')}`)",
        f"- market data: {m.get('data_fingerprint', '?')}; decisions {period[0]} to {period[1]} "
        f"({summary.decisions} decision times)",
        f"- policy: `{run.policy}` ({kind} policy{model})",
        f"- messages rendered from prompt `{run.prompt_id}`: {run.prompt_note}",
        "",
        "## Files",
        _files_table(summary),
        "",
        f"Rows per action count {summary.counted_action}.",
    ]
    if summary.not_exported:
        out.append(
            "Not exported: "
            + "; ".join(f"{n} decisions ({r})" for r, n in summary.not_exported.items())
            + "."
        )
    out += [
        "",
        "## Reward",
        f"{_REWARD_TEXT[run.reward_kind]}{penalty}. DO_NOTHING earns 0. Units: "
        f"{run.reward_units}. Computed by `harness.experiments.rewards.{run.reward_kind}` from the run's "
        "`labels.parquet` (`reward` column); the best action in hindsight is the highest "
        "reward over every candidate and DO_NOTHING (ties: first in candidate order).",
        "",
        "## Split",
    ]
    if summary.split == "walk-forward":
        out.append(
            f"Walk-forward by decision time: the last {validation_fraction:.0%} of decision times "
            f"are validation (from {_when(summary.validation_start)}). Training keeps only "
            f"decisions more than the longest trade's life ({_days(summary.longest_trade)}, max "
            "expiry - decision time over every label) before it, so every training label has "
            "settled before the first validation decision. Gap between the last training and "
            f"the first validation decision: {_days(summary.gap)}; {summary.gap_dropped} "
            "decisions in the gap are in neither split."
        )
    else:
        out.append(
            "None: one file with every decision. Labels of neighbouring decisions overlap in "
            "time (each trade lives until its expiry); use `--split walk-forward` for a "
            "validation set without leakage."
        )
    key = "tabular" if summary.fmt in TABULAR_FORMATS else summary.fmt
    out += [
        "",
        "## Schema",
        _SCHEMAS[key],
        "",
        "## Config of the run",
        "```yaml",
        run.config_text.rstrip(),
        "```",
        "",
    ]
    return "\n".join(out)
