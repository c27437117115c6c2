"""Optuna studies over dotted config keys, every trial an MLflow run, resumable and multi-worker.

    python -m nin_search sweep studies/quick.toml [--n-trials N] [--timeout 2h] [--workers 2]

Rerunning the same command continues the same study until it holds n_trials finished (complete
or pruned) trials, so cron can run it nightly and overlapping runs cooperate as workers. With an
RDB storage (SQLite, PostgreSQL) each running trial has a heartbeat: a worker killed mid-trial
has its trial failed after the grace period, retried once, and its MLflow run ended FAILED.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from pathlib import Path

import mlflow
import optuna
from optuna.trial import FrozenTrial, TrialState

from nin_search.engine.config import ConfigError, flatten
from nin_search.engine.model import check_input_size, spatial_trace
from nin_search.engine.train import resolved
from nin_search.search import budgets as pareto
from nin_search.search.dashboard import dashboard_command, note_text, write_note
from nin_search.search.kinds import finished, kind_of
from nin_search.search.objective import DataCache, make_objective
from nin_search.search.storage import DEFAULT_STORAGE, open_storage
from nin_search.search.studies import make_sampler, open_study
from nin_search.search.workers import command_id, fail_stale, failure, spawn, this_run, work
from nin_search.spec.ablation import check_same_ablation
from nin_search.spec.space import Param
from nin_search.spec.study import OBJECTIVES, Study, is_multi, spec, with_params
from nin_search.stores.locks import StoreLock
from nin_search.stores.urls import mask
from nin_search.tracking.store import experiment_id, setup_tracking, tracking_uri, ui_command


def parent_run(ostudy: optuna.Study, study: Study, exp_id: str) -> str:
    """The study's one MLflow parent run, created once and found again on every resume."""
    client = mlflow.MlflowClient()
    known = ostudy.user_attrs.get("mlflow_parent_run_id")
    if known:
        return known
    run = client.create_run(
        exp_id,
        run_name=study.name,
        tags={"nin.role": "study", "nin.study": study.name, "nin.study_file": study.path},
    )
    try:  # recorded first and ended whatever fails below: a rerun finds it, none is RUNNING
        ostudy.set_user_attr("mlflow_parent_run_id", run.info.run_id)  # under _open's StoreLock
        for key, value in flatten(study.base_config()).items():
            client.log_param(run.info.run_id, key, value)
        client.log_dict(
            run.info.run_id,
            {k: dataclasses.asdict(p) for k, p in study.params.items()},
            "search_space.json",
        )
        if Path(study.path).is_file():
            client.log_artifact(run.info.run_id, study.path)
    finally:
        client.set_terminated(run.info.run_id, "FINISHED")  # children link to it; it never runs
    return run.info.run_id


def _open(
    study: Study, url: str, worker: bool = False, note: bool = False
) -> tuple[optuna.Study, str, str]:
    """The Optuna study, the MLflow experiment id and the parent run id; the study first, so a
    storage that cannot be used leaves no MLflow store behind. note: write the study's note
    (the command does, once; not its workers)."""
    # every command and worker on this study, in any directory or on any machine, opens it in
    # turn: fresh SQLite stores would be created (and MLflow's schema migrated) twice at once,
    # and two parent runs made; a trial of a dead worker is failed before anyone counts
    if url == DEFAULT_STORAGE:
        Path("mlruns").mkdir(exist_ok=True)
    with StoreLock(url, key=study.name):
        ostudy = open_study(study, url)
        if worker:
            # the k-th worker on the study samples with seed + k: with one seed for all, parallel
            # workers would draw the same values and every rerun would repeat the first trials
            k = ostudy.user_attrs.get("workers_started", 0)
            ostudy.set_user_attr("workers_started", k + 1)
            ostudy.sampler = make_sampler(study, k)
        uri = setup_tracking()
        with StoreLock(uri if uri.startswith("sqlite") else None):
            exp_id = experiment_id(study.name)
            fail_stale(ostudy)  # ends their MLflow runs too: after setup_tracking
            parent = parent_run(ostudy, study, exp_id)
            if note:  # what optuna-dashboard shows beside the trials: where the rest is
                write_note(ostudy, note_text(study, url, exp_id, parent, uri))
            return ostudy, exp_id, parent


def _counts(ostudy: optuna.Study) -> dict[TrialState, int]:
    trials = ostudy.get_trials(deepcopy=False)
    return {s: sum(t.state == s for t in trials) for s in TrialState}


