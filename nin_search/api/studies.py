"""Many runs: an Optuna sweep and an ablation, from their study files. What `sweep` and `ablate`
run, as functions.

    import nin_search as ns
    study = ns.sweep("studies/quick.toml", n_trials=4)         # the optuna.Study
    abl = ns.ablate("studies/ablate_head.toml", seeds=[0, 1])  # abl.summary, abl.plot()

Both check the study file, the data, the MLflow store and the Optuna storage before anything
is written (ConfigError with the command's one line), resume what an earlier call or command
started, and defer Ctrl-C to the end of the running trial's bookkeeping: the trial ends
KILLED in MLflow, KeyboardInterrupt is raised, and no signal handler stays installed.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any

from nin_search.engine.config import ConfigError, parse_overrides

__all__ = ["sweep", "ablate"]

Overrides = dict[str, Any] | list[str] | None  # {"train.lr": 0.1} or --set's ["train.lr=0.1"]


def _values(overrides: Overrides) -> dict[str, Any]:
    if isinstance(overrides, dict):
        return dict(overrides)
    return parse_overrides(list(overrides or []))


def _tail(command: str, path: str, values: dict[str, Any]) -> list[str]:
    """The command line that --workers K starts K times (subcommand first); JSON scalars are
    TOML scalars, so each --set value reads back as the same type."""
    return [command, path] + [f"--set={k}={json.dumps(v)}" for k, v in values.items()]


def duration(text: str | float | None) -> float | None:
    """Seconds from 90m, 2h, 3600 (or a number of seconds); ConfigError unless positive."""
    if text is None:
        return None
    import pandas as pd

    try:
        if isinstance(text, int | float):
            seconds = float(text)
        elif text.replace(".", "", 1).isdigit():
            seconds = float(text)
        else:
            seconds = pd.Timedelta(text).total_seconds()
    except ValueError:
        seconds = -1
    if not 0 < seconds < float("inf"):  # nan and NaT compare False: refused too
        raise ConfigError(f"--timeout {text!r}: expected a positive duration like 90m, 2h, 3600")
    return seconds


def run_study(
    path: str,
    n_trials: int | None = None,
    timeout: str | float | None = None,
    storage: str | None = None,
    workers: int = 1,
    overrides: Overrides = None,
    argv_tail: list[str] | None = None,
    worker: bool = False,
):
    """(exit code, the optuna.Study, why nothing finished or None): `sweep`'s work. The
    study is None in a --worker."""
    import optuna

    from nin_search.engine.data import check_data
    from nin_search.engine.train import resolved
    from nin_search.search.storage import heartbeat_s, open_storage, storage_url
    from nin_search.search.sweep import check_space, run_sweep
    from nin_search.search.workers import failure
    from nin_search.spec.study import load_study
    from nin_search.tracking.store import check_tracking

    if workers < 1 or (n_trials is not None and n_trials < 1):
        raise ConfigError("--workers and --n-trials must be >= 1")
    values = _values(overrides)
    study = load_study(path, values)
    # before anything is written: device and precision, the data, the MLflow store and
    # $NIN_SEARCH_HEARTBEAT_S (run_sweep makes mlruns/ before it opens the Optuna store)
    resolved(study.base_config())
    check_space(study)  # a search whose every sample the network cannot take
    check_data(study.base_config().data)
    check_tracking()
    heartbeat_s()
    url = storage_url(storage)
    # no --storage on the workers' command lines (ps shows them to every user): workers.spawn
    # hands the URL over in $NIN_SEARCH_STORAGE
    tail = argv_tail or _tail("sweep", path, values)
    if argv_tail is None and n_trials:
        tail += ["--n-trials", str(n_trials)]
    if argv_tail is None and timeout is not None:
        tail += ["--timeout", str(timeout)]
    code = run_sweep(study, url, n_trials, duration(timeout), workers, tail, worker)
    if worker:
        return code, None, None
    final = optuna.load_study(study_name=study.name, storage=open_storage(url))
    return code, final, failure(study, final) if code else None


def sweep(
    study: str,
    n_trials: int | None = None,
    *,
    timeout: str | float | None = None,
    storage: str | None = None,
    workers: int = 1,
    overrides: Overrides = None,
):
    """Run (or resume) the Optuna study of a study file until it holds n_trials finished trials.

        study = ns.sweep("studies/quick.toml", n_trials=4, overrides={"train.epochs": 1})
        study.best_params, study.trials_dataframe()
        optuna.visualization.plot_optimization_history(study)

    Every trial is an MLflow run under the study's parent run; storage is the Optuna storage
    URL (default $NIN_SEARCH_STORAGE or sqlite:///mlruns/optuna.db); timeout stops starting
    trials after that long (seconds, or "90m", "2h"); workers > 1 runs that many processes.
    overrides set shared values by dotted name, as --set does. A run in which no trial finished
    warns with the first reason. Returns the optuna.Study.
    """
    _, ostudy, why = run_study(study, n_trials, timeout, storage, workers, overrides)
    if why:  # also printed, as the command's last line
        warnings.warn(why, RuntimeWarning, stacklevel=2)
    return ostudy


def run_ablation(
    path: str,
    seeds: int | list[int] | None = None,
    storage: str | None = None,
    workers: int = 1,
    overrides: Overrides = None,
    final_eval: bool = False,
    argv_tail: list[str] | None = None,
    worker: bool = False,
):
    """(exit code, the optuna.Study, the report's folder): `ablate`'s work. argv_tail is the
    command line up to --seeds that --workers K starts. The study is None in a --worker, the
    folder None when no cell finished (the reason is the last line)."""
    from nin_search.engine.data import check_data
    from nin_search.search.report import report
    from nin_search.search.storage import heartbeat_s, storage_url
    from nin_search.search.studies import find_study
    from nin_search.search.sweep import run_sweep
    from nin_search.search.workers import failure
    from nin_search.spec.ablation import check_arms, load_ablation
    from nin_search.tracking.store import check_tracking

    if workers < 1:
        raise ConfigError(f"--workers {workers} is not allowed; expected >= 1")
    values = _values(overrides)
    study = dataclasses.replace(load_ablation(path, values, seeds), final_eval=final_eval)
    # before anything is written: the data, an arm the network or the data cannot take
    # (device and precision too), the MLflow store, $NIN_SEARCH_HEARTBEAT_S
    check_data(study.base_config().data, study.final_eval)
    check_arms(study)
    check_tracking()
    heartbeat_s()
    url = storage_url(storage)
    # the workers' seeds: this list, or as many as this call has (a later --seeds N adds to them)
    listed = ",".join(map(str, study.seeds)) if isinstance(seeds, list) else str(len(study.seeds))
    tail = [*(argv_tail or _tail("ablate", path, values)), "--seeds", listed]
    tail += ["--final-eval"] if final_eval else []
    code = run_sweep(study, url, None, None, workers, tail, worker)
    if worker:
        return code, None, None
    final = find_study(study.name, url)
    if code and failure(study, final):  # nothing finished: run_sweep's error stays the last line
        return code, final, None
    return code, final, report(final)


def ablate(
    study: str,
    seeds: int | list[int] | None = None,
    *,
    storage: str | None = None,
    workers: int = 1,
    overrides: Overrides = None,
    final_eval: bool = False,
):
    """Run (or resume) every arm x seed cell of an ablation file, then compare the arms.

        abl = ns.ablate("studies/ablate_head.toml", seeds=[0, 1, 2])
        abl.summary       # one row per arm: mean, CI, delta to the baseline, p-values
        abl.plot()

    seeds: a list of seeds to run (replacing the file's), or N for the file's first N; each
    arm runs once per seed. final_eval=True also reports test accuracy (never used to
    choose). Writes the report to reports/<name>/ and its MLflow parent run, as `ablate` does.
    Returns an AblationResult.
    """
    import pandas as pd

    from nin_search.api.results import AblationResult
    from nin_search.search.report import ablation_table

    code, ostudy, folder = run_ablation(study, seeds, storage, workers, overrides, final_eval)
    if folder is None:  # no cell finished: run_sweep printed why
        warnings.warn(f"{study}: no cell finished", RuntimeWarning, stacklevel=2)
        spec = ostudy.user_attrs.get("nin_spec", {})
        return AblationResult(
            pd.DataFrame(), pd.DataFrame(), spec.get("objective", ""), ostudy, None
        )
    table, cells, spec = ablation_table(ostudy)
    return AblationResult(table, cells, spec["objective"], ostudy, folder)
