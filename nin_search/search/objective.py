"""One trial of a sweep or one cell of an ablation: sample -> config -> fit -> MLflow -> Optuna.

    objective = make_objective(study, url, exp_id, parent_run_id, lr_range, DataCache())
    ostudy.optimize(objective, catch=(TrialRejected,))

make_objective returns the Optuna objective: run_trial, which reads top to bottom in named steps.
Each call samples the trial's values (an ablation cell: its arm and seed), builds and validates
the config (a sample the network cannot take fails untrained, with the reason), opens the
trial's MLflow child run, trains with the engine, logs every epoch and reports it to Optuna for
pruning, and ends the MLflow run with the trial's state (none is left RUNNING). Ctrl-C is
deferred to safe points (see deferred_ctrl_c).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Any

import mlflow
import optuna
import torch

from nin_search.engine.config import ConfigError, flatten
from nin_search.engine.data import Data, load_data
from nin_search.engine.errors import first_line
from nin_search.engine.model import check_input_size
from nin_search.engine.snapshot import remove, snapshot_dir, snapshot_path
from nin_search.engine.summary import summarize
from nin_search.engine.train import evaluate, fit, resolve_device, resolved
from nin_search.search import budgets as pareto
from nin_search.search.interrupts import deferred, interruptible
from nin_search.search.kinds import kind_of
from nin_search.spec.space import Param
from nin_search.spec.study import OBJECTIVES, Study, is_multi, with_params
from nin_search.spec.study import values as values_of
from nin_search.stores.locks import store_file
from nin_search.stores.urls import mask
from nin_search.tracking.store import run_tags

MLFLOW_STATUS = {
    "complete": "FINISHED",
    "pruned": "FINISHED",
    "diverged": "FAILED",
    "failed": "FAILED",
    "interrupted": "KILLED",
    "over-budget": "FINISHED",  # rejected untrained by [constraints] (pareto.py)
}


class TrialRejected(Exception):
    """A sampled config the network cannot take: the trial fails with the reason, untrained."""


def _sample(trial: optuna.Trial, p: Param, lr_range: tuple[float, float] | None) -> Any:
    if p.kind == "categorical":
        return trial.suggest_categorical(p.name, p.choices)
    if p.kind == "int":
        return trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
    if p.kind == "lr_finder":
        return trial.suggest_float(p.name, *lr_range, log=True)
    return trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)


class DataCache:
    """One copy of the data per process, per split-defining setting."""

    def __init__(self) -> None:
        self.loaded: dict[tuple, Data] = {}

    def get(self, cfg, with_test: bool = False) -> Data:
        d = cfg.data
        key = (d.dataset, d.data_dir, d.val_size, d.split_seed, d.train_subset, cfg.train.device)
        key += (with_test,)
        if key not in self.loaded:
            self.loaded[key] = load_data(d, resolve_device(cfg.train.device), with_test)
        return dataclasses.replace(self.loaded[key], cfg=d)  # resize and augment per trial


@dataclasses.dataclass(frozen=True)
class Context:
    """What every trial of one worker shares: the study, where it logs, the data it loaded."""

    study: Study
    exp_id: str  # the MLflow experiment
    parent: str  # the study's MLflow parent run
    lr_range: tuple[float, float] | None  # an lr_finder-sampled train.lr's range
    cache: DataCache
    extra_tags: dict
    scope: str  # the snapshots' key: the store and the study
    root: Any  # the snapshots' folder (a Path)


def make_objective(
    study: Study,
    url: str,
    exp_id: str,
    parent: str,
    lr_range,
    cache: DataCache,
    extra_tags: dict | None = None,
):
    """The Optuna objective of study: run_trial with what its trials share."""
    file = store_file(url)  # the snapshots of killed trials: beside it, or the user's cache
    scope, root = f"{file or mask(url)}\n{study.name}", snapshot_dir(file)
    ctx = Context(study, exp_id, parent, lr_range, cache, extra_tags or {}, scope, root)
    return functools.partial(run_trial, ctx)


def run_trial(ctx: Context, trial: optuna.Trial) -> float | tuple[float, ...]:
    """One trial, top to bottom: sample -> config -> MLflow run -> fit -> Optuna's verdict.
    Every way out ends the MLflow run with the trial's state (none is left RUNNING)."""
    study = ctx.study
    _claim_cell(trial, study)
    values = {name: _sample(trial, p, ctx.lr_range) for name, p in study.params.items()}
    run_name, tags = _names(ctx, trial, values)
    cfg, size, snapshot, reason = _config(ctx, trial, values)
    over = pareto.budget(study, trial, size) if not reason else ""  # sets its constraints
    setup = time.perf_counter()  # tracking overhead: the run's setup and every epoch's log
    device = str(resolve_device(cfg.train.device)) if cfg else ""
    run = mlflow.start_run(
        experiment_id=ctx.exp_id,
        run_name=run_name,
        tags=tags | (run_tags(cfg, device) if cfg else {}),
    )
    trial.set_user_attr("mlflow_run_id", run.info.run_id)
    state = "failed"
    try:
        mlflow.log_params(flatten(cfg) if cfg else dict(values))
        setup = time.perf_counter() - setup
        if reason:
            _reject(trial, reason)
        trial.set_user_attr("params", size["params"])
        trial.set_user_attr("macs", size["macs"])
        mlflow.log_metrics({"model_params": size["params"], "model_macs": size["macs"]})
        if over:  # before any data is read; TPE learns from it (budgets.py)
            state = "over-budget"
            trial.set_user_attr("over_budget", over)
            mlflow.set_tag("nin.reason", over)
            raise optuna.TrialPruned(over)
        label = f" ({run_name})" if "arm" in values else ""
        result, data, overhead = _fit(ctx, trial, cfg, snapshot, label)
        _record(trial, result.history)
        trial.set_user_attr("tracking_s", setup + sum(o for o, _ in overhead))
        trial.set_user_attr("epoch_s", sum(e for _, e in overhead))
        if result.status in ("diverged", "stopped"):
            state = _stopped(trial, result)
            raise optuna.TrialPruned(result.reason)
        value = _value(study, trial, result, size)
        if study.final_eval:  # reported, never used for tuning or pruning
            loss, acc = evaluate(result.model, data.test_x, data.test_y, data, cfg.train.precision)
            mlflow.log_metrics({"test_loss": loss, "test_acc": acc})
            trial.set_user_attr("test_acc", acc)
        if study.keep_models != "none":  # 'best': only while it beats every complete trial
            from nin_search.search.keep import keep_trial

            keep_trial(study, trial, value, result.model, cfg, data)
        state = "complete"  # only now: a failure above keeps the snapshot for the rerun
        return value
    except KeyboardInterrupt:
        state = "interrupted"  # an ablation reruns the cell from its snapshot; a sweep
        if not kind_of(study).reruns_interrupted and snapshot:  # nothing would read it
            remove(snapshot)
        raise
    finally:  # a store that fails mid-run: end the run if it still can (not RUNNING)
        if state in ("complete", "pruned", "diverged"):  # its result is in: nothing to
            remove(snapshot)  # resume (a SIGKILL in the instant
            # before Optuna records it costs the retry its epochs, nothing else)
        with contextlib.suppress(Exception):
            mlflow.set_tag("nin.state", state)
        mlflow.end_run(MLFLOW_STATUS[state])


