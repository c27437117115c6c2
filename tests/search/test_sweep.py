"""The sweep command end to end: real Optuna (SQLite, journal, PostgreSQL) and MLflow (SQLite)
stores under tmp_path, tiny studies on an easy synthetic task, crashes, Ctrl-C and bad input."""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pytest
from builders import (
    children,
    nin_here_ok,
    parents,
    runs,
    sqlite_url,
    start_sweep,
    sweep_ok,
    sweep_refused,
    swept_here,
    trials,
    wait_for_running_trial,
    with_mlflow_store,
    write_study,
)
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from nin_search.cli.main import main as cli
from nin_search.engine.chance import at_chance
from nin_search.engine.config import Config, flatten
from nin_search.search.sweep import check_space, space_fits
from nin_search.spec.study import load_study

# --- one tiny sweep through the CLI on fresh default stores -------------------------------


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, data: Path) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("e2e")
    write_study(folder, "e2e", data, n_trials=3, settings={"train.epochs": 3})
    # in this process (the sweeps of two_at_once and the kill tests are real `python -m` ones)
    res = nin_here_ok("sweep", "study.toml", cwd=folder)
    return SimpleNamespace(folder=folder, res=res, trials=trials(folder, "e2e"))


def test_sweep_creates_both_default_stores_under_mlruns(e2e):
    # sqlite:///mlruns/optuna.db and sqlite:///mlruns/mlflow.db, relative to the working dir
    assert (e2e.folder / "mlruns" / "optuna.db").is_file()
    assert (e2e.folder / "mlruns" / "mlflow.db").is_file()


def test_sweep_finishes_n_trials_in_optuna(e2e):
    # the file's n_trials = 3 trials, all complete
    assert [t.state for t in e2e.trials] == [TrialState.COMPLETE] * 3


def test_one_parent_run_per_study(e2e):
    parent = parents(e2e.folder, "e2e")
    # exactly one parent, and the study remembers which
    assert len(parent) == 1
    study = optuna.load_study(study_name="e2e", storage=sqlite_url(e2e.folder))
    assert study.user_attrs["mlflow_parent_run_id"] == parent.iloc[0]["run_id"]


def test_every_trial_is_one_child_run_of_the_parent(e2e):
    kids = children(e2e.folder, "e2e")
    parent_id = parents(e2e.folder, "e2e").iloc[0]["run_id"]
    # one child per trial, named by the trial's mlflow_run_id attribute ...
    assert sorted(kids["run_id"]) == sorted(t.user_attrs["mlflow_run_id"] for t in e2e.trials)
    # ... each linked to the parent and tagged with its trial number
    assert set(kids["tags.mlflow.parentRunId"]) == {parent_id}
    tagged = dict(zip(kids["run_id"], kids["tags.nin.trial"].astype(int), strict=True))
    assert tagged == {t.user_attrs["mlflow_run_id"]: t.number for t in e2e.trials}


def test_child_runs_log_the_sampled_values_under_their_dotted_names(e2e):
    client = mlflow.MlflowClient(f"sqlite:///{e2e.folder / 'mlruns' / 'mlflow.db'}")
    for t in e2e.trials:
        params = client.get_run(t.user_attrs["mlflow_run_id"]).data.params
        # the value Optuna sampled is the value the run trained with
        assert float(params["train.lr"]) == t.params["train.lr"]


def test_child_runs_log_the_full_dotted_config(e2e):
    client = mlflow.MlflowClient(f"sqlite:///{e2e.folder / 'mlruns' / 'mlflow.db'}")
    params = client.get_run(e2e.trials[0].user_attrs["mlflow_run_id"]).data.params
    # every config key, not only the searched ones, with the study's values
    assert set(params) == set(flatten(Config()))
    assert (params["model.preset"], params["train.epochs"]) == ("lin2013", "3")


def test_child_runs_log_metrics_once_per_epoch(e2e):
    client = mlflow.MlflowClient(f"sqlite:///{e2e.folder / 'mlruns' / 'mlflow.db'}")
    for t in e2e.trials:
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            history = client.get_metric_history(t.user_attrs["mlflow_run_id"], key)
            # step = epoch, 1 to train.epochs
            assert sorted(m.step for m in history) == [1, 2, 3], key


