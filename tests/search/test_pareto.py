"""Accuracy against size through the CLI on real SQLite stores: a two-objective sweep (its
Pareto front in Optuna, MLflow and the report), resume, a MACs budget that rejects samples
untrained, and the study files Optuna cannot run (one line, exit 2, nothing written)."""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pandas as pd
import pytest
from builders import (
    children,
    nin_here,
    nin_here_ok,
    parents,
    sqlite_url,
    sweep_ok,
    sweep_refused,
    with_mlflow_store,
    write_study,
)
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nin_search.spec.study import load_study

PARETO = 'objective = ["best_val_acc", "macs"]'
# widths 0.125 and 0.5 of the tiny NiN: 968,448 and 13,605,888 MACs at 16 px
WIDTHS = {"model.width": "{ choices = [0.125, 0.5] }"}
SPACE = WIDTHS | {"train.lr": "{ low = 1e-3, high = 1e-2, log = true }"}


def write_sized(folder: Path, name: str, data: Path, **kw) -> Path:
    """write_study searching model.width: the tables leave it at its default, 1.0."""
    path = write_study(folder, name, data, **kw)
    path.write_text(path.read_text().replace("width = 0.25\n", ""))
    return path


@pytest.fixture(scope="module")
def pareto(tmp_path_factory, data: Path, mlflow_db: Path) -> SimpleNamespace:
    """Two trials of a two-objective study, resumed to its target of 4, then `report`."""
    folder = with_mlflow_store(tmp_path_factory.mktemp("pareto"), mlflow_db)
    write_sized(
        folder,
        "pareto",
        data,
        n_trials=4,
        params=SPACE,
        top=PARETO + '\n[reference]\nlabel = "tiny NiN"\nbest_val_acc = 0.5',
        sampler='type = "tpe"\nseed = 0\nn_startup_trials = 2',
    )
    first = nin_here_ok("sweep", "study.toml", "--n-trials", "2", cwd=folder)
    second = nin_here_ok("sweep", "study.toml", cwd=folder)
    report = cli_report(folder)
    study = optuna.load_study(study_name="pareto", storage=sqlite_url(folder))
    return SimpleNamespace(folder=folder, first=first, second=second, study=study, report=report)


def cli_report(folder: Path, name: str = "pareto") -> Path:
    """`report study.toml --out out` in folder (in this process); its report folder (what the
    command printed is in its stdout.txt)."""
    res = nin_here("report", "study.toml", "--out", "out", cwd=folder)
    # the report command succeeded
    assert res.returncode == 0, res.stderr
    (folder / "out" / name / "stdout.txt").write_text(res.stdout)
    return folder / "out" / name


def front_rows(out: str, n: int) -> list[list[str]]:
    """The Pareto table printed under 'Pareto front of ...': its header and n rows, split."""
    lines = out.split("Pareto front of")[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["trial"])
    return [row.split() for row in lines[start : start + 1 + n]]


def test_two_objectives_give_a_study_with_two_directions(pareto):
    # accuracy maximised, MACs minimised, in the file's order
    assert pareto.study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]


def test_resume_reaches_the_target_exactly(pareto):
    done = pareto.study.get_trials(states=(TrialState.COMPLETE,))
    # 2 trials, then 2 more up to n_trials = 4: no fifth, none failed or pruned
    assert len(pareto.study.trials) == 4
    assert len(done) == 4
    assert "2 of 4 trials finished" in pareto.second.stdout


def test_resume_with_other_objectives_of_the_same_directions_is_refused(pareto):
    # macs -> params: still (maximize, minimize), but the stored values are MACs
    text = (pareto.folder / "study.toml").read_text().replace('"macs"]', '"params"]')
    (pareto.folder / "other.toml").write_text(text)
    res = nin_here("sweep", "other.toml", cwd=pareto.folder)
    (pareto.folder / "other.toml").unlink()
    assert res.returncode == 2, res.stdout + res.stderr
    assert "was started with objective ['best_val_acc', 'macs']" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    study = optuna.load_study(study_name="pareto", storage=sqlite_url(pareto.folder))
    assert len(study.trials) == 4  # nothing ran


