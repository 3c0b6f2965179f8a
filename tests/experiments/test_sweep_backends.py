"""The Ray backend's trial tasks: on the driver's node a trial writes its own folder; from any
other node its files come back to the driver, with the same content."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.experiments.sweep import SweepRunner
from harness.experiments.sweep_backends import TrialTask, config_json, run_ray, write_back
from tests.experiments.sweep_fixtures import write_sweep

SAME = ("config.yaml", "decisions.jsonl", "trades.csv", "metrics.json", "comparison.json")


def _tasks(sweep: Path, out: Path) -> tuple[list[TrialTask], dict, dict[int, Path]]:
    runner = SweepRunner(sweep, backend="ray", out_dir=out, quiet=True)
    trials = runner.sweep.trials[:2]
    dirs = {t.index: runner._trial_dir(t) for t in trials}
    tasks = [TrialTask(t.index, str(dirs[t.index]), config_json(t.config), False) for t in trials]
    return tasks, {t.index: t.config for t in trials}, dirs


def test_a_trial_on_the_drivers_node_writes_its_folder_and_a_remote_one_ships_it(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = write_sweep(tmp_path)
    here, configs, here_dirs = _tasks(sweep, tmp_path / "here")
    # a relative folder: a worker's working directory need not be the driver's
    monkeypatch.chdir(tmp_path)
    here = [
        TrialTask(t.index, str(Path(t.trial_dir).relative_to(tmp_path)), *_rest(t)) for t in here
    ]
    written = list(run_ray(here, configs))
    assert [o.status for o in written] == ["complete", "complete"]
    assert all(o.files is None for o in written)  # nothing shipped: the folders are written

    away, _, away_dirs = _tasks(sweep, tmp_path / "away")
    shipped = list(run_ray(away, configs, driver_node="a-node-elsewhere"))
    assert all(o.files and "decisions.jsonl" in o.files for o in shipped)
    for o in shipped:
        assert not (away_dirs[o.index] / "decisions.jsonl").exists()  # not until written back
        write_back(away_dirs[o.index], o.files or {})

    for i, folder in here_dirs.items():
        assert (folder / "manifest.json").is_file() and (folder / "report.md").is_file()
        for name in SAME:
            assert (folder / name).read_bytes() == (away_dirs[i] / name).read_bytes(), name


def _rest(task: TrialTask) -> tuple[str, bool]:
    return task.config_json, task.html_report
