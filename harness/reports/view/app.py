"""The viewer's web app: Starlette routes rendering jinja2 templates, and JSON under /api/.

Read-only by construction: every route is GET and only reads files inside the runs folder.
Starlette (with uvicorn serving it) is a small, well-kept ASGI framework: routing, query
parsing and responses without a front-end build step; pages are server-rendered templates.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import pandas as pd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from harness.reports.document import (
    TEMPLATES_DIR,
    document_css,
    fmt_reward,
    fmt_time,
    fmt_usd,
    register_filters,
    reward_unit,
)
from harness.reports.report import (
    Document,
    RunFolder,
    build_document,
    load_run,
    transcript_block,
)
from harness.reports.view import browse
from harness.reports.view.catalog import RunEntry, UnknownRun, list_runs, resolve_run

VIEW_TEMPLATES = Path(__file__).parent / "templates"


def decision_url(run_id: str, time: Any) -> str:
    """Viewer URL of one decision time of a run."""
    return "/decision?" + urlencode({"run": run_id, "time": pd.Timestamp(time).isoformat()})


def transcript_url(run_id: str, policy: str, time: Any) -> str:
    """Viewer URL of one LLM decision's transcript."""
    query = {"run": run_id, "policy": policy, "time": pd.Timestamp(time).isoformat()}
    return "/transcript?" + urlencode(query)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    return obj


class _Runs:
    """Loaded run folders, reloaded when a file of the folder changes (runs may be live)."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self._cache: dict[Path, tuple[tuple[float, ...], RunFolder]] = {}
        self._docs: dict[Path, Document] = {}
        self._lock = threading.Lock()

    def get(self, run_id: str) -> tuple[Path, RunFolder]:
        path = resolve_run(self.runs_dir, run_id)
        stamp = tuple(
            (path / f).stat().st_mtime if (path / f).exists() else 0.0
            for f in ("manifest.json", "decisions.jsonl", "transcripts.jsonl", "comparison.json")
        )
        with self._lock:
            hit = self._cache.get(path)
            if hit and hit[0] == stamp:
                return path, hit[1]
        run = load_run(path)
        with self._lock:
            self._cache[path] = (stamp, run)
            self._docs.pop(path, None)
        return path, run

    def document(self, run_id: str) -> Document:
        """The run's report with viewer links; charts are slow, so kept until the run changes."""
        path, run = self.get(run_id)
        with self._lock:
            doc = self._docs.get(path)
        if doc is None:
            doc = build_document(run, link_for=lambda p, t: transcript_url(run_id, p, t))
            with self._lock:
                self._docs[path] = doc
        return doc


