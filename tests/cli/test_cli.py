"""The CLI end to end: `train` into a real SQLite MLflow store, `summary`, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from builders import CLI_TINY as TINY
from builders import nin_here, squares, with_mlflow_store, write_idx

from nin_search.engine.chance import at_chance
from nin_search.engine.config import FINDER_RULES, ConfigError
from nin_search.engine.train import resolve_precision


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full |= {"NIN_SEARCH_OFFLINE": "1", "PYTHONUNBUFFERED": "1"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "nin_search", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tiny(tmp_path: Path, make_idx_dir) -> Path:
    make_idx_dir(tmp_path / "idx", n_train=160, n_test=40)
    (tmp_path / "tiny.toml").write_text(TINY)
    return tmp_path


@pytest.fixture
def tiny_stored(tiny: Path, mlflow_db: Path) -> Path:
    """tiny with a ready (empty) default MLflow store: for tests not about making one."""
    return with_mlflow_store(tiny, mlflow_db)


def test_train_logs_params_and_per_epoch_metrics_to_the_default_store(tiny: Path):
    res = nin_here(
        "train",
        "--config",
        "tiny.toml",
        "--set",
        f"data.data_dir={tiny / 'idx'}",
        "--final-eval",
        cwd=tiny,
    )
    assert res.returncode == 0, res.stderr
    # the default store is sqlite:///mlruns/mlflow.db relative to where the command ran
    assert (tiny / "mlruns" / "mlflow.db").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{tiny / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["nin-train"])
    # exactly one run, every resolved config value as a param under its dotted name
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.train.lr"] == "0.003"
    assert run["params.model.preset"] == "lin2013"
    assert run["params.model.width"] == "0.125"
    # the precision that ran, resolved for this CPU, never 'auto'; the header says it too
    precision = resolve_precision("auto", torch.device("cpu"))
    assert run["params.train.precision"] == precision
    assert f"{precision} (train.precision)" in res.stdout
    assert run["params.data.val_size"] == "40"
    assert run["params.train.momentum"] == "0.0"  # defaults are logged too
    assert run["tags.nin.config_hash"] and run["tags.nin.device"] == "cpu"
    assert run["status"] == "FINISHED"
    client = mlflow.MlflowClient()
    for key in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "img_per_s",
        "epoch_time_s",
    ):
        history = client.get_metric_history(run["run_id"], key)
        # one value per epoch with step = epoch
        assert sorted(m.step for m in history) == [1, 2], key
    # 7 of 40 right is not chance by chance.py's rule (< 0.15): no "did not learn" note, no tag
    final = client.get_metric_history(run["run_id"], "val_acc")[-1].value
    assert final == 0.175 and not at_chance(final, 40, 10)
    assert "did not learn" not in res.stdout and "tags.nin.at_chance" not in runs
    # the test set is reported as a final evaluation, once
    assert 0.0 <= run["metrics.test_acc"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"config.toml", "summary.txt", "summary.json", "training_curves.html"} <= artifacts
    # one fixed line per epoch and a closing line with the run id and the UI command
    assert res.stdout.count("epoch ") >= 2 and "val_acc" in res.stdout
    assert run["run_id"] in res.stdout.splitlines()[-1]
    assert "python -m nin_search ui" in res.stdout.splitlines()[-1]  # the default store


def test_auto_profile_says_which_profile_it_picked(tiny_stored: Path):
    res = nin_here(
        "train",
        "--config",
        "tiny.toml",
        "--set",
        f"data.data_dir={tiny_stored / 'idx'}",
        "--set",
        "train.epochs=1",
        cwd=tiny_stored,
    )
    assert res.returncode == 0, res.stderr
    # no CUDA here, so auto picks cpu and says so; the file and --set win over the profile
    assert "profile: cpu (auto: no CUDA device" in res.stdout
    assert "120 train / 40 val images at 28 px" in res.stdout
    assert "epoch   1/1" in res.stdout


def test_two_commands_started_together_on_a_fresh_store_both_finish(tiny: Path):
    # both would create MLflow's tables at once without the store's lock: one died with
    # 'duplicate column name: step' (stop 20, two `train` runs started together)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"NIN_SEARCH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--config", "tiny.toml", "--set", f"data.data_dir={tiny / 'idx'}"]
    commands = [
        ["train", *common, "--set", "train.epochs=1"],
        ["train", *common, "--set", "train.epochs=1", "--set", "train.seed=1"],
        ["lr-finder", *common, "--set", "lr_finder.num_iter=10", "--out", "finder"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nin_search", *c],
            cwd=tiny,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c in commands
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    mlflow.set_tracking_uri(f"sqlite:///{tiny / 'mlruns' / 'mlflow.db'}")
    # two train runs and one finder run, each finished, in one store
    runs = mlflow.search_runs(search_all_experiments=True)
    assert sorted(runs["tags.nin.command"]) == ["lr-finder", "train", "train"]
    assert set(runs["status"]) == {"FINISHED"}


def test_diverging_run_exits_1_and_ends_failed(tiny_stored: Path):
    res = nin_here(
        "train",
        "--config",
        "tiny.toml",
        "--set",
        f"data.data_dir={tiny_stored / 'idx'}",
        "--set",
        "train.optimizer='sgd'",
        "--set",
        "train.lr=100",
        # auto picks the cpu profile here, whose BatchNorm and onecycle ramp survive lr 100
        "--set",
        "model.batch_norm=false",
        "--set",
        "train.schedule='constant'",
        cwd=tiny_stored,
    )
    assert res.returncode == 1, res.stderr
    assert "diverged: loss became non-finite at epoch 1, step" in res.stdout
    mlflow.set_tracking_uri(f"sqlite:///{tiny_stored / 'mlruns' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["nin-train"]).iloc[0]
    # nothing stays RUNNING: the run ends FAILED with the place it diverged
    assert run["status"] == "FAILED"
    assert run["tags.nin.status"] == "diverged" and run["tags.nin.diverged_epoch"] == "1"


def test_a_run_that_collapses_to_chance_exits_1_and_ends_failed(tmp_path: Path, mlflow_db):
    # the squares task, fully connected head, plain SGD at lr 1 in fp32: val 0.38 of 256 in
    # epoch 1, at chance in epoch 3 with the loss at ln 10 (tests/engine/test_chance.py): not
    # "done"
    # (at lr 5 its mean train loss explodes first, past 1e6 in epoch 1)
    work = with_mlflow_store(tmp_path, mlflow_db)
    (work / "sq").mkdir()
    for prefix, n in (("train", 512), ("t10k", 16)):
        x, y = squares(n)
        write_idx(work / "sq" / f"{prefix}-images-idx3-ubyte", x)
        write_idx(work / "sq" / f"{prefix}-labels-idx1-ubyte", y)
    sets = [
        f"data.data_dir={work / 'sq'}", "model.preset='lin2013'", "model.width=0.25",
        "data.resize=16", "train.batch_size=64", "data.val_size=256", "model.head='fc'",
        "model.batch_norm=true", "model.dropout=0", "train.optimizer='sgd'",
        "train.schedule='onecycle'", "train.epochs=3", "train.lr=1", "train.precision='fp32'",
    ]  # fmt: skip
    # in this process, on its one thread (conftest): the fall is a draw that the sums' order sways
    res = nin_here("train", *[a for s in sets for a in ("--set", s)], cwd=work)
    assert res.returncode == 1, res.stderr
    assert "diverged: collapsed at epoch 3 (its lr up to 0.406): val accuracy fell" in res.stdout
    assert "done:" not in res.stdout
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["nin-train"]).iloc[0]
    assert run["status"] == "FAILED" and run["tags.nin.status"] == "diverged"
    assert run["tags.nin.diverged_epoch"] == "3"
    # its epochs are logged: the curve shows the fall
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "val_acc")
    assert [m.step for m in history] == [1, 2, 3] and history[2].value < 0.15


def test_summary_json_has_totals_and_output_shapes(tmp_path: Path):
    res = nin_here("summary", "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    # the d2l figures at 1x224x224, and 224 becomes 54 after the first conv
    assert s["totals"]["params"] == 1_992_166
    assert s["totals"]["macs"] == 762_297_352
    assert s["totals"]["flops"] == 2 * 762_297_352
    assert s["layers"][0]["output_shape"] == [96, 54, 54]
    assert s["layers"][0]["dropped"] == "1 px at bottom/right"
    assert s["layers"][-1]["output_shape"] == [10]


def test_summary_table_explains_dropped_pixels_and_memory(tmp_path: Path):
    res = nin_here("summary", "--set", "train.optimizer=adam", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "1,992,166" in res.stdout and "762,297,352" in res.stdout
    assert "block1.conv: 1 px at bottom/right" in res.stdout
    # adam keeps two state tensors per parameter, and the table says so
    assert "2 optimizer state tensor(s) (adam)" in res.stdout


def test_summary_csv_lists_every_layer(tmp_path: Path):
    res = nin_here("summary", "--format", "csv", "--set", "model.head=fc", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("layer,type,output_shape,params,macs")
    # the FC head: Flatten(384x5x5) -> Linear(10) is 96,010 params
    assert lines[-1].split(",")[:4] == ["fc", "Linear", "10", "96010"]


BAD = [
    (["--set", "train.lrr=0.1"], "unknown key 'train.lrr'"),
    (["--set", "train.lr=fast"], "train.lr = 'fast' is not allowed; expected a finite number"),
    (["--set", "train.lr=-1"], "train.lr = -1 is not allowed"),
    (["--set", "model.mlp_kernel=2"], "model.mlp_kernel = 2 is not allowed; expected one of 1, 3"),
    (["--set", "train.epochs=2.5"], "train.epochs = 2.5 is not allowed; expected an integer"),
    (["--set", "data.resize=64"], "smallest input that works is 67"),
    (["--set", "oops"], "expected KEY=VALUE"),
    (["--config", "missing.toml"], "missing.toml: no such config file"),
    (["--config", "broken.toml"], "broken.toml: not valid TOML"),
    (["--config", "unknown.toml"], "unknown.toml: unknown table [optim]"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str):
    (tmp_path / "broken.toml").write_text("[train\nlr = 0.1\n")
    (tmp_path / "unknown.toml").write_text("[optim]\nlr = 0.1\n")
    # in-process: the CLI's own error path (test_bad_input runs it through `python -m`)
    res = nin_here("summary", *args, cwd=tmp_path)
    assert res.returncode == 2
    # one line on stderr, naming the key or file, and no traceback
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_data_is_one_line_listing_every_way(tmp_path: Path):
    # MNIST: Debian's dataset-mnist is not installed here, and NIN_SEARCH_OFFLINE=1 skips the
    # download, so every way fails
    assert not Path("/usr/share/datasets/mnist").exists()
    # no folder named: the whole search order is tried (a named one is the only place looked)
    res = nin_here(
        "train", "--set", "data.dataset=mnist", cwd=tmp_path, env={"NIN_SEARCH_DATA": ""}
    )
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
    for way in ("data.data_dir", "dataset-mnist", "./data", "download", "NIN_SEARCH_DATA"):
        assert way in res.stderr


def test_debug_shows_the_traceback(tmp_path: Path):
    res = cli("--debug", "summary", "--set", "train.lr=fast", cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback" in res.stderr and "ConfigError" in res.stderr


def test_unusable_tracking_store_is_one_line(tiny: Path):
    (tiny / "a_file").write_text("not a folder")
    uri = f"sqlite:///{tiny}/a_file/mlflow.db"  # a database path below a plain file
    res = nin_here(
        "train",
        "--config",
        "tiny.toml",
        "--set",
        f"data.data_dir={tiny / 'idx'}",
        cwd=tiny,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"MLflow store {uri} cannot be used" in res.stderr


def test_lr_finder_writes_json_html_and_an_mlflow_run(tiny_stored: Path):
    res = nin_here(
        "lr-finder",
        "--config",
        "tiny.toml",
        "--set",
        f"data.data_dir={tiny_stored / 'idx'}",
        "--set",
        "lr_finder.num_iter=20",
        "--set",
        "lr_finder.end_lr=1",
        "--set",
        "lr_finder.repeats=2",
        "--set",
        "lr_finder.rule=half-decade",
        "--out",
        "out",
        cwd=tiny_stored,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tiny_stored / "out" / "lr_finder.json").read_text())
    # the JSON names the rule and the smoothing, holds every rule's suggestion (or says plainly
    # why there are none), and both curves of the median of the 2 repeats
    assert report["rule"] == "half-decade" and report["smoothing"] == "zero-phase"
    assert report["status"] in ("ok", "no-descent", "diverged-at-once")
    if report["status"] == "ok":
        assert set(report["suggestions"]) == set(FINDER_RULES)
        assert report["recommended_lr"] == report["suggestions"]["half-decade"]
        low, high = report["recommended_range"]
        assert low < report["recommended_lr"] < high
        assert "half-decade (recommended)" in res.stdout  # the terminal table marks it
    else:
        assert "lr_finder." in report["message"]  # the advice names keys to change
    n = len(report["curve"]["lr"])
    assert 0 < n <= 20 and len(report["curve"]["smoothed_loss"]) == n
    assert len(report["curve"]["zero_phase_loss"]) == n
    assert report["repeats"] == 2 and [len(r) for r in report["curve"]["repeat_losses"]] == [n, n]
    assert "plotly" in (tiny_stored / "out" / "lr_finder.html").read_text()[:100_000].lower()
    mlflow.set_tracking_uri(f"sqlite:///{tiny_stored / 'mlruns' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["nin-lr-finder"]).iloc[0]
    assert run["run_id"] == report["mlflow_run_id"]
    assert run["params.lr_finder.num_iter"] == "20"
    assert run["params.lr_finder.rule"] == "half-decade"
    assert run["params.lr_finder.smoothing"] == "zero-phase"
    client = mlflow.MlflowClient()
    # per-iteration metrics with step = iteration
    for key in ("lr", "loss", "smoothed_loss", "zero_phase_loss"):
        assert [m.step for m in client.get_metric_history(run["run_id"], key)] == list(range(n))
    artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"lr_finder.json", "lr_finder.html"} <= artifacts
    assert "out/lr_finder.html" in res.stdout and "python -m nin_search ui" in res.stdout


def test_sweep_link_reuses_the_matching_finder_run(tmp_path: Path, monkeypatch, idx_writer):
    from builders import squares

    from nin_search.engine.config import load_config
    from nin_search.tracking.finder import lr_range_from_finder

    for prefix, n in (("train", 448), ("t10k", 32)):  # an easy task whose curve has a valley
        x, y = squares(n)
        idx_writer(tmp_path / f"{prefix}-images-idx3-ubyte", x)
        idx_writer(tmp_path / f"{prefix}-labels-idx1-ubyte", y)
    sets = [
        f"data.data_dir={tmp_path}",
        "data.val_size=64",
        "data.resize=16",
        "model.preset=lin2013",
        "model.width=0.25",
        "model.final_relu=false",
        "model.dropout=0",
        "train.optimizer=adam",
        "train.batch_size=32",
        "lr_finder.num_iter=100",
        "lr_finder.start_lr=1e-5",
        "lr_finder.end_lr=1",
    ]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(overrides=sets)
    low, high, run_id = lr_range_from_finder(cfg)  # no finder run yet: it runs one first
    assert 0 < low < high
    # a second call with the same model, optimizer and data takes the same run ...
    assert lr_range_from_finder(cfg, run_if_missing=False) == (low, high, run_id)
    # ... the lr itself or the epochs do not change which run matches ...
    other = load_config(overrides=sets + ["train.lr=0.5", "train.epochs=9"])
    assert lr_range_from_finder(other, run_if_missing=False)[2] == run_id
    # ... and another optimizer needs a run of its own
    with pytest.raises(ConfigError, match="no lr-finder run"):
        lr_range_from_finder(
            load_config(overrides=sets + ["train.optimizer=sgd"]), run_if_missing=False
        )


def test_ui_command_binds_loopback_and_masks_passwords():
    from nin_search.tracking.store import DEFAULT_URI, ui_args, ui_command

    url = "postgresql://nin:s3cret@db-host/mlflow"
    args, env = ui_args(url)
    # the server gets the real URL through its environment, never on its command line, where
    # `ps` shows it to every user; what is shown to people has it masked
    assert env["MLFLOW_BACKEND_STORE_URI"] == url
    assert not any("s3cret" in a for a in args)
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert "s3cret" not in ui_command(url) and "nin:***@db-host" in ui_command(url)
    assert ui_command(DEFAULT_URI) == "python -m nin_search ui"
    assert "--default-artifact-root" in ui_args(DEFAULT_URI)[0]


def test_ui_of_a_tracking_server_is_the_server_itself():
    from nin_search.tracking.store import ui_args, ui_command

    url = "http://nin:s3cret@mlflow-host:5000"
    # a tracking server serves its own UI: the hint is its address, masked, and `ui` refuses
    # to start `mlflow server` with it as a backend store (which it is not)
    assert ui_command(url) == "http://nin:***@mlflow-host:5000"
    with pytest.raises(ConfigError, match=r"tracking server http://nin:\*\*\*@mlflow-host:5000"):
        ui_args(url)


def test_workers_get_the_storage_url_in_their_environment_not_their_argv():
    from nin_search.search.workers import worker_command

    url = "postgresql://nin:s3cret@db-host/optuna"
    cmd, env = worker_command(["sweep", "study.toml", "--set=train.lr=0.1"], url)
    # ps shows every user the command line: no password there, the URL in the environment
    assert not any("s3cret" in a for a in cmd) and "--storage" not in cmd
    assert env["NIN_SEARCH_STORAGE"] == url
    assert cmd[-2:] == ["1", "--worker"] and "study.toml" in cmd


def test_cpu_workers_split_the_cores_unless_the_user_set_the_threads():
    from nin_search.search.workers import cpu_threads

    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(1, {}) == {"OMP_NUM_THREADS": str(cores)}
    assert cpu_threads(2, {}) == {"OMP_NUM_THREADS": str(max(1, cores // 2))}
    assert cpu_threads(4 * cores, {}) == {"OMP_NUM_THREADS": "1"}  # never 0
    assert cpu_threads(2, {"OMP_NUM_THREADS": "3"}) == {}  # the user's choice stands


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # SQLite and plain paths hold no password: shown exactly, ':' and '@' included
        ("sqlite:////tmp/a:b@c/optuna.db", "sqlite:////tmp/a:b@c/optuna.db"),
        ("/tmp/x@y/journal.log", "/tmp/x@y/journal.log"),
        ("journal:/tmp/a@b.log", "journal:/tmp/a@b.log"),
        # user:password@ and ?password= are masked
        ("postgresql://nin:s3cret@h/db", "postgresql://nin:***@h/db"),
        ("postgresql://nin@h/db?password=s3cret", "postgresql://nin@h/db?password=***"),
        ("http://nin:s3cret@h:5000/x", "http://nin:***@h:5000/x"),
        # every password-like query parameter, whatever its case
        (
            "postgresql://nin@h/db?sslmode=require&sslpassword=s3cret&Token=s3cret",
            "postgresql://nin@h/db?sslmode=require&sslpassword=***&Token=***",
        ),
        # '@' and ':' in a password: the host follows the last '@'
        ("postgresql://nin:s3@cret@h/db", "postgresql://nin:***@h/db"),
        # a file URL's ':' and '@' belong to the path
        ("file:///tmp/a:b/c@d/mlruns", "file:///tmp/a:b/c@d/mlruns"),
    ],
)
def test_mask_hides_passwords_and_leaves_paths_alone(url: str, shown: str):
    from nin_search.stores.urls import mask

    assert mask(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user@srv:pw@127.0.0.1:1/db",  # Azure's user@server: SQLAlchemy reads it
        "postgresql://nin:pw@127.0.0.1:1/db?application_name=a@b&options=c@d",
        "postgresql://nin:p%40ss@127.0.0.1:1/db",
    ],
    ids=["user", "query", "encoded"],
)
def test_database_urls_sqlalchemy_reads_as_meant_are_accepted(url: str):
    from nin_search.stores.urls import check_db_url

    # an '@' in the user name or the query is no '@' in the password: no error
    assert check_db_url(url, "--storage") is None


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "..", ".hidden", "a/b\\c"])
def test_report_folder_stays_under_out_whatever_the_study_name(tmp_path: Path, name: str):
    from nin_search.search.report import report_dir

    root = tmp_path / "reports"
    out = report_dir(root, name)
    # one folder directly under --out: no '..', no absolute path, no separator gets through
    assert out.parent == root and out.resolve().parent == root.resolve()
    assert out.name not in ("", ".", "..")


def test_report_folder_keeps_spaces_and_unicode_and_bounds_long_names(tmp_path: Path):
    from nin_search.search.report import report_dir

    assert report_dir(tmp_path, "ablate head é").name == "ablate head é"
    long = report_dir(tmp_path, "x" * 400)
    # a name longer than a file system allows still makes a usable folder, distinct per name
    assert len(long.name.encode()) <= 200 and long != report_dir(tmp_path, "x" * 401)
    long.mkdir()


@pytest.mark.parametrize("raw", ["abc", "0", "-3"])
def test_bad_heartbeat_variable_is_one_line_naming_it_and_writes_nothing(
    tmp_path: Path, monkeypatch, raw: str
):
    from nin_search.search.storage import open_storage

    monkeypatch.setenv("NIN_SEARCH_HEARTBEAT_S", raw)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    # the variable is named, not --storage; no store was created on the way
    assert str(e.value).startswith(f"NIN_SEARCH_HEARTBEAT_S={raw!r}")
    assert list(tmp_path.iterdir()) == []


def _main_error(capsys, *argv: str) -> tuple[int, str]:
    from nin_search.cli.main import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def test_lr_finder_out_naming_a_file_exits_2_before_anything_is_written(
    tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "taken").write_text("x")
    code, err = _main_error(capsys, "lr-finder", "--profile", "cpu", "--out", "taken/sub")
    assert code == 2 and err.count("\n") == 1 and "taken is a file, not a folder" in err
    # no MLflow store, no reports folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_ui_port_out_of_range_exits_2(tmp_path: Path, monkeypatch, capsys, port: str):
    monkeypatch.chdir(tmp_path)
    code, err = _main_error(capsys, "ui", f"--port={port}")
    assert code == 2 and f"--port {port} is not allowed; expected 1..65535" in err
    assert list(tmp_path.iterdir()) == []


def test_ui_on_a_port_in_use_exits_2(tmp_path: Path, monkeypatch, capsys):
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, err = _main_error(capsys, "ui", "--port", str(port))
    # another server has the port: say so instead of showing its URL as ours
    assert code == 2 and f"--port {port} on 127.0.0.1 is not free" in err


def test_ui_host_that_does_not_resolve_exits_2(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _main_error(capsys, "ui", "--host", "no-such-host.invalid")
    assert code == 2 and "--host 'no-such-host.invalid' does not resolve" in err


@pytest.mark.parametrize("text", ["nan", "inf", "0", "-5", "soon"])
def test_timeout_must_be_a_positive_finite_duration(text: str):
    from nin_search.cli.main import _duration

    with pytest.raises(ConfigError, match="expected a positive duration"):
        _duration(text)
