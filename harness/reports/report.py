"""Human report of a run folder: `report.md` + one self-contained `report.html` with charts.

Reads only the files documented in docs/run_folder.md. Any of them may be missing, empty or
partly written (a crashed run, a run with only rule policies, a skipped LLM policy); the report
then says so in its notes instead of failing.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import matplotlib.dates as mdates
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# Charts use the object-oriented Figure API, which renders PNGs through Agg without pyplot:
# no GUI backend is ever needed, and importing this module does not switch the caller's
# pyplot backend (matplotlib.use would, e.g. inside a notebook).

DASH = "—"
TOP_DISAGREEMENTS = 30
MAX_PLOT_POINTS = 2000
FIGURES_DIR = "figures"
TEMPLATES_DIR = Path(__file__).parent / "templates"
CHART_NAMES = ("equity_vs_hodl", "drawdown", "reward_distribution", "cumulative_regret")

DECISION_COLUMNS = [
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


# --------------------------------------------------------------------------- formatting


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _clean_zero(x: float, decimals: int) -> float:
    # Avoid "-0.00" for tiny negatives that round to zero.
    return 0.0 if round(x, decimals) == 0 else x


def fmt_usd(x: Any, decimals: int = 2) -> str:
    """USD amount with thousands separators, e.g. `-$1,234.50` (dash when missing)."""
    if not _finite(x):
        return DASH
    v = _clean_zero(float(x), decimals)
    return f"{'-' if v < 0 else ''}${abs(v):,.{decimals}f}"


def fmt_pct(x: Any, decimals: int = 2) -> str:
    """A value already in percent, e.g. `12.34%`."""
    if not _finite(x):
        return DASH
    return f"{_clean_zero(float(x), decimals):,.{decimals}f}%"


def fmt_share(x: Any, decimals: int = 1) -> str:
    """A fraction in [0, 1] shown as percent, e.g. 0.456 -> `45.6%`."""
    return fmt_pct(float(x) * 100.0, decimals) if _finite(x) else DASH


def fmt_num(x: Any, decimals: int = 2) -> str:
    """Plain number with thousands separators."""
    if not _finite(x):
        return DASH
    return f"{_clean_zero(float(x), decimals):,.{decimals}f}"


def fmt_int(x: Any) -> str:
    """Integer count with thousands separators."""
    return f"{round(float(x)):,}" if _finite(x) else DASH


def reward_unit(reward_kind: str | None) -> str:
    """Unit of the reward for a config reward kind: `USD`, `bps` or `` when unknown."""
    if reward_kind == "return_bps":
        return "bps"
    if reward_kind == "pnl_vs_hodl":
        return "USD"
    return ""


def fmt_reward(x: Any, unit: str) -> str:
    """Reward in its unit: USD as money, bps with one decimal, unknown as a plain number."""
    if unit == "USD":
        return fmt_usd(x)
    if unit == "bps":
        return f"{fmt_num(x, 1)} bps" if _finite(x) else DASH
    return fmt_num(x)


def fmt_time(ts: Any) -> str:
    """UTC timestamp as `YYYY-MM-DD HH:MM`."""
    if ts is None or (not isinstance(ts, str) and pd.isna(ts)):
        return DASH
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%d %H:%M")


def reading(subject: str, other: str, mean: float, lo: float, hi: float, unit: str) -> str:
    """One plain-English line on a paired difference and whether its 95% CI excludes zero."""
    if not _finite(mean):
        return f"{subject} vs {other}: no paired decisions."
    ci = f"95% CI {fmt_reward(lo, unit)} to {fmt_reward(hi, unit)}"
    if mean == 0:
        return f"{subject} matched {other} on average ({ci})."
    verb = "beat" if mean > 0 else "trailed"
    significant = _finite(lo) and _finite(hi) and (lo > 0 or hi < 0)
    verdict = "significant at 95%" if significant else "not significant"
    amount = fmt_reward(abs(mean), unit)
    return f"{subject} {verb} {other} by {amount} per decision ({ci}): {verdict}."


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class RunFolder:
    """Everything the report reads from one run folder (empty containers for missing files)."""

    path: Path
    manifest: dict[str, Any]
    decisions: pd.DataFrame  # DECISION_COLUMNS, one row per (decision_time, policy)
    trades: pd.DataFrame
    equity: pd.DataFrame
    metrics: dict[str, dict[str, Any]]
    comparison: dict[str, Any]
    notes: tuple[str, ...]

    @property
    def reward_kind(self) -> str | None:
        """Reward kind from comparison.json (or the manifest), None when unknown."""
        return self.comparison.get("reward_kind") or self.manifest.get("reward_kind")

    @property
    def skipped(self) -> dict[str, str]:
        """Skipped policy -> reason."""
        return dict(self.manifest.get("skipped") or {})

    @property
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
    return float(x) if _finite(x) else default


def choice_label(action: Any, instrument_name: Any) -> str:
    """What a decision chose: the instrument sold, or `DO_NOTHING`."""
    if action == "SELL_CALL":
        return str(instrument_name) if isinstance(instrument_name, str) else "SELL_CALL(?)"
    return "DO_NOTHING" if action in (None, "DO_NOTHING") else str(action)


def _decision_row(obj: dict[str, Any]) -> dict[str, Any]:
    llm = obj.get("llm") if isinstance(obj.get("llm"), dict) else {}
    choice = choice_label(obj.get("action"), obj.get("instrument_name"))
    valid = obj.get("valid") is not False
    error = obj.get("error")
    label = choice + ("" if valid else " (invalid)") + (" (error)" if error else "")
    return {
        "decision_time": obj.get("decision_time"),
        "policy": obj.get("policy"),
        "action": obj.get("action"),
        "instrument_name": obj.get("instrument_name"),
        "choice": choice,
        "label": label,
        "valid": valid,
        "error": str(error) if error else None,
        "reward": _num(obj.get("reward")),
        "best_reward": _num(obj.get("best_reward")),
        "regret": _num(obj.get("regret")),
        "is_llm": bool(llm),
        "llm_cost_usd": _num(llm.get("cost_usd"), 0.0),
        "llm_cost_saved_usd": _num(llm.get("cost_saved_usd"), 0.0),
        "llm_calls_made": _num(llm.get("calls_made"), 0.0),
        "llm_cache_hit": bool(llm.get("cache_hit", False)),
        "prompt_id": llm.get("prompt_id"),
        "model": llm.get("model"),
    }


def read_decisions(path: Path, notes: list[str] | None = None) -> pd.DataFrame:
    """Parse decisions.jsonl into one row per (decision_time, policy); bad lines are noted."""
    notes = [] if notes is None else notes
    rows: list[dict[str, Any]] = []
    bad = 0
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1  # typically a half-written last line of an interrupted run
            continue
        if isinstance(obj, dict) and obj.get("decision_time") and obj.get("policy"):
            rows.append(_decision_row(obj))
        else:
            bad += 1
    if bad:
        notes.append(f"{path.name}: {bad} unreadable line(s) skipped.")
    df = pd.DataFrame(rows, columns=DECISION_COLUMNS)
    df["decision_time"] = pd.to_datetime(df["decision_time"], utc=True, format="ISO8601")
    n = len(df)
    # A resumed run may append a decision twice; the last write wins.
    df = df.drop_duplicates(["decision_time", "policy"], keep="last")
    if len(df) < n:
        notes.append(
            f"{path.name}: {n - len(df)} duplicate (decision_time, policy) row(s) dropped."
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


def load_run(run_dir: Path) -> RunFolder:
    """Read every documented file of a run folder, tolerating missing or empty ones."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    manifest = read_json(run_dir / "manifest.json", notes)
    decisions_path = run_dir / "decisions.jsonl"
    if not decisions_path.exists():
        notes.append("decisions.jsonl is missing.")
    decisions = read_decisions(decisions_path, notes)
    metrics = read_json(run_dir / "metrics.json", notes)
    comparison = read_json(run_dir / "comparison.json", notes)
    trades = _read_table(run_dir / "trades.csv", pd.read_csv, notes)
    equity = _read_table(run_dir / "equity.parquet", pd.read_parquet, notes)
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
    )


