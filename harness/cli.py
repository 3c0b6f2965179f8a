"""`harness` command line: a thin layer over the Python API.

Every command exits 0 on success and non-zero with a one-line reason on errors.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness import __version__

# soft_wrap: when output is not a terminal, long lines (URLs, paths) stay whole, not cut at 80.
out = Console(width=None if sys.stdout.isatty() else 140, soft_wrap=not sys.stdout.isatty())
err = Console(stderr=True, soft_wrap=True)


class CLIError(Exception):
    """An error to report as one line and exit code 2."""


# ---------------------------------------------------------------------- sweep
def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.backend == "local" and args.address:
        raise CLIError("--address is for --backend ray")
    if args.backend == "local" and args.workers != 1:
        from harness.experiments.sweep_pool import start_worker_server

        start_worker_server()  # the workers' imports overlap with the driver's, next line
    if args.backend == "ray":
        from harness.experiments.ray_cluster import start_ray

        start_ray(args.address, args.workers)  # Ray's workers import while the driver does
    from harness.experiments.sweep import run_sweep

    summary = run_sweep(
        args.sweep,
        backend=args.backend,
        workers=args.workers,
        address=args.address,
        out_dir=args.out,
        trial_reports=args.trial_reports,
        fresh=args.fresh,
        quiet=args.quiet,
    )
    out.print(summary.sentence, markup=False, highlight=False)
    out.print(
        f"{summary.n_complete}/{summary.n_trials} trials complete ({summary.n_already_done} from "
        f"an earlier run, {summary.n_failed} failed) in {summary.elapsed_s:.1f}s: "
        f"{summary.sweep_dir / 'sweep_report.html'}",
        markup=False,
        highlight=False,
    )
    return 1 if summary.n_failed else 0


# ---------------------------------------------------------------------- run
def _cmd_run(args: argparse.Namespace) -> int:
    from harness.experiments.config import load_config
    from harness.experiments.runner import LLMRequiredError, RunInterrupted, run_experiment

    config = load_config(args.config)
    try:
        summary = run_experiment(
            config,
            out_dir=args.out,
            cache_mode=args.cache_mode,
            require_llm=args.require_llm,
            resume=args.resume,
            quiet=args.quiet or args.json,
            max_cost_usd=args.max_cost,
            config_path=args.config,
            batch=args.batch,
        )
    except RunInterrupted as exc:
        _print_resume(args, exc.run_dir)
        return 130
    except LLMRequiredError as exc:
        if exc.summary is not None:
            if args.json:
                _print_json(_run_json(exc.summary))
            else:
                _print_run(exc.summary, config.reward.kind, quiet=args.quiet)
        err.print(f"harness run: error: {exc}", markup=False, highlight=False)
        return 2
    if args.json:
        _print_json(_run_json(summary))
        return 0
    _print_run(summary, config.reward.kind, quiet=args.quiet)
    return 0


def _fmt(m: dict, key: str, spec: str) -> str:
    value = m.get(key)
    return "-" if value is None else format(value, spec)


def _print_run(summary: object, reward_kind: str, *, quiet: bool) -> None:
    from harness.experiments.runner import RunSummary

    assert isinstance(summary, RunSummary)
    if quiet:
        out.print(str(summary.run_dir))
        return
    units = "USD" if reward_kind == "pnl_vs_hodl" else "bps"
    table = Table(title=f"{summary.name}: {len(summary.policies)} policies on the same decisions")
    for col in (
        "policy",
        "status",
        f"mean reward ({units})",
        "mean regret",
        "sell rate",
        "invalid",
        "errors",
        "PnL vs HODL $",
        "Sharpe",
        "max DD %",
        "trades",
    ):
        table.add_column(col, justify="left" if col in ("policy", "status") else "right")
    for name in summary.policies:
        m = summary.metrics[name]
        state = summary.policy_status.get(name, {}).get("status", "ok")
        table.add_row(
            name,
            state if state == "ok" else f"[red]{state}[/]",
            f"{m['mean_reward']:,.2f}",
            f"{m['mean_regret']:,.2f}",
            f"{m['sell_rate']:.0%}",
            # rates over asked decisions (with candidates), not over all decision times
            f"{m['invalid_rate']:.1%}",
            f"{m['error_rate']:.1%}",
            _fmt(m, "pnl_vs_hodl_usd", ",.0f"),
            _fmt(m, "sharpe", ".2f"),
            _fmt(m, "max_drawdown_pct", ".1f"),
            _fmt(m, "n_trades", ".0f"),
        )
    out.print(table)
    for c in summary.comparison:
        verdict = "significant" if c.ci_low > 0 or c.ci_high < 0 else "not significant"
        out.print(
            f"{c.policy} vs {c.baseline}: {c.mean_diff:+,.2f} {units}/decision "
            f"(95% CI {c.ci_low:+,.2f} to {c.ci_high:+,.2f}, {verdict}); "
            f"W/L/T {c.wins}/{c.losses}/{c.ties}; agreement {c.agreement_rate:.0%}"
        )
    for name, usage in summary.llm_usage.items():
        out.print(
            f"{name}: {usage['calls_made']} model calls, {usage['served_from_cache']} served from cache, "
            f"cost ${usage['cost_usd_incurred']:.4f} (saved ${usage['cost_usd_saved']:.4f})"
        )
        if usage.get("batch_answers") or usage.get("execution") == "batch":
            out.print(
                f"{name}: {usage.get('batch_answers', 0)} answers by batch for "
                f"${usage.get('cost_usd_batch', 0.0):.4f} (live prices: "
                f"${usage.get('cost_usd_batch_at_live_prices', 0.0):.4f}), live "
                f"${usage.get('cost_usd_live', 0.0):.4f}",
                highlight=False,
            )
    for name, facts in summary.batches.items():
        ids = ", ".join(facts["batch_ids"]) or "none"
        out.print(
            f"{name}: {facts['submitted']} requests submitted by batch; batch ids: {ids}; "
            f"ledger {summary.run_dir / facts['ledger']}",
            markup=False,
            highlight=False,
        )
        if facts.get("leftovers_asked_live"):
            out.print(
                f"{name}: {facts['leftovers_asked_live']} failed or missing batch items asked live",
                markup=False,
                highlight=False,
            )
        out.print(f"if stopped, resume with: {facts['resume']}", markup=False, highlight=False)
    for name, why in summary.skipped.items():
        out.print(f"[yellow]skipped {name}[/]: {why}", highlight=False)
    for name, st in summary.policy_status.items():
        if st.get("status") == "failed":
            out.print(
                f"[red]failed {name}[/]: {st.get('reason')} (left out of every comparison)",
                highlight=False,
            )
    if summary.resumed_decisions:
        out.print(f"resumed: {summary.resumed_decisions} finished decisions were kept")
    if summary.resume_hint:
        out.print(f"[yellow]stopped[/]: {summary.resume_hint}", highlight=False)
    out.print(f"run folder: {summary.run_dir}  ({summary.elapsed_s:.1f}s)")


# ---------------------------------------------------------------------- replay
def _cmd_replay(args: argparse.Namespace) -> int:
    from harness.experiments.replay import replay_run

    result = replay_run(Path(args.run_dir), out_dir=args.out, quiet=args.quiet)
    for line in result.differences[:20]:
        out.print(f"differs: {line}", markup=False, highlight=False)
    if result.prompt_changes:
        out.print(
            f"note: {result.prompt_changes} requests render differently from the original run "
            "(prompts changed since); the run's own answers were used",
            highlight=False,
        )
    verdict = "identical" if result.reproduced else "NOT identical"
    out.print(
        f"replayed {result.run_dir} -> {result.replay_dir}: {result.identical} of "
        f"{result.rows} decision rows {verdict}",
        highlight=False,
    )
    return 0 if result.reproduced else 1


# ---------------------------------------------------------------------- plan
def _cmd_plan(args: argparse.Namespace) -> int:
    from harness.experiments.config import load_config, with_execution
    from harness.experiments.plan import plan_experiment

    config = load_config(args.config)
    if args.batch:
        config = with_execution(config, "batch")
    plans = plan_experiment(config, latency_s=args.latency_s)
    if not plans:
        out.print(f"{args.config}: no LLM policy; nothing would be sent")
        return 0
    table = Table(title=f"{config.name}: what a run would send (nothing was sent)")
    for col in (
        "policy",
        "model",
        "to ask",
        "requests",
        "cached",
        "prompt tokens",
        "max output tokens",
        "cost live $ (max)",
        "cost batch $ (max)",
        "execution",
        "wall time",
    ):
        table.add_column(col, justify="left" if col in ("policy", "model") else "right")
    for p in plans:
        table.add_row(
            p.policy,
            p.model,
            f"{p.to_ask:,}",
            f"{p.requests:,}",
            f"{p.cached:,}",
            f"{p.prompt_tokens:,}",
            f"{p.max_output_tokens:,}",
            f"{p.cost_live_usd:,.4f}" if p.priced else "unpriced",
            "-" if p.cost_batch_usd is None else f"{p.cost_batch_usd:,.4f}",
            p.execution,
            f"{p.wall_s:,.0f} s" if p.execution == "live" else "<= 24 h",
        )
    out.print(table)
    for p in plans:
        out.print(
            f"{p.policy}: prompt tokens by {p.tokenizer}; output at most "
            f"{p.token_budget or 'unbounded'} tokens per answer (sent as {p.token_param}); "
            f"wall time bound by {p.wall_basis}",
            highlight=False,
        )
    return 0


def _print_resume(args: argparse.Namespace, run_dir: Path) -> None:
    """After Ctrl-C: the run folder and the exact command that continues it."""
    parts = ["harness", "run", shlex.quote(args.config), "--resume", shlex.quote(str(run_dir))]
    if args.cache_mode:
        parts += ["--cache-mode", args.cache_mode]
    if args.require_llm:
        parts.append("--require-llm")
    if args.batch:
        parts.append("--batch")
    err.print(f"interrupted; run folder: {run_dir}", markup=False, highlight=False)
    err.print(f"resume with: {' '.join(parts)}", markup=False, highlight=False)


def _print_json(obj: Any) -> None:
    """One JSON document on stdout (NaN written as null), nothing else."""
    sys.stdout.write(json.dumps(_json_clean(obj), indent=2, default=str) + "\n")


def _json_clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_clean(v) for v in obj]
    return obj


def _run_json(summary: Any) -> dict[str, Any]:
    return {
        "run_dir": str(summary.run_dir),
        "name": summary.name,
        "policies": summary.policies,
        "skipped": summary.skipped,
        "metrics": summary.metrics,
        "comparison": [c.to_dict() for c in summary.comparison],
        "llm_usage": summary.llm_usage,
        "elapsed_s": summary.elapsed_s,
        "resumed_decisions": summary.resumed_decisions,
        "batches": summary.batches,
    }


# ---------------------------------------------------------------------- batch
def _cmd_batch(args: argparse.Namespace) -> int:
    from harness.experiments.batch_handoff import export_batch_requests, import_batch_results

    def say(line: str) -> None:
        if not args.quiet:
            err.print(line, markup=False, highlight=False)

    if args.batch_command == "export":
        done = export_batch_requests(args.source, args.out, policy=args.policy, progress=say)
        per = ", ".join(f"{k} {v}" for k, v in done.by_policy.items())
        out.print(
            f"wrote {done.requests} requests ({per}; model {', '.join(done.models) or '-'}) "
            f"to {done.out}",
            markup=False,
            highlight=False,
        )
        if done.requests:
            out.print(
                "run them with e.g. `vllm run-batch -i requests.jsonl -o results.jsonl --model "
                "MODEL`, then `harness batch import results.jsonl --config CONFIG`",
                markup=False,
                highlight=False,
            )
        return 0
    loaded = import_batch_results(args.results, args.config, policy=args.policy, progress=say)
    out.print(
        f"{args.results}: {loaded.lines} lines; {loaded.stored} answers stored in the cache "
        f"{loaded.cache_dir}, {loaded.failed} failed (not cached), {loaded.already_cached} "
        f"already cached, {loaded.unknown} not requests of this config",
        markup=False,
        highlight=False,
    )
    for line in loaded.errors[:10]:
        out.print(f"failed: {line}", markup=False, highlight=False)
    return 1 if loaded.failed or (loaded.unknown and not loaded.stored) else 0


# ---------------------------------------------------------------------- compare
def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.reports.compare import compare_runs, render_comparison, write_comparison

    cmp = compare_runs(Path(args.run_a), Path(args.run_b), policy=args.policy)
    target = Path(args.out) if args.out else Path(args.run_b)
    paths = write_comparison(cmp, target)
    if args.json:
        _print_json(_compare_json(cmp, paths))
        return 0
    md, _ = render_comparison(cmp)
    out.print(md)
    out.print(f"written: {', '.join(str(p) for p in paths)}")
    return 0


def _compare_json(cmp: Any, paths: Sequence[Path]) -> dict[str, Any]:
    return {
        "run_a": str(cmp.run_a),
        "run_b": str(cmp.run_b),
        "reward_kind": cmp.reward_kind,
        "written": [str(p) for p in paths],
        "policies": [
            {
                "policy": p.policy,
                "n_aligned": p.n_aligned,
                "n_changed": p.n_changed,
                "mean_change": p.mean_change,
                "ci_low": p.ci_low,
                "ci_high": p.ci_high,
                "wins": p.wins,
                "losses": p.losses,
                "ties": p.ties,
                "prompt_id_a": p.prompt_id_a,
                "prompt_id_b": p.prompt_id_b,
                "changed": [
                    {
                        "decision_time": c.decision_time.isoformat(),
                        "choice_a": c.choice_a,
                        "choice_b": c.choice_b,
                        "reward_a": c.reward_a,
                        "reward_b": c.reward_b,
                    }
                    for c in p.changed
                ],
            }
            for p in cmp.policies
        ],
        "policies_only_in_a": list(cmp.policies_only_in_a),
        "policies_only_in_b": list(cmp.policies_only_in_b),
        "notes": list(cmp.notes),
    }


# ---------------------------------------------------------------------- chain
def _cmd_chain(args: argparse.Namespace) -> int:
    import pandas as pd

    from harness.coins import listing_note
    from harness.experiments.config import MarketConfig
    from harness.experiments.markets import build_market
    from harness.timestamps import to_utc

    if args.source == "parquet" and not args.path:
        raise CLIError("chain --source parquet needs --path STORE_DIR (the Parquet store folder)")
    source = build_market(MarketConfig(source=args.source, seed=args.seed, path=args.path))
    as_of = to_utc(args.as_of)
    chain = [c for c in source.list_option_chain(args.underlying.upper(), as_of) if c.dte > 0]
    if not chain:
        raise CLIError(f"no options listed for {args.underlying} at {as_of.isoformat()}")
    spot = chain[0].underlying_price
    expiries = sorted({c.expiry for c in chain})[: args.expiries]
    lo, hi = spot * (1 - args.width / 100), spot * (1 + args.width / 100)
    note = listing_note(args.underlying)
    if args.json:
        shown = [c for c in chain if c.expiry in set(expiries) and lo <= c.strike <= hi]
        _print_json(
            {
                "underlying": args.underlying.upper(),
                "note": note,
                "as_of": as_of.isoformat(),
                "spot": spot,
                "options": [
                    {
                        "instrument_name": c.instrument_name,
                        "kind": c.kind,
                        "strike": c.strike,
                        "expiry": pd.Timestamp(c.expiry).isoformat(),
                        "bid_price": c.bid_price,
                        "ask_price": c.ask_price,
                        "mark_price": c.mark_price,
                        "mark_iv": c.mark_iv,
                        "delta": c.delta,
                    }
                    for c in sorted(shown, key=lambda c: (c.expiry, c.strike, c.kind))
                ],
            }
        )
        return 0
    out.print(
        f"{args.underlying.upper()} at {as_of.isoformat()}  spot {spot:,.{6 if spot < 1 else 2}f} USD  ({len(chain)} options listed)"
    )
    if note:
        out.print(f"[yellow]{note}[/]")
    # Sub-dollar coins (XRP, DOGE) need more decimals than BTC to show a price at all.
    price_decimals = 2 if spot >= 10 else 4 if spot >= 0.5 else 6
    price_spec = f",.{price_decimals}f"
    strike_decimals = max(4, price_decimals)
    for exp in expiries:
        rows = [c for c in chain if c.expiry == exp and lo <= c.strike <= hi]
        calls = {c.strike: c for c in rows if c.kind == "call"}
        puts = {c.strike: c for c in rows if c.kind == "put"}
        dte = (exp - as_of) / pd.Timedelta(days=1)
        t = Table(title=f"{exp:%d%b%y}".upper() + f" ({dte:.1f} days)")
        for col in (
            "call bid",
            "call ask",
            "call mark",
            "IV",
            "delta",
            "strike",
            "put delta",
            "put bid",
            "put ask",
        ):
            t.add_column(col, justify="right")

        def fmt(x: float | None, spec: str = price_spec) -> str:
            return "-" if x is None else format(x, spec)

        for k in sorted(calls.keys() | puts.keys()):
            c, p = calls.get(k), puts.get(k)
            t.add_row(
                fmt(c and c.bid_price),
                fmt(c and c.ask_price),
                fmt(c and c.mark_price),
                fmt(c.mark_iv * 100 if c else None, ".1f"),
                fmt(c and c.delta, ".3f"),
                f"[bold]{k:,.0f}[/]"
                if k == int(k)
                else "[bold]" + f"{k:,.{strike_decimals}f}".rstrip("0") + "[/]",
                fmt(p and p.delta, ".3f"),
                fmt(p and p.bid_price),
                fmt(p and p.ask_price),
            )
        out.print(t)
    return 0


# ---------------------------------------------------------------------- what-if
def _cmd_what_if(args: argparse.Namespace) -> int:
    import json

    from harness.experiments.config import MarketConfig
    from harness.experiments.what_if import what_if

    market = MarketConfig(source=args.source, seed=args.seed, path=args.path, world=args.world)
    try:
        w = what_if(
            args.underlying,
            args.as_of,
            instrument=args.instrument,
            delta=args.delta,
            dte=args.dte,
            size=args.size,
            market=market,
            timeframe=args.timeframe,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if args.json:
        print(json.dumps(w.to_dict(), indent=2))
        return 0
    out.print(
        f"{w.underlying} at {w.as_of.isoformat()}: sell {w.size:g} x [bold]{w.instrument_name}[/] "
        f"(strike {w.strike:,.0f}, {w.dte_days:.2f} days, delta {w.delta:.3f}, IV {w.mark_iv:.1%}), "
        f"spot {w.spot_at_sale:,.2f}"
    )
    out.print(
        f"premium {w.premium_usd:,.2f} USD; fees {w.open_fee_usd:,.2f} at sale + "
        f"{w.delivery_fee_usd:,.2f} delivery; settlement {w.settlement_price:,.2f}; "
        f"payoff {w.payoff_usd:,.2f}"
    )
    out.print(
        f"pnl vs HODL: [bold]{w.pnl_vs_hodl_usd:,.2f} USD[/] ({w.pnl_vs_hodl_coin:+.6f} coin); "
        f"max drawdown during the trade {w.max_drawdown_pct:.2f}%"
    )
    t = Table(title="path")
    for col in ("time", "spot", "call mark", "pnl vs HODL", "covered value"):
        t.add_column(col, justify="right")
    for ts, row in w.path.iterrows():
        t.add_row(
            f"{ts:%Y-%m-%d %H:%M}",
            f"{row['spot']:,.2f}",
            f"{row['call_mark']:,.2f}",
            f"{row['pnl_vs_hodl']:,.2f}",
            f"{row['covered_value']:,.2f}",
        )
    out.print(t)
    return 0


# ---------------------------------------------------------------------- cache
def _cmd_cache(args: argparse.Namespace) -> int:
    from harness.llm.cache import ResponseCache

    directory = args.dir
    if not Path(directory).exists():
        raise CLIError(f"no cache at {directory}")
    with ResponseCache(directory) as cache:
        if args.cache_command == "stats":
            st = cache.stats()
            out.print(f"cache {st.directory}: {st.entries} answers, {st.size_bytes / 1e6:.2f} MB")
            for model, n in sorted(st.by_model.items()):
                out.print(f"  {model}: {n}")
        else:
            what = f"model {args.model}" if args.model else "all models"
            st = cache.stats()
            n_at_risk = st.by_model.get(args.model, 0) if args.model else st.entries
            if not args.yes and not _confirm(
                f"delete {n_at_risk} cached answers ({what}) from {directory}? "
                "They were paid for and cannot be restored."
            ):
                raise CLIError(
                    f"not cleared: {n_at_risk} cached answers kept (pass --yes to delete "
                    "without asking)"
                )
            n = cache.clear(model=args.model)
            out.print(f"removed {n} cached answers ({what})")
    return 0


def _confirm(question: str) -> bool:
    """Ask y/N on a terminal; without a terminal the answer is no (use --yes)."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


