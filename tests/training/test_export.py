"""`harness export`: every format round-trips, splits do not leak, cards match files, errors are loud.

One small run (6 weeks of synthetic BTC; three rules, two LLM policies answered by a local
chat server, one LLM policy skipped for lack of a key) is made once per session.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness.cli import main as cli_main
from harness.llm.contract import LLMAnswer, validate_answer
from harness.timestamps import to_utc
from harness.training.dataset import TrainingExample, preference_pair
from harness.training.export import (
    FORMATS,
    TABULAR_FORMATS,
    ExportError,
    ExportValidationError,
    RunExamples,
    export_run,
    load_run,
    read_examples,
    write_export,
)
from tests.training.conftest import ChatServer


# --------------------------------------------------------------------------- helpers
def card_counts(card: Path) -> dict[str, tuple[int, int, int]]:
    """file -> (rows, SELL_CALL, DO_NOTHING) from the card's files table."""
    out = {}
    for m in re.finditer(
        r"^\| `([^`]+)` \| \w+ \| (\d+) \| (\d+) \| (\d+) \|", card.read_text(), re.M
    ):
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
    return out


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def with_prompt(examples: list[TrainingExample]) -> list[TrainingExample]:
    return [e for e in examples if e.user_prompt is not None]


def reward_of_answer(e: TrainingExample, content: str) -> float:
    answer = LLMAnswer.model_validate_json(content)
    if answer.instrument_name is None:
        return 0.0
    return next(c.reward for c in e.candidates if c.name_in_prompt == answer.instrument_name)


def file_counts(path: Path, fmt: str, examples: list[TrainingExample]) -> tuple[int, int, int]:
    """(rows, SELL_CALL, DO_NOTHING) counted from the file itself."""
    if fmt in TABULAR_FORMATS:
        back = read_examples(path)
        actions = [e.action for e in back]
    elif fmt == "verl":
        answers = [r["extra_info"]["best_answer"] for r in pq.read_table(path).to_pylist()]
        actions = ["DO_NOTHING" if a == "DO_NOTHING" else "SELL_CALL" for a in answers]
    elif fmt == "grpo":
        actions = [r["best_action"] for r in jsonl(path)]
    else:
        rows = jsonl(path)
        if fmt == "openai-chat":
            contents = [r["messages"][-1]["content"] for r in rows]
        elif fmt == "preference":
            contents = [r["preferred_output"][0]["content"] for r in rows]
        elif fmt == "trl-preference":
            contents = [r["chosen"][0]["content"] for r in rows]
        else:
            contents = [json.dumps({"action": r["best_action"]}) for r in rows]
        actions = [json.loads(c)["action"] for c in contents]
    return len(actions), actions.count("SELL_CALL"), actions.count("DO_NOTHING")


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_and_the_card_matches(fmt: str, loaded, tmp_path: Path) -> None:
    run = loaded("iv_rich")
    summary = write_export(run, fmt=fmt, out=tmp_path)
    ext = {"parquet": "parquet", "csv": "csv", "verl": "parquet"}.get(fmt, "jsonl")
    data = tmp_path / f"data.{ext}"
    shipped = ["reward.py"] if fmt in ("grpo", "verl") else []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["README.md", "export.json", data.name, *shipped]
    )
    examples = sorted(run.examples, key=lambda e: e.decision_time)
    if fmt in TABULAR_FORMATS:
        assert read_examples(data) == examples  # exact, floats and times included
    rows = file_counts(data, fmt, examples)
    assert card_counts(tmp_path / "README.md") == {data.name: rows}
    assert (summary.files[0].rows, *summary.files[0].by_action.values()) == rows
    assert str(summary).count(data.name) == 1
    if fmt in ("openai-chat", "rft", "grpo", "verl"):
        assert rows[0] == len(with_prompt(examples))
    if fmt in ("preference", "trl-preference"):
        assert rows[0] == sum(preference_pair(e) is not None for e in with_prompt(examples))


def test_tabular_rows_hold_both_actions_and_full_candidates(loaded, tmp_path: Path) -> None:
    run = loaded("iv_rich")
    write_export(run, fmt="parquet", out=tmp_path / "pq")
    write_export(run, fmt="csv", out=tmp_path / "csv")
    frame = pd.read_parquet(tmp_path / "pq" / "data.parquet")
    assert {"SELL_CALL", "DO_NOTHING"} <= set(frame["action"])
    assert str(frame["decision_time"].dtype) == "datetime64[ns, UTC]"
    assert (frame["n_candidates"] == frame["candidates"].map(len)).all()
    assert frame["reward"].notna().all() and (frame["regret"] >= -1e-9).all()
    nothing = frame[frame["action"] == "DO_NOTHING"]
    assert (nothing["reward"] == 0).all() and nothing["instrument_name"].isna().all()
    flat = pd.read_csv(tmp_path / "csv" / "data.csv")
    width = int(frame["n_candidates"].max())
    assert f"candidate_{width}_reward" in flat.columns
    assert f"candidate_{width + 1}_reward" not in flat.columns
    assert len(flat) == len(frame)


