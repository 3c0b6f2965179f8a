"""Reports: read run folders and render them (run report, run-vs-run comparison).

Reports read the files a run wrote and library types; they never import `harness.experiments`.
Markdown and HTML live in `templates/` beside this package.
"""

from harness.reports.compare import RunComparison, compare_runs, render_comparison, write_comparison
from harness.reports.report import RunFolder, build_report, load_run, write_report

__all__ = [
    "RunComparison",
    "RunFolder",
    "build_report",
    "compare_runs",
    "load_run",
    "render_comparison",
    "write_comparison",
    "write_report",
]
