"""Checks a config must pass before a run folder is created or any policy is scored.

Catches what would otherwise fail halfway (after the rules were scored, leaving a
half-written folder): a rule's parameters, a python policy's ref or parameters, a missing
prompt, a learned model that cannot load or would score its own training period, a period too
short for any decision.
"""

from __future__ import annotations

import pandas as pd

from harness.experiments.config import (
    ConfigError,
    ExperimentConfig,
    LLMPolicyEntry,
    ModelPolicyEntry,
    PythonPolicyEntry,
    RulePolicyEntry,
)
from harness.llm.prompts import load_prompt
from harness.policies.learned import InSampleError, load_model
from harness.policies.oracles import ORACLES
from harness.policies.python import load_python_policy
from harness.policies.rules import make_rule


def check_config(config: ExperimentConfig) -> None:
    """Raise ConfigError naming every problem found (policy by name and field), else None."""
    problems: list[str] = []
    sim = config.simulation
    for i, entry in enumerate(config.policies):
        where = f"policies.{i} ({entry.name})"
        try:
            if isinstance(entry, RulePolicyEntry) and entry.rule not in ORACLES:
                params = dict(entry.params)
                if entry.rule != "never_sell":
                    params.setdefault("target_delta", sim.target_delta)
                make_rule(entry.rule, params)
            elif isinstance(entry, PythonPolicyEntry):
                load_python_policy(entry.ref, entry.params)
            elif isinstance(entry, LLMPolicyEntry):
                load_prompt(entry.prompt, entry.prompts_dir)
            elif isinstance(entry, ModelPolicyEntry):
                model = load_model(entry.path)
                first = sim.start_ts.ceil(sim.bar)
                if not entry.allow_in_sample and first < model.label_end:
                    raise InSampleError(
                        f"model {entry.path} has seen labels up to {model.label_end.isoformat()}"
                        f" but the run's first decision is {first.isoformat()}: inside its "
                        "training period (hindsight); start after it, or set "
                        "allow_in_sample: true knowingly"
                    )
        except (ValueError, FileNotFoundError) as exc:
            problems.append(f"{where}: {exc}")
    span = sim.end_ts - sim.start_ts
    shortest = pd.Timedelta(days=max(sim.target_dte - sim.dte_tolerance, 0))
    if span < shortest:
        problems.append(
            f"simulation: the period {sim.start_ts:%Y-%m-%d} to {sim.end_ts:%Y-%m-%d} "
            f"({span / pd.Timedelta(days=1):.1f} days) is shorter than target_dte - dte_tolerance "
            f"({shortest / pd.Timedelta(days=1):.0f} days): no decision could sell a call that "
            "expires inside the data"
        )
    if problems:
        raise ConfigError(f"config {config.name!r}: " + "; ".join(problems))
