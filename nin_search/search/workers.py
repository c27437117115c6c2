"""Workers of a sweep or an ablation: which trial to start, waiting for the others, signals.

    work(study, ostudy, objective, target, timeout, report, most)  # trials here
    spawn(2, ["sweep", "studies/quick.toml"], url)            # --workers 2: two processes

Any number of workers, on this machine or others, in any working directory, share one study.
A worker starts a trial only while it holds the store's lock (StoreLock: a file beside an SQLite
store, an advisory lock on PostgreSQL) and only while finished + running trials stay under the
target, so workers started together never overshoot it; an ablation worker picks its free cell
under the same lock, so two never take one cell. The lock is let go once the trial exists. A
worker with nothing to start waits while other trials run: one of them may die (its heartbeat
stops, it is failed and queued again) and need a worker. SIGTERM and SIGHUP end a worker as
Ctrl-C does: its running trial ends FAIL in Optuna and KILLED in MLflow.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from nin_search.search import optuna_private as private
from nin_search.search.interrupts import check_ctrl_c, deferred_ctrl_c
from nin_search.search.kinds import finished, kind_of
from nin_search.search.objective import TrialRejected
from nin_search.search.storage import heartbeat_s
from nin_search.spec.study import Study
from nin_search.stores.locks import StoreLock

COMMAND = "NIN_SEARCH_COMMAND"  # the id of the command a worker runs for: "this run" in summaries


POLL_S = 1.0  # how often a waiting worker looks again (each look is one query)


FAILS_IN_A_ROW = 3  # trials failed in a row for one reason: the next would too, so stop


def command_id(worker: bool) -> str:
    """The id that marks the trials of this command and of the workers it started."""
    if not worker or not os.environ.get(COMMAND):
        os.environ[COMMAND] = uuid.uuid4().hex  # inherited by the workers spawn() starts
    return os.environ[COMMAND]


def _mine(ostudy: optuna.Study) -> list[FrozenTrial]:
    me = os.environ.get(COMMAND)
    return [
        t for t in ostudy.get_trials(deepcopy=False) if t.system_attrs.get("nin_command") == me
    ]


def this_run(ostudy: optuna.Study) -> dict[TrialState, int]:
    """Trials by state that this command's workers ran (not those of other commands)."""
    trials = _mine(ostudy)
    return {s: sum(t.state == s for t in trials) for s in TrialState}


def failure(study: Study, ostudy: optuna.Study) -> str | None:
    """Why this command's trials all failed or were over budget, or None: one finished (or none
    was started)."""
    from nin_search.search.studies import FINISHED, counted

    mine = _mine(ostudy)
    if any(t.state in FINISHED and counted(t) for t in mine):
        return None
    # a cell taken by another command meanwhile (ablation.has_cell) is no failure of this one
    failed = [
        t
        for t in mine
        if t.state == TrialState.FAIL and t.system_attrs.get("nin_cell", {}) is not None
    ]
    unit = kind_of(study).unit
    if failed:
        reason = failed[0].user_attrs.get("fail_reason", "see the log above")
        return (
            f"{len(failed)} {unit} failed and none finished; the first (trial "
            f"{failed[0].number}): {reason}"
        )
    over = [t for t in mine if not counted(t)]
    if over:
        return (
            f"all {len(over)} samples were over the [constraints] budget, none trained (the "
            f"first: {over[0].user_attrs['over_budget']}); loosen the budget or the [params]"
        )
    return None


def heartbeats(ostudy: optuna.Study) -> bool:
    return private.heartbeat_enabled(ostudy)


def fail_stale(ostudy: optuna.Study) -> None:
    """Fail the trials of dead workers now (retrying each once and ending its MLflow run), so a
    rerun never takes a dead trial for a live one."""
    if heartbeats(ostudy):
        fail_stale_trials(ostudy)


def _next(study: Study, ostudy: optuna.Study, target: int) -> str:
    """'run' a trial, 'wait' for the running ones, or 'done'; asked under the store's lock."""
    trials = ostudy.get_trials(deepcopy=False)
    done = finished(study, ostudy)
    if done >= target:
        return "done"
    if any(t.state == TrialState.WAITING for t in trials):
        return "run"  # a dead worker's trial queued again, or one enqueued by hand
    # without heartbeats (a journal file) a dead worker's trial looks running for ever: ignore
    # running trials there, as before (workers may then overshoot the target)
    running = sum(_alive(t) for t in trials) if heartbeats(ostudy) else 0
    if kind_of(study).may_start(study, ostudy, done, running, target):
        return "run"
    return "wait" if running else "done"


def _alive(t: FrozenTrial) -> bool:
    """A running trial of a worker (which beats until it dies), or one just created. A trial
    asked for by hand and never told has no heartbeat and never goes stale: not worth waiting
    for once the grace period is over."""
    if t.state != TrialState.RUNNING:
        return False
    if "nin_worker" in t.system_attrs or t.datetime_start is None:
        return True
    return (datetime.now() - t.datetime_start).total_seconds() < 3 * heartbeat_s()


