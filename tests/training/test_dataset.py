"""Training examples from the Python API: rewards, both actions, exact prompts, splits, pairs."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from harness.data.synthetic import SyntheticMarket
from harness.experiments.rewards import return_bps, with_reward
from harness.llm.prompts import load_prompt
from harness.policies.llm import LLMPolicy
from harness.policies.rules import always_sell, iv_rich
from harness.simulator import CoveredCallSimulator
from harness.state import DecisionState
from harness.timestamps import to_utc
from harness.training.dataset import (
    STATE_FEATURES,
    CandidateExample,
    TrainingExample,
    generate_training_data,
    longest_trade,
    preference_pair,
    walk_forward_split,
)
from harness.types import CallCandidate, CallSimulationConfig
from tests.training.test_export import ChatServer


@pytest.fixture(scope="module")
def tiny_sim(market: SyntheticMarket) -> CoveredCallSimulator:
    """Three weeks of 4-hourly decisions: fast to label, long enough for a walk-forward split."""
    config = CallSimulationConfig(
        underlying="BTC", start="2024-02-01", end="2024-02-24", timeframe="1h"
    )
    return CoveredCallSimulator(market, config)


def test_one_example_per_decision_with_the_labels_rewards(tiny_sim: CoveredCallSimulator) -> None:
    examples = generate_training_data(tiny_sim, iv_rich(threshold=0.05))
    times = tiny_sim.decision_times()
    assert [to_utc(e.decision_time) for e in examples] == list(times)
    labels = with_reward(tiny_sim.counterfactual_labels(), "pnl_vs_hodl")
    reward = {
        (to_utc(t), None if pd.isna(n) else n): r
        for t, n, r in zip(
            labels["decision_time"], labels["instrument_name"], labels["reward"], strict=True
        )
    }
    for e, t in zip(examples, times, strict=True):
        state = tiny_sim.build_state(t)
        assert e.spot == state.spot and e.policy == "iv_rich"
        assert e.state == {k: getattr(state, k) for k in STATE_FEATURES}
        offered = tiny_sim.candidates(t)
        assert [c.instrument_name for c in e.candidates] == [c.instrument_name for c in offered]
        for c in e.candidates:
            assert c.reward == reward[(t, c.instrument_name)]
            assert c.name_in_prompt == c.instrument_name
        assert e.reward == reward[(t, e.instrument_name)]
        assert e.best_reward == max(o.reward for o in e.options())
        assert e.regret == pytest.approx(e.best_reward - e.reward) and e.regret >= 0
        assert (e.action == "SELL_CALL") == (e.instrument_name is not None)
        assert e.user_prompt is None and e.prompt_id is None and e.model is None
    actions = {e.action for e in examples}
    assert actions == {"SELL_CALL", "DO_NOTHING"}


def test_named_rewards_with_a_drawdown_penalty(tiny_sim: CoveredCallSimulator) -> None:
    plain = generate_training_data(tiny_sim, always_sell(), reward="return_bps")
    penalized = generate_training_data(
        tiny_sim, always_sell(), reward="return_bps", drawdown_penalty=3.0
    )
    labels = tiny_sim.counterfactual_labels()
    sells = labels[labels["action"] == "SELL_CALL"]
    expected = dict(
        zip(
            zip(map(to_utc, sells["decision_time"]), sells["instrument_name"], strict=True),
            return_bps(sells, 3.0),
            strict=True,
        )
    )
    n_sells = 0
    for a, b in zip(plain, penalized, strict=True):
        for ca, cb in zip(a.candidates, b.candidates, strict=True):
            assert cb.reward == expected[(to_utc(b.decision_time), cb.instrument_name)]
            assert cb.reward <= ca.reward
            n_sells += 1
        if b.action == "DO_NOTHING":
            assert b.reward == 0.0
    assert n_sells > 0


def test_a_choice_outside_the_offer_is_an_invalid_do_nothing(
    tiny_sim: CoveredCallSimulator,
) -> None:
    def rogue(state: DecisionState, cands: Sequence[CallCandidate]) -> CallCandidate | None:
        return dataclasses.replace(cands[0], instrument_name="BTC-1JAN30-1-C") if cands else None

    examples = generate_training_data(tiny_sim, rogue, policy_name="rogue")
    with_cands = [e for e in examples if e.candidates]
    assert with_cands and all(e.action == "DO_NOTHING" and not e.valid for e in with_cands)
    assert all(e.valid for e in examples if not e.candidates)
    assert {e.policy for e in examples} == {"rogue"}


def test_a_rule_policy_can_carry_a_rendered_prompt(tiny_sim: CoveredCallSimulator) -> None:
    examples = generate_training_data(tiny_sim, always_sell(), prompt="covered_call_v1")
    template = load_prompt("covered_call_v1")
    for e in examples:
        assert (e.user_prompt is None) == (not e.candidates)
        assert e.prompt_id == template.prompt_id
        if e.user_prompt is not None:
            assert all(c.instrument_name in e.user_prompt for c in e.candidates)
            assert e.system_prompt is not None and "covered-call" in e.system_prompt


@pytest.mark.parametrize("anonymize", [False, True])
def test_llm_examples_carry_exactly_the_prompt_the_model_got(
    tiny_sim: CoveredCallSimulator, anonymize: bool
) -> None:
    server = ChatServer()
    policy = LLMPolicy(
        model="fake-api",
        base_url=server.url,
        api_key_env=None,
        cache_mode="off",
        anonymize=anonymize,
        max_attempts=1,
    )
    try:
        examples = generate_training_data(tiny_sim, policy)
    finally:
        policy.close()
        server.close()
    asked = [e for e in examples if e.user_prompt is not None]
    assert sorted(e.user_prompt for e in asked) == sorted(server.users("fake-api"))
    assert {e.prompt_id for e in examples} == {policy.prompt_id}
    assert {e.model for e in examples} == {"fake-api"}
    for e in asked:
        # the scripted server's rule, applied to the exact user message it received
        shown = [c.name_in_prompt for c in e.candidates]
        pick = [None, shown[0], shown[-1]][len(e.user_prompt) % 3]
        real = None if pick is None else e.candidates[shown.index(pick)].instrument_name
        assert e.instrument_name == real and e.valid
        if anonymize:
            assert shown == [f"C{i + 1}" for i in range(len(shown))]
            assert "BTC-" not in e.user_prompt
    assert {e.action for e in asked} == {"SELL_CALL", "DO_NOTHING"}


def test_walk_forward_split_has_no_overlap(tiny_sim: CoveredCallSimulator) -> None:
    examples = generate_training_data(tiny_sim, always_sell())
    split = walk_forward_split(examples, validation_fraction=0.25)
    life = longest_trade(examples)
    assert life == max(
        to_utc(c.expiry) - to_utc(e.decision_time) for e in examples for c in e.candidates
    )
    assert split.train and split.validation
    assert split.gap > life and split.longest_trade == life
    last_train = max(to_utc(e.decision_time) for e in split.train)
    assert split.validation_start - last_train == split.gap
    assert all(to_utc(c.expiry) < split.validation_start for e in split.train for c in e.candidates)
    assert len(split.train) + len(split.validation) + split.dropped == len(examples)
    assert len(split.validation) == int(np.ceil(0.25 * len(examples)))
    with pytest.raises(ValueError, match="no training decisions"):
        walk_forward_split(examples, validation_fraction=0.8)
    with pytest.raises(ValueError, match="validation_fraction"):
        walk_forward_split(examples, validation_fraction=1.0)


def _example(rewards: list[float], chosen: int | None) -> TrainingExample:
    """A decision offering one call per reward; the policy chose index `chosen` (None: nothing)."""
    t = pd.Timestamp("2024-03-01 08:00", tz="UTC")
    cands = tuple(
        CandidateExample(
            instrument_name=f"BTC-8MAR24-{60000 + 1000 * i}-C",
            name_in_prompt=f"BTC-8MAR24-{60000 + 1000 * i}-C",
            strike=60000.0 + 1000 * i,
            expiry=t + pd.Timedelta(days=7),
            dte_days=7.0,
            delta=0.3 - 0.05 * i,
            mark_iv=0.5,
            bid_price=500.0,
            ask_price=520.0,
            mark_price=510.0,
            premium_usd=500.0,
            premium_pct=0.9,
            annualized_yield_pct=47.0,
            strike_distance_pct=5.0 + i,
            breakeven=60500.0 + 1000 * i,
            reward=r,
        )
        for i, r in enumerate(rewards)
    )
    options = [(c.instrument_name, c.reward) for c in cands] + [(None, 0.0)]
    best = max(options, key=lambda o: o[1])
    name = None if chosen is None else cands[chosen].instrument_name
    reward = 0.0 if chosen is None else cands[chosen].reward
    return TrainingExample(
        decision_time=t,
        underlying="BTC",
        spot=57000.0,
        state=dict.fromkeys(STATE_FEATURES, 0.1),
        candidates=cands,
        action="DO_NOTHING" if chosen is None else "SELL_CALL",
        instrument_name=name,
        reward=reward,
        best_action="DO_NOTHING" if best[0] is None else "SELL_CALL",
        best_instrument_name=best[0],
        best_reward=best[1],
        regret=best[1] - reward,
        policy="p",
    )


def test_preference_pairs_use_the_policys_worse_choice_else_the_worst() -> None:
    worse = preference_pair(_example([5.0, -3.0, 1.0], chosen=2))
    assert worse is not None and worse.source == "policy"
    assert (worse.preferred.reward, worse.rejected.reward) == (5.0, 1.0)
    best_taken = preference_pair(_example([5.0, -3.0, 1.0], chosen=0))
    assert best_taken is not None and best_taken.source == "worst"
    assert best_taken.rejected.instrument_name == "BTC-8MAR24-61000-C"
    nothing_worst = preference_pair(_example([5.0, 2.0], chosen=0))
    assert nothing_worst is not None and nothing_worst.rejected.action == "DO_NOTHING"
    nothing_best = preference_pair(_example([-5.0], chosen=0))
    assert nothing_best is not None and nothing_best.preferred.action == "DO_NOTHING"
    assert preference_pair(_example([0.0], chosen=None)) is None  # every action ties


def test_walk_forward_split_with_a_test_split_purges_both_gaps(sim: CoveredCallSimulator) -> None:
    examples = generate_training_data(sim, always_sell())
    split = walk_forward_split(examples, validation_fraction=0.2, test_fraction=0.2)
    assert split.train and split.validation and split.test
    assert len(split.test) == int(np.ceil(0.2 * len(examples)))
    assert len(split.validation) == int(np.ceil(0.2 * len(examples)))
    parts = [split.train, split.validation, split.test]
    for earlier, later in itertools.pairwise(parts):
        start = min(to_utc(e.decision_time) for e in later)
        assert all(to_utc(c.expiry) < start for e in earlier for c in e.candidates)
    assert split.test_start == min(to_utc(e.decision_time) for e in split.test)
    assert split.test_gap is not None and split.test_gap > split.longest_trade
    total = len(split.train) + len(split.validation) + len(split.test) + split.dropped
    assert total == len(examples)
    for bad in ((1.5, 0.0), (-1, 0.0), (0, 0.0), (0.2, -0.1), (0.2, 1.0), (0.5, 0.5)):
        with pytest.raises(ValueError, match="fraction"):
            walk_forward_split(examples, *bad)
