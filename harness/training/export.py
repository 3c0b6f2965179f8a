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
  reward as fields a grader can read;
- `grpo` (TRL GRPOTrainer, prompt-only rows with a reward table) and `verl` (verl's Parquet RL
  layout), each shipped with `reward.py` (harness.training.reward_module).
The chat formats use the policy's prompt if it is an LLM policy, else `covered_call_v1`;
decisions that offered no candidate are left out of them (a policy is never asked then).

Files: `data.<ext>` without a split, `train.<ext>`, `validation.<ext>` (and `test.<ext>`) with
`walk-forward`; every export folder gets a `README.md` dataset card with Hub YAML front matter. The written files are read back and
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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness import __version__, strict_json
from harness.experiments.config import ConfigError, ExperimentConfig, LLMPolicyEntry, load_config
from harness.experiments.markets import build_market
from harness.experiments.rewards import REWARD_UNITS
from harness.llm.anonymize import Anchor, AnonymizedView, PlainView
from harness.llm.contract import LLMAnswer, validate_answer
from harness.llm.prompts import load_prompt
from harness.simulator import CoveredCallSimulator
from harness.timestamps import to_utc
from harness.training.card import features_yaml, harness_commit, render_card, size_category
from harness.training.dataset import (
    DEFAULT_PROMPT,
    DO_NOTHING_REWARD,
    STATE_FEATURES,
    CandidateExample,
    Option,
    TrainingExample,
    View,
    build_examples,
    check_fractions,
    preference_pair,
    walk_forward_split,
)
from harness.training.reward_module import REWARD_FILE, load_reward_module, write_reward_module
from harness.training.rl import (
    DATA_SOURCE,
    check_rows,
    grpo_row,
    prompt_messages,
    verl_row,
    write_rows,
)

FORMATS: tuple[str, ...] = (
    "parquet",
    "csv",
    "jsonl",
    "openai-chat",
    "preference",
    "trl-preference",
    "rft",
    "grpo",
    "verl",
)
TABULAR_FORMATS: tuple[str, ...] = ("parquet", "csv", "jsonl")
RL_FORMATS: tuple[str, ...] = ("grpo", "verl")  # shipped with reward.py
SPLITS: tuple[str, ...] = ("none", "walk-forward")
TARGETS: tuple[str, ...] = ("oracle", "policy")
CARD = "README.md"
METADATA = "export.json"  # machine-readable provenance: format, policy, reward kind and units

_EXT = {"parquet": "parquet", "csv": "csv", "verl": "parquet"}  # the others are JSON lines
_STEMS = ("data", "train", "validation", "test")
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
    anonymized: bool = False
    cites_history: bool = False
    policy_type: str = "rule"  # the config entry's type: rule, llm, model, ...  # the prompt shows history hints, so rationales cite them


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
        note = (
            f"`{DEFAULT_PROMPT}` (a {entry.type} policy has no prompt; the default LLM prompt "
            "is used)"
        )
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
        anonymized=isinstance(entry, LLMPolicyEntry) and entry.anonymize,
        policy_type=entry.type,
        cites_history="hist_" in template.user_source + template.system_source,
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
_CANDIDATE_TYPES = {
    "instrument_name": _STR,
    "name_in_prompt": _STR,
    "expiry": _TS,
    "hist_count": pa.int32(),
}
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


def _write_csv(path: Path, examples: Sequence[TrainingExample], width: int | None = None) -> None:
    """CSV with `width` candidate column groups (default: the most any row has)."""
    if width is None:
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
def _signed(value: float | None, scale: float, unit: str, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * scale:+.{digits}f}{unit}"