# --------------------------------------------------------------------------- document model


@dataclass(frozen=True)
class Table:
    """A rendered table: header, rows of display strings, and per-column alignment (l/r)."""

    columns: list[str]
    rows: list[list[str]]
    align: list[str]


@dataclass(frozen=True)
class Chart:
    """A PNG chart: file name under figures/, caption, and the image bytes."""

    name: str
    title: str
    png: bytes

    @property
    def b64(self) -> str:
        """Base64 of the PNG, for a data URI."""
        return base64.b64encode(self.png).decode("ascii")

    @property
    def md_path(self) -> str:
        """Path of the PNG relative to the run folder."""
        return f"{FIGURES_DIR}/{self.name}.png"


@dataclass(frozen=True)
class Section:
    """One titled block of the document."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: Table | None = None
    bullets: list[str] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


def _md_cell(text: Any) -> str:
    # Pipes and newlines would break a Markdown table row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["mdcell"] = _md_cell
    return env


_HTML = _env(autoescape=True).get_template("document.html.j2")
_MD = _env(autoescape=False).get_template("document.md.j2")
_CSS = (TEMPLATES_DIR / "report.css").read_text(encoding="utf-8")


def render_document(
    title: str, header: Sequence[tuple[str, str]], notes: Sequence[str], sections: Sequence[Section]
) -> tuple[str, str]:
    """Render a document model to (Markdown, self-contained HTML)."""
    ctx = {"title": title, "header": header, "notes": notes, "sections": sections, "css": _CSS}
    return _MD.render(**ctx), _HTML.render(**ctx)


# --------------------------------------------------------------------------- statistics


def decision_stats(df: pd.DataFrame) -> dict[str, float]:
    """metrics.json-style decision statistics of one policy's decision rows."""
    n = len(df)
    if n == 0:
        return {"n_decisions": 0.0}
    return {
        "n_decisions": float(n),
        "mean_reward": float(df["reward"].mean()),
        "total_reward": float(df["reward"].sum()),
        "mean_regret": float(df["regret"].mean()),
        "sell_rate": float((df["action"] == "SELL_CALL").mean()),
        "invalid_rate": float((~df["valid"].astype(bool)).mean()),
        "error_rate": float(df["error"].notna().mean()),
        "cost_usd": float(df["llm_cost_usd"].sum()),
    }


