"""Locks every worker of a study takes, on this machine or any other, whatever its working
directory: a file lock beside an SQLite or journal file, an advisory lock on a database server.

    with StoreLock(url, key=study_name): ...   # one worker at a time, on any machine

store_file and store_exists tell where a store lives and whether it exists yet (a command that
only reads must not create one)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
from pathlib import Path

import optuna

from nin_search.engine.config import ConfigError
from nin_search.engine.errors import first_line
from nin_search.stores.faults import _retry
from nin_search.stores.urls import check_db_url, mask

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")  # a storage path ending so is a journal file


LOCK_SUFFIX = ".nin-lock"  # not .lock: Optuna's journal lock is a symlink named FILE.lock


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
        first = first_line(e)
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
