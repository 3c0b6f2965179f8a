"""The run report: files, self-contained HTML, tables that match the run files, robustness."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from harness.reports.document import fmt_pct, fmt_share, fmt_usd, reading
from harness.reports.report import disagreement_episodes, disagreements, load_run, write_report
from tests.run_fixtures import BASELINE, LLM, POLICIES, FakeRun, write_fake_run

CHARTS = (
    "equity_vs_hodl",
    "drawdown",
    "paired_differences",
    "reward_distribution",
    "cumulative_regret",
)


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeRun, str, str]:
    run = write_fake_run(tmp_path_factory.mktemp("runs") / "full")
    md_path, html_path = write_report(run.path)
    return run, md_path.read_text(), html_path.read_text()


def md_table(md: str, section: str, index: int = 0) -> list[dict[str, str]]:
    """Rows of the index-th Markdown table under `## <section>` as column -> cell."""
    body = md.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    tables, current = [], []
    for ln in [*body.splitlines(), ""]:
        if ln.startswith("|"):
            current.append(ln)
        elif current:
            tables.append(current)
            current = []
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in tables[index]]
    header, rows = split[0], split[2:]
    return [dict(zip(header, r, strict=True)) for r in rows]


def usd(x: float) -> str:
    """Independent USD formatting for the assertions."""
    s = f"${abs(x):,.2f}"
    return f"-{s}" if x < 0 and round(abs(x), 2) else s


def test_writes_markdown_html_and_figures(reported: tuple[FakeRun, str, str]) -> None:
    run, md, html = reported
    for name in CHARTS:
        png = run.path / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/{name}.png)" in md
    assert html.count('src="data:image/png;base64,') == len(CHARTS)


def test_html_is_self_contained(reported: tuple[FakeRun, str, str]) -> None:
    _, _, html = reported
    assert "http://" not in html and "https://" not in html
    assert 'src="http' not in html and "<script" not in html and "<link" not in html
    assert "<style>" in html


def test_header_lists_run_facts(reported: tuple[FakeRun, str, str]) -> None:
    run, md, _ = reported
    assert run.manifest["run_id"] in md
    assert "synthetic(seed=7)" in md
    assert "2024-03-01 00:00 → 2024-03-10 20:00 UTC (60 decision times)" in md
    usage = run.manifest["llm_usage"][LLM]
    line = f"{usage['calls_made']} calls made, {usage['served_from_cache']} served from cache"
    assert line in md
    assert "covered_call_v1@aaaa1111" in md


def test_decision_summary_matches_metrics(reported: tuple[FakeRun, str, str]) -> None:
    run, md, _ = reported
    rows = {r["Policy"].removesuffix(" (baseline)"): r for r in md_table(md, "Per-decision view")}
    assert set(rows) == set(POLICIES)
    for p, row in rows.items():
        m = run.metrics[p]
        assert row["Decisions"] == f"{int(m['n_decisions'])}"
        assert row["Mean reward"] == usd(m["mean_reward"])
        assert row["Sum (overlapping, not PnL)"] == usd(m["total_reward"])
        assert row["Mean regret"] == usd(m["mean_regret"])
        assert row["Sold"] == f"{m['sell_rate'] * 100:.1f}%"
        assert row["Invalid"] == f"{m['invalid_rate'] * 100:.2f}%"
    assert rows[LLM]["Invalid"] == "6.67%"  # 4 of 60 answers unparseable
    assert rows[LLM]["LLM cost"] == f"${run.metrics[LLM]['cost_usd']:.4f}"


def test_portfolio_summary_matches_metrics(reported: tuple[FakeRun, str, str]) -> None:
    run, md, _ = reported
    rows = md_table(md, "Portfolio view")
    assert [r["Policy"] for r in rows] == [f"{BASELINE} (baseline)", "iv_rich", LLM, "HODL"]
    for row in rows[:-1]:
        m = run.metrics[row["Policy"].removesuffix(" (baseline)")]
        assert row["PnL vs HODL"] == usd(m["pnl_vs_hodl_usd"])
        assert row["Total return"] == f"{m['total_return_pct']:.2f}%"
        assert row["Sharpe"] == f"{m['sharpe']:.2f}"
        assert row["Max drawdown"] == f"{m['max_drawdown_pct']:.2f}%"
        assert row["Trades"] == f"{int(m['n_trades'])}"
        assert row["Premium"] == usd(m["premium_collected_usd"])


def test_paired_comparison_rows_and_reading(reported: tuple[FakeRun, str, str]) -> None:
    run, md, _ = reported
    rows = {
        (r["First"], r["Second"]): r for r in md_table(md, "Paired differences per decision", 1)
    }
    for pair in run.comparison["pairs"]:
        row = rows.get((BASELINE, pair["policy"]))
        if row is None:
            continue
        pair = {  # the fixture's pairs are policy - baseline; the report lists earlier - later
            **pair,
            "policy": BASELINE,
            "baseline": pair["policy"],
            "mean_diff": -pair["mean_diff"],
            "ci_low": -pair["ci_high"],
            "ci_high": -pair["ci_low"],
            "wins": pair["losses"],
            "losses": pair["wins"],
        }
        assert row["Mean diff"] == usd(pair["mean_diff"])
        assert row["95% CI"] == f"{usd(pair['ci_low'])} to {usd(pair['ci_high'])}"
        assert row["Wins / losses / ties"] == f"{pair['wins']} / {pair['losses']} / {pair['ties']}"
        expected = reading(
            BASELINE, pair["baseline"], pair["mean_diff"], pair["ci_low"], pair["ci_high"], "USD"
        )
        assert f"- {expected}" in md
    assert len(rows) == 3  # every pair of the three policies


def test_disagreements_are_exactly_the_differing_decisions(
    reported: tuple[FakeRun, str, str],
) -> None:
    run, md, _ = reported
    by_time: dict[str, dict[str, dict]] = {}
    for r in run.decisions:
        by_time.setdefault(r["decision_time"], {})[r["policy"]] = r
    differing = {
        pd.Timestamp(t)
        for t, rows in by_time.items()
        if len({r["instrument_name"] or "DO_NOTHING" for r in rows.values()}) > 1
    }
    table = disagreements(load_run(run.path).decisions, top=None)
    assert set(table["decision_time"]) == differing
    assert table["spread"].is_monotonic_decreasing

    decisions = load_run(run.path).decisions
    episodes = disagreement_episodes(table, decisions)
    assert episodes["n"].sum() == len(differing)
    # One row per expiry (trade life): the fixture sells 7-day calls from every decision.
    expiries = {
        next(
            r["instrument_name"] for r in by_time[t.isoformat()].values() if r["instrument_name"]
        ).split("-")[1]
        for t in differing
    }
    assert set(episodes["expiry"]) == expiries
    rendered = md_table(md, "Disagreements")
    assert len(rendered) == len(episodes)
    for row in rendered:
        t = pd.Timestamp(row["Widest at"], tz="UTC").isoformat()
        rows = by_time[t]
        rewards = [r["reward"] for r in rows.values()]
        assert row["Spread"] == usd(max(rewards) - min(rewards))
        choices = {row[p].split(" ")[0] for p in POLICIES}
        assert len(choices) > 1
        for p in POLICIES:
            assert row[p].lstrip("[").split(" ")[0] == (rows[p]["instrument_name"] or "DO_NOTHING")


def test_charts_are_deterministic(reported: tuple[FakeRun, str, str], tmp_path: Path) -> None:
    run, _, html = reported
    first = {n: (run.path / "figures" / f"{n}.png").read_bytes() for n in CHARTS}
    _, html_path = write_report(run.path)
    assert html_path.read_text() == html
    for n in CHARTS:
        png = (run.path / "figures" / f"{n}.png").read_bytes()
        assert png == first[n]
        assert b"Matplotlib" not in png


def test_skipped_llm_policy_is_reported(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "rules", skip_llm=True)
    md = write_report(run.path)[0].read_text()
    assert "- llm_v1 was SKIPPED (never ran) and is in no comparison: no API key" in md
    assert "| llm_v1 | SKIPPED | no API key: set OPENAI_API_KEY |" in md
    assert "**LLM usage:** none (no LLM policy ran)" in md
    rows = md_table(md, "Per-decision view")
    assert [r["Policy"] for r in rows] == [f"{BASELINE} (baseline)", "iv_rich"]


def test_missing_files_are_noted_not_fatal(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "partial")
    write_report(run.path)  # a first, complete report leaves all four figures behind
    for name in ("metrics.json", "comparison.json", "equity.parquet", "trades.csv"):
        (run.path / name).unlink()
    md_path, html_path = write_report(run.path)
    md = md_path.read_text()
    for name in ("metrics.json", "comparison.json", "equity.parquet", "trades.csv"):
        assert f"{name} is missing." in md
    assert "No equity data: equity and drawdown charts omitted." in md
    assert html_path.read_text().count("data:image/png;base64,") == 3
    assert sorted(f.name for f in (run.path / "figures").iterdir()) == [
        "cumulative_regret.png",
        "paired_differences.png",  # pairs recomputed from decisions.jsonl
        "reward_distribution.png",
    ]
    # Decision statistics fall back to decisions.jsonl; without comparison.json the reward
    # kind is unknown, so rewards are plain numbers.
    assert "Rewards in units unknown" in md
    rows = {r["Policy"]: r for r in md_table(md, "Per-decision view")}
    assert rows[LLM]["Mean reward"] == f"{run.metrics[LLM]['mean_reward']:,.2f}"


def test_policy_without_trades(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "notrades")
    metrics = json.loads((run.path / "metrics.json").read_text())
    metrics["iv_rich"].update(n_trades=0.0, itm_share=0.0, win_rate_vs_hodl=0.0)
    metrics["iv_rich"]["pnl_vs_hodl_usd"] = -1234567.891
    (run.path / "metrics.json").write_text(json.dumps(metrics))
    md = write_report(run.path)[0].read_text()
    row = {r["Policy"]: r for r in md_table(md, "Portfolio view")}["iv_rich"]
    assert (row["Trades"], row["ITM share"], row["Win rate vs HODL"]) == ("0", "—", "—")
    assert row["PnL vs HODL"] == "-$1,234,567.89"
    assert "iv_rich: made no trades." in md


def test_empty_and_truncated_decisions(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "empty")
    (run.path / "decisions.jsonl").write_text('{"decision_time": "2024-03-01T00:00:00+00:00", "pol')
    md = write_report(run.path)[0].read_text()
    assert "decisions.jsonl: 1 unreadable line(s) skipped." in md
    assert "No disagreements: no decisions." in md
    assert "No decisions: reward and regret charts omitted." in md


def test_bare_folder_renders(tmp_path: Path) -> None:
    md_path, html_path = write_report(tmp_path)
    assert "manifest.json is missing." in md_path.read_text()
    assert "<h1>Run report:" in html_path.read_text()


def test_formatting_and_reading() -> None:
    assert fmt_usd(-1234.5) == "-$1,234.50"
    assert fmt_usd(-0.001) == "$0.00"
    assert fmt_usd(float("nan")) == "—"
    assert fmt_share(0.4567) == "45.7%"
    assert fmt_pct(-3.14159) == "-3.14%"
    assert (
        reading("iv_rich", "always_sell", 12.3, -4.0, 28.1, "USD")
        == "iv_rich beat always_sell by $12.30 per decision (95% CI -$4.00 to $28.10): not significant."
    )
    assert reading("a", "b", -5.0, -9.0, -1.0, "bps") == (
        "a trailed b by 5.0 bps per decision (95% CI -9.0 bps to -1.0 bps): significant at 95%."
    )


def test_verdict_comes_first_and_names_winners(reported: tuple[FakeRun, str, str]) -> None:
    run, md, html = reported
    assert md.index("## Verdict") < md.index("**Run:**") < md.index("## Paired differences")
    verdict = md.split("## Verdict", 1)[1].split("\n\n- **Run", 1)[0]
    # Every sentence names the better policy first, with CI and the Holm verdict.
    for pair in run.comparison["pairs"]:
        winner, loser = (
            (pair["policy"], BASELINE) if pair["mean_diff"] > 0 else (BASELINE, pair["policy"])
        )
        assert f"Per decision, {winner} beat {loser} by {usd(abs(pair['mean_diff']))}" in verdict
    assert "Holm" in verdict or "not significant" in verdict
    assert "As a portfolio (one call at a time, replayed)" in verdict
    assert "HODL" in verdict
    assert html.index('class="verdict"') < html.index('class="facts"')


def test_failed_policy_is_shown_and_left_out(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "failed", fail_llm=True)
    md = write_report(run.path)[0].read_text()
    assert "llm_v1 FAILED (ran, but error rate 0.42" in md
    status = {r["Policy"]: r for r in md_table(md, "Policy status")}
    assert status[LLM]["Status"] == "FAILED"
    assert status[LLM]["Top error"] == "HTTP 500: upstream overloaded"
    pairs = md_table(md, "Paired differences per decision", 1)
    assert all(LLM not in (r["First"], r["Second"]) for r in pairs)
    rows = {r["Policy"]: r for r in md_table(md, "Per-decision view")}
    assert f"{LLM} (FAILED: not compared)" in rows


def test_sell_rate_split_and_period_end(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "split", no_candidate_times=[3, 4, 5])
    md = write_report(run.path)[0].read_text()
    rows = {r["Policy"]: r for r in md_table(md, "Per-decision view")}
    assert rows[f"{BASELINE} (baseline)"]["No candidate offered"] == "5.0%"  # 3 of 60
    assert rows[f"{BASELINE} (baseline)"]["Chose not to sell"] == "0.0%"
    assert rows[f"{BASELINE} (baseline)"]["Sold"] == "95.0%"
    assert "decisions stop 9.2 days before the config's end 2024-03-20" in md
    assert "room for a call of about 7 days" in md


def test_llm_decisions_link_to_their_transcripts(reported: tuple[FakeRun, str, str]) -> None:
    _, _, html = reported
    links = re.findall(r'<a href="#(tr-llm_v1-[0-9T]+)">', html)
    assert links
    for anchor in set(links):
        assert f'id="{anchor}"' in html
    # The transcript block shows the prompt, the raw answer and the reasoning.
    block = html.split(f'id="{links[0]}"', 1)[1].split('<div class="transcript"', 1)[0]
    assert "You sell weekly covered calls" in block
    assert "Thinking about" in block
    assert "gpt-4o-mini" in block


def test_colours_are_fixed_per_name() -> None:
    from harness.reports.colors import FIXED, policy_color, policy_colors

    a = policy_colors(["llm_v2", "always_sell", "oracle"])
    b = policy_colors(["zeta", "llm_v2", "oracle", "iv_rich"])
    assert a["llm_v2"] == b["llm_v2"] == policy_color("llm_v2")
    assert a["oracle"] == FIXED["oracle"]
    many = policy_colors([f"p{i}" for i in range(12)])
    assert len(set(many.values())) == 12  # collisions resolved within a run


def test_hindsight_bounds_are_labelled_and_kept_out_of_the_verdict(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "bounds")
    # Rename iv_rich to the portfolio bound in every file the report reads.
    for name in ("decisions.jsonl", "metrics.json", "comparison.json", "manifest.json"):
        path = run.path / name
        path.write_text(path.read_text().replace("iv_rich", "oracle_schedule"))
    eq = pd.read_parquet(run.path / "equity.parquet")
    eq["policy"] = eq["policy"].replace("iv_rich", "oracle_schedule")
    eq.to_parquet(run.path / "equity.parquet")
    metrics = json.loads((run.path / "metrics.json").read_text())
    metrics["oracle_schedule"]["pnl_vs_hodl_usd"] = 5000.0
    (run.path / "metrics.json").write_text(json.dumps(metrics))
    md = write_report(run.path)[0].read_text()
    verdict = md.split("## Verdict", 1)[1].split("- **Run:**", 1)[0]
    assert "The portfolio bound (hindsight schedule), oracle_schedule, ends $5,000 ahead" in verdict
    assert "Per decision, oracle_schedule" not in verdict
    rows = {r["Policy"] for r in md_table(md, "Portfolio view")}
    assert "oracle_schedule: portfolio bound (hindsight schedule)" in rows
    assert "oracle_schedule" not in md_table(md, "Disagreements")[0]


def test_report_names_the_interval_method_the_pairs_record(
    reported: tuple[FakeRun, str, str],
) -> None:
    from harness.reports.report import pairs_method_label
    from harness.stats import DEFAULT_CI_METHOD, ci_method_label

    _, md, html = reported
    # the fixture's pairs come from paired_comparison's default: bootstrap-t
    label = ci_method_label(DEFAULT_CI_METHOD)
    assert "bootstrap-t" in label
    section = md.split("## Paired differences per decision", 1)[1].split("\n## ", 1)[0]
    assert f"95% CI ({label}; docs/calibration.md)" in section
    assert f"bar: 95% CI ({label})" in html
    assert "batch means" not in section.lower()
    assert pairs_method_label([{"ci_method": "batch_means"}]) == ci_method_label("batch_means")
    # runs older than the field used the moving-block bootstrap
    assert pairs_method_label([{}]) == ci_method_label("block_bootstrap")
