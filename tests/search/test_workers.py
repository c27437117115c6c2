"""Workers that race and die: sweeps from several working directories on one store, a rerun
while a dead worker's trial still looks alive, signals to --workers, and two workers after one
free ablation cell. Real SQLite and PostgreSQL stores, real processes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
from builders import _env, nin_here_ok, start_sweep, trials, wait_for_running_trial, write_study
from optuna.trial import TrialState


def this_run(stdout: str) -> int:
    """The trial count of a summary's 'this run: N trials' line."""
    return int(re.search(r"this run: (\d+) trials", stdout).group(1))


# --- three commands from three working directories on one pair of fresh stores ------------


@pytest.fixture(scope="module")
def three_dirs(tmp_path_factory, data: Path):
    """Three `sweep` commands started together, each in its own working directory, on fresh
    SQLite files given by absolute URLs: the same stores, but no shared directory lock."""
    shared = tmp_path_factory.mktemp("stores")
    url = f"sqlite:///{shared / 'optuna.db'}"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{shared / 'mlflow.db'}"}
    dirs = [tmp_path_factory.mktemp(f"cwd{i}") for i in range(3)]
    for d in dirs:
        write_study(d, "three", data, n_trials=6)
    procs = [start_sweep("study.toml", "--storage", url, cwd=d, env=env) for d in dirs]
    outs = [p.communicate(timeout=300) for p in procs]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return {
        "codes": [p.returncode for p in procs],
        "out": [o for o, _ in outs],
        "err": "".join(e for _, e in outs),
        "trials": trials(shared, "three", storage=url),
        "runs": mlflow.search_runs(experiment_names=["three"]),
    }


def test_three_directories_on_fresh_stores_all_succeed(three_dirs):
    # no half-migrated MLflow store, no 'table already exists', no traceback
    assert three_dirs["codes"] == [0, 0, 0], three_dirs["err"][-3000:]
    assert "Traceback" not in three_dirs["err"]


def test_three_directories_stop_exactly_at_the_target(three_dirs):
    states = [t.state for t in three_dirs["trials"]]
    # n_trials = 6: six complete trials, none more, none left running
    assert states.count(TrialState.COMPLETE) == 6, states
    assert len(states) == 6


