"""Human report of a run folder: `report.md` + one self-contained `report.html` with charts.

The verdict comes first (who beat whom per decision and as a portfolio, by how much, with a
95% CI and whether it survives a Holm correction), then the evidence: all-pairs matrix, forest
chart, the per-decision and portfolio views (each explained where it appears), disagreements
grouped per trade life, and for LLM policies each decision's transcript. docs/report.md
describes every section and chart.

Reads only the files documented in docs/run_folder.md. Any of them may be missing, empty or
partly written (a crashed run, a run with only rule policies, a skipped LLM policy); the report
then says so in its notes instead of failing.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from harness.reports.charts import (
    chart_drawdown,
    chart_equity,
    chart_forest,
    chart_regret,
    chart_rewards,
    equity_series,
)
from harness.reports.colors import HODL, policy_colors
from harness.reports.document import (
    DASH,
    FIGURES_DIR,
    Cell,
    Chart,
    Link,
    Section,
    Table,
    TranscriptBlock,
    finite,
    fmt_int,
    fmt_num,
    fmt_pct,
    fmt_reward,
    fmt_share,
    fmt_time,
    fmt_usd,
    reading,
    render_document,
    render_markdown,
    reward_unit,
)
from harness.reports.transcripts import read_transcripts, time_key, transcript_summary
from harness.stats import all_pairs, ci_method_label, holm_adjust

TOP_EPISODES = 15
MAX_LLM_ROWS = 25
MAX_VERDICT_PAIRS = 6
CHART_NAMES = (
    "equity_vs_hodl",
    "drawdown",
    "paired_differences",
    "reward_distribution",
    "cumulative_regret",
)
BOUND_LABELS = {
    "oracle": "per-decision bound (hindsight)",
    "oracle_schedule": "portfolio bound (hindsight schedule)",
}
PER_DECISION_NOTE = (
    "Per-decision view: every policy is asked at every decision time as if no call were open, "
    "and each choice is scored alone by what that call would have earned held to expiry, versus "
    "holding the coin. Neighbouring decisions overlap in time, so their sum is not money."
)
PORTFOLIO_NOTE = (
    "Portfolio view: each policy's choices replayed as one account holding the coin and selling "
    "one call at a time (a new call only after the last expired); this is the money (USD)."
)

DECISION_COLUMNS = [
    "n_candidates",
    "rationale",
    "decision_time",
    "policy",
    "action",
    "instrument_name",
    "choice",
    "label",
    "valid",
    "error",
    "reward",
    "best_reward",
    "regret",
    "is_llm",
    "llm_cost_usd",
    "llm_cost_saved_usd",
    "llm_calls_made",
    "llm_cache_hit",
    "prompt_id",
    "model",
]

# libyaml's parser when built (the same data as yaml.safe_load, several times faster)
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
LinkFor = Callable[[str, pd.Timestamp], str]
NAN = float("nan")
# the llm columns of a decision without an LLM answer (DECISION_COLUMNS from "is_llm" on)
_NO_LLM: tuple[Any, ...] = (False, 0.0, 0.0, 0.0, False, None, None)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class RunFolder:
    """Everything the report reads from one run folder (empty containers for missing files).

    Frozen and never modified after loading, so its derived views (status, policies) are
    computed once: a report asks them hundreds of times.
    """

    path: Path
    manifest: dict[str, Any]
    decisions: pd.DataFrame  # DECISION_COLUMNS, one row per (decision_time, policy)
    trades: pd.DataFrame
    equity: pd.DataFrame
    metrics: dict[str, dict[str, Any]]
    comparison: dict[str, Any]
    notes: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)
    transcripts: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def reward_kind(self) -> str | None:
        """Reward kind from comparison.json (or the manifest), None when unknown."""
        return self.comparison.get("reward_kind") or self.manifest.get("reward_kind")

    @cached_property
    def status(self) -> dict[str, dict[str, Any]]:
        """Policy -> {"status": ok|skipped|failed, "reason", ...} (manifest `policy_status`).

        Older runs have only `skipped: {name: reason}`; their other policies count as ok.
        """
        out: dict[str, dict[str, Any]] = {}
        for p, reason in (self.manifest.get("skipped") or {}).items():
            out[p] = {"status": "skipped", "reason": str(reason)}
        for p, st in (self.manifest.get("policy_status") or {}).items():
            if isinstance(st, dict) and st.get("status"):
                out[p] = dict(st)
        return out

    @cached_property
    def skipped(self) -> dict[str, str]:
        """Skipped policy (never ran) -> reason."""
        return {
            p: str(s.get("reason") or "")
            for p, s in self.status.items()
            if s.get("status") == "skipped"
        }

    @cached_property
    def failed(self) -> dict[str, str]:
        """Failed policy (ran, past an error/invalid threshold) -> reason."""
        return {
            p: str(s.get("reason") or "")
            for p, s in self.status.items()
            if s.get("status") == "failed"
        }

    @cached_property
    def compared(self) -> list[str]:
        """Policies that ran and count: not skipped, not failed (they enter no comparison)."""
        return [p for p in self.policies if p not in self.failed]

    def decision_stats(self, policy: str) -> dict[str, float]:
        """`decision_stats` of one policy's decision rows (made once per policy and run)."""
        cache = self._decision_stats
        if policy not in cache:
            arrays = self._stats_arrays
            if arrays is not None:
                cache[policy] = decision_stats_of_arrays(arrays, arrays["policy"] == policy)
            else:
                d = self._stats_columns
                cache[policy] = decision_stats(d[d["policy"] == policy])
        return dict(cache[policy])

    @cached_property
    def _stats_arrays(self) -> dict[str, np.ndarray] | None:
        # decision_stats' columns as numpy arrays, when they have the table's usual dtypes
        d = self._stats_columns
        if not set(STATS_COLUMNS) <= set(d.columns):
            return None
        floats = [d[c].dtype == np.float64 for c in ("n_candidates", "reward", "regret")]
        if not all(floats) or d["llm_cost_usd"].dtype != np.float64 or d["valid"].dtype != bool:
            return None
        return {
            "policy": d["policy"].to_numpy(dtype=object),
            "sold": (d["action"] == "SELL_CALL").to_numpy(dtype=bool),
            "n_candidates": d["n_candidates"].to_numpy(),
            "reward": d["reward"].to_numpy(),
            "regret": d["regret"].to_numpy(),
            "valid": d["valid"].to_numpy(),
            "error": d["error"].notna().to_numpy(dtype=bool),
            "llm_cost_usd": d["llm_cost_usd"].to_numpy(),
        }

    @cached_property
    def _decision_stats(self) -> dict[str, dict[str, float]]:
        return {}

    @cached_property
    def _stats_columns(self) -> pd.DataFrame:
        # only the columns decision_stats reads: a policy's rows are then a smaller take
        d = self.decisions
        return d[list(STATS_COLUMNS)] if set(STATS_COLUMNS) <= set(d.columns) else d

    @cached_property
    def llm_policies(self) -> set[Any]:
        """Policies with at least one LLM decision row."""
        d = self.decisions
        return set(d.loc[d["is_llm"], "policy"]) if d["is_llm"].any() else set()

    @cached_property
    def trade_keys(self) -> dict[Any, list[tuple[Any, str]]]:
        """Policy -> (open time, instrument) of each of its trades, in file order.

        Only compared within the run, so the open time may be trades.csv's text or a
        frame's Timestamp from memory (equal times, equal text); a missing policy (NaN) is
        left out, as a group-by leaves it out.
        """
        t = self.trades
        if t.empty or not {"policy", "open_time", "instrument_name"} <= set(t.columns):
            return {}
        keys: dict[Any, list[tuple[Any, str]]] = {}
        opened_at = t["open_time"]
        if isinstance(opened_at.dtype, pd.DatetimeTZDtype) and not opened_at.isna().any():
            opened_at = opened_at.tolist()  # a frame from memory: Timestamps compare as text
        else:
            opened_at = opened_at.astype(str).tolist()
        for p, opened, name in zip(
            t["policy"].tolist(),
            opened_at,
            t["instrument_name"].astype(str).tolist(),
            strict=True,
        ):
            if p == p:  # NaN is not a policy
                keys.setdefault(p, []).append((opened, name))
        return keys

    @cached_property
    def policies(self) -> list[str]:
        """Policies that ran: manifest order first, then any extra seen in the data."""
        seen: list[str] = [
            *(self.manifest.get("policies") or []),
            *self.metrics,
            *self.decisions["policy"].drop_duplicates().tolist(),
        ]
        out: list[str] = []
        for p in seen:
            if p not in out and p not in self.skipped:
                out.append(p)
        return out


