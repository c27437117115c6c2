"""The Optuna study behind a sweep or an ablation: its sampler and pruner from the study file,
opened (or created) on a storage with its kind, objectives and directions checked and its
objectives named, and the count of finished trials that a target is measured against. sweep.py
runs it; tuning.py opens one per arm for a per-arm lr search; workers.py counts against it.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from nin_search.engine.config import Config, ConfigError, apply, read_toml, to_toml
from nin_search.engine.errors import first_line
from nin_search.search.storage import open_storage
from nin_search.spec.space import grid
from nin_search.spec.study import Study, directions
from nin_search.stores.locks import store_exists
from nin_search.stores.urls import mask

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _args(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "type"}


def make_sampler(study: Study, offset: int = 0) -> optuna.samplers.BaseSampler:
    spec = study.sampler
    args = _args(spec)
    seed = args.get("seed", 0)
    args["seed"] = seed + offset if type(seed) is int else seed  # not int: the sampler says so
    classes = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
    }
    if spec["type"] == "cells":  # an ablation: every arm x seed cell once
        from nin_search.search.cells import CellSampler

        return CellSampler(study.cells(), offset)
    try:
        if spec["type"] == "grid":
            return optuna.samplers.GridSampler(grid(study.params), **args)
        return classes[spec["type"]](**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{study.path}: [sampler] {spec['type']}: {e}") from None


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    spec, args = study.pruner, _args(study.pruner)
    epochs = study.base_config().train.epochs
    try:
        if spec["type"] == "hyperband":
            return optuna.pruners.HyperbandPruner(
                **({"min_resource": 1, "max_resource": epochs, "reduction_factor": 3} | args)
            )
        if spec["type"] == "percentile":
            return optuna.pruners.PercentilePruner(**({"percentile": 25.0} | args))
        return {
            "median": optuna.pruners.MedianPruner,
            "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
            "none": optuna.pruners.NopPruner,
        }[spec["type"]](**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{study.path}: [pruner] {spec['type']}: {e}") from None


def open_study(study: Study, url: str) -> optuna.Study:
    sampler, pruner = make_sampler(study), make_pruner(study)  # a bad argument writes nothing
    storage = open_storage(url)
    try:
        ostudy = optuna.create_study(
            study_name=study.name,
            storage=storage,
            load_if_exists=True,
            directions=directions(study),
            sampler=sampler,
            pruner=pruner,
        )
        kind = (ostudy.user_attrs.get("nin_spec") or {}).get("kind", study.kind)
        if kind != study.kind:  # one name, one kind: its trials and record are not shared
            raise ConfigError(
                f"{study.path}: name {study.name!r} is taken by an existing {kind} in "
                f"{mask(url)}; give this {study.kind} a name of its own (name = ...)"
            )
        was = (ostudy.user_attrs.get("nin_spec") or {}).get("objectives")
        if was and study.objectives and was != study.objectives:  # same directions, other values
            raise ConfigError(
                f"{study.path}: study {study.name!r} was started with objective {was}, but the "
                f"file now gives {study.objectives}; give it a new name = ..."
            )
        had = [d.name.lower() for d in ostudy.directions]
        if had != directions(study):  # create_study loads it without a word
            raise ConfigError(
                f"{study.path}: study {study.name!r} was started with directions {had}, but "
                f"objective now gives {directions(study)}; give it a new name = ..."
            )
        names = study.objectives or [study.objective]
        if ostudy.metric_names != names:  # optuna-dashboard and plots name them, not Objective 0
            ostudy.set_metric_names(names)
        return ostudy
    except ConfigError:
        raise
    except Exception as e:
        first = first_line(e)
        raise ConfigError(
            f"--storage {mask(url)}: study {study.name!r} cannot be opened: {first[:300]}"
        ) from None


def best_config(spec: dict, trial: optuna.trial.FrozenTrial, file: str, what: str) -> str:
    """A trial's config as a TOML file `train --config` takes, headed by what it is."""
    cfg = apply(Config(), spec["base"] | trial.params, f"trial {trial.number}")
    return f"# {what}; train with:\n#   python -m nin_search train --config {file}\n" + to_toml(
        cfg
    )


def counted(trial) -> bool:
    """Whether a finished trial counts towards n_trials: over-budget ones never trained."""
    return "over_budget" not in trial.user_attrs


def find_study(name_or_file: str, url: str) -> optuna.Study:
    """The Optuna study named directly or by its study file's `name`, for reading: a store
    that does not exist is not created, and an unknown name lists the names it holds."""
    name = name_or_file
    if name_or_file.endswith(".toml") or _is_file(name_or_file):
        name = read_toml(name_or_file).get("name")
        if not isinstance(name, str):
            raise ConfigError(f'{name_or_file}: no name = "..." to find the study by')
    if not store_exists(url):  # reading a study must not create an empty store
        raise ConfigError(
            f"study {name!r} is not in {mask(url)}: no such store (run `sweep` or `ablate` "
            "first, or pass --storage)"
        )
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = optuna.get_all_study_names(storage)
        raise ConfigError(
            f"study {name!r} is not in {mask(url)}; it holds: {', '.join(known) or 'no studies'}"
            " (run `sweep` or `ablate` first, or pass --storage)"
        ) from None


def _is_file(name: str) -> bool:
    try:
        return Path(name).is_file()
    except (OSError, ValueError):  # a study name too long for a path, or holding a NUL
        return False
