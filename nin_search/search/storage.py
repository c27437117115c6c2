"""Optuna storages: SQLite and PostgreSQL with heartbeats, or a journal file.

    sqlite:///mlruns/optuna.db            the default (optuna-dashboard reads it)
    postgresql://user:PASSWORD@host/db    several machines (masked when shown; an @ in it: %40)
    runs/study.log or journal:PATH        a journal file (no heartbeats)

With an RDB storage each running trial beats every NIN_SEARCH_HEARTBEAT_S seconds (20); a trial
silent for three beats is failed, retried once, and its MLflow run ended FAILED. On PostgreSQL
(and MySQL) each call waits out a server restart for up to RETRY_S seconds.

    with StoreLock(url, key=study_name): ...   # one worker at a time, on any machine

StoreLock is what workers in different directories or on different machines share: a lock file
beside an SQLite or journal file, an advisory lock on the database server.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import warnings
from pathlib import Path

import mlflow
import optuna
from optuna.trial import FrozenTrial

from nin_search.engine.config import ConfigError
from nin_search.engine.errors import first_line
from nin_search.search.optuna_private import STALE_TRIAL_IDS
from nin_search.stores.faults import _retry, _transient, store_failure
from nin_search.stores.locks import JOURNAL_SUFFIXES, StoreLock
from nin_search.stores.urls import check_db_url, mask

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


class _RDBStorage(optuna.storages.RDBStorage):
    """An RDB storage whose heartbeat, run in Optuna's heartbeat thread, fails quietly: an
    exception there reaches threading.excepthook, a 90-line traceback beside cli.main's one
    line. A store failure (a full disk, a read-only file) is silent, since the trial's own next
    write fails the same way and the main thread says so; anything else is one line, once.
    With --debug (the "nin_search" logger at DEBUG) the traceback shows."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as e:
            if _transient(e) and not self.url.startswith("sqlite"):
                # a server restarting: skip this beat, not retried, the next one comes soon
                with contextlib.suppress(Exception):
                    optuna.storages.RDBStorage.remove_session(self)  # its connection is gone
                return
            if logging.getLogger("nin_search").isEnabledFor(logging.DEBUG):
                raise
            if store_failure(e) is None and not self.__dict__.get("_nin_beat_said"):
                self._nin_beat_said = True
                first = first_line(e.__cause__ or e)
                print(
                    f"storage {mask(self.url)}: heartbeat of trial {trial_id} not recorded "
                    f"({first[:200]})",
                    file=sys.stderr,
                    flush=True,
                )


class _RetryingRDBStorage(_RDBStorage):
    """An RDB storage (PostgreSQL, MySQL) whose calls wait out a server restart instead of
    failing the trial."""


def _retrying(name: str):
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        state = self.__dict__.setdefault("_nin_retry", {})
        reset = lambda: optuna.storages.RDBStorage.remove_session(self)  # noqa: E731
        return _retry(self.url, lambda: method(self, *args, **kwargs), state, reset)

    return call


for _name in [*dir(optuna.storages.BaseStorage), STALE_TRIAL_IDS]:
    if (not _name.startswith("_") or _name == STALE_TRIAL_IDS) and _name not in (
        "record_heartbeat",
        "get_heartbeat_interval",
        "get_heartbeat_stale_trial_callback",
    ):
        if callable(getattr(optuna.storages.RDBStorage, _name, None)):
            setattr(_RetryingRDBStorage, _name, _retrying(_name))


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats (SQLite, PostgreSQL, MySQL) or a journal file."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial, no traces
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    beat = heartbeat_s()  # before anything is created, and never blamed on --storage
    try:
        if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
            path = url.removeprefix("journal:")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
        check_db_url(url, "--storage")  # a driver missing, a password SQLAlchemy misreads
        if url == DEFAULT_STORAGE:
            Path("mlruns").mkdir(exist_ok=True)
        engine = (
            {"connect_args": {"timeout": 60}}
            if url.startswith("sqlite")
            else {"pool_pre_ping": True}
        )
        # a database server may restart under a long sweep: its calls wait it out
        rdb = _RDBStorage if url.startswith("sqlite") else _RetryingRDBStorage
        with StoreLock(url, key="nin-search schema"):  # fresh stores: one creates the tables
            return rdb(
                url,
                engine_kwargs=engine,
                heartbeat_interval=beat,
                grace_period=3 * beat,
                heartbeat_stale_trial_callback=end_stale_run,
            )
    except ConfigError:
        raise
    except Exception as e:  # sqlalchemy, driver and OS errors alike: the store is unusable
        first = first_line(e)
        raise ConfigError(f"--storage {mask(url)} cannot be opened: {first[:300]}") from None
