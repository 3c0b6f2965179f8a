"""The `harness` command line: data import into the store, chain from the store, help, errors."""

from __future__ import annotations

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
