"""Sweep outputs: the leaderboard over trials, selection statistics and sweep_report.html.

Every (trial, policy) that is not a hindsight bound is a candidate configuration. Its
per-decision rewards (from the trial's decisions.jsonl; under `pnl_vs_hodl` the USD result of
the call against holding the coins) give a one-sided p-value of "beats HODL" (Newey-West,
lags = the trade-overlap block length), adjusted across all candidates by Holm and by
Benjamini-Hochberg; the winner's Deflated Sharpe Ratio; and the Probability of Backtest
Overfitting by CSCV over time blocks of the decisions all candidates share.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import pyarrow as pa
import yaml
from pyarrow import json as pa_json
from scipy import stats as sps

from harness.selection import (
    adjust_pvalues,
    deflated_sharpe_ratio,
    mean_pvalue,
    probability_of_backtest_overfitting,
    sharpe_ratio,
)

TEMPLATES = Path(__file__).parent / "templates"
REPORT_CSS = Path(__file__).parents[1] / "reports" / "templates" / "report.css"
# libyaml's parser when built (the same data as yaml.safe_load, several times faster)
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
HINDSIGHT_RULES = frozenset({"oracle", "oracle_schedule"})
ALPHA = 0.05  # family-wise level for Holm and BH
DSR_LEVEL = 0.95
PBO_BLOCKS = 10
METRIC_COLUMNS = (
    "n_decisions",
    "mean_reward",
    "total_reward",
    "mean_regret",
    "sell_rate",
    "pnl_vs_hodl_usd",
    "sharpe",
    "max_drawdown_pct",
    "n_trades",
    "invalid_rate",
    "error_rate",
    "cost_usd",
)


@dataclass(frozen=True)
class TrialRecord:
    """A finished trial as the outputs need it."""

    index: int
    trial_id: str
    point: dict[str, Any]
    path: Path


REWARD_FIELDS = pa.schema(
    [("policy", pa.string()), ("decision_time", pa.string()), ("reward", pa.float64())]
)


def _read_rewards(path: Path) -> pd.DataFrame:
    """(policy, decision_time, reward) rows of a run's decisions.jsonl.

    Arrow's JSON reader parses only these three fields of each line (a trial's file is a few
    MB of states and candidates the leaderboard does not need), in C++, one thread.
    """
    if path.stat().st_size == 0:
        return pd.DataFrame([], columns=list(REWARD_FIELDS.names))
    table = pa_json.read_json(
        path,
        read_options=pa_json.ReadOptions(use_threads=False),
        parse_options=pa_json.ParseOptions(
            explicit_schema=REWARD_FIELDS, unexpected_field_behavior="ignore"
        ),
    )
    return table.to_pandas()


def _rewards_of_rows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """`_read_rewards` of decisions.jsonl objects already in memory (the same frame)."""
    reward = np.array([np.nan if r.get("reward") is None else r["reward"] for r in rows], float)
    # a non-finite reward is written as JSON null, which Arrow's reader gives as NaN
    reward[~np.isfinite(reward)] = np.nan
    return pd.DataFrame(
        {
            "policy": [r.get("policy") for r in rows],
            "decision_time": [r.get("decision_time") for r in rows],
            "reward": reward,
        }
    )


def _rewards_by_policy(rewards: pd.DataFrame) -> dict[str, pd.Series]:
    """Each policy's rewards of a `_read_rewards` frame, indexed by decision time, sorted."""
    return {
        name: g.set_index("decision_time")["reward"].sort_index()
        for name, g in rewards.groupby("policy")
    }


