"""Run-vs-run comparison: alignment, changed decisions, paired statistics, rendering, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.reports.compare import compare_runs, render_comparison, write_comparison
from tests.run_fixtures import INVALID_EVERY, LLM, LLM_COST, POLICIES, FakeRun, write_fake_run

CHANGED_AT = (3, 10, 42)


def _pick(run: FakeRun, i: int) -> int | None:
    name = run.rows(LLM)[i]["instrument_name"]
    return None if name is None else run.candidates[i].index(name)


def _different_pick(run: FakeRun, i: int) -> int | None:
    """A choice for decision i that differs from what the LLM chose in run A."""
    current = _pick(run, i)
    return 0 if current is None else None if current == 2 else current + 1


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeRun, FakeRun]:
    root = tmp_path_factory.mktemp("cmp")
    a = write_fake_run(root / "a")
    assert all(i % INVALID_EVERY != INVALID_EVERY - 1 for i in CHANGED_AT)  # overrides apply
    overrides = {i: _different_pick(a, i) for i in CHANGED_AT}
    b = write_fake_run(root / "b", llm_overrides=overrides, prompt_id="covered_call_v2@bbbb2222")
    return a, b


def test_finds_exactly_the_changed_decisions(pair: tuple[FakeRun, FakeRun]) -> None:
    a, b = pair
    cmp = compare_runs(a.path, b.path, policy=LLM)
    (llm,) = cmp.policies
    assert llm.n_aligned == 60 and not llm.only_in_a and not llm.only_in_b
    assert [c.decision_time for c in llm.changed] == [a.times[i] for i in CHANGED_AT]
    for c, i in zip(llm.changed, CHANGED_AT, strict=True):
        ra, rb = a.rows(LLM)[i], b.rows(LLM)[i]
        assert c.choice_a == (ra["instrument_name"] or "DO_NOTHING")
        assert c.choice_b == (rb["instrument_name"] or "DO_NOTHING")
        assert (c.reward_a, c.reward_b) == (ra["reward"], rb["reward"])


def test_mean_change_matches_hand_computation(pair: tuple[FakeRun, FakeRun]) -> None:
    a, b = pair
    llm = compare_runs(a.path, b.path, policy=LLM).policy(LLM)
    deltas = []
    for i in CHANGED_AT:
        k_a, k_b = _pick(a, i), _pick(b, i)
        r_a = 0.0 if k_a is None else a.label_rewards[i, k_a]
        r_b = 0.0 if k_b is None else b.label_rewards[i, k_b]
        deltas.append(r_b - r_a)
    assert llm.mean_change == pytest.approx(sum(deltas) / 60, abs=1e-9)
    assert llm.mean_reward_b - llm.mean_reward_a == pytest.approx(llm.mean_change, abs=1e-9)
    assert llm.ci_low <= llm.mean_change <= llm.ci_high
    assert llm.ci_low < llm.ci_high
    assert llm.wins == sum(d > 0 for d in deltas)
    assert llm.losses == sum(d < 0 for d in deltas)
    assert llm.ties == 60 - llm.wins - llm.losses
    assert llm.block_length == 5  # from comparison.json


def test_prompt_ids_validity_cost_and_cache(pair: tuple[FakeRun, FakeRun]) -> None:
    a, b = pair
    llm = compare_runs(a.path, b.path).policy(LLM)
    assert (llm.prompt_id_a, llm.prompt_id_b) == (
        "covered_call_v1@aaaa1111",
        "covered_call_v2@bbbb2222",
    )
    assert llm.invalid_rate_a == llm.invalid_rate_b == pytest.approx(4 / 60)
    assert llm.cost_a_usd == pytest.approx(30 * LLM_COST)
    assert llm.cost_change_usd == pytest.approx(0.0)
    assert (llm.calls_made_b, llm.served_from_cache_b) == (30, 30)


def test_all_common_policies_when_none_given(pair: tuple[FakeRun, FakeRun]) -> None:
    a, b = pair
    cmp = compare_runs(a.path, b.path)
    assert [p.policy for p in cmp.policies] == list(POLICIES)
    for name in ("always_sell", "iv_rich"):
        p = cmp.policy(name)
        assert p.n_changed == 0 and p.mean_change == 0.0 and p.ties == 60


def test_decisions_in_only_one_run_are_counted(
    pair: tuple[FakeRun, FakeRun], tmp_path: Path
) -> None:
    a, _ = pair
    b = write_fake_run(tmp_path / "b_short", llm_missing_times=(5, 6))
    llm = compare_runs(a.path, b.path).policy(LLM)
    assert llm.n_aligned == 58
    assert llm.only_in_a == (a.times[5], a.times[6]) and llm.only_in_b == ()
    back = compare_runs(b.path, a.path).policy(LLM)
    assert back.only_in_b == (a.times[5], a.times[6])
    md, _ = render_comparison(compare_runs(a.path, b.path))
    assert "Only in A (2): 2024-03-01 20:00, 2024-03-02 00:00" in md


def test_missing_policy_names_the_folder(pair: tuple[FakeRun, FakeRun], tmp_path: Path) -> None:
    a, _ = pair
    rules = write_fake_run(tmp_path / "rules_only", skip_llm=True)
    with pytest.raises(ValueError, match=f"policy 'llm_v1'.*{rules.path}"):
        compare_runs(a.path, rules.path, policy=LLM)
    cmp = compare_runs(a.path, rules.path)
    assert cmp.policies_only_in_a == (LLM,)
    assert [p.policy for p in cmp.policies] == ["always_sell", "iv_rich"]


def test_missing_decisions_file_names_the_folder(
    pair: tuple[FakeRun, FakeRun], tmp_path: Path
) -> None:
    a, _ = pair
    with pytest.raises(ValueError, match=f"{tmp_path}.*decisions.jsonl"):
        compare_runs(a.path, tmp_path)


def test_block_length_falls_back_to_one(tmp_path: Path) -> None:
    a = write_fake_run(tmp_path / "a", block_length=7)
    b = write_fake_run(tmp_path / "b", llm_overrides={3: None, 4: None})
    (b.path / "comparison.json").unlink()
    assert compare_runs(a.path, b.path).policy(LLM).block_length == 7
    (a.path / "comparison.json").unlink()
    assert compare_runs(a.path, b.path).policy(LLM).block_length == 1


def test_different_reward_kinds_refused(pair: tuple[FakeRun, FakeRun], tmp_path: Path) -> None:
    a, _ = pair
    b = write_fake_run(tmp_path / "bps")
    comparison = json.loads((b.path / "comparison.json").read_text())
    (b.path / "comparison.json").write_text(json.dumps({**comparison, "reward_kind": "return_bps"}))
    with pytest.raises(ValueError, match="different rewards"):
        compare_runs(a.path, b.path)


def test_render_and_write(pair: tuple[FakeRun, FakeRun], tmp_path: Path) -> None:
    a, b = pair
    cmp = compare_runs(a.path, b.path)
    md_path, html_path = write_comparison(cmp, tmp_path / "out")
    md, html = md_path.read_text(), html_path.read_text()
    assert (md, html) == render_comparison(cmp)
    assert "covered_call_v1@aaaa1111 → covered_call_v2@bbbb2222" in md
    assert "3 of 60 aligned decisions changed choice" in md
    for i in CHANGED_AT:
        assert pd.Timestamp(a.times[i]).strftime("%Y-%m-%d %H:%M") in md
    llm = cmp.policy(LLM)
    assert f"- llm_v1 in B {'beat' if llm.mean_change > 0 else 'trailed'} A by $" in md
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert np.isfinite(llm.mean_change)


def test_comparison_shows_prompt_diff_and_both_answers(tmp_path: Path) -> None:
    a = write_fake_run(tmp_path / "a")
    b = write_fake_run(tmp_path / "b", prompt_id="covered_call_v2@bbbb2222", llm_overrides={1: 2})
    md, html = render_comparison(compare_runs(a.path, b.path, policy="llm_v1"))
    section = md.split("## llm_v1: prompts and answers behind the changes", 1)[1]
    assert "-You sell weekly covered calls." in section
    assert "+Prompt covered_call_v2@bbbb2222: be careful with calls." in section
    assert '"instrument_name": "BTC-' in section  # both raw answers are shown
    assert "<pre>" in html