def _rationale(example: TrainingExample, option: Option, cites_history: bool = False) -> str:
    """The fields the prompts ask the model to cite, known at the decision (never the outcome).

    Every shipped prompt asks for the IV - RV spread and the trend; a sale adds the candidate's
    premium, days, delta and strike distance, and its history hint when the prompt shows one.
    """
    st = example.state
    market = (
        f"IV - RV spread {_signed(st.get('iv_rv_spread'), 100, ' vol points')}, trend "
        f"{_signed(st.get('return_1d'), 100, '%', 2)} over 1 day and "
        f"{_signed(st.get('return_7d'), 100, '%', 2)} over 7 days"
    )
    if option.instrument_name is None:
        return f"{market}: no candidate pays enough for the risk, so keep the coins uncovered."
    c = example.candidate(option.instrument_name)
    text = (
        f"{market}: sell {c.name_in_prompt}, premium {c.premium_pct:.2f}% of spot for "
        f"{c.dte_days:.1f} days at delta {c.delta:.2f}, strike {c.strike_distance_pct:+.1f}% "
        "from spot"
    )
    if cites_history:
        text += (
            f"; similar settled calls averaged {c.hist_reward:+.1f} bps over {c.hist_count}"
            if c.hist_count and c.hist_reward is not None
            else "; no similar call has settled yet"
        )
    return text + "."


def answer_json(example: TrainingExample, option: Option, cites_history: bool = False) -> str:
    """`option` as the answer contract's JSON, naming the candidate as the prompt shows it."""
    name = None
    if option.instrument_name is not None:
        name = example.candidate(option.instrument_name).name_in_prompt
    answer = {
        "action": option.action,
        "instrument_name": name,
        "rationale": _rationale(example, option, cites_history),
    }
    return json.dumps(answer, ensure_ascii=False)


@dataclass(frozen=True)
class _Opts:
    """What shapes the rows of one export beyond the examples."""

    reward_kind: str
    reward_units: str
    target: str = "oracle"  # openai-chat: the best action, or the policy's own valid answers
    cites_history: bool = False
    csv_width: int | None = None  # candidate column groups of every csv split (same columns)


def _prompt_messages(example: TrainingExample) -> list[dict[str, str]]:
    return prompt_messages(example)


def _assistant(example: TrainingExample, option: Option, opts: _Opts) -> dict[str, str]:
    return {"role": "assistant", "content": answer_json(example, option, opts.cites_history)}


def _target(example: TrainingExample, opts: _Opts) -> Option | None:
    """The SFT target: the best action, or the policy's own answer (None when it was invalid)."""
    if opts.target == "oracle":
        return example.best
    return example.chosen if example.valid else None


def _chat_row(example: TrainingExample, opts: _Opts) -> dict[str, Any] | None:
    target = _target(example, opts)
    if target is None:
        return None
    return {"messages": [*_prompt_messages(example), _assistant(example, target, opts)]}


def _dpo_row(example: TrainingExample, opts: _Opts) -> dict[str, Any] | None:
    pair = preference_pair(example)
    if pair is None:
        return None
    return {
        "input": {"messages": _prompt_messages(example)},
        "preferred_output": [_assistant(example, pair.preferred, opts)],
        "non_preferred_output": [_assistant(example, pair.rejected, opts)],
    }


def _trl_row(example: TrainingExample, opts: _Opts) -> dict[str, Any] | None:
    pair = preference_pair(example)
    if pair is None:
        return None
    return {
        "prompt": _prompt_messages(example),
        "chosen": [_assistant(example, pair.preferred, opts)],
        "rejected": [_assistant(example, pair.rejected, opts)],
    }