def create_app(runs_dir: str | Path) -> Starlette:
    """The viewer app over `runs_dir` (no route writes anything)."""
    runs = _Runs(Path(runs_dir))
    env = register_filters(
        jinja2.Environment(
            loader=jinja2.ChoiceLoader(
                [jinja2.FileSystemLoader(VIEW_TEMPLATES), jinja2.FileSystemLoader(TEMPLATES_DIR)]
            ),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    )
    env.globals.update(
        css=document_css(),
        fmt_reward=fmt_reward,
        fmt_usd=fmt_usd,
        fmt_time=fmt_time,
        reward_unit=reward_unit,
        decision_url=decision_url,
        transcript_url=transcript_url,
    )

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=status)

    def errors(handler: Callable[[Request], Response], api: bool) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> Response:
            try:
                return handler(request)
            except (UnknownRun, KeyError, ValueError) as exc:
                msg = str(exc.args[0]) if exc.args else str(exc)
                if api:
                    return JSONResponse({"error": msg}, status_code=404)
                return page("error.html.j2", status=404, title="Not found", message=msg)

        return wrapped

    def arg(request: Request, name: str) -> str:
        value = request.query_params.get(name)
        if not value:
            raise ValueError(f"missing query parameter {name!r}")
        return value

    def filters(request: Request) -> browse.Filters:
        q = request.query_params
        gap = q.get("min_gap")
        return browse.Filters(
            policy=q.get("policy") or None,
            disagree=q.get("disagree") in ("1", "true", "on"),
            min_gap=float(gap) if gap else None,
            offset=int(q.get("offset") or 0),
        )

    # ---------------------------------------------------------------- JSON
    def api_runs(request: Request) -> Response:
        return JSONResponse(_json_safe([e.as_dict() for e in list_runs(runs.runs_dir)]))

    def api_run(request: Request) -> Response:
        _, run = runs.get(arg(request, "id"))
        return JSONResponse(
            _json_safe(
                {
                    "id": arg(request, "id"),
                    "manifest": run.manifest,
                    "metrics": run.metrics,
                    "comparison": run.comparison,
                    "notes": list(run.notes),
                }
            )
        )

    def api_decisions(request: Request) -> Response:
        _, run = runs.get(arg(request, "run"))
        return JSONResponse(_json_safe(browse.decision_rows(run, filters(request))))

    def api_decision(request: Request) -> Response:
        _, run = runs.get(arg(request, "run"))
        return JSONResponse(_json_safe(browse.decision_detail(run, arg(request, "time"))))

    def api_transcript(request: Request) -> Response:
        _, run = runs.get(arg(request, "run"))
        data = browse.transcript(run, arg(request, "policy"), arg(request, "time"))
        return JSONResponse(_json_safe(data))

    def api_compare(request: Request) -> Response:
        _, a = runs.get(arg(request, "a"))
        _, b = runs.get(arg(request, "b"))
        data = browse.compare(a, b, policy=request.query_params.get("policy") or None)
        return JSONResponse(_json_safe(data))

    # ---------------------------------------------------------------- pages
    def runs_page(request: Request) -> Response:
        entries = list_runs(runs.runs_dir)
        return page("runs.html.j2", title="Runs", entries=entries, runs_dir=str(runs.runs_dir))

    def run_page(request: Request) -> Response:
        run_id = arg(request, "id")
        doc = runs.document(run_id)
        return page("run.html.j2", title=doc.title, run_id=run_id, doc=doc)

    def decisions_page(request: Request) -> Response:
        run_id = arg(request, "run")
        _, run = runs.get(run_id)
        f = filters(request)
        data = browse.decision_rows(run, f)
        return page(
            "decisions.html.j2",
            title=f"Decisions: {run.manifest.get('name') or run_id}",
            run_id=run_id,
            run=run,
            f=f,
            data=data,
            unit=reward_unit(run.reward_kind),
        )

    def decision_page(request: Request) -> Response:
        run_id = arg(request, "run")
        _, run = runs.get(run_id)
        d = browse.decision_detail(run, arg(request, "time"))
        return page(
            "decision.html.j2",
            title=f"Decision at {fmt_time(d['decision_time'])} UTC",
            run_id=run_id,
            d=d,
            unit=reward_unit(run.reward_kind),
        )

    def transcript_page(request: Request) -> Response:
        run_id = arg(request, "run")
        _, run = runs.get(run_id)
        data = browse.transcript(run, arg(request, "policy"), arg(request, "time"))
        t = pd.Timestamp(data["decision_time"])
        d = run.decisions
        row = d[(d["policy"] == data["policy"]) & (d["decision_time"] == t)]
        block = transcript_block(
            run,
            data["policy"],
            t,
            row.iloc[0].to_dict() if not row.empty else None,
            reward_unit(run.reward_kind),
        )
        return page(
            "transcript.html.j2",
            title=f"Transcript: {data['policy']} at {fmt_time(t)} UTC",
            run_id=run_id,
            data=data,
            block=block,
        )

    def compare_page(request: Request) -> Response:
        entries = list_runs(runs.runs_dir)
        flat: list[RunEntry] = []
        for e in entries:
            flat.extend(e.trials if hasattr(e, "trials") else [e])
        a, b = request.query_params.get("a"), request.query_params.get("b")
        data = None
        unit = ""
        if a and b:
            _, ra = runs.get(a)
            _, rb = runs.get(b)
            data = browse.compare(ra, rb, policy=request.query_params.get("policy") or None)
            unit = reward_unit(data["reward_kind"])
        return page(
            "compare.html.j2", title="Compare runs", runs=flat, a=a, b=b, data=data, unit=unit
        )

    routes = [
        Route("/", errors(runs_page, api=False)),
        Route("/run", errors(run_page, api=False)),
        Route("/decisions", errors(decisions_page, api=False)),
        Route("/decision", errors(decision_page, api=False)),
        Route("/transcript", errors(transcript_page, api=False)),
        Route("/compare", errors(compare_page, api=False)),
        Route("/api/runs", errors(api_runs, api=True)),
        Route("/api/run", errors(api_run, api=True)),
        Route("/api/decisions", errors(api_decisions, api=True)),
        Route("/api/decision", errors(api_decision, api=True)),
        Route("/api/transcript", errors(api_transcript, api=True)),
        Route("/api/compare", errors(api_compare, api=True)),
    ]
    return Starlette(routes=routes)


def serve(runs_dir: str | Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the viewer until interrupted (binds to loopback unless told otherwise)."""
    import uvicorn

    uvicorn.run(create_app(runs_dir), host=host, port=port, log_level="warning")