def disagreements(decisions: pd.DataFrame, top: int | None = TOP_DISAGREEMENTS) -> pd.DataFrame:
    """Decision times where policies chose differently, widest reward spread first.

    Columns: `decision_time`, `spread` (max - min reward across policies), and per policy
    `choice.<policy>` (display label) and `reward.<policy>`.
    """
    if decisions.empty:
        return pd.DataFrame(columns=["decision_time", "spread"])
    choice = decisions.pivot(index="decision_time", columns="policy", values="choice")
    label = decisions.pivot(index="decision_time", columns="policy", values="label")
    reward = decisions.pivot(index="decision_time", columns="policy", values="reward")
    # Grouped nunique is vectorized (row-wise nunique on a pivot is slow); NaN is not a choice.
    differ = decisions.groupby("decision_time")["choice"].nunique().reindex(choice.index) > 1
    spread = (reward.max(axis=1) - reward.min(axis=1))[differ]
    order = spread.sort_values(ascending=False, na_position="last", kind="stable").index
    order = order if top is None else order[:top]
    out = pd.DataFrame({"decision_time": order, "spread": spread.loc[order].to_numpy()})
    for p in choice.columns:
        out[f"choice.{p}"] = label.loc[order, p].to_numpy()
        out[f"reward.{p}"] = reward.loc[order, p].to_numpy()
    return out


# --------------------------------------------------------------------------- charts


def _colors(policies: Sequence[str]) -> dict[str, Any]:
    cmap = matplotlib.colormaps["tab10"]
    return {p: cmap(i % 10) for i, p in enumerate(policies)}


def _png(fig: Figure) -> bytes:
    # Fixed margins: constrained/tight layout would cost a full extra draw per chart.
    fig.subplots_adjust(left=0.09, right=0.98, top=0.93, bottom=0.1, hspace=0.08)
    buf = io.BytesIO()
    # No "Software" entry: the PNG bytes depend only on the data (PNG carries no timestamp).
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _stride(n: int) -> int:
    return max(1, math.ceil(n / MAX_PLOT_POINTS))