# ---------------------------------------------------------------------- export
def _cmd_export(args: argparse.Namespace) -> int:
    try:
        from harness.training.export import export_run
    except ImportError as exc:
        raise CLIError(f"export is not available in this install: {exc}") from None
    result = export_run(
        Path(args.run_dir),
        fmt=args.format,
        out=Path(args.out),
        policy=args.policy,
        split=args.split,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        target=args.target,
        max_share=args.balance,
    )
    out.print(str(result))
    return 0


# ---------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    from harness.training.learn import train_model

    out.print(
        str(
            train_model(
                Path(args.export_dir), Path(args.out), folds=args.folds, min_rows=args.min_rows
            )
        )
    )
    return 0


# ---------------------------------------------------------------------- data
def _cmd_data(args: argparse.Namespace) -> int:
    from harness.data import importers

    if args.data_command == "fetch":
        res = importers.fetch_deribit(
            args.underlying,
            args.start,
            args.end,
            args.timeframe,
            Path(args.out),
            base_url=args.base_url,
            cache_dir=args.cache_dir,
            progress=not args.quiet,
        )
    elif args.data_command == "import-tardis":
        res = importers.import_tardis(
            [Path(f) for f in args.files],
            Path(args.out),
            timeframe=args.timeframe,
            progress=not args.quiet,
        )
    elif args.data_command == "compact":
        from harness.data.files import compact_store

        summaries = compact_store(Path(args.store), args.underlying or None)
        out.print("\n".join(str(x) for x in summaries) or "nothing to compact")
        return 0
    elif args.data_command == "import-synthetic":
        res = importers.import_synthetic(
            args.underlying,
            args.start,
            args.end,
            args.every,
            Path(args.out),
            seed=args.seed,
            calls_only=args.calls_only,
            max_dte=args.max_dte,
            spot_timeframe=args.spot_timeframe,
            progress=not args.quiet,
        )
    else:
        res = importers.import_cdd(
            Path(args.file), args.underlying, Path(args.out), progress=not args.quiet
        )
    out.print(str(res))
    return 0


