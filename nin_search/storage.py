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
import hashlib
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import mlflow
import optuna
from optuna.trial import FrozenTrial

from nin_search.config import ConfigError
from nin_search.tracking import check_db_url, mask, store_failure

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")  # a storage path ending so is a journal file
LOCK_SUFFIX = ".nin-lock"  # not .lock: Optuna's journal lock is a symlink named FILE.lock


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


RETRY_S = 120  # how long a worker rides out a database server that went away (a restart)


def _transient(e: BaseException) -> bool:
    """A lost or refused connection (the server restarts), not a bad query."""
    import sqlalchemy.exc as sx

    if isinstance(e, optuna.exceptions.StorageInternalError):  # Optuna wraps commit errors
        e = e.__cause__
    # PendingRollbackError: the session's connection died inside a transaction
    lost = (sx.OperationalError, sx.InterfaceError, sx.PendingRollbackError)
    return isinstance(e, lost) or (isinstance(e, sx.DBAPIError) and e.connection_invalidated)


def _retry(url: str, call, state: dict | None = None, reset=lambda: None):
    """call(), again after 0.5, 1, 2, 4, 8, 8 ... s while the server is unreachable, for at most
    RETRY_S; then one line (a ConfigError), and later calls fail at once. reset() after each
    failure drops what the lost connection left behind."""
    state = {} if state is None else state
    delay, waited = 0.5, 0.0
    while True:
        try:
            result = call()
            if waited:
                print(f"storage {mask(url)}: reconnected after {waited:.0f} s", file=sys.stderr)
            return result
        except Exception as e:
            if not _transient(e):
                raise
            with contextlib.suppress(Exception):
                reset()
            first = (str(e.__cause__ or e).strip().splitlines() or [type(e).__name__])[0]
            if state.get("gave_up") or waited >= RETRY_S:
                state["gave_up"] = True
                raise ConfigError(
                    f"--storage {mask(url)} unreachable for {RETRY_S} s ({first[:200]}); "
                    "run the same command again to resume"
                ) from None
            if not waited:
                print(
                    f"storage {mask(url)}: connection lost ({first[:200]}); "
                    f"retrying for up to {RETRY_S} s",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(delay)
            waited += delay
            delay = min(2 * delay, 8.0)


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
                first = (str(e.__cause__ or e).strip().splitlines() or [type(e).__name__])[0]
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


for _name in [*dir(optuna.storages.BaseStorage), "_get_stale_trial_ids"]:
    if (not _name.startswith("_") or _name == "_get_stale_trial_ids") and _name not in (
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
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"--storage {mask(url)} cannot be opened: {first[:300]}") from None


def store_file(url: str) -> Path | None:
    """The resolved path of an SQLite database or a journal file; None for a database server
    (or an in-memory SQLite database)."""
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        return Path(url.removeprefix("journal:")).resolve()
    if url.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        db = make_url(url).database
        return Path(db).resolve() if db and db != ":memory:" else None
    return None


def _lock_target(store) -> tuple[str, str] | None:
    """(kind, where) of the lock that guards a store (a URL or an Optuna storage): a lock file
    beside an SQLite database or a journal file, or the database server itself."""
    backend = getattr(store, "_backend", store)  # Optuna's _CachedStorage and JournalStorage
    if isinstance(backend, optuna.storages.RDBStorage):
        store = backend.url
    elif hasattr(backend, "_file_path"):  # JournalFileBackend
        return "file", str(Path(backend._file_path).resolve()) + LOCK_SUFFIX
    if not isinstance(store, str):
        return None
    if store.startswith(("journal:", "sqlite:")) or store.endswith(JOURNAL_SUFFIXES):
        file = store_file(store)
        return ("file", str(file) + LOCK_SUFFIX) if file else None
    if store.startswith(("postgresql", "mysql")):
        return "sql", store
    return None  # http(s):// (an MLflow server serializes its own writes), or unknown


@functools.cache
def _engine(url: str):
    import sqlalchemy

    # one connection per lock taken, closed when it is released (or its process dies)
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


# (thread, kind, where, key) -> [depth, release]: a thread may take a lock it holds already
_held: dict[tuple, list] = {}
_held_guard = threading.Lock()


def _take(kind: str, where: str, key: str):
    """Block until this process holds the lock; return the function that releases it."""
    if kind == "file":
        import fcntl

        try:
            fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # no such folder, read-only: opening the store fails with the reason
            return lambda: None
        fcntl.flock(fd, fcntl.LOCK_EX)
        return lambda: os.close(fd)  # closing releases the lock
    import sqlalchemy

    check_db_url(where, "--storage")  # before SQLAlchemy's ImportError or ValueError traceback

    def lock():
        conn = _engine(where).connect()
        try:
            if where.startswith("postgresql"):  # session-level: the server drops it if we die
                sql, arg = "SELECT pg_advisory_lock(:k)", _lock_id(key)
            else:
                sql, arg = "SELECT GET_LOCK(:k, -1)", key[:64]
            conn.execute(sqlalchemy.text(sql), {"k": arg})
            conn.commit()
            return conn
        except Exception:
            conn.close()
            raise

    try:
        # a server that restarts is waited for; one that never answered fails at once
        conn = _retry(where, lock) if _engine(where).__dict__.get("_nin_seen") else lock()
        _engine(where).__dict__["_nin_seen"] = True
    except sqlalchemy.exc.SQLAlchemyError as e:  # unreachable, refused, bad password
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"--storage {mask(where)} cannot be opened: {first[:300]}") from None
    return conn.close  # ends the session, and with it the lock


