"""Optuna studies over dotted config keys, every trial an MLflow run, resumable and multi-worker.

    python -m nin_search sweep studies/quick.toml [--n-trials N] [--timeout 2h] [--workers 2]

Rerunning the same command continues the same study until it holds n_trials finished (complete
or pruned) trials, so cron can run it nightly and overlapping runs cooperate as workers. With an
RDB storage (SQLite, PostgreSQL) each running trial has a heartbeat: a worker killed mid-trial
has its trial failed after the grace period, retried once, and its MLflow run ended FAILED.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from nin_search.accounting import summarize
from nin_search.config import ConfigError, flatten
from nin_search.data import Data, load_data
from nin_search.model import check_input_size
from nin_search.storage import directory_lock, open_storage
from nin_search.study import OBJECTIVES, Param, Study, grid, with_params
from nin_search.tracking import experiment_id, mask, run_tags, setup_tracking, ui_command
from nin_search.train import evaluate, fit, resolve_device, resolved

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MLFLOW_STATUS = {
    "complete": "FINISHED",
    "pruned": "FINISHED",
    "diverged": "FAILED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}


_ctrl_c = threading.Event()  # Ctrl-C was pressed while run_worker ran trials
_training = threading.Event()  # inside fit's compute, where a KeyboardInterrupt is harmless


class TrialRejected(Exception):
    """A sampled config the network cannot take: the trial fails with the reason, untrained."""


def _args(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "type"}


def make_sampler(study: Study, offset: int = 0) -> optuna.samplers.BaseSampler:
    spec = study.sampler
    args = _args(spec)
    seed = args.get("seed", 0)
    args["seed"] = seed + offset if type(seed) is int else seed  # not int: the sampler says so
    classes = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
    }
    if spec["type"] == "cells":  # an ablation: every arm x seed cell once
        from nin_search.ablation import CellSampler

        return CellSampler(study.cells(), offset)
    try:
        if spec["type"] == "grid":
            return optuna.samplers.GridSampler(grid(study), **args)
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


def _sample(trial: optuna.Trial, p: Param, lr_range: tuple[float, float] | None) -> Any:
    if p.kind == "categorical":
        return trial.suggest_categorical(p.name, p.choices)
    if p.kind == "int":
        return trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
    if p.kind == "lr_finder":
        return trial.suggest_float(p.name, *lr_range, log=True)
    return trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)


def open_study(study: Study, url: str) -> optuna.Study:
    sampler, pruner = make_sampler(study), make_pruner(study)  # a bad argument writes nothing
    storage = open_storage(url)
    try:
        return optuna.create_study(
            study_name=study.name,
            storage=storage,
            load_if_exists=True,
            direction=OBJECTIVES[study.objective][1],
            sampler=sampler,
            pruner=pruner,
        )
    except ConfigError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"--storage {mask(url)}: study {study.name!r} cannot be opened: {first[:300]}"
        ) from None


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
    for key, value in flatten(study.base_config()).items():
        client.log_param(run.info.run_id, key, value)
    client.log_dict(
        run.info.run_id,
        {k: dataclasses.asdict(p) for k, p in study.params.items()},
        "search_space.json",
    )
    if Path(study.path).is_file():
        client.log_artifact(run.info.run_id, study.path)
    client.set_terminated(run.info.run_id, "FINISHED")  # children link to it; it never runs
    ostudy.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    time.sleep(0.2)
    winner = optuna.load_study(study_name=study.name, storage=ostudy._storage).user_attrs[
        "mlflow_parent_run_id"
    ]
    if winner != run.info.run_id:  # another worker created one at the same moment
        client.delete_run(run.info.run_id)
    return winner


def _open(study: Study, url: str, worker: bool = False) -> tuple[optuna.Study, str, str]:
    """The Optuna study, the MLflow experiment id and the parent run id; the study first, so a
    storage that cannot be used leaves no MLflow store behind."""
    with directory_lock():
        ostudy = open_study(study, url)
        if worker:
            # the k-th worker on the study samples with seed + k: with one seed for all, parallel
            # workers would draw the same values and every rerun would repeat the first trials
            k = ostudy.user_attrs.get("workers_started", 0)
            ostudy.set_user_attr("workers_started", k + 1)
            ostudy.sampler = make_sampler(study, k)
        setup_tracking()
        exp_id = experiment_id(study.name)
        return ostudy, exp_id, parent_run(ostudy, study, exp_id)


def _on_ctrl_c(signum, frame) -> None:
    _ctrl_c.set()
    if _training.is_set():
        raise KeyboardInterrupt


def _check_ctrl_c() -> None:
    if _ctrl_c.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def _deferred_ctrl_c():
    """Ctrl-C interrupts at once while fit computes; anywhere else it waits for the next safe
    point. One raised in the middle of an SQLite write leaves the store locked (ending the run
    then fails: 'database is locked'), and Python drops one raised inside a finalizer
    (SQLAlchemy's weakref callbacks)."""
    _ctrl_c.clear()
    _training.clear()
    default = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if not default or threading.current_thread() is not threading.main_thread():
        yield  # ignored (nohup), another handler, or not ours to change: leave it
        return
    signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _training.clear()
    _check_ctrl_c()  # pressed while the last trial was being logged: still an interrupt


class _DataCache:
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


def make_objective(
    study: Study,
    exp_id: str,
    parent: str,
    lr_range,
    cache: _DataCache,
    extra_tags: dict | None = None,
):
    metric, _, reduce = OBJECTIVES[study.objective]

    def objective(trial: optuna.Trial) -> float:
        if study.arms:
            from nin_search.ablation import has_cell

            if not has_cell(trial):
                reason = "no free cell: the others are finished or running elsewhere"
                trial.set_user_attr("fail_reason", reason)
                raise TrialRejected(reason)
        values = {name: _sample(trial, p, lr_range) for name, p in study.params.items()}
        tags = {
            "mlflow.parentRunId": parent,
            "nin.study": study.name,
            "nin.trial": str(trial.number),
        } | (extra_tags or {})
        run_name = f"{study.name} trial {trial.number}"
        if "arm" in values:  # an ablation cell: the MLflow UI compares arms by these
            arm, seed = values["arm"], values["train.seed"]
            tags |= {"nin.arm": arm, "nin.seed": str(seed)}
            run_name = f"{arm} seed {seed}"
        reason, cfg = "", None
        try:
            cfg = with_params(study, values, f"{study.path}: trial {trial.number}")
            cfg = resolved(cfg)  # train.precision as it runs, in the params and the fit
            check_input_size(cfg.model, cfg.data.resize or 28)
            size = summarize(cfg)["totals"]
        except ConfigError as e:
            reason = str(e)
        setup = time.perf_counter()  # tracking overhead: the run's setup and every epoch's log
        run = mlflow.start_run(
            experiment_id=exp_id,
            run_name=run_name,
            tags=tags | (run_tags(cfg, str(resolve_device(cfg.train.device))) if cfg else {}),
        )
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        state = "failed"
        try:
            mlflow.log_params(flatten(cfg) if cfg else {k: v for k, v in values.items()})
            setup = time.perf_counter() - setup
            if reason:
                trial.set_user_attr("fail_reason", reason)
                mlflow.set_tag("nin.reason", reason[:5000])
                raise TrialRejected(reason)
            trial.set_user_attr("params", size["params"])
            trial.set_user_attr("macs", size["macs"])
            mlflow.log_metrics({"model_params": size["params"], "model_macs": size["macs"]})
            overhead = []

            def on_epoch(m: dict) -> str | None:
                _training.clear()  # a Ctrl-C waits until this epoch is logged
                start = time.perf_counter()
                mlflow.log_metrics({k: v for k, v in m.items() if k != "epoch"}, step=m["epoch"])
                trial.report(m[metric], m["epoch"])
                prune = trial.should_prune()
                overhead.append((time.perf_counter() - start, m["epoch_time_s"]))
                _training.set()
                _check_ctrl_c()
                return f"pruned at epoch {m['epoch']}" if prune else None

            try:
                _training.set()
                _check_ctrl_c()  # pressed while the trial was being set up
                data = cache.get(cfg, with_test=study.final_eval)
                result = fit(cfg, data, on_epoch)
            except torch.cuda.OutOfMemoryError as e:  # this config does not fit: fail it, go on
                reason = f"out of memory: {str(e).splitlines()[0][:300]}"
                trial.set_user_attr("fail_reason", reason)
                mlflow.set_tag("nin.reason", reason)
                raise TrialRejected(reason) from None
            finally:
                _training.clear()
            _record(trial, result.history)
            trial.set_user_attr("tracking_s", setup + sum(o for o, _ in overhead))
            trial.set_user_attr("epoch_s", sum(e for _, e in overhead))
            if result.status == "diverged":
                state = "diverged"
                epoch, step = result.diverged_at
                trial.set_user_attr("pruned_epoch", epoch)
                trial.set_user_attr("reason", result.reason)
                mlflow.set_tags({"nin.pruned_epoch": epoch, "nin.reason": result.reason})
                raise optuna.TrialPruned(result.reason)
            if result.status == "stopped":
                state = "pruned"
                epoch = result.history[-1]["epoch"]
                trial.set_user_attr("pruned_epoch", epoch)
                mlflow.set_tag("nin.pruned_epoch", epoch)
                raise optuna.TrialPruned(result.reason)
            state = "complete"
            value = reduce([h[metric] for h in result.history])
            mlflow.log_metric(f"objective_{study.objective}", value)
            if study.final_eval:  # reported, never used for tuning or pruning
                loss, acc = evaluate(
                    result.model, data.test_x, data.test_y, data, cfg.train.precision
                )
                mlflow.log_metrics({"test_loss": loss, "test_acc": acc})
                trial.set_user_attr("test_acc", acc)
            return value
        except KeyboardInterrupt:
            state = "interrupted"
            raise
        finally:
            mlflow.set_tag("nin.state", state)
            mlflow.end_run(MLFLOW_STATUS[state])

    return objective


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
    }


