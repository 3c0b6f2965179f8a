"""Training examples from replays: one (state, candidates, action, reward) row per decision.

Every decision time of a simulation becomes one `TrainingExample`, DO_NOTHING decisions
included: the point-in-time state features, every offered candidate with its features and
its counterfactual reward (hold to expiry), the action the policy took and its reward, and
the best action in hindsight. Rewards come from the named functions of `harness.experiments.rewards`
(`pnl_vs_hodl` in USD, `return_bps` of notional, each minus an optional
`drawdown_penalty * max_drawdown_pct`).

When a prompt is attached, each example with candidates also carries the exact system and
user messages an LLM policy would be sent (same `build_context`, template and view as
`LLMPolicy`), so chat-format exports show a model exactly what the policy saw.

`generate_training_data` is the Python API; `harness.training.export.export_run` turns a run
folder into files for supervised, preference and RL training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, field_validator

from harness.experiments.rewards import RewardKind, with_reward
from harness.llm.anonymize import Anchor, AnonymizedView, PlainView
from harness.llm.prompts import PromptTemplate, build_context, load_prompt
from harness.simulator import CoveredCallSimulator, PolicyFn
from harness.state import DecisionState
from harness.timestamps import to_utc
from harness.types import CallCandidate

Action = Literal["SELL_CALL", "DO_NOTHING"]

# The flat-state features a policy sees (the same six keys as decisions.jsonl `state`).
STATE_FEATURES: tuple[str, ...] = (
    "return_1d",
    "return_7d",
    "realized_vol_7d",
    "realized_vol_30d",
    "atm_iv",
    "iv_rv_spread",
)

# Both named rewards measure against holding the coins, so doing nothing earns exactly 0.
DO_NOTHING_REWARD = 0.0

# Prompt used to render chat messages for policies that have no prompt of their own (rules).
DEFAULT_PROMPT = "covered_call_v1"

View = PlainView | AnonymizedView


def _finite(x: float | None) -> float | None:
    """None for missing or non-finite numbers (JSON and Parquet both want None, not NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


class CandidateExample(BaseModel):
    """One call offered at a decision: its point-in-time features and its counterfactual reward.

    Prices are USD per coin; `*_pct` are percent; `mark_iv` is a fraction; `reward` is in the
    reward's units (USD or bps) for selling this call and holding it to expiry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    instrument_name: str
    name_in_prompt: str  # what the prompt calls it: the instrument name, or an alias (C1, ...)
    strike: float
    expiry: datetime
    dte_days: float
    delta: float
    mark_iv: float | None
    bid_price: float | None
    ask_price: float | None
    mark_price: float | None
    premium_usd: float  # fill per coin at the configured fill model, before fees
    premium_pct: float
    annualized_yield_pct: float
    strike_distance_pct: float
    breakeven: float
    reward: float
    hist_reward: float | None = None  # history hint, bps (harness.engine.hints)
    hist_count: int = 0

    @field_validator("expiry")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return to_utc(value).to_pydatetime()


class TrainingExample(BaseModel):
    """One decision as a labeled example (USD unless noted; rewards in the reward's units).

    `action`/`instrument_name`/`reward` are what the policy did; `best_*` is the best of all
    candidates and DO_NOTHING in hindsight (ties: the first in label order, sells by expiry and
    strike, then DO_NOTHING); `regret = best_reward - reward >= 0`. `valid` is False when the
    policy's answer was invalid or failed (the decision then counts as DO_NOTHING).
    `system_prompt`/`user_prompt` are the rendered messages (None without a prompt or when no
    candidate was offered: a policy is never asked then); `prompt_id` names their template.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    decision_time: datetime
    underlying: str
    spot: float
    state: dict[str, float | None]
    candidates: tuple[CandidateExample, ...]
    action: Action
    instrument_name: str | None
    reward: float
    valid: bool = True
    best_action: Action
    best_instrument_name: str | None
    best_reward: float
    regret: float
    policy: str
    prompt_id: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    user_prompt: str | None = None

    @field_validator("decision_time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return to_utc(value).to_pydatetime()

    def candidate(self, instrument_name: str) -> CandidateExample:
        """The offered candidate named `instrument_name` (KeyError if it was not offered)."""
        for c in self.candidates:
            if c.instrument_name == instrument_name:
                return c
        raise KeyError(instrument_name)

    def options(self) -> list[Option]:
        """Every action available at this decision: each candidate (in order), then DO_NOTHING."""
        out = [Option("SELL_CALL", c.instrument_name, c.reward) for c in self.candidates]
        out.append(Option("DO_NOTHING", None, DO_NOTHING_REWARD))
        return out

    @property
    def chosen(self) -> Option:
        """The action the policy took, with its reward."""
        return Option(self.action, self.instrument_name, self.reward)

    @property
    def best(self) -> Option:
        """The best action in hindsight, with its reward."""
        return Option(self.best_action, self.best_instrument_name, self.best_reward)


@dataclass(frozen=True, slots=True)
class Option:
    """An action at a decision (`instrument_name` None for DO_NOTHING) and its reward."""

    action: Action
    instrument_name: str | None
    reward: float


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """A preferred and a strictly worse action at one decision; `source` says how it was picked."""

    preferred: Option
    rejected: Option
    source: Literal["policy", "worst"]  # the policy's own worse choice, or the worst option


def preference_pair(example: TrainingExample, *, tolerance: float = 1e-9) -> PreferencePair | None:
    """Best action vs the policy's choice when worse, else vs the worst option; None if all tie."""
    best = example.best
    if example.reward < best.reward - tolerance:
        return PreferencePair(best, example.chosen, "policy")
    worst = min(example.options(), key=lambda o: o.reward)  # first minimum in label order
    if worst.reward < best.reward - tolerance:
        return PreferencePair(best, worst, "worst")
    return None


# --------------------------------------------------------------------------- building
@dataclass(frozen=True)
class _LabelIndex:
    reward: dict[tuple[int, str | None], float]  # (decision ns, instrument or None) -> reward
    best: dict[int, tuple[str | None, float]]  # decision ns -> (instrument or None, reward)


def _index_labels(labels: pd.DataFrame) -> _LabelIndex:
    """Reward of every (decision, action) and the best per decision, as the runner scores them."""
    if "reward" not in labels.columns:
        raise ValueError("labels have no `reward` column: pass them through rewards.with_reward")
    t_ns = pd.DatetimeIndex(labels["decision_time"]).as_unit("ns").asi8
    names = [None if pd.isna(n) else str(n) for n in labels["instrument_name"].to_numpy(object)]
    rewards = labels["reward"].to_numpy(dtype=float)
    reward = {(int(t), n): float(r) for t, n, r in zip(t_ns, names, rewards, strict=True)}
    # idxmax keeps the first maximum in label order: the same tie rule as the experiment runner
    frame = pd.DataFrame({"t": t_ns, "r": rewards})
    best_rows = frame.groupby("t")["r"].idxmax()
    best = {int(t): (names[int(i)], float(rewards[int(i)])) for t, i in best_rows.items()}
    return _LabelIndex(reward, best)


def _state_features(state: DecisionState) -> dict[str, float | None]:
    return {k: _finite(getattr(state, k)) for k in STATE_FEATURES}


def build_examples(
    items: Sequence[tuple[DecisionState, Sequence[CallCandidate]]],
    choices: Sequence[tuple[str | None, bool]],
    labels: pd.DataFrame,
    *,
    policy: str,
    template: PromptTemplate | None = None,
    view: View | None = None,
    model: str | None = None,
) -> list[TrainingExample]:
    """Examples from (state, candidates) per decision and the policy's (instrument or None, valid).

    `labels` is `counterfactual_labels()` with a `reward` column (`rewards.with_reward`).
    With a `template`, decisions that offered candidates get the rendered messages (`view`
    defaults to the plain one). Raises ValueError when labels and candidates disagree.
    """
    if len(items) != len(choices):
        raise ValueError(f"{len(items)} decisions but {len(choices)} choices")
    index = _index_labels(labels)
    view = view or PlainView()
    out: list[TrainingExample] = []
    for (state, cands), (chosen, valid) in zip(items, choices, strict=True):
        t = to_utc(state.time)
        t_ns = int(t.as_unit("ns").value)

        def reward_of(name: str | None, t: pd.Timestamp = t, t_ns: int = t_ns) -> float:
            try:
                return index.reward[(t_ns, name)]
            except KeyError:
                what = name or "DO_NOTHING"
                raise ValueError(
                    f"no label for {what} at {t.isoformat()}: the labels do not match the market"
                ) from None

        system = user = None
        shown = {c.instrument_name: c.instrument_name for c in cands}
        if template is not None and cands:
            context, names = build_context(state, cands, view)
            system, user = template.render(context)
            shown = {real: alias for alias, real in names.items()}
        if chosen is not None and chosen not in shown:
            raise ValueError(
                f"at {t.isoformat()} policy {policy!r} chose {chosen!r}, which is not one of the "
                f"offered candidates ({', '.join(shown) or 'none'})"
            )
        reward = reward_of(chosen)
        if reward_of(None) != DO_NOTHING_REWARD:
            raise ValueError(
                f"DO_NOTHING at {t.isoformat()} has a non-zero reward {reward_of(None)}"
            )
        if t_ns not in index.best:
            raise ValueError(f"no labels at decision time {t.isoformat()}")
        best_name, best_reward = index.best[t_ns]
        out.append(
            TrainingExample(
                decision_time=t.to_pydatetime(),
                underlying=state.underlying,
                spot=float(state.spot),
                state=_state_features(state),
                candidates=tuple(
                    CandidateExample(
                        instrument_name=c.instrument_name,
                        name_in_prompt=shown[c.instrument_name],
                        strike=c.strike,
                        expiry=c.expiry.to_pydatetime(),
                        dte_days=c.dte_days,
                        delta=c.delta,
                        mark_iv=_finite(c.mark_iv),
                        bid_price=_finite(c.bid_price),
                        ask_price=_finite(c.ask_price),
                        mark_price=_finite(c.mark_price),
                        premium_usd=c.premium_usd,
                        premium_pct=c.premium_pct,
                        annualized_yield_pct=c.annualized_yield_pct,
                        strike_distance_pct=c.strike_distance_pct,
                        breakeven=c.breakeven,
                        reward=reward_of(c.instrument_name),
                        hist_reward=_finite(c.hist_reward),
                        hist_count=c.hist_count,
                    )
                    for c in cands
                ),
                action="SELL_CALL" if chosen is not None else "DO_NOTHING",
                instrument_name=chosen,
                reward=reward,
                valid=valid,
                best_action="SELL_CALL" if best_name is not None else "DO_NOTHING",
                best_instrument_name=best_name,
                best_reward=best_reward,
                regret=best_reward - reward,
                policy=policy,
                prompt_id=template.prompt_id if template is not None else None,
                model=model,
                system_prompt=system,
                user_prompt=user,
            )
        )
    return out


def generate_training_data(
    simulator: CoveredCallSimulator,
    policy: PolicyFn,
    *,
    reward: RewardKind = "pnl_vs_hodl",
    drawdown_penalty: float = 0.0,
    policy_name: str | None = None,
    prompt: str | PromptTemplate | None = None,
) -> list[TrainingExample]:
    """Ask `policy` at every decision time (flat state) and label each decision with rewards.

    Rewards: `reward` (`pnl_vs_hodl` USD or `return_bps`) minus `drawdown_penalty` x
    max_drawdown_pct. An `LLMPolicy` brings its own prompt, model and view (anonymized
    policies are anchored at the first decision, as in a run); for other policies `prompt`
    (a name in prompts/ or a `PromptTemplate`) attaches rendered messages. A choice outside
    the offered candidates is recorded as an invalid DO_NOTHING.
    """
    from harness.policies.llm import LLMPolicy  # the LLM stack is only needed for LLM policies

    labels = with_reward(simulator.counterfactual_labels(), reward, drawdown_penalty)
    times = simulator.decision_times()
    items = [(simulator.build_state(t), simulator.candidates(t)) for t in times]
    template: PromptTemplate | None
    view: View = PlainView()
    model = None
    if isinstance(policy, LLMPolicy):
        if prompt is not None:
            raise ValueError("an LLMPolicy renders its own prompt: leave `prompt` unset")
        template, model = policy.template, policy.config.model
        if policy.config.anonymize and items:
            # the anchor a run's prefetch would pick; set on the policy too so both agree
            first = items[0][0]
            policy.set_anchor(first.time, first.spot)
            view = AnonymizedView(Anchor(to_utc(first.time), first.spot))
        policy.prefetch(items, progress=False)
    elif isinstance(prompt, str):
        template = load_prompt(prompt)
    else:
        template = prompt
    name = policy_name or getattr(policy, "name", None) or getattr(policy, "__name__", "policy")
    choices: list[tuple[str | None, bool]] = []
    for state, cands in items:
        choice = policy(state, cands)
        picked = getattr(choice, "instrument_name", None) if choice is not None else None
        offered = {c.instrument_name for c in cands}
        valid = picked is None or picked in offered
        if isinstance(policy, LLMPolicy):
            rec = policy.record_for(state.time)
            valid = valid and (rec is None or rec.valid)
        choices.append((picked if picked in offered else None, valid))
    return build_examples(
        items, choices, labels, policy=str(name), template=template, view=view, model=model
    )


# --------------------------------------------------------------------------- splitting
@dataclass(frozen=True)
class WalkForwardSplit:
    """Train, validation and test in time order, each a trade's life after the one before.

    Every label of a split (sold at its decision, settled at its expiry) settles strictly before
    the next split's first decision. `gap`/`test_gap` are the distances between the last decision
    of one split and the first of the next; `dropped` counts decisions in the gaps.
    """

    train: list[TrainingExample]
    validation: list[TrainingExample]
    validation_start: pd.Timestamp  # first validation decision time
    longest_trade: pd.Timedelta  # max (expiry - decision_time) over every label of the examples
    gap: pd.Timedelta  # validation_start - last train decision time (> longest_trade)
    dropped: int  # decisions in the gaps, in no split
    test: list[TrainingExample] = field(default_factory=list)
    test_start: pd.Timestamp | None = None
    test_gap: pd.Timedelta | None = None  # test_start - last validation decision time


def longest_trade(examples: Sequence[TrainingExample]) -> pd.Timedelta:
    """The longest life (expiry - decision time) of any candidate label in `examples`."""
    life = pd.Timedelta(0)
    for e in examples:
        for c in e.candidates:
            life = max(life, to_utc(c.expiry) - to_utc(e.decision_time))
    return life


def check_fractions(validation_fraction: float, test_fraction: float = 0.0) -> None:
    """Raise ValueError unless 0 < validation < 1, 0 <= test < 1 and their sum < 1."""
    if not (isinstance(validation_fraction, int | float) and 0 < validation_fraction < 1):
        raise ValueError(
            f"validation_fraction must be a number in (0, 1), got {validation_fraction!r}"
        )
    if not (isinstance(test_fraction, int | float) and 0 <= test_fraction < 1):
        raise ValueError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            f"validation_fraction + test_fraction must be below 1 (train needs decisions), got "
            f"{validation_fraction} + {test_fraction}"
        )


def walk_forward_split(
    examples: Sequence[TrainingExample],
    validation_fraction: float = 0.2,
    test_fraction: float = 0.0,
) -> WalkForwardSplit:
    """Last `test_fraction` of decision times as test, the `validation_fraction` before as validation.

    Fractions are of the decision times. Each split keeps only decisions t with t + longest trade
    < the next split's first decision, so every label settles before the next split starts.
    Raises ValueError for bad fractions or when a split would be empty.
    """
    check_fractions(validation_fraction, test_fraction)
    ordered = sorted(examples, key=lambda e: e.decision_time)
    times = sorted({to_utc(e.decision_time) for e in ordered})
    n = len(times)
    n_val = math.ceil(n * validation_fraction)
    n_test = math.ceil(n * test_fraction) if test_fraction > 0 else 0
    if n < 2 or n_val + n_test >= n:
        raise ValueError(f"{n} decision times are too few for a walk-forward split")
    life = longest_trade(ordered)
    test: list[TrainingExample] = []
    test_start = None
    before = ordered
    if n_test:
        test_start = times[n - n_test]
        test = [e for e in ordered if to_utc(e.decision_time) >= test_start]
        # strictly before: a label settling at the very instant the next split starts overlaps
        before = [e for e in ordered if to_utc(e.decision_time) + life < test_start]
        if len(before) <= n_val:
            raise ValueError(
                f"walk-forward split leaves no training decisions: the test split starts "
                f"{test_start.isoformat()} and the longest trade lasts {_days(life)}; use a "
                "longer run or smaller validation/test fractions"
            )
    start = to_utc(before[-n_val].decision_time)
    validation = [e for e in before if to_utc(e.decision_time) >= start]
    train = [e for e in before if to_utc(e.decision_time) + life < start]
    if not train:
        raise ValueError(
            f"walk-forward split leaves no training decisions: validation starts "
            f"{start.isoformat()} and the longest trade lasts {_days(life)}, but the first "
            f"decision is {times[0].isoformat()}; use a longer run or a smaller validation fraction"
        )
    return WalkForwardSplit(
        train=train,
        validation=validation,
        validation_start=start,
        longest_trade=life,
        gap=start - to_utc(train[-1].decision_time),
        dropped=len(ordered) - len(train) - len(validation) - len(test),
        test=test,
        test_start=test_start,
        test_gap=None if test_start is None else test_start - to_utc(validation[-1].decision_time),
    )


def _days(td: pd.Timedelta) -> str:
    return f"{td / pd.Timedelta(days=1):.2f} days"