def test_completed_child_runs_end_finished_with_their_state(e2e):
    kids = children(e2e.folder, "e2e")
    # each trial's run says how the trial ended
    assert set(kids["tags.nin.state"]) == {"complete"}
    assert set(kids["status"]) == {"FINISHED"}


def test_no_run_is_left_running(e2e):
    # the parent is never active and every child was ended
    assert "RUNNING" not in set(runs(e2e.folder, "e2e")["status"])


def test_summary_counts_trials_now_and_in_total(e2e):
    # trials run by this command, then the study's totals against the target
    assert (
        "this run: 3 trials (3 complete, 0 pruned, 0 failed); "
        "in total 3 finished of 3 targeted, 0 failed"
    ) in e2e.res.stdout


def test_summary_names_the_best_trial_and_says_it_improved(e2e):
    best = max(e2e.trials, key=lambda t: t.value)
    # best value and params as in storage; a new study has improved by definition
    assert (
        f"best best_val_acc {best.value:.4f} (trial {best.number}: "
        f"train.lr={best.params['train.lr']:.4g}); improved during this run"
    ) in e2e.res.stdout


# --- pruning, divergence, rejected samples ----------------------------------------------


def test_pruned_trial_records_its_epoch_and_ends_finished(work: Path, data: Path):
    write_study(
        work,
        "prune",
        data,
        params={"train.lr": "{ low = 1e-5, high = 2e-5, log = true }"},
        pruner='type = "median"\nn_startup_trials = 1\nn_warmup_steps = 0',
    )
    # a finished trial that reached val_acc 1.0 at every epoch: the median pruner stops any
    # trial below it, and at lr 1e-5 the next trial stays far below it after one epoch
    study = optuna.create_study(study_name="prune", storage=sqlite_url(work), direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.lr": 1e-5},
            distributions={
                "train.lr": optuna.distributions.FloatDistribution(1e-5, 2e-5, log=True)
            },
            value=1.0,
            intermediate_values={1: 1.0, 2: 1.0},
        )
    )
    nin_here_ok("sweep", "study.toml", cwd=work)
    trial = trials(work, "prune")[1]
    # pruned after its first epoch, and Optuna knows where
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["pruned_epoch"] == 1
    run = children(work, "prune").iloc[0]
    # the MLflow run is a normal end (FINISHED), tagged pruned at epoch 1
    assert (run["tags.nin.state"], run["tags.nin.pruned_epoch"]) == ("pruned", "1")
    assert run["status"] == "FINISHED"


def test_diverged_trial_is_pruned_at_once_and_its_run_fails(work: Path, data: Path):
    write_study(
        work,
        "diverge",
        data,
        n_trials=1,
        params={"train.lr": "{ low = 50.0, high = 100.0 }"},
        settings={"train.optimizer": "sgd"},
    )
    nin_here_ok("sweep", "study.toml", cwd=work)
    (trial,) = trials(work, "diverge")
    # a non-finite loss ends the trial in the first epoch, pruned with the reason
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["pruned_epoch"] == 1
    assert "non-finite at epoch 1" in trial.user_attrs["reason"]
    run = children(work, "diverge").iloc[0]
    # in MLflow a diverged run failed
    assert (run["tags.nin.state"], run["status"]) == ("diverged", "FAILED")


def test_a_trial_that_never_leaves_chance_completes_marked_at_chance(work: Path, data: Path):
    # the plain NiN (ReLU on the logits, no BatchNorm) at lr ~1e-6: its val accuracy stays at
    # chance; the trial completes (no collapse: it never learned), marked in Optuna and MLflow
    write_study(
        work,
        "flat",
        data,
        n_trials=1,
        params={"train.lr": "{ low = 1e-6, high = 2e-6 }"},
        settings={"model.final_relu": True, "train.optimizer": "sgd", "train.epochs": 1},
    )
    nin_here_ok("sweep", "study.toml", cwd=work)
    (trial,) = trials(work, "flat")
    assert trial.state == TrialState.COMPLETE
    assert at_chance(trial.user_attrs["val_acc"][-1], 64, 10)
    assert trial.user_attrs["at_chance"] is True
    assert children(work, "flat").iloc[0]["tags.nin.at_chance"] == "true"


