"""Write small, deterministic, self-consistent fake run folders (docs/run_folder.md) for tests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.stats import paired_comparison

POLICIES = ("always_sell", "iv_rich", "llm_v1")
BASELINE = "always_sell"
LLM = "llm_v1"
START = pd.Timestamp("2024-03-01 00:00", tz="UTC")
STEP = pd.Timedelta(hours=4)
N_TIMES = 60
BLOCK_LENGTH = 5
LLM_COST = 0.0004  # USD per uncached call
INVALID_EVERY = 15  # the LLM answers unparseably on every 15th decision

TRADE_COLUMNS = [
    "policy",
    "instrument_name",
    "underlying",
    "side",
    "size",
    "open_time",
    "close_time",
    "open_price",
    "close_price",
    "pnl",
    "pnl_vs_hodl",
    "max_drawdown_pct",
    "notes",
    "strike",
    "expiry",
    "open_underlying_price",
    "close_underlying_price",
    "settlement_price",
    "in_the_money",
    "premium_usd",
    "open_fee_usd",
    "close_fee_usd",
    "payoff_usd",
    "pnl_coin",
    "open_mark_price",
    "open_delta",
    "open_iv",
]


@dataclass
class FakeRun:
    """What was written, so tests can check the report against it."""

    path: Path
    times: list[pd.Timestamp]
    candidates: list[list[str]]  # per decision time, instrument names
    label_rewards: np.ndarray  # (n_times, n_candidates) reward of selling each candidate
    decisions: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    comparison: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    def rows(self, policy: str) -> list[dict[str, Any]]:
        """Decision rows of one policy, in time order."""
        return [d for d in self.decisions if d["policy"] == policy]


def _iso(ts: pd.Timestamp) -> str:
    return ts.isoformat()


def _instrument(expiry: pd.Timestamp, strike: float) -> str:
    return f"BTC-{expiry.day}{expiry.strftime('%b').upper()}{expiry.strftime('%y')}-{int(strike)}-C"


def _market(rng: np.random.Generator, n: int) -> tuple[list, np.ndarray, list, np.ndarray]:
    times = [START + i * STEP for i in range(n)]
    spot = 60_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    candidates = []
    for t, s in zip(times, spot, strict=True):
        expiry = (t + pd.Timedelta(days=7)).normalize() + pd.Timedelta(hours=8)
        base = round(s * 1.05 / 1000.0) * 1000.0
        candidates.append([_instrument(expiry, base + k * 2000.0) for k in range(3)])
    rewards = np.round(rng.normal(40.0, 300.0, (n, 3)), 2)
    return times, spot, candidates, rewards


def _choices(rng: np.random.Generator, n: int) -> dict[str, list[int | None]]:
    """Candidate index per policy and time (None = DO_NOTHING); all draws made up front."""
    iv_rich_sells = rng.random(n) < 0.6
    llm_pick = rng.integers(0, 4, n)  # 3 = DO_NOTHING
    return {
        "always_sell": [0] * n,
        "iv_rich": [1 if s else None for s in iv_rich_sells],
        "llm_v1": [int(k) if k < 3 else None for k in llm_pick],
    }


def _decision(
    policy: str,
    i: int,
    t: pd.Timestamp,
    spot: float,
    cands: list[str],
    rewards: np.ndarray,
    pick: int | None,
    prompt_id: str,
) -> dict[str, Any]:
    invalid = policy == LLM and i % INVALID_EVERY == INVALID_EVERY - 1
    if invalid or not cands:
        pick = None  # an unparseable answer falls back to DO_NOTHING
    reward = 0.0 if pick is None else float(rewards[pick])
    options = [0.0, *rewards.tolist()] if cands else [0.0]
    best = int(np.argmax(options))
    row: dict[str, Any] = {
        "decision_time": _iso(t),
        "policy": policy,
        "spot": round(float(spot), 2),
        "state": {"return_1d": 0.01, "atm_iv": 0.6, "iv_rv_spread": 0.05},
        "candidates": cands,
        "action": "DO_NOTHING" if pick is None else "SELL_CALL",
        "instrument_name": None if pick is None else cands[pick],
        "valid": not invalid,
        "invalid_reason": "unparseable answer" if invalid else None,
        "error": None,
        "reward": reward,
        "best_reward": float(options[best]),
        "best_instrument": None if best == 0 else cands[best - 1],
        "regret": round(float(options[best]) - reward, 6),
        "llm": None,
    }
    if policy == LLM:
        hit = i % 2 == 0
        row["llm"] = {
            "model": "gpt-4o-mini",
            "prompt_id": prompt_id,
            "cache_hit": hit,
            "calls_made": 0 if hit else 1,
            "prompt_tokens": 900,
            "completion_tokens": 40,
            "cached_tokens": 0,
            "cost_usd": 0.0 if hit else LLM_COST,
            "cost_saved_usd": LLM_COST if hit else 0.0,
            "latency_s": 0.0 if hit else 0.8,
            "raw": "SELL" if pick is not None else "PASS",
            "rationale": "fake",
        }
    return row


def _trades(policy: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    # Weekly calls overlap; the fake replay keeps one trade per 7 days like the simulator would.
    last_close = None
    for r in rows:
        t = pd.Timestamp(r["decision_time"])
        if r["action"] != "SELL_CALL" or (last_close is not None and t < last_close):
            continue
        close = t + pd.Timedelta(days=7)
        strike = float(r["instrument_name"].split("-")[2])
        spot = r["spot"]
        settle = spot * 1.01
        premium = 0.01 * spot
        payoff = max(settle - strike, 0.0)
        out.append(
            {
                "policy": policy,
                "instrument_name": r["instrument_name"],
                "underlying": "BTC",
                "side": "SHORT_CALL",
                "size": 1.0,
                "open_time": _iso(t),
                "close_time": _iso(close),
                "open_price": premium,
                "close_price": payoff,
                "pnl": settle - spot + premium - payoff,
                "pnl_vs_hodl": premium - payoff,
                "max_drawdown_pct": 1.5,
                "notes": "",
                "strike": strike,
                "expiry": _iso(close),
                "open_underlying_price": spot,
                "close_underlying_price": settle,
                "settlement_price": settle,
                "in_the_money": payoff > 0,
                "premium_usd": premium,
                "open_fee_usd": 0.3,
                "close_fee_usd": 0.0,
                "payoff_usd": payoff,
                "pnl_coin": (premium - payoff) / settle,
                "open_mark_price": premium / spot,
                "open_delta": 0.3,
                "open_iv": 0.6,
            }
        )
        last_close = close
    return out


def _equity(policy: str, times: list, spot: np.ndarray, rows: list[dict]) -> pd.DataFrame:
    bars = pd.date_range(times[0], times[-1] + STEP, freq="1h", tz="UTC")
    hodl = np.interp(np.arange(len(bars)) / 4.0, np.arange(len(spot)), spot)
    step_pnl = np.zeros(len(bars))
    for r in rows:
        step_pnl[bars.get_loc(pd.Timestamp(r["decision_time"])) + 4] += r["reward"]
    vs = np.cumsum(step_pnl)
    return pd.DataFrame(
        {
            "timestamp": bars,
            "policy": policy,
            "equity": hodl + vs,
            "hodl": hodl,
            "equity_vs_hodl": vs,
        }
    )


def _metrics(rows: list[dict], trades: list[dict], eq: pd.DataFrame) -> dict[str, float]:
    rewards = np.array([r["reward"] for r in rows])
    e = eq["equity"].to_numpy()
    rets = np.diff(e) / e[:-1]
    return {
        "final_pnl_usd": round(float(e[-1] - e[0]), 4),
        "final_pnl_coin": 0.0123,
        "pnl_vs_hodl_usd": round(float(eq["equity_vs_hodl"].iloc[-1]), 4),
        "total_return_pct": round(float((e[-1] / e[0] - 1.0) * 100.0), 6),
        "annualized_return_pct": 12.5,
        "sharpe": round(float(rets.mean() / rets.std() * np.sqrt(365 * 24)), 6),
        "sortino": 1.7321,
        "max_drawdown_pct": round(float(np.max(1.0 - e / np.maximum.accumulate(e)) * 100.0), 6),
        "n_trades": float(len(trades)),
        "itm_share": float(np.mean([t["in_the_money"] for t in trades])) if trades else 0.0,
        "win_rate_vs_hodl": float(np.mean([t["pnl_vs_hodl"] > 0 for t in trades]))
        if trades
        else 0.0,
        "premium_collected_usd": round(sum(t["premium_usd"] for t in trades), 4),
        "fees_paid_usd": round(sum(t["open_fee_usd"] for t in trades), 4),
        "upside_given_up_usd": round(sum(t["payoff_usd"] for t in trades), 4),
        "mean_reward": float(rewards.mean()),
        "total_reward": float(rewards.sum()),
        "mean_regret": float(np.mean([r["regret"] for r in rows])),
        "sell_rate": float(np.mean([r["action"] == "SELL_CALL" for r in rows])),
        "invalid_rate": float(np.mean([not r["valid"] for r in rows])),
        "error_rate": float(np.mean([r["error"] is not None for r in rows])),
        "cost_usd": float(sum((r["llm"] or {}).get("cost_usd", 0.0) for r in rows)),
        "n_decisions": float(len(rows)),
    }


def _comparison(rows_by_policy: Mapping[str, list[dict]], block_length: int) -> dict[str, Any]:
    base = {r["decision_time"]: r for r in rows_by_policy[BASELINE]}
    pairs, agreement = [], {}
    for p, rows in rows_by_policy.items():
        if p == BASELINE:
            continue
        aligned = [(r, base[r["decision_time"]]) for r in rows if r["decision_time"] in base]
        c = paired_comparison(
            p,
            BASELINE,
            np.array([r["reward"] for r, _ in aligned]),
            np.array([b["reward"] for _, b in aligned]),
            [r["instrument_name"] for r, _ in aligned],
            [b["instrument_name"] for _, b in aligned],
            block_length=block_length,
        )
        pairs.append(c.to_dict())
        agreement[p] = c.agreement_rate
    return {
        "baseline": BASELINE,
        "reward_kind": "pnl_vs_hodl",
        "block_length": block_length,
        "pairs": pairs,
        "agreement": {BASELINE: agreement},
    }


def _policy_status(skip_llm: bool, fail_llm: bool) -> dict[str, dict[str, Any]]:
    status: dict[str, dict[str, Any]] = {p: {"status": "ok"} for p in POLICIES}
    if skip_llm:
        status[LLM] = {"status": "skipped", "reason": "no API key: set OPENAI_API_KEY"}
    if fail_llm:
        status[LLM] = {
            "status": "failed",
            "reason": "error rate 0.42 over asked decisions > max_error_rate 0.1",
            "asked": 60,
            "errors": 25,
            "error_rate": 0.4167,
            "top_error": "HTTP 500: upstream overloaded",
        }
    return status


def _labels(times: list, candidates: list[list[str]], rewards: np.ndarray) -> pd.DataFrame:
    rows = []
    for t, cands, rw in zip(times, candidates, rewards, strict=True):
        rows.append(
            {
                "decision_time": t,
                "action": "DO_NOTHING",
                "instrument_name": None,
                "strike": np.nan,
                "delta": np.nan,
                "premium": 0.0,
                "reward": 0.0,
            }
        )
        for k, (name, r) in enumerate(zip(cands, rw[: len(cands)], strict=True)):
            rows.append(
                {
                    "decision_time": t,
                    "action": "SELL_CALL",
                    "instrument_name": name,
                    "strike": float(name.split("-")[2]),
                    "delta": 0.35 - 0.1 * k,
                    "premium": 500.0 - 150.0 * k,
                    "reward": float(r),
                }
            )
    return pd.DataFrame(rows)


PROMPT_TEXT = {
    "covered_call_v1@aaaa1111": "You sell weekly covered calls. Pick one candidate or DO_NOTHING.",
}


def _transcript(row: dict[str, Any], prompt_id: str) -> dict[str, Any]:
    """The transcripts.jsonl record of one LLM decision (docs: INTERFACES section 2)."""
    llm = row["llm"]
    system = PROMPT_TEXT.get(prompt_id, f"Prompt {prompt_id}: be careful with calls.")
    user = f"Time {row['decision_time']}; spot {row['spot']}; candidates: " + ", ".join(
        row["candidates"]
    )
    choice = row["instrument_name"] or "DO_NOTHING"
    content = (
        "not json at all"
        if not row["valid"]
        else json.dumps({"action": row["action"], "instrument_name": choice, "rationale": "fake"})
    )
    return {
        "policy": row["policy"],
        "decision_time": row["decision_time"],
        "attempt": 0,
        "sample": 0,
        "cache_key": hashlib.sha256(f"{row['decision_time']}|{prompt_id}".encode()).hexdigest(),
        "from_cache": llm["cache_hit"],
        "execution": "live",
        "model": llm["model"],
        "base_url": "http://127.0.0.1:9/v1",
        "prompt_id": prompt_id,
        "request": {
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "params": {"temperature": 0.0, "seed": 0, "max_tokens": 400},
        },
        "response": {
            "content": content,
            "reasoning": f"Thinking about {choice} at {row['decision_time']}.",
            "finish_reason": "stop",
            "refusal": None,
        },
        "usage": {"prompt_tokens": 900, "completion_tokens": 40, "cached_tokens": 0},
        "cost_usd": llm["cost_usd"],
        "latency_s": llm["latency_s"],
        "error": None,
    }


def write_fake_run(
    run_dir: Path,
    *,
    seed: int = 0,
    n_times: int = N_TIMES,
    llm_overrides: Mapping[int, int | None] | None = None,
    llm_missing_times: Sequence[int] = (),
    skip_llm: bool = False,
    fail_llm: bool = False,
    prompt_id: str = "covered_call_v1@aaaa1111",
    block_length: int = BLOCK_LENGTH,
    config_end: str = "2024-03-20",
    no_candidate_times: Sequence[int] = (),
) -> FakeRun:
    """Write a complete fake run of always_sell, iv_rich and llm_v1 into run_dir.

    `llm_overrides` maps a decision index to the candidate index the LLM picks instead
    (None = DO_NOTHING); `llm_missing_times` drops the LLM's rows at those indices;
    `skip_llm` records the LLM policy as skipped (no rows, no metrics); `fail_llm` records it
    as failed (rows kept, left out of comparison.json); `no_candidate_times` offers no
    candidate at those indices (every policy does nothing there). Also writes labels.parquet,
    transcripts.jsonl and a config.yaml whose simulation `end` is `config_end`.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    times, spot, candidates, rewards = _market(rng, n_times)
    picks = _choices(rng, n_times)
    for i in no_candidate_times:
        candidates[i] = []
    for i, k in (llm_overrides or {}).items():
        picks[LLM][i] = k
    run = FakeRun(run_dir, times, candidates, rewards)
    ran = [p for p in POLICIES if not (skip_llm and p == LLM)]
    rows_by_policy: dict[str, list[dict]] = {p: [] for p in ran}
    for i, t in enumerate(times):
        for p in ran:
            if p == LLM and i in set(llm_missing_times):
                continue
            row = _decision(p, i, t, spot[i], candidates[i], rewards[i], picks[p][i], prompt_id)
            rows_by_policy[p].append(row)
            run.decisions.append(row)
    with (run_dir / "decisions.jsonl").open("w") as fh:
        for row in run.decisions:
            fh.write(json.dumps(row) + "\n")

    trades, equity = [], []
    for p in ran:
        pt = _trades(p, rows_by_policy[p])
        eq = _equity(p, times, spot, rows_by_policy[p])
        run.metrics[p] = _metrics(rows_by_policy[p], pt, eq)
        trades += pt
        equity.append(eq)
    pd.DataFrame(trades, columns=TRADE_COLUMNS).to_csv(run_dir / "trades.csv", index=False)
    pd.concat(equity, ignore_index=True).to_parquet(run_dir / "equity.parquet", index=False)
    (run_dir / "metrics.json").write_text(json.dumps(run.metrics, indent=2))
    compared = {p: r for p, r in rows_by_policy.items() if not (fail_llm and p == LLM)}
    run.comparison = _comparison(compared, block_length)
    _labels(times, candidates, rewards).to_parquet(run_dir / "labels.parquet", index=False)
    with (run_dir / "transcripts.jsonl").open("w") as fh:
        for row in rows_by_policy.get(LLM, []):
            fh.write(json.dumps(_transcript(row, prompt_id)) + "\n")
    (run_dir / "config.yaml").write_text(
        "name: fake\nsimulation:\n  underlying: BTC\n  start: '2024-03-01'\n"
        f"  end: '{config_end}'\n  timeframe: 1h\n  decision_interval_bars: 4\n"
        "  target_dte: 7\n  dte_tolerance: 2\n"
    )
    (run_dir / "comparison.json").write_text(json.dumps(run.comparison, indent=2))

    llm_rows = rows_by_policy.get(LLM, [])
    run.manifest = {
        "name": "fake",
        "run_id": f"20240601T000000Z-fake-{run_dir.name}",
        "package_version": "0.1.0",
        "git_commit": "0123456789abcdef0123",
        "data_fingerprint": "synthetic(seed=7)",
        "started_at": "2024-06-01T00:00:00+00:00",
        "finished_at": "2024-06-01T00:05:00+00:00",
        "status": "complete",
        "policies": list(POLICIES),
        "baseline": BASELINE,
        "prompt_ids": {LLM: prompt_id},
        "model_ids": {LLM: "gpt-4o-mini"},
        "seeds": {"market": 7, LLM: 0, "bootstrap": 0},
        "skipped": {LLM: "no API key: set OPENAI_API_KEY"} if skip_llm else {},
        "policy_status": _policy_status(skip_llm, fail_llm),
        "decision_period": [_iso(times[0]), _iso(times[-1])],
        "n_decisions": n_times,
        "llm_usage": {}
        if skip_llm
        else {
            LLM: {
                "calls_made": sum(r["llm"]["calls_made"] for r in llm_rows),
                "served_from_cache": sum(r["llm"]["cache_hit"] for r in llm_rows),
                "cost_usd": sum(r["llm"]["cost_usd"] for r in llm_rows),
                "cost_saved_usd": sum(r["llm"]["cost_saved_usd"] for r in llm_rows),
            }
        },
    }
    (run_dir / "manifest.json").write_text(json.dumps(run.manifest, indent=2))
    return run
