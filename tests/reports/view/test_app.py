"""The viewer's JSON API and pages over real HTTP: runs, run, decisions, decision, transcript,
compare; read-only, no path escapes, no keys shown."""

from __future__ import annotations

import pandas as pd
import requests

from tests.reports.view.conftest import CHANGES, RUN_A, RUN_B, SWEEP, Viewer
from tests.run_fixtures import LLM, POLICIES


def get(viewer: Viewer, path: str, **params: str) -> requests.Response:
    return requests.get(viewer.base + path, params=params, timeout=30)


def test_runs_newest_first_with_sweep_trials(viewer: Viewer) -> None:
    entries = get(viewer, "/api/runs").json()
    assert [e["id"] for e in entries] == [SWEEP, RUN_B, RUN_A]
    sweep = entries[0]
    assert sweep["kind"] == "sweep" and sweep["name"] == "delta_sweep"
    trials = {t["id"]: t for t in sweep["trials"]}
    assert trials[f"{SWEEP}/trials/t-001"]["policy_status"][LLM] == "failed"
    assert trials[f"{SWEEP}/trials/t-002"]["policy_status"][LLM] == "skipped"
    run_a = entries[2]
    assert run_a["status"] == "complete"
    assert run_a["llm_cost_usd"] > 0
    # A failed LLM never counts as a trial's best policy.
    assert trials[f"{SWEEP}/trials/t-001"]["best_portfolio"][0] != LLM


def test_decisions_filters(viewer: Viewer) -> None:
    run = viewer.run_a
    all_rows = get(viewer, "/api/decisions", run=RUN_A).json()
    assert all_rows["total"] == len(run.times)
    disagree = get(viewer, "/api/decisions", run=RUN_A, disagree="1").json()
    by_time: dict[str, set] = {}
    for r in run.decisions:
        by_time.setdefault(r["decision_time"], set()).add(r["instrument_name"])
    assert disagree["total"] == sum(len(v) > 1 for v in by_time.values())
    gap = get(viewer, "/api/decisions", run=RUN_A, policy=LLM, min_gap="300").json()
    expected = [r for r in run.rows(LLM) if r["best_reward"] - r["reward"] >= 300]
    assert gap["total"] == len(expected)
    assert all(row["gap"] >= 300 for row in gap["rows"])


def test_decision_lists_every_candidate_with_its_reward(viewer: Viewer) -> None:
    run = viewer.run_a
    i = 7
    t = run.times[i].isoformat()
    d = get(viewer, "/api/decision", run=RUN_A, time=t).json()
    cands = {c["instrument_name"]: c for c in d["candidates"]}
    assert set(cands) == {"DO_NOTHING", *run.candidates[i]}
    for k, name in enumerate(run.candidates[i]):
        assert abs(cands[name]["reward"] - run.label_rewards[i, k]) < 1e-9
    for p in POLICIES:
        row = next(r for r in run.rows(p) if r["decision_time"] == t)
        assert p in cands[row["instrument_name"] or "DO_NOTHING"]["chosen_by"]
    best = max(d["candidates"], key=lambda c: c["reward"])
    assert d["best_in_hindsight"] == best["instrument_name"] and best["best_in_hindsight"]
    assert d["policies"][LLM]["has_transcript"] is True


def test_transcript_and_compare(viewer: Viewer) -> None:
    t = viewer.run_a.times[3].isoformat()
    tr = get(viewer, "/api/transcript", run=RUN_A, policy=LLM, time=t).json()
    assert tr["records"][0]["request"]["messages"][0]["role"] == "system"
    assert tr["summary"]["prompt_tokens"] == 900
    cmp = get(viewer, "/api/compare", a=RUN_A, b=RUN_B).json()
    llm = next(p for p in cmp["policies"] if p["policy"] == LLM)
    changed_times = {pd.Timestamp(c["decision_time"]) for c in llm["changed"]}
    a_rows = {r["decision_time"]: r for r in viewer.run_a.rows(LLM)}
    b_rows = {r["decision_time"]: r for r in viewer.run_b.rows(LLM)}
    expected = {
        pd.Timestamp(k)
        for k in a_rows
        if a_rows[k]["instrument_name"] != b_rows[k]["instrument_name"]
    }
    assert changed_times == expected and len(expected) <= len(CHANGES)
    assert any(line.startswith("+Prompt covered_call_v2") for line in llm["prompt_diff"])
    assert all(c["answer_a"] and c["answer_b"] for c in llm["changed"])


def test_unknown_and_escaping_ids_are_404(viewer: Viewer) -> None:
    assert get(viewer, "/api/run", id="../../etc").status_code == 404
    assert get(viewer, "/run", id="/etc").status_code == 404
    r = get(viewer, "/api/transcript", run=RUN_A, policy="always_sell", time="2024-03-01T00:00Z")
    assert r.status_code == 404 and "no transcript" in r.json()["error"]
    assert requests.post(viewer.base + "/api/runs", timeout=10).status_code == 405


def test_pages_never_show_keys(viewer: Viewer, tmp_path) -> None:
    # A key that slipped into a transcript (a writer bug) is masked by the viewer.
    from harness.reports.transcripts import mask_secrets

    assert mask_secrets("auth: Bearer sk-abcdefghijklmnop") == "auth: ***"
    assert "sk-live" not in mask_secrets("key sk-live1234567890")
    html = get(viewer, "/run", id=RUN_A).text
    assert "Verdict" in html and "sk-" not in html