def _ordered_rewards(rows: list[dict[str, Any]]) -> dict[str, pd.Series] | None:
    """`_rewards_by_policy(_rewards_of_rows(rows))` in one pass over the rows, or None when
    the rows are not the plain case: every policy and decision time a str and each policy's
    times strictly increasing (a fresh run's rows). Those need no sort, so no group-by frame is
    built (tests/experiments/test_sweep_rewards.py checks the two are equal)."""
    times: dict[str, list[str]] = {}
    values: dict[str, list[Any]] = {}
    for r in rows:
        policy, t = r.get("policy"), r.get("decision_time")
        if type(policy) is not str or type(t) is not str:
            return None
        seen = times.get(policy)
        if seen is None:
            seen = times[policy] = []
            values[policy] = []
        elif not seen[-1] < t:
            return None  # out of order or repeated: the sorting path
        seen.append(t)
        values[policy].append(r.get("reward"))
    return {
        policy: _reward_series(
            pd.Index(times[policy], dtype=_TIME_DTYPE, name="decision_time"),
            np.array([np.nan if v is None else v for v in values[policy]], float),
        )
        for policy in sorted(times)
    }


def _plain_series(times: list[str], rewards: dict[str, np.ndarray]) -> dict[str, pd.Series] | None:
    """`_ordered_rewards` of the rows a runner wrote with these times and each policy's reward
    per decision (one row per decision and policy), or None unless the times increase."""
    if any(not a < b for a, b in pairwise(times)):
        return None
    index = pd.Index(times, dtype=_TIME_DTYPE, name="decision_time")  # shared: immutable
    # a copy of each array: the runner's stays as it is
    return {p: _reward_series(index, np.array(rewards[p], dtype=float)) for p in sorted(rewards)}


def _reward_series(index: pd.Index, reward: np.ndarray) -> pd.Series:
    """A policy's rewards (USD or bps, float64, modified in place) by decision time, with
    non-finite values NaN as decisions.jsonl reads them back (strict JSON writes null)."""
    reward[~np.isfinite(reward)] = np.nan
    return pd.Series(reward, index=index, name="reward")


# the dtype of `_rewards_of_rows`' text columns (pandas' default for str: "str" in pandas 3)
_TIME_DTYPE = pd.Series(["x"]).dtype


def _axis_cell(v: Any) -> Any:
    if isinstance(v, list | dict):
        return json.dumps(v)
    return v


@dataclass(frozen=True)
class TrialBoard:
    """One finished trial's leaderboard entries (one per policy, without the trial's id and
    axis values) and each policy's per-decision rewards, indexed by decision time (ISO text)."""

    entries: list[dict[str, Any]]
    rewards: dict[str, pd.Series]