def _downsample(s: pd.Series) -> pd.Series:
    """Every k-th point plus the last, so long series plot fast."""
    k = _stride(len(s))
    if k == 1:
        return s
    idx = np.unique(np.r_[np.arange(0, len(s), k), len(s) - 1])
    return s.iloc[idx]


def _bucket_min(s: pd.Series) -> pd.Series:
    """Minimum of each run of k points, so downsampling keeps drawdown troughs."""
    k = _stride(len(s))
    if k == 1:
        return s
    groups = np.arange(len(s)) // k
    vals = s.groupby(groups).min().to_numpy()
    times = s.index.to_series().groupby(groups).first()
    return pd.Series(vals, index=pd.DatetimeIndex(times.to_numpy()))


def _naive_utc(ts: pd.Series | pd.Index) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(ts)
    return idx.tz_convert("UTC").tz_localize(None) if idx.tz is not None else idx


def _thousands(ax: Any) -> None:
    ax.yaxis.set_major_formatter(mticker.StrMethodFormatter("{x:,.0f}"))


def _time_axis(ax: Any) -> None:
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(True, alpha=0.3)


def _equity_series(equity: pd.DataFrame, policies: Sequence[str]) -> dict[str, pd.DataFrame]:
    out: dict[str, pd.DataFrame] = {}
    for p in policies:
        df = equity[equity["policy"] == p].sort_values("timestamp")
        if df.empty:
            continue
        df = df.set_index(_naive_utc(df["timestamp"]))
        if "equity_vs_hodl" not in df and "hodl" in df:
            df = df.assign(equity_vs_hodl=df["equity"] - df["hodl"])
        out[p] = df
    return out


def chart_equity(series: dict[str, pd.DataFrame], colors: dict[str, Any]) -> Chart:
    """Equity per policy with HODL (top) and equity minus HODL (bottom), USD."""
    fig = Figure(
        figsize=(10, 6.5),
    )
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    first = next(iter(series.values()))
    if "hodl" in first:
        h = _downsample(first["hodl"])
        top.plot(h.index, h.to_numpy(), color="black", ls="--", lw=1.2, label="HODL")
    for p, df in series.items():
        e = _downsample(df["equity"])
        top.plot(e.index, e.to_numpy(), color=colors[p], lw=1.1, label=p)
        if "equity_vs_hodl" in df:
            v = _downsample(df["equity_vs_hodl"])
            bottom.plot(v.index, v.to_numpy(), color=colors[p], lw=1.1, label=p)
    bottom.axhline(0.0, color="black", lw=0.8)
    top.set_ylabel("equity (USD)")
    bottom.set_ylabel("equity − HODL (USD)")
    top.legend(loc="upper left", fontsize=8, ncols=min(len(series) + 1, 4))
    for ax in (top, bottom):
        _time_axis(ax)
        _thousands(ax)
    top.set_title("Portfolio equity vs HODL (UTC)")
    return Chart("equity_vs_hodl", "Equity vs HODL per policy (USD)", _png(fig))


def chart_drawdown(series: dict[str, pd.DataFrame], colors: dict[str, Any]) -> Chart:
    """Drawdown of each policy's equity from its running peak, percent."""
    fig = Figure(
        figsize=(10, 4),
    )
    ax = fig.subplots()
    for p, df in series.items():
        e = df["equity"].astype(float)
        dd = _bucket_min((e / e.cummax() - 1.0) * 100.0)
        ax.plot(dd.index, dd.to_numpy(), color=colors[p], lw=1.1, label=p)
    ax.set_ylabel("drawdown (%)")
    ax.legend(loc="lower left", fontsize=8, ncols=min(len(series), 4))
    _time_axis(ax)
    ax.set_title("Drawdown of each policy's equity (UTC)")
    return Chart("drawdown", "Drawdown from running peak per policy (%)", _png(fig))


