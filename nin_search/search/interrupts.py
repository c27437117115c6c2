"""Ctrl-C, SIGTERM and SIGHUP during trials: deferred to safe points, so that a trial ends
cleanly (its MLflow run KILLED, its Optuna trial failed, the store consistent) and the next run
resumes. While fit computes, an interrupt raises at once; anywhere else it waits for the next
safe point (check_ctrl_c). Handlers are installed only on the main thread, only where nobody
else handles the signal, and restored when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_ctrl_c = threading.Event()  # Ctrl-C was pressed while run_worker ran trials


_training = threading.Event()  # inside fit's compute, where a KeyboardInterrupt is harmless


def _on_ctrl_c(signum, frame) -> None:
    _ctrl_c.set()
    if _training.is_set():
        raise KeyboardInterrupt


def check_ctrl_c() -> None:
    if _ctrl_c.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible():
    """Inside deferred_ctrl_c: compute only (no store writes), where Ctrl-C raises at once."""
    _training.set()
    try:
        check_ctrl_c()  # pressed while this was being set up
        yield
    finally:
        _training.clear()


@contextlib.contextmanager
def deferred():
    """Inside interruptible: a block that writes to the stores (an epoch's log), where Ctrl-C
    waits until the block is done, then raises."""
    _training.clear()
    try:
        yield
    finally:
        _training.set()
    check_ctrl_c()


@contextlib.contextmanager
def deferred_ctrl_c():
    """Ctrl-C interrupts at once while fit computes; anywhere else it waits for the next safe
    point. One raised in the middle of an SQLite write leaves the store locked (ending the run
    then fails: 'database is locked'), and Python drops one raised inside a finalizer
    (SQLAlchemy's weakref callbacks)."""
    _ctrl_c.clear()
    _training.clear()
    if threading.current_thread() is not threading.main_thread():
        yield  # not ours to change
        return
    # SIGTERM (kill, Slurm, systemd) and SIGHUP (the terminal closed) end a trial as Ctrl-C
    # does, unless ignored (nohup) or handled by someone else: theirs are left alone
    mine = [signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else []
    mine += [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) == signal.SIG_DFL]
    previous = {s: signal.signal(s, _on_ctrl_c) for s in mine}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _training.clear()
    check_ctrl_c()  # pressed while the last trial was being logged: still an interrupt