def _claim_cell(trial: optuna.Trial, study: Study) -> None:
    """An ablation's trial holds the cell CellSampler gave it, or fails untrained."""
    reason = kind_of(study).claim(trial)
    if reason:
        trial.set_user_attr("fail_reason", reason)
        raise TrialRejected(reason)


def _names(ctx: Context, trial: optuna.Trial, values: dict) -> tuple[str, dict[str, str]]:
    """The MLflow run's name and tags: a sweep's trial number, an ablation cell's arm and seed."""
    study = ctx.study
    tags = {
        "mlflow.parentRunId": ctx.parent,
        "nin.study": study.name,
        "nin.trial": str(trial.number),
    } | ctx.extra_tags
    if "arm" not in values:
        return f"{study.name} trial {trial.number}", tags
    arm, seed = values["arm"], values["train.seed"]  # the MLflow UI compares arms by these
    tags |= {"nin.arm": arm, "nin.seed": str(seed)}
    if arm in study.lr_how:  # its lr was tuned for it (arm_lr.py)
        tags["nin.lr_how"] = study.lr_how[arm][:5000]
    return f"{arm} seed {seed}", tags


def _config(ctx: Context, trial: optuna.Trial, values: dict):
    """(config, size totals, snapshot path, "") of the sampled values, or (..., reason) when the
    network cannot take them: the trial then fails untrained."""
    study = ctx.study
    try:
        cfg = with_params(study, values, f"{study.path}: trial {trial.number}")
        cfg = resolved(cfg)  # train.precision as it runs, in the params and the fit
        check_input_size(cfg.model, cfg.data.resize or 28)
        size = summarize(cfg)["totals"]
        return cfg, size, snapshot_path(ctx.scope, cfg, ctx.root), ""  # a killed try's epochs
    except ConfigError as e:
        return None, None, None, str(e)


