"""Experiment configuration: YAML in configs/ validated into `ExperimentConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.data.worlds import WORLDS
from harness.experiments.rewards import RewardKind
from harness.llm.cache import CacheMode
from harness.policies.llm import LLMPolicyConfig
from harness.policies.oracles import ORACLES
from harness.policies.python import split_ref
from harness.policies.rules import RULES
from harness.types import CallSimulationConfig


class ConfigError(ValueError):
    """A config file that does not validate; the message names the file, field path and problem."""


class MarketConfig(BaseModel):
    """Where market data comes from: `synthetic` (default), `parquet`, `tardis` or `deribit`."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["synthetic", "parquet", "tardis", "deribit"] = "synthetic"
    seed: int = Field(7, description="Synthetic market seed.")
    world: str = Field(
        "realistic", description="Synthetic world: realistic, placebo, rich_premium."
    )
    anchor: Literal["historical", "none"] | None = Field(
        None, description="Synthetic price levels tied loosely to history or not (world default)."
    )
    path: str | None = Field(None, description="Store folder (parquet) or files (tardis).")
    files: list[str] = Field(default_factory=list, description="Tardis options_chain CSV files.")
    base_url: str | None = Field(None, description="Deribit API base URL override.")
    cache_dir: str | None = Field(None, description="HTTP cache folder for the Deribit API.")

    @field_validator("world")
    @classmethod
    def _known_world(cls, value: str) -> str:
        if value not in WORLDS:
            raise ValueError(f"unknown synthetic world {value!r}; known: {', '.join(WORLDS)}")
        return value

    @model_validator(mode="after")
    def _needs_path(self) -> MarketConfig:
        if self.source == "parquet" and not self.path:
            raise ValueError("market.source 'parquet' needs market.path (the store folder)")
        if self.source == "tardis" and not (self.files or self.path):
            raise ValueError("market.source 'tardis' needs market.files (options_chain CSVs)")
        return self


class RulePolicyEntry(BaseModel):
    """A rule policy: always_sell, never_sell, iv_rich, trend_pause, oracle or oracle_schedule."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: Literal["rule"] = "rule"
    rule: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("rule")
    @classmethod
    def _known(cls, value: str) -> str:
        known = [*RULES, *ORACLES]
        if value not in known:
            raise ValueError(f"unknown rule policy {value!r}; known rules: {', '.join(known)}")
        return value


class LLMPolicyEntry(LLMPolicyConfig):
    """An LLM policy: the `LLMPolicyConfig` fields plus its name in reports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)  # type: ignore[assignment]
    type: Literal["llm"] = "llm"


class PythonPolicyEntry(BaseModel):
    """A user's own policy function: `ref: "package.module:function"`, keyword `params`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: Literal["python"] = "python"
    ref: str = Field(description='The policy function, "package.module:function".')
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("ref")
    @classmethod
    def _ref_shape(cls, value: str) -> str:
        split_ref(value)
        return value


class ModelPolicyEntry(BaseModel):
    """A learned policy (`harness train`): sell the best predicted candidate if above `threshold`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: Literal["model"] = "model"
    path: str = Field(min_length=1, description="Model folder written by `harness train`.")
    threshold: float = Field(0.0, description="Sell only above this predicted reward (units).")
    allow_in_sample: bool = Field(
        False, description="Score decisions inside the model's training period (hindsight)."
    )


PolicyEntry = Annotated[
    RulePolicyEntry | LLMPolicyEntry | PythonPolicyEntry | ModelPolicyEntry,
    Field(discriminator="type"),
]
POLICY_TYPES: tuple[str, ...] = ("rule", "llm", "python", "model")


class RewardConfig(BaseModel):
    """Per-decision reward: `pnl_vs_hodl` (USD) or `return_bps`, minus lambda x drawdown %."""

    model_config = ConfigDict(extra="forbid")

    kind: RewardKind = "pnl_vs_hodl"
    drawdown_penalty: float = Field(0.0, ge=0)


class CacheConfig(BaseModel):
    """The LLM response cache shared across runs."""

    model_config = ConfigDict(extra="forbid")

    dir: str = ".cache/llm"
    mode: CacheMode = "read_write"


class ExperimentConfig(BaseModel):
    """One experiment: a market, a simulation setup, policies to compare and how to score them."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    market: MarketConfig = Field(default_factory=MarketConfig)
    simulation: CallSimulationConfig
    policies: list[PolicyEntry] = Field(min_length=1)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    baseline: str | None = Field(None, description="Policy the others are compared against.")
    bootstrap_resamples: int = Field(2000, ge=100, le=100_000)
    seed: int = Field(0, description="Seed of the bootstrap.")

    @model_validator(mode="before")
    @classmethod
    def _policy_types(cls, data: Any) -> Any:
        # Every entry states its `type`: inferring it (e.g. "has a model key, so an LLM") would
        # silently turn other kinds of entries into LLM policies.
        if isinstance(data, dict) and isinstance(data.get("policies"), list):
            for i, p in enumerate(data["policies"]):
                if isinstance(p, dict) and "type" not in p:
                    name = p.get("name", f"#{i}")
                    raise ValueError(
                        f"policies.{i} ({name}): every policy entry states its `type` "
                        f"(one of: {', '.join(POLICY_TYPES)})"
                    )
        return data

    @model_validator(mode="after")
    def _names(self) -> ExperimentConfig:
        names = [p.name for p in self.policies]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"policy names must be unique; repeated: {', '.join(dup)}")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(
                f"baseline {self.baseline!r} is not one of the policies ({', '.join(names)})"
            )
        return self

    @property
    def baseline_name(self) -> str:
        """The baseline policy: `baseline` if set, else the first policy."""
        return self.baseline or self.policies[0].name


def _format_errors(path: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        parts = list(err["loc"])
        # pydantic puts the union's tag in the path (policies.0.rule.rule): drop it
        if len(parts) > 2 and parts[0] == "policies" and parts[2] in POLICY_TYPES:
            del parts[2]
        msg = err["msg"].removeprefix("Value error, ")
        if not parts and msg.startswith("policies."):
            lines.append(f"{path}: {msg}")  # the entry-level check names its own path
            continue
        loc = ".".join(str(x) for x in parts) or "(top level)"
        lines.append(f"{path}: {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate a config mapping; errors name `source`, the field path and the problem."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the config must be a mapping of fields, got {type(data).__name__}"
        )
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Load and validate an experiment YAML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_config(data, str(p))


def with_execution(config: ExperimentConfig, execution: str) -> ExperimentConfig:
    """`config` with `execution` (live | batch) set on every LLM policy (`harness run --batch`)."""
    policies = [
        p.model_copy(update={"execution": execution}) if isinstance(p, LLMPolicyEntry) else p
        for p in config.policies
    ]
    return config.model_copy(update={"policies": policies})


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config (defaults filled in) as YAML."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