def test_trial_values_are_its_accuracy_and_its_macs(pareto):
    for t in pareto.study.trials:
        # the second objective is the model's MACs, the first its best val accuracy
        assert t.values[1] == t.user_attrs["macs"]
        assert t.values[0] == max(t.user_attrs["val_acc"])
        assert t.values[1] == {0.125: 968_448, 0.5: 13_605_888}[t.params["model.width"]]


def test_multi_objective_trials_report_no_intermediate_values(pareto):
    # Optuna cannot prune them: nothing is reported to a pruner
    assert all(t.intermediate_values == {} for t in pareto.study.trials)


def test_summary_prints_the_pareto_front_of_study_best_trials(pareto):
    front = sorted(t.number for t in pareto.study.best_trials)
    out = pareto.second.stdout
    assert f"Pareto front of best_val_acc (max), macs (min): {len(front)} trials" in out
    table = front_rows(out, len(front))
    # a header with the sizes and the sampled values, then one row per Pareto trial
    assert table[0] == ["trial", "best_val_acc", "macs", "params", "model.width", "train.lr"]
    assert sorted(int(row[0]) for row in table[1:]) == front


def test_report_prints_the_pareto_front_as_a_table(pareto):
    best = {t.number: t for t in pareto.study.best_trials}
    out = (pareto.report / "stdout.txt").read_text()
    # the table right under its heading line
    assert out.split("Pareto front of")[1].splitlines()[1].split()[0] == "trial"
    table = front_rows(out, len(best))
    assert table[0] == ["trial", "best_val_acc", "macs", "params", "model.width", "train.lr"]
    # one row per Pareto trial: its accuracy, MACs and params as the study holds them
    for row in table[1:]:
        t = best[int(row[0])]
        assert float(row[1]) == pytest.approx(t.values[0], abs=1e-4)
        assert row[2] == f"{t.values[1]:,.0f}" and row[3] == f"{t.user_attrs['params']:,}"
    assert sorted(int(row[0]) for row in table[1:]) == sorted(best)


def test_child_runs_log_every_objective(pareto):
    runs = children(pareto.folder, "pareto")
    by_trial = {int(r["tags.nin.trial"]): r for _, r in runs.iterrows()}
    for t in pareto.study.trials:
        run = by_trial[t.number]
        assert run["metrics.objective_best_val_acc"] == pytest.approx(t.values[0])
        assert run["metrics.objective_macs"] == t.values[1]


def test_parent_run_holds_the_pareto_front(pareto):
    parent = parents(pareto.folder, "pareto").iloc[0]
    front = sorted(t.number for t in pareto.study.best_trials)
    assert parent["tags.nin.pareto_trials"] == ",".join(map(str, front))
    mlflow.set_tracking_uri(f"sqlite:///{pareto.folder / 'mlruns' / 'mlflow.db'}")
    csv = mlflow.artifacts.load_text(f"runs:/{parent['run_id']}/pareto_front.csv")
    assert sorted(pd.read_csv(pd.io.common.StringIO(csv))["trial"]) == front


def test_report_pareto_front_csv_lists_study_best_trials(pareto):
    frame = pd.read_csv(pareto.report / "pareto_front.csv")
    best = {t.number: t for t in pareto.study.best_trials}
    # one row per Pareto trial, with its values, size and sampled values
    assert sorted(frame["trial"]) == sorted(best)
    for row in frame.to_dict("records"):
        t = best[row["trial"]]
        assert row["best_val_acc"] == pytest.approx(t.values[0])
        assert row["macs"] == t.values[1]
        assert row["params"] == t.user_attrs["params"]
        assert row["model.width"] == t.params["model.width"]
        assert row["train.lr"] == pytest.approx(t.params["train.lr"])


