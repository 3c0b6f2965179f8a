"""libyaml's loader (trial configs, the leaderboard, report.md) reads what yaml.safe_load reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.experiments import sweep_backends, sweep_outputs
from harness.experiments.config import dump_config, load_config
from harness.reports import report

ROOT = Path(__file__).parents[2]


def test_every_config_file_and_its_resolved_dump_load_the_same() -> None:
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(files) >= 5
    texts = [p.read_text() for p in files]
    texts.append(dump_config(load_config(ROOT / "configs" / "quickstart.yaml")))
    texts.append("a: 2024-01-01\nb: 1e-3\nc: .inf\nd: ~\ne: 'x: y'\nf: [1, 2.5, no]\n")
    for loader in {sweep_backends.YAML_LOADER, sweep_outputs.YAML_LOADER, report.YAML_LOADER}:
        for text in texts:
            assert yaml.load(text, Loader=loader) == yaml.safe_load(text)