def _rft_row(example: TrainingExample, opts: _Opts) -> dict[str, Any]:
    rewards = {c.name_in_prompt: c.reward for c in example.candidates}
    rewards["DO_NOTHING"] = DO_NOTHING_REWARD
    best = example.best
    return {
        "messages": _prompt_messages(example),
        "decision_time": _iso(example.decision_time),
        "reward_kind": opts.reward_kind,
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


def _check_chat_file(
    path: Path, fmt: str, examples: Sequence[TrainingExample], opts: _Opts
) -> None:
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
            target = _target(e, opts)
            want = target.reward if target is not None else math.nan
            if not math.isclose(_reward_of_answer(e, answer), want, abs_tol=1e-9):
                raise _fail(where, f"assistant answer is not the target ({opts.target}) action")
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
    split: str  # all | train | validation | test
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
    test_start: pd.Timestamp | None = None
    test_gap: pd.Timedelta | None = None
    reward_module: Path | None = None  # reward.py of grpo/verl exports

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
            test = (
                f"; test from {_when(self.test_start)} (gap {_days(self.test_gap)})"
                if self.test_start is not None
                else ""
            )
            lines.append(
                f"  walk-forward: validation from {_when(self.validation_start)}; gap "
                f"{_days(self.gap)} > longest trade {_days(self.longest_trade)}{test}; "
                f"{self.gap_dropped} decisions in the gaps left out"
            )
        for reason, n in self.not_exported.items():
            lines.append(f"  not exported: {n} decisions ({reason})")
        if self.reward_module is not None:
            lines.append(f"  reward module: {self.reward_module}")
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
    ours = {CARD, METADATA, REWARD_FILE} | {
        f"{s}.{e}" for s in _STEMS for e in ("parquet", "csv", "jsonl")
    }
    others = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if others:
        raise ExportError(
            f"{out}: holds files an export does not write ({', '.join(others[:5])}); "
            "export into a new or empty folder"
        )
    for name in ours:  # a re-export replaces the previous one whole, whatever its format
        (out / name).unlink(missing_ok=True)


RowFn = Callable[[TrainingExample, _Opts], dict[str, Any] | None]
_NO_PROMPT = "no candidate was offered, so the policy was not asked"


def _rows(
    fmt: str, examples: Sequence[TrainingExample], opts: _Opts, split: str
) -> tuple[list[TrainingExample], list[dict[str, Any]], Counter[str]]:
    """Rows of a format and the examples they came from; counts of decisions left out and why."""
    if fmt in TABULAR_FORMATS:
        return list(examples), [], Counter()
    if fmt in RL_FORMATS:
        kept = [e for e in examples if e.user_prompt is not None]
        left = Counter({_NO_PROMPT: len(examples) - len(kept)} if len(kept) < len(examples) else {})
        if fmt == "grpo":
            rows = [grpo_row(e, split, opts.reward_units) for e in kept]
        else:
            rows = [verl_row(e, split, opts.reward_units, i) for i, e in enumerate(kept)]
        return kept, rows, left
    make: RowFn = {
        "openai-chat": _chat_row,
        "preference": _dpo_row,
        "trl-preference": _trl_row,
        "rft": _rft_row,
    }[fmt]
    kept, rows, left_out = [], [], Counter[str]()
    for e in examples:
        if e.user_prompt is None:
            left_out[_NO_PROMPT] += 1
            continue
        row = make(e, opts)
        if row is None:
            reason = (
                "the policy's answer was invalid, so there is no target"
                if fmt == "openai-chat"
                else "every action had the same reward: no preference"
            )
            left_out[reason] += 1
            continue
        kept.append(e)
        rows.append(row)
    return kept, rows, left_out


def _target_action(fmt: str, example: TrainingExample, opts: _Opts) -> str:
    """The action a row teaches (tabular: what the policy did)."""
    if fmt in TABULAR_FORMATS or (fmt == "openai-chat" and opts.target == "policy"):
        return example.action
    return example.best_action


def balance(
    fmt: str,
    examples: Sequence[TrainingExample],
    rows: Sequence[dict[str, Any]],
    opts: _Opts,
    max_share: float,
) -> tuple[list[TrainingExample], list[dict[str, Any]], int]:
    """Cap the majority target action at `max_share` of the rows by dropping majority rows.

    The kept majority rows are spread evenly over time (deterministic). Returns the kept
    examples and rows and how many rows were dropped.
    """
    actions = [_target_action(fmt, e, opts) for e in examples]
    counts = Counter(actions)
    if len(examples) == 0 or max(counts.values()) / len(examples) <= max_share:
        return list(examples), list(rows), 0
    major = counts.most_common(1)[0][0]
    minority = len(examples) - counts[major]
    if minority == 0:
        raise ExportError(
            f"--balance {max_share}: every row's target is {major}, so capping it leaves nothing; "
            "export without --balance or from a run where both actions are targets"
        )
    keep_major = math.floor(minority * max_share / (1.0 - max_share))
    major_idx = [i for i, a in enumerate(actions) if a == major]
    picks = np.unique(np.linspace(0, len(major_idx) - 1, keep_major).round().astype(int))
    keep = sorted({major_idx[i] for i in picks} | {i for i, a in enumerate(actions) if a != major})
    kept_rows = [rows[i] for i in keep] if rows else []
    return [examples[i] for i in keep], kept_rows, len(examples) - len(keep)


def _write_file(
    path: Path,
    fmt: str,
    examples: Sequence[TrainingExample],
    rows: Sequence[dict[str, Any]],
    opts: _Opts,
) -> None:
    """Write one split's rows, then read the file back and check it (ExportValidationError)."""
    if fmt == "parquet":
        table = pa.Table.from_pylist([_parquet_row(e) for e in examples], schema=PARQUET_SCHEMA)
        pq.write_table(table, path)
    elif fmt == "csv":
        _write_csv(path, examples, opts.csv_width)
    elif fmt in RL_FORMATS:
        write_rows(path, fmt, rows)
    else:
        rows = [tabular_row(e) for e in examples] if fmt == "jsonl" else rows
        with path.open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    if fmt in TABULAR_FORMATS:
        _check_tabular_file(path, examples)
    elif fmt in RL_FORMATS:
        problems = check_rows(path, fmt, examples, load_reward_module(path.parent / REWARD_FILE))
        if problems:
            raise _fail(str(path), "; ".join(problems[:3]))
    else:
        _check_chat_file(path, fmt, examples, opts)


def _counted_action(fmt: str, target: str) -> str:
    if fmt in TABULAR_FORMATS:
        return "the policy's action"
    if fmt in ("preference", "trl-preference"):
        return "the preferred action (the best in hindsight)"
    if fmt == "openai-chat" and target == "policy":
        return "the policy's own valid answer (the training target)"
    if fmt == "openai-chat":
        return "the best action in hindsight (the training target)"
    return "the best action in hindsight"


def _by_action(fmt: str, examples: Sequence[TrainingExample], opts: _Opts) -> dict[str, int]:
    counts = Counter(_target_action(fmt, e, opts) for e in examples)
    return {a: counts.get(a, 0) for a in ("SELL_CALL", "DO_NOTHING")}


def _check_options(
    fmt: str,
    split: str,
    validation_fraction: float,
    test_fraction: float,
    target: str,
    max_share: float | None,
) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if split not in SPLITS:
        raise ExportError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    try:
        check_fractions(validation_fraction, test_fraction)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if target != "oracle" and fmt != "openai-chat":
        raise ExportError(
            f"--target {target} applies to openai-chat (supervised targets); {fmt} rows are "
            "defined by the rewards"
        )
    if max_share is not None and not (isinstance(max_share, int | float) and 0.5 <= max_share < 1):
        raise ExportError(
            f"--balance must be a share in [0.5, 1) (the majority action's largest share), "
            f"got {max_share!r}"
        )


def write_export(
    run: RunExamples,
    *,
    fmt: str,
    out: str | Path,
    split: str = "none",
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    target: str = "oracle",
    max_share: float | None = None,
) -> ExportSummary:
    """Write `run`'s examples in `fmt` to the folder `out` (splits, card, reward.py), then check.

    `split="walk-forward"`: train / validation (`validation_fraction` of decision times) / test
    (`test_fraction`, 0 = none), purged by the longest trade's life. `target` (openai-chat):
    `oracle` = the best action in hindsight, `policy` = the policy's own valid answers.
    `max_share` caps the majority target action's share of the train rows (`--balance`).
    """
    _check_options(fmt, split, validation_fraction, test_fraction, target, max_share)
    check_examples(run.examples)
    out = Path(out)
    width = max((len(e.candidates) for e in run.examples), default=0)
    opts = _Opts(run.reward_kind, run.reward_units, target, run.cites_history, width)
    parts: list[tuple[str, list[TrainingExample]]]
    wf = None
    if split == "walk-forward":
        try:
            wf = walk_forward_split(run.examples, validation_fraction, test_fraction)
        except ValueError as exc:
            raise ExportError(f"{run.run_dir}: {exc}") from None
        parts = [("train", wf.train), ("validation", wf.validation)]
        if wf.test:
            parts.append(("test", wf.test))
    else:
        parts = [("all", sorted(run.examples, key=lambda e: e.decision_time))]
    _prepare_out(out)
    reward_path = write_reward_module(out) if fmt in RL_FORMATS else None
    files = []
    left_out: Counter[str] = Counter()
    for name, examples in parts:
        path = out / f"{'data' if name == 'all' else name}.{_ext(fmt)}"
        kept, rows, skipped = _rows(fmt, examples, opts, name)
        if max_share is not None and name in ("train", "all"):
            kept, rows, dropped = balance(fmt, kept, rows, opts, max_share)
            if dropped:
                skipped[f"--balance {max_share:g}: majority action capped in {name}"] += dropped
        _write_file(path, fmt, kept, rows, opts)
        left_out.update(skipped)
        times = [to_utc(e.decision_time) for e in kept]
        files.append(
            ExportedFile(
                path=path,
                split=name,
                rows=len(kept),
                by_action=_by_action(fmt, kept, opts),
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
        counted_action=_counted_action(fmt, target),
        not_exported=dict(left_out),
        validation_start=wf.validation_start if wf else None,
        longest_trade=wf.longest_trade if wf else None,
        gap=wf.gap if wf else None,
        gap_dropped=wf.dropped if wf else 0,
        test_start=wf.test_start if wf else None,
        test_gap=wf.test_gap if wf else None,
        reward_module=reward_path,
    )
    metadata = {
        "format": fmt,
        "policy": run.policy,
        "run_id": run.manifest.get("run_id", run.run_dir.name),
        "run_dir": str(run.run_dir),
        "underlyings": sorted({e.underlying for e in run.examples}),
        "reward_kind": run.reward_kind,
        "drawdown_penalty": run.drawdown_penalty,
        "reward_units": run.reward_units,
        "prompt_id": run.prompt_id,
        "split": split,
        "files": {f.split: f.path.name for f in files},
        "longest_trade_days": None if wf is None else wf.longest_trade / pd.Timedelta(days=1),
        "harness_version": __version__,
    }
    (out / METADATA).write_text(strict_json.dumps(metadata, indent=2) + "\n")
    summary.card.write_text(
        dataset_card(
            run,
            summary,
            validation_fraction,
            test_fraction,
            target,
            max_share,
            _schema_of(fmt, width),
        )
    )
    return summary


def export_run(
    run_dir: str | Path,
    *,
    fmt: str,
    out: str | Path,
    policy: str | None = None,
    split: str = "none",
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    target: str = "oracle",
    max_share: float | None = None,
) -> ExportSummary:
    """Export `policy`'s decisions (default: the baseline) of a run folder as `fmt` into `out`."""
    _check_options(fmt, split, validation_fraction, test_fraction, target, max_share)
    run = load_run(run_dir, policy)
    return write_export(
        run,
        fmt=fmt,
        out=out,
        split=split,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        target=target,
        max_share=max_share,
    )


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
_TASKS = {
    "tabular": ["tabular-regression", "tabular-classification"],
    "chat": ["text-generation"],
    "rl": ["text-generation", "reinforcement-learning"],
}


def _schema(fmt: str) -> str:
    return "tabular" if fmt in TABULAR_FORMATS else fmt


def _schema_of(fmt: str, width: int) -> pa.Schema | None:
    """The Arrow schema of a schemaless file format (jsonl, csv) for the card; else None."""
    as_text = {"decision_time": _STR, "expiry": _STR}
    if fmt == "jsonl":
        cand = pa.struct([(f.name, as_text.get(f.name, f.type)) for f in CANDIDATE_ARROW])
        return pa.schema(
            [
                (f.name, pa.list_(cand) if f.name == "candidates" else as_text.get(f.name, f.type))
                for f in PARQUET_SCHEMA
            ]
        )
    if fmt == "csv":
        flat = [
            (f.name, as_text.get(f.name, f.type)) for f in PARQUET_SCHEMA if f.name != "candidates"
        ]
        for i in range(1, width + 1):
            for f in CANDIDATE_ARROW:
                # empty cells of rows with fewer candidates read as NaN: numbers are float64 here
                t = _STR if f.type in (_STR, _TS) else _F64
                flat.append((f"candidate_{i}_{f.name}", t))
        return pa.schema(flat)
    return None


def dataset_card(
    run: RunExamples,
    summary: ExportSummary,
    validation_fraction: float,
    test_fraction: float = 0.0,
    target: str = "oracle",
    max_share: float | None = None,
    schema: pa.Schema | None = None,
) -> str:
    """The README.md of an export folder (templates/dataset_card.md.j2), Hub front matter first."""
    m = run.manifest
    fmt = summary.fmt
    command = f"harness export --format {fmt}"
    if summary.split != "none":
        command += (
            f" --split {summary.split} --validation-fraction {validation_fraction:g}"
            f" --test-fraction {test_fraction:g}"
        )
    if target != "oracle":
        command += f" --target {target}"
    if max_share is not None:
        command += f" --balance {max_share:g}"
    kind = "rl" if fmt in (*RL_FORMATS, "rft") else "tabular" if fmt in TABULAR_FORMATS else "chat"
    underlyings = sorted({e.underlying for e in run.examples}) or ["-"]
    context = {
        "license": "other",
        "pretty_name": f"Covered-call decisions of {run.policy} ({fmt})",
        "task_categories": _TASKS[kind],
        "size_category": size_category(sum(f.rows for f in summary.files)),
        "config_name": fmt,
        "features_yaml": features_yaml(fmt, schema),
        "files": [
            {
                "name": f.path.name,
                "split": f.split,
                "hub_split": "train" if f.split == "all" else f.split,
                "rows": f.rows,
                "sell": f.by_action["SELL_CALL"],
                "nothing": f.by_action["DO_NOTHING"],
                "first": _when(f.first),
                "last": _when(f.last),
            }
            for f in summary.files
        ],
        "policy": run.policy,
        "run_id": m.get("run_id", run.run_dir.name),
        "command": command,
        "harness_version": __version__,
        "harness_commit": harness_commit(),
        "run_dir": str(run.run_dir),
        "experiment": m.get("name", "?"),
        "status": m.get("status", "?"),
        "run_commit": m.get("git_commit"),
        "data_fingerprint": m.get("data_fingerprint", "?"),
        "underlying": ", ".join(underlyings),
        "period": m.get("decision_period") or ["-", "-"],
        "decisions": summary.decisions,
        "policy_kind": "LLM" if run.is_llm else run.policy_type,
        "model": run.model,
        "prompt_id": run.prompt_id,
        "prompt_note": run.prompt_note,
        "anonymization": (
            "on: relative days, prices indexed to 100 at the first decision, candidates as "
            "aliases C1..Cn (`name_in_prompt`)"
            if run.anonymized
            else "off: real dates, USD prices and instrument names"
        ),
        "counted_action": summary.counted_action,
        "target_note": (
            "SFT target: the policy's own valid answers (`--target policy`); invalid answers are "
            "left out."
            if fmt == "openai-chat" and target == "policy"
            else ""
        ),
        "balance_note": (
            f"Balanced (`--balance {max_share:g}`): the majority target action is capped at "
            f"{max_share:.0%} of the train rows; the kept majority rows are spread evenly in time."
            if max_share is not None
            else ""
        ),
        "not_exported": list(summary.not_exported.items()),
        "reward_text": _REWARD_TEXT[run.reward_kind],
        "penalty_text": (
            f" minus {run.drawdown_penalty:g} x `max_drawdown_pct` (the covered position's worst "
            "peak-to-trough fall during the trade, in percent)"
            if run.drawdown_penalty
            else " (no drawdown penalty)"
        ),
        "reward_units": run.reward_units,
        "reward_kind": run.reward_kind,
        "reward_module": summary.reward_module is not None,
        "split": summary.split,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction if summary.test_start is not None else 0.0,
        "validation_start": _when(summary.validation_start),
        "test_start": _when(summary.test_start),
        "longest_trade": _days(summary.longest_trade),
        "gap": _days(summary.gap),
        "test_gap": _days(summary.test_gap),
        "gap_dropped": summary.gap_dropped,
        "schema": _schema(fmt),
        "target_text": (
            "the policy's own valid answer" if target == "policy" else "the best in hindsight"
        ),
        "verl_data_source": DATA_SOURCE,
        "config_text": run.config_text.rstrip(),
    }
    return render_card(context)
