"""GRPO / verl exports: the shipped reward.py reproduces the run's rewards, loads in `datasets`.

Uses the session run of conftest.py; `llm_messy` answers like a reasoning model (think blocks,
fences, drafts before the final answer) and sometimes unparseably.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import pytest

from harness.llm import final_answer
from harness.timestamps import to_utc
from harness.training.export import FORMATS, ExportError, write_export
from harness.training.reward_module import (
    embedded_parser,
    load_reward_module,
    parser_source,
    reward_module_source,
)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decisions(run_dir: Path, policy: str) -> dict[str, dict[str, Any]]:
    rows = [json.loads(x) for x in (run_dir / "decisions.jsonl").read_text().splitlines()]
    return {r["decision_time"]: r for r in rows if r["policy"] == policy}


def test_reward_py_embeds_final_answer_py_byte_for_byte(tmp_path: Path) -> None:
    text = reward_module_source()
    assert embedded_parser(text) == Path(final_answer.__file__).read_text(encoding="utf-8")
    assert embedded_parser(text) == parser_source()
    # standard library only: every import of the shipped file is a stdlib module
    imports = [
        line.split()[1].split(".")[0]
        for line in text.splitlines()
        if line.startswith(("import ", "from "))
    ]
    import sys

    assert set(imports) <= sys.stdlib_module_names | {"__future__"}, imports


@pytest.fixture(scope="module")
def messy_grpo(loaded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grpo")
    write_export(loaded("llm_messy"), fmt="grpo", out=out)
    return out


def test_reward_py_rescoring_the_logged_raw_answers_reproduces_the_run(
    messy_grpo: Path, run_dir: Path
) -> None:
    reward = load_reward_module(messy_grpo / "reward.py")
    assert embedded_parser((messy_grpo / "reward.py").read_text()) == parser_source()
    logged = decisions(run_dir, "llm_messy")
    rows = jsonl(messy_grpo / "data.jsonl")
    assert rows
    raws = [logged[r["decision_time"]]["llm"]["raw"] for r in rows]
    tables = [r["candidate_rewards"] for r in rows]
    # one TRL-style call: conversational completions, every other column as keyword arguments
    scores = reward.covered_call_reward(
        [[{"role": "assistant", "content": raw}] for raw in raws],
        candidate_rewards=tables,
        prompts=[r["prompt"] for r in rows],
        best_reward=[r["best_reward"] for r in rows],
        decision_time=[r["decision_time"] for r in rows],
        split=[r["split"] for r in rows],
        completion_ids=[[1, 2]] * len(rows),
    )
    valid = invalid = 0
    for row, score in zip(rows, scores, strict=True):
        d = logged[row["decision_time"]]
        if d["valid"]:
            assert score == d["reward"]  # exactly: same parser, same reward table
            valid += 1
        else:
            assert score is None
            invalid += 1
    assert valid > 10 and invalid > 2
    # plain-string completions score the same
    assert reward.covered_call_reward(raws, tables) == scores
    formats = reward.format_reward(raws, candidate_rewards=tables)
    assert [f > 0 for f in formats] == [s is not None for s in scores]
    assert set(formats) == {reward.FORMAT_VALID_REWARD, reward.FORMAT_INVALID_PENALTY}


def test_grpo_rows_are_trl_prompt_only_rows_with_one_reward_schema(
    messy_grpo: Path, loaded
) -> None:
    run = loaded("llm_messy")
    rows = jsonl(messy_grpo / "data.jsonl")
    by_time = {to_utc(e.decision_time).isoformat(): e for e in run.examples}
    for row in rows:
        e = by_time[row["decision_time"]]
        assert row["prompt"] == [
            {"role": "system", "content": e.system_prompt},
            {"role": "user", "content": e.user_prompt},
        ]
        assert "history:" in e.user_prompt  # the v3 prompt shows the hints
        assert [set(r) for r in row["candidate_rewards"]] == [{"answer", "reward"}] * (
            len(e.candidates) + 1
        )
        assert row["candidate_rewards"][-1] == {"answer": "DO_NOTHING", "reward": 0.0}
        assert row["best_reward"] == max(r["reward"] for r in row["candidate_rewards"])
        assert row["reward_units"] == "USD" and row["split"] == "all"
        assert row["prompt_id"].startswith("covered_call_v3@")


def test_verl_rows_and_compute_score(loaded, run_dir: Path, tmp_path: Path) -> None:
    write_export(loaded("llm_messy"), fmt="verl", out=tmp_path)
    reward = load_reward_module(tmp_path / "reward.py")
    rows = pq.read_table(tmp_path / "data.parquet").to_pylist()
    logged = decisions(run_dir, "llm_messy")
    for i, row in enumerate(rows):
        assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
        assert row["reward_model"]["style"] == "rule" and row["extra_info"]["index"] == i
        table = json.loads(row["reward_model"]["ground_truth"])
        d = logged[row["extra_info"]["decision_time"]]
        score = reward.compute_score(
            row["data_source"],
            d["llm"]["raw"],
            row["reward_model"]["ground_truth"],
            row["extra_info"],
        )
        if d["valid"]:
            assert score == d["reward"]
        else:
            worst = min(r["reward"] for r in table)
            assert score < worst and score == reward.invalid_score(table)


@pytest.mark.parametrize("fmt", FORMATS)
def test_datasets_load_every_config_of_an_export(
    fmt: str, loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "export"
    summary = write_export(loaded("llm_anon"), fmt=fmt, out=out, split="walk-forward")
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: ")
    loaded_ds = datasets.load_dataset(str(out), fmt, cache_dir=str(tmp_path / "hf"))
    assert set(loaded_ds) == {"train", "validation", "test"}
    for f in summary.files:
        assert loaded_ds[f.split].num_rows == f.rows > 0


def test_the_card_states_reward_units_period_underlying_anonymization_gap_version(
    loaded, tmp_path: Path
) -> None:
    from harness import __version__

    run = loaded("llm_anon")
    write_export(run, fmt="grpo", out=tmp_path, split="walk-forward")
    card = (tmp_path / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    for key in ("license:", "task_categories:", "size_categories:", "pretty_name:", "configs:"):
        assert key in front
    assert "config_name: grpo" in front and "path: test.jsonl" in front
    period = run.manifest["decision_period"]
    for text in (
        "Units: USD",
        "drawdown",
        period[0],
        "underlying: BTC",
        "anonymization: on",
        "purge gap",
        f"harness {__version__}, commit",
        "reward.py",
    ):
        assert text in body, text


def test_balance_caps_the_majority_action(loaded, tmp_path: Path) -> None:
    # Its own answers (which action is the majority depends on the prompts' text lengths that
    # the scripted server answers by): one action over 60%, the other present.
    run = loaded("llm")
    kw: dict[str, Any] = {"fmt": "openai-chat", "split": "none", "target": "policy"}
    counts = write_export(run, out=tmp_path / "a", **kw).files[0].by_action
    major, minor = sorted(("SELL_CALL", "DO_NOTHING"), key=lambda a: -counts.get(a, 0))
    assert counts[major] / sum(counts.values()) > 0.6 and counts[minor]
    capped = write_export(run, out=tmp_path / "b", max_share=0.6, **kw)
    f = capped.files[0]
    share = f.by_action[major] / f.rows
    assert 0.5 < share <= 0.6 and f.by_action[minor] == counts[minor]
    assert any("--balance 0.6" in reason for reason in capped.not_exported)
    rows = jsonl(tmp_path / "b" / "data.jsonl")
    assert len(rows) == f.rows
    # deterministic, and still in time order
    again = write_export(run, out=tmp_path / "c", max_share=0.6, **kw)
    assert jsonl(tmp_path / "c" / "data.jsonl") == rows and again.files[0].rows == f.rows
    with pytest.raises(ExportError, match="--balance must be"):
        write_export(run, out=tmp_path / "d", max_share=1.5, **kw)
    with pytest.raises(ExportError, match="leaves nothing"):
        write_export(loaded("always_sell"), out=tmp_path / "e", max_share=0.6, **kw)


def test_card_features_match_what_datasets_derives_from_the_schema() -> None:
    from harness.training.card import yaml_features
    from harness.training.export import PARQUET_SCHEMA

    def canon(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: canon(v) for k, v in x.items()}
        if isinstance(x, list):
            return [canon(v) for v in x]
        return x

    ours = canon(yaml_features(PARQUET_SCHEMA))
    theirs = canon(datasets.Features.from_arrow_schema(PARQUET_SCHEMA)._to_yaml_list())
    assert ours == theirs


def test_target_policy_teaches_the_policys_own_valid_answers(loaded, tmp_path: Path) -> None:
    run = loaded("llm_messy")
    summary = write_export(run, fmt="openai-chat", out=tmp_path, split="none", target="policy")
    rows = jsonl(tmp_path / "data.jsonl")
    asked = [e for e in run.examples if e.user_prompt is not None]
    valid = [e for e in asked if e.valid]
    assert len(rows) == len(valid) < len(asked)
    for row, e in zip(rows, valid, strict=True):
        answer = json.loads(row["messages"][-1]["content"])
        shown = None if e.instrument_name is None else e.candidate(e.instrument_name).name_in_prompt
        assert answer["instrument_name"] == shown
        assert "IV - RV spread" in answer["rationale"] and "over 7 days" in answer["rationale"]
        if shown is not None:
            assert (
                "similar settled calls" in answer["rationale"]
                or "no similar" in answer["rationale"]
            )
    assert any("invalid" in reason for reason in summary.not_exported)
    with pytest.raises(ExportError, match="applies to openai-chat"):
        write_export(run, fmt="grpo", out=tmp_path / "x", target="policy")
