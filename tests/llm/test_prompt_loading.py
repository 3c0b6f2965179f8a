"""Where prompts are found and what a loaded template keeps (paths, sources, error text)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def test_prompt_files_are_read_as_utf8_whatever_the_locale(tmp_path) -> None:
    """A prompt with non-ASCII text loads the same under an ASCII locale (as on many servers)."""
    system, user = "Sell calls. Δ band: 0.15–0.35", "Spot ≥ {{ spot }} — choose ≤ 1 call"
    (tmp_path / "mine.system.j2").write_text(system, encoding="utf-8")
    (tmp_path / "mine.user.j2").write_text(user, encoding="utf-8")
    # the harness package this test imported (a mutated copy under mutmut), not an installed one
    package_root = Path(prompts_module.__file__).resolve().parents[2]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env.update(PYTHONCOERCECLOCALE="0", PYTHONPATH=str(package_root))
    code = (
        "import json, locale, sys; from harness.llm.prompts import load_prompt;"
        f"t = load_prompt('mine', {str(tmp_path)!r});"
        "print(json.dumps([locale.getpreferredencoding(False), t.system_source, t.user_source]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    encoding, got_system, got_user = json.loads(done.stdout)
    assert encoding.lower().replace("-", "") != "utf8"  # the locale really is not UTF-8
    assert (got_system, got_user) == (system, user)
