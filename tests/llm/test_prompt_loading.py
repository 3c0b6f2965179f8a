"""Where prompts are found and what a loaded template keeps (paths, sources, error text)."""

from __future__ import annotations

from pathlib import Path

import pytest

import harness.llm.prompts as prompts_module
from harness.llm.prompts import PromptTemplate, default_prompts_dir, load_prompt

REPO_PROMPTS = Path(prompts_module.__file__).resolve().parents[2] / "prompts"


def test_default_dir_is_the_env_override_else_the_repository_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("HARNESS_PROMPTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # not the repository: a cwd-relative answer would be wrong
    assert default_prompts_dir() == REPO_PROMPTS
    monkeypatch.setenv("HARNESS_PROMPTS_DIR", str(tmp_path / "mine"))
    assert default_prompts_dir() == tmp_path / "mine"


def test_a_relative_path_stem_is_taken_from_the_working_directory(monkeypatch, tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    for suffix in (".system.j2", ".user.j2"):
        (tmp_path / "sub" / f"mine{suffix}").write_text(f"text of {suffix}")
    monkeypatch.chdir(tmp_path)
    loaded = load_prompt("sub/mine", prompts_dir=tmp_path / "elsewhere")
    assert loaded.name == "mine"
    assert loaded.system_source == "text of .system.j2"
    assert loaded.user_source == "text of .user.j2"


def test_missing_files_are_named(tmp_path) -> None:
    (tmp_path / "half.system.j2").write_text("s")
    with pytest.raises(FileNotFoundError) as err:
        load_prompt("half", tmp_path)
    assert str(tmp_path / "half.user.j2") in str(err.value)
    assert "available in" in str(err.value) and "half" in str(err.value)


def test_from_sources_keeps_both_sources() -> None:
    t = PromptTemplate.from_sources("x", "system {{ underlying }}", "user {{ underlying }}")
    assert (t.system_source, t.user_source) == ("system {{ underlying }}", "user {{ underlying }}")
    assert t.render({"underlying": "BTC"}) == ("system BTC", "user BTC")
    other = PromptTemplate.from_sources("x", "system!", "user {{ underlying }}")
    assert other.content_hash != t.content_hash
