"""The `harness` command line: data import into the store, chain from the store, help, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import build_parser, main

FIXTURES = Path(__file__).parent / "data" / "fixtures"


def test_data_import_then_chain_from_the_store(tmp_path, capsys) -> None:
    store = tmp_path / "store"
    assert (
        main(
            [
                "data",
                "import",
                "tardis",
                str(FIXTURES / "tardis_options_chain_sample.csv.gz"),
                "--out",
                str(store),
                "-q",
            ]
        )
        == 0
    )
    assert "tardis:" in capsys.readouterr().out
    assert any(store.rglob("part.parquet"))
    assert (
        main(
            [
                "data",
                "import",
                "cdd",
                str(FIXTURES / "cdd_gemini_BTCUSD_1h.csv"),
                "--underlying",
                "BTC",
                "--out",
                str(store),
                "-q",
            ]
        )
        == 0
    )
    assert (store / "BTC" / "spot").is_dir()
    capsys.readouterr()
    # the fixture's quotes fall in the bars labeled 01:00 and 02:00 UTC
    assert (
        main(
            [
                "chain",
                "--source",
                "parquet",
                "--path",
                str(store),
                "--underlying",
                "ETH",
                "--as-of",
                "2020-06-08T02:00Z",
                "--width",
                "50",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "ETH-9JUN20" not in out and "09JUN20" in out and "250" in out


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys) -> None:
    assert (
        main(
            [
                "data",
                "import",
                "cdd",
                str(tmp_path / "missing.csv"),
                "--underlying",
                "BTC",
                "--out",
                str(tmp_path),
                "-q",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("harness data: error:") and "missing.csv" in err


def test_every_command_has_help() -> None:
    parser = build_parser()
    for cmd in ("run", "compare", "chain", "cache", "export", "train", "data"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([cmd, "--help"])
        assert exc.value.code == 0


def test_the_console_script_exits_with_mains_code_and_a_frozen_heap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    import harness.cli as cli

    monkeypatch.setattr(cli, "main", lambda: 3)
    try:
        with pytest.raises(SystemExit) as stop:
            cli.console()
        assert stop.value.code == 3
        assert gc.get_freeze_count() > 0  # the interpreter's shutdown skips walking them
    finally:
        gc.unfreeze()
    # the real script: exit codes as before (0, and 2 for an error's one line)
    script = [sys.executable, "-m", "harness.cli"]
    ok = subprocess.run([*script, "runs", "list", "--runs-dir", str(tmp_path)], text=True)
    assert ok.returncode == 0
    missing = str(tmp_path / "missing.csv")
    bad = subprocess.run(
        [*script, "data", "import", "cdd", missing, "--underlying", "BTC", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "harness data: error" in bad.stderr
