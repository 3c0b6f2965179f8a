"""Housekeeping of a runs folder: list run folders (and sweep trials), remove incomplete ones.

A run is complete when its manifest.json says `status: complete`; a folder without a manifest
was interrupted (or is still running: folders written to in the last few minutes are treated
as live and never removed).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from harness.reports.view.catalog import is_run_folder

LIVE_SECONDS = 300.0  # a folder modified this recently may belong to a running process


@dataclass(frozen=True)
class RunFolderInfo:
    """One run folder: where, its status, when it was last written, its size in bytes."""

    path: Path
    name: str
    status: str  # complete | incomplete | <manifest status>
    started_at: str | None
    modified_s_ago: float
    size_bytes: int
    n_decision_lines: int

    @property
    def complete(self) -> bool:
        """True when the manifest records a finished run."""
        return self.status == "complete"

    @property
    def live(self) -> bool:
        """True when written to within LIVE_SECONDS (maybe still running)."""
        return self.modified_s_ago < LIVE_SECONDS


def _info(path: Path, now: float) -> RunFolderInfo:
    manifest: dict = {}
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    files = [f for f in path.rglob("*") if f.is_file()]
    newest = max((f.stat().st_mtime for f in files), default=path.stat().st_mtime)
    decisions = path / "decisions.jsonl"
    n_lines = 0
    if decisions.is_file():
        with decisions.open("rb") as fh:
            n_lines = sum(1 for _ in fh)
    return RunFolderInfo(
        path=path,
        name=str(manifest.get("name") or path.name),
        status=str(manifest.get("status") or "incomplete") if manifest else "incomplete",
        started_at=manifest.get("started_at"),
        modified_s_ago=max(0.0, now - newest),
        size_bytes=sum(f.stat().st_size for f in files),
        n_decision_lines=n_lines,
    )


def scan_run_folders(runs_dir: Path, incomplete_only: bool = False) -> list[RunFolderInfo]:
    """Run folders under `runs_dir` (sweep trials included), newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no runs folder at {root}")
    now = time.time()
    paths: list[Path] = []
    for child in sorted(root.iterdir()):
        if (child / "sweep.json").is_file() and (child / "trials").is_dir():
            paths.extend(t for t in sorted((child / "trials").iterdir()) if is_run_folder(t))
        elif is_run_folder(child):
            paths.append(child)
    infos = [_info(p, now) for p in paths]
    if incomplete_only:
        infos = [i for i in infos if not i.complete]
    return sorted(infos, key=lambda i: (i.started_at or "", i.path.name), reverse=True)


def remove_run_folders(infos: list[RunFolderInfo]) -> list[Path]:
    """Delete the given incomplete, not-live run folders; returns what was removed."""
    removed = []
    for info in infos:
        if info.complete or info.live:
            continue  # never a finished run, never one that may still be running
        shutil.rmtree(info.path)
        removed.append(info.path)
    return removed
