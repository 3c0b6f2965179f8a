"""`harness train` on an export, then the model as a `type: model` policy in a later run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main as cli_main
from harness.experiments.config import ConfigError, parse_config
from harness.experiments.runner import run_experiment
from harness.training.learn import TrainError, train_model


@pytest.fixture(scope="module")
def model_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("learn")
    code = cli_main(
        [
            "export",
            str(run_dir),
            "--format",
            "parquet",
            "--out",
            str(root / "export"),
            "--split",
            "walk-forward",
            "--test-fraction",
            "0.2",
        ]
    )
    assert code == 0
    code = cli_main(
        [
            "train",
            str(root / "export"),
            "--out",
            str(root / "models" / "m"),
            "--folds",
            "1",
            "--min-rows",
            "20",
        ]
    )
    assert code == 0
    return root / "models" / "m"


def config(model: Path, start: str, end: str, **entry: object):
    return parse_config(
        {
            "name": "learned_run",
            "market": {"source": "synthetic", "seed": 7},
            "simulation": {
                "underlying": "BTC",
                "start": start,
                "end": end,
                "timeframe": "1h",
                "decision_interval_bars": 12,
            },
            "policies": [
                {"name": "always_sell", "type": "rule", "rule": "always_sell"},
                {"name": "learned", "type": "model", "path": str(model), **entry},
            ],
            "cache": {"mode": "off"},
        }
    )


def test_train_reads_train_and_validation_but_not_test(model_dir: Path, run_dir: Path) -> None:
    meta = json.loads((model_dir / "model.json").read_text())
    export = json.loads((Path(meta["export"]) / "export.json").read_text())
    assert set(export["files"]) == {"train", "validation", "test"}
    assert meta["source_run"] == run_dir.name and meta["reward_units"] == "USD"
    import pyarrow.parquet as pq

    test_first = pq.read_table(Path(meta["export"]) / "test.parquet")["decision_time"][0]
    assert meta["train_end"] < test_first.as_py().isoformat()
    assert (model_dir / "README.md").read_text().startswith("# Model `m`")


def test_a_model_entry_runs_out_of_sample_and_refuses_in_sample(
    model_dir: Path, tmp_path: Path
) -> None:
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["label_end"] < "2024-03-20"
    later = run_experiment(
        config(model_dir, "2024-03-20", "2024-04-20"), out_dir=tmp_path, quiet=True
    )
    assert "learned" in later.policies
    rows = [json.loads(x) for x in (later.run_dir / "decisions.jsonl").read_text().splitlines()]
    learned = [r for r in rows if r["policy"] == "learned"]
    assert learned and all(r["valid"] for r in learned)
    runs_before = set(tmp_path.iterdir())
    with pytest.raises(ConfigError, match=r"inside its training period.*allow_in_sample"):
        run_experiment(config(model_dir, "2024-02-10", "2024-03-01"), out_dir=tmp_path, quiet=True)
    assert set(tmp_path.iterdir()) == runs_before  # refused before any run folder is made
    inside = run_experiment(
        config(model_dir, "2024-02-10", "2024-03-01", allow_in_sample=True, threshold=1e9),
        out_dir=tmp_path,
        quiet=True,
    )
    assert inside.metrics["learned"]["sell_rate"] == 0.0  # nothing beats a huge threshold


def test_model_entries_need_a_path_and_train_needs_a_tabular_export(
    run_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="path"):
        parse_config(
            {
                "name": "x",
                "simulation": {"start": "2024-01-01", "end": "2024-02-01"},
                "policies": [{"name": "m", "type": "model"}],
            }
        )
    cli_main(["export", str(run_dir), "--format", "grpo", "--out", str(tmp_path / "g")])
    with pytest.raises(TrainError, match="parquet or jsonl"):
        train_model(tmp_path / "g", tmp_path / "m")
    with pytest.raises(TrainError, match="not an export folder"):
        train_model(tmp_path, tmp_path / "m")
