"""`harness train`: fit a candidate-reward model on an export, evaluated walk-forward.

Reads a `parquet` or `jsonl` (or `csv`) export of any policy's run: every candidate of every
decision is one training row (point-in-time state + candidate features, harness.policies.learned
FEATURES) labeled with its counterfactual reward. The policy that made the run does not matter:
the labels cover every candidate.

Model: scikit-learn's `HistGradientBoostingRegressor` (gradient-boosted trees; handles missing
features such as an empty history hint natively, deterministic with a fixed seed and no early
stopping). Chosen because boosting on a few dozen tabular features is what it is for, and it
ships with a maintained, versioned library rather than hand-written fitting code.

Evaluation is walk-forward and purged: the decision times are cut into `folds + 1` blocks; for
each block after the first the model is fitted on the decisions whose labels all settled before
the block starts and scores the block. The out-of-sample figures (mean reward and regret of the
policy "sell the best predicted candidate if its prediction > 0", rank correlation between
predicted and realised candidate rewards) go into `model.json` and the model card. The saved
model is then fitted on every training decision; its `label_end` (last label settlement) is
where its out-of-sample life begins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from harness import __version__, strict_json
from harness.policies.learned import (
    FEATURES,
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    feature_matrix,
    from_target,
    one_thread,
    to_target,
)
from harness.timestamps import to_utc
from harness.training.dataset import TrainingExample, longest_trade
from harness.training.export import METADATA, read_examples

TRAIN_SPLITS = ("data", "train", "validation")  # a test split stays untouched for evaluation
CARD = "README.md"
_TEMPLATES = Path(__file__).with_name("templates")


class TrainError(ValueError):
    """The export cannot be trained on as asked; the message says why."""


@dataclass(frozen=True)
class FoldResult:
    """Out-of-sample scores of one walk-forward block."""

    start: pd.Timestamp
    end: pd.Timestamp
    train_decisions: int
    decisions: int
    mean_reward: float  # the learned policy's mean reward over the block
    mean_regret: float
    best_mean_reward: float  # hindsight best per decision
    policy_mean_reward: float  # the exported policy's own actions
    rank_corr: float  # Spearman: predicted vs realised candidate rewards


@dataclass(frozen=True)
class TrainSummary:
    """What `train_model` wrote and how the model did out of sample."""

    out: Path
    examples: int
    candidates: int
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    label_end: pd.Timestamp
    reward_units: str
    folds: tuple[FoldResult, ...]
    oos: dict[str, float]

    def __str__(self) -> str:
        o = self.oos
        return "\n".join(
            [
                f"trained on {self.examples} decisions ({self.candidates} candidates), "
                f"{_when(self.train_start)} to {_when(self.train_end)}; labels settled up to "
                f"{_when(self.label_end)} (the model scores only later decisions)",
                f"  walk-forward out of sample ({o['decisions']:.0f} decisions, "
                f"{len(self.folds)} folds): learned mean reward {o['mean_reward']:,.2f} "
                f"{self.reward_units}, regret {o['mean_regret']:,.2f}; exported policy "
                f"{o['policy_mean_reward']:,.2f}; hindsight best {o['best_mean_reward']:,.2f}; "
                f"rank correlation {o['rank_corr']:.3f}",
                f"  model: {self.out / MODEL_FILE}; card: {self.out / CARD}",
            ]
        )


def _when(ts: pd.Timestamp) -> str:
    return to_utc(ts).strftime("%Y-%m-%d %H:%M UTC")


def read_export(export_dir: str | Path) -> tuple[list[TrainingExample], dict[str, Any]]:
    """The train-side examples of a tabular export folder (data, or train + validation) and its metadata."""
    folder = Path(export_dir)
    if not folder.is_dir():
        raise TrainError(f"{folder}: no such export folder")
    meta_path = folder / METADATA
    if not meta_path.is_file():
        raise TrainError(
            f"{folder}: not an export folder (no {METADATA}); write one with "
            "`harness export RUN_DIR --format parquet --out DIR`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") not in ("parquet", "jsonl", "csv"):
        raise TrainError(
            f"{folder}: a {meta.get('format')} export has no per-candidate features; train on a "
            "parquet or jsonl export of the run"
        )
    files = [
        folder / name
        for split, name in meta["files"].items()
        if split in ("all", "train", "validation")
    ]
    examples: list[TrainingExample] = []
    for f in files:
        examples += read_examples(f)
    examples.sort(key=lambda e: e.decision_time)
    if not examples:
        raise TrainError(f"{folder}: no decisions to train on")
    return examples, meta


def _design(
    examples: Sequence[TrainingExample], scale: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, target and the owning example index of every candidate row."""
    xs, ys, owner = [], [], []
    for i, e in enumerate(examples):
        if not e.candidates:
            continue
        xs.append(feature_matrix(e.state, e.candidates))
        rewards = np.array([c.reward for c in e.candidates])
        ys.append(to_target(rewards, np.full(len(rewards), e.spot), scale))
        owner.append(np.full(len(e.candidates), i))
    if not xs:
        return np.zeros((0, len(FEATURES))), np.zeros(0), np.zeros(0, int)
    return np.vstack(xs), np.concatenate(ys), np.concatenate(owner)