def trial_board(
    run_dir: Path,
    decision_rows: list[dict[str, Any]] | None = None,
    *,
    plain_rewards: tuple[list[str], dict[str, np.ndarray]] | None = None,
) -> TrialBoard:
    """The leaderboard entries and rewards of one finished run folder (reads its files).

    A sweep worker calls this right after its trial, passing the decisions.jsonl objects the
    runner still holds (`ExperimentRunner.written_decisions`; the file is then not parsed), so
    the driver only gathers the results; the driver reads the folders of trials finished by an
    earlier run of the sweep. `plain_rewards` (`ExperimentRunner.plain_rewards`: decision
    times and each policy's rewards of a fresh rule run) stands for those rows when given.
    """
    d = run_dir
    manifest = json.loads((d / "manifest.json").read_text())
    metrics = json.loads((d / "metrics.json").read_text())
    comparison = json.loads((d / "comparison.json").read_text())
    config = yaml.load((d / "config.yaml").read_text(), Loader=YAML_LOADER)
    hindsight = {
        p["name"]
        for p in config["policies"]
        if p.get("type") == "rule" and p.get("rule") in HINDSIGHT_RULES
    }
    block = int(comparison.get("block_length") or 1)
    baseline = comparison.get("baseline") or manifest.get("baseline")
    pairs = {p["policy"]: p for p in comparison.get("pairs", [])}
    by_policy = None
    if plain_rewards is not None:
        by_policy = _plain_series(*plain_rewards)
    elif decision_rows is not None:
        by_policy = _ordered_rewards(decision_rows)
    if by_policy is None:
        rewards = (
            _read_rewards(d / "decisions.jsonl")
            if decision_rows is None
            else _rewards_of_rows(decision_rows)
        )
        by_policy = _rewards_by_policy(rewards)
    base_r = by_policy.get(baseline)
    entries: list[dict[str, Any]] = []
    series: dict[str, pd.Series] = {}
    for policy in manifest.get("policies", []):
        r = by_policy.get(policy, pd.Series(dtype=float))
        m = metrics.get(policy, {})
        row: dict[str, Any] = {
            "policy": policy,
            "is_baseline": policy == baseline,
            "hindsight": policy in hindsight,
            "block_length": block,
        }
        row.update({k: float(m.get(k, float("nan"))) for k in METRIC_COLUMNS})
        row["reward_sharpe"] = sharpe_ratio(r.to_numpy())
        row["p_value"] = mean_pvalue(r.to_numpy(), lags=block)
        pair = pairs.get(policy)
        row["diff_vs_baseline"] = pair["mean_diff"] if pair else float("nan")
        row["diff_ci_low"] = pair["ci_low"] if pair else float("nan")
        row["diff_ci_high"] = pair["ci_high"] if pair else float("nan")
        if pair and base_r is not None:
            diff = (r - base_r.reindex(r.index)).dropna().to_numpy()
            row["p_vs_baseline"] = mean_pvalue(diff, lags=block)
        else:
            row["p_vs_baseline"] = float("nan")
        entries.append(row)
        series[policy] = r
    return TrialBoard(entries, series)


def build_leaderboard(
    trials: list[TrialRecord],
    axes: list[str],
    boards: dict[int, TrialBoard] | None = None,
) -> tuple[pd.DataFrame, dict[tuple[int, str], pd.Series]]:
    """Leaderboard rows per (trial, policy) and each row's per-decision rewards by time.

    `boards` holds the trials whose workers already summarized them (by trial index); the
    others are read from their folders.
    """
    rows: list[dict[str, Any]] = []
    series: dict[tuple[int, str], pd.Series] = {}
    boards = boards or {}
    for t in trials:
        tb = boards.get(t.index) or trial_board(t.path)
        for entry in tb.entries:
            row: dict[str, Any] = {"trial": t.index, "trial_id": t.trial_id}
            row.update({a: _axis_cell(t.point.get(a)) for a in axes})
            row.update(entry)
            rows.append(row)
            series[(t.index, entry["policy"])] = tb.rewards[entry["policy"]]
    board = pd.DataFrame(rows)
    if board.empty:
        return board, series
    board["candidate"] = ~board["hindsight"] & np.isfinite(board["mean_reward"])
    cand = board["candidate"].to_numpy()
    for method, col in (("holm", "p_holm"), ("bh", "p_bh")):
        adj = np.full(len(board), np.nan)
        adj[cand] = adjust_pvalues(board.loc[cand, "p_value"].to_numpy(), method)  # type: ignore[arg-type]
        board[col] = adj
    board = board.sort_values(
        ["candidate", "mean_reward", "trial", "policy"], ascending=[False, False, True, True]
    ).reset_index(drop=True)
    board.insert(0, "rank", np.arange(1, len(board) + 1))
    return board, series