def _same_ablation(study: Study, before: dict | None) -> None:
    """An ablation resumed with other arms or shared settings would mix incomparable runs."""
    if not study.arms or not before:
        return
    now = spec(study)
    changed = [
        f"{k}: {before['base'].get(k)!r} -> {v!r}"
        for k, v in now["base"].items()
        if k != "train.seed" and before["base"].get(k) != v
    ]
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


def finished(study: Study, ostudy: optuna.Study) -> int:
    """Finished trials; for an ablation, the cells of its grid with a finished trial."""
    trials = ostudy.get_trials(deepcopy=False, states=FINISHED)
    if not study.arms:
        return len(trials)
    grid = {(c["arm"], c["train.seed"]) for c in study.cells()}
    return len({(t.params.get("arm"), t.params.get("train.seed")) for t in trials} & grid)


def _counts(ostudy: optuna.Study) -> dict[TrialState, int]:
    trials = ostudy.get_trials(deepcopy=False)
    return {s: sum(t.state == s for t in trials) for s in TrialState}


def _best(ostudy: optuna.Study) -> FrozenTrial | None:
    try:
        return ostudy.best_trial
    except ValueError:
        return None


def _report_trial(study: Study, _ostudy: optuna.Study, trial: FrozenTrial) -> None:
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    if trial.state == TrialState.COMPLETE:
        what = f"complete: {study.objective} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        what = f"pruned at epoch {trial.user_attrs.get('pruned_epoch', '?')}"
        if "reason" in trial.user_attrs:
            what = f"diverged ({trial.user_attrs['reason']})"
    else:
        what = f"failed: {trial.user_attrs.get('fail_reason', 'see the log above')}"
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
    if finished(study, ostudy) >= target:
        return 0
    if study.arms:
        from nin_search.ablation import free_cells

        if not free_cells(ostudy, study.cells()):  # the rest is running in other workers
            return 0
    objective = make_objective(study, exp_id, parent, lr_range, _DataCache(), extra_tags)

    def enough(s: optuna.Study, _t: FrozenTrial) -> None:
        if finished(study, s) >= target:
            s.stop()

    with _deferred_ctrl_c():
        ostudy.optimize(
            objective,
            n_trials=3 * target,
            timeout=timeout,
            catch=(TrialRejected,),
            callbacks=[
                enough,
                lambda s, t: _report_trial(study, s, t),
                lambda s, t: _check_ctrl_c(),  # pressed between trials: start no other
            ],
        )
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
    ostudy, _, parent = _open(study, url)
    before = _counts(ostudy)
    done = finished(study, ostudy)
    best_before = _best(ostudy)
    before_spec = ostudy.user_attrs.get("nin_spec")
    if study.arms and before_spec and before_spec.get("final_eval"):
        study.final_eval = True  # started with --final-eval: every later cell is tested too
    if not worker:
        _same_ablation(study, before_spec)
        now_spec = spec(study)
        if before_spec and study.arms:  # the report covers every seed ever asked for
            now_spec["seeds"] = list(dict.fromkeys(before_spec["seeds"] + study.seeds))
        ostudy.set_user_attr("nin_spec", now_spec)
        unit = "cells" if study.arms else "trials"
        precision = resolved(study.base_config()).train.precision
        print(
            f"study {study.name!r} at {mask(url)}: {done} of {target} {unit} finished; "
            f"MLflow experiment {study.name!r}, parent run {parent}; "
            f"{precision} (train.precision)"
        )
    if done >= target:
        if not worker:
            print(
                f"the study already holds {done} finished {unit} (target {target}): nothing to do"
            )
        return 0
    lr_range = None
    if any(p.kind == "lr_finder" for p in study.params.values()):
        from nin_search.run import lr_range_from_finder

        low, high, run_id = lr_range_from_finder(study.base_config())
        lr_range = (low, high)
        print(f"train.lr range [{low:.3g}, {high:.3g}] from lr-finder run {run_id}")
    if workers <= 1:
        code = run_worker(study, url, target, timeout, lr_range)
    else:
        code = _spawn(workers, argv_tail or [])
    if worker:
        return code
    _summary(
        study,
        optuna.load_study(study_name=study.name, storage=open_storage(url)),
        url,
        target,
        before,
        best_before,
        parent,
    )
    return code