def test_report_writes_one_best_config_per_pareto_trial(pareto):
    front = {t.number: t for t in pareto.study.best_trials}
    written = sorted(pareto.report.glob("best_config_*.toml"))
    assert [p.name for p in written] == sorted(f"best_config_{n}.toml" for n in front)
    for n, t in front.items():
        cfg = tomllib.loads((pareto.report / f"best_config_{n}.toml").read_text())
        # the trial's own sampled values, ready for `train --config`
        assert cfg["model"]["width"] == t.params["model.width"]
        assert math.isclose(cfg["train"]["lr"], t.params["train.lr"])
    assert not (pareto.report / "best_config.toml").exists()


def test_report_draws_the_front_and_accuracy_against_macs(pareto):
    for name in ("pareto_front", "accuracy_vs_macs", "index"):
        assert (pareto.report / f"{name}.html").is_file(), name
    page = (pareto.report / "index.html").read_text()
    # the reference: the base config's MACs (width 1.0: 53,164,032) and its given accuracy
    assert "tiny NiN (53,164,032 MACs)" in page
    for t in pareto.study.best_trials:
        assert f"<td>{t.number}</td>" in page


def test_two_workers_finish_a_multi_objective_study_exactly(tmp_path: Path, data: Path, mlflow_db):
    folder = with_mlflow_store(tmp_path, mlflow_db)
    write_sized(folder, "duo", data, n_trials=3, params=SPACE, top=PARETO)
    # OMP_NUM_THREADS unset (the helpers set it to 1): --workers splits the cores between them
    res = sweep_ok("study.toml", "--workers", "2", cwd=folder, env={"OMP_NUM_THREADS": ""})
    study = optuna.load_study(study_name="duo", storage=sqlite_url(folder))
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert set(children(folder, "duo")["tags.nin.torch_threads"]) == {share}
    done = study.get_trials(states=(TrialState.COMPLETE,))
    # together they reach the target (each may finish the trial it had started when the other
    # reached it), and the parent prints the front of all their trials
    assert len(done) in (3, 4)
    front = len(study.best_trials)
    assert f"Pareto front of best_val_acc (max), macs (min): {front} trials" in res.stdout


# --- a budget: over-budget samples are rejected untrained -----------------------------------


@pytest.fixture(scope="module")
def budget(tmp_path_factory, data: Path, mlflow_db: Path) -> SimpleNamespace:
    return swept_and_reported(
        tmp_path_factory,
        data,
        mlflow_db,
        "budget",
        n_trials=6,
        params=WIDTHS,
        top='[constraints]\n"macs" = { max = 5e6 }',  # width 0.5 (13.6 M MACs) is over
        sampler='type = "tpe"\nseed = 0\nn_startup_trials = 3',
        pruner='type = "median"',
    )


def swept_and_reported(tmp_path_factory, data: Path, mlflow_db: Path, name: str, **kw):
    """A sized study file of this name (kw: write_study's), swept to its target, then `report`."""
    folder = with_mlflow_store(tmp_path_factory.mktemp(name), mlflow_db)
    write_sized(folder, name, data, **kw)
    res = nin_here_ok("sweep", "study.toml", cwd=folder)
    report = cli_report(folder, name)
    study = optuna.load_study(study_name=name, storage=sqlite_url(folder))
    return SimpleNamespace(folder=folder, res=res, study=study, report=report)


def test_over_budget_samples_are_never_trained(budget):
    over = [t for t in budget.study.trials if "over_budget" in t.user_attrs]
    # the seeded sampler drew width 0.5 at least once
    assert over
    runs = children(budget.folder, "budget")
    by_trial = {int(r["tags.nin.trial"]): r for _, r in runs.iterrows()}
    for t in over:
        # pruned before any epoch: no curve, no reported value, no val metric in MLflow
        assert t.state == TrialState.PRUNED
        assert t.intermediate_values == {} and "epochs" not in t.user_attrs
        assert math.isnan(by_trial[t.number].get("metrics.val_acc", math.nan))
        assert by_trial[t.number]["tags.nin.state"] == "over-budget"