class StoreLock:
    """A lock every worker of a study takes, on this machine or any other, whatever its working
    directory: a file lock beside an SQLite or journal file, a PostgreSQL advisory lock (MySQL:
    GET_LOCK) on the database server. `with StoreLock(url, mlflow_uri, key=name):` or
    acquire()/release(); release() is idempotent and a process may take a lock it holds."""

    def __init__(self, *stores, key: str = "nin-search", own_file: bool = False) -> None:
        # a file lock is one per file, whatever the key (taken twice, a file would block itself);
        # own_file: a lock file of this key's own, for a lock held long (an arm's range test)
        # that must not stop every other command on the store meanwhile
        targets = [t for s in stores if (t := _lock_target(s))]
        if own_file:
            tag = hashlib.sha256(key.encode()).hexdigest()[:12]
            targets = [(k, f"{w}.{tag}" if k == "file" else w) for k, w in targets]
        self.targets = sorted(
            {(kind, where, key if kind == "sql" else "") for kind, where in targets}
        )
        self.held = False

    def acquire(self) -> None:
        if self.held:
            return
        me = threading.get_ident()
        for target in self.targets:  # always in sorted order: no two processes deadlock
            with _held_guard:
                entry = _held.get((me, *target))
                if entry:
                    entry[0] += 1
                    continue
            release = _take(*target)
            with _held_guard:
                _held[(me, *target)] = [1, release]
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        me = threading.get_ident()
        for target in reversed(self.targets):
            with _held_guard:
                entry = _held[(me, *target)]
                entry[0] -= 1
                if entry[0]:
                    continue
                del _held[(me, *target)]
            with contextlib.suppress(Exception):  # a server gone away has dropped it already
                entry[1]()

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def store_exists(url: str) -> bool:
    """False for an SQLite database or a journal file that does not exist yet: a command that
    only reads (report) must not create one. Servers (PostgreSQL, ...) count as existing."""
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        return Path(url.removeprefix("journal:")).is_file()
    if url.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        try:
            db = make_url(url).database
        except Exception:  # not a URL SQLAlchemy reads: open_storage says why
            return True
        return not db or db == ":memory:" or Path(db).is_file()
    return True


__all__ = ["DEFAULT_STORAGE", "heartbeat_s", "storage_url", "open_storage", "StoreLock"]