def test_three_directories_share_one_parent_run(three_dirs):
    runs = three_dirs["runs"]
    parents = runs[runs["tags.nin.role"] == "study"]
    # one parent for the study, and every trial's run is its child
    assert len(parents) == 1
    kids = runs[runs["tags.nin.role"] != "study"]
    assert set(kids["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}
    assert sorted(kids["run_id"]) == sorted(
        t.user_attrs["mlflow_run_id"] for t in three_dirs["trials"]
    )


def test_each_command_counts_only_its_own_trials_as_this_run(three_dirs):
    counts = [this_run(out) for out in three_dirs["out"]]
    # the three 'this run' counts add up to the six trials: none counted twice
    assert sum(counts) == 6, counts


# --- a dead worker's trial that still looks alive ----------------------------------------


def test_rerun_within_the_grace_period_waits_fails_and_retries_the_dead_trial(
    work: Path, data: Path
):
    write_study(work, "grace", data, n_trials=1, settings={"train.epochs": 100})
    beat = {"NIN_SEARCH_HEARTBEAT_S": "3"}  # stale after 9 s: longer than the rerun's start
    proc = start_sweep("study.toml", cwd=work, env=beat)
    killed = wait_for_running_trial(proc, work, "grace")
    proc.kill()  # SIGKILL in the one (the last) trial the study needs
    proc.communicate()
    # at once, in this process
    res = nin_here_ok("sweep", "study.toml", "--set", "train.epochs=2", cwd=work, env=beat)
    by_number = {t.number: t for t in trials(work, "grace")}
    (retry,) = [t for t in by_number.values() if t.system_attrs.get("failed_trial") == killed]
    # the dead trial was failed, not left RUNNING, and its retry (not a new sample) finished
    assert by_number[killed].state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE and retry.params == by_number[killed].params
    assert [t.state for t in by_number.values()] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "this run: 1 trials (1 complete" in res.stdout
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(by_number[killed].user_attrs["mlflow_run_id"])
    # the dead trial's MLflow run is ended FAILED
    assert run.info.status == "FAILED"


# --- signals to the parent of --workers --------------------------------------------------


def test_sighup_to_the_parent_of_two_workers_ends_both_trials_cleanly(work: Path, data: Path):
    write_study(work, "hup", data, n_trials=2, settings={"train.epochs": 200})
    proc = start_sweep("study.toml", "--workers", "2", cwd=work)
    assert proc.stdout.readline().startswith("study ")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = [
            t
            for t in trials(work, "hup")
            if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
        ]
        if len(running) == 2:
            break
        time.sleep(0.2)
    assert len(running) == 2, "the two workers did not both start a trial"
    proc.send_signal(signal.SIGHUP)  # the ssh session or terminal closed
    _, err = proc.communicate(timeout=90)  # the workers hold the pipes: they ended too
    # the command ends as interrupted once its workers have ended their trials
    assert proc.returncode == 130, err
    ended = trials(work, "hup")
    assert [t.state for t in ended] == [TrialState.FAIL, TrialState.FAIL]
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    for t in ended:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        # each worker ended its own trial's run, KILLED and tagged interrupted
        assert (run.info.status, run.data.tags["nin.state"]) == ("KILLED", "interrupted")


# --- two workers, two directories, one free cell at a time --------------------------------

PICKER = textwrap.dedent(
    """
    import sys, time
    import optuna
    from nin_search.search.cells import CellSampler
    from nin_search.search.storage import open_storage

    url, name, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    cells = [{"arm": a, "train.seed": s} for a in ("a", "b") for s in range(3)]
    # both workers with offset 0: each would pick the same first free cell
    sampler = CellSampler(cells)
    study = optuna.load_study(study_name=name, storage=open_storage(url), sampler=sampler)
    time.sleep(max(0.0, start - time.time()))  # start together
    for _ in range(3):
        study.ask()
    """
)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_workers_racing_for_the_same_free_cell_never_share_it(
    kind: str, tmp_path: Path, request
):
    url = (
        f"sqlite:///{tmp_path / 'optuna.db'}"
        if kind == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    name = f"cells-{uuid.uuid4().hex[:12]}"
    optuna.create_study(study_name=name, storage=url)
    try:
        script = tmp_path / "picker.py"
        script.write_text(PICKER)
        start = f"{time.time() + 6:.3f}"  # both imported by then, on a busy machine too
        dirs = [tmp_path / "a", tmp_path / "b"]  # no shared working directory
        for d in dirs:
            d.mkdir()
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), url, name, start],
                cwd=d,
                env=_env(),
                stderr=subprocess.PIPE,
                text=True,
            )
            for d in dirs
        ]
        errs = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errs
        held = [
            t.system_attrs.get("nin_cell")
            for t in optuna.load_study(study_name=name, storage=url).trials
        ]
        # six asks for six cells: each cell handed out exactly once, none left without one
        assert None not in held, held
        assert sorted((c["arm"], c["train.seed"]) for c in held) == [
            (a, s) for a in ("a", "b") for s in range(3)
        ]
    finally:
        optuna.delete_study(study_name=name, storage=url)


def test_grid_sweep_ends_when_its_grid_is_exhausted(work: Path, data: Path):
    write_study(
        work,
        "grid",
        data,
        n_trials=5,
        params={"train.batch_size": "{ choices = [16, 32] }"},
        sampler='type = "grid"',
    )
    res = nin_here_ok("sweep", "study.toml", cwd=work)
    sizes = sorted(t.params["train.batch_size"] for t in trials(work, "grid"))
    # two grid points, each run once: the target of 5 does not make it repeat them
    assert sizes == [16, 32]
    assert "this run: 2 trials (2 complete" in res.stdout
