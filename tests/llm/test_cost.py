from __future__ import annotations

from pathlib import Path

import pytest

from harness.llm.cost import DEFAULT_PRICES_PATH, PRICES_ENV, ModelPrice, PriceTable, Usage


def test_shipped_table_loads_and_prices_by_longest_prefix() -> None:
    table = PriceTable.load()
    assert DEFAULT_PRICES_PATH.is_file()
    mini = table.price_for("gpt-4o-mini")
    assert mini is not None and mini.input > 0 and mini.output > mini.input
    # A dated snapshot is priced as its family, and the longer prefix wins over "gpt-4o".
    assert table.price_for("gpt-4o-mini-2024-07-18") == mini
    assert table.price_for("gpt-4o-2024-08-06") == table.price_for("gpt-4o")
    assert table.price_for("llama3.1:8b") is None
    assert table.cost_usd("llama3.1:8b", Usage(1000, 1000)) == 0.0


def test_cost_counts_cached_prompt_tokens_at_their_rate() -> None:
    price = ModelPrice(input=2.0, output=8.0, cached_input=0.5)
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000, cached_tokens=400_000)
    # 600k uncached * $2 + 400k cached * $0.5 + 500k out * $8 per million
    assert price.cost_usd(usage) == pytest.approx(1.2 + 0.2 + 4.0)
    assert price.cost_usd(Usage()) == 0.0


def test_usage_reads_openai_usage_and_adds() -> None:
    usage = Usage.from_openai(
        {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}
    )
    assert usage == Usage(10, 5, 4)
    assert Usage.from_openai(None) == Usage()
    assert Usage.from_openai({"prompt_tokens": 3, "prompt_tokens_details": None}) == Usage(3, 0, 0)
    assert usage + usage == Usage(20, 10, 8)
    assert usage.total_tokens == 15


def test_override_file_extends_and_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    override = tmp_path / "prices.yaml"
    override.write_text(
        "models:\n  gpt-4o-mini: {input: 1.0, output: 2.0}\n  my-local-model: {input: 0, output: 0}\n"
    )
    table = PriceTable.load(override)
    assert table.price_for("gpt-4o-mini") == ModelPrice(1.0, 2.0, 1.0)  # cached defaults to input
    assert table.price_for("my-local-model") == ModelPrice(0.0, 0.0, 0.0)
    assert table.price_for("gpt-4o") is not None  # shipped entries kept

    monkeypatch.setenv(PRICES_ENV, str(override))
    assert PriceTable.load().price_for("my-local-model") is not None


@pytest.mark.parametrize(
    "text, message",
    [
        ("models: [1, 2]", "expected a mapping"),
        ("models:\n  m: {input: 1}", "needs `input` and `output`"),
        ("models:\n  m: {input: x, output: 1}", "non-numeric"),
        ("models:\n  m: {input: -1, output: 1}", "negative"),
    ],
)
def test_bad_override_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        PriceTable.load(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        PriceTable.load(tmp_path / "missing.yaml")