def chart_rewards(decisions: pd.DataFrame, policies: Sequence[str], unit: str) -> Chart | None:
    """Box plot of per-decision rewards per policy, with the mean marked."""
    data = {p: decisions.loc[decisions["policy"] == p, "reward"].dropna() for p in policies}
    data = {p: v.to_numpy(dtype=float) for p, v in data.items() if len(v)}
    if not data:
        return None
    fig = Figure(
        figsize=(max(6.0, 1.6 * len(data) + 2), 4.5),
    )
    ax = fig.subplots()
    ax.boxplot(
        list(data.values()),
        tick_labels=list(data),
        showmeans=True,
        whis=(5, 95),  # rewards are fat-tailed: 1.5 IQR whiskers flag half the sample
        flierprops={"markersize": 2, "alpha": 0.4},
    )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylabel(f"reward per decision ({unit})" if unit else "reward per decision")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("Reward per decision (box: quartiles, whiskers: 5–95%, triangle: mean)")
    return Chart("reward_distribution", "Distribution of per-decision rewards", _png(fig))


def chart_regret(
    decisions: pd.DataFrame, policies: Sequence[str], colors: dict[str, Any], unit: str
) -> Chart | None:
    """Cumulative regret vs the best choice over decision time, per policy."""
    fig = Figure(
        figsize=(10, 4),
    )
    ax = fig.subplots()
    drawn = 0
    for p in policies:
        df = decisions[decisions["policy"] == p]
        if df.empty or df["regret"].isna().all():
            continue
        # Missing regret (e.g. an errored row without a score) adds nothing rather than NaN-ing the sum.
        cum = pd.Series(
            df["regret"].fillna(0.0).cumsum().to_numpy(), index=_naive_utc(df["decision_time"])
        )
        cum = _downsample(cum)
        ax.plot(cum.index, cum.to_numpy(), color=colors[p], lw=1.2, label=p)
        drawn += 1
    if not drawn:
        return None
    ax.set_ylabel(f"cumulative regret ({unit})" if unit else "cumulative regret")
    ax.legend(loc="upper left", fontsize=8, ncols=min(drawn, 4))
    _time_axis(ax)
    _thousands(ax)
    ax.set_title("Cumulative regret vs the best choice (UTC)")
    return Chart("cumulative_regret", "Cumulative regret over time per policy", _png(fig))


# --------------------------------------------------------------------------- sections


def _header(run: RunFolder) -> list[tuple[str, str]]:
    m = run.manifest
    d = run.decisions
    name = m.get("name") or run.path.name
    rows: list[tuple[str, str]] = [("Run", f"{name} ({m.get('run_id') or run.path.name})")]
    rows.append(("Status", str(m.get("status") or "unknown")))
    if not d.empty:
        n_times = d["decision_time"].nunique()
        period = f"{fmt_time(d['decision_time'].min())} → {fmt_time(d['decision_time'].max())} UTC"
        rows.append(("Period", f"{period} ({n_times:,} decision times)"))
    rows.append(("Market data", str(m.get("data_fingerprint") or DASH)))
    rows.append(("Policies", ", ".join(run.policies) or DASH))
    rows.append(("Baseline", str(m.get("baseline") or run.comparison.get("baseline") or DASH)))
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
    for p, reason in run.skipped.items():
        rows.append((f"Skipped {p}", str(reason)))
    for p, st in (m.get("policy_status") or {}).items():
        # manifest policy_status (docs/run_folder.md): failed policies are in no comparison
        if isinstance(st, dict) and st.get("status") == "failed":
            rows.append((f"Failed {p}", f"{st.get('reason', DASH)} (left out of comparisons)"))
    rows.extend(_llm_usage(run))
    return rows


def _llm_usage(run: RunFolder) -> list[tuple[str, str]]:
    usage: dict[str, dict[str, Any]] = dict(run.manifest.get("llm_usage") or {})
    d = run.decisions
    # Fall back to the decision rows for LLM policies the manifest has no usage for.
    for p in d.loc[d["is_llm"], "policy"].drop_duplicates():
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
            f"cost {fmt_usd(u.get('cost_usd'), 4)}, saved {fmt_usd(u.get('cost_saved_usd'), 4)}",
        )
        for p, u in usage.items()
    ]


