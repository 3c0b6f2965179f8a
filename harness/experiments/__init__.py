"""Experiments: YAML configs, market building, reward functions and the runner that writes run folders.

`run_experiment(config)` replays every configured policy on the same decisions, pairs their
rewards against the baseline and writes `runs/<run-id>/` (see docs/run_folder.md).
`run_sweep(path)` runs many variants of a config as trials and ranks them (docs/sweeps.md).
"""

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
