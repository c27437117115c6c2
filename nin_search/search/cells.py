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

from nin_search.search import optuna_private as private
from nin_search.stores.locks import StoreLock

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
        for t in private.storage(study).get_all_trials(private.study_id(study), deepcopy=False)
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
        with StoreLock(private.storage(study), key=study.study_name):
            pool, tried = _free(study, self.cells, exclude=trial.number)
            # none free: every cell is finished or running elsewhere; the objective then fails
            # this trial untrained instead of running a cell twice. The offset spreads workers
            # over the cells tried before (their snapshots first), or else over them all
            cell = pool[self.offset % (tried or len(pool))] if pool else None
            private.storage(study).set_trial_system_attr(private.trial_id(trial), "nin_cell", cell)
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
    attrs = private.storage(trial.study).get_trial_system_attrs(private.trial_id(trial))
    return attrs.get("nin_cell", {}) is not None


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
