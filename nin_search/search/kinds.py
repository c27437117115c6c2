"""What differs between a sweep and an ablation, in one place: search/ asks a study's Kind
(kind_of) instead of branching on `study.arms`.

A sweep samples configs until n_trials of them finished; its best trial is named and
registered. An ablation runs every arm x seed cell of its grid once (CellSampler hands them
out), has no best, and reruns an interrupted cell from its snapshot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from nin_search.search.cells import free_cells, has_cell
from nin_search.search.studies import FINISHED, counted
from nin_search.spec.study import Study


@dataclass(frozen=True)
class Kind:
    name: str  # "sweep" | "ablation"
    unit: str  # what its trials are called in every line: "trials" | "cells"
    has_best: bool  # a best trial: named in the summary, registered as models:/NAME@best
    reruns_interrupted: bool  # an interrupted trial runs again, from its snapshot
    sampler_stops: bool  # the sampler's study.stop() ends the run (a grid's; CellSampler's
    # is a hint only: another command may still free a cell)
    checks_space: bool  # its [params] may leave no config the network can take (an
    # ablation's arms are checked one by one at load instead)
    finished: Callable[[Study, optuna.Study], int]  # finished trials towards the target
    may_start: Callable[[Study, optuna.Study, int, int, int], bool]  # (done, running, target)
    claim: Callable[[optuna.Trial], str]  # why this trial cannot run ("" when it can)
    resumed: Callable[[Study, dict], Study]  # the study as it goes on from the spec it kept
    kept_spec: Callable[[Study, dict, dict], dict]  # (before, now): the spec to keep now


def _trials_finished(study: Study, ostudy: optuna.Study) -> int:
    return sum(counted(t) for t in ostudy.get_trials(deepcopy=False, states=FINISHED))


def _cells_finished(study: Study, ostudy: optuna.Study) -> int:
    """The cells of the grid with a finished trial (a cell finished twice counts once)."""
    trials = [t for t in ostudy.get_trials(deepcopy=False, states=FINISHED) if counted(t)]
    grid = {(c["arm"], c["train.seed"]) for c in study.cells()}
    return len({(t.params.get("arm"), t.params.get("train.seed")) for t in trials} & grid)


def _cell_claim(trial: optuna.Trial) -> str:
    if has_cell(trial):
        return ""
    return "no free cell: the others are finished or running elsewhere"


def _tested_if_started_so(study: Study, before: dict) -> Study:
    """An ablation started with --final-eval tests every later cell too."""
    if before.get("final_eval") and not study.final_eval:
        return dataclasses.replace(study, final_eval=True)
    return study


def _every_seed(study: Study, before: dict, now: dict) -> dict:
    """An ablation's report covers every seed ever asked for."""
    return now | {"seeds": list(dict.fromkeys(before["seeds"] + study.seeds))} if before else now


SWEEP = Kind(
    name="sweep",
    unit="trials",
    has_best=True,
    reruns_interrupted=False,
    sampler_stops=True,
    checks_space=True,
    finished=_trials_finished,
    may_start=lambda study, ostudy, done, running, target: done + running < target,
    claim=lambda trial: "",
    resumed=lambda study, before: study,
    kept_spec=lambda study, before, now: now,
)
ABLATION = Kind(
    name="ablation",
    unit="cells",
    has_best=False,
    reruns_interrupted=True,
    sampler_stops=False,
    checks_space=False,
    finished=_cells_finished,
    may_start=lambda study, ostudy, done, running, target: bool(free_cells(ostudy, study.cells())),
    claim=_cell_claim,
    resumed=_tested_if_started_so,
    kept_spec=_every_seed,
)


def kind_of(study: Study) -> Kind:
    return ABLATION if study.arms else SWEEP


def finished(study: Study, ostudy: optuna.Study) -> int:
    """Finished trials; for an ablation, the cells of its grid with a finished trial."""
    return kind_of(study).finished(study, ostudy)