def _policy_label(p: str, baseline: str | None, status: dict[str, Any] | None = None) -> str:
    st = (status or {}).get(p)
    if isinstance(st, dict) and st.get("status", "ok") != "ok":
        return f"{p} ({st['status']})"
    return f"{p} (baseline)" if p == baseline else p


def _policy_metrics(run: RunFolder, p: str) -> dict[str, Any]:
    """metrics.json entry, with decision statistics filled in from decisions.jsonl if absent."""
    stats = decision_stats(run.decisions[run.decisions["policy"] == p])
    return {**stats, **run.metrics.get(p, {})}


def _decision_table(run: RunFolder, unit: str, baseline: str | None) -> Table:
    cols = ["Policy", "Decisions", "Mean reward", "Total reward", "Mean regret", "Sell rate"]
    cols += ["Invalid", "Errors", "LLM cost"]
    rows = []
    for p in run.policies:
        m = _policy_metrics(run, p)
        rows.append(
            [
                _policy_label(p, baseline, run.manifest.get("policy_status")),
                fmt_int(m.get("n_decisions")),
                fmt_reward(m.get("mean_reward"), unit),
                fmt_reward(m.get("total_reward"), unit),
                fmt_reward(m.get("mean_regret"), unit),
                fmt_share(m.get("sell_rate")),
                fmt_share(m.get("invalid_rate"), 2),
                fmt_share(m.get("error_rate"), 2),
                fmt_usd(m.get("cost_usd"), 4),
            ]
        )
    return Table(cols, rows, ["l"] + ["r"] * (len(cols) - 1))