def _reject(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("sample_rejected", True)  # workers.work's in-a-row stop
    mlflow.set_tag("nin.reason", reason[:5000])
    raise TrialRejected(reason)


def _fit(ctx: Context, trial: optuna.Trial, cfg, snapshot, label: str):
    """Train, logging every epoch to MLflow and reporting it to Optuna (which may prune);
    (the fit's result, the data, (tracking s, epoch s) per epoch)."""
    study = ctx.study
    metric = OBJECTIVES[study.objective][0]
    multi = is_multi(study)  # Optuna prunes single-objective studies only
    overhead: list[tuple[float, float]] = []

    def on_epoch(m: dict) -> str | None:
        with deferred():  # a Ctrl-C waits until this epoch is logged
            start = time.perf_counter()
            if m.get("resumed"):  # replayed from 1: its epoch is the count so far
                mlflow.set_tag("nin.resumed_epochs", m["epoch"])
            logged = {k: v for k, v in m.items() if k not in ("epoch", "resumed")}
            mlflow.log_metrics(logged, step=m["epoch"])
            prune = False
            if not multi:
                trial.report(m[metric], m["epoch"])
                prune = trial.should_prune()
            overhead.append((time.perf_counter() - start, m["epoch_time_s"]))
            note = " from its snapshot" if m.get("resumed") else ""
            _progress(trial.number, m, cfg.train.epochs, [e for _, e in overhead], label + note)
        return f"pruned at epoch {m['epoch']}" if prune else None

    try:
        with interruptible():
            data = ctx.cache.get(cfg, with_test=study.final_eval)
            result = fit(cfg, data, on_epoch, snapshot=snapshot)
    except torch.cuda.OutOfMemoryError as e:  # this config does not fit: fail it, go on
        remove(snapshot)  # it would run out of memory again
        reason = f"out of memory: {first_line(e, 300)}"
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("sample_rejected", True)  # a smaller sample may fit
        mlflow.set_tag("nin.reason", reason)
        raise TrialRejected(reason) from None
    return result, data, overhead


def _stopped(trial: optuna.Trial, result) -> str:
    """A fit that diverged (non-finite, collapsed, exploded) or was pruned: its state, recorded."""
    if result.status == "diverged":
        epoch, _ = result.diverged_at
        trial.set_user_attr("pruned_epoch", epoch)
        trial.set_user_attr("reason", result.reason)
        mlflow.set_tags({"nin.pruned_epoch": epoch, "nin.reason": result.reason})
        return "diverged"
    epoch = result.history[-1]["epoch"]
    trial.set_user_attr("pruned_epoch", epoch)
    mlflow.set_tag("nin.pruned_epoch", epoch)
    return "pruned"


def _value(study: Study, trial: optuna.Trial, result, size: dict) -> float | tuple[float, ...]:
    """The trial's objective value (several: the study file's order), logged to MLflow."""
    if result.at_chance:  # completed at chance, never having learned (chance.py)
        trial.set_user_attr("at_chance", True)
        mlflow.set_tag("nin.at_chance", "true")
    metric, _, reduce = OBJECTIVES[study.objective]
    value = reduce([h[metric] for h in result.history])
    mlflow.log_metric(f"objective_{study.objective}", value)
    if not is_multi(study):
        return value
    values = values_of(study, result.history, size)  # every objective, in the file's order
    mlflow.log_metrics(
        {f"objective_{n}": v for n, v in zip(study.objectives, values, strict=True)}
    )
    return values


def _progress(number: int, m: dict, epochs: int, epoch_s: list[float], cell: str) -> None:
    """One line per epoch, so a long trial shows it is alive and when it should end."""
    left = (epochs - m["epoch"]) * sum(epoch_s) / len(epoch_s) / 60
    eta = f", about {left:.0f} min left" if m["epoch"] < epochs else ""
    print(
        f"trial {number:>3} epoch {m['epoch']}/{epochs}: val_acc {m['val_acc']:.4f} "
        f"({m['epoch_time_s']:.0f} s{eta}){cell}",
        flush=True,
    )


def _record(trial: optuna.Trial, history: list[dict]) -> None:
    """What reports need from a trial, kept on the Optuna trial itself."""
    trial.set_user_attr("epochs", len(history))
    if not history:
        return
    trial.set_user_attr("val_acc", [h["val_acc"] for h in history])
    for key in ("img_per_s", "epoch_time_s"):
        trial.set_user_attr(key, sum(h[key] for h in history) / len(history))
    if "peak_mem_mib" in history[0]:
        trial.set_user_attr("peak_mem_mib", max(h["peak_mem_mib"] for h in history))
