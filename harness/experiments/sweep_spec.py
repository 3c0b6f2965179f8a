"""Sweep files: a base experiment config and axes over its dotted fields, expanded into trials.

A sweep file (docs/sweeps.md) names `base` (an experiment YAML, relative to the sweep file),
`mode` (grid | list | random) and `axes`. Every problem is reported before anything runs,
naming the sweep file, the axis and the problem.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.experiments.config import ConfigError, ExperimentConfig, dump_config, parse_config

PERIOD_AXIS = "period"


class SweepError(ValueError):
    """A sweep file that does not validate; the message names the file, the axis and the problem."""


class SweepSpec(BaseModel):
    """The validated shape of a sweep file (values not yet expanded)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    base: str = Field(min_length=1, description="Experiment YAML, relative to the sweep file.")
    mode: Literal["grid", "list", "random"] = "grid"
    axes: dict[str, Any] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(
        default_factory=list, description="mode list: one mapping of axis -> value per trial."
    )
    samples: int | None = Field(None, ge=1, description="mode random: how many grid points.")
    seed: int = Field(0, description="mode random: seed of the sample.")
    description: str | None = None


@dataclass(frozen=True)
class Trial:
    """One point of a sweep: its axis values and the full experiment config it runs."""

    index: int
    point: dict[str, Any]  # axis -> value (JSON-friendly)
    config: ExperimentConfig
    key: str  # content hash of the resolved config: the same trial across re-runs

    def label(self) -> str:
        """Axis values as `axis=value, ...`."""
        return ", ".join(f"{k}={_show(v)}" for k, v in self.point.items())


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep: its spec, where it came from and its trials."""

    spec: SweepSpec
    path: Path
    base_path: Path
    trials: tuple[Trial, ...]

    @property
    def axes(self) -> list[str]:
        """Axis names in file order."""
        return list(self.spec.axes) if self.spec.mode != "list" else _list_axes(self.spec.points)

    @property
    def sweep_hash(self) -> str:
        """Hash of every trial's resolved config: equal hashes mean the same sweep."""
        h = hashlib.sha256("\n".join(t.key for t in self.trials).encode())
        return h.hexdigest()[:16]


def _show(v: Any) -> str:
    if isinstance(v, list):
        return "..".join(str(x) for x in v)
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _list_axes(points: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for p in points:
        seen.update(dict.fromkeys(p))
    return list(seen)


def _axis_values(where: str, axis: str, raw: Any) -> list[Any]:
    """The values of one axis: a non-empty list, or `{range: [first, last(, step)]}` integers."""
    if isinstance(raw, dict):
        if set(raw) != {"range"}:
            raise SweepError(f"{where}: axis {axis!r}: a mapping value must be {{range: [a, b]}}")
        r = raw["range"]
        if (
            not isinstance(r, list)
            or len(r) not in (2, 3)
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
        ):
            raise SweepError(
                f"{where}: axis {axis!r}: range must be [first, last] or [first, last, step] "
                f"integers (inclusive), got {r!r}"
            )
        step = r[2] if len(r) == 3 else 1
        if step <= 0 or r[1] < r[0]:
            raise SweepError(f"{where}: axis {axis!r}: range {r!r} is empty")
        return list(range(r[0], r[1] + 1, step))
    if not isinstance(raw, list) or not raw:
        raise SweepError(
            f"{where}: axis {axis!r}: values must be a non-empty list or {{range: [a, b]}}, "
            f"got {raw!r}"
        )
    return raw


def _check_period(where: str, value: Any) -> None:
    if not isinstance(value, list) or len(value) != 2:
        raise SweepError(
            f"{where}: axis 'period': each value is [start, end], got {_jsonable(value)!r}"
        )


def apply_axis(config: dict[str, Any], axis: str, value: Any, where: str) -> None:
    """Set `axis` (dotted path, `policies.<name>.<field>` or `period`) to `value` in a config dict."""
    if axis == PERIOD_AXIS:
        _check_period(where, value)
        sim = config.setdefault("simulation", {})
        sim["start"], sim["end"] = value
        return
    parts = axis.split(".")
    if len(parts) < 2 or not all(parts):
        raise SweepError(
            f"{where}: axis {axis!r}: not a dotted field path like simulation.target_delta"
        )
    node: Any = config
    if parts[0] == "policies":
        if len(parts) < 3:
            raise SweepError(f"{where}: axis {axis!r}: use policies.<policy name>.<field>")
        names = [p.get("name") for p in config.get("policies", []) if isinstance(p, dict)]
        match = [p for p in config.get("policies", []) if p.get("name") == parts[1]]
        if not match:
            raise SweepError(
                f"{where}: axis {axis!r}: no policy named {parts[1]!r} in the base config "
                f"(policies: {', '.join(map(str, names))})"
            )
        node, parts = match[0], parts[2:]
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part) if isinstance(node, dict) else None
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise SweepError(
                f"{where}: axis {axis!r}: {'.'.join(parts[: i + 1])} is a value, not a section"
            )
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def _points(spec: SweepSpec, where: str) -> list[dict[str, Any]]:
    if spec.mode == "list":
        if spec.axes:
            raise SweepError(f"{where}: mode list takes `points` (a list of mappings), not `axes`")
        if not spec.points:
            raise SweepError(f"{where}: mode list needs `points`: a list of axis -> value mappings")
        return [dict(p) for p in spec.points]
    if spec.points:
        raise SweepError(f"{where}: `points` is for mode list; mode {spec.mode} takes `axes`")
    if not spec.axes:
        raise SweepError(f"{where}: `axes` is empty: name at least one field to sweep")
    values = {axis: _axis_values(where, axis, raw) for axis, raw in spec.axes.items()}
    grid = [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]
    if spec.mode == "grid":
        if spec.samples is not None:
            raise SweepError(f"{where}: `samples` is for mode random")
        return grid
    if spec.samples is None:
        raise SweepError(f"{where}: mode random needs `samples` (how many grid points to draw)")
    if spec.samples > len(grid):
        raise SweepError(
            f"{where}: samples {spec.samples} exceeds the {len(grid)} points of the grid"
        )
    rng = np.random.default_rng(spec.seed)
    pick = sorted(rng.choice(len(grid), size=spec.samples, replace=False).tolist())
    return [grid[i] for i in pick]


