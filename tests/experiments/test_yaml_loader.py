"""libyaml's loader (trial configs, the leaderboard, report.md) reads what yaml.safe_load reads."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from harness.experiments import sweep_outputs
from harness.experiments.config import dump_config, load_config, parse_config
from harness.experiments.sweep_backends import config_json
from harness.experiments.sweep_spec import load_sweep
from harness.reports import report

ROOT = Path(__file__).parents[2]


def test_every_config_file_and_its_resolved_dump_load_the_same() -> None:
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(files) >= 5
    texts = [p.read_text() for p in files]
    texts.append(dump_config(load_config(ROOT / "configs" / "quickstart.yaml")))
    texts.append("a: 2024-01-01\nb: 1e-3\nc: .inf\nd: ~\ne: 'x: y'\nf: [1, 2.5, no]\n")
    for loader in {sweep_outputs.YAML_LOADER, report.YAML_LOADER}:
        for text in texts:
            assert yaml.load(text, Loader=loader) == yaml.safe_load(text)


def test_a_trial_task_carries_the_config_its_yaml_dump_would() -> None:
    # trial tasks carry the resolved config as JSON (much cheaper to write than YAML): parsed
    # back, the same config as the YAML a run folder gets
    configs = [load_config(p) for p in sorted((ROOT / "configs").glob("*.yaml"))]
    configs += [t.config for t in load_sweep(ROOT / "configs" / "sweeps" / "delta_dte.yaml").trials]
    for cfg in configs:
        via_json = parse_config(json.loads(config_json(cfg)), ROOT)
        assert via_json == parse_config(yaml.safe_load(dump_config(cfg)), ROOT) == cfg
