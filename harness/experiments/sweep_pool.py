"""The local backend's worker processes: a forkserver that preloads what a trial imports.

Workers fork from a clean server process that has already imported the runner, the report and
the sweep outputs, so each starts in milliseconds and never inherits the driver's threads
(progress bars, Ray, HTTP clients, Arrow's thread pools). This module imports only the
standard library, so `harness sweep` can start the server first and let it import on the
second core while the driver imports the same modules on the first.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

PRELOAD = (
    "harness.experiments.sweep_backends",
    "harness.experiments.runner",
    "harness.experiments.sweep_outputs",
    "harness.reports.report",
    # the trial summary's Newey-West p-values (`selection.mean_pvalue` imports it on use):
    # about 0.3 s of imports a worker's first trial would otherwise pay
    "statsmodels.regression.linear_model",
)


def worker_context() -> BaseContext:
    """The forkserver context sweep pools start their workers from (preloads `PRELOAD`)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def start_worker_server() -> None:
    """Start the forkserver now, so its imports overlap with the caller's own (no wait)."""
    worker_context()
    forkserver.ensure_running()
