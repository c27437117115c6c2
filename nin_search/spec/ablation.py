"""What an ablation file says: arms (each a set of dotted settings over shared ones), seeds,
the baseline and one objective; checked at load (an arm the network or the data cannot take is
one line, exit 2) and against the study it resumes (check_same_ablation). Running its cells:
search/cells.py."""

from __future__ import annotations

from typing import Any

from nin_search.engine.config import ConfigError, check_value, flatten_toml, read_toml
from nin_search.engine.data import check_data
from nin_search.engine.model import check_input_size
from nin_search.engine.train import resolved
from nin_search.spec.space import Param, per_arm
from nin_search.spec.study import (
    OBJECTIVES,
    Study,
    header,
    keep_option,
    shared_values,
    spec,
    with_params,
)

ABLATION_KEYS = {
    "name", "seeds", "baseline", "profile", "objective", "arms", "keep_models", "params",
}  # fmt: skip


def load_ablation(
    path: str, overrides: dict[str, Any] | None = None, n_seeds: int | list[int] | None = None
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
        [params]                          # optional: each arm at its own lr (space.per_arm)
        "train.lr" = { per_arm = "lr-finder" }

    n_seeds (--seeds N) keeps the file's first N seeds, or adds the next unused integers; a
    list (--seeds 0,1 or the Python API's seeds=[0, 1]) replaces the file's seeds.
    """
    doc = read_toml(path)
    if isinstance(doc.get("objective"), list):  # a sweep's Pareto form; a cell has one value
        raise ConfigError(
            f"{path}: objective = {doc['objective']!r} is not allowed; an ablation takes one "
            f"objective, one of {', '.join(OBJECTIVES)}"
        )
    name, profile, objective = header(path, doc, ABLATION_KEYS, "final_val_acc")
    seeds = doc.get("seeds", [0, 1, 2])
    if not _distinct(seeds):
        raise ConfigError(
            f"{path}: seeds = {seeds!r} is not allowed; expected a list of distinct integers >= 0"
        )
    if isinstance(n_seeds, list):
        if not _distinct(n_seeds):
            raise ConfigError(
                f"--seeds {n_seeds!r} is not allowed; expected distinct integers >= 0"
            )
        seeds = list(n_seeds)
    elif n_seeds is not None:
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
    base = shared_values(path, doc, overrides)
    tuned = per_arm(path, doc["params"], seeds) if "params" in doc else {}
    for key in tuned:  # one place decides an arm's lr
        fixed = [f"[arms.{a}]" for a, v in arms.items() if key in v]
        fixed += ["the shared tables or --set"] if key in base else []
        if fixed:
            raise ConfigError(
                f"{path}: [params] {key!r} chooses it per arm, but {', '.join(fixed)} also "
                f"set(s) {key}; remove one"
            )
    study = Study(
        name,
        path,
        len(arms) * len(seeds),
        base,
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
        keep_models=keep_option(path, doc, "none"),
        per_arm=tuned,
    )
    for arm in arms:  # every arm must be a valid config on the shared settings
        with_params(study, {"arm": arm}, f"{path}: [arms.{arm}]")
    return study


def _distinct(seeds: Any) -> bool:
    """A non-empty list of distinct integers >= 0."""
    return (
        isinstance(seeds, list)
        and bool(seeds)
        and all(type(x) is int and x >= 0 for x in seeds)
        and len(set(seeds)) == len(seeds)
    )


def check_arms(study: Study) -> None:
    """Every arm's config, input size included, before anything is written."""
    for arm in study.arms:
        where = f"{study.path}: [arms.{arm}]"
        cfg = with_params(study, {"arm": arm}, where)
        try:
            check_input_size(cfg.model, cfg.data.resize or 28)
            resolved(cfg)  # train.precision = 'bf16' on a device without bf16 units
            if cfg.data != study.base_config().data:  # the shared data: checked already
                check_data(cfg.data, study.final_eval)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def check_same_ablation(study: Study, before: dict | None) -> None:
    """An ablation resumed with other arms or shared settings would mix incomparable runs."""
    if not study.arms or not before:
        return
    now = spec(study)
    changed = [
        f"{k}: {before['base'].get(k)!r} -> {v!r}"
        for k, v in now["base"].items()
        if k != "train.seed" and before["base"].get(k) != v
    ]
    if before.get("per_arm", {}) != now["per_arm"]:
        changed.insert(0, f"[params]: {before.get('per_arm', {})!r} -> {now['per_arm']!r}")
    if before.get("objective") != now["objective"]:
        changed.insert(0, f"objective: {before.get('objective')!r} -> {now['objective']!r}")
    if now["final_eval"] and not before.get("final_eval") and before["seeds"]:
        changed.insert(0, "--final-eval: its first cells ran without a test evaluation")
    if before["arms"] != now["arms"]:
        changed.insert(0, f"arms: {before['arms']} -> {now['arms']}")
    if changed:
        raise ConfigError(
            f"{study.path}: ablation {study.name!r} was started with other settings "
            f"({'; '.join(changed)[:500]}); rename it (name = ...) to start a new one"
        )
