"""Small sweep files for the sweep tests: a tiny base config and a 2 x 2 grid over it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

BASE: dict[str, Any] = {
    "name": "tiny",
    "market": {"source": "synthetic", "seed": 3},
    "simulation": {
        "underlying": "BTC",
        "start": "2024-02-01",
        "end": "2024-03-10",
        "timeframe": "1h",
        "decision_interval_bars": 12,
        "target_dte": 7,
        "target_delta": 0.25,
    },
    "baseline": "always_sell",
    "bootstrap_resamples": 200,
    "policies": [
        {"name": "always_sell", "type": "rule", "rule": "always_sell"},
        {"name": "iv_rich", "type": "rule", "rule": "iv_rich", "params": {"threshold": 0.05}},
        {"name": "oracle", "type": "rule", "rule": "oracle"},
    ],
}

GRID: dict[str, Any] = {
    "name": "tiny-grid",
    "base": "base.yaml",
    "mode": "grid",
    "axes": {"simulation.target_delta": [0.15, 0.3], "simulation.target_dte": [3, 7]},
}


def write_sweep(
    folder: Path, sweep: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> Path:
    """Write base.yaml and sweep.yaml into `folder`; return the sweep file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base or BASE, sort_keys=False))
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep or GRID, sort_keys=False))
    return path


def trial_errors(sweep_dir: Path) -> list[str]:
    """Each unfinished trial's status and error from sweep.json (for assertion messages)."""
    data = json.loads((sweep_dir / "sweep.json").read_text())
    return [
        f"trial {t['index']}: {t['status']}: {t.get('error')}"
        for t in data.get("trials", [])
        if t.get("status") != "complete"
    ]
