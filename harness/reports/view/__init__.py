"""`harness view`: a local, read-only web app over a runs folder (Starlette + jinja2 + uvicorn).

Pages: runs list, run report, decision browser, one decision, its LLM transcript, run-vs-run
comparison; the same data as JSON under `/api/`. See docs/viewer.md.
"""