def test_openai_chat_assistant_is_the_best_action_in_the_answer_contract(
    loaded, tmp_path: Path
) -> None:
    run = loaded("always_sell")
    write_export(run, fmt="openai-chat", out=tmp_path)
    rows = jsonl(tmp_path / "data.jsonl")
    examples = with_prompt(sorted(run.examples, key=lambda e: e.decision_time))
    assert len(rows) == len(examples) > 0
    for row, e in zip(rows, examples, strict=True):
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert row["messages"][1]["content"] == e.user_prompt
        content = row["messages"][-1]["content"]
        names = [c.name_in_prompt for c in e.candidates]
        check = validate_answer(content, names)
        assert check.valid, check.reason
        assert check.answer is not None
        assert check.answer.instrument_name == e.best_instrument_name
        assert check.answer.action == e.best_action
        assert reward_of_answer(e, content) == e.best_reward


def test_preference_pairs_prefer_the_higher_reward(loaded, tmp_path: Path) -> None:
    run = loaded("iv_rich")
    write_export(run, fmt="preference", out=tmp_path / "dpo")
    write_export(run, fmt="trl-preference", out=tmp_path / "trl")
    examples = [e for e in with_prompt(run.examples) if preference_pair(e) is not None]
    dpo = jsonl(tmp_path / "dpo" / "data.jsonl")
    trl = jsonl(tmp_path / "trl" / "data.jsonl")
    assert len(dpo) == len(trl) == len(examples) > 0
    rejected_actions = set()
    for d, t, e in zip(dpo, trl, examples, strict=True):
        assert [m["role"] for m in d["input"]["messages"]] == ["system", "user"]
        assert d["input"]["messages"] == t["prompt"]
        assert d["preferred_output"] == t["chosen"] and d["non_preferred_output"] == t["rejected"]
        good = reward_of_answer(e, d["preferred_output"][0]["content"])
        bad = reward_of_answer(e, d["non_preferred_output"][0]["content"])
        assert good >= bad and good == e.best_reward
        if e.reward < e.best_reward:  # the policy's own worse choice is the rejected answer
            assert bad == e.reward
        rejected_actions.add(json.loads(d["non_preferred_output"][0]["content"])["action"])
    assert rejected_actions == {"SELL_CALL", "DO_NOTHING"}


def test_rft_rows_end_with_the_user_turn_and_carry_every_reward(loaded, tmp_path: Path) -> None:
    run = loaded("llm_anon")
    write_export(run, fmt="rft", out=tmp_path)
    rows = jsonl(tmp_path / "data.jsonl")
    examples = with_prompt(sorted(run.examples, key=lambda e: e.decision_time))
    assert len(rows) == len(examples)
    for row, e in zip(rows, examples, strict=True):
        assert [m["role"] for m in row["messages"]] == ["system", "user"]
        assert row["reward_kind"] == "pnl_vs_hodl"
        expected = {c.name_in_prompt: c.reward for c in e.candidates} | {"DO_NOTHING": 0.0}
        assert row["rewards"] == expected
        assert all(re.fullmatch(r"C\d+", k) for k in row["rewards"] if k != "DO_NOTHING")
        assert row["best_reward"] == max(expected.values()) == e.best_reward
        assert to_utc(row["decision_time"]) == to_utc(e.decision_time)


# --------------------------------------------------------------------------- LLM policies
@pytest.mark.parametrize(
    ("policy", "model"),
    [("llm", "fake-plain"), ("llm_anon", "fake-anon"), ("llm_messy", "fake-messy")],
)
def test_user_messages_are_exactly_what_the_policy_sent(
    policy: str, model: str, loaded, run_dir: Path, chat_server: ChatServer, tmp_path: Path
) -> None:
    run = loaded(policy)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert run.prompt_id == manifest["prompt_ids"][policy]
    assert {e.model for e in run.examples} == {model}
    write_export(run, fmt="openai-chat", out=tmp_path)
    rows = jsonl(tmp_path / "data.jsonl")
    exported = [r["messages"][1]["content"] for r in rows]
    assert sorted(exported) == sorted(chat_server.users(model))
    systems = {s for m, s, _ in chat_server.received if m == model}
    assert {r["messages"][0]["content"] for r in rows} == systems
    # the policy's own actions are the ones the server answered
    acted = {e.action for e in run.examples if e.user_prompt is not None}
    assert acted == {"SELL_CALL", "DO_NOTHING"}
    if policy == "llm_anon":
        answers = [json.loads(r["messages"][-1]["content"]) for r in rows]
        names = {a["instrument_name"] for a in answers if a["instrument_name"]}
        assert names and all(re.fullmatch(r"C\d+", n) for n in names)
        assert "BTC-" not in "".join(exported)
    # the GRPO prompts are the very same messages
    write_export(run, fmt="grpo", out=tmp_path / "grpo", split="none")
    grpo = jsonl(tmp_path / "grpo" / "data.jsonl")
    assert [r["prompt"] for r in grpo] == [r["messages"][:2] for r in rows]


