"""A learned scoring policy: a fitted model predicts each candidate's reward; sell the best if > threshold.

`harness train` (harness.training.learn) fits the model on an export and writes a model folder:
- `model.joblib`: the fitted scikit-learn estimator (pickled by joblib: load only models you
  trained yourself, unpickling runs code),
- `model.json`: features, target scaling, training period, reward units, library versions,
  out-of-sample metrics,
- `README.md`: the model card.
This module is the loader and the policy; it never imports training code.

Point in time: a model has seen every label of its training period, up to `label_end` (the last
settlement of any training label). Scoring a decision before that instant would use knowledge
of its future, so `LearnedPolicy` refuses it (`InSampleError`) unless `allow_in_sample=True`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.state import DecisionState
from harness.timestamps import to_utc
from harness.types import CallCandidate

FORMAT_VERSION = 1
MODEL_FILE = "model.joblib"
META_FILE = "model.json"

STATE_FEATURES: tuple[str, ...] = (
    "return_1d",
    "return_7d",
    "realized_vol_7d",
    "realized_vol_30d",
    "atm_iv",
    "iv_rv_spread",
)
CANDIDATE_FEATURES: tuple[str, ...] = (
    "dte_days",
    "delta",
    "mark_iv",
    "premium_pct",
    "annualized_yield_pct",
    "strike_distance_pct",
    "hist_reward",
    "hist_count",
)
# Point-in-time and scale-free on purpose: no price levels, strikes or dates.
FEATURES: tuple[str, ...] = STATE_FEATURES + CANDIDATE_FEATURES


_CONTROLLER: Any = None


def one_thread() -> Any:
    """A context running scikit-learn's OpenMP code on one thread.

    Our fits and predictions are small (hundreds to thousands of rows); on shared cores OpenMP's
    spinning worker threads made them ~30x slower in CPU time than one thread.
    """
    global _CONTROLLER
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime the limit applies to)
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="openmp")


class InSampleError(ValueError):
    """A decision inside the model's training period (its labels were known to the model)."""


class ModelFileError(ValueError):
    """A model folder that cannot be loaded (missing files, wrong format or library version)."""


def _num(value: Any) -> float:
    return np.nan if value is None else float(value)


def feature_matrix(state: Mapping[str, Any], candidates: Sequence[Any]) -> np.ndarray:
    """One row of FEATURES per candidate (missing values as NaN; the model handles them).

    `state` maps the state feature names to values (a `DecisionState` or an example's `state`);
    each candidate is a `CallCandidate` or an exported `CandidateExample` (same field names).
    """
    base = [_num(state.get(k)) for k in STATE_FEATURES]
    rows = [base + [_num(getattr(c, k, None)) for k in CANDIDATE_FEATURES] for c in candidates]
    return np.asarray(rows, dtype=float).reshape(len(candidates), len(FEATURES))


def to_target(reward: np.ndarray, spot: np.ndarray, scale: str) -> np.ndarray:
    """Reward in the model's target units: per unit of spot for USD rewards, else unchanged."""
    return reward / spot if scale == "per_spot" else reward


def from_target(pred: np.ndarray, spot: float, scale: str) -> np.ndarray:
    """Predictions back in reward units (inverse of `to_target`)."""
    return pred * spot if scale == "per_spot" else pred


@dataclass(frozen=True)
class LearnedModel:
    """A fitted estimator with its metadata (`model.json`)."""

    estimator: Any
    meta: dict[str, Any]
    path: Path

    @property
    def label_end(self) -> pd.Timestamp:
        """The last settlement of any training label: decisions before it are in sample."""
        return to_utc(self.meta["label_end"])

    @property
    def reward_units(self) -> str:
        """Units of predictions and of the threshold (USD or bps)."""
        return str(self.meta["reward_units"])

    def predict(self, state: DecisionState, candidates: Sequence[CallCandidate]) -> np.ndarray:
        """Predicted reward (reward units) of selling each candidate at `state`."""
        if not candidates:
            return np.zeros(0)
        x = feature_matrix(state, candidates)
        with one_thread():
            raw = np.asarray(self.estimator.predict(x), dtype=float)
        return from_target(raw, float(state.spot), self.meta["target_scale"])


def load_model(path: str | Path) -> LearnedModel:
    """Load a model folder written by `harness train`; checks format and scikit-learn version."""
    import joblib
    import sklearn

    folder = Path(path)
    meta_path, model_path = folder / META_FILE, folder / MODEL_FILE
    for p in (meta_path, model_path):
        if not p.is_file():
            raise ModelFileError(
                f"{folder}: not a model folder (no {p.name}); train one with "
                "`harness train EXPORT_DIR --out models/NAME`"
            )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{meta_path}: not valid JSON ({exc})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{meta_path}: model format {meta.get('format_version')!r}, this harness reads "
            f"{FORMAT_VERSION}; retrain with `harness train`"
        )
    if meta.get("sklearn_version") != sklearn.__version__:
        raise ModelFileError(
            f"{folder}: trained with scikit-learn {meta.get('sklearn_version')}, this "
            f"environment has {sklearn.__version__}; pickled estimators are not portable across "
            "versions: retrain with `harness train` (or install the matching scikit-learn)"
        )
    if tuple(meta.get("features", ())) != FEATURES:
        raise ModelFileError(f"{meta_path}: features {meta.get('features')} are not {FEATURES}")
    return LearnedModel(joblib.load(model_path), meta, folder)


class LearnedPolicy:
    """Sell the candidate with the highest predicted reward when it beats `threshold`, else nothing.

    `threshold` is in the model's reward units. Raises `InSampleError` at a decision before the
    model's `label_end` unless `allow_in_sample`.
    """

    def __init__(
        self,
        model: LearnedModel,
        *,
        threshold: float = 0.0,
        allow_in_sample: bool = False,
        name: str | None = None,
    ) -> None:
        self.model = model
        self.threshold = float(threshold)
        self.allow_in_sample = allow_in_sample
        self.__name__ = name or f"model:{model.path.name}"

    def __call__(
        self, state: DecisionState, candidates: Sequence[CallCandidate]
    ) -> CallCandidate | None:
        """A candidate to sell or None (DO_NOTHING)."""
        t = to_utc(state.time)
        if not self.allow_in_sample and t < self.model.label_end:
            m = self.model.meta
            raise InSampleError(
                f"model {self.model.path} was trained on decisions {m['train_start']} to "
                f"{m['train_end']} whose labels settled up to {m['label_end']}; the decision at "
                f"{t.isoformat()} is inside that period, so its score would use hindsight. "
                "Evaluate after the training period, or set allow_in_sample: true knowingly"
            )
        if state.position is not None or not candidates:
            return None
        pred = self.model.predict(state, candidates)
        best = int(np.argmax(pred))
        return candidates[best] if pred[best] > self.threshold else None


def load_learned_policy(
    path: str | Path,
    *,
    threshold: float = 0.0,
    allow_in_sample: bool = False,
    name: str | None = None,
) -> LearnedPolicy:
    """Load the model folder at `path` as a policy."""
    return LearnedPolicy(
        load_model(path), threshold=threshold, allow_in_sample=allow_in_sample, name=name
    )