def _validate(data: dict[str, Any], where: str, what: str) -> ExperimentConfig:
    try:
        return parse_config(data, "config")
    except ConfigError as exc:
        problem = str(exc).replace("config: ", "")
        raise SweepError(f"{where}: {what}: {problem}") from None


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file and expand it into trials; raise `SweepError` on problems."""
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise SweepError(f"{where}: no such sweep file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SweepError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{where}: a sweep file is a mapping (name, base, mode, axes)")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()
        )
        raise SweepError(f"{where}: {problems}") from None
    base_path = (p.parent / spec.base).resolve()
    if not base_path.is_file():
        raise SweepError(f"{where}: base: no such experiment config {base_path}")
    try:
        base = yaml.safe_load(base_path.read_text())
    except yaml.YAMLError as exc:
        raise SweepError(f"{where}: base {base_path}: not valid YAML: {exc}") from None
    _validate(base, where, f"base {base_path}")
    points = _points(spec, where)
    # one axis at a time first, so a bad value is blamed on its axis, not on a whole trial
    if spec.mode != "list":
        for axis, raw in spec.axes.items():
            for value in _axis_values(where, axis, raw):
                cfg = copy.deepcopy(base)
                apply_axis(cfg, axis, value, where)
                _validate(cfg, where, f"axis {axis!r} value {_jsonable(value)!r}")
    trials = []
    for i, point in enumerate(points):
        cfg = copy.deepcopy(base)
        for axis, value in point.items():
            apply_axis(cfg, axis, value, where)
        cfg["name"] = f"{spec.name}-t{i:03d}"
        label = ", ".join(f"{k}={_jsonable(v)}" for k, v in point.items())
        config = _validate(cfg, where, f"trial {i} ({label})")
        # the key leaves out the trial's name, so two points giving one config are caught
        same = dump_config(config.model_copy(update={"name": spec.name}))
        key = hashlib.sha256(same.encode()).hexdigest()[:16]
        trials.append(Trial(i, _jsonable(point), config, key))
    keys = [t.key for t in trials]
    if len(set(keys)) != len(keys):
        dup = next(t for t in trials if keys.count(t.key) > 1)
        raise SweepError(f"{where}: trial {dup.index} ({dup.label()}) repeats another trial")
    return Sweep(spec=spec, path=p, base_path=base_path, trials=tuple(trials))


def describe(sweep: Sweep) -> dict[str, Any]:
    """The sweep's definition for sweep.json."""
    s = sweep.spec
    return {
        "name": s.name,
        "file": str(sweep.path),
        "base": str(sweep.base_path),
        "mode": s.mode,
        "axes": _jsonable(s.axes) if s.mode != "list" else sweep.axes,
        "samples": s.samples,
        "seed": s.seed,
        "sweep_hash": sweep.sweep_hash,
        "n_trials": len(sweep.trials),
    }