@pytest.fixture(scope="module")
def unrunnable(tmp_path_factory, data: Path, mlflow_db: Path) -> SimpleNamespace:
    """A 4-trial sweep whose every sample is too small for the d2l NiN, run once."""
    folder = with_mlflow_store(tmp_path_factory.mktemp("unrunnable"), mlflow_db)
    write_study(
        folder,
        "reject",
        data,
        n_trials=4,
        params={"data.resize": "{ choices = [8] }"},
        settings={"model.preset": "d2l", "model.width": 0.125},  # data.resize: the search's
    )
    res = swept_here(folder)
    res.folder, res.trials = folder, trials(folder, "reject")
    return res


def test_sample_the_network_cannot_take_fails_untrained_with_the_reason(unrunnable):
    # every attempt fails, naming key and fix
    assert {t.state for t in unrunnable.trials} == {TrialState.FAIL}
    reason = unrunnable.trials[0].user_attrs["fail_reason"]
    assert "data.resize" in reason and "smallest input that works is 67" in reason
    kids = children(unrunnable.folder, "reject")
    # each attempt's run failed, and none trained: no metric was logged
    assert set(kids["tags.nin.state"]) == {"failed"} and set(kids["status"]) == {"FAILED"}
    assert not [c for c in kids.columns if c.startswith("metrics.")]


def test_failures_for_one_reason_stop_the_run_after_three_in_a_row(unrunnable):
    # three failed trials (FAILS_IN_A_ROW) for a target of 4, not 3 x 4 = 12
    assert len(unrunnable.trials) == 3
    # the output names the reason once; the other two trials point to the first
    reason = unrunnable.trials[0].user_attrs["fail_reason"]
    assert unrunnable.out.count(reason) == 1, unrunnable.out
    assert unrunnable.out.count("failed as trial 0 did") == 2, unrunnable.out


def test_a_sweep_whose_every_trial_failed_exits_1_and_its_last_line_says_why(unrunnable):
    reason = unrunnable.trials[0].user_attrs["fail_reason"]
    # a failure to cron: exit 1, after the summary, with how many failed and the first reason
    assert unrunnable.code == 1
    assert "this run: 3 trials (0 complete, 0 pruned, 3 failed)" in unrunnable.out
    last = unrunnable.err.strip().splitlines()[-1]
    assert last == f"error: 3 trials failed and none finished; the first (trial 0): {reason}"


def test_a_budget_no_sample_meets_exits_1_and_its_last_line_says_so(work: Path, data: Path):
    write_study(
        work,
        "nobudget",
        data,
        n_trials=1,
        top='[constraints]\n"macs" = { max = 1 }',
        sampler='type = "tpe"\nseed = 0',
    )
    res = swept_here(work)
    over = trials(work, "nobudget")
    # every sample was rejected untrained (30 x n_trials of them), and the run exits 1
    assert len(over) == 30 and all("over_budget" in t.user_attrs for t in over)
    assert res.code == 1
    last = res.err.strip().splitlines()[-1]
    assert last.startswith("error: all 30 samples were over the [constraints] budget"), res.err
    assert over[0].user_attrs["over_budget"] in last


@pytest.mark.parametrize(
    "params",
    [
        {"data.resize": "{ low = 0, high = 70 }"},  # 0 (28 px) is too small, 70 is not
        {"data.resize": "{ choices = [8, 96] }"},
        {"model.preset": '{ choices = ["d2l", "lin2013"] }'},  # lin2013 takes 16 px
    ],
    ids=["range", "choices", "preset"],
)
def test_a_search_that_can_sample_a_config_that_fits_is_not_refused(
    tmp_path: Path, data: Path, params: dict
):
    # the d2l NiN at 16 px does not fit, and each search's first value is too small; but some
    # sample of each fits: check_space lets it run (its other samples fail at run time)
    settings = {"data.resize": 16} if "data.resize" not in params else {}
    settings |= {"model.preset": "d2l"} if "model.preset" not in params else {}
    study = load_study(str(write_study(tmp_path, "s", data, params=params, settings=settings)))
    assert check_space(study) is None
    # and a sample that does not fit is chance there, not a reason to stop the run
    assert space_fits(study) == (True, None)