def read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    """JSON object of a run file, {} (with a note) when missing or malformed."""
    if not path.exists():
        notes.append(f"{path.name} is missing.")
        return {}
    try:
        obj = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError as exc:
        notes.append(f"{path.name} is not valid JSON ({exc.msg}); ignored.")
        return {}
    return obj if isinstance(obj, dict) else {}


def _num(x: Any, default: float = float("nan")) -> float:
    if type(x) is float:  # the common case, without `finite`'s conversion attempt
        return x if math.isfinite(x) else default
    return float(x) if finite(x) else default


def choice_label(action: Any, instrument_name: Any) -> str:
    """What a decision chose: the instrument sold, or `DO_NOTHING`."""
    if action == "SELL_CALL":
        return str(instrument_name) if isinstance(instrument_name, str) else "SELL_CALL(?)"
    return "DO_NOTHING" if action in (None, "DO_NOTHING") else str(action)


def _llm_cells(llm: Any) -> tuple[Any, ...]:
    """The llm columns (DECISION_COLUMNS from "is_llm" on) of one decision's `llm` object."""
    if not isinstance(llm, dict) or not llm:
        return _NO_LLM  # a rule decision: most rows of most runs
    return (
        True,
        _num(llm.get("cost_usd"), 0.0),
        _num(llm.get("cost_saved_usd"), 0.0),
        _num(llm.get("calls_made"), 0.0),
        bool(llm.get("cache_hit", False)),
        llm.get("prompt_id"),
        llm.get("model"),
    )