def test_over_budget_samples_are_recorded_infeasible_with_their_size(budget):
    for t in budget.study.trials:
        # constraint = macs / max - 1: positive exactly when over budget
        assert t.constraints["macs"] == pytest.approx(t.user_attrs["macs"] / 5e6 - 1)
        assert (t.constraints["macs"] > 0) == ("over_budget" in t.user_attrs)
        assert t.user_attrs["macs"] == {0.125: 968_448, 0.5: 13_605_888}[t.params["model.width"]]


def test_n_trials_counts_trained_trials_only(budget):
    trained = [t for t in budget.study.trials if "over_budget" not in t.user_attrs]
    over = len(budget.study.trials) - len(trained)
    # six trained trials, all within budget, however many samples were rejected
    assert len(trained) == 6
    assert all(t.user_attrs["macs"] <= 5e6 for t in trained)
    assert f"{over} of {len(budget.study.trials)} samples over budget" in budget.res.stdout
    assert "best feasible best_val_acc" in budget.res.stdout


def test_report_gives_the_best_feasible_config_and_the_over_budget_count(budget):
    over = sum("over_budget" in t.user_attrs for t in budget.study.trials)
    page = (budget.report / "index.html").read_text()
    assert f"budget macs &lt;= 5,000,000: {over} of {len(budget.study.trials)} samples" in page
    cfg = tomllib.loads((budget.report / "best_config.toml").read_text())
    # the best trial is a feasible one: the width within budget
    assert cfg["model"]["width"] == 0.125


def test_tpe_learns_to_avoid_the_over_budget_config(budget):
    after_startup = [t for t in budget.study.trials if t.number >= 3]
    # once TPE models the study, the infeasible width is (nearly) never drawn again
    over = sum("over_budget" in t.user_attrs for t in after_startup)
    assert over <= 1, [(t.number, t.params) for t in budget.study.trials]


def test_diverged_multi_objective_trial_stops_at_once_and_its_run_fails(
    tmp_path: Path, data: Path, mlflow_db: Path
):
    folder = with_mlflow_store(tmp_path, mlflow_db)
    write_sized(
        folder,
        "mdiverge",
        data,
        n_trials=1,
        params={"train.lr": "{ low = 50.0, high = 100.0 }"},
        settings={"train.optimizer": "sgd", "model.width": 0.125},
        top=PARETO,
    )
    nin_here_ok("sweep", "study.toml", cwd=folder)
    (trial,) = optuna.load_study(study_name="mdiverge", storage=sqlite_url(folder)).trials
    # no pruner, yet a non-finite loss ends the trial in its first epoch, with the reason
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["pruned_epoch"] == 1
    assert "non-finite at epoch 1" in trial.user_attrs["reason"]
    run = children(folder, "mdiverge").iloc[0]
    assert (run["tags.nin.state"], run["status"]) == ("diverged", "FAILED")


@pytest.fixture(scope="module")
def budget_front(tmp_path_factory, data: Path, mlflow_db: Path) -> SimpleNamespace:
    """A two-objective study with a MACs budget, then `report`."""
    return swept_and_reported(
        tmp_path_factory,
        data,
        mlflow_db,
        "bfront",
        n_trials=3,
        params=SPACE,
        top=PARETO + '\n[constraints]\n"macs" = { max = 5e6 }',  # width 0.5 is over
        sampler='type = "tpe"\nseed = 0\nn_startup_trials = 2',
    )


def test_budget_with_two_objectives_keeps_the_front_feasible(budget_front):
    over = [t for t in budget_front.study.trials if "over_budget" in t.user_attrs]
    trained = [t for t in budget_front.study.trials if t.state == TrialState.COMPLETE]
    # the seeded sampler drew width 0.5 at least once; it never trained
    assert over and all(t.state == TrialState.PRUNED for t in over)
    assert len(trained) == 3 and all(t.user_attrs["macs"] <= 5e6 for t in trained)
    # the front holds feasible trials only, and the report's CSV lists exactly those
    front = sorted(t.number for t in budget_front.study.best_trials)
    assert set(front) <= {t.number for t in trained}
    assert sorted(pd.read_csv(budget_front.report / "pareto_front.csv")["trial"]) == front


