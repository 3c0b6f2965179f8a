"""Every JSON file a quickstart-sized run writes is strict JSON (no bare NaN/Infinity), and
the readers of run folders take its nulls."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness import strict_json
from harness.experiments.config import load_config
from harness.experiments.runner import run_experiment
from harness.reports.report import load_run, write_report
from harness.reports.view.catalog import list_runs

ROOT = Path(__file__).parents[2]


def test_dumps_writes_null_for_every_non_finite_float() -> None:
    obj = {
        "a": float("nan"),
        "b": [np.float64("inf"), -math.inf, 1.5, np.float32(2.0)],
        "c": (np.nan, np.int64(3)),
        "d": {"e": None, "f": "NaN"},
    }
    text = strict_json.dumps(obj, default=str)
    assert json.loads(text, parse_constant=strict_json.reject_constant) == {
        "a": None,
        "b": [None, None, 1.5, 2.0],
        "c": [None, 3],
        "d": {"e": None, "f": "NaN"},
    }
    # a `default` returning a non-finite float is nulled too
    assert strict_json.dumps({"x": object()}, default=lambda _: float("nan")) == '{"x": null}'
    with pytest.raises(ValueError, match="NaN"):
        json.loads('{"x": NaN}', parse_constant=strict_json.reject_constant)


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    sim = cfg.simulation.model_copy(update={"end": cfg.simulation.end.replace(month=2, day=15)})
    cfg = cfg.model_copy(update={"simulation": sim})
    out = tmp_path_factory.mktemp("runs")
    return run_experiment(cfg, out_dir=out, quiet=True).run_dir


def test_every_json_file_of_a_quickstart_run_is_strict(quickstart_run: Path) -> None:
    files = sorted(quickstart_run.rglob("*.json")) + sorted(quickstart_run.rglob("*.jsonl"))
    names = {f.name for f in files}
    assert {"manifest.json", "metrics.json", "comparison.json", "decisions.jsonl"} <= names
    nulls = 0
    for f in files:
        text = f.read_text()
        if f.suffix == ".jsonl":
            for line in text.splitlines():
                json.loads(line, parse_constant=strict_json.reject_constant)
        else:
            json.loads(text, parse_constant=strict_json.reject_constant)
        nulls += text.count("null")
    # the quickstart has undefined figures (p_holm of pairs, LLM fields of rule rows)
    comparison = json.loads((quickstart_run / "comparison.json").read_text())
    assert any(p["p_holm"] is None for p in comparison["pairs"])
    assert nulls > 0


def test_readers_take_the_nulls(quickstart_run: Path) -> None:
    run = load_run(quickstart_run)
    assert run.comparison["pairs"]
    md, _ = write_report(quickstart_run, html=False)
    assert "Paired differences" in md.read_text()
    entries = list_runs(quickstart_run.parent)
    assert [e.id for e in entries] == [quickstart_run.name]