def _portfolio_table(run: RunFolder, baseline: str | None) -> Table:
    cols = ["Policy", "PnL vs HODL", "Total return", "Sharpe", "Sortino", "Max drawdown"]
    cols += ["Trades", "ITM share", "Win rate vs HODL", "Premium", "Fees", "Upside given up"]
    rows = []
    for p in run.policies:
        m = run.metrics.get(p, {})
        traded = _finite(m.get("n_trades")) and float(m["n_trades"]) > 0
        rows.append(
            [
                _policy_label(p, baseline, run.manifest.get("policy_status")),
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
    return Table(cols, rows, ["l"] + ["r"] * (len(cols) - 1))


def _summary_sections(run: RunFolder, unit: str) -> list[Section]:
    baseline = run.manifest.get("baseline") or run.comparison.get("baseline")
    if not run.policies:
        return [Section("Summary", ["No policy produced decisions or metrics."])]
    decision = Section(
        "Summary: decisions",
        [
            f"Per-decision reward ({unit or 'units unknown'}) against the counterfactual table; "
            "regret is the gap to the best choice at each decision."
        ],
        table=_decision_table(run, unit, baseline),
    )
    notes = []
    if not run.metrics:
        notes.append("metrics.json is missing: no portfolio metrics.")
    portfolio = Section(
        "Summary: portfolio replay",
        notes
        or [
            "Sequential covered-call replay of each policy (USD; returns and drawdown in %; "
            "Sharpe/Sortino annualized)."
        ],
        table=_portfolio_table(run, baseline) if run.metrics else None,
    )
    return [decision, portfolio]


def _comparison_section(run: RunFolder, unit: str) -> Section:
    pairs = [p for p in run.comparison.get("pairs") or [] if isinstance(p, dict)]
    title = "Paired comparison vs baseline"
    if not pairs:
        return Section(
            title, ["No paired comparison available (comparison.json missing or empty)."]
        )
    cols = ["Policy", "Baseline", "Decisions", "Mean diff", "95% CI", "Wins / losses / ties"]
    cols += ["Agreement", "Block length"]
    rows, readings = [], []
    for c in pairs:
        rows.append(
            [
                str(c.get("policy")),
                str(c.get("baseline")),
                fmt_int(c.get("n")),
                fmt_reward(c.get("mean_diff"), unit),
                f"{fmt_reward(c.get('ci_low'), unit)} to {fmt_reward(c.get('ci_high'), unit)}",
                f"{fmt_int(c.get('wins'))} / {fmt_int(c.get('losses'))} / {fmt_int(c.get('ties'))}",
                fmt_share(c.get("agreement_rate")),
                fmt_int(c.get("block_length", run.comparison.get("block_length"))),
            ]
        )
        readings.append(
            reading(
                str(c.get("policy")),
                str(c.get("baseline")),
                _num(c.get("mean_diff")),
                _num(c.get("ci_low")),
                _num(c.get("ci_high")),
                unit,
            )
        )
    intro = "Policy minus baseline reward on the same decisions; 95% moving-block bootstrap CI."
    return Section(
        title, [intro], table=Table(cols, rows, ["l", "l"] + ["r"] * 6), bullets=readings
    )


def _chart_section(run: RunFolder, unit: str) -> Section:
    policies = run.policies
    colors = _colors(policies)
    charts: list[Chart] = []
    notes: list[str] = []
    series = _equity_series(run.equity, policies) if not run.equity.empty else {}
    if series:
        charts += [chart_equity(series, colors), chart_drawdown(series, colors)]
    else:
        notes.append("No equity data: equity and drawdown charts omitted.")
    for chart in (
        chart_rewards(run.decisions, policies, unit),
        chart_regret(run.decisions, policies, colors, unit),
    ):
        if chart is not None:
            charts.append(chart)
    if run.decisions.empty:
        notes.append("No decisions: reward and regret charts omitted.")
    return Section("Charts", notes, charts=charts)


def _disagreement_section(run: RunFolder, unit: str) -> Section:
    title = f"Disagreements (top {TOP_DISAGREEMENTS} by reward spread)"
    everything = disagreements(run.decisions, top=None)
    if everything.empty:
        reason = "no decisions" if run.decisions.empty else "all policies chose the same"
        return Section(title, [f"No disagreements: {reason}."])
    d = everything.head(TOP_DISAGREEMENTS)
    present = {c.removeprefix("choice.") for c in d.columns if c.startswith("choice.")}
    policies = [p for p in run.policies if p in present]
    rows = [_disagreement_row(r, policies, unit) for r in d.to_dict("records")]
    intro = (
        f"{len(everything):,} decision time(s) where the policies' choices differ; the "
        f"{len(rows)} with the widest spread between the best and worst policy reward are "
        "listed. Cells: choice (reward)."
    )
    cols = ["Time (UTC)", "Spread", *policies]
    return Section(title, [intro], table=Table(cols, rows, ["l", "r"] + ["l"] * len(policies)))


def _disagreement_row(r: dict[str, Any], policies: Iterable[str], unit: str) -> list[str]:
    cells = [fmt_time(r["decision_time"]), fmt_reward(r["spread"], unit)]
    for p in policies:
        label = r.get(f"choice.{p}")
        if not isinstance(label, str):
            cells.append(DASH)
        else:
            cells.append(f"{label} ({fmt_reward(r.get(f'reward.{p}'), unit)})")
    return cells


def _run_notes(run: RunFolder) -> list[str]:
    notes = list(run.notes)
    for p in run.policies:
        n = int((run.decisions["policy"] == p).sum())
        if n == 0:
            notes.append(f"{p}: no decisions recorded.")
        m = run.metrics.get(p, {})
        if _finite(m.get("n_trades")) and float(m["n_trades"]) == 0:
            notes.append(f"{p}: made no trades.")
    return notes


def build_report(run: RunFolder) -> tuple[str, str, list[Chart]]:
    """Markdown, HTML and charts of a loaded run."""
    unit = reward_unit(run.reward_kind)
    chart_section = _chart_section(run, unit)
    sections = [
        *_summary_sections(run, unit),
        _comparison_section(run, unit),
        chart_section,
        _disagreement_section(run, unit),
    ]
    name = run.manifest.get("name") or run.path.name
    md, html = render_document(f"Run report: {name}", _header(run), _run_notes(run), sections)
    return md, html, chart_section.charts


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Write report.md (+ figures/*.png) and self-contained report.html into the run folder."""
    run_dir = Path(run_dir)
    md, html, charts = build_report(load_run(run_dir))
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
    html_path.write_text(html, encoding="utf-8")
    return md_path, html_path