def test_budget_with_two_objectives_is_counted_in_summary_and_report(budget_front):
    n = len(budget_front.study.trials)
    over = sum("over_budget" in t.user_attrs for t in budget_front.study.trials)
    line = f"{over} of {n} samples over budget"
    assert line in budget_front.res.stdout
    assert line in (budget_front.report / "stdout.txt").read_text()
    assert line in (budget_front.report / "index.html").read_text()


# --- what Optuna cannot run: one line, exit 2, nothing written ------------------------------

BAD = [
    (
        "pruner in a multi-objective study",
        {"top": PARETO, "pruner": 'type = "median"'},
        "study.toml: [pruner] type = 'median' is not allowed with objective = "
        "['best_val_acc', 'macs']: Optuna cannot prune a multi-objective study; use "
        'type = "none" (a diverged trial still stops at once), or one objective with '
        "[constraints]",
    ),
    (
        "unknown objective",
        {"top": 'objective = ["best_val_acc", "flops"]'},
        "study.toml: objective 'flops' (in ['best_val_acc', 'flops']) is not allowed; "
        "expected names from best_val_acc, final_val_acc, best_val_loss, macs, params",
    ),
    (
        "sizes only",
        {"top": 'objective = ["macs", "params"]', "pruner": 'type = "none"'},
        "needs one trained quantity",
    ),
    (
        "constraint on an unknown quantity",
        {"top": '[constraints]\n"flops" = { max = 1e6 }', "sampler": 'type = "tpe"'},
        'study.toml: [constraints] "flops": unknown quantity; allowed: macs, params',
    ),
    (
        "max = 0",
        {"top": '[constraints]\n"macs" = { max = 0 }', "sampler": 'type = "tpe"'},
        'study.toml: [constraints] "macs": max = 0 is not allowed; expected a number > 0',
    ),
    (
        "max < 0",
        {"top": '[constraints]\n"params" = { max = -1e6 }', "sampler": 'type = "tpe"'},
        'study.toml: [constraints] "params": max = -1000000.0 is not allowed',
    ),
    (
        "constraints with a sampler that ignores them",
        {"top": '[constraints]\n"macs" = { max = 1e6 }'},
        "study.toml: [constraints] needs [sampler] type = 'tpe', but got 'random'",
    ),
    (
        "cmaes in a multi-objective study",
        {"top": PARETO, "sampler": 'type = "cmaes"'},
        "study.toml: [sampler] type = 'cmaes' is single-objective",
    ),
]


@pytest.mark.parametrize(("what", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_pareto_study_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, data: Path, monkeypatch, capfd, what: str, change: dict, message: str
):
    kw = {"pruner": 'type = "none"'} | change
    write_sized(tmp_path, "bad", data, **kw)
    # exit code 2, one line naming the file, the key and the value, and what is allowed
    assert message in sweep_refused(tmp_path, monkeypatch, capfd)


def test_multi_objective_study_defaults_to_no_pruner(tmp_path: Path, data: Path):
    path = write_sized(tmp_path, "p", data, top=PARETO, pruner="")
    # no [pruner] type: none, since Optuna cannot prune it (median for one objective)
    assert load_study(str(path)).pruner["type"] == "none"


@pytest.mark.parametrize("path", ["studies/pareto_cpu.toml", "studies/pareto.toml"])
def test_shipped_pareto_studies_load(path: str):
    study = load_study(str(Path(__file__).parents[2] / path))
    # accuracy against MACs over the size knobs and the lr, no pruner
    assert study.objectives == ["best_val_acc", "macs"]
    assert {"model.width", "model.mlp_depth", "model.head", "model.reduction", "train.lr"} <= set(
        study.params
    )
    assert study.pruner["type"] == "none"
