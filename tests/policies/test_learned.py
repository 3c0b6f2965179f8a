"""The learned policy: deterministic fits, argmax-above-threshold choices, in-sample refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.policies.learned import (
    FEATURES,
    InSampleError,
    LearnedPolicy,
    ModelFileError,
    feature_matrix,
    load_learned_policy,
    load_model,
)
from harness.policies.rules import always_sell
from harness.simulator import CoveredCallSimulator
from harness.timestamps import to_utc
from harness.training.dataset import TrainingExample, generate_training_data
from harness.training.learn import TrainError, fit_model


@pytest.fixture(scope="module")
def examples(sim: CoveredCallSimulator) -> list[TrainingExample]:
    return generate_training_data(sim, always_sell())


@pytest.fixture(scope="module")
def first_half(examples: list[TrainingExample]) -> list[TrainingExample]:
    return examples[: len(examples) // 2]


@pytest.fixture(scope="module")
def model_dir(first_half, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "gbm"
    fit_model(first_half, out, reward_units="USD", folds=2)
    return out


def test_a_fit_is_deterministic_and_writes_model_meta_and_card(
    first_half, model_dir: Path, tmp_path: Path, sim: CoveredCallSimulator
) -> None:
    again = fit_model(first_half, tmp_path / "again", reward_units="USD", folds=2)
    a = json.loads((model_dir / "model.json").read_text())
    b = json.loads((tmp_path / "again" / "model.json").read_text())
    assert a["walk_forward"] == b["walk_forward"] and a["label_end"] == b["label_end"]
    t = next(t for t in sim.decision_times()[::-1] if sim.candidates(t))
    state, cands = sim.build_state(t), sim.candidates(t)
    np.testing.assert_array_equal(
        load_model(model_dir).predict(state, cands), load_model(again.out).predict(state, cands)
    )
    assert a["features"] == list(FEATURES)
    assert (
        a["label_end"]
        == max(to_utc(c.expiry) for e in first_half for c in e.candidates).isoformat()
    )
    card = (model_dir / "README.md").read_text()
    for text in ("## Features", "hist_reward", a["train_start"], a["label_end"], "rank corr"):
        assert text in card
    assert np.isfinite(again.oos["mean_regret"]) and again.oos["mean_regret"] >= 0
    assert -1 <= again.oos["rank_corr"] <= 1


def test_the_policy_sells_the_best_prediction_above_the_threshold(
    model_dir: Path, sim: CoveredCallSimulator
) -> None:
    model = load_model(model_dir)
    late = [t for t in sim.decision_times() if t >= model.label_end]
    assert len(late) > 20
    sold = 0
    for t in late[::3]:
        state, cands = sim.build_state(t), sim.candidates(t)
        pred = model.predict(state, cands)
        low = LearnedPolicy(model, threshold=-1e12)(state, cands)
        high = LearnedPolicy(model, threshold=1e12)(state, cands)
        assert high is None
        if cands:
            assert low is cands[int(np.argmax(pred))]
            mid = LearnedPolicy(model, threshold=float(pred.max()))(state, cands)
            assert mid is None  # strictly above the threshold
            sold += 1
    assert sold > 5


def test_decisions_inside_the_training_period_are_refused(
    model_dir: Path, sim: CoveredCallSimulator
) -> None:
    policy = load_learned_policy(model_dir)
    inside = [t for t in sim.decision_times() if t < policy.model.label_end]
    t = inside[len(inside) // 2]
    with pytest.raises(InSampleError, match=r"inside that period.*allow_in_sample"):
        policy(sim.build_state(t), sim.candidates(t))
    # the boundary: the first decision at or after the last label's settlement is fine
    t0 = next(t for t in sim.decision_times() if t >= policy.model.label_end)
    policy(sim.build_state(t0), sim.candidates(t0))
    lenient = load_learned_policy(model_dir, allow_in_sample=True)
    lenient(sim.build_state(t), sim.candidates(t))


def test_features_are_the_same_from_examples_and_from_live_candidates(
    examples, sim: CoveredCallSimulator
) -> None:
    e = next(e for e in examples[200:] if e.candidates)
    t = pd.Timestamp(e.decision_time)
    live = feature_matrix(sim.build_state(t), sim.candidates(t))
    exported = feature_matrix(e.state, e.candidates)
    np.testing.assert_array_equal(live, exported)
    assert (live[:, FEATURES.index("hist_count")] > 0).any()


def test_bad_model_folders_fail_clearly(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not a model folder"):
        load_model(tmp_path)
    broken = tmp_path / "old"
    broken.mkdir()
    for f in ("model.joblib", "README.md"):
        (broken / f).write_bytes((model_dir / f).read_bytes())
    meta = json.loads((model_dir / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps({**meta, "sklearn_version": "0.1.0"}))
    with pytest.raises(ModelFileError, match=r"scikit-learn 0\.1\.0.*retrain"):
        load_model(broken)
    (broken / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ModelFileError, match="format 99"):
        load_model(broken)
    with pytest.raises(TrainError, match="no decisions"):
        fit_model([], tmp_path / "none", reward_units="USD")