def test_a_changed_prompt_is_refused(loaded, run_dir: Path, prompts_dir: Path, run_sim) -> None:
    loaded("llm")  # cached before the edit
    path = prompts_dir / "covered_call_v1.user.j2"
    original = path.read_text()
    try:
        path.write_text(original + "\nThink twice.")
        with pytest.raises(ExportError, match="changed since the run"):
            load_run(run_dir, "llm", simulator=run_sim)
    finally:
        path.write_text(original)


# --------------------------------------------------------------------------- splits
@pytest.mark.parametrize("fmt", ["parquet", "openai-chat", "grpo"])
def test_walk_forward_splits_are_in_time_order_with_a_purge_gap(
    fmt: str, loaded, tmp_path: Path
) -> None:
    run = loaded("iv_rich")
    summary = write_export(run, fmt=fmt, out=tmp_path, split="walk-forward")
    ext = "parquet" if fmt == "parquet" else "jsonl"
    shipped = {"reward.py"} if fmt == "grpo" else set()
    assert {p.name for p in tmp_path.iterdir()} == {
        "README.md",
        "export.json",
        f"train.{ext}",
        f"validation.{ext}",
        f"test.{ext}",
        *shipped,
    }
    by_time = {to_utc(e.decision_time): e for e in run.examples}
    if fmt == "parquet":
        parts = [read_examples(tmp_path / f"{s}.parquet") for s in ("train", "validation", "test")]
    else:
        pattern = re.compile(r"Decision time: (\S+ \S+) UTC")

        def examples_of(path: Path) -> list[TrainingExample]:
            key = "prompt" if fmt == "grpo" else "messages"
            times = [pattern.search(r[key][1]["content"]).group(1) for r in jsonl(path)]
            return [by_time[to_utc(t)] for t in times]

        parts = [examples_of(tmp_path / f"{s}.jsonl") for s in ("train", "validation", "test")]
    assert all(parts)
    life = max(
        to_utc(c.expiry) - to_utc(e.decision_time) for e in run.examples for c in e.candidates
    )
    for earlier, later in itertools.pairwise(parts):
        start = min(to_utc(e.decision_time) for e in later)
        assert start - max(to_utc(e.decision_time) for e in earlier) >= life
        assert max(to_utc(c.expiry) for e in earlier for c in e.candidates) < start  # purged
    assert summary.gap is not None and summary.gap >= summary.longest_trade == life
    assert summary.test_gap is not None and summary.test_gap >= life
    n_times = len(run.examples)
    test_start = min(to_utc(e.decision_time) for e in parts[2])
    assert sum(to_utc(e.decision_time) >= test_start for e in run.examples) == pytest.approx(
        0.2 * n_times, abs=1
    )
    counts = card_counts(tmp_path / "README.md")
    for name, examples in zip(("train", "validation", "test"), parts, strict=True):
        assert counts[f"{name}.{ext}"] == file_counts(tmp_path / f"{name}.{ext}", fmt, examples)


