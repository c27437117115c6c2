"""Seed-paired ablations on the sweep machinery: the ablation file (load_ablation), every arm x
seed cell once, then statistics.

    python -m nin_search ablate studies/ablate_head.toml [--seeds 5] [--workers 2]

An ablation is an Optuna study whose sampler hands out the cells of the fixed grid arm x seed
(no pruning), so resume, workers, heartbeats and MLflow parent/child runs come from sweep.py.
A cell is done once it holds a finished trial (complete, or pruned because it diverged); a
failed or interrupted cell is run again, a finished one never. All arms share the data split
(data.split_seed), so arms are paired by seed.
"""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from nin_search.config import ConfigError, check_value, flatten_toml, read_toml
from nin_search.data import check_data
from nin_search.model import check_input_size
from nin_search.space import Param, per_arm
from nin_search.storage import StoreLock
from nin_search.study import (
    OBJECTIVES,
    Study,
    header,
    keep_option,
    shared_values,
    spec,
    with_params,
)
from nin_search.train import resolved

ABLATION_KEYS = {
    "name", "seeds", "baseline", "profile", "objective", "arms", "keep_models", "params",
}  # fmt: skip


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
        [params]                          # optional: each arm at its own lr (space.per_arm)
        "train.lr" = { per_arm = "lr-finder" }

    n_seeds (--seeds N) keeps the file's first N seeds, or adds the next unused integers.
    """
    doc = read_toml(path)
    if isinstance(doc.get("objective"), list):  # a sweep's Pareto form; a cell has one value
        raise ConfigError(
            f"{path}: objective = {doc['objective']!r} is not allowed; an ablation takes one "
            f"objective, one of {', '.join(OBJECTIVES)}"
        )
    name, profile, objective = header(path, doc, ABLATION_KEYS, "final_val_acc")
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


TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def _cell(t: FrozenTrial) -> tuple[str, int] | None:
    """The (arm, seed) a trial holds: its params, or what was assigned or enqueued for it."""
    # params first: a heartbeat retry copies its dead trial's params (and attrs), and params
    # fill in one by one, so a trial still being set up is known by what it was handed
    for where in (t.params, t.system_attrs.get("nin_cell"), t.system_attrs.get("fixed_params")):
        if where and "arm" in where and "train.seed" in where:
            return where["arm"], where["train.seed"]
    return None


def _taken(t: FrozenTrial) -> bool:
    # a rejected cell (its config cannot run) counts as taken too: rerunning it cannot help
    return t.state in TAKEN or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)


def free_cells(study: optuna.Study, cells: list[dict], exclude: int | None = None) -> list[dict]:
    """Cells no finished, running or queued trial holds, in the order to take them: first the
    cells a stopped or killed try left unfinished (their snapshots, where this machine has them,
    hold the epochs that try finished), then the rest in the grid's order."""
    return _free(study, cells, exclude)[0]


def _free(study: optuna.Study, cells: list[dict], exclude: int | None) -> tuple[list[dict], int]:
    """free_cells, and how many of them come first as tried before."""
    trials = [
        t
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False)
        if t.number != exclude
    ]
    taken = {_cell(t) for t in trials if _taken(t)}
    tried = {_cell(t) for t in trials if t.state == TrialState.FAIL} - taken
    free = [c for c in cells if (c["arm"], c["train.seed"]) not in taken]
    first = [c for c in free if (c["arm"], c["train.seed"]) in tried]
    return first + [c for c in free if c not in first], len(first)


class CellSampler(optuna.samplers.BaseSampler):
    """Hands each trial a cell nobody holds, chosen under the store's lock (storage.StoreLock),
    so no two workers, on any machine, take one cell; a cell tried before and not finished goes
    first, and worker k starts k cells further along. Like Optuna's GridSampler, but a failed
    cell is free again instead of visited."""

    def __init__(self, cells: list[dict[str, Any]], offset: int = 0) -> None:
        self.cells, self.offset = cells, offset

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if _cell(trial) is not None:  # a heartbeat retry or an enqueued cell: already set
            return
        # workers pick one at a time, on any machine: the store's lock (workers.py holds it
        # already while it starts a trial; taking it again here is free)
        with StoreLock(study._storage, key=study.study_name):
            pool, tried = _free(study, self.cells, exclude=trial.number)
            # none free: every cell is finished or running elsewhere; the objective then fails
            # this trial untrained instead of running a cell twice. The offset spreads workers
            # over the cells tried before (their snapshots first), or else over them all
            cell = pool[self.offset % (tried or len(pool))] if pool else None
            study._storage.set_trial_system_attr(trial._trial_id, "nin_cell", cell)
        if cell is None:
            _stop(study)

    def sample_independent(self, study, trial: FrozenTrial, param_name: str, distribution):
        return trial.system_attrs["nin_cell"][param_name]

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state, values) -> None:
        if not free_cells(study, self.cells):  # this trial still counts as running here
            _stop(study)  # the rest is finished or running elsewhere


def _stop(study: optuna.Study) -> None:
    try:
        study.stop()
    except RuntimeError:  # outside optimize (ask and tell): nothing to stop
        pass


def has_cell(trial: optuna.Trial) -> bool:
    """False for a trial CellSampler found no free cell for."""
    attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    return attrs.get("nin_cell", {}) is not None


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


def cell_frame(spec: dict, ostudy: optuna.Study) -> pd.DataFrame:
    """One row per cell of the grid with its first finished trial (state complete, diverged or
    missing): arm, seed, state, trial, value, test_acc, params, macs, img_per_s, epoch_time_s,
    peak_mem_mib, the val_acc curve and at_chance (completed at chance, never having learned)."""
    first: dict[tuple, FrozenTrial] = {}
    for t in sorted(ostudy.get_trials(deepcopy=False), key=lambda t: t.number):
        key = _cell(t)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and key not in first:
            first[key] = t
    rows = []
    for seed in spec["seeds"]:
        for arm in spec["arms"]:
            t = first.get((arm, seed))
            a = t.user_attrs if t else {}
            state = "missing" if t is None else "complete"
            if t is not None and t.state == TrialState.PRUNED:
                state = "diverged" if "reason" in a else "pruned"
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "state": state,
                    "trial": t.number if t else None,
                    "value": t.value if t is not None and state == "complete" else None,
                    "test_acc": a.get("test_acc"),
                    "params": a.get("params"),
                    "macs": a.get("macs"),
                    "img_per_s": a.get("img_per_s"),
                    "epoch_time_s": a.get("epoch_time_s"),
                    "peak_mem_mib": a.get("peak_mem_mib"),
                    "val_acc": a.get("val_acc"),
                    "at_chance": bool(a.get("at_chance")) and state == "complete",
                }
            )
    return pd.DataFrame(rows)


__all__ = ["load_ablation", "CellSampler", "free_cells", "has_cell", "check_arms", "cell_frame"]


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