def test_a_search_of_many_keys_that_can_fit_is_found_to_fit(tmp_path: Path, data: Path):
    # 2 presets x 2^7 ends of seven ranges = 256 combinations, past SPACE_CHECKS: the key that
    # decides the geometry, listed first, is still tried both ways (half the samples fit)
    params = {"model.preset": '{ choices = ["d2l", "lin2013"] }'}
    params |= {f"train.{k}": "{ low = 0.0, high = 0.5 }" for k in ("weight_decay", "momentum")}
    params |= {"model.dropout": "{ low = 0.0, high = 0.5 }"}
    params |= {"train.lr": "{ low = 1e-3, high = 0.3, log = true }"}
    params |= {"train.label_smoothing": "{ low = 0.0, high = 0.2 }"}
    params |= {"train.epochs": "{ low = 1, high = 2 }", "train.seed": "{ low = 0, high = 3 }"}
    study = load_study(
        str(write_study(tmp_path, "s", data, params=params, settings={"data.resize": 16}))
    )
    assert len(study.params) == 8
    assert space_fits(study) == (True, None)


def test_rejected_samples_stop_the_run_only_where_no_sample_fits():
    from nin_search.search.workers import _same_failure

    reason = "data.resize: a 8x8 input is too small for the d2l NiN"
    rejected = [
        optuna.trial.create_trial(
            state=TrialState.FAIL, user_attrs={"fail_reason": reason, "sample_rejected": True}
        )
        for _ in range(3)
    ]
    # where no sample fits (or check_space could not tell), three in a row stop the run ...
    assert _same_failure(rejected, rejections=True)
    # ... where some sample fits (data.resize in [8, 96]), three 8s in a row do not
    assert not _same_failure(rejected, rejections=False)
    # a failure in training (not the sample) stops it either way; two reasons do not
    crashed = [optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "x"})]
    assert _same_failure(crashed * 3, rejections=False)
    other = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "y"})
    assert not _same_failure(crashed * 2 + [other], rejections=True)


# --- resuming ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, data: Path, mlflow_db: Path) -> SimpleNamespace:
    """--n-trials 2, then the file's n_trials = 3, then once more."""
    folder = with_mlflow_store(tmp_path_factory.mktemp("resume"), mlflow_db)
    write_study(folder, "resume", data, n_trials=3)
    first = nin_here_ok("sweep", "study.toml", "--n-trials", "2", cwd=folder)
    second = nin_here_ok("sweep", "study.toml", cwd=folder)
    third = nin_here_ok("sweep", "study.toml", cwd=folder)
    return SimpleNamespace(folder=folder, first=first, second=second, third=third)


def test_n_trials_option_stops_at_its_own_target(resumed):
    # the first run's summary: 2 finished of the 2 it was asked for
    assert "in total 2 finished of 2 targeted" in resumed.first.stdout


def test_rerun_continues_the_study_up_to_the_file_target(resumed):
    # the second run starts from 2 finished and adds one trial
    assert "2 of 3 trials finished" in resumed.second.stdout
    assert "this run: 1 trials (1 complete" in resumed.second.stdout
    assert [t.state for t in trials(resumed.folder, "resume")] == [TrialState.COMPLETE] * 3


def test_rerun_draws_new_values_instead_of_repeating_the_first_run(resumed):
    lrs = [t.params["train.lr"] for t in trials(resumed.folder, "resume")]
    # the seeded sampler does not restart its sequence: three trials, three values
    assert len(set(lrs)) == 3, lrs


def test_rerun_at_the_target_does_nothing(resumed):
    # the third run finds 3 of 3 and says so instead of running trials
    assert "nothing to do" in resumed.third.stdout
    assert not [line for line in resumed.third.stdout.splitlines() if line.startswith("trial ")]
    assert len(trials(resumed.folder, "resume")) == 3


def test_reruns_keep_the_one_parent_run(resumed):
    parent = parents(resumed.folder, "resume")
    # one parent across three commands, and every one of them named it
    assert len(parent) == 1
    run_id = parent.iloc[0]["run_id"]
    assert all(
        f"parent run {run_id}" in r.stdout for r in (resumed.first, resumed.second, resumed.third)
    )
    assert set(children(resumed.folder, "resume")["tags.mlflow.parentRunId"]) == {run_id}