def _best(ostudy: optuna.Study) -> FrozenTrial | None:
    try:
        return ostudy.best_trial
    except (ValueError, RuntimeError):  # none complete (or feasible); several objectives
        return None


def _report_trial(
    study: Study, _ostudy: optuna.Study, trial: FrozenTrial, seen: dict[str, int] | None = None
) -> None:
    """One line per trial; seen (reason -> first trial) names a repeated failure's reason once."""
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    if trial.state == TrialState.COMPLETE:
        names = study.objectives or [study.objective]
        what = "complete: " + ", ".join(
            f"{n} {v:.4f}" if n in OBJECTIVES else f"{n} {v:,.0f}" if n != "epoch_time_s" else
            f"{n} {v:.2f}"
            for n, v in zip(names, trial.values, strict=True)
        )  # fmt: skip
    elif "over_budget" in trial.user_attrs:
        what = f"rejected untrained, {trial.user_attrs['over_budget']}"
    elif trial.state == TrialState.PRUNED:
        what = f"pruned at epoch {trial.user_attrs.get('pruned_epoch', '?')}"
        if "reason" in trial.user_attrs:
            what = f"diverged ({trial.user_attrs['reason']})"
    else:
        reason = trial.user_attrs.get("fail_reason", "see the log above")
        first = (seen if seen is not None else {}).setdefault(reason, trial.number)
        what = f"failed: {reason}" if first == trial.number else f"failed as trial {first} did"
    print(f"trial {trial.number:>3} {what}  ({shown})", flush=True)


def run_worker(
    study: Study,
    url: str,
    target: int,
    timeout: float | None,
    lr_range,
    extra_tags: dict | None = None,
) -> int:
    """Run trials in this process until the study holds `target` finished ones."""
    ostudy, exp_id, parent = _open(study, url, worker=True)
    objective = make_objective(study, url, exp_id, parent, lr_range, DataCache(), extra_tags)
    # over-budget samples cost no training and do not count: allow many of them
    most = (30 if study.constraints else 3) * target
    seen: dict[str, int] = {}
    report = lambda s, t: _report_trial(study, s, t, seen)  # noqa: E731
    # a sample the network cannot take stops the run when repeated only if no sample fits: in
    # a search with some that do (data.resize in [8, 96]), three 8s in a row are chance
    rejections_stop = space_fits(study)[0] is False
    work(study, ostudy, objective, target, timeout, report, most, rejections_stop)
    return 0


def run_sweep(
    study: Study,
    url: str,
    n_trials: int | None = None,
    timeout: float | None = None,
    workers: int = 1,
    argv_tail: list[str] | None = None,
    worker: bool = False,
) -> int:
    """The sweep command: resume or start the study, run workers, print the summary.

    argv_tail is the command line (subcommand first) that --workers K starts K times with
    --worker: such a process runs trials only and leaves the summary to the one that started it.
    """
    target = n_trials or study.n_trials
    command_id(worker)  # marks the trials this command's workers run: "this run" below
    ostudy, exp_id, parent = _open(study, url, note=not worker)
    before = _counts(ostudy)
    done = finished(study, ostudy)
    best_before = _best(ostudy)
    before_spec = ostudy.user_attrs.get("nin_spec") or {}
    kind = kind_of(study)
    study = kind.resumed(study, before_spec)
    unit = kind.unit
    if not worker:
        check_same_ablation(study, before_spec or None)
        ostudy.set_user_attr("nin_spec", kind.kept_spec(study, before_spec, spec(study)))
        precision = resolved(study.base_config()).train.precision
        print(
            f"study {study.name!r} at {mask(url)}: {done} of {target} {unit} finished; "
            f"MLflow experiment {study.name!r}, parent run {parent}; "
            f"{precision} (train.precision)"
        )
    if study.per_arm:  # each arm's lr first (tuning.py); --workers' workers read the choices
        from nin_search.search.arm_lr import apply_records, tune_arms

        if worker:
            study = apply_records(study, ostudy.user_attrs)
        else:
            study = tune_arms(study, ostudy, url, exp_id, parent)
        target, done = study.n_trials, finished(study, ostudy)
    if done >= target:
        if not worker:
            print(
                f"the study already holds {done} finished {unit} (target {target}): nothing to do"
            )
        return 0
    lr_range = None
    if any(p.kind == "lr_finder" for p in study.params.values()):
        from nin_search.tracking.finder import lr_range_from_finder

        low, high, run_id = lr_range_from_finder(study.base_config())
        lr_range = (low, high)
        print(f"train.lr range [{low:.3g}, {high:.3g}] from lr-finder run {run_id}")
    if workers <= 1:
        code = run_worker(study, url, target, timeout, lr_range)
    else:
        code = spawn(workers, argv_tail or [], url)
    if worker:
        return code
    final = optuna.load_study(study_name=study.name, storage=open_storage(url))
    _summary(study, final, url, target, before, best_before, parent)
    if kind.has_best and study.keep_models != "none":  # models:/NAME@best: the best trial
        from nin_search.search.keep import register_best

        register_best(study, final)
    why = failure(study, final) if finished(study, final) < target else None
    if why:  # cron and systemd read the exit code: a run that achieved nothing is not a success
        sys.stdout.flush()  # the summary first, in a log that takes both streams
        print(f"error: {why}", file=sys.stderr, flush=True)
        return max(code, 1)
    return code


