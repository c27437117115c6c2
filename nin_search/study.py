"""Study files: TOML that names a search (or an ablation) over dotted config keys.

    name = "nin-lr-dropout-depth"
    n_trials = 40                       # finished trials (complete or pruned) to reach
    profile = "d2l"                     # optional: auto | d2l | cpu | quick, before the tables
    keep_models = "best"                # best (default) | all | none: trial models kept in MLflow
    [train]                             # optional [model] [data] [train] [lr_finder] overrides
    epochs = 10
    [params]
    "train.lr" = { low = 1e-3, high = 0.3, log = true }
    "model.dropout" = { low = 0.0, high = 0.7 }
    "model.mlp_depth" = { low = 0, high = 3 }            # int: both bounds are ints
    "model.head" = { choices = ["gap", "fc"] }
    # "train.lr" = { from_lr_finder = true }            # the latest lr-finder range
    [sampler]
    type = "tpe"                        # tpe (seeded) | random | cmaes | gp | grid
    seed = 0
    [pruner]
    type = "hyperband"          # median | hyperband | successive-halving | percentile | none

Everything is checked here, before anything runs; mistakes raise ConfigError naming the file,
the key and the value. Standard library only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nin_search.config import (
    PROFILES,
    SECTIONS,
    Config,
    ConfigError,
    apply,
    check_value,
    flatten,
    flatten_toml,
    read_toml,
)
from nin_search.space import Param, param

SAMPLERS = ("tpe", "random", "cmaes", "gp", "grid")
PRUNERS = ("median", "hyperband", "successive-halving", "percentile", "none")
OBJECTIVES = {  # name: (metric per epoch, direction, how the epochs reduce to one value)
    "best_val_acc": ("val_acc", "maximize", max),
    "final_val_acc": ("val_acc", "maximize", lambda v: v[-1]),
    "best_val_loss": ("val_loss", "minimize", min),
}
TOP_KEYS = {
    "name", "n_trials", "profile", "objective", "params", "sampler", "pruner", "keep_models",
}  # fmt: skip
KEEP_MODELS = ("best", "all", "none")  # trial models kept in MLflow: the best so far, all, none


@dataclass
class Study:
    name: str
    path: str
    n_trials: int
    base: dict[str, Any]  # dotted values from the file's tables (and --set)
    params: dict[str, Param]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    objective: str = "best_val_acc"
    profile: str | None = None
    # ablations: arm name -> dotted overrides; every arm runs with every seed (train.seed)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: str | None = None
    seeds: list[int] = field(default_factory=list)
    final_eval: bool = False  # also evaluate each finished trial on the test set
    keep_models: str = "best"  # KEEP_MODELS; ablations default to "none"

    @property
    def kind(self) -> str:
        return "ablation" if self.arms else "sweep"

    def cells(self) -> list[dict[str, Any]]:
        """An ablation's grid, seed-major: {"arm": name, "train.seed": seed} per cell."""
        return [{"arm": a, "train.seed": s} for s in self.seeds for a in self.arms]

    def base_config(self) -> Config:
        """Defaults, then the study's profile, then its tables (and --set)."""
        cfg = Config()
        if self.profile:
            cfg = apply(cfg, PROFILES[self.profile], f"{self.path}: profile {self.profile!r}")
        return apply(cfg, self.base, self.path)


def _typed(path: str, doc: dict, key: str, kind: type, allowed: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{path}: {key} = {value!r} is not allowed; expected {allowed}")
    return value


def _component(path: str, doc: dict, table: str, types: tuple, default: str) -> dict:
    spec = doc.get(table, {})
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: [{table}] must be a table, but got {spec!r}")
    spec = {"type": default} | spec
    if spec["type"] not in types:
        raise ConfigError(
            f"{path}: [{table}] type = {spec['type']!r} is not allowed; "
            f"expected one of {', '.join(types)}"
        )
    return spec


def _header(path: str, doc: dict, keys: set[str], objective: str) -> tuple[str, str | None, str]:
    """name, profile and objective of a study or ablation file, after its keys are checked."""
    unknown = set(doc) - keys - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(sorted(keys))} and tables {', '.join(SECTIONS)}"
        )
    name = _typed(path, doc, "name", str, "a non-empty string")
    if not name.strip():
        raise ConfigError(f"{path}: name must not be empty")
    profile = doc.get("profile")
    if profile == "auto":  # as --profile auto: d2l on CUDA, cpu otherwise (torch asked lazily)
        import torch

        profile = "d2l" if torch.cuda.is_available() else "cpu"
    if profile is not None and profile not in PROFILES:
        raise ConfigError(
            f"{path}: profile = {profile!r} is not allowed; expected auto or one of "
            f"{', '.join(PROFILES)}"
        )
    objective = doc.get("objective", objective)
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"{path}: objective = {objective!r} is not allowed; expected one of "
            f"{', '.join(OBJECTIVES)}"
        )
    return name, profile, objective