def _spawn(workers: int, argv_tail: list[str]) -> int:
    """K worker processes of this same command; each gets its own GPU when there are several."""
    import torch

    gpus = torch.cuda.device_count()
    procs = []
    for i in range(workers):
        env = dict(os.environ)
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        cmd = [sys.executable, "-m", "nin_search", *argv_tail, "--workers", "1", "--worker"]
        # a session of their own: the terminal's Ctrl-C reaches them once, forwarded below
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # pass it on; each worker ends its running trial KILLED
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    return max(codes, key=abs)


def _summary(
    study: Study, ostudy: optuna.Study, url: str, target: int, before, best_before, parent
) -> None:
    after = _counts(ostudy)
    now = {s: after[s] - before[s] for s in TrialState}
    done = finished(study, ostudy)
    print(
        f"this run: {sum(now.values())} trials ({now[TrialState.COMPLETE]} complete, "
        f"{now[TrialState.PRUNED]} pruned, {now[TrialState.FAIL]} failed); "
        f"in total {done} finished of {target} targeted, {after[TrialState.FAIL]} failed"
    )
    best = _best(ostudy) if not study.arms else None  # an ablation has no "best": see below
    if best is not None:
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()
        )
        improved = best_before is None or best.number != best_before.number
        print(
            f"best {study.objective} {best.value:.4f} (trial {best.number}: {params}); "
            + ("improved during this run" if improved else "not improved during this run")
        )
    uri = mlflow.get_tracking_uri()
    print(
        f"Optuna: {mask(url)} (optuna-dashboard {mask(url)}); MLflow: experiment "
        f"{study.name!r}, parent run {parent}; open the UI with: {ui_command(uri)}"
    )
