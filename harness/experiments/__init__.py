"""Experiments: YAML configs, market building, reward functions and the runner that writes run folders.

`run_experiment(config)` replays every configured policy on the same decisions, pairs their
rewards against the baseline and writes `runs/<run-id>/` (see docs/run_folder.md).
`run_sweep(path)` runs many variants of a config as trials and ranks them (docs/sweeps.md).

The names below are imported on first use (PEP 562), so importing one light submodule (the
sweep's worker pool starts its processes before the driver imports the runner) does not import
the runner, pandas and the report first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.experiments.config import (
        ConfigError,
        ExperimentConfig,
        LLMPolicyEntry,
        MarketConfig,
        RulePolicyEntry,
        dump_config,
        load_config,
        parse_config,
    )
    from harness.experiments.markets import build_market, market_fingerprint
    from harness.experiments.rewards import REWARD_UNITS, REWARDS, with_reward
    from harness.experiments.runner import (
        ExperimentRunner,
        LLMRequiredError,
        RunSummary,
        run_experiment,
    )
    from harness.experiments.sweep import SweepSummary, run_sweep
    from harness.experiments.sweep_spec import SweepError, load_sweep

_EXPORTS = {
    "ConfigError": "config",
    "ExperimentConfig": "config",
    "LLMPolicyEntry": "config",
    "MarketConfig": "config",
    "RulePolicyEntry": "config",
    "dump_config": "config",
    "load_config": "config",
    "parse_config": "config",
    "build_market": "markets",
    "market_fingerprint": "markets",
    "REWARD_UNITS": "rewards",
    "REWARDS": "rewards",
    "with_reward": "rewards",
    "ExperimentRunner": "runner",
    "LLMRequiredError": "runner",
    "RunSummary": "runner",
    "run_experiment": "runner",
    "SweepSummary": "sweep",
    "run_sweep": "sweep",
    "SweepError": "sweep_spec",
    "load_sweep": "sweep_spec",
}

__all__ = [
    "REWARDS",
    "REWARD_UNITS",
    "ConfigError",
    "ExperimentConfig",
    "ExperimentRunner",
    "LLMPolicyEntry",
    "LLMRequiredError",
    "MarketConfig",
    "RulePolicyEntry",
    "RunSummary",
    "SweepError",
    "SweepSummary",
    "build_market",
    "dump_config",
    "load_config",
    "load_sweep",
    "market_fingerprint",
    "parse_config",
    "run_experiment",
    "run_sweep",
    "with_reward",
]


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
