"""Charts of a run report (PNG via matplotlib's object-oriented API, no pyplot state).

Colours come from `harness.reports.colors`, fixed per policy name, so a policy looks the same
in every run; HODL and the hindsight bounds have reserved colours.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.reports.colors import HODL, policy_color
from harness.reports.document import Chart, finite

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_PLOT_POINTS = 2000
# Dash patterns cycle so lines that coincide (two policies with the same trades) stay visible.
DASHES = ["-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (2, 3))]


def _figure(**kwargs: Any) -> Figure:
    # matplotlib is imported on the first chart: report.md alone (sweep trials) never loads it
    from matplotlib.figure import Figure

    return Figure(**kwargs)


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


def naive_utc(ts: pd.Series | pd.Index) -> pd.DatetimeIndex:
    """Timestamps as naive UTC (matplotlib's date axis wants naive)."""
    idx = pd.DatetimeIndex(ts)
    return idx.tz_convert("UTC").tz_localize(None) if idx.tz is not None else idx


def _thousands(ax: Any) -> None:
    import matplotlib.ticker as mticker

    ax.yaxis.set_major_formatter(mticker.StrMethodFormatter("{x:,.0f}"))


def _time_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(True, alpha=0.3)


def equity_series(equity: pd.DataFrame, policies: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per policy its equity rows indexed by naive UTC time (with `equity_vs_hodl`)."""
    out: dict[str, pd.DataFrame] = {}
    for p in policies:
        df = equity[equity["policy"] == p].sort_values("timestamp")
        if df.empty:
            continue
        df = df.set_index(naive_utc(df["timestamp"]))
        if "equity_vs_hodl" not in df and "hodl" in df:
            df = df.assign(equity_vs_hodl=df["equity"] - df["hodl"])
        out[p] = df
    return out


def identical_groups(series: dict[str, pd.DataFrame]) -> list[list[str]]:
    """Groups of policies whose equity curves are identical (they hide each other)."""
    groups: list[list[str]] = []
    for p, df in series.items():
        for g in groups:
            other = series[g[0]]["equity"]
            if len(other) == len(df) and np.allclose(other.to_numpy(), df["equity"].to_numpy()):
                g.append(p)
                break
        else:
            groups.append([p])
    return [g for g in groups if len(g) > 1]


def chart_equity(series: dict[str, pd.DataFrame], colors: dict[str, str]) -> Chart:
    """Equity per policy with HODL (top) and equity minus HODL (bottom), USD."""
    fig = _figure(figsize=(10, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    first = next(iter(series.values()))
    if "hodl" in first:
        h = _downsample(first["hodl"])
        top.plot(h.index, h.to_numpy(), color=policy_color(HODL), lw=2.4, label=HODL)
        bottom.axhline(0.0, color=policy_color(HODL), lw=1.2, label=HODL)
    for i, (p, df) in enumerate(series.items()):
        style = {"color": colors[p], "lw": 1.3, "ls": DASHES[i % len(DASHES)], "label": p}
        e = _downsample(df["equity"])
        top.plot(e.index, e.to_numpy(), **style)
        if "equity_vs_hodl" in df:
            v = _downsample(df["equity_vs_hodl"])
            bottom.plot(v.index, v.to_numpy(), **style)
    top.set_ylabel("equity (USD)")
    bottom.set_ylabel("equity − HODL (USD)")
    top.legend(loc="upper left", fontsize=8, ncols=min(len(series) + 1, 4))
    for ax in (top, bottom):
        _time_axis(ax)
        _thousands(ax)
    top.set_title("Portfolio equity vs HODL (UTC)")
    same = identical_groups(series)
    caption = "one covered call at a time, replayed over the period; HODL is the coin held alone"
    if same:
        caption += "; identical curves (drawn on top of each other): " + "; ".join(
            " = ".join(g) for g in same
        )
    return Chart("equity_vs_hodl", "Portfolio equity vs HODL (USD)", _png(fig), caption)


def daily_drawdown(values: pd.Series) -> pd.Series:
    """Drawdown (%) of daily closing values from their running peak."""
    daily = values.astype(float).resample("1D").last().dropna()
    return (daily / daily.cummax() - 1.0) * 100.0


def chart_drawdown(series: dict[str, pd.DataFrame], colors: dict[str, str]) -> Chart:
    """Daily drawdown of each policy's equity and of HODL from their running peaks, percent."""
    fig = _figure(figsize=(10, 4))
    ax = fig.subplots()
    first = next(iter(series.values()))
    if "hodl" in first:
        dd = daily_drawdown(first["hodl"])
        ax.plot(dd.index, dd.to_numpy(), color=policy_color(HODL), lw=2.4, label=HODL)
    for i, (p, df) in enumerate(series.items()):
        dd = daily_drawdown(df["equity"])
        ax.plot(
            dd.index, dd.to_numpy(), color=colors[p], lw=1.2, ls=DASHES[i % len(DASHES)], label=p
        )
    ax.set_ylabel("drawdown (%)")
    ax.legend(loc="lower left", fontsize=8, ncols=min(len(series) + 1, 4))
    _time_axis(ax)
    ax.set_title("Daily drawdown from running peak, policies and HODL (UTC)")
    return Chart(
        "drawdown",
        "Daily drawdown vs HODL (%)",
        _png(fig),
        "daily closing equity against its highest close so far; HODL drawn for reference",
    )


def chart_forest(pairs: Sequence[dict[str, Any]], unit: str, method: str) -> Chart | None:
    """Forest chart: mean paired difference per decision with its 95% CI, one row per pair.

    `method` names the interval in the caption (`pairs_method_label`)."""
    rows = [p for p in pairs if finite(p.get("mean_diff"))]
    if not rows:
        return None
    fig = _figure(figsize=(9, max(2.2, 0.45 * len(rows) + 1.2)))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    for yi, p in zip(y, rows, strict=True):
        lo, hi, m = float(p["ci_low"]), float(p["ci_high"]), float(p["mean_diff"])
        holm = p.get("p_holm")
        survives = finite(holm) and float(holm) < 0.05
        significant = lo > 0 or hi < 0
        color = "#0b6e2e" if survives else ("#c77700" if significant else "#777777")
        ax.plot([lo, hi], [yi, yi], color=color, lw=2)
        ax.plot([m], [yi], "o", color=color, ms=6)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(y, [f"{p['policy']} − {p['baseline']}" for p in rows], fontsize=8)
    ax.set_xlabel(f"mean paired difference per decision ({unit})" if unit else "mean difference")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Paired differences per decision with 95% CI")
    fig.subplots_adjust(left=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return Chart(
        "paired_differences",
        "Forest chart of paired differences",
        buf.getvalue(),
        f"dot: mean of (first − second) over the same decisions; bar: 95% CI ({method}); "
        "green: survives Holm correction over all pairs, orange: CI excludes 0 but not after Holm, "
        "grey: not significant",
    )


def chart_rewards(
    decisions: pd.DataFrame, policies: Sequence[str], unit: str, colors: dict[str, str]
) -> Chart | None:
    """Box plot of per-decision rewards per policy, with the mean marked."""
    data = {p: decisions.loc[decisions["policy"] == p, "reward"].dropna() for p in policies}
    data = {p: v.to_numpy(dtype=float) for p, v in data.items() if len(v)}
    if not data:
        return None
    fig = _figure(figsize=(max(6.0, 1.6 * len(data) + 2), 4.5))
    ax = fig.subplots()
    box = ax.boxplot(
        list(data.values()),
        tick_labels=list(data),
        showmeans=True,
        patch_artist=True,
        whis=(5, 95),  # rewards are fat-tailed: 1.5 IQR whiskers flag half the sample
        flierprops={"markersize": 2, "alpha": 0.4},
    )
    for patch, p in zip(box["boxes"], data, strict=True):
        patch.set_facecolor(colors[p])
        patch.set_alpha(0.35)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylabel(f"reward per decision ({unit})" if unit else "reward per decision")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("Reward per decision (box: quartiles, whiskers: 5–95%, triangle: mean)")
    return Chart(
        "reward_distribution",
        "Distribution of per-decision rewards",
        _png(fig),
        "each decision scored alone (per-decision view)",
    )


def chart_regret(
    decisions: pd.DataFrame, policies: Sequence[str], colors: dict[str, str], unit: str
) -> Chart | None:
    """Cumulative regret vs the best choice over decision time, per policy."""
    fig = _figure(figsize=(10, 4))
    ax = fig.subplots()
    drawn = 0
    for i, p in enumerate(policies):
        df = decisions[decisions["policy"] == p]
        if df.empty or df["regret"].isna().all():
            continue
        # Missing regret (e.g. an errored row without a score) adds nothing rather than NaN-ing the sum.
        cum = pd.Series(
            df["regret"].fillna(0.0).cumsum().to_numpy(), index=naive_utc(df["decision_time"])
        )
        cum = _downsample(cum)
        ax.plot(
            cum.index, cum.to_numpy(), color=colors[p], lw=1.2, ls=DASHES[i % len(DASHES)], label=p
        )
        drawn += 1
    if not drawn:
        return None
    ax.set_ylabel(f"cumulative regret ({unit})" if unit else "cumulative regret")
    ax.legend(loc="upper left", fontsize=8, ncols=min(drawn, 4))
    _time_axis(ax)
    _thousands(ax)
    ax.set_title("Cumulative regret vs the best choice in hindsight (UTC)")
    return Chart(
        "cumulative_regret",
        "Cumulative per-decision regret",
        _png(fig),
        "sum over decisions of (best candidate's reward − the policy's reward)",
    )
