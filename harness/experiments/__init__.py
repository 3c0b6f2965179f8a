"""Experiments: YAML configs, market building, reward functions and the runner that writes run folders.

`run_experiment(config)` replays every configured policy on the same decisions, pairs their
rewards against the baseline and writes `runs/<run-id>/` (see docs/run_folder.md).
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
    "build_market",
    "dump_config",
    "load_config",
    "market_fingerprint",
    "parse_config",
    "run_experiment",
    "with_reward",
]
