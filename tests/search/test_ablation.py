"""Ablations and reports end to end: statistics against scipy, a tiny 2-arm x 2-seed ablation
through the CLI on real Optuna and MLflow SQLite stores, resume, reruns of failed cells, sweep
reports and every bad ablation file."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from builders import STUDY_TINY as TINY
from builders import (
    ablation_text,
    nin_here,
    nin_here_ok,
    nin_ok,
    runs,
    sqlite_url,
    start_nin,
    swept_here,
    trials,
    wait_for_running_trial,
    with_mlflow_store,
    write_study,
)
from optuna.trial import TrialState
from scipy import stats as sps

from nin_search.cli.main import main as cli
from nin_search.engine.config import load_config
from nin_search.reports import stats
from nin_search.spec.ablation import load_ablation

# --- statistics on fixed numbers ------------------------------------------------------------


def test_describe_matches_scipy_and_hand_values():
    x = [0.80, 0.82, 0.81, 0.85]
    d = stats.describe(x)
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.82)
    assert d["sd"] == pytest.approx(np.std(x, ddof=1))
    low, high = sps.t.interval(0.95, 3, loc=np.mean(x), scale=sps.sem(x))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((low, high))
    # by hand: sd 0.021602, t(0.975, 3) = 3.182446, half-width 0.034374
    assert d["ci_high"] - d["mean"] == pytest.approx(3.182446 * 0.021602 / 2, rel=1e-4)


def test_describe_small_samples():
    assert stats.describe([])["n"] == 0 and math.isnan(stats.describe([])["mean"])
    one = stats.describe([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["sd"]) and math.isnan(one["ci_low"])
    same = stats.describe([0.5, 0.5, 0.5])
    assert same["sd"] == 0 and same["ci_low"] == same["ci_high"] == 0.5


def test_paired_matches_scipy_ttest_rel():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 2.0, 2.0]  # differences 1, 0, 1, 2
    p = stats.paired(a, b)
    res = sps.ttest_rel(a, b)
    ci = res.confidence_interval(0.95)
    assert p["delta"] == pytest.approx(1.0)
    assert p["p_value"] == pytest.approx(res.pvalue)
    assert (p["delta_ci_low"], p["delta_ci_high"]) == pytest.approx((ci.low, ci.high))
    # by hand: t = 1 / (0.816497 / 2) = 2.449490 with 3 df, two-sided p = 0.0917
    assert p["p_value"] == pytest.approx(0.0917, abs=5e-4)


def test_paired_degenerate_cases_are_nan_not_errors():
    one = stats.paired([0.9], [0.8])
    assert one["delta"] == pytest.approx(0.1) and math.isnan(one["p_value"])
    constant = stats.paired([0.9, 0.8], [0.8, 0.7])  # every difference 0.1: no variance
    assert constant["delta"] == pytest.approx(0.1) and math.isnan(constant["delta_ci_low"])


def _cells(rows):
    cols = ["arm", "seed", "state", "value", "test_acc", "params", "macs", "img_per_s",
            "epoch_time_s", "peak_mem_mib"]  # fmt: skip
    return pd.DataFrame([dict(zip(cols, r, strict=True)) for r in rows])


def test_compare_pairs_by_seed_and_counts_diverged():
    cells = _cells(
        [
            ("base", 0, "complete", 0.80, None, 100, 1000, 50.0, 2.0, None),
            ("base", 1, "complete", 0.82, None, 100, 1000, 70.0, 2.0, None),
            ("base", 2, "complete", 0.78, None, 100, 1000, 60.0, 2.0, None),
            ("wide", 0, "complete", 0.85, None, 400, 3000, 20.0, 5.0, None),
            ("wide", 1, "diverged", None, None, 400, 3000, 20.0, 5.0, None),
            ("wide", 2, "complete", 0.80, None, 400, 3000, 20.0, 5.0, None),
        ]
    )
    t = stats.compare(cells, "base").set_index("arm")
    assert list(t.index) == ["base", "wide"]
    assert t.loc["base", "n"] == 3 and t.loc["wide", "n"] == 2
    assert t.loc["wide", "diverged"] == 1 and t.loc["base", "diverged"] == 0
    assert t.loc["base", "mean"] == pytest.approx(0.80)
    assert t.loc["base", "img_per_s"] == pytest.approx(60.0)
    assert t.loc["wide", "params"] == 400 and t.loc["wide", "macs"] == 3000
    # pairs: seeds 0 and 2 only (seed 1 diverged): differences 0.05 and 0.02
    res = sps.ttest_rel([0.85, 0.80], [0.80, 0.78])
    assert t.loc["wide", "delta"] == pytest.approx(0.035)
    assert t.loc["wide", "p_value"] == pytest.approx(res.pvalue)
    assert t.loc["base", "delta"] == 0 and math.isnan(t.loc["base", "p_value"])
    assert "peak_mem_mib" not in t.columns  # CPU runs: no peak memory column
    assert list(t.reset_index().columns[:10]) == stats.COLUMNS[:10]


# --- helpers ---------------------------------------------------------------------------------


# --- a tiny 2-arm x 2-seed ablation through the CLI ----------------------------------------


@pytest.fixture(scope="module")
def abl(tmp_path_factory, mlflow_db: Path, data: Path) -> SimpleNamespace:
    folder = with_mlflow_store(tmp_path_factory.mktemp("ablation"), mlflow_db)
    (folder / "abl.toml").write_text(ablation_text("abl", data))
    first = nin_here_ok("ablate", "abl.toml", "--final-eval", cwd=folder)
    return SimpleNamespace(folder=folder, first=first)


def test_ablation_runs_every_cell_once(abl):
    ts = trials(abl.folder, "abl")
    cells = sorted((t.params["arm"], t.params["train.seed"]) for t in ts)
    assert cells == [("fc", 0), ("fc", 1), ("gap", 0), ("gap", 1)]
    assert all(t.state == TrialState.COMPLETE for t in ts)
    assert "0 of 4 cells finished" in abl.first.stdout


def test_ablation_prints_every_epoch_of_every_cell(abl):
    # a 20-minute cell must not be silent: one line per epoch, its val_acc and the cell it is in
    epochs = TINY["train.epochs"]
    for t in trials(abl.folder, "abl"):
        cell = f"({t.params['arm']} seed {t.params['train.seed']})"
        for epoch, val_acc in t.intermediate_values.items():
            start = f"trial {t.number:>3} epoch {epoch}/{epochs}: val_acc {val_acc:.4f} ("
            lines = [ln for ln in abl.first.stdout.splitlines() if ln.startswith(start)]
            assert len(lines) == 1 and lines[0].endswith(cell), (start, abl.first.stdout)
            assert ("min left" in lines[0]) == (epoch < epochs), lines[0]
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1))


def test_ablation_runs_are_comparable_in_mlflow(abl):
    df = runs(abl.folder, "abl")
    parent = df[df["tags.nin.role"] == "study"]
    kids = df[df["tags.nin.role"] != "study"]
    assert len(parent) == 1 and len(kids) == 4
    assert set(kids["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
    assert sorted(kids["tags.mlflow.runName"]) == [
        "fc seed 0",
        "fc seed 1",
        "gap seed 0",
        "gap seed 1",
    ]
    assert sorted(zip(kids["tags.nin.arm"], kids["tags.nin.seed"], strict=True)) == [
        ("fc", "0"), ("fc", "1"), ("gap", "0"), ("gap", "1")
    ]  # fmt: skip
    assert set(kids["tags.nin.study"]) == {"abl"}
    # the dotted params differ exactly where the arms do
    assert set(kids[kids["tags.nin.arm"] == "fc"]["params.model.head"]) == {"fc"}
    assert set(kids["params.train.seed"]) == {"0", "1"}
    assert (kids["metrics.model_params"] > 0).all() and kids["metrics.test_acc"].notna().all()
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(parent["run_id"].iloc[0], "report")}
    assert {"report/summary.csv", "report/summary.md", "report/index.html"} <= artifacts
    assert "report/val_curves.html" in artifacts


def test_ablation_summary_matches_the_trials(abl):
    out = abl.folder / "reports" / "abl"
    table = pd.read_csv(out / "summary.csv").set_index("arm")
    # the columns in order (no peak memory on CPU), then the extras
    expected = [c for c in stats.COLUMNS if c != "peak_mem_mib"] + ["missing"]
    expected += ["test_mean", "test_sd", "test_ci_low", "test_ci_high", "test_delta"]
    expected += ["test_delta_ci_low", "test_delta_ci_high", "test_p_value"]
    assert list(table.reset_index().columns) == expected
    ts = trials(abl.folder, "abl")
    values = {(t.params["arm"], t.params["train.seed"]): t.value for t in ts}
    for arm in ("gap", "fc"):
        assert table.loc[arm, "n"] == 2
        assert table.loc[arm, "mean"] == pytest.approx(np.mean([values[arm, 0], values[arm, 1]]))
    delta = np.mean([values["fc", s] - values["gap", s] for s in (0, 1)])
    assert table.loc["fc", "delta"] == pytest.approx(delta)
    assert table.loc["gap", "delta"] == 0
    assert set(table["lr"]) == {0.003}  # one shared lr, and the notes say so
    test_delta = (
        sum(t.user_attrs["test_acc"] * (1 if t.params["arm"] == "fc" else -1) for t in ts) / 2
    )  # mean over the two seeds of fc - gap, paired by seed
    assert table.loc["fc", "test_delta"] == pytest.approx(test_delta)
    assert table.loc["fc", "params"] != table.loc["gap", "params"]
    assert table.loc["gap", "test_mean"] == pytest.approx(
        np.mean([t.user_attrs["test_acc"] for t in ts if t.params["arm"] == "gap"])
    )
    md = (out / "summary.md").read_text()
    assert "paired t-test (scipy.stats.ttest_rel)" in md and "| fc" in md
    assert "lr: train.lr 0.003 for every arm (no per-arm tuning" in md  # the shared lr, said
    assert "| arm " in abl.first.stdout  # printed in the terminal too
    for name in ("accuracy", "accuracy_vs_params", "accuracy_vs_macs", "val_curves"):
        assert "plotly" in (out / f"{name}.html").read_text()[:2000].lower()
    page = (out / "index.html").read_text()
    assert "Ablation abl" in page and page.count("plotly-graph-div") >= 4


def test_ablation_resume_and_more_seeds_skip_finished_cells(abl, tmp_path, data):
    again = nin_here_ok("ablate", "abl.toml", cwd=abl.folder)
    assert "nothing to do" in again.stdout
    assert len(trials(abl.folder, "abl")) == 4
    more = nin_here_ok("ablate", "abl.toml", "--seeds", "3", cwd=abl.folder)
    ts = trials(abl.folder, "abl")
    new = sorted((t.params["arm"], t.params["train.seed"]) for t in ts[4:])
    assert new == [("fc", 2), ("gap", 2)]  # only the new seed's cells ran
    assert "4 of 6 cells finished" in more.stdout
    table = pd.read_csv(abl.folder / "reports" / "abl" / "summary.csv").set_index("arm")
    assert table.loc["gap", "n"] == 3


def test_ablation_reruns_a_failed_cell_only(work, data):
    (work / "abl.toml").write_text(ablation_text("fails", data, seeds="[0]"))
    nin_here_ok("ablate", "abl.toml", cwd=work)
    study = optuna.load_study(study_name="fails", storage=sqlite_url(work))
    # an interrupted cell: the fc run of seed 2 failed (as after Ctrl-C)
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params={"arm": "fc", "train.seed": 2},
            distributions={
                "arm": study.trials[0].distributions["arm"],
                "train.seed": optuna.distributions.IntDistribution(0, 2),
            },
            system_attrs={"nin_cell": {"arm": "fc", "train.seed": 2}},
        )
    )
    res = nin_here_ok("ablate", "abl.toml", "--seeds", "3", cwd=work)
    ts = trials(work, "fails")
    ran = [(t.params["arm"], t.params["train.seed"]) for t in ts[3:]]
    # the failed cell again, first (its snapshot's epochs wait for it), though it is the last
    # in the grid's order (gap 1, fc 1, gap 2, fc 2) and this command's worker has offset 1
    assert ran[0] == ("fc", 2)
    assert sorted(ran) == [("fc", 1), ("fc", 2), ("gap", 1), ("gap", 2)]
    assert all(t.state == TrialState.COMPLETE for t in ts[3:])
    assert "2 of 6 cells finished" in res.stdout


def test_an_ablation_whose_every_cell_failed_exits_1_and_its_last_line_says_why(work, data):
    # both arms are too small for the d2l NiN at 16 px: run past check_arms, each cell fails
    arms = {"gap": {"model.preset": "d2l"}, "fc": {"model.preset": "d2l", "model.head": "fc"}}
    (work / "study.toml").write_text(ablation_text("nocell", data, seeds="[0]", arms=arms))
    res = swept_here(work, "ablate")
    tried = trials(work, "nocell")
    reason = tried[0].user_attrs["fail_reason"]
    assert "too small for the d2l NiN" in reason
    # both cells failed, none finished: exit 1, with how many and the first reason last
    assert [t.state for t in tried] == [TrialState.FAIL] * 2
    assert res.code == 1
    last = res.err.strip().splitlines()[-1]
    assert last == f"error: 2 cells failed and none finished; the first (trial 0): {reason}"


CELLS = [{"arm": a, "train.seed": s} for s in range(3) for a in ("a", "b")]
DISTS = {
    "arm": optuna.distributions.CategoricalDistribution(["a", "b"]),
    "train.seed": optuna.distributions.IntDistribution(0, 2),
}


def add_cell_trial(study, state, arm, seed, params=True, **attrs):
    cell = {"arm": arm, "train.seed": seed}
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            params=cell if params else {},
            distributions=DISTS if params else {},
            value=0.5 if state == TrialState.COMPLETE else None,
            user_attrs=attrs,
            system_attrs={"nin_cell": cell},  # as CellSampler hands it out
        )
    )


def test_free_cells_put_unfinished_tries_first_and_skip_taken_ones():
    from nin_search.search.cells import free_cells

    study = optuna.create_study()  # in memory: free_cells reads only the trials' states
    add_cell_trial(study, TrialState.COMPLETE, "a", 0)
    add_cell_trial(
        study, TrialState.FAIL, "b", 2
    )  # stopped or killed: its snapshot may hold epochs
    add_cell_trial(study, TrialState.FAIL, "a", 1)
    add_cell_trial(study, TrialState.COMPLETE, "a", 1)  # then finished by a later try: not free
    add_cell_trial(study, TrialState.FAIL, "b", 0, fail_reason="config cannot run")  # rejected
    add_cell_trial(study, TrialState.FAIL, "b", 1, params=False)  # killed before its params
    order = [(c["arm"], c["train.seed"]) for c in free_cells(study, CELLS)]
    assert order == [("b", 1), ("b", 2), ("a", 2)]  # tried ones first, each in grid order
    add_cell_trial(study, TrialState.WAITING, "b", 1)  # its heartbeat retry, queued: taken
    add_cell_trial(study, TrialState.RUNNING, "b", 2)  # running elsewhere again: taken
    assert free_cells(study, CELLS) == [{"arm": "a", "train.seed": 2}]


def test_cell_sampler_hands_out_a_tried_cell_first_whatever_its_offset():
    from nin_search.search.cells import CellSampler

    study = optuna.create_study(sampler=CellSampler(CELLS, offset=1))
    add_cell_trial(study, TrialState.COMPLETE, "a", 0)
    add_cell_trial(study, TrialState.FAIL, "a", 2)

    def next_cell():
        trial = study.ask()
        return study._storage.get_trial(trial._trial_id).system_attrs["nin_cell"]

    assert next_cell() == {"arm": "a", "train.seed": 2}  # not offset 1 of the free cells
    # then the offset counts in the grid order of the cells still free: b0, a1, b1, b2
    assert next_cell() == {"arm": "a", "train.seed": 1}


def test_ablation_with_two_workers_finishes_every_cell(work, data):
    (work / "abl.toml").write_text(ablation_text("two", data))
    res = nin_ok("ablate", "abl.toml", "--workers", "2", cwd=work)
    done = [t for t in trials(work, "two") if t.state == TrialState.COMPLETE]
    cells = sorted((t.params["arm"], t.params["train.seed"]) for t in done)
    assert cells == [("fc", 0), ("fc", 1), ("gap", 0), ("gap", 1)]  # each once: no duplicates
    assert not [t for t in trials(work, "two") if t.state == TrialState.FAIL]
    assert res.stdout.count("# Ablation two") == 1  # one report, by the command, not per worker


def test_ablation_with_changed_settings_is_refused(abl):
    res = nin_here("ablate", "abl.toml", "--set", "train.lr=0.01", cwd=abl.folder)
    assert res.returncode == 2, res.stderr
    assert "train.lr: 0.003 -> 0.01" in res.stderr and "Traceback" not in res.stderr


# --- reports ---------------------------------------------------------------------------------


def test_report_of_an_ablation_by_name(abl, tmp_path):
    res = nin_here_ok("report", "abl", "--out", str(tmp_path), cwd=abl.folder)
    assert (tmp_path / "abl" / "summary.csv").is_file()
    assert "# Ablation abl" in res.stdout


def test_report_of_a_sweep(work, data):
    write_study(work, "rep", data, n_trials=4, settings={"train.epochs": 3},
                params={"train.lr": "{ low = 1e-3, high = 1e-2, log = true }",
                        "model.dropout": "{ low = 0.0, high = 0.5 }"})  # fmt: skip
    nin_here_ok("sweep", "study.toml", cwd=work)
    res = nin_here_ok("report", "study.toml", cwd=work)
    out = work / "reports" / "rep"
    study = optuna.load_study(study_name="rep", storage=sqlite_url(work))
    best = study.best_trial
    assert f"best best_val_acc {best.value:.4f} (trial {best.number}" in res.stdout
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 4 and "params_train.lr" in table.columns
    cfg = load_config(str(out / "best_config.toml"), [], None)
    assert cfg.train.lr == pytest.approx(best.params["train.lr"])
    assert cfg.model.dropout == pytest.approx(best.params["model.dropout"])
    assert cfg.data.resize == TINY["data.resize"]  # the study's shared settings too
    for name in ("optimization_history", "intermediate_values", "parallel_coordinate",
                 "param_importances", "slice"):  # fmt: skip
        assert (out / f"{name}.html").is_file(), name
    assert (out / "index.html").read_text().count("plotly-graph-div") == 5
    parent = runs(work, "rep").query("`tags.nin.role` == 'study'")["run_id"].iloc[0]
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(parent, "report")}
    assert {"report/index.html", "report/trials.csv", "report/best_config.toml"} <= names


def test_report_of_an_unknown_study_is_one_line(tmp_path):
    res = nin_here("report", "nope", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0
    assert "study 'nope' is not in sqlite:///mlruns/optuna.db" in res.stderr


# --- bad ablation files ------------------------------------------------------------------


BAD = {
    "unknown arm key": (
        {"arms": {"a": {"model.head": "gap"}, "b": {"model.hed": "fc"}}},
        "[arms.b]: unknown key 'model.hed'",
    ),
    "bad arm value": (
        {"arms": {"a": {"model.head": "gap"}, "b": {"model.head": "mlp"}}},
        "[arms.b]: model.head = 'mlp' is not allowed",
    ),
    "empty arms": ({"arms": {}}, "[arms] needs at least two arms"),
    "one arm": ({"arms": {"a": {"model.head": "gap"}}}, "[arms] needs at least two arms"),
    "unknown baseline": ({"top": 'baseline = "nope"'}, "baseline = 'nope' is not an arm"),
    "seed in an arm": (
        {"arms": {"a": {"train.seed": 3}, "b": {"model.head": "fc"}}},
        "train.seed is set by seeds",
    ),
    "bad seeds": ({"seeds": "[1, 1]"}, "seeds = [1, 1] is not allowed"),
    "unknown top key": ({"top": "n_trials = 3"}, "unknown key(s) n_trials"),
    "arm too small for the network": (
        {"arms": {"a": {"model.head": "gap"}, "b": {"model.preset": "d2l"}}},
        "smallest",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_ablation_file_exits_2_with_one_line_and_writes_nothing(
    case, tmp_path, data, monkeypatch, capsys
):
    kw, message = BAD[case]
    (tmp_path / "bad.toml").write_text(ablation_text("bad", data, **kw))
    monkeypatch.chdir(tmp_path)  # in-process: the CLI's own error path, without a new python
    assert cli(["ablate", "bad.toml"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("error: bad.toml") and err.count("\n") == 1
    assert not (tmp_path / "mlruns").exists()


def test_seeds_option_extends_or_cuts_the_list(tmp_path, data):
    (tmp_path / "a.toml").write_text(ablation_text("s", data, seeds="[3, 7]"))
    assert load_ablation(str(tmp_path / "a.toml")).seeds == [3, 7]
    assert load_ablation(str(tmp_path / "a.toml"), n_seeds=1).seeds == [3]
    assert load_ablation(str(tmp_path / "a.toml"), n_seeds=4).seeds == [3, 7, 0, 1]
    default = tmp_path / "b.toml"
    default.write_text(ablation_text("s", data).replace("seeds = [0, 1]", ""))
    study = load_ablation(str(default))
    assert study.seeds == [0, 1, 2] and study.baseline == "gap" and study.n_trials == 6


def test_shipped_ablation_files_load():
    names = {}
    for path in sorted(Path("studies").glob("ablate_*.toml")):
        study = load_ablation(str(path))
        names[path.name] = (study.baseline, list(study.arms))
        # at least three paired seeds, 0, 1, 2, ... (the precision check asks for five)
        assert study.seeds == list(range(len(study.seeds))) and len(study.seeds) >= 3
        # the shipped CPU-sized files run on the cpu profile; the family is GPU-sized
        assert study.profile == ("quick" if path.name == "ablate_family.toml" else "cpu")
    assert names["ablate_head.toml"] == ("gap", ["gap", "fc"])
    assert names["ablate_reduction.toml"] == ("one-step", ["one-step", "gradual"])
    assert names["ablate_mlp_depth.toml"][1] == ["depth-0", "depth-1", "depth-2", "depth-3"]
    assert names["ablate_mlp_kernel.toml"][1] == ["1x1", "3x3"]
    assert names["ablate_family.toml"][1] == ["d2l", "nin11", "nin16", "nin19"]
    assert names["ablate_precision.toml"] == ("fp32", ["fp32", "bf16"])
    assert len(load_ablation("studies/ablate_precision.toml").seeds) == 5
    # issue 12's reruns: each arm at its own finder lr, 10 epochs (near the plateau), no arm
    # fixing train.lr, and a study name of its own (never resuming the older shared-lr cells)
    for file in ("head", "reduction", "mlp_depth", "mlp_kernel"):
        study = load_ablation(f"studies/ablate_{file}.toml")
        assert study.per_arm == {"train.lr": {"per_arm": "lr-finder"}}, file
        assert study.base["train.epochs"] == 10, file
        assert not any("train.lr" in values for values in study.arms.values()), file
        assert study.name.endswith("-per-arm"), file


@pytest.mark.parametrize(
    ("path", "arm_name", "trial", "seeds"),
    [
        ("experiments/studies/pareto_check_cpu.toml", "w0375-fc", "14", [0, 1, 2]),
        ("experiments/studies/pareto_check2_cpu.toml", "w05-d1", "2", [0, 1, 2, 3, 4, 5]),
    ],
)
def test_pareto_check_reruns_the_front_trial_it_names_on_paired_seeds(
    path: str, arm_name: str, trial: str, seeds: list[int]
):
    import csv

    study = load_ablation(path)
    assert study.seeds == seeds and study.baseline == "reference" and study.profile == "cpu"
    with open("benchmarks/results/pareto_cpu/pareto_front.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["trial"] == trial)
    arm = study.arms[arm_name]
    for key in ("model.width", "model.mlp_depth", "model.head", "model.reduction"):
        assert str(arm[key]) == row[key].removesuffix(".0") or float(arm[key]) == float(row[key])
    assert abs(arm["train.lr"] / float(row["train.lr"]) - 1) < 0.01  # rounded to 3 digits
    assert study.arms["reference"] == {"train.lr": 0.02}  # the profile's NiN as it is


def test_killed_ablation_worker_cell_is_retried_under_its_own_arm(work, data):
    # long enough cells that the kill lands in one (a trial is killed as soon as it runs)
    text = ablation_text("kill", data, seeds="[0]").replace("epochs = 2", "epochs = 15")
    (work / "abl.toml").write_text(text)
    beat = {"NIN_SEARCH_HEARTBEAT_S": "1"}  # a silent trial is stale after 3 s
    proc = start_nin("ablate", "abl.toml", cwd=work, env=beat)
    killed = wait_for_running_trial(proc, work, "kill")
    proc.kill()  # SIGKILL: the trial stays RUNNING until its heartbeat is found stale
    proc.communicate()
    time.sleep(3.5)
    nin_here_ok("ablate", "abl.toml", cwd=work, env=beat)  # the rerun: in this process
    ts = {t.number: t for t in trials(work, "kill")}
    dead = ts[killed]
    (retry,) = [t for t in ts.values() if t.system_attrs.get("failed_trial") == killed]
    assert dead.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == dead.params  # the retry ran the dead trial's cell
    done = sorted(
        (t.params["arm"], t.params["train.seed"])
        for t in ts.values()
        if t.state == TrialState.COMPLETE
    )
    assert done == [("fc", 0), ("gap", 0)]  # every cell once, none twice
    cells = pd.read_csv(work / "reports" / "kill" / "cells.csv")
    row = cells[cells["trial"] == retry.number]
    assert row["arm"].item() == retry.params["arm"]  # reported under its own arm


@pytest.mark.parametrize(("cuda", "want"), [(False, "cpu"), (True, "d2l")])
def test_profile_auto_in_a_study_file_is_cpu_without_cuda_and_d2l_with_it(
    tmp_path, monkeypatch, cuda: bool, want: str
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    path = tmp_path / "a.toml"
    arms = '[arms.x]\n"model.head" = "gap"\n[arms.y]\n"model.head" = "fc"\n'
    path.write_text('name = "a"\nprofile = "auto"\n' + arms)
    # the file says auto; the study holds the profile it resolved to, as --profile auto does
    assert load_ablation(str(path)).profile == want
