"""Ablation verdicts that hold (issue 12): each arm at its own lr (lr-finder or a search per arm)
through the CLI on real Optuna and MLflow SQLite stores, the convergence flag, Holm and Wilcoxon
against hand values and scipy, paired test-set statistics, and bad per-arm specs."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
from builders import (
    _env,
    ablation_text,
    nin_here,
    nin_here_ok,
    nin_ok,
    runs,
    start_nin,
    trials,
    with_mlflow_store,
)
from optuna.trial import TrialState
from scipy import stats as sps

from nin_search.reports import stats
from nin_search.search.arm_lr import records
from nin_search.search.report import ablation_markdown

# --- statistics on fixed numbers ------------------------------------------------------------


def test_holm_matches_hand_values():
    # m = 3: sorted 0.01, 0.02, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, 1 x 0.04 = 0.04
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # monotone step-down: 2 x 0.03 = 0.06 < the first's 3 x 0.025 = 0.075, so it is lifted
    assert stats.holm([0.025, 0.03, 0.5]) == pytest.approx([0.075, 0.075, 0.5])
    capped = stats.holm([0.6, 0.7])  # 2 x 0.6 = 1.2: capped at 1
    assert capped == pytest.approx([1.0, 1.0])
    with_nan = stats.holm([0.01, float("nan"), 0.04])  # NaN stays out of the family (m = 2)
    assert with_nan[0] == pytest.approx(0.02) and math.isnan(with_nan[1])
    assert with_nan[2] == pytest.approx(0.04)


def test_holm_matches_statsmodels_when_installed():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = [0.001, 0.2, 0.013, 0.04, 0.5]
    expected = multitest.multipletests(p, method="holm")[1]
    assert stats.holm(p) == pytest.approx(list(expected))


def test_wilcoxon_from_six_pairs_matches_scipy():
    b = [0.90, 0.91, 0.90, 0.90, 0.91, 0.88]
    a = list(np.add(b, [-0.01, 0.02, 0.03, 0.04, 0.05, 0.06]))
    d = np.subtract(a, b)
    assert stats.wilcoxon(a, b) == pytest.approx(sps.wilcoxon(d).pvalue)
    # the smallest of six distinct differences negative: W- = 1, and of the 64 equally likely
    # sign patterns 2 have W- <= 1: exact two-sided p = 2 * 2 / 64 = 0.0625
    assert stats.wilcoxon(a, b) == pytest.approx(0.0625)
    assert math.isnan(stats.wilcoxon(a[:5], b[:5]))  # below six pairs: not reported
    assert math.isnan(stats.wilcoxon(a, a))  # no difference at all


def test_last_gain_and_converged_on_fixed_curves():
    assert stats.last_gain([0.5, 0.8, 0.85, 0.853]) == pytest.approx(0.003)  # last epoch
    # 20 epochs: the last 10% is 2 epochs
    curve = [0.5] * 17 + [0.80, 0.81, 0.83]
    assert stats.last_gain(curve) == pytest.approx(0.03)
    assert math.isnan(stats.last_gain([0.7])) and math.isnan(stats.last_gain(None))

    def cell(arm, seed, curve):
        return {"arm": arm, "seed": seed, "state": "complete", "value": curve[-1],
                "test_acc": None, "params": 1, "macs": 1, "img_per_s": 1.0,
                "epoch_time_s": 1.0, "peak_mem_mib": None, "val_acc": curve}  # fmt: skip

    cells = pd.DataFrame(
        [
            cell("flat", 0, [0.80, 0.900, 0.902]),
            cell("flat", 1, [0.80, 0.900, 0.904]),  # gains 0.2 and 0.4 points: converged
            cell("rising", 0, [0.50, 0.700, 0.800]),
            cell("rising", 1, [0.50, 0.700, 0.760]),  # gains 10 and 6 points: not converged
        ]
    )
    t = stats.compare(cells, "flat", {"flat": 0.01, "rising": 0.02}).set_index("arm")
    assert t.loc["flat", "last_gain"] == pytest.approx(0.003)
    assert t.loc["flat", "converged"] == True  # noqa: E712 (a numpy bool)
    assert t.loc["rising", "last_gain"] == pytest.approx(0.08)
    assert t.loc["rising", "converged"] == False  # noqa: E712
    assert t.loc["rising", "lr"] == 0.02
    assert "p_holm" not in t.columns  # two arms: one comparison, nothing to correct


def test_an_arm_at_chance_is_not_converged_and_the_report_says_so():
    def cell(arm, seed, curve, flat=False):
        return {"arm": arm, "seed": seed, "state": "complete", "value": curve[-1],
                "test_acc": None, "params": 1, "macs": 1, "img_per_s": 1.0,
                "epoch_time_s": 1.0, "peak_mem_mib": None, "val_acc": curve,
                "at_chance": flat}  # fmt: skip

    cells = pd.DataFrame(
        [
            cell("gap", 0, [0.80, 0.900, 0.902]),
            cell("gap", 1, [0.80, 0.900, 0.904]),
            cell("fc", 0, [0.10, 0.100, 0.100], flat=True),  # flat at chance: last gain 0
            cell("fc", 1, [0.80, 0.880, 0.882]),
        ]
    )
    t = stats.compare(cells, "gap", {"gap": 0.02, "fc": 1.12}).set_index("arm")
    assert (t.loc["gap", "at_chance"], t.loc["fc", "at_chance"]) == (0, 1)
    # its last gain is under 0.5 points, yet an arm with a seed at chance is not converged
    assert t.loc["fc", "last_gain"] < stats.CONVERGED_GAIN and t.loc["fc", "converged"] == False  # noqa: E712
    spec = {"objective": "best_val_acc", "baseline": "gap", "arms": {"gap": {}, "fc": {}},
            "seeds": [0, 1]}  # fmt: skip
    md = ablation_markdown("chance", spec, t.reset_index())
    assert (
        "- fc: 1 of 2 seeds ended at chance without having learned (nothing learned at lr "
        "1.12)" in md
    )
    # the flat arm did not "still gain" anything: no training-speed line for it
    assert "fc did not converge" not in md and "gap:" not in md


def test_converged_is_unknown_without_two_epochs():
    def cell(arm, seed, curve):
        return {"arm": arm, "seed": seed, "state": "complete", "value": curve[-1],
                "test_acc": None, "params": 1, "macs": 1, "img_per_s": 1.0,
                "epoch_time_s": 1.0, "peak_mem_mib": None, "val_acc": curve}  # fmt: skip

    cells = pd.DataFrame([cell(a, s, [0.8 + s / 100]) for a in ("x", "y") for s in range(3)])
    t = stats.compare(cells, "x")
    # one epoch: no last gain, and neither converged nor not converged
    assert t["last_gain"].isna().all() and list(t["converged"]) == [None, None]
    spec = {"objective": "best_val_acc", "baseline": "x", "arms": {"x": {}, "y": {}},
            "seeds": [0, 1, 2]}  # fmt: skip
    md = ablation_markdown("one-epoch", spec, t)
    assert "did not converge" not in md


def three_arm_summary() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Six seeds of three arms (the baseline and two others); b still rising at the end."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(6):
        for arm, shift in (("base", 0.0), ("a", 0.01), ("b", 0.003)):
            v = 0.85 + shift + rng.normal(0, 0.004)
            rows.append({"arm": arm, "seed": seed, "state": "complete", "value": v,
                         "test_acc": v - 0.01 + rng.normal(0, 0.002),
                         "params": 1, "macs": 1, "img_per_s": 1.0, "epoch_time_s": 1.0,
                         "peak_mem_mib": None,
                         "val_acc": [v - (0.05 if arm == "b" else 0.002), v]})  # fmt: skip
    cells = pd.DataFrame(rows)
    return cells, stats.compare(cells, "base")


def test_summary_notes_name_each_test_and_the_arm_that_did_not_converge():
    _, t = three_arm_summary()
    spec = {"objective": "best_val_acc", "baseline": "base", "arms": dict.fromkeys("base a b"),
            "seeds": list(range(6))}  # fmt: skip
    md = ablation_markdown("three", spec, t)
    # which test each p column is, and the correction's name with the number of comparisons
    assert "- statistics: p_value, delta_ci_low/high: paired t-test (scipy.stats.ttest_rel)" in md
    assert "- p_holm: the t-test's p Holm-corrected" in md and "(Holm 1979; 2 comparisons)" in md
    assert "- p_wilcoxon: Wilcoxon signed-rank test (scipy.stats.wilcoxon)" in md
    assert "(test_p_value: the paired t-test; test_p_wilcoxon and test_p_holm as above)" in md
    # two arms, three seeds: no Holm and no Wilcoxon column, so the note names neither
    cells, _ = three_arm_summary()
    two = cells[(cells["arm"] != "b") & (cells["seed"] < 3)]
    spec2 = {"objective": "best_val_acc", "baseline": "base", "arms": dict.fromkeys("base a"),
             "seeds": [0, 1, 2]}  # fmt: skip
    md2 = ablation_markdown("two", spec2, stats.compare(two, "base"))
    assert "(test_p_value: the paired t-test); only reported" in md2
    assert "p_holm" not in md2 and "p_wilcoxon" not in md2
    # b gained 5 points in its last epoch: one sentence says its verdict may reflect speed
    assert [line for line in md.splitlines() if "did not converge" in line] == [
        "- b did not converge (it still gained 5.00 points at the end): its verdict may "
        "reflect training speed"
    ]


def test_three_arms_get_holm_and_test_set_statistics():
    cells, t = three_arm_summary()
    t = t.set_index("arm")
    p = [sps.ttest_rel(cells[cells.arm == a].value, cells[cells.arm == "base"].value).pvalue
         for a in ("a", "b")]  # fmt: skip
    assert list(t.loc[["a", "b"], "p_value"]) == pytest.approx(p)
    assert list(t.loc[["a", "b"], "p_holm"]) == pytest.approx(stats.holm(p))
    assert math.isnan(t.loc["base", "p_holm"])
    d = cells[cells.arm == "a"].value.to_numpy() - cells[cells.arm == "base"].value.to_numpy()
    assert t.loc["a", "p_wilcoxon"] == pytest.approx(sps.wilcoxon(d).pvalue)
    ta, tb = (cells[cells.arm == x].test_acc.to_numpy() for x in ("a", "base"))
    assert t.loc["a", "test_delta"] == pytest.approx(np.mean(ta - tb))
    assert t.loc["a", "test_p_value"] == pytest.approx(sps.ttest_rel(ta, tb).pvalue)
    assert {"test_p_holm", "test_p_wilcoxon", "test_delta_ci_low"} <= set(t.columns)


# --- per-arm lr through the CLI ---------------------------------------------------------------

# sgd and adam have range tests that fall in different places: their lrs must differ
ARMS = {"sgd": {"train.optimizer": "sgd"}, "adam": {"train.optimizer": "adam"}}
FINDER = '[params]\n"train.lr" = { per_arm = "lr-finder" }\n[lr_finder]\nnum_iter = 40\n'


def per_arm_text(
    name: str, data: Path, params: str = FINDER, seeds: str = "[0, 1]", bn: bool = True, arms=None
) -> str:
    text = ablation_text(name, data, seeds=seeds, arms=arms or ARMS)
    if bn:  # a range test that falls on the tiny task; without BatchNorm it sits at ln 10
        text = text.replace("[model]\n", "[model]\nbatch_norm = true\n")
    return text.replace("lr = 0.003\n", "") + params  # the arms choose their own lr


def tuning_runs(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["tags.nin.role"] == "tuning"]


@pytest.fixture(scope="module")
def finder(tmp_path_factory, mlflow_db: Path, data: Path) -> SimpleNamespace:
    folder = with_mlflow_store(tmp_path_factory.mktemp("perarm"), mlflow_db)
    (folder / "abl.toml").write_text(per_arm_text("perarm", data))
    first = nin_here_ok("ablate", "abl.toml", cwd=folder)
    second = nin_here_ok("ablate", "abl.toml", cwd=folder)
    return SimpleNamespace(folder=folder, first=first, second=second)


def test_each_arm_trains_at_its_own_finder_lr(finder):
    ts = trials(finder.folder, "perarm")
    url = f"sqlite:///{finder.folder / 'mlruns' / 'optuna.db'}"
    chosen = records(optuna.load_study(study_name="perarm", storage=url).user_attrs)
    assert set(chosen) == {"sgd", "adam"}
    lrs = {arm: chosen[arm]["lr"] for arm in chosen}
    assert all(lr > 0 for lr in lrs.values()) and lrs["sgd"] != lrs["adam"]
    df = runs(finder.folder, "perarm")
    cells = df[df["tags.nin.arm"].notna() & (df["tags.nin.role"] != "tuning")]
    assert len(cells) == 4 and len(ts) == 4  # tuning runs are not cells
    for arm, lr in lrs.items():
        mine = cells[cells["tags.nin.arm"] == arm]
        assert {float(v) for v in mine["params.train.lr"]} == {lr}
        assert mine["tags.nin.lr_how"].str.startswith("lr-finder").all()
    tuning = tuning_runs(df)
    assert sorted(tuning["tags.nin.arm"]) == ["adam", "sgd"]
    parent = df[df["tags.nin.role"] == "study"]
    assert set(tuning["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
    assert float(parent["params.arms.sgd.train.lr"].iloc[0]) == lrs["sgd"]
    summary = pd.read_csv(finder.folder / "reports" / "perarm" / "summary.csv").set_index("arm")
    assert summary.loc["sgd", "lr"] == pytest.approx(lrs["sgd"])
    assert {"last_gain", "converged"} <= set(summary.columns)
    md = (finder.folder / "reports" / "perarm" / "summary.md").read_text()
    assert "lr per arm: sgd" in md and "lr-finder" in md
    assert "arm sgd: train.lr" in finder.first.stdout


def test_resume_reruns_no_tuning_and_no_cell(finder):
    df = runs(finder.folder, "perarm")
    assert len(tuning_runs(df)) == 2  # one finder run per arm, the rerun added none
    assert len(trials(finder.folder, "perarm")) == 4
    assert "lr-finder (40 steps" not in finder.second.stdout
    assert "nothing to do" in finder.second.stdout


def test_no_recommendation_means_the_arm_is_not_run(work, data):
    # the plain NiN (no BatchNorm) in 40 steps: the loss never falls for either arm
    (work / "abl.toml").write_text(per_arm_text("nolr", data, seeds="[0]", bn=False))
    res = nin_here_ok("ablate", "abl.toml", cwd=work)
    assert trials(work, "nolr") == []  # no cell ran at any other lr
    md = (work / "reports" / "nolr" / "summary.md").read_text()
    assert "sgd: not run: the lr-finder gave no recommendation" in md
    assert "adam: not run" in md and "nothing to do" in res.stdout


def test_finder_killed_mid_test_reruns_and_leaves_no_run_running(work, data):
    slow = FINDER.replace("num_iter = 40", "num_iter = 300")  # long enough to be killed in
    (work / "abl.toml").write_text(per_arm_text("kfind", data, slow, seeds="[0]"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nin_search", "ablate", "abl.toml"],
        cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    for line in proc.stdout:  # the first arm's range test is about to begin
        if "arm sgd: lr-finder (" in line:
            break
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # until its MLflow run exists
        df = runs(work, "kfind")
        if len(df) and len(tuning_runs(df)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGSTOP)  # frozen mid-test while the test looks
    left = tuning_runs(runs(work, "kfind"))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # the killed command left its finder run RUNNING, and kept no choice
    assert list(left["status"]) == ["RUNNING"] and list(left["tags.nin.arm"]) == ["sgd"]
    url = f"sqlite:///{work / 'mlruns' / 'optuna.db'}"
    assert records(optuna.load_study(study_name="kfind", storage=url).user_attrs) == {}
    res = nin_here_ok("ablate", "abl.toml", cwd=work)  # the rerun: in this process
    assert "arm sgd: lr-finder (" in res.stdout  # the killed step ran again
    df = runs(work, "kfind")
    tuning = tuning_runs(df).set_index("run_id")
    # the dead run ended FAILED; one finished finder run per arm; nothing left RUNNING
    assert tuning.loc[left["run_id"].iloc[0], "status"] == "FAILED"
    done = tuning[tuning["status"] == "FINISHED"]
    assert sorted(done["tags.nin.arm"]) == ["adam", "sgd"] and len(tuning) == 3
    chosen = records(optuna.load_study(study_name="kfind", storage=url).user_attrs)
    parent = df[df["tags.nin.role"] == "study"].iloc[0]
    for arm in ("sgd", "adam"):  # each kept choice on the parent run too
        assert float(parent[f"params.arms.{arm}.train.lr"]) == chosen[arm]["lr"]


# TPE seed 0's start-up lrs, queued for every arm (and again for a search resumed after a kill)
CANDIDATES = [0.02457582078921002, 0.5266413204325212, 0.0663906634418675]
SEARCH = (
    '[params]\n"train.lr" = '
    '{ per_arm = "search", low = 1e-6, high = 100.0, log = true, trials = 3 }\n'
)
# on the tiny task in 3 epochs (tuning seed 1000) their validation curves over those lrs differ:
# sgd with momentum is best at 0.0664 (0.45 against 0.20 and 0.22), adam at 0.0246 (0.80 against
# 0.13 and 0.09), so each arm's search must choose its own lr
SEARCH_ARMS = {"sgd": {"train.optimizer": "sgd", "train.momentum": 0.9}, "adam": ARMS["adam"]}
SEARCH_BEST = {"sgd": CANDIDATES[2], "adam": CANDIDATES[0]}


def test_search_per_arm_tunes_on_a_tuning_seed_and_survives_sigkill(work, data):
    text = per_arm_text("search", data, SEARCH, seeds="[0]", arms=SEARCH_ARMS)
    (work / "abl.toml").write_text(text.replace("epochs = 2\n", "epochs = 3\n"))
    beat = {"NIN_SEARCH_HEARTBEAT_S": "1"}
    proc = start_nin("ablate", "abl.toml", cwd=work, env=beat)
    url = f"sqlite:///{work / 'mlruns' / 'optuna.db'}"
    for line in proc.stdout:  # the first arm's search has begun
        if "lr search" in line:
            break
    deadline, killed = time.monotonic() + 120, None
    while killed is None and time.monotonic() < deadline:  # kill it mid-trial
        running = [
            t
            for t in trials(work, "search [tune sgd]", url)
            if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
        ]
        killed = running[0] if running else time.sleep(0.05)
    assert killed is not None, "no tuning trial started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(3.5)  # past the heartbeat grace (3 x 1 s): the dead trial is failed and retried
    res = nin_here("ablate", "abl.toml", cwd=work, env=beat)  # the rerun: in this process
    assert res.returncode == 0, res.stdout + res.stderr
    for arm in ARMS:
        tune = trials(work, f"search [tune {arm}]", url)
        done = [t for t in tune if t.state == TrialState.COMPLETE]
        assert len(done) == 3, [(t.number, t.state) for t in tune]
        assert all(t.state != TrialState.RUNNING for t in tune)
        # the same three lrs for both arms, the killed sgd one too (not a fresh sampler's draw)
        assert sorted(t.params["train.lr"] for t in done) == pytest.approx(sorted(CANDIDATES))
    cells = trials(work, "search")
    assert sorted(t.params["arm"] for t in cells) == ["adam", "sgd"]
    chosen = records(optuna.load_study(study_name="search", storage=url).user_attrs)
    for t in cells:  # each cell at its arm's best tuning lr, seed 0 (tuning seed 1000)
        best = max(
            (x for x in trials(work, f"search [tune {t.params['arm']}]", url)
             if x.state == TrialState.COMPLETE), key=lambda x: x.value,
        )  # fmt: skip
        assert chosen[t.params["arm"]]["lr"] == best.params["train.lr"]
    # their curves differ, and so do their lrs: each arm's cell trains at its own best one
    assert {arm: chosen[arm]["lr"] for arm in ARMS} == pytest.approx(SEARCH_BEST)
    dead = [t for t in trials(work, "search [tune sgd]", url) if t.number == killed.number]
    assert dead[0].state == TrialState.FAIL  # failed by its heartbeat, then retried
    df = runs(work, "search")
    assert df.set_index("run_id").loc[killed.user_attrs["mlflow_run_id"], "status"] == "FAILED"
    tuning = tuning_runs(df)
    # every tuning run at the tuning seed (the killed one may have died before its params)
    assert set(tuning["params.train.seed"].dropna()) == {"1000"}
    assert (tuning["status"] != "RUNNING").all()
    # each arm's search runs are its own (3 trials each, sgd's killed try beside them)
    assert tuning.groupby("tags.nin.arm").size().to_dict() == {"adam": 3, "sgd": 4}
    assert len(df[(df["tags.nin.role"] != "tuning") & df["tags.nin.arm"].notna()]) == 2
    before = {arm: len(trials(work, f"search [tune {arm}]", url)) for arm in ARMS}
    again = nin_here_ok("ablate", "abl.toml", cwd=work, env=beat)  # finished: nothing reruns
    after = {arm: len(trials(work, f"search [tune {arm}]", url)) for arm in ARMS}
    assert after == before and len(trials(work, "search")) == len(cells)
    assert len(runs(work, "search")) == len(df)
    assert "tuning trial" not in again.stdout and "2 of 2 cells finished" in again.stdout


@pytest.mark.parametrize(
    "params, message",
    [
        ('"train.lr" = { per_arm = "grid" }', "per_arm = 'grid' is not allowed"),
        ('"train.lr" = { per_arm = "search", trials = 3 }', "needs ['high', 'low']"),
        (
            '"train.lr" = { per_arm = "search", low = 1e-3, high = 0.1, trials = 0 }',
            "trials = 0 is not allowed",
        ),
        (
            '"train.lr" = { per_arm = "search", low = 1e-3, high = 0.1, trials = 2, seed = 0 }',
            "not one of the reported seeds",
        ),
        ('"model.width" = { per_arm = "lr-finder" }', "tunes train.lr per arm only"),
        ('"train.lr" = { per_arm = "lr-finder", low = 1 }', "takes no other keys"),
    ],
)
def test_bad_per_arm_specs_exit_2_with_one_line(tmp_path, data, params, message):
    (tmp_path / "abl.toml").write_text(per_arm_text("bad", data, "[params]\n" + params + "\n"))
    res = nin_here("ablate", "abl.toml", cwd=tmp_path)  # in-process: the CLI's own error path
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "mlruns").exists()


def test_an_arm_that_fixes_the_tuned_lr_is_refused(tmp_path, data):
    arms = {"sgd": {"train.optimizer": "sgd", "train.lr": 0.1}, "adam": ARMS["adam"]}
    text = ablation_text("fixed", data, arms=arms).replace("lr = 0.003\n", "") + FINDER
    (tmp_path / "abl.toml").write_text(text)
    res = nin_here("ablate", "abl.toml", cwd=tmp_path)
    assert res.returncode == 2 and "[arms.sgd] also set(s) train.lr" in res.stderr, res.stderr


def test_workers_train_every_cell_at_the_lr_tuned_before_they_start(work, data):
    (work / "abl.toml").write_text(per_arm_text("workers", data, seeds="[0, 1]"))
    res = nin_ok("ablate", "abl.toml", "--workers", "2", cwd=work)
    assert res.stdout.count("lr-finder (40 steps") == 2  # tuned once, by the parent
    url = f"sqlite:///{work / 'mlruns' / 'optuna.db'}"
    chosen = records(optuna.load_study(study_name="workers", storage=url).user_attrs)
    cells = [t for t in trials(work, "workers") if t.state == TrialState.COMPLETE]
    assert sorted((t.params["arm"], t.params["train.seed"]) for t in cells) == [
        ("adam", 0), ("adam", 1), ("sgd", 0), ("sgd", 1)
    ]  # fmt: skip
    df = runs(work, "workers").set_index("run_id")
    for t in cells:
        lr = float(df.loc[t.user_attrs["mlflow_run_id"], "params.train.lr"])
        assert lr == chosen[t.params["arm"]]["lr"]
