"""Rows for online RL trainers: TRL GRPO (`grpo`, JSON lines) and verl (`verl`, Parquet).

Both carry the exact prompt messages the policy saw and the reward of every action at that
decision; the shipped `reward.py` (harness.training.reward_module) turns a sampled completion
into its reward. A GRPO row is TRL's conversational prompt-only shape: `prompt` (messages) plus
columns that GRPOTrainer hands to reward functions by name. A verl row follows verl's RL dataset
layout (`data_source`, `prompt`, `ability`, `reward_model` with `ground_truth`, `extra_info`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness.timestamps import to_utc
from harness.training.dataset import DO_NOTHING_REWARD, TrainingExample

DO_NOTHING = "DO_NOTHING"
DATA_SOURCE = "harness/covered_call"
ABILITY = "covered_call_trading"

_MSG = pa.struct([("role", pa.string()), ("content", pa.string())])
VERL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(_MSG)),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("split", pa.string()),
                    ("index", pa.int64()),
                    ("decision_time", pa.string()),
                    ("prompt_id", pa.string()),
                    ("reward_units", pa.string()),
                    ("best_answer", pa.string()),
                    ("best_reward", pa.float64()),
                ]
            ),
        ),
    ]
)


def prompt_messages(example: TrainingExample) -> list[dict[str, str]]:
    """The [system, user] messages the policy was sent at this decision."""
    assert example.system_prompt is not None and example.user_prompt is not None
    return [
        {"role": "system", "content": example.system_prompt},
        {"role": "user", "content": example.user_prompt},
    ]


def candidate_rewards(example: TrainingExample) -> list[dict[str, Any]]:
    """The reward table: one {"answer", "reward"} per candidate (name as shown), then DO_NOTHING."""
    table = [{"answer": c.name_in_prompt, "reward": c.reward} for c in example.candidates]
    table.append({"answer": DO_NOTHING, "reward": DO_NOTHING_REWARD})
    return table


def best_answer(example: TrainingExample) -> str:
    """The best action in hindsight as an answer: the candidate's shown name, or DO_NOTHING."""
    name = example.best_instrument_name
    return DO_NOTHING if name is None else example.candidate(name).name_in_prompt


def grpo_row(example: TrainingExample, split: str, reward_units: str) -> dict[str, Any]:
    """One TRL GRPO row (conversational prompt-only, plus the columns reward functions read)."""
    return {
        "prompt": prompt_messages(example),
        "candidate_rewards": candidate_rewards(example),
        "best_action": example.best_action,
        "best_answer": best_answer(example),
        "best_reward": example.best_reward,
        "reward_units": reward_units,
        "decision_time": to_utc(example.decision_time).isoformat(),
        "prompt_id": example.prompt_id,
        "split": split,
    }


def verl_row(example: TrainingExample, split: str, reward_units: str, index: int) -> dict[str, Any]:
    """One verl row; `reward_model.ground_truth` is the reward table as JSON text."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": prompt_messages(example),
        "ability": ABILITY,
        "reward_model": {
            "style": "rule",
            "ground_truth": json.dumps(candidate_rewards(example), allow_nan=False),
        },
        "extra_info": {
            "split": split,
            "index": index,
            "decision_time": to_utc(example.decision_time).isoformat(),
            "prompt_id": example.prompt_id,
            "reward_units": reward_units,
            "best_answer": best_answer(example),
            "best_reward": example.best_reward,
        },
    }


def write_rows(path: Path, fmt: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write grpo rows as JSON lines or verl rows as Parquet."""
    if fmt == "verl":
        pq.write_table(pa.Table.from_pylist(list(rows), schema=VERL_SCHEMA), path)
        return
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")


def read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Read grpo/verl rows back."""
    if fmt == "verl":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _answer(action: str, name: str | None) -> str:
    return json.dumps({"action": action, "instrument_name": name, "rationale": "check"})


def check_rows(
    path: Path, fmt: str, examples: Sequence[TrainingExample], reward: ModuleType
) -> list[str]:
    """Problems of a written grpo/verl file, each as 'where: what' (empty when it is right).

    Beyond the shape, the shipped reward module must score every action of every row as the
    reward table says, and an unparseable answer as None (grpo) or below every action (verl).
    """
    rows = read_rows(path, fmt)
    if len(rows) != len(examples):
        return [f"{path.name}: {len(rows)} rows written, {len(examples)} expected"]
    problems: list[str] = []
    for i, (row, e) in enumerate(zip(rows, examples, strict=True), 1):
        where = f"{path.name} row {i}"
        if row["prompt"] != prompt_messages(e):
            problems.append(f"{where}: prompt differs from the messages the policy saw")
        if fmt == "grpo":
            table = row["candidate_rewards"]
        else:
            table = json.loads(row["reward_model"]["ground_truth"])
            if row["extra_info"]["index"] != i - 1 or row["data_source"] != DATA_SOURCE:
                problems.append(f"{where}: extra_info.index or data_source is wrong")
        if table != candidate_rewards(e):
            problems.append(f"{where}: reward table differs from the example's rewards")
            continue
        if not all(math.isfinite(r["reward"]) for r in table):
            problems.append(f"{where}: a reward is NaN or infinite")
        for c in e.candidates:
            got = _score(reward, fmt, _answer("SELL_CALL", c.name_in_prompt), table)
            if got != c.reward:
                problems.append(
                    f"{where}: reward.py scores {c.name_in_prompt} {got}, not {c.reward}"
                )
        if _score(reward, fmt, _answer(DO_NOTHING, None), table) != DO_NOTHING_REWARD:
            problems.append(f"{where}: reward.py does not score DO_NOTHING as 0")
        bad = _score(reward, fmt, "no answer here", table)
        if fmt == "grpo" and bad is not None:
            problems.append(f"{where}: reward.py scores an unparseable answer {bad}, not None")
        if fmt == "verl" and not (bad is not None and bad < min(r["reward"] for r in table)):
            problems.append(f"{where}: reward.py does not score an unparseable answer lowest")
    return problems


def _score(reward: ModuleType, fmt: str, text: str, table: list[dict[str, Any]]) -> float | None:
    if fmt == "grpo":
        return reward.covered_call_reward([[{"role": "assistant", "content": text}]], [table])[0]
    return reward.compute_score(DATA_SOURCE, text, json.dumps(table), None)