def selection_statistics(
    board: pd.DataFrame, series: dict[tuple[int, str], pd.Series]
) -> dict[str, Any]:
    """Winner, its Holm/BH-adjusted p-values, Deflated Sharpe Ratio and the sweep's PBO."""
    cand = board[board["candidate"]] if not board.empty else board
    if cand.empty:
        return {"winner": None, "summary": "No candidate configuration finished: no winner."}
    win = cand.iloc[0]
    r = series[(int(win["trial"]), str(win["policy"]))].to_numpy(dtype=float)
    sharpes = cand["reward_sharpe"].to_numpy(dtype=float)
    sharpes = sharpes[np.isfinite(sharpes)]
    n_eff = len(r) / max(int(win["block_length"]), 1)  # overlapping trades: fewer independent obs
    dsr = deflated_sharpe_ratio(
        float(win["reward_sharpe"]),
        n_obs=n_eff,
        n_trials=len(cand),
        sharpe_variance=float(np.var(sharpes, ddof=1)) if len(sharpes) > 1 else 0.0,
        skew=float(sps.skew(r)) if len(r) > 2 and np.std(r) > 0 else 0.0,
        kurtosis=float(sps.kurtosis(r, fisher=False)) if len(r) > 3 and np.std(r) > 0 else 3.0,
    )
    pbo, pbo_note = _pbo(cand, series)
    out = {
        "winner": {
            "trial": int(win["trial"]),
            "trial_id": str(win["trial_id"]),
            "policy": str(win["policy"]),
            "mean_reward": float(win["mean_reward"]),
            "p_value": _num(win["p_value"]),
            "p_holm": _num(win["p_holm"]),
            "p_bh": _num(win["p_bh"]),
        },
        "n_candidates": len(cand),
        "alpha": ALPHA,
        "deflated_sharpe": dsr.to_dict(),
        "pbo": pbo,
        "pbo_note": pbo_note,
        "n_significant_holm": int((cand["p_holm"] <= ALPHA).sum()),
        "n_significant_bh": int((cand["p_bh"] <= ALPHA).sum()),
    }
    return out


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _pbo(
    cand: pd.DataFrame, series: dict[tuple[int, str], pd.Series]
) -> tuple[dict[str, Any] | None, str]:
    if len(cand) < 2:
        return None, "PBO needs at least two candidate configurations."
    cols = {
        f"{t}:{p}": series[(int(t), str(p))]
        for t, p in zip(cand["trial"], cand["policy"], strict=True)
    }
    wide = pd.DataFrame(cols).dropna()  # decisions every candidate has (periods may differ)
    blocks = min(PBO_BLOCKS, (len(wide) // 2) // 2 * 2)
    if blocks < 2:
        return None, f"PBO needs shared decisions to cut into time blocks; {len(wide)} shared."
    res = probability_of_backtest_overfitting(wide.to_numpy(), n_blocks=blocks)
    note = f"CSCV over {blocks} time blocks of {len(wide):,} shared decisions"
    return res.to_dict(), note


def headline(stats: dict[str, Any], board: pd.DataFrame, labels: dict[int, str], unit: str) -> str:
    """One sentence: which configuration won and whether that survives the corrections."""
    w = stats.get("winner")
    if not w:
        return stats.get("summary", "No winner.")
    dsr = stats["deflated_sharpe"]["dsr"]
    holm, bh = w["p_holm"], w["p_bh"]
    fails = []
    if holm is None or holm > ALPHA:
        fails.append(f"Holm-adjusted p {_fmt_p(holm)} > {ALPHA}")
    if dsr is None or not math.isfinite(dsr) or dsr < DSR_LEVEL:
        fails.append(f"Deflated Sharpe Ratio {_fmt(dsr)} < {DSR_LEVEL}")
    where = labels.get(w["trial"], "")
    pbo = stats.get("pbo")
    tail = f"; PBO {pbo['pbo']:.2f}" if pbo else ""
    head = (
        f"Winner: {w['policy']} in trial {w['trial']} ({where}), {w['mean_reward']:+,.2f} {unit} "
        f"per decision vs HODL, best of {stats['n_candidates']} configurations"
    )
    if fails:
        return (
            f"{head}; it does NOT survive the corrections for that choice ({'; '.join(fails)}; "
            f"BH-adjusted p {_fmt_p(bh)}{tail})."
        )
    return (
        f"{head}; it survives the corrections (Holm-adjusted p {_fmt_p(holm)}, BH-adjusted p "
        f"{_fmt_p(bh)}, Deflated Sharpe Ratio {_fmt(dsr)}{tail})."
    )


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def _fmt_p(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _heat_colour(v: float, scale: float) -> str:
    if not math.isfinite(v) or scale <= 0:
        return "#ffffff"
    a = min(abs(v) / scale, 1.0)
    # white to green above zero, white to red below
    r, g, b = ((1 - a) * 255 + a * 46, (1 - a) * 255 + a * 160, (1 - a) * 255 + a * 67)
    if v < 0:
        r, g, b = ((1 - a) * 255 + a * 200, (1 - a) * 255 + a * 50, (1 - a) * 255 + a * 50)
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def heatmaps(board: pd.DataFrame, axes: list[str], mode: str) -> list[dict[str, Any]]:
    """Mean reward per policy over a 2-D grid (rows: first axis, columns: second)."""
    if mode != "grid" or len(axes) != 2 or board.empty:
        return []
    a, b = axes
    out = []
    for policy, g in board.groupby("policy", sort=False):
        if bool(g["hindsight"].all()):
            continue
        table = g.pivot_table(index=a, columns=b, values="mean_reward", aggfunc="first")
        scale = float(np.nanmax(np.abs(table.to_numpy()))) if table.size else 0.0
        rows = [
            {
                "label": str(idx),
                "cells": [
                    {"text": _fmt(float(v), "+,.2f"), "colour": _heat_colour(float(v), scale)}
                    for v in table.loc[idx].to_numpy()
                ],
            }
            for idx in table.index
        ]
        out.append(
            {
                "policy": policy,
                "row_axis": a,
                "col_axis": b,
                "columns": [str(c) for c in table.columns],
                "rows": rows,
            }
        )
    return out


def render_report(
    *,
    title: str,
    sentence: str,
    sweep: dict[str, Any],
    board: pd.DataFrame,
    stats: dict[str, Any],
    maps: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    axes: list[str],
    unit: str,
) -> str:
    """sweep_report.html from templates/sweep_report.html.j2."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    cols = [
        ("rank", "#", "{:d}"),
        ("trial", "trial", "{:d}"),
        *[(a, a, "{}") for a in axes],
        ("policy", "policy", "{}"),
        ("mean_reward", f"mean reward ({unit})", "{:+,.2f}"),
        ("sell_rate", "sell rate", "{:.0%}"),
        ("sharpe", "Sharpe", "{:.2f}"),
        ("diff_vs_baseline", "vs baseline", "{:+,.2f}"),
        ("p_value", "p (beats HODL)", "p"),
        ("p_holm", "Holm p", "p"),
        ("p_bh", "BH p", "p"),
    ]
    rows = []
    for rec in board.to_dict("records"):
        cells = []
        for key, _, spec in cols:
            v = rec.get(key)
            if spec == "p":
                cells.append(_fmt_p(_num(v)))
            elif isinstance(v, float) and not math.isfinite(v):
                cells.append("n/a")
            else:
                try:
                    cells.append(spec.format(v))
                except (TypeError, ValueError):
                    cells.append(str(v))
        if rec.get("hindsight"):
            cells[cols.index(("policy", "policy", "{}"))] += " (hindsight bound)"
        elif rec.get("is_baseline"):
            cells[cols.index(("policy", "policy", "{}"))] += " (baseline)"
        rows.append(cells)
    return env.get_template("sweep_report.html.j2").render(
        title=title,
        sentence=sentence,
        sweep=sweep,
        columns=[c[1] for c in cols],
        rows=rows,
        stats=stats,
        maps=maps,
        failed=failed,
        css=REPORT_CSS.read_text(encoding="utf-8"),
        fmt=_fmt,
        fmt_p=_fmt_p,
        alpha=ALPHA,
        dsr_level=DSR_LEVEL,
    )