# --- several workers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_at_once(tmp_path_factory, data: Path) -> SimpleNamespace:
    """Two sweep commands started together on fresh default (SQLite) stores."""
    folder = tmp_path_factory.mktemp("two")
    write_study(folder, "two", data, n_trials=4)
    procs = [start_sweep("study.toml", cwd=folder) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    return SimpleNamespace(
        folder=folder,
        codes=[p.returncode for p in procs],
        stderr="".join(err for _, err in outs),
        trials=trials(folder, "two"),
    )


def test_two_workers_both_succeed_without_locking_errors(two_at_once):
    # both commands end cleanly, and SQLite never refused a write
    assert two_at_once.codes == [0, 0], two_at_once.stderr
    assert "database is locked" not in two_at_once.stderr
    assert "Traceback" not in two_at_once.stderr


def test_two_workers_finish_every_trial_they_start(two_at_once):
    states = [t.state for t in two_at_once.trials]
    # no trial failed or was left running, and together they reached the target
    assert set(states) == {TrialState.COMPLETE}
    assert len(states) >= 4


def test_two_workers_never_share_a_trial_number(two_at_once):
    numbers = [t.number for t in two_at_once.trials]
    # numbers are unique and gapless
    assert sorted(numbers) == list(range(len(numbers)))


def test_two_workers_draw_different_values(two_at_once):
    lrs = [t.params["train.lr"] for t in two_at_once.trials]
    # each worker has its own seed, so neither repeats the other's trials
    assert len(set(lrs)) == len(lrs), lrs


def test_two_workers_log_one_parent_and_one_child_per_trial(two_at_once):
    # both commands found the same parent run
    assert len(parents(two_at_once.folder, "two")) == 1
    kids = children(two_at_once.folder, "two")
    # every trial has its run, and no run lacks a trial
    assert sorted(kids["run_id"]) == sorted(
        t.user_attrs["mlflow_run_id"] for t in two_at_once.trials
    )


# --- crashes and Ctrl-C -----------------------------------------------------------------


def test_killed_worker_trial_is_failed_retried_and_its_run_ended(work: Path, data: Path):
    # long trials, so the kill lands in one; the rerun shortens them
    write_study(work, "kill", data, n_trials=1, settings={"train.epochs": 100})
    beat = {"NIN_SEARCH_HEARTBEAT_S": "1"}  # a silent trial is stale after 3 s
    proc = start_sweep("study.toml", cwd=work, env=beat)
    killed = wait_for_running_trial(proc, work, "kill")
    proc.kill()  # SIGKILL: no finally, no atexit, the trial stays RUNNING
    proc.communicate()
    time.sleep(3.5)  # past the grace period
    nin_here_ok("sweep", "study.toml", "--set", "train.epochs=2", cwd=work, env=beat)  # rerun
    by_number = {t.number: t for t in trials(work, "kill")}
    dead = by_number[killed]
    (retry,) = [t for t in by_number.values() if t.system_attrs.get("failed_trial") == killed]
    # the lost trial is failed, and its retry ran the same params to completion
    assert dead.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    # the study reached its target with the retry
    assert [t.state for t in by_number.values()].count(TrialState.COMPLETE) == 1
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(dead.user_attrs["mlflow_run_id"])
    # the killed trial's run is not left RUNNING
    assert (run.info.status, run.data.tags["nin.state"]) == ("FAILED", "failed")


def test_ctrl_c_fails_the_trial_kills_its_run_and_the_rerun_resumes(work: Path, data: Path):
    write_study(work, "ctrlc", data, n_trials=1, settings={"train.epochs": 100})
    proc = start_sweep("study.toml", cwd=work)
    number = wait_for_running_trial(proc, work, "ctrlc")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # Ctrl-C ends the command as the shell expects: 130, or death by SIGINT (which the shell
    # also shows as 130) when the interrupt landed in exec'd code, where CPython marks it
    # unhandled even though main() caught it
    assert proc.returncode in (130, -signal.SIGINT), err
    assert err.strip().splitlines()[-1] == "interrupted"
    trial = trials(work, "ctrlc")[number]
    # the interrupted trial fails, and its MLflow run says it was killed
    assert trial.state == TrialState.FAIL
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert (run.info.status, run.data.tags["nin.state"]) == ("KILLED", "interrupted")
    nin_here_ok("sweep", "study.toml", "--set", "train.epochs=2", cwd=work)
    # the next run goes on to the target
    assert [t.state for t in trials(work, "ctrlc")].count(TrialState.COMPLETE) == 1


# --- other storages ---------------------------------------------------------------------


def test_journal_file_storage_runs_a_study_to_completion(work: Path, data: Path):
    write_study(work, "journal", data, n_trials=2)
    log = work / "study.log"
    nin_here_ok("sweep", "study.toml", "--storage", str(log), cwd=work)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
    # the study lives in the journal file, complete, and no SQLite study store was made
    assert [t.state for t in trials(work, "journal", storage)] == [TrialState.COMPLETE] * 2
    assert not (work / "mlruns" / "optuna.db").exists()


@pytest.fixture(scope="module")
def on_postgres(tmp_path_factory, data: Path, mlflow_db: Path, pg_url: str):
    """`--workers 2` on one study on the server, deleted afterwards."""
    folder = with_mlflow_store(tmp_path_factory.mktemp("pg"), mlflow_db)
    name = f"pg-{uuid.uuid4().hex[:12]}"  # reruns and parallel CI jobs never collide
    write_study(folder, name, data, n_trials=3)
    try:
        res = sweep_ok("study.toml", "--storage", pg_url, "--workers", "2", cwd=folder)
        study = optuna.load_study(study_name=name, storage=pg_url)
        yield SimpleNamespace(name=name, res=res, trials=study.trials, attrs=study.user_attrs)
    finally:
        with contextlib.suppress(KeyError):  # KeyError: the study was never created
            optuna.delete_study(study_name=name, storage=pg_url)


def test_two_workers_share_a_study_on_postgresql(on_postgres):
    # the command opened the study on the server, and so did each of its two workers ...
    assert on_postgres.res.stdout.count(f"study {on_postgres.name!r} at postgresql") == 1
    assert on_postgres.attrs["workers_started"] == 2
    states = [t.state for t in on_postgres.trials]
    # ... and together they finished every trial they started, up to the target
    assert set(states) == {TrialState.COMPLETE} and len(states) >= 3


def test_postgresql_password_is_masked_in_the_output(on_postgres, pg_url: str):
    res = on_postgres.res
    # the URL is shown with *** for the password, which appears nowhere
    assert make_url(pg_url).render_as_string(hide_password=True) in res.stdout
    assert "***" in res.stdout
    assert make_url(pg_url).password not in res.stdout + res.stderr


# --- bad input: one line, exit code 2, nothing written -----------------------------------

BAD = [
    ("unknown top-level key", {"top": "trails = 3"}, "study.toml: unknown key(s) trails"),
    (
        "unknown param key",
        {"params": {"train.lrr": "{ low = 0.1, high = 0.2 }"}},
        'study.toml: [params] "train.lrr": unknown key',
    ),
    ("wrong type", {"n_trials": '"x"'}, "study.toml: n_trials = 'x' is not allowed"),
    (
        "low above high",
        {"params": {"train.lr": "{ low = 0.3, high = 0.1 }"}},
        'study.toml: [params] "train.lr": low = 0.3 is above high = 0.1',
    ),
    ("empty params", {"params": {}}, "study.toml: [params] is empty"),
    (
        "unknown sampler",
        {"sampler": 'type = "anneal"'},
        "study.toml: [sampler] type = 'anneal' is not allowed",
    ),
    (
        "unknown pruner",
        {"pruner": 'type = "patient"'},
        "study.toml: [pruner] type = 'patient' is not allowed",
    ),
    (
        "bad sampler argument",
        {"sampler": 'type = "tpe"\nbogus = 1'},
        "study.toml: [sampler] tpe:",
    ),
]


@pytest.mark.parametrize(("what", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_study_file_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, data: Path, monkeypatch, capfd, what: str, change: dict, message: str
):
    write_study(tmp_path, "bad", data, **change)
    assert message in sweep_refused(tmp_path, monkeypatch, capfd)


def test_unreachable_storage_is_one_line_with_the_password_masked(
    tmp_path: Path, data: Path, monkeypatch, capfd
):
    write_study(tmp_path, "bad", data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = cli(["sweep", "study.toml", "--storage", "postgresql://u:secret@127.0.0.1:1/db"])
    out, err = capfd.readouterr()
    # exit code 2, one line naming the storage with its password masked
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "--storage postgresql://u:***@127.0.0.1:1/db cannot be opened" in err
    assert "secret" not in out + err
    # nothing was written: no MLflow store either
    assert not (tmp_path / "mlruns").exists()