def _decision_columns(objs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """DECISION_COLUMNS of decisions.jsonl objects, column by column (no tuple per row)."""
    n = len(objs)
    llms = [o.get("llm") for o in objs]
    cands = [o.get("candidates") for o in objs]
    actions = [o.get("action") for o in objs]
    names = [o.get("instrument_name") for o in objs]
    choices = [choice_label(a, x) for a, x in zip(actions, names, strict=True)]
    valid = [o.get("valid") is not False for o in objs]
    errors = [o.get("error") for o in objs]
    if any(isinstance(x, dict) and x for x in llms):
        llm_columns = list(zip(*map(_llm_cells, llms), strict=True))
    else:  # only rule rows (every row of a rule run or sweep trial)
        llm_columns = [[v] * n for v in _NO_LLM]
    return {
        "n_candidates": [float(len(c)) if isinstance(c, list) else NAN for c in cands],
        "rationale": [x.get("rationale") if isinstance(x, dict) else None for x in llms],
        "decision_time": [o.get("decision_time") for o in objs],
        "policy": [o.get("policy") for o in objs],
        "action": actions,
        "instrument_name": names,
        "choice": choices,
        "label": [
            c + ("" if v else " (invalid)") + (" (error)" if e else "")
            for c, v, e in zip(choices, valid, errors, strict=True)
        ],
        "valid": valid,
        "error": [str(e) if e else None for e in errors],
        "reward": [_num(o.get("reward")) for o in objs],
        "best_reward": [_num(o.get("best_reward")) for o in objs],
        "regret": [_num(o.get("regret")) for o in objs],
        **dict(zip(DECISION_COLUMNS[13:], llm_columns, strict=True)),
    }


def read_decisions(path: Path, notes: list[str] | None = None) -> pd.DataFrame:
    """Parse decisions.jsonl into one row per (decision_time, policy); bad lines are noted."""
    text = path.read_text() if path.exists() else ""
    objs: list[Any] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            objs.append(json.loads(line))
        except json.JSONDecodeError:
            objs.append(None)  # typically a half-written last line of an interrupted run
    return decisions_frame(objs, path.name, notes)


def decisions_frame(
    objs: Iterable[Any], file_name: str = "decisions.jsonl", notes: list[str] | None = None
) -> pd.DataFrame:
    """Decision rows (decisions.jsonl objects, in file order) as the report's decisions table.

    A runner passes the rows it just wrote from memory; `read_decisions` parses them from disk.
    """
    notes = [] if notes is None else notes
    good: list[dict[str, Any]] = []
    bad = 0
    for obj in objs:
        if isinstance(obj, dict) and obj.get("decision_time") and obj.get("policy"):
            good.append(obj)
        else:
            bad += 1
    if bad:
        notes.append(f"{file_name}: {bad} unreadable line(s) skipped.")
    columns = _decision_columns(good)
    # parsed from the list: a column of text would first be made and then parsed
    columns["decision_time"] = pd.to_datetime(columns["decision_time"], utc=True, format="ISO8601")
    return decisions_table(columns, file_name, notes)


def decisions_table(
    columns: dict[str, Any], file_name: str = "decisions.jsonl", notes: list[str] | None = None
) -> pd.DataFrame:
    """The report's decisions table from its DECISION_COLUMNS (decision_time parsed), in
    file order: duplicates dropped (the last write wins, noted), sorted by time and policy."""
    notes = [] if notes is None else notes
    df = pd.DataFrame(columns, columns=DECISION_COLUMNS)
    n = len(df)
    # A resumed run may append a decision twice; the last write wins.
    df = df.drop_duplicates(["decision_time", "policy"], keep="last")
    if len(df) < n:
        notes.append(
            f"{file_name}: {n - len(df)} duplicate (decision_time, policy) row(s) dropped."
        )
    return df.sort_values(["decision_time", "policy"], kind="stable").reset_index(drop=True)


def _read_table(
    path: Path, reader: Callable[[Path], pd.DataFrame], notes: list[str]
) -> pd.DataFrame:
    if not path.exists():
        notes.append(f"{path.name} is missing.")
        return pd.DataFrame()
    try:
        return reader(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except Exception as exc:  # a corrupt file must not stop the rest of the report
        notes.append(f"{path.name} could not be read ({type(exc).__name__}: {exc}).")
        return pd.DataFrame()


def load_run(
    run_dir: Path,
    decision_rows: Sequence[dict[str, Any]] | None = None,
    equity: pd.DataFrame | None = None,
    *,
    decisions: pd.DataFrame | None = None,
    trades: pd.DataFrame | None = None,
) -> RunFolder:
    """Read every documented file of a run folder, tolerating missing or empty ones.

    `decision_rows`: the decisions.jsonl objects already in memory (a runner that just wrote
    them, in file order); `decisions`: their table as `decisions_frame` makes it (then
    `decision_rows` is not read); `equity`: the frame just written to equity.parquet;
    `trades`: the frame just written to trades.csv (before the CSV round trip: the report
    only compares its trades within the run). Those files are then not re-read.
    """
    run_dir = Path(run_dir)
    notes: list[str] = []
    manifest = read_json(run_dir / "manifest.json", notes)
    decisions_path = run_dir / "decisions.jsonl"
    if decisions is None and decision_rows is not None:
        decisions = decisions_frame(decision_rows, decisions_path.name, notes)
    elif decisions is None:
        if not decisions_path.exists():
            notes.append("decisions.jsonl is missing.")
        decisions = read_decisions(decisions_path, notes)
    metrics = read_json(run_dir / "metrics.json", notes)
    comparison = read_json(run_dir / "comparison.json", notes)
    if trades is None:
        trades = _read_table(run_dir / "trades.csv", pd.read_csv, notes)
    if equity is None:
        equity = _read_table(run_dir / "equity.parquet", pd.read_parquet, notes)
    config: dict[str, Any] = {}
    if (run_dir / "config.yaml").is_file():
        try:
            loaded = yaml.load((run_dir / "config.yaml").read_text(), Loader=YAML_LOADER)
            config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            notes.append("config.yaml is not valid YAML; ignored.")
    if not equity.empty and not {"timestamp", "policy", "equity"} <= set(equity.columns):
        notes.append("equity.parquet lacks timestamp/policy/equity columns; ignored.")
        equity = pd.DataFrame()
    return RunFolder(
        path=run_dir,
        manifest=manifest,
        decisions=decisions,
        trades=trades,
        equity=equity,
        metrics={k: v for k, v in metrics.items() if isinstance(v, dict)},
        comparison=comparison,
        notes=tuple(notes),
        config=config,
        transcripts=read_transcripts(run_dir),
    )


# --------------------------------------------------------------------------- statistics


STATS_COLUMNS = (
    "policy",
    "action",
    "n_candidates",
    "reward",
    "regret",
    "valid",
    "error",
    "llm_cost_usd",
)  # the decisions columns `decision_stats` reads


def _nan_sum(values: np.ndarray) -> tuple[float, int]:
    """(sum, count) of the non-NaN values, as pandas' skipna reductions sum them."""
    mask = np.isnan(values)
    count = len(values) - int(mask.sum())
    with np.errstate(over="ignore", invalid="ignore"):  # inf, as pandas' sum gives it
        return float(np.where(mask, 0.0, values).sum(dtype=np.float64)), count


def _nan_mean(values: np.ndarray) -> float:
    total, count = _nan_sum(values)
    return total / count if count else float("nan")


def decision_stats_of_arrays(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    """`decision_stats` of the `rows` (a boolean mask) of `RunFolder._stats_arrays`: the same
    values (the same sums over the same values in the same order), without a frame per policy."""
    n = int(rows.sum())
    if n == 0:
        return {"n_decisions": 0.0}
    sold = arrays["sold"][rows]
    n_candidates = arrays["n_candidates"][rows]
    known = ~np.isnan(n_candidates)
    offered_none = known & (n_candidates == 0)
    return {
        "n_decisions": float(n),
        "mean_reward": _nan_mean(arrays["reward"][rows]),
        "total_reward": _nan_sum(arrays["reward"][rows])[0],
        "mean_regret": _nan_mean(arrays["regret"][rows]),
        "sell_rate": int(sold.sum()) / n,
        "no_candidate_rate": int(offered_none.sum()) / n if known.all() else float("nan"),
        "declined_rate": int((~sold & ~offered_none).sum()) / n,
        "invalid_rate": int((~arrays["valid"][rows]).sum()) / n,
        "error_rate": int(arrays["error"][rows].sum()) / n,
        "cost_usd": _nan_sum(arrays["llm_cost_usd"][rows])[0],
    }


def decision_stats(df: pd.DataFrame) -> dict[str, float]:
    """metrics.json-style decision statistics of one policy's decision rows (shares in [0, 1])."""
    n = len(df)
    if n == 0:
        return {"n_decisions": 0.0}
    sold = df["action"] == "SELL_CALL"
    known = df["n_candidates"].notna()
    offered_none = known & (df["n_candidates"] == 0)
    return {
        "n_decisions": float(n),
        "mean_reward": float(df["reward"].mean()),
        "total_reward": float(df["reward"].sum()),
        "mean_regret": float(df["regret"].mean()),
        "sell_rate": float(sold.mean()),
        "no_candidate_rate": float(offered_none.mean()) if known.all() else float("nan"),
        "declined_rate": float((~sold & ~offered_none).mean()),
        "invalid_rate": float((~df["valid"].astype(bool)).mean()),
        "error_rate": float(df["error"].notna().mean()),
        "cost_usd": float(df["llm_cost_usd"].sum()),
    }


def _wide(
    decisions: pd.DataFrame, columns: Sequence[str]
) -> tuple[pd.DatetimeIndex, list[Any], list[np.ndarray]]:
    """`decisions.pivot(index="decision_time", columns="policy", values=c)` of each column as
    (times, policies, one object array per column of shape times x policies, NaN where a
    policy has no row), without pandas' reshaping: sorted times and policies like `pivot`,
    which also refuses duplicate (time, policy) rows."""
    t_codes, times = pd.factorize(decisions["decision_time"], sort=True)
    p_codes, policies = pd.factorize(decisions["policy"], sort=True)
    flat = t_codes.astype(np.int64) * len(policies) + p_codes
    if len(np.unique(flat)) < len(flat):
        raise ValueError("Index contains duplicate entries, cannot reshape")
    out = []
    for c in columns:
        cells = np.full(len(times) * len(policies), np.nan, dtype=object)
        cells[flat] = decisions[c].to_numpy(dtype=object)
        out.append(cells.reshape(len(times), len(policies)))
    return pd.DatetimeIndex(times), list(policies), out


# the decisions columns both disagreement tables read, as one `_wide` (shared by the report)
CELL_COLUMNS = ("choice", "label", "reward", "instrument_name")
Cells = tuple[pd.DatetimeIndex, list[Any], list[np.ndarray]]


def disagreement_cells(decisions: pd.DataFrame) -> Cells:
    """`_wide(decisions, CELL_COLUMNS)`: what `disagreements` and `disagreement_episodes` of
    the same decisions read, reshaped once."""
    return _wide(decisions, CELL_COLUMNS)


def disagreements(
    decisions: pd.DataFrame, top: int | None = None, *, cells: Cells | None = None
) -> pd.DataFrame:
    """Decision times where policies chose differently, widest reward spread first.

    Columns: `decision_time`, `spread` (max - min reward across policies), and per policy
    `choice.<policy>` (display label) and `reward.<policy>`. `cells`: the decisions'
    `disagreement_cells`, when already made.
    """
    if decisions.empty:
        return pd.DataFrame(columns=["decision_time", "spread"])
    # numpy over the (time x policy) cells: pandas' pivots and group-bys were most of a sweep
    # trial's report (tests compare with them)
    if cells is None:
        cells = _wide(decisions, CELL_COLUMNS[:3])
    times, policies, (choice, label, reward, *_) = cells
    reward = reward.astype(float)
    # two different choices at a time (NaN is not a choice, as in a grouped nunique): the
    # largest and smallest code of the row's present choices differ
    codes = pd.factorize(choice.ravel())[0].reshape(choice.shape)  # -1: NaN or None
    present = codes >= 0
    differ = np.where(present, codes, -1).max(axis=1, initial=-1) > np.where(
        present, codes, np.iinfo(np.int64).max
    ).min(axis=1, initial=np.iinfo(np.int64).max)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row's spread is NaN
        spread = np.nanmax(reward, axis=1) - np.nanmin(reward, axis=1)
    rows = np.flatnonzero(differ)
    s = spread[rows]
    known = ~np.isnan(s)
    # widest first, ties in time order, unknown spreads last (pandas' stable descending sort)
    order = np.concatenate([rows[known][np.argsort(-s[known], kind="stable")], rows[~known]])
    order = order if top is None else order[:top]
    out = pd.DataFrame({"decision_time": times[order], "spread": spread[order]})
    for j, p in enumerate(policies):
        out[f"choice.{p}"] = label[order, j]
        out[f"reward.{p}"] = reward[order, j]
    return out


def _expiry_token(name: Any) -> str | None:
    # Deribit names read UNDERLYING-DMMMYY-STRIKE-C; the second part is the expiry.
    parts = name.split("-") if isinstance(name, str) else []
    return parts[1] if len(parts) >= 4 else None


def _first_expiry(names: list[Any]) -> str | None:
    for name in names:
        token = _expiry_token(name)
        if token is not None:
            return token
    return None


def disagreement_episodes(
    table: pd.DataFrame, decisions: pd.DataFrame, *, cells: Cells | None = None
) -> pd.DataFrame:
    """Group disagreement times per trade life: by the expiry of the call the policies chose.

    Neighbouring decisions sell calls of the same expiry, so one market event shows up as
    many disagreeing decisions; an episode is one expiry (one trade life). Columns: `expiry`,
    `start`, `end`, `n` (disagreeing decisions), `peak_time` (widest spread), `peak_spread`;
    widest first.
    """
    cols = ["expiry", "start", "end", "n", "peak_time", "peak_spread"]
    if table.empty:
        return pd.DataFrame(columns=cols)
    if cells is None:
        times, _, (names,) = _wide(decisions, ["instrument_name"])
    else:
        times, _, (*_, names) = cells
    at = table["decision_time"]
    rows = names[times.get_indexer(pd.DatetimeIndex(at))]
    # First policy's sold instrument per row; a time whose name has no parseable expiry is
    # its own episode rather than a wrong merge.
    expiry = [_first_expiry(row) for row in rows.tolist()]  # lists: no numpy row views
    keys = [e if e is not None else str(t) for e, t in zip(expiry, at, strict=True)]
    groups = np.array(sorted(set(keys)), dtype=object)  # sorted, as a group-by's keys
    index = {k: j for j, k in enumerate(groups.tolist())}
    group = np.array([index[k] for k in keys], dtype=np.int64)
    t_ns = pd.DatetimeIndex(at).as_unit("ns").asi8
    spread = table["spread"].to_numpy(dtype=float)
    row_no = np.arange(len(table))
    first = np.searchsorted(group[np.lexsort((row_no, group))], np.arange(len(groups)))
    by_time = np.lexsort((row_no, t_ns, group))
    n = np.bincount(group, minlength=len(groups))
    start_row, end_row = by_time[first], by_time[first + n - 1]
    # the first row of the widest spread per group (NaN never wins unless all are NaN)
    by_spread = np.lexsort((row_no, -np.where(np.isnan(spread), -np.inf, spread), group))
    peak_row = by_spread[first]
    peak_spread = spread[peak_row]
    # widest first (unknown last), then earliest start; ties keep the expiry order
    order = np.lexsort(
        (
            np.arange(len(groups)),
            t_ns[start_row],
            -np.where(np.isnan(peak_spread), -np.inf, peak_spread),
        )
    )
    pick = at.reset_index(drop=True)
    return pd.DataFrame(
        {
            "expiry": groups[order],
            "start": pick.iloc[start_row[order]].array,
            "end": pick.iloc[end_row[order]].array,
            "n": n[order].astype(np.int64),
            "peak_time": pick.iloc[peak_row[order]].array,
            "peak_spread": peak_spread[order],
        },
        columns=cols,
    )


def pairs_from_decisions(
    decisions: pd.DataFrame, policies: Sequence[str], block_length: int, seed: int = 0
) -> list[dict[str, Any]]:
    """All-pairs comparisons computed from decisions.jsonl (runs older than `all_pairs`)."""
    d = decisions[decisions["policy"].isin(policies)]
    if d.empty or len(policies) < 2:
        return []
    reward = d.pivot(index="decision_time", columns="policy", values="reward")
    choice = d.pivot(index="decision_time", columns="policy", values="instrument_name")
    names = [p for p in policies if p in reward.columns]
    rows = reward[names].dropna()
    pairs = all_pairs(
        {p: rows[p].to_numpy(dtype=float) for p in names},
        {p: choice.loc[rows.index, p].tolist() for p in names},
        block_length=block_length,
        seed=seed,
    )
    return [c.to_dict() for c in pairs]


# --------------------------------------------------------------------------- helpers


def fmt_p(x: Any) -> str:
    """A p-value with three decimals, `<0.001` below that (bootstrap p has no finer meaning)."""
    if not finite(x):
        return DASH
    return "<0.001" if float(x) < 0.001 else f"{float(x):.3f}"


def _policy_label(p: str, baseline: str | None, status: dict[str, dict[str, Any]]) -> str:
    out = p
    if p in BOUND_LABELS:
        out += f": {BOUND_LABELS[p]}"
    if p == baseline:
        out += " (baseline)"
    st = (status.get(p) or {}).get("status")
    if st == "failed":
        out += " (FAILED: not compared)"
    return out


def _is_bound(run: RunFolder, p: str) -> bool:
    if p in BOUND_LABELS:
        return True
    for entry in run.config.get("policies") or []:
        if isinstance(entry, dict) and entry.get("name") == p:
            return entry.get("rule") in BOUND_LABELS
    return False


def _policy_metrics(run: RunFolder, p: str) -> dict[str, Any]:
    """Decision statistics from decisions.jsonl, overlaid by metrics.json where it has them."""
    return {**run.decision_stats(p), **run.metrics.get(p, {})}


def _baseline(run: RunFolder) -> str | None:
    return run.manifest.get("baseline") or run.comparison.get("baseline")


def _block_length(run: RunFolder) -> int:
    value = run.comparison.get("block_length")
    return int(value) if finite(value) and int(value) >= 1 else 1


def _pairs(run: RunFolder) -> list[dict[str, Any]]:
    """All pairs among the compared policies, Holm-adjusted over exactly these pairs."""
    compared = set(run.compared)
    stored = [p for p in run.comparison.get("all_pairs") or [] if isinstance(p, dict)]
    if stored:
        pairs = [p for p in stored if p.get("policy") in compared and p.get("baseline") in compared]
    else:
        pairs = pairs_from_decisions(run.decisions, run.compared, _block_length(run))
    if pairs and all("p_value" in p for p in pairs):
        adjusted = holm_adjust([float(p["p_value"]) for p in pairs])
        pairs = [{**p, "p_holm": h} for p, h in zip(pairs, adjusted, strict=True)]
    return pairs


def pairs_method_label(pairs: Sequence[dict[str, Any]]) -> str:
    """How the pairs' intervals were computed, from the `ci_method` each records.

    Runs older than that field used the moving-block bootstrap.
    """
    methods = sorted({str(p.get("ci_method") or "block_bootstrap") for p in pairs})
    return "; ".join(ci_method_label(m) for m in methods) if methods else ci_method_label(None)


def _significance(p: dict[str, Any], n_family: int) -> str:
    lo, hi = p.get("ci_low"), p.get("ci_high")
    if not (finite(lo) and finite(hi)) or not (float(lo) > 0 or float(hi) < 0):
        return "not significant (the 95% CI includes 0)"
    holm = p.get("p_holm")
    if not finite(holm):
        return "significant at 95% (no p-value for a Holm correction)"
    survives = "survives" if float(holm) < 0.05 else "does not survive"
    return f"significant at 95%, and {survives} a Holm correction over the {n_family} pairs shown"


def _oriented(p: dict[str, Any]) -> dict[str, Any]:
    """The pair with the better policy first (mean and CI flipped), so sentences say who won."""
    if not finite(p.get("mean_diff")) or float(p["mean_diff"]) >= 0:
        return p
    return {
        **p,
        "policy": p.get("baseline"),
        "baseline": p.get("policy"),
        "mean_diff": -float(p["mean_diff"]),
        "ci_low": -float(p["ci_high"]),
        "ci_high": -float(p["ci_low"]),
    }


def _pair_sentence(p: dict[str, Any], unit: str, n_family: int) -> str:
    p = _oriented(p)
    a, b, m = str(p.get("policy")), str(p.get("baseline")), p.get("mean_diff")
    if not finite(m):
        return f"Per decision, {a} vs {b}: no paired decisions."
    ci = f"95% CI {fmt_reward(p.get('ci_low'), unit)} to {fmt_reward(p.get('ci_high'), unit)}"
    if float(m) == 0:
        return f"Per decision, {a} matched {b} on average ({ci})."
    verb = "beat" if float(m) > 0 else "trailed"
    amount = fmt_reward(abs(float(m)), unit)
    return (
        f"Per decision, {a} {verb} {b} by {amount} per decision ({ci}): "
        f"{_significance(p, n_family)}."
    )


# --------------------------------------------------------------------------- verdict


def _verdict(run: RunFolder, unit: str, pairs: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    if not run.policies:
        return ["No policy produced decisions or metrics: there is no answer in this run."]
    base = _baseline(run)
    candidates = [
        p for p in pairs if not (_is_bound(run, p["policy"]) or _is_bound(run, p["baseline"]))
    ]
    # Pairs with the baseline and significant ones first: those are what the run is asked.
    candidates.sort(
        key=lambda p: (
            not (p.get("policy") == base or p.get("baseline") == base),
            not (finite(p.get("p_holm")) and float(p["p_holm"]) < 0.05),
            -abs(float(p["mean_diff"])) if finite(p.get("mean_diff")) else 0.0,
        )
    )
    for p in candidates[:MAX_VERDICT_PAIRS]:
        out.append(_pair_sentence(p, unit, len(pairs)))
    if len(candidates) > MAX_VERDICT_PAIRS:
        out.append(
            f"{len(candidates) - MAX_VERDICT_PAIRS} more pair(s) are in the all-pairs matrix below."
        )
    out.extend(_portfolio_verdict(run))
    out.extend(_bound_verdict(run, unit))
    for p, why in run.skipped.items():
        out.append(f"{p} was SKIPPED (never ran) and is in no comparison: {why}")
    for p, why in run.failed.items():
        out.append(f"{p} FAILED (ran, but {why}) and is in no comparison.")
    return out


def _portfolio_verdict(run: RunFolder) -> list[str]:
    ranked = [
        (p, float(run.metrics[p]["pnl_vs_hodl_usd"]))
        for p in run.compared
        if finite(run.metrics.get(p, {}).get("pnl_vs_hodl_usd")) and not _is_bound(run, p)
    ]
    if not ranked:
        return []
    ranked.sort(key=lambda x: -x[1])
    parts = ", ".join(f"{p} {fmt_usd(v, 0)}" for p, v in ranked)
    best, v = ranked[0]
    verb = "beat" if v > 0 else "did not beat"
    out = [
        f"As a portfolio (one call at a time, replayed), {best} {verb} HODL the most: "
        f"ending equity minus HODL's was {parts} (one price path: no confidence interval)."
    ]
    same = _identical_trade_pairs(run)
    if same:
        out.append(
            "Identical portfolio trades: "
            + "; ".join(f"{a} = {b}" for a, b in same)
            + " (their per-decision scores differ only where the portfolio already held a call)."
        )
    dd = [
        (p, run.metrics[p].get("max_drawdown_pct"))
        for p, _ in ranked
        if finite(run.metrics[p].get("max_drawdown_pct"))
    ]
    hodl_dd = _hodl_metrics(run).get("max_drawdown_pct")
    if dd:
        worse = [p for p, x in dd if finite(hodl_dd) and float(x) > float(hodl_dd) + 1e-9]
        text = "Max drawdown: " + ", ".join(f"{p} {fmt_pct(x, 1)}" for p, x in dd)
        if finite(hodl_dd):
            text += f"; HODL {fmt_pct(hodl_dd, 1)}"
            text += (
                f" ({', '.join(worse)} deeper than HODL)." if worse else " (none deeper than HODL)."
            )
        else:
            text += "."
        out.append(text)
    return out


def _bound_verdict(run: RunFolder, unit: str) -> list[str]:
    others = [p for p in run.compared if not _is_bound(run, p)]
    out = []
    for b in [p for p in run.compared if _is_bound(run, p)]:
        if not others:
            break
        if _bound_kind(run, b) == "oracle_schedule":
            # The portfolio bound is a schedule: compare money (PnL vs HODL), not per decision.
            vb = run.metrics.get(b, {}).get("pnl_vs_hodl_usd")
            vals = {p: run.metrics.get(p, {}).get("pnl_vs_hodl_usd") for p in others}
            vals = {p: float(v) for p, v in vals.items() if finite(v)}
            if not finite(vb) or float(vb) <= 0 or not vals:
                continue
            best = max(vals, key=lambda p: vals[p])
            out.append(
                f"The {BOUND_LABELS['oracle_schedule']}, {b}, ends {fmt_usd(vb, 0)} ahead of "
                f"HODL; the best policy as a portfolio, {best}, reaches "
                f"{fmt_share(vals[best] / float(vb))} of it."
            )
            continue
        mb = _policy_metrics(run, b).get("mean_reward")
        if not finite(mb) or float(mb) <= 0:
            continue
        best = max(others, key=lambda p: _policy_metrics(run, p).get("mean_reward", -np.inf))
        mx = _policy_metrics(run, best).get("mean_reward")
        out.append(
            f"The {BOUND_LABELS['oracle']}, {b}, earns {fmt_reward(mb, unit)} per decision; the "
            f"best policy, {best}, reaches {fmt_share(float(mx) / float(mb))} of it."
        )
    return out


def _bound_kind(run: RunFolder, p: str) -> str:
    """`oracle` (per-decision bound) or `oracle_schedule` (portfolio bound) of a bound policy."""
    if p in BOUND_LABELS:
        return p
    for entry in run.config.get("policies") or []:
        if isinstance(entry, dict) and entry.get("name") == p and entry.get("rule") in BOUND_LABELS:
            return str(entry["rule"])
    return "oracle"


# --------------------------------------------------------------------------- sections


def _period(run: RunFolder) -> str | None:
    d = run.decisions
    if d.empty:
        return None
    first, last = d["decision_time"].min(), d["decision_time"].max()
    n_times = d["decision_time"].nunique()
    text = f"{fmt_time(first)} → {fmt_time(last)} UTC ({n_times:,} decision times)"
    sim = run.config.get("simulation") or {}
    end = sim.get("end")
    if end is None:
        return text
    try:
        end_ts = pd.Timestamp(str(end))
        end_ts = end_ts.tz_localize("UTC") if end_ts.tz is None else end_ts.tz_convert("UTC")
    except (ValueError, TypeError):
        return text
    gap_days = (end_ts - last) / pd.Timedelta(days=1)
    if gap_days > 1.0:
        dte, tol = sim.get("target_dte"), sim.get("dte_tolerance")
        room = (
            f"a call of about {fmt_num(dte, 0)} days (tolerance {fmt_num(tol or 0, 0)})"
            if finite(dte)
            else "the target call"
        )
        text += (
            f"; decisions stop {gap_days:.1f} days before the config's end "
            f"{end_ts:%Y-%m-%d} because the last decision must leave room for {room} to expire "
            "inside the data"
        )
    return text


def _header(run: RunFolder) -> list[tuple[str, str]]:
    m = run.manifest
    name = m.get("name") or run.path.name
    rows: list[tuple[str, str]] = [("Run", f"{name} ({m.get('run_id') or run.path.name})")]
    rows.append(("Status", str(m.get("status") or "unknown")))
    period = _period(run)
    if period:
        rows.append(("Period", period))
    rows.append(("Market data", str(m.get("data_fingerprint") or DASH)))
    rows.append(("Policies", ", ".join(run.policies) or DASH))
    rows.append(("Baseline", str(_baseline(run) or DASH)))
    unit = reward_unit(run.reward_kind)
    rows.append(("Reward", f"{run.reward_kind} ({unit})" if unit else str(run.reward_kind or DASH)))
    for p, model in (m.get("model_ids") or {}).items():
        prompt = (m.get("prompt_ids") or {}).get(p, DASH)
        rows.append((f"LLM {p}", f"model {model}, prompt {prompt}"))
    code = (
        f"harness {m.get('package_version', DASH)}, commit {str(m.get('git_commit') or DASH)[:12]}"
    )
    rows.append(("Code", code))
    if m.get("started_at") or m.get("finished_at"):
        rows.append(("Ran", f"{m.get('started_at', DASH)} → {m.get('finished_at', DASH)}"))
    rows.extend(_llm_usage(run))
    return rows


def _llm_usage(run: RunFolder) -> list[tuple[str, str]]:
    usage: dict[str, dict[str, Any]] = dict(run.manifest.get("llm_usage") or {})
    d = run.decisions
    # Fall back to the decision rows for LLM policies the manifest has no usage for.
    for p in d.loc[d["is_llm"], "policy"].drop_duplicates() if run.llm_policies else ():
        if p not in usage:
            rows = d[(d["policy"] == p) & d["is_llm"]]
            usage[p] = {
                "calls_made": rows["llm_calls_made"].sum(),
                "served_from_cache": int(rows["llm_cache_hit"].sum()),
                "cost_usd": rows["llm_cost_usd"].sum(),
                "cost_saved_usd": rows["llm_cost_saved_usd"].sum(),
            }
    if not usage:
        return [("LLM usage", "none (no LLM policy ran)")]
    return [
        (
            f"LLM usage {p}",
            f"{fmt_int(u.get('calls_made'))} calls made, "
            f"{fmt_int(u.get('served_from_cache'))} served from cache; "
            f"cost {fmt_usd(u.get('cost_usd', u.get('cost_usd_incurred')), 4)}, "
            f"saved {fmt_usd(u.get('cost_saved_usd', u.get('cost_usd_saved')), 4)}"
            + _batch_cost(u),
        )
        for p, u in usage.items()
    ]


def _batch_cost(u: dict[str, Any]) -> str:
    """Live vs batch split of a policy's cost, when some answers came by batch."""
    if not u.get("batch_answers") and u.get("execution") != "batch":
        return ""
    return (
        f"; live {fmt_usd(u.get('cost_usd_live'), 4)}, batch "
        f"{fmt_usd(u.get('cost_usd_batch'), 4)} for {fmt_int(u.get('batch_answers'))} answers "
        f"({fmt_usd(u.get('cost_usd_batch_at_live_prices'), 4)} at live prices)"
    )


def _status_section(run: RunFolder) -> Section | None:
    status = run.status
    if not any(s.get("status") != "ok" for s in status.values()):
        return None
    cols = ["Policy", "Status", "Reason", "Asked", "Errors", "Invalid", "Top error"]
    rows: list[list[Cell]] = []
    names = [*run.policies, *[p for p in status if p not in run.policies]]
    for p in names:
        s = status.get(p, {"status": "ok"})
        rows.append(
            [
                p,
                str(s.get("status", "ok")).upper(),
                str(s.get("reason") or ""),
                fmt_int(s.get("asked")),
                fmt_int(s.get("errors")),
                fmt_int(s.get("invalid")),
                str(s.get("top_error") or ""),
            ]
        )
    intro = (
        "Skipped: never ran (no key, endpoint unreachable, auth, model not found). Failed: ran, "
        "but errors or invalid answers passed the policy's threshold. Neither enters any "
        "comparison or verdict; a failed policy's decisions stay listed for inspection."
    )
    return Section(
        "Policy status",
        [intro],
        table=Table(cols, rows, ["l"] * 3 + ["r"] * 3 + ["l"]),
        anchor="status",
    )


def _decision_table(run: RunFolder, unit: str) -> Table:
    base, status = _baseline(run), run.status
    cols = ["Policy", "Decisions", "Mean reward", "Mean regret", "Sold", "No candidate offered"]
    cols += ["Chose not to sell", "Invalid", "Errors", "LLM cost", "Sum (overlapping, not PnL)"]
    rows: list[list[Cell]] = []
    for p in run.policies:
        m = _policy_metrics(run, p)
        rows.append(
            [
                _policy_label(p, base, status),
                fmt_int(m.get("n_decisions")),
                fmt_reward(m.get("mean_reward"), unit),
                fmt_reward(m.get("mean_regret"), unit),
                fmt_share(m.get("sell_rate")),
                fmt_share(m.get("no_candidate_rate")),
                fmt_share(m.get("declined_rate")),
                fmt_share(m.get("invalid_rate"), 2),
                fmt_share(m.get("error_rate"), 2),
                fmt_usd(m.get("cost_usd"), 4),
                fmt_reward(m.get("total_reward"), unit),
            ]
        )
    return Table(cols, rows, ["l"] + ["r"] * (len(cols) - 1))


def _hodl_metrics(run: RunFolder) -> dict[str, Any]:
    for p in run.policies:
        m = run.metrics.get(p, {})
        if finite(m.get("hodl_return_pct")):
            return {
                "total_return_pct": m["hodl_return_pct"],
                "max_drawdown_pct": m.get("hodl_max_drawdown_pct"),
            }
    eq = run.equity
    if not eq.empty and "hodl" in eq:
        first = eq[eq["policy"] == eq["policy"].iloc[0]].sort_values("timestamp")
        h = first["hodl"].to_numpy(dtype=float)
        if len(h) and h[0] > 0:
            return {
                "total_return_pct": (h[-1] / h[0] - 1.0) * 100.0,
                "max_drawdown_pct": float(np.max(1.0 - h / np.maximum.accumulate(h)) * 100.0),
            }
    return {}


def _portfolio_table(run: RunFolder) -> Table:
    base, status = _baseline(run), run.status
    cols = ["Policy", "PnL vs HODL", "Total return", "Sharpe", "Sortino", "Max drawdown"]
    cols += ["Trades", "ITM share", "Win rate vs HODL", "Premium", "Fees", "Upside given up"]
    rows: list[list[Cell]] = []
    for p in run.policies:
        m = run.metrics.get(p, {})
        traded = finite(m.get("n_trades")) and float(m["n_trades"]) > 0
        rows.append(
            [
                _policy_label(p, base, status),
                fmt_usd(m.get("pnl_vs_hodl_usd")),
                fmt_pct(m.get("total_return_pct")),
                fmt_num(m.get("sharpe")),
                fmt_num(m.get("sortino")),
                fmt_pct(m.get("max_drawdown_pct")),
                fmt_int(m.get("n_trades")),
                # Shares of trades are undefined without trades; the simulator reports 0.
                fmt_share(m.get("itm_share")) if traded else DASH,
                fmt_share(m.get("win_rate_vs_hodl")) if traded else DASH,
                fmt_usd(m.get("premium_collected_usd")),
                fmt_usd(m.get("fees_paid_usd")),
                fmt_usd(m.get("upside_given_up_usd")),
            ]
        )
    h = _hodl_metrics(run)
    if h:
        rows.append(
            [
                HODL,
                fmt_usd(0.0),
                fmt_pct(h.get("total_return_pct")),
                DASH,
                DASH,
                fmt_pct(h.get("max_drawdown_pct")),
                "0",
                *[DASH] * 5,
            ]
        )
    return Table(cols, rows, ["l"] + ["r"] * (len(cols) - 1))


def _identical_trade_pairs(run: RunFolder) -> list[tuple[str, str]]:
    keys = run.trade_keys
    names = [p for p in run.compared if p in keys]
    return [
        (a, b)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if keys[a] == keys[b] and keys[a]
    ]


def _identical_trades(run: RunFolder) -> list[str]:
    return [
        f"{a} and {b} made identical portfolio trades ({len(run.trade_keys[a])}), so "
        "their portfolio rows match; their per-decision scores can still differ because they "
        "chose differently at decision times when the portfolio already held a call."
        for a, b in _identical_trade_pairs(run)
    ]


def _view_sections(run: RunFolder, unit: str) -> list[Section]:
    if not run.policies:
        return [Section("Per-decision view", ["No policy produced decisions or metrics."])]
    decision = Section(
        "Per-decision view: each decision scored alone",
        [
            PER_DECISION_NOTE,
            f"Rewards in {unit or 'units unknown'}; regret is the gap to the best choice in "
            "hindsight at that decision. Sold + no candidate offered + chose not to sell = 100% "
            "of decision times.",
        ],
        table=_decision_table(run, unit),
        anchor="per-decision",
    )
    notes = [PORTFOLIO_NOTE, "Returns and drawdown in %; Sharpe/Sortino annualized."]
    if not run.metrics:
        notes.append("metrics.json is missing: no portfolio metrics.")
    portfolio = Section(
        "Portfolio view: one covered call at a time",
        notes + _identical_trades(run),
        table=_portfolio_table(run) if run.metrics else None,
        anchor="portfolio",
    )
    return [decision, portfolio]


def _matrix_section(
    run: RunFolder, unit: str, pairs: list[dict[str, Any]], *, charts: bool = True
) -> Section:
    title = "Paired differences per decision: all pairs"
    if not pairs:
        return Section(
            title,
            ["No paired comparison available (fewer than two compared policies or no data)."],
            anchor="pairs",
        )
    names = run.compared
    by = {(p["policy"], p["baseline"]): p for p in pairs}
    rows: list[list[Cell]] = []
    for r in names:
        row: list[Cell] = [r]
        for c in names:
            if r == c:
                row.append(DASH)
                continue
            p, sign = (by.get((r, c)), 1.0) if (r, c) in by else (by.get((c, r)), -1.0)
            if p is None or not finite(p.get("mean_diff")):
                row.append(DASH)
                continue
            lo, hi = sign * float(p["ci_low"]), sign * float(p["ci_high"])
            lo, hi = min(lo, hi), max(lo, hi)
            mark = ""
            if lo > 0 or hi < 0:
                mark = " **" if finite(p.get("p_holm")) and float(p["p_holm"]) < 0.05 else " *"
            row.append(
                f"{fmt_reward(sign * float(p['mean_diff']), unit)} "
                f"[{fmt_reward(lo, unit)}, {fmt_reward(hi, unit)}]{mark}"
            )
        rows.append(row)
    matrix = Table(["Row − column", *names], rows, ["l"] + ["r"] * len(names))
    cols = ["First", "Second", "Decisions", "Mean diff", "95% CI", "p", "Holm p"]
    cols += ["Wins / losses / ties", "Agreement", "Block length"]
    detail: list[list[Cell]] = []
    for c in pairs:
        detail.append(
            [
                str(c.get("policy")),
                str(c.get("baseline")),
                fmt_int(c.get("n")),
                fmt_reward(c.get("mean_diff"), unit),
                f"{fmt_reward(c.get('ci_low'), unit)} to {fmt_reward(c.get('ci_high'), unit)}",
                fmt_p(c.get("p_value")),
                fmt_p(c.get("p_holm")),
                f"{fmt_int(c.get('wins'))} / {fmt_int(c.get('losses'))} / {fmt_int(c.get('ties'))}",
                fmt_share(c.get("agreement_rate")),
                fmt_int(c.get("block_length", run.comparison.get("block_length"))),
            ]
        )
    method = pairs_method_label(pairs)
    intro = (
        "Per-decision view. Each cell: mean of (row policy − column policy) reward over the same "
        f"decisions, with its 95% CI ({method}; docs/calibration.md). * the CI excludes 0; "
        "** it also "
        f"survives a Holm correction over all {len(pairs)} pairs. Skipped and failed policies "
        "are left out."
    )
    forest = chart_forest(pairs, unit, method) if charts else None
    readings = [
        reading(
            str(c.get("policy")),
            str(c.get("baseline")),
            float(c["mean_diff"]) if finite(c.get("mean_diff")) else float("nan"),
            float(c["ci_low"]) if finite(c.get("ci_low")) else float("nan"),
            float(c["ci_high"]) if finite(c.get("ci_high")) else float("nan"),
            unit,
        )
        for c in pairs
    ]
    return Section(
        title,
        [intro],
        table=matrix,
        tables=[("Every pair (first − second)", Table(cols, detail, ["l", "l"] + ["r"] * 8))],
        bullets=list(readings),
        charts=[forest] if forest else [],
        anchor="pairs",
    )


def _chart_section(run: RunFolder, unit: str, colors: dict[str, str]) -> Section:
    policies = run.compared
    charts: list[Chart] = []
    notes: list[str] = []
    series = equity_series(run.equity, policies) if not run.equity.empty else {}
    if series:
        charts += [chart_equity(series, colors), chart_drawdown(series, colors)]
    else:
        notes.append("No equity data: equity and drawdown charts omitted.")
    for chart in (
        chart_rewards(run.decisions, policies, unit, colors),
        chart_regret(run.decisions, policies, colors, unit),
    ):
        if chart is not None:
            charts.append(chart)
    if run.decisions.empty:
        notes.append("No decisions: reward and regret charts omitted.")
    notes.append(
        "Colours are fixed per policy name (the same in every run); HODL is dark slate (drawn thicker), the "
        "per-decision bound black, the portfolio bound grey."
    )
    return Section("Charts", notes, charts=charts, anchor="charts")


def _choice_cell(
    run: RunFolder,
    p: str,
    t: pd.Timestamp,
    text: str,
    link_for: LinkFor | None,
    linked: list[tuple[str, pd.Timestamp]],
) -> Cell:
    if link_for is None:
        return text
    if link_for is _static_link:
        if (p, time_key(t)) not in run.transcripts:
            return text
        linked.append((p, pd.Timestamp(t)))  # its transcript block goes into the page
    return Link(text, link_for(p, t))


def _disagreement_section(
    run: RunFolder, unit: str, link_for: LinkFor | None, linked: list[tuple[str, pd.Timestamp]]
) -> Section:
    title = "Disagreements, grouped per trade life"
    # The hindsight bounds disagree with everyone all the time; they would make one big episode.
    shown = [p for p in run.compared if not _is_bound(run, p)]
    keep = run.decisions["policy"].isin(shown)
    d = run.decisions if keep.all() else run.decisions[keep]
    cells = disagreement_cells(d) if not d.empty else None
    everything = disagreements(d, top=None, cells=cells)
    if everything.empty:
        reason = "no decisions" if d.empty else "all policies chose the same"
        return Section(title, [f"No disagreements: {reason}."], anchor="disagreements")
    episodes = disagreement_episodes(everything, d, cells=cells)
    present = {c.removeprefix("choice.") for c in everything.columns if c.startswith("choice.")}
    policies = [p for p in shown if p in present]
    top = episodes.head(TOP_EPISODES).to_dict("records")
    # each listed episode's peak row (one row per decision time), as a dict
    at = {t: i for i, t in enumerate(everything["decision_time"])}
    peaks = everything.iloc[[at[e["peak_time"]] for e in top]].to_dict("records")
    rows: list[list[Cell]] = []
    for e, peak in zip(top, peaks, strict=True):
        cells: list[Cell] = [
            str(e["expiry"]),
            f"{fmt_time(e['start'])} → {fmt_time(e['end'])}",
            fmt_int(e["n"]),
            fmt_time(e["peak_time"]),
            fmt_reward(e["peak_spread"], unit),
        ]
        for p in policies:
            label = peak.get(f"choice.{p}")
            if not isinstance(label, str):
                cells.append(DASH)
                continue
            text = f"{label} ({fmt_reward(peak.get(f'reward.{p}'), unit)})"
            cells.append(_choice_cell(run, p, e["peak_time"], text, link_for, linked))
        rows.append(cells)
    intro = (
        f"{len(everything):,} decision time(s) where the compared policies (hindsight bounds "
        f"left out) chose differently, grouped into {len(episodes):,} trade lives by the expiry "
        "of the call chosen, so one market event is one row. The "
        f"{min(TOP_EPISODES, len(episodes))} with the widest reward spread are listed; cells "
        "show each policy's choice (reward) at the trade life's widest decision."
    )
    cols = ["Expiry", "Decisions from → to (UTC)", "Decisions", "Widest at", "Spread", *policies]
    return Section(
        title,
        [intro],
        table=Table(cols, rows, ["l", "l", "r", "l", "r"] + ["l"] * len(policies)),
        anchor="disagreements",
    )


def _static_link(policy: str, t: pd.Timestamp) -> str:
    return f"#{transcript_anchor(policy, t)}"


def transcript_anchor(policy: str, t: Any) -> str:
    """HTML id of a decision's transcript block in the static report."""
    stamp = pd.Timestamp(t).tz_convert("UTC").strftime("%Y%m%dT%H%M")
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in policy)
    return f"tr-{safe}-{stamp}"


def _llm_rows(run: RunFolder, p: str) -> pd.DataFrame:
    d = run.decisions
    rows = d[(d["policy"] == p) & d["is_llm"]]
    # Costliest mistakes first: the decisions a person wants to read.
    return rows.sort_values("regret", ascending=False, kind="stable").head(MAX_LLM_ROWS)


def transcript_block(
    run: RunFolder, p: str, t: pd.Timestamp, row: dict[str, Any] | None, unit: str
) -> TranscriptBlock | None:
    """The transcript of one LLM decision for display; None without records."""
    recs = run.transcripts.get((p, time_key(t)))
    if not recs:
        return None
    s = transcript_summary(recs)
    first = recs[0]
    messages = [
        (str(m.get("role", "?")), str(m.get("content", "")))
        for m in ((first.get("request") or {}).get("messages") or [])
        if isinstance(m, dict)
    ]
    answers = []
    for r in recs:
        resp = r.get("response") or {}
        label = f"answer (attempt {r.get('attempt', 0)}, sample {r.get('sample', 0)})"
        label += ", from cache" if r.get("from_cache") else ""
        text = (
            resp.get("content") if resp.get("content") is not None else f"error: {r.get('error')}"
        )
        answers.append((label, str(text), str(resp.get("reasoning") or "")))
    facts = [
        ("Model", str(first.get("model") or DASH)),
        ("Prompt", str(first.get("prompt_id") or DASH)),
        ("Requests", f"{s['requests']} ({s['from_cache']} from cache)"),
        ("Tokens", f"{s['prompt_tokens']:,} prompt, {s['completion_tokens']:,} completion"),
        ("Cost", fmt_usd(s["cost_usd"], 6)),
    ]
    if row is not None:
        facts += [
            ("Choice", str(row.get("label"))),
            ("Rationale", str(row.get("rationale") or DASH)),
            ("Reward", fmt_reward(row.get("reward"), unit)),
            ("Best in hindsight", fmt_reward(row.get("best_reward"), unit)),
        ]
    return TranscriptBlock(
        anchor=transcript_anchor(p, t),
        title=f"{p} at {fmt_time(t)} UTC",
        facts=facts,
        messages=messages,
        answers=answers,
    )


def _llm_sections(
    run: RunFolder, unit: str, link_for: LinkFor | None, linked: list[tuple[str, pd.Timestamp]]
) -> list[Section]:
    d = run.decisions
    llm_policies = [p for p in run.policies if p in run.llm_policies]
    if not llm_policies:
        return []
    sections: list[Section] = []
    for p in llm_policies:
        rows: list[list[Cell]] = []
        for r in _llm_rows(run, p).to_dict("records"):
            t = r["decision_time"]
            cells: list[Cell] = [
                _choice_cell(run, p, t, fmt_time(t), link_for, linked),
                str(r["label"]),
                fmt_reward(r["reward"], unit),
                fmt_reward(r["regret"], unit),
                str(r.get("rationale") or DASH)[:120],
                "yes" if r["llm_cache_hit"] else "no",
                fmt_usd(r["llm_cost_usd"], 5),
            ]
            rows.append(cells)
        n = int((d["policy"] == p).sum())
        sections.append(
            Section(
                f"LLM decisions: {p}",
                [
                    f"The {len(rows)} of {n:,} decisions with the largest regret; the time links "
                    "to the decision's transcript (prompt, raw answer, reasoning, rationale, "
                    "tokens, cost). `harness view` browses every decision."
                ],
                table=Table(
                    ["Time (UTC)", "Choice", "Reward", "Regret", "Rationale", "Cache hit", "Cost"],
                    rows,
                    ["l", "l", "r", "r", "l", "l", "r"],
                ),
                anchor=f"llm-{p}",
            )
        )
    blocks = _linked_blocks(run, unit, linked)
    if blocks:
        sections.append(
            Section(
                "LLM transcripts",
                [
                    "Every request the policy made or took from the cache, for each decision linked above."
                ],
                transcripts=blocks,
                anchor="transcripts",
            )
        )
    elif not run.transcripts:
        sections[-1].paragraphs.append("transcripts.jsonl is missing: no transcripts to link.")
    return sections


def _linked_blocks(
    run: RunFolder, unit: str, linked: list[tuple[str, pd.Timestamp]]
) -> list[TranscriptBlock]:
    d = run.decisions.set_index(["policy", "decision_time"])
    blocks, seen = [], set()
    for p, t in linked:
        if (p, t) in seen:
            continue
        seen.add((p, t))
        row = d.loc[(p, t)].to_dict() if (p, t) in d.index else None
        block = transcript_block(run, p, t, row, unit)
        if block is not None:
            blocks.append(block)
    return blocks


def _run_notes(run: RunFolder) -> list[str]:
    notes = list(run.notes)
    for p in run.policies:
        n = int((run.decisions["policy"] == p).sum())
        if n == 0:
            notes.append(f"{p}: no decisions recorded.")
        m = run.metrics.get(p, {})
        if finite(m.get("n_trades")) and float(m["n_trades"]) == 0:
            notes.append(f"{p}: made no trades.")
    return notes


@dataclass(frozen=True)
class Document:
    """A run report before rendering: the verdict, run facts, notes, sections and charts."""

    title: str
    verdict: list[str]
    header: list[tuple[str, str]]
    notes: list[str]
    sections: list[Section]
    charts: list[Chart] = field(default_factory=list)


def build_document(
    run: RunFolder, link_for: LinkFor | None = _static_link, *, charts: bool = True
) -> Document:
    """The report of a loaded run; `link_for(policy, time)` gives each LLM decision's link.

    The default links to transcript blocks inside the same page (the static report); the
    viewer passes its own URLs and then no transcript blocks are embedded. `charts=False`
    (sweep trials) draws no matplotlib chart at all.
    """
    unit = reward_unit(run.reward_kind)
    colors = policy_colors([*run.policies, *BOUND_LABELS])
    pairs = _pairs(run)
    chart_section = (
        _chart_section(run, unit, colors)
        if charts
        else Section(
            "Charts", ["Charts not drawn (sweep trial); `write_report(run_dir)` draws them."]
        )
    )
    matrix = _matrix_section(run, unit, pairs, charts=charts)
    status = _status_section(run)
    linked: list[tuple[str, pd.Timestamp]] = []
    sections = [
        *([status] if status else []),
        matrix,
        *_view_sections(run, unit),
        chart_section,
        _disagreement_section(run, unit, link_for, linked),
        *_llm_sections(run, unit, link_for, linked),
    ]
    name = run.manifest.get("name") or run.path.name
    return Document(
        title=f"Run report: {name}",
        verdict=_verdict(run, unit, pairs),
        header=_header(run),
        notes=_run_notes(run),
        sections=sections,
        charts=[*matrix.charts, *chart_section.charts],
    )


def build_report(run: RunFolder, *, charts: bool = True) -> tuple[str, str, list[Chart]]:
    """Markdown, HTML and charts of a loaded run (`charts=False`: no matplotlib charts drawn)."""
    doc = build_document(run, charts=charts)
    md, html = render_document(doc.title, doc.header, doc.notes, doc.sections, doc.verdict)
    return md, html, doc.charts


def write_report(
    run_dir: Path,
    *,
    html: bool = True,
    decision_rows: Sequence[dict[str, Any]] | None = None,
    equity: pd.DataFrame | None = None,
    decisions: pd.DataFrame | None = None,
    trades: pd.DataFrame | None = None,
) -> tuple[Path, Path | None]:
    """Write report.md (+ figures/*.png) and self-contained report.html into the run folder.

    `html=False` (sweep trials) writes report.md only and draws no charts. `decision_rows`,
    `equity`, `decisions`, `trades`: decisions.jsonl's objects or table, equity.parquet's and
    trades.csv's frames from memory (see `load_run`); the same report as from disk.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir, decision_rows, equity, decisions=decisions, trades=trades)
    if not html:
        doc = build_document(run, charts=False)
        md = render_markdown(doc.title, doc.header, doc.notes, doc.sections, doc.verdict)
        (run_dir / "report.md").write_text(md, encoding="utf-8")
        return run_dir / "report.md", None
    md, html_text, charts = build_report(run)
    fig_dir = run_dir / FIGURES_DIR
    if charts:
        fig_dir.mkdir(exist_ok=True)
    for c in charts:
        (fig_dir / f"{c.name}.png").write_bytes(c.png)
    # A chart omitted this time must not linger from an earlier report of the same folder.
    made = {c.name for c in charts}
    for name in CHART_NAMES:
        if name not in made:
            (fig_dir / f"{name}.png").unlink(missing_ok=True)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    md_path.write_text(md, encoding="utf-8")
    html_path.write_text(html_text, encoding="utf-8")
    return md_path, html_path