def test_validation_fraction_is_configurable(loaded, tmp_path: Path) -> None:
    run = loaded("iv_rich")
    small = write_export(
        run, fmt="jsonl", out=tmp_path / "a", split="walk-forward", test_fraction=0.0
    )
    big = write_export(
        run,
        fmt="jsonl",
        out=tmp_path / "b",
        split="walk-forward",
        validation_fraction=0.4,
        test_fraction=0.0,
    )
    assert big.files[1].rows > small.files[1].rows and big.files[0].rows < small.files[0].rows
    with pytest.raises(ExportError, match="no training decisions"):
        write_export(
            run,
            fmt="jsonl",
            out=tmp_path / "c",
            split="walk-forward",
            validation_fraction=0.8,
            test_fraction=0.0,
        )
    for bad in (1.5, -1, 0, 1.0):
        with pytest.raises(ExportError, match="validation_fraction must be"):
            write_export(run, fmt="jsonl", out=tmp_path / "d", validation_fraction=bad)
    for bad in (1.5, -0.1, 1.0):
        with pytest.raises(ExportError, match="test_fraction must be"):
            write_export(run, fmt="jsonl", out=tmp_path / "d", test_fraction=bad)
    with pytest.raises(ExportError, match="must be below 1"):
        write_export(
            run, fmt="jsonl", out=tmp_path / "d", validation_fraction=0.6, test_fraction=0.4
        )
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_cli_rejects_bad_fractions_with_a_clear_message(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for flag, value in (
        ("--validation-fraction", "1.5"),
        ("--validation-fraction", "-1"),
        ("--validation-fraction", "0"),
        ("--test-fraction", "1.5"),
    ):
        code = cli_main(
            [
                "export",
                str(run_dir),
                "--format",
                "jsonl",
                "--out",
                str(tmp_path / "x"),
                "--split",
                "walk-forward",
                flag,
                value,
            ]
        )
        assert code == 2
        assert "fraction must be" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- CLI and errors
def test_cli_exports_a_run(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli_main(
        ["export", str(run_dir), "--format", "trl-preference", "--out", str(tmp_path / "x")]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "always_sell" in printed and "data.jsonl" in printed
    assert (tmp_path / "x" / "README.md").is_file()


def test_the_default_policy_is_the_baseline_and_export_run_writes(run_dir, tmp_path) -> None:
    summary = export_run(run_dir, fmt="openai-chat", out=tmp_path)
    assert summary.policy == "always_sell"
    assert "always_sell" in (tmp_path / "README.md").read_text()


def test_a_skipped_or_unknown_policy_names_the_run_and_the_choices(run_dir: Path) -> None:
    with pytest.raises(ExportError) as err:
        load_run(run_dir, "llm_nokey")
    msg = str(err.value)
    assert str(run_dir) in msg and "skipped" in msg and "always_sell, iv_rich, oracle" in msg
    with pytest.raises(ExportError, match=r"not in this run.*iv_rich"):
        load_run(run_dir, "nope")


def test_bad_arguments_and_folders_fail_clearly(run_dir: Path, loaded, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown format 'xml'"):
        export_run(run_dir, fmt="xml", out=tmp_path / "o")
    with pytest.raises(ExportError, match="unknown split"):
        export_run(run_dir, fmt="csv", out=tmp_path / "o", split="random")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"notes\.txt"):
        write_export(loaded("iv_rich"), fmt="csv", out=busy)
    # a re-export into its own folder replaces the previous files, whatever their format
    again = tmp_path / "again"
    write_export(loaded("iv_rich"), fmt="csv", out=again)
    write_export(loaded("iv_rich"), fmt="jsonl", out=again)
    assert sorted(p.name for p in again.iterdir()) == ["README.md", "data.jsonl", "export.json"]
    with pytest.raises(ExportError, match="no such run folder"):
        load_run(tmp_path / "missing")


def test_unfinished_or_inconsistent_runs_are_refused(run_dir: Path, run_sim, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("figures", "report.*"))
    labels = pd.read_parquet(broken / "labels.parquet")
    labels.loc[labels["action"] == "SELL_CALL", "reward"] += 1.0
    labels.to_parquet(broken / "labels.parquet", index=False)
    with pytest.raises(ExportError, match="inconsistent"):
        load_run(broken, "always_sell", simulator=run_sim)
    (broken / "manifest.json").unlink()
    with pytest.raises(ExportError, match="did not finish"):
        load_run(broken)


def test_the_exporter_checks_its_own_output(loaded, tmp_path, monkeypatch) -> None:
    import harness.training.export as export

    run = loaded("iv_rich")
    right_answer = export._chat_row

    def wrong_answer(e: TrainingExample, opts: Any) -> dict[str, Any]:
        row = right_answer(e, opts)
        row["messages"][-1]["content"] = json.dumps(
            {"action": "SELL_CALL", "instrument_name": "BTC-1JAN99-1-C", "rationale": ""}
        )
        return row

    monkeypatch.setattr(export, "_chat_row", wrong_answer)
    with pytest.raises(ExportValidationError, match="not one of the candidates"):
        write_export(run, fmt="openai-chat", out=tmp_path / "a")
    monkeypatch.undo()
    bad = run.examples[0].model_copy(update={"reward": float("nan")})
    nan_run = RunExamples(**{**run.__dict__, "examples": [bad, *run.examples[1:]]})
    with pytest.raises(ExportValidationError, match="NaN"):
        write_export(nan_run, fmt="parquet", out=tmp_path / "b")
