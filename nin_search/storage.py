"""Optuna storages: SQLite and PostgreSQL with heartbeats, or a journal file.

    sqlite:///mlruns/optuna.db            the default (optuna-dashboard reads it)
    postgresql://user:PASSWORD@host/db    several machines (the password is masked when shown)
    runs/study.log or journal:PATH        a journal file (no heartbeats)

With an RDB storage each running trial beats every NIN_SEARCH_HEARTBEAT_S seconds (20); a trial
silent for three beats is failed, retried once, and its MLflow run ended FAILED.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import mlflow
import optuna
from optuna.trial import FrozenTrial

from nin_search.config import ConfigError
from nin_search.tracking import mask

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"


# seconds between heartbeats of a running trial; a trial silent for 3x that is failed and retried
def heartbeat_s() -> int:
    """$NIN_SEARCH_HEARTBEAT_S (default 20), read when a store opens: a bad value is a one-line
    ConfigError naming the variable, never a traceback at import."""
    raw = os.environ.get("NIN_SEARCH_HEARTBEAT_S", "20")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(
            f"NIN_SEARCH_HEARTBEAT_S={raw!r} is not allowed; expected whole seconds >= 1 "
            "(default 20)"
        )
    return value


def storage_url(arg: str | None) -> str:
    return arg or os.environ.get("NIN_SEARCH_STORAGE") or DEFAULT_STORAGE


def end_stale_run(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose worker died: retry it once, and end its MLflow run FAILED."""
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        client = mlflow.MlflowClient()
        client.set_tag(run_id, "nin.state", "failed")
        client.set_tag(run_id, "nin.reason", "worker lost: no heartbeat; retried once")
        client.set_terminated(run_id, "FAILED")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats (SQLite, PostgreSQL, MySQL) or a journal file."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial, no traces
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    beat = heartbeat_s()  # before anything is created, and never blamed on --storage
    try:
        if url.startswith("journal:") or url.endswith((".log", ".journal", ".jsonl")):
            path = url.removeprefix("journal:")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
        if url == DEFAULT_STORAGE:
            Path("mlruns").mkdir(exist_ok=True)
        engine = (
            {"connect_args": {"timeout": 60}}
            if url.startswith("sqlite")
            else {"pool_pre_ping": True}
        )
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=beat,
            grace_period=3 * beat,
            heartbeat_stale_trial_callback=end_stale_run,
        )
    except Exception as e:  # sqlalchemy, driver and OS errors alike: the store is unusable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"--storage {mask(url)} cannot be opened: {first[:300]}") from None


@contextlib.contextmanager
def directory_lock():
    """Other sweeps started in this directory wait while this one holds the lock.

    Held while the stores are opened (two commands started together on fresh default stores
    would both create them: SQLite says 'table studies already exists' and MLflow's migrations
    fail half-way) and while an ablation worker picks its next cell. The lock is taken on the
    directory itself, so it writes nothing.
    """
    try:
        import fcntl

        fd = os.open(".", os.O_RDONLY)
    except (ImportError, OSError):  # no flock (Windows) or an unreadable directory: no lock
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


__all__ = ["DEFAULT_STORAGE", "heartbeat_s", "storage_url", "open_storage", "directory_lock"]