def work(
    study: Study,
    ostudy: optuna.Study,
    objective,
    target: int,
    timeout,
    report,
    most: int,
    rejections_stop: bool = True,
) -> None:
    """Run trials in this process until the study holds `target` finished ones (or the cells of
    its grid are all finished), `timeout` seconds have passed, `most` trials started here (a
    sample that always fails must not loop for ever) or FAILS_IN_A_ROW failed for one reason
    (samples the network cannot take, or too big for the memory, count only where
    rejections_stop: no sample fits)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    lock = StoreLock(private.storage(ostudy), key=study.name)
    me = os.environ.get(COMMAND)

    def admitted(trial: optuna.Trial) -> float:
        lock.release()  # the trial exists and holds its cell: the next worker may choose
        storage, tid = private.storage(ostudy), private.trial_id(trial)
        # where it runs, for whoever watches a study spread over machines
        storage.set_trial_system_attr(tid, "nin_worker", f"{socket.gethostname()}:{os.getpid()}")
        if me:
            storage.set_trial_system_attr(tid, "nin_command", me)
        return objective(trial)

    started, ran = 0, []

    def record(_s: optuna.Study, t: FrozenTrial) -> None:
        ran.append(t)

    with deferred_ctrl_c():
        while started < most and (deadline is None or time.monotonic() < deadline):
            fail_stale(ostudy)
            lock.acquire()
            try:
                step = _next(study, ostudy, target)
                if step == "run":
                    started += 1
                    ostudy.optimize(
                        admitted, n_trials=1, catch=(TrialRejected,), callbacks=[report, record]
                    )
            finally:
                lock.release()
            last = ran[-FAILS_IN_A_ROW:]
            if len(last) == FAILS_IN_A_ROW and _same_failure(last, rejections_stop):
                print(
                    f"stopped: {FAILS_IN_A_ROW} trials in a row failed for one reason "
                    f"(trial {last[0].number}'s); the next would too",
                    flush=True,
                )
                return
            # a grid sampler with every point visited stops the study (CellSampler's stop is
            # only a hint: _next knows whether a cell may still come free)
            if step == "done" or (private.stop_requested(ostudy) and kind_of(study).sampler_stops):
                return
            if step == "wait":
                _sleep(POLL_S)
            check_ctrl_c()  # pressed between trials: start no other


def _same_failure(trials: list[FrozenTrial], rejections: bool) -> bool:
    """All failed for one reason; a sample the network cannot take counts only if rejections."""
    if not rejections and any(t.user_attrs.get("sample_rejected") for t in trials):
        return False
    reasons = {t.user_attrs.get("fail_reason") for t in trials}
    return all(t.state == TrialState.FAIL for t in trials) and len(reasons) == 1


def _sleep(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.1, seconds))
        check_ctrl_c()


def worker_command(argv_tail: list[str], url: str) -> tuple[list[str], dict]:
    """argv and environment of one worker of this command. The storage URL, password and all,
    goes in $NIN_SEARCH_STORAGE, not on the command line, which `ps` shows to every user."""
    cmd = [sys.executable, "-m", "nin_search", *argv_tail, "--workers", "1", "--worker"]
    return cmd, dict(os.environ) | {"NIN_SEARCH_STORAGE": url}


def cpu_threads(workers: int, environ: dict) -> dict:
    """torch threads for each of K workers that train on the CPU: the cores this process may use,
    split between them (at least 1 each), unless $OMP_NUM_THREADS is set already. Without it every
    worker starts one thread per core and K workers fight over the same cores."""
    if environ.get("OMP_NUM_THREADS"):
        return {}
    return {"OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // workers))}


def spawn(workers: int, argv_tail: list[str], url: str) -> int:
    """K worker processes of this same command; each gets its own GPU when there are several,
    and its share of the cores when there is none (cpu_threads).

    Ctrl-C, SIGTERM and SIGHUP (the terminal or the ssh session closed) are passed on to every
    worker, which ends its running trial cleanly; this process waits for them, then stops."""
    import torch

    gpus = torch.cuda.device_count()
    procs: list[subprocess.Popen] = []
    got: list[int] = []

    def forward(signum: int, _frame) -> None:
        got.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in previous:
        signal.signal(s, forward)
    try:
        for i in range(workers):
            cmd, env = worker_command(argv_tail, url)
            if gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
            elif not gpus:
                env |= cpu_threads(workers, env)
            # a session of their own: the terminal's Ctrl-C reaches them once, forwarded below
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:  # pass it on; each worker ends its running trial KILLED
            forward(signal.SIGINT, None)
            for p in procs:
                p.wait()
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if got:
        raise KeyboardInterrupt  # the workers ended their trials; the command was stopped
    return max(codes, key=abs)