def make_estimator(seed: int = 0) -> Any:
    """The gradient-boosting regressor (fixed hyper-parameters, deterministic)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(
        max_iter=200,
        learning_rate=0.05,
        max_leaf_nodes=15,
        min_samples_leaf=20,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
    )


def fit_estimator(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Any:
    """Fit `make_estimator` on (x, y); a feature missing in every row is fitted as a constant 0.

    (The binner cannot take an all-missing column, e.g. history hints before any label settled;
    a constant carries no split, so predictions later fall back as for a missing value.)
    """
    x = x.copy()
    x[:, np.isnan(x).all(axis=0)] = 0.0
    with one_thread():
        return make_estimator(seed).fit(x, y)


def _score_block(
    estimator: Any, block: Sequence[TrainingExample], scale: str, threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray, list[float], list[float]]:
    """Per decision: learned reward and best reward; pooled predicted and realised rewards."""
    chosen, best, pred_all, real_all = [], [], [], []
    for e in block:
        reward = 0.0
        if e.candidates:
            x = feature_matrix(e.state, e.candidates)
            with one_thread():
                raw = np.asarray(estimator.predict(x), float)
            pred = from_target(raw, e.spot, scale)
            k = int(np.argmax(pred))
            if pred[k] > threshold:
                reward = e.candidates[k].reward
            pred_all += pred.tolist()
            real_all += [c.reward for c in e.candidates]
        chosen.append(reward)
        best.append(e.best_reward)
    return np.array(chosen), np.array(best), pred_all, real_all


def _rank_corr(pred: Sequence[float], real: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(pred) < 3 or np.ptp(pred) == 0 or np.ptp(real) == 0:
        return float("nan")
    return float(spearmanr(pred, real).statistic)


MIN_FOLD_ROWS = 50  # candidate rows of settled history below which a fold is not fitted


def walk_forward(
    examples: Sequence[TrainingExample],
    folds: int,
    scale: str,
    seed: int = 0,
    *,
    min_rows: int = MIN_FOLD_ROWS,
) -> list[FoldResult]:
    """Purged walk-forward evaluation over `folds` blocks after a first, training-only block."""
    times = sorted({to_utc(e.decision_time) for e in examples})
    if len(times) < folds + 1:
        raise TrainError(f"{len(times)} decisions are too few for {folds} walk-forward folds")
    life = longest_trade(examples)
    bounds = np.linspace(0, len(times), folds + 2).round().astype(int)
    out: list[FoldResult] = []
    for k in range(1, folds + 1):
        start, stop = times[bounds[k]], times[bounds[k + 1] - 1]
        block = [e for e in examples if start <= to_utc(e.decision_time) <= stop]
        past = [e for e in examples if to_utc(e.decision_time) + life < start]
        x, y, _ = _design(past, scale)
        if len(y) < min_rows or not block:
            continue  # too little settled history before this block to fit anything
        est = fit_estimator(x, y, seed)
        chosen, best, pred, real = _score_block(est, block, scale)
        out.append(
            FoldResult(
                start=start,
                end=stop,
                train_decisions=len(past),
                decisions=len(block),
                mean_reward=float(chosen.mean()),
                mean_regret=float((best - chosen).mean()),
                best_mean_reward=float(best.mean()),
                policy_mean_reward=float(np.mean([e.reward for e in block])),
                rank_corr=_rank_corr(pred, real),
            )
        )
    if not out:
        raise TrainError(
            f"no walk-forward fold had enough settled history to fit ({min_rows} candidate "
            "rows); export a longer run, use fewer folds or a lower --min-rows"
        )
    return out


def _pooled(folds: Sequence[FoldResult]) -> dict[str, float]:
    n = np.array([f.decisions for f in folds], dtype=float)

    def avg(attr: str) -> float:
        vals = np.array([getattr(f, attr) for f in folds], dtype=float)
        ok = np.isfinite(vals)
        return float((vals[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else float("nan")

    return {
        "decisions": float(n.sum()),
        "mean_reward": avg("mean_reward"),
        "mean_regret": avg("mean_regret"),
        "best_mean_reward": avg("best_mean_reward"),
        "policy_mean_reward": avg("policy_mean_reward"),
        "rank_corr": avg("rank_corr"),
    }


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def train_model(
    export_dir: str | Path,
    out: str | Path,
    *,
    folds: int = 4,
    seed: int = 0,
    min_rows: int = MIN_FOLD_ROWS,
) -> TrainSummary:
    """Fit the candidate-reward model on an export, evaluate walk-forward, write the model folder."""
    examples, export_meta = read_export(export_dir)
    return fit_model(
        examples,
        out,
        reward_units=export_meta["reward_units"],
        provenance={
            "reward_kind": export_meta.get("reward_kind"),
            "underlyings": export_meta.get("underlyings"),
            "export": str(Path(export_dir)),
            "source_run": export_meta.get("run_id"),
        },
        folds=folds,
        seed=seed,
        min_rows=min_rows,
    )


def fit_model(
    examples: Sequence[TrainingExample],
    out: str | Path,
    *,
    reward_units: str,
    provenance: dict[str, Any] | None = None,
    folds: int = 4,
    seed: int = 0,
    min_rows: int = MIN_FOLD_ROWS,
) -> TrainSummary:
    """Fit on `examples` (rewards in `reward_units`), evaluate walk-forward, write the model folder.

    A walk-forward fold is fitted only when at least `min_rows` candidate rows settled before it.
    """
    import joblib
    import sklearn

    if folds < 1:
        raise TrainError(f"folds must be >= 1, got {folds}")
    if not examples:
        raise TrainError("no decisions to train on")
    examples = sorted(examples, key=lambda e: e.decision_time)
    provenance = provenance or {}
    units = reward_units
    scale = "per_spot" if units == "USD" else "as_is"
    results = walk_forward(examples, folds, scale, seed, min_rows=min_rows)
    x, y, _ = _design(examples, scale)
    estimator = fit_estimator(x, y, seed)
    label_end = max(
        (to_utc(c.expiry) for e in examples for c in e.candidates),
        default=to_utc(examples[-1].decision_time),
    )
    oos = _pooled(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "harness_version": __version__,
        "sklearn_version": sklearn.__version__,
        "estimator": type(estimator).__name__,
        "params": {k: v for k, v in estimator.get_params().items() if _plain(v)},
        "features": list(FEATURES),
        "target_scale": scale,
        "reward_units": units,
        "reward_kind": provenance.get("reward_kind"),
        "underlyings": provenance.get("underlyings") or sorted({e.underlying for e in examples}),
        "export": provenance.get("export", "-"),
        "source_run": provenance.get("source_run", "-"),
        "train_start": to_utc(examples[0].decision_time).isoformat(),
        "train_end": to_utc(examples[-1].decision_time).isoformat(),
        "label_end": label_end.isoformat(),
        "decisions": len(examples),
        "candidate_rows": len(y),
        "walk_forward": {
            "folds": [
                {
                    "start": f.start.isoformat(),
                    "end": f.end.isoformat(),
                    "train_decisions": f.train_decisions,
                    "decisions": f.decisions,
                    "mean_reward": f.mean_reward,
                    "mean_regret": f.mean_regret,
                    "best_mean_reward": f.best_mean_reward,
                    "policy_mean_reward": f.policy_mean_reward,
                    "rank_corr": _json_float(f.rank_corr),
                }
                for f in results
            ],
            "out_of_sample": {k: _json_float(v) for k, v in oos.items()},
        },
    }
    joblib.dump(estimator, out / MODEL_FILE)
    (out / META_FILE).write_text(strict_json.dumps(meta, indent=2) + "\n")
    (out / CARD).write_text(_card(meta, out.name))
    return TrainSummary(
        out=out,
        examples=len(examples),
        candidates=len(y),
        train_start=to_utc(examples[0].decision_time),
        train_end=to_utc(examples[-1].decision_time),
        label_end=label_end,
        reward_units=units,
        folds=tuple(results),
        oos=oos,
    )


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def _card(meta: dict[str, Any], name: str) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )

    def fmt(v: float | None, digits: int = 2) -> str:
        return "n/a" if v is None else f"{v:,.{digits}f}"

    env.filters["fmt"] = fmt
    return env.get_template("model_card.md.j2").render(meta=meta, name=name)