# ---------------------------------------------------------------------- view
def _cmd_view(args: argparse.Namespace) -> int:
    from harness.reports.view.app import serve

    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise CLIError(f"no runs folder at {runs_dir}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"warning: serving on {args.host}, reachable beyond this machine", markup=False)
    out.print(f"harness view: http://{args.host}:{args.port}/ (runs from {runs_dir}; Ctrl-C stops)")
    serve(runs_dir, host=args.host, port=args.port)
    return 0


# ---------------------------------------------------------------------- runs
def _cmd_runs(args: argparse.Namespace) -> int:
    from harness.experiments.run_folders import remove_run_folders, scan_run_folders

    infos = scan_run_folders(Path(args.runs_dir), incomplete_only=args.incomplete)
    if args.runs_command == "list":
        if args.json:
            _print_json(
                [
                    {
                        "path": str(i.path),
                        "name": i.name,
                        "status": i.status,
                        "started_at": i.started_at,
                        "decision_lines": i.n_decision_lines,
                        "size_bytes": i.size_bytes,
                        "live": i.live,
                    }
                    for i in infos
                ]
            )
            return 0
        table = Table(title=f"{len(infos)} run folder(s) in {args.runs_dir}")
        for col in ("run folder", "status", "started", "decision lines", "size"):
            table.add_column(col, justify="right" if col in ("decision lines", "size") else "left")
        for i in infos:
            status = i.status + (" (live?)" if i.live and not i.complete else "")
            table.add_row(
                str(i.path),
                status,
                i.started_at or "-",
                f"{i.n_decision_lines:,}",
                f"{i.size_bytes / 1e6:.1f} MB",
            )
        out.print(table)
        return 0
    doomed = [i for i in infos if not i.complete and not i.live]
    kept_live = [i for i in infos if not i.complete and i.live]
    for i in kept_live:
        out.print(f"kept {i.path}: written to in the last minutes (may still be running)")
    if not doomed:
        out.print("no incomplete run folders to remove")
        return 0
    for i in doomed:
        out.print(f"incomplete: {i.path} ({i.n_decision_lines:,} decision lines)")
    if not args.yes and not _confirm(f"remove these {len(doomed)} incomplete run folder(s)?"):
        raise CLIError("nothing removed (pass --yes to remove without asking)")
    removed = remove_run_folders(doomed)
    out.print(f"removed {len(removed)} incomplete run folder(s)")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `harness` command."""
    p = argparse.ArgumentParser(
        prog="harness",
        description="Evaluate LLM and rule policies that sell covered calls on Deribit-style option markets.",
    )
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser(
        "run",
        help="run an experiment config into a run folder",
        description=(
            "Replay every policy of CONFIG on the same decision times, score each decision against the "
            "counterfactual labels, replay each portfolio, and write runs/<timestamp>-<id>-<name>/ with a report."
        ),
    )
    r.add_argument("config", help="experiment YAML, e.g. configs/quickstart.yaml")
    r.add_argument("--out", default="runs", help="parent folder of run folders (default: runs)")
    r.add_argument(
        "--cache-mode",
        choices=["read_write", "read_only", "refresh", "off"],
        help="override the config's LLM cache mode",
    )
    r.add_argument(
        "--require-llm",
        action="store_true",
        help="exit 2 when any LLM policy is skipped or failed (the run folder is still written)",
    )
    r.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run folder, skipping finished decisions",
    )
    r.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="stop cleanly before this invocation's LLM spend could pass USD (resume to go on)",
    )
    r.add_argument(
        "--batch",
        action="store_true",
        help="send every LLM policy's requests through the provider's batch API (half price, "
        "answers within 24h; docs/llm.md 'Batch mode')",
    )
    r.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars; print only the run folder"
    )
    r.add_argument(
        "--json",
        action="store_true",
        help="print the run summary (folder, metrics, comparisons, LLM usage) as JSON",
    )
    r.set_defaults(func=_cmd_run)

    b = sub.add_parser(
        "batch",
        help="batch files for a batch runner elsewhere (vllm run-batch): export requests, import answers",
        description=(
            "export: write the requests a config (or run folder) would send and the cache does "
            "not answer as OpenAI batch JSONL. import: load a batch runner's output JSONL into the "
            "response cache, so a run of the config is then served from it. See docs/llm.md."
        ),
    )
    bsub = b.add_subparsers(dest="batch_command", required=True, metavar="ACTION")
    be = bsub.add_parser("export", help="write the uncached requests as batch JSONL")
    be.add_argument("source", metavar="RUN_OR_CONFIG", help="experiment YAML or a run folder")
    be.add_argument("--out", required=True, help="JSONL file to write, e.g. requests.jsonl")
    bi = bsub.add_parser("import", help="load a batch output JSONL into the response cache")
    bi.add_argument("results", help="the batch runner's output JSONL, e.g. results.jsonl")
    bi.add_argument(
        "--config", required=True, help="the experiment YAML (or run folder) that was exported"
    )
    for sp in (be, bi):
        sp.add_argument("--policy", help="only this LLM policy (default: every LLM policy)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    b.set_defaults(func=_cmd_batch)

    sw = sub.add_parser(
        "sweep",
        help="run many configs (a grid, list or random sample of axes) and rank them",
        description=(
            "Expand SWEEP.yaml (a base config and axes over its dotted fields) into trials, run each "
            "as a run folder under runs/<sweep-id>/trials/, and write sweep.json, leaderboard.parquet "
            "and sweep_report.html with Holm/BH-adjusted p-values, the Deflated Sharpe Ratio and PBO. "
            "Re-running the same file continues it. See docs/sweeps.md."
        ),
    )
    sw.add_argument("sweep", help="sweep YAML, e.g. configs/sweeps/delta_dte.yaml")
    sw.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="where trials run: a local process pool (default) or Ray",
    )
    sw.add_argument(
        "--workers", type=int, help="parallel trials (default: CPU count; 1 runs in-process)"
    )
    sw.add_argument(
        "--address", help="Ray cluster: auto or ray://HOST:PORT (default: a local loopback Ray)"
    )
    sw.add_argument("--out", default="runs", help="parent folder of the sweep folder")
    sw.add_argument(
        "--trial-reports", action="store_true", help="also draw each trial's HTML report and charts"
    )
    sw.add_argument(
        "--fresh", action="store_true", help="start a new sweep folder instead of continuing one"
    )
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sw.set_defaults(func=_cmd_sweep)

    rp = sub.add_parser(
        "replay",
        help="re-run a run folder from its own transcripts (no cache, no network)",
        description=(
            "Re-run RUN_DIR's config serving every LLM request from RUN_DIR/transcripts.jsonl, "
            "write a new run folder, and check its decisions against the original's. Exit 0 when "
            "identical, 1 when not."
        ),
    )
    rp.add_argument("run_dir", help="the run folder to replay from its transcripts.jsonl")
    rp.add_argument(
        "--out", help="parent folder of the replay's run folder (default: next to RUN_DIR)"
    )
    rp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    rp.set_defaults(func=_cmd_replay)

    pl = sub.add_parser(
        "plan",
        help="what a run would send and cost, without calling anyone",
        description=(
            "Render every prompt CONFIG's LLM policies would send and print per policy: decisions to "
            "ask, answers already cached, estimated tokens, cost at live and batch prices, wall time."
        ),
    )
    pl.add_argument("config", help="experiment YAML whose LLM requests are planned")
    pl.add_argument(
        "--latency-s",
        type=float,
        default=1.0,
        help="assumed seconds per request for the wall-time estimate (default 1)",
    )
    pl.add_argument(
        "--batch", action="store_true", help="plan as `harness run --batch` would run it"
    )
    pl.set_defaults(func=_cmd_plan)

    c = sub.add_parser(
        "compare",
        help="compare two runs decision by decision (prompt iteration)",
        description=(
            "Line up the decisions of RUN_A and RUN_B by decision time: where the choice changed, the reward "
            "change with a 95% studentized block-bootstrap interval, validity and cost changes. Writes "
            "run_comparison.md and run_comparison.html."
        ),
    )
    c.add_argument("run_a", help="the earlier run folder (A)")
    c.add_argument("run_b", help="the later run folder (B); changes are B minus A")
    c.add_argument("--policy", help="compare only this policy (default: every policy in both runs)")
    c.add_argument(
        "--out", help="folder for run_comparison.md and run_comparison.html (default: RUN_B)"
    )
    c.add_argument(
        "--json", action="store_true", help="print the comparison as JSON instead of Markdown"
    )
    c.set_defaults(func=_cmd_compare)

    ch = sub.add_parser(
        "chain",
        help="print an option chain near the money",
        description="Print the listed options around spot at an instant.",
    )
    ch.add_argument("--underlying", default="BTC", help="coin, e.g. BTC or ETH (default: BTC)")
    ch.add_argument("--as-of", required=True, help="instant, e.g. 2024-03-01T08:00Z (UTC)")
    ch.add_argument(
        "--source",
        default="synthetic",
        choices=["synthetic", "parquet"],
        help="market data: the embedded synthetic market or a Parquet store (default: synthetic)",
    )
    ch.add_argument("--path", help="store folder for --source parquet (required there)")
    ch.add_argument("--seed", type=int, default=7, help="synthetic market seed")
    ch.add_argument(
        "--expiries",
        type=_positive_int,
        default=3,
        help="how many nearest expiries to show (at least 1)",
    )
    ch.add_argument(
        "--width",
        type=_positive_float,
        default=10.0,
        help="strikes within this %% of spot (greater than 0)",
    )
    ch.add_argument("--json", action="store_true", help="print the options shown as JSON")
    ch.set_defaults(func=_cmd_chain)

    w = sub.add_parser(
        "what-if",
        help="what if I sold this call here? one call held to expiry",
        description="Sell one call at an instant, hold it to expiry and print the outcome.",
    )
    w.add_argument("--underlying", default="BTC", help="coin, e.g. BTC or ETH")
    w.add_argument("--as-of", required=True, help="sale instant, e.g. 2024-03-01T08:00Z (UTC)")
    w.add_argument("--instrument", help="the call to sell, e.g. BTC-8MAR24-62000-C")
    w.add_argument("--delta", type=float, default=0.25, help="else: the call nearest this delta")
    w.add_argument("--dte", type=float, default=7.0, help="... and this many days to expiry")
    w.add_argument("--size", type=float, default=1.0, help="coins covered")
    w.add_argument(
        "--source", default="synthetic", choices=["synthetic", "parquet"], help="market data"
    )
    w.add_argument("--path", help="store folder for --source parquet")
    w.add_argument("--seed", type=int, default=7, help="synthetic market seed")
    w.add_argument("--world", default="realistic", help="synthetic world")
    w.add_argument("--timeframe", default="1h", help="bar length for marks and the path")
    w.add_argument("--json", action="store_true", help="print JSON for scripts")
    w.set_defaults(func=_cmd_what_if)

    k = sub.add_parser("cache", help="inspect or clear the LLM response cache")
    k.add_argument("--dir", default=".cache/llm", help="cache folder (default: .cache/llm)")
    ksub = k.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    ksub.add_parser("stats", help="entries and size per model")
    kc = ksub.add_parser(
        "clear", help="remove cached answers (asks first: they were paid for; --yes skips)"
    )
    kc.add_argument("--model", help="only this model's answers")
    kc.add_argument("--yes", action="store_true", help="delete without asking")
    k.set_defaults(func=_cmd_cache)

    v = sub.add_parser(
        "view",
        help="browse runs in a local read-only web app",
        description=(
            "Serve a read-only web app over RUNS_DIR: runs list, run reports, a decision browser, "
            "LLM transcripts and run-vs-run comparison (JSON under /api/). Binds to 127.0.0.1."
        ),
    )
    v.add_argument("runs_dir", nargs="?", default="runs", help="runs folder (default: runs)")
    v.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    v.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default: 127.0.0.1, this machine only)",
    )
    v.set_defaults(func=_cmd_view)

    rn = sub.add_parser("runs", help="list run folders or remove incomplete ones")
    rnsub = rn.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    rl = rnsub.add_parser("list", help="run folders (sweep trials included), newest first")
    rl.add_argument("--incomplete", action="store_true", help="only runs that did not finish")
    rl.add_argument("--json", action="store_true", help="print the list as JSON")
    rc = rnsub.add_parser(
        "clean", help="remove incomplete run folders (never complete or still-running ones)"
    )
    rc.add_argument(
        "--incomplete",
        action="store_true",
        required=True,
        help="remove run folders whose manifest does not say complete (required)",
    )
    rc.add_argument("--yes", action="store_true", help="remove without asking")
    for sp in (rl, rc):
        sp.add_argument("--runs-dir", default="runs", help="runs folder (default: runs)")
    rn.set_defaults(func=_cmd_runs)

    e = sub.add_parser(
        "export",
        help="export a run as training data",
        description=(
            "Turn a run folder into labeled examples: parquet, csv, jsonl, openai-chat (SFT), "
            "preference (OpenAI DPO), trl-preference, rft, grpo (TRL) and verl, the last two "
            "with a reward.py. See docs/export.md."
        ),
    )
    e.add_argument("run_dir", help="the run folder to export")
    e.add_argument(
        "--format",
        required=True,
        choices=[
            "parquet",
            "csv",
            "jsonl",
            "openai-chat",
            "preference",
            "trl-preference",
            "rft",
            "grpo",
            "verl",
        ],
        help="output format",
    )
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--policy", help="policy whose actions are exported (default: the baseline)")
    e.add_argument(
        "--split",
        choices=["none", "walk-forward"],
        default="none",
        help="walk-forward: train/validation by time with a gap of at least one trade life",
    )
    e.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        help="share of decision times in validation with --split walk-forward, in (0, 1)",
    )
    e.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of decision times (the latest) in test with --split walk-forward; 0 = no test",
    )
    e.add_argument(
        "--target",
        choices=["oracle", "policy"],
        default="oracle",
        help="openai-chat target: the best action in hindsight, or the policy's own valid answers",
    )
    e.add_argument(
        "--balance",
        type=float,
        metavar="MAX_SHARE",
        help="cap the majority target action at this share of the train rows, e.g. 0.6",
    )
    e.set_defaults(func=_cmd_export)

    tr = sub.add_parser(
        "train",
        help="fit a learned policy (candidate-reward model) on an export",
        description=(
            "Fit a gradient-boosting model predicting each candidate's reward from point-in-time "
            "features on a parquet/jsonl export (its data, or train + validation splits), evaluate "
            "it walk-forward, and write model.joblib, model.json and a model card. Use it in a "
            "config as a policy entry `type: model`, `path: <out>`. See docs/training.md."
        ),
    )
    tr.add_argument("export_dir", help="folder written by `harness export --format parquet|jsonl`")
    tr.add_argument("--out", required=True, help="model folder, e.g. models/NAME")
    tr.add_argument("--folds", type=int, default=4, help="walk-forward folds (default 4)")
    tr.add_argument(
        "--min-rows",
        type=int,
        default=50,
        help="settled candidate rows a fold needs before it is fitted (default 50)",
    )
    tr.set_defaults(func=_cmd_train)

    d = sub.add_parser("data", help="fetch or import real market data into the Parquet store")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    f = dsub.add_parser("fetch", help="fetch from the Deribit API: harness data fetch deribit ...")
    f.add_argument("exchange", choices=["deribit"], help="the exchange API (deribit)")
    f.add_argument("--underlying", default="BTC", help="coin (default: BTC)")
    f.add_argument("--start", required=True, help="first instant, UTC (e.g. 2024-03-01)")
    f.add_argument("--end", required=True, help="last instant, UTC")
    f.add_argument(
        "--timeframe",
        default="1h",
        choices=["1m", "5m", "15m", "1h", "4h", "1d"],
        help="bar length (default: 1h)",
    )
    f.add_argument("--out", default="data", help="store folder (default: data)")
    f.add_argument("--base-url", help="Deribit API base URL override")
    f.add_argument("--cache-dir", help="HTTP cache folder for API responses")
    imp = dsub.add_parser(
        "import", help="import files: harness data import tardis|cdd|synthetic ..."
    )
    isub = imp.add_subparsers(dest="import_kind", required=True, metavar="KIND")
    it = isub.add_parser("tardis", help="Tardis.dev options_chain CSV(.gz) files")
    it.add_argument("files", nargs="+", help="options_chain CSV(.gz) files")
    it.add_argument(
        "--timeframe",
        default="1h",
        choices=["1m", "5m", "15m", "1h", "4h", "1d"],
        help="bar length (default: 1h)",
    )
    it.add_argument("--out", default="data", help="store folder (default: data)")
    ic = isub.add_parser("cdd", help="a CryptoDataDownload spot CSV")
    ic.add_argument("file", help="the CryptoDataDownload CSV")
    ic.add_argument("--underlying", required=True, help="coin of the file, e.g. BTC")
    ic.add_argument("--out", default="data", help="store folder (default: data)")
    isy = isub.add_parser(
        "synthetic",
        help="the embedded synthetic market, written like a real import (offline pipeline tests)",
    )
    isy.add_argument("--seed", type=int, default=7, help="synthetic market seed (default: 7)")
    isy.add_argument("--underlying", default="BTC", help="coin (default: BTC)")
    isy.add_argument("--start", required=True, help="first snapshot, e.g. 2024-01-01T08:00")
    isy.add_argument("--end", required=True, help="last snapshot, UTC")
    isy.add_argument("--every", default="1h", help="snapshot spacing, e.g. 1h, 4h, 1d")
    isy.add_argument("--calls-only", action="store_true", help="write calls only")
    isy.add_argument("--max-dte", type=float, help="only expiries within this many days")
    isy.add_argument(
        "--spot-timeframe",
        default="1h",
        choices=["1m", "5m", "15m", "1h", "4h", "1d"],
        help="bar length of the spot bars written (default: 1h)",
    )
    isy.add_argument("--out", default="data", help="store folder (default: data)")
    co = dsub.add_parser(
        "compact",
        help="fold a store's day chain partitions into month files (faster reads, same rows)",
    )
    co.add_argument("--store", default="data", help="store folder (default: data)")
    co.add_argument(
        "--underlying", action="append", help="coin to compact (repeatable; default: all)"
    )
    for sp in (f, it, ic, isy):
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_data)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `harness` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "data" and args.data_command == "import":
        args.data_command = f"import-{args.import_kind}"
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:  # one line, no traceback, unless --verbose
        if args.verbose:
            err.print_exception()
        msg = str(exc).strip() or type(exc).__name__
        err.print(f"harness {args.command}: error: {msg}", markup=False, highlight=False)
        return 2


def console() -> None:
    """The `harness` console script: `main`, then exit with its code without a slow shutdown.

    A command imports about 2,000 modules; at exit the interpreter's collections walked every
    one of their objects again and again while it tore the modules down (about 0.5 s of every
    command). Frozen first, they are freed by reference counting alone. Objects still alive at
    exit keep no promise of finalization either way (files are closed where they are written).
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()
