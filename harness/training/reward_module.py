"""`reward.py` shipped in every grpo/verl export: the harness's answer parsing plus reward functions.

The file is built, never hand-edited: a comment header, then `harness/llm/final_answer.py`
byte for byte between two marker lines, then `templates/reward_functions.py.in`. So a trainer
parses completions exactly as the harness parsed the policy's answers, and the two can never drift
(tests compare the embedded block with the module file).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from harness import __version__
from harness.llm import final_answer

REWARD_FILE = "reward.py"
BEGIN = "# ---- BEGIN harness/llm/final_answer.py (verbatim) ----\n"
END = "# ---- END harness/llm/final_answer.py ----\n"
_TEMPLATE = Path(__file__).with_name("templates") / "reward_functions.py.in"


def parser_source() -> str:
    """The exact text of harness/llm/final_answer.py."""
    return Path(final_answer.__file__).read_text(encoding="utf-8")


def reward_module_source() -> str:
    """The text of reward.py: header, the verbatim parser, the reward functions."""
    parser = parser_source()
    digest = hashlib.sha256(parser.encode()).hexdigest()[:12]
    header = (
        "# reward.py: rewards for this training export (TRL GRPOTrainer and verl). Standard library\n"
        f"# only. Written by harness {__version__}; see its docs/export.md for the recipe.\n"
        "# covered_call_reward(completions, candidate_rewards, **kwargs) -> list[float | None]\n"
        "# format_reward(completions, **kwargs) -> list[float]\n"
        "# compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float\n"
        f"# The parser below is the harness's own (sha256 {digest}...), copied verbatim.\n"
    )
    tail = _TEMPLATE.read_text(encoding="utf-8")
    return header + BEGIN + parser + ("" if parser.endswith("\n") else "\n") + END + "\n" + tail


def embedded_parser(text: str) -> str:
    """The block between the parser markers of a reward.py text (ValueError if absent)."""
    try:
        start = text.index(BEGIN) + len(BEGIN)
        stop = text.index(END, start)
    except ValueError:
        raise ValueError("reward.py has no embedded final_answer.py block") from None
    return text[start:stop]


def write_reward_module(folder: Path) -> Path:
    """Write reward.py into `folder` and return its path."""
    path = Path(folder) / REWARD_FILE
    path.write_text(reward_module_source(), encoding="utf-8")
    return path


def load_reward_module(path: Path) -> ModuleType:
    """Import a written reward.py as a fresh module (to check it the way a trainer uses it)."""
    spec = importlib.util.spec_from_file_location(f"harness_export_reward_{id(path)}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module