def load_study(path: str, overrides: dict[str, Any] | None = None) -> Study:
    """The study file at path, validated; overrides are --set values over its tables."""
    doc = read_toml(path)
    name, profile, objective = _header(path, doc, TOP_KEYS, "best_val_acc")
    n_trials = _typed(path, doc, "n_trials", int, "an integer >= 1")
    if n_trials < 1:
        raise ConfigError(f"{path}: n_trials = {n_trials} is not allowed; expected >= 1")
    tables = {k: v for k, v in doc.items() if k in SECTIONS}
    base = flatten_toml(tables, path) | (overrides or {})
    raw = doc.get("params", {})
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{path}: [params] is empty: give at least one dotted key, e.g. "
            f'"train.lr" = {{ low = 1e-3, high = 0.3, log = true }}'
        )
    params = {k: param(path, k, v) for k, v in raw.items()}
    study = Study(
        name,
        path,
        n_trials,
        base,
        params,
        _component(path, doc, "sampler", SAMPLERS, "tpe"),
        _component(path, doc, "pruner", PRUNERS, "median"),
        objective,
        profile,
    )
    study.base_config()  # the shared settings must be valid on their own
    study.keep_models = _keep(path, doc, "best")
    if study.sampler["type"] == "grid" and any(
        p.kind not in ("categorical", "int") for p in params.values()
    ):
        raise ConfigError(
            f"{path}: [sampler] type = 'grid' needs choices or integer ranges for every param"
        )
    return study


ABLATION_KEYS = {"name", "seeds", "baseline", "profile", "objective", "arms", "keep_models"}


def _keep(path: str, doc: dict, default: str) -> str:
    keep = doc.get("keep_models", default)
    if keep not in KEEP_MODELS:
        raise ConfigError(
            f"{path}: keep_models = {keep!r} is not allowed; expected one of "
            f"{', '.join(map(repr, KEEP_MODELS))}"
        )
    return keep


def load_ablation(
    path: str, overrides: dict[str, Any] | None = None, n_seeds: int | None = None
) -> Study:
    """An ablation file: shared settings, one [arms.NAME] table of dotted overrides per arm.

        name = "ablate-head"
        seeds = [0, 1, 2]                 # every arm runs with every seed (train.seed)
        baseline = "gap"                  # default: the first arm
        profile = "quick"
        [model]
        batch_norm = true
        [arms.gap]
        "model.head" = "gap"
        [arms.fc]
        "model.head" = "fc"

    n_seeds (--seeds N) keeps the file's first N seeds, or adds the next unused integers.
    """
    doc = read_toml(path)
    name, profile, objective = _header(path, doc, ABLATION_KEYS, "final_val_acc")
    seeds = doc.get("seeds", [0, 1, 2])
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(type(x) is not int or x < 0 for x in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(
            f"{path}: seeds = {seeds!r} is not allowed; expected a list of distinct integers >= 0"
        )
    if n_seeds is not None:
        if n_seeds < 1:
            raise ConfigError(f"--seeds {n_seeds} is not allowed; expected >= 1")
        extra = [x for x in range(max(seeds) + 1 + n_seeds) if x not in seeds]
        seeds = (seeds + extra)[:n_seeds]
    raw = doc.get("arms", {})
    if not isinstance(raw, dict) or len(raw) < 2:
        raise ConfigError(
            f"{path}: [arms] needs at least two arms, each a table of dotted overrides, e.g. "
            f'[arms.fc] "model.head" = "fc"; got {len(raw) if isinstance(raw, dict) else raw!r}'
        )
    arms = {}
    for arm, table in raw.items():
        where = f"{path}: [arms.{arm}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table of dotted overrides, but got {table!r}")
        values = flatten_toml(table, where)
        for key, value in values.items():
            if key == "train.seed":
                raise ConfigError(f"{where}: train.seed is set by seeds = [...], not per arm")
            check_value(key, value, where)
        arms[arm] = values
    baseline = doc.get("baseline", next(iter(arms)))
    if baseline not in arms:
        raise ConfigError(
            f"{path}: baseline = {baseline!r} is not an arm; arms: {', '.join(arms)}"
        )
    tables = {k: v for k, v in doc.items() if k in SECTIONS}
    study = Study(
        name,
        path,
        len(arms) * len(seeds),
        flatten_toml(tables, path) | (overrides or {}),
        {
            # sorted: Optuna refuses a categorical whose choices change, order included
            "arm": Param("arm", "categorical", choices=sorted(arms)),
            # an int range, not choices: Optuna lets a range grow when --seeds adds seeds
            "train.seed": Param("train.seed", "int", 0, max(seeds)),
        },
        {"type": "cells"},
        {"type": "none"},
        objective,
        profile,
        arms,
        baseline,
        seeds,
        keep_models=_keep(path, doc, "none"),
    )
    for arm in arms:  # every arm must be a valid config on the shared settings
        with_params(study, {"arm": arm}, f"{path}: [arms.{arm}]")
    return study


def with_params(study: Study, values: dict[str, Any], source: str) -> Config:
    """The study's base config with one trial's sampled values (an ablation arm's overrides
    first, then the other values)."""
    values = dict(values)
    arm = values.pop("arm", None)
    overrides = study.arms[arm] if arm is not None else {}
    return apply(study.base_config(), overrides | values, source)


__all__ = ["Study", "load_study", "load_ablation", "with_params", "OBJECTIVES"]


def spec(study: Study) -> dict[str, Any]:
    """What `report NAME` needs without the study file, kept on the Optuna study."""
    return {
        "kind": study.kind,
        "path": study.path,
        "objective": study.objective,
        "base": flatten(study.base_config()),
        "params": {k: dataclasses.asdict(p) for k, p in study.params.items()},
        "arms": study.arms,
        "baseline": study.baseline,
        "seeds": study.seeds,
        "final_eval": study.final_eval,
        "keep_models": study.keep_models,
    }
