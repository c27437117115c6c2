"""Faults of the stores MLflow and Optuna write: a database server that went away (waited out
for up to RETRY_S seconds, then one line) and a store that cannot be written (a full disk, a
read-only file: store_failure gives the one line the CLI prints, exit 1)."""

from __future__ import annotations

import contextlib
import errno
import sys
import time

import optuna

from nin_search.engine.config import ConfigError
from nin_search.engine.errors import first_line
from nin_search.stores.urls import mask

# a full disk or quota, a read-only or unwritable folder, a file where a folder belongs
WRITE_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
    errno.ENOTDIR, errno.EEXIST, errno.EISDIR,
}  # fmt: skip


def store_failure(e: BaseException) -> str | None:
    """One line for an error a store raised mid-run (a full disk, a read-only or vanished
    mlruns/, a database that cannot be written), found anywhere in the exception's chain;
    None for any other error. cli.main prints it instead of MLflow's and Optuna's tracebacks."""
    import sqlite3

    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for link in seen:
        if isinstance(link, sqlite3.OperationalError) or (
            isinstance(link, OSError) and link.errno in WRITE_ERRNOS
        ):
            where = getattr(link, "filename", None)
            what = getattr(link, "strerror", None) or first_line(link)
            return (
                f"a store failed mid-run: {what}{f': {where}' if where else ''}; free space or "
                "make it writable, then rerun the same command (a sweep or ablation resumes)"
            )
    return None


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
            first = first_line(e.__cause__ or e)
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