SPACE_CHECKS = 128  # combinations of searched values check_space tries before it gives up


def check_space(study: Study) -> None:
    """ConfigError when no values of the searched keys give a config the network can take, so
    that every trial would fail untrained: a sweep refuses it at load, as `train` does."""
    fits, first = space_fits(study)
    if fits is False:
        raise ConfigError(
            f"{study.path}: every trial would fail untrained, whatever [params] samples "
            f"({', '.join(study.params)}): {first}"
        )


def space_fits(study: Study) -> tuple[bool | None, ConfigError | None]:
    """Whether some values of the searched keys give a config the network can take: True,
    False (with the first reason) or None (not all tried, or an ablation).

    It tries every choice and both ends of every range, which is enough: the input only grows
    with data.resize (0, native 28 px, is its low end), the other numeric keys leave the
    geometry alone, and each rule between keys (momentum with nesterov or adam, lr_finder's
    start and end) holds at one end of a range if anywhere. Past SPACE_CHECKS combinations
    the trials say it instead."""
    if not kind_of(study).checks_space:
        return None, None  # an ablation's arms are checked one by one (ablation.check_arms)
    # the keys that can change the network's geometry vary fastest (product's last axes), so
    # the first SPACE_CHECKS combinations cover every geometry if there are not too many
    keys = sorted(
        (k for k, p in study.params.items() if p.kind != "lr_finder"),
        key=lambda k: k.split(".")[0] in ("model", "data"),
    )
    axes = {k: _ends(study.params[k]) for k in keys}
    first: ConfigError | None = None
    for combo in itertools.islice(itertools.product(*axes.values()), SPACE_CHECKS):
        try:
            cfg = resolved(with_params(study, dict(zip(axes, combo, strict=True)), "[params]"))
        except ConfigError as e:
            first = first or e
            continue
        size = cfg.data.resize or 28
        if spatial_trace(cfg.model, size)[-1][3] >= 1:  # fits: check_input_size's test
            return True, None
        if first is None:  # its message (a search for the smallest size) once only
            try:
                check_input_size(cfg.model, size)
            except ConfigError as e:
                first = e
    if first is None or math.prod(map(len, axes.values())) > SPACE_CHECKS:
        return None, first  # not all tried: let the trials say
    return False, first


def _ends(p: Param) -> list:
    return list(p.choices) if p.kind == "categorical" else list(dict.fromkeys((p.low, p.high)))


def _summary(
    study: Study, ostudy: optuna.Study, url: str, target: int, before, best_before, parent
) -> None:
    after, now = _counts(ostudy), this_run(ostudy)  # not the trials of other commands
    done = finished(study, ostudy)
    print(
        f"this run: {sum(now.values())} trials ({now[TrialState.COMPLETE]} complete, "
        f"{now[TrialState.PRUNED]} pruned, {now[TrialState.FAIL]} failed); "
        f"in total {done} finished of {target} targeted, {after[TrialState.FAIL]} failed"
    )
    best = _best(ostudy) if kind_of(study).has_best else None  # an ablation has none: below
    if best is not None:
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()
        )
        improved = best_before is None or best.number != best_before.number
        feasible = " feasible" if study.constraints else ""
        print(
            f"best{feasible} {study.objective} {best.value:.4f} (trial {best.number}: {params}); "
            + ("improved during this run" if improved else "not improved during this run")
        )
    for line in pareto.summary_lines(study, ostudy):  # budget counts, the Pareto front
        print(line)
    if is_multi(study):
        pareto.log_front(study, ostudy, parent)
    uri = tracking_uri()
    print(
        f"Optuna: {mask(url)}; open the dashboard with: {dashboard_command(study.path, url)}; "
        f"MLflow: experiment {study.name!r}, parent run {parent}; open the UI with: "
        f"{ui_command(uri)}"
    )
