"""Every bad input through the real CLI: one line on stderr, exit code 2, and nothing written.

Each case runs the CLI in its own empty working directory, with MLflow's and Optuna's defaults
(sqlite:///mlruns/...) pointing there, and fails before anything trains. The directory must hold
afterwards exactly what the case put in it, byte for byte: no mlruns/, mlflow.db, optuna.db or
reports/ for a command that exits 2.

Every case calls nin_search.cli.main in this process, the function `python -m nin_search` runs
(__main__ is `raise SystemExit(main())`): a fresh interpreter costs ~3 s of imports per case. What
only a real process would show is caught here too: stderr at the file descriptor, warnings and
log records (printed there by a fresh interpreter), the exit status as SystemExit makes it; and
the environment, MLflow's tracking URI, logger levels and signal handlers are put back after each
case. The cases in SUBPROCESS also run through a fresh `python -m nin_search`, and so do the
tests of a store that fails mid-run (a tmpfs filled up, artifacts below a file): they train, and
a process that exits is what lets go of its connections to the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow.tracking._tracking_service.utils as mlflow_uri
import optuna
import pytest
import torch
from builders import ablation_text, study_text, with_mlflow_store, write_idx

from nin_search.cli.main import main
from nin_search.engine.config import load_config
from nin_search.spec.components import ARGS

SCRUBBED = ("MLFLOW_TRACKING_URI", "NIN_SEARCH_STORAGE", "NIN_SEARCH_DATA")
BASE_ENV = {"NIN_SEARCH_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def start_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in SCRUBBED} | BASE_ENV
    return subprocess.Popen(
        [sys.executable, "-m", "nin_search", *args],
        cwd=cwd,
        env=full | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _loggers() -> dict[str, logging.Logger]:
    items = logging.Logger.manager.loggerDict.items()
    return {"": logging.getLogger()} | {n: lg for n, lg in items if isinstance(lg, logging.Logger)}


def _pytests(h: logging.Handler) -> bool:
    return type(h).__module__.startswith("_pytest")


def _unhandled(record: logging.LogRecord) -> bool:
    """Whether a fresh interpreter would print the record through logging.lastResort: no
    handler on the way up (pytest's own do not count), and WARNING or above."""
    lg: logging.Logger | None = logging.getLogger(record.name)
    while lg is not None:
        if any(not _pytests(h) for h in lg.handlers):
            return False
        lg = lg.parent if lg.propagate else None
    return record.levelno >= logging.lastResort.level


@pytest.fixture
def call_main(monkeypatch, capfd, caplog) -> Callable[..., Ran]:
    """call_main(args, cwd, env): `python -m nin_search *args` in cwd, run in this process.

    stderr is read at file descriptor 2, with whatever a fresh interpreter would print there as
    well: a library's log handler made at import (bound to the stderr pytest had then), a log
    record no handler takes (logging.lastResort) and a warning. Whatever the command changes in
    the environment, MLflow's tracking URI, logger levels, Optuna's verbosity and signal
    handlers is put back afterwards."""
    env_before = dict(os.environ)
    levels = {n: lg.level for n, lg in _loggers().items()}
    verbosity = optuna.logging.get_verbosity()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    handlers = {s: signal.getsignal(s) for s in signals}
    # mlflow.set_tracking_uri keeps the URI in this module global (and in the environment)
    monkeypatch.setattr(mlflow_uri, "_tracking_uri", mlflow_uri._tracking_uri)

    def call(args: list[str], cwd: Path, env: dict[str, str]) -> Ran:
        monkeypatch.chdir(cwd)
        for k in SCRUBBED:
            os.environ.pop(k, None)
        os.environ.update(BASE_ENV | env)
        capfd.readouterr()
        caplog.clear()
        # logging.StreamHandler() writes to sys.stderr as it was when made (Optuna's, MLflow's)
        streams = {
            h: h.stream
            for lg in _loggers().values()
            for h in lg.handlers
            if type(h) is logging.StreamHandler
        }
        for h in streams:
            h.setStream(sys.stderr)
        try:
            with warnings.catch_warnings(record=True) as caught:
                if not sys.warnoptions:  # the interpreter's defaults outside __main__
                    for category in (DeprecationWarning, PendingDeprecationWarning):
                        warnings.filterwarnings("ignore", category=category)
                try:
                    code = main(args)
                except SystemExit as e:  # argparse's errors, as the interpreter would exit
                    code = e.code
        finally:
            for h, stream in streams.items():
                h.setStream(stream)
        out, err = capfd.readouterr()
        err += "".join(f"{r.getMessage()}\n" for r in caplog.records if _unhandled(r))
        err += "".join(
            warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line)
            for w in caught
        )
        # SystemExit(code): None is 0, an int its status, anything else printed and 1
        if code is None:
            code = 0
        elif not isinstance(code, int):
            err, code = f"{err}{code}\n", 1
        return Ran(code, out, err)

    try:
        yield call
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        for name, lg in _loggers().items():
            lg.setLevel(levels.get(name, logging.NOTSET))
        optuna.logging.set_verbosity(verbosity)
        changed = {s for s in signals if signal.getsignal(s) != handlers[s]}
        for s in signals:
            signal.signal(s, handlers[s])
        assert not changed, f"signal handlers left changed: {changed}"


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, data: Path) -> dict[str, Path]:
    """Folders of broken IDX files, outside any case's working directory."""
    root = tmp_path_factory.mktemp("bad-data")
    (root / "empty").mkdir()
    names = [p.name for p in data.iterdir()]

    def copy(name: str) -> Path:
        folder = root / name
        folder.mkdir()
        for n in names:
            (folder / n).write_bytes((data / n).read_bytes())
        return folder

    raw = copy("truncated") / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-100])
    (copy("magic") / "train-labels-idx1-ubyte").write_bytes(b"\x01" * 64)
    write_idx(copy("mismatch") / "train-labels-idx1-ubyte", torch.zeros(7))
    names = ("empty", "missing", "truncated", "magic", "mismatch")
    return {"good": data} | {n: root / n for n in names}


def _sqlite_with_pages(path: Path) -> None:
    """A real SQLite database of several pages, then cut short: a truncated copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x BLOB)")
    con.executemany("INSERT INTO t VALUES (?)", [(os.urandom(3000),) for _ in range(20)])
    con.commit()
    con.close()
    path.write_bytes(path.read_bytes()[:8192])


def _ablation_store(cwd: Path, name: str) -> None:
    """The default Optuna store holding an ablation of this name (as `ablate` records it)."""
    (cwd / "mlruns").mkdir()
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{cwd}/mlruns/optuna.db")
    study.set_user_attr("nin_spec", {"kind": "ablation"})


def _files(**files: str | bytes) -> Callable[[Path, dict], None]:
    def setup(cwd: Path, d: dict) -> None:
        for name, text in files.items():
            path = cwd / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(text, str):
                text = text.format(**{k: str(v) for k, v in d.items()}).encode()
            path.write_bytes(text)

    return setup


def _study(name: str = "s", settings: dict | None = None, **kw) -> Callable[[Path, dict], None]:
    def setup(cwd: Path, d: dict) -> None:
        fmt = {k: str(v) for k, v in d.items()}
        values = {
            k: v.format(**fmt) if isinstance(v, str) else v for k, v in (settings or {}).items()
        }
        (cwd / "s.toml").write_text(study_text(name, d["good"], settings=values, **kw))

    return setup


def _ablation(name: str = "a", **kw) -> Callable[[Path, dict], None]:
    def setup(cwd: Path, d: dict) -> None:
        (cwd / "a.toml").write_text(ablation_text(name, d["good"], **kw))

    return setup


def _none(cwd: Path, d: dict) -> None:
    pass


TRAIN = ["train", "--profile", "cpu", "--set", "data.data_dir={good}", "--set", "data.val_size=64"]
# (id, setup, argv (str.format with the data folders), extra env, what stderr must say)
CASES = [
    # config values and files
    ("unknown key", _none, ["summary", "--set", "train.lrr=0.1"], {}, "unknown key 'train.lrr'"),
    ("nan", _none, ["summary", "--set", "train.lr=nan"], {}, "expected a finite number"),
    ("inf warmup", _none, [*TRAIN, "--set", "train.warmup_epochs=inf"], {}, "warmup_epochs = inf"),
    ("bad choice", _none, ["summary", "--set", "model.mlp_kernel=2"], {}, "one of 1, 3"),
    ("input too small", _none, ["summary", "--set", "data.resize=64"], {}, "smallest input"),
    ("set without =", _none, ["summary", "--set", "oops"], {}, "expected KEY=VALUE"),
    ("val_size 0", _none, [*TRAIN, "--set", "data.val_size=0"], {}, "data.val_size = 0 is not"),
    ("missing config", _none, ["train", "--config", "no.toml"], {}, "no.toml: no such config"),
    (
        "broken config",
        _files(**{"b.toml": "[train\n"}),
        ["train", "--config", "b.toml"],
        {},
        "b.toml: not valid TOML",
    ),
    (
        "bad profile in study",
        _study(top='profile = "fast"'),
        ["sweep", "s.toml"],
        {},
        "profile = 'fast' is not allowed",
    ),
    # data
    (
        "data_dir empty",
        _none,
        [*TRAIN, "--set", "data.data_dir={empty}"],
        {},
        "data.data_dir = '{empty}' has no complete set of IDX files",
    ),
    (
        "data_dir missing",
        _none,
        [*TRAIN, "--set", "data.data_dir={missing}"],
        {},
        "data.data_dir = '{missing}' is no folder",
    ),
    (
        "NIN_SEARCH_DATA empty",
        _none,
        ["train", "--profile", "cpu"],
        {"NIN_SEARCH_DATA": "{empty}"},
        "$NIN_SEARCH_DATA = '{empty}' has no complete set",
    ),
    ("truncated images", _none, [*TRAIN, "--set", "data.data_dir={truncated}"], {}, "truncated"),
    ("bad magic", _none, [*TRAIN, "--set", "data.data_dir={magic}"], {}, "bad magic number"),
    (
        "mismatched labels",
        _none,
        [*TRAIN, "--set", "data.data_dir={mismatch}"],
        {},
        "do not match",
    ),
    (
        "val_size too large",
        _none,
        [*TRAIN, "--set", "data.val_size=9999"],
        {},
        "data.val_size = 9999: must be below the 256 training images",
    ),
    (
        "train_subset too large",
        _none,
        [*TRAIN, "--set", "data.train_subset=500"],
        {},
        "data.train_subset = 500: at most 192 images remain",
    ),
    (
        "lr-finder val_size",
        _none,
        ["lr-finder", *TRAIN[1:], "--set", "data.val_size=9999"],
        {},
        "must be below",
    ),
    (
        "sweep data",
        _study(settings={"data.val_size": 9999}),
        ["sweep", "s.toml"],
        {},
        "must be below",
    ),
    (
        "sweep truncated data",
        _study(settings={"data.data_dir": "{truncated}"}),
        ["sweep", "s.toml"],
        {},
        "truncated",
    ),
    (
        "ablation arm data",
        _ablation(arms={"a": {}, "b": {"data.train_subset": 500}}),
        ["ablate", "a.toml"],
        {},
        "[arms.b]: data.train_subset = 500",
    ),
    (
        "ablation data missing",
        _ablation(arms={"a": {}, "b": {}}),
        ["ablate", "a.toml", "--set", "data.data_dir={missing}"],
        {},
        "is no folder",
    ),
    # MLflow store
    ("empty experiment", _none, [*TRAIN, "--experiment", ""], {}, "--experiment ''"),
    (
        "server refused",
        _none,
        TRAIN,
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        "MLflow store http://127.0.0.1:9 cannot be used",
    ),
    (
        "server unresolvable",
        _study(),
        ["sweep", "s.toml"],
        {"MLFLOW_TRACKING_URI": "http://no-such-host.invalid:5000"},
        "no-such-host.invalid:5000",
    ),
    (
        "random-bytes mlflow.db",
        _files(**{"mlruns/mlflow.db": os.urandom(5000)}),
        TRAIN,
        {},
        "mlruns/mlflow.db is not an SQLite database",
    ),
    (
        "truncated mlflow.db",
        lambda cwd, d: (_study()(cwd, d), _sqlite_with_pages(cwd / "mlruns" / "mlflow.db")),
        ["sweep", "s.toml"],
        {},
        "mlflow.db is truncated",
    ),
    (
        "store below a file",
        _files(f="x"),
        TRAIN,
        {"MLFLOW_TRACKING_URI": "sqlite:///f/m.db"},
        "f is a file, not a folder",
    ),
    # other options
    (
        "lr-finder --out a file",
        _files(f="x"),
        ["lr-finder", *TRAIN[1:], "--out", "f/o"],
        {},
        "f is a file, not a folder",
    ),
    (  # os.access says yes to root there; the check must not wait for the range test
        "lr-finder --out in /proc",
        _none,
        ["lr-finder", *TRAIN[1:], "--out", "/proc/nope"],
        {},
        "--out /proc/nope: cannot create a folder in /proc",
    ),
    ("ui port", _none, ["ui", "--port", "99999"], {}, "--port 99999 is not allowed"),
    ("ui host", _none, ["ui", "--host", "no-such-host.invalid"], {}, "does not resolve"),
    ("timeout nan", _study(), ["sweep", "s.toml", "--timeout", "nan"], {}, "--timeout 'nan'"),
    ("workers 0", _study(), ["sweep", "s.toml", "--workers", "0"], {}, "--workers"),
    (
        "heartbeat",
        _study(),
        ["sweep", "s.toml"],
        {"NIN_SEARCH_HEARTBEAT_S": "x"},
        "NIN_SEARCH_HEARTBEAT_S='x'",
    ),
    (
        "unreachable storage",
        _study(),
        ["sweep", "s.toml", "--storage", "postgresql://u:secret@127.0.0.1:1/db"],
        {},
        "postgresql://u:***@127.0.0.1:1/db cannot be opened",
    ),
    # a database driver that is not installed: named, with the package that provides it
    (
        "storage mysql without its driver",
        _study(),
        ["sweep", "s.toml", "--storage", "mysql://u:secret@127.0.0.1:1/db"],
        {},
        "u:***@127.0.0.1:1/db: its driver MySQLdb is not installed; pip install mysqlclient",
    ),
    (
        "storage pymysql without its driver",
        _study(),
        ["sweep", "s.toml", "--storage", "mysql+pymysql://u:secret@127.0.0.1:1/db"],
        {},
        "its driver pymysql is not installed; pip install PyMySQL",
    ),
    (
        "storage @ in the password",
        _study(),
        ["sweep", "s.toml", "--storage", "postgresql://u:p@ss:w0rd@127.0.0.1:1/db"],
        {},
        "postgresql://u:***@127.0.0.1:1/db: an '@' in the password must be written %40",
    ),
    # search spaces
    *[
        (f"step {what}", _study(params={key: spec}), ["sweep", "s.toml"], {}, message)
        for what, key, spec, message in [
            (
                "negative",
                "model.width",
                "{ low = 0.25, high = 0.5, step = -0.1 }",
                "step = -0.1 is not allowed; expected a positive number",
            ),
            ("zero", "model.width", "{ low = 0.25, high = 0.5, step = 0 }", "step = 0 is not"),
            ("string", "model.width", '{ low = 0.25, high = 0.5, step = "x" }', "step = 'x'"),
            (
                "with log",
                "train.lr",
                "{ low = 1e-3, high = 0.1, step = 0.01, log = true }",
                "cannot be combined with log = true",
            ),
            (
                "float on int",
                "model.mlp_depth",
                "{ low = 0, high = 2, step = 0.5 }",
                "expected a positive integer",
            ),
            (
                "not dividing",
                "model.mlp_depth",
                "{ low = 0, high = 3, step = 2 }",
                "does not divide high - low = 3",
            ),
        ]
    ],
    (
        "bound outside the key's range",
        _study(params={"model.mlp_depth": "{ low = 0, high = 9 }"}),
        ["sweep", "s.toml"],
        {},
        "model.mlp_depth = 9 is not allowed",
    ),
    (
        "searched and fixed",
        _study(
            params={"model.width": "{ low = 0.25, high = 0.5 }"}, settings={"model.width": 0.25}
        ),
        ["sweep", "s.toml"],
        {},
        '"model.width" is searched, but [model] also sets model.width',
    ),
    (
        "searched and --set",
        _study(),
        ["sweep", "s.toml", "--set", "train.lr=0.1"],
        {},
        '"train.lr" is searched, but --set also sets train.lr = 0.1',
    ),
    # samplers and pruners
    (
        "tpe startup x",
        _study(sampler='type = "tpe"\nn_startup_trials = "x"'),
        ["sweep", "s.toml"],
        {},
        "[sampler] tpe: n_startup_trials = 'x' is not allowed; expected an integer >= 0",
    ),
    (
        "gp startup -3",
        _study(sampler='type = "gp"\nn_startup_trials = -3'),
        ["sweep", "s.toml"],
        {},
        "[sampler] gp: n_startup_trials = -3",
    ),
    (
        "hyperband factor 1",
        _study(pruner='type = "hyperband"\nreduction_factor = 1'),
        ["sweep", "s.toml"],
        {},
        "[pruner] hyperband: reduction_factor = 1 is not allowed",
    ),
    (
        "unknown sampler argument",
        _study(sampler='type = "random"\nsed = 1'),
        ["sweep", "s.toml"],
        {},
        "[sampler] random: unknown argument 'sed'",
    ),
    (
        "argument of no pruner",
        _study(pruner='type = "none"\nn_warmup_steps = 1'),
        ["sweep", "s.toml"],
        {},
        "[pruner] none: unknown argument 'n_warmup_steps'",
    ),
    # names and --set in study commands
    ("long sweep name", _study(name="x" * 300), ["sweep", "s.toml"], {}, "at most 200"),
    ("long ablation name", _ablation(name="é" * 201), ["ablate", "a.toml"], {}, "at most 200"),
    # a sweep registers its best model under the name, and MLflow's registry refuses these;
    # one name rule for both kinds of file
    ("sweep name with /", _study(name="team/nin"), ["sweep", "s.toml"], {}, "no '/', ':' or '%'"),
    ("ablation name with :", _ablation(name="a:b"), ["ablate", "a.toml"], {}, "'a:b' is not"),
    (
        "ablation of two objectives",
        _ablation(top='objective = ["final_val_acc", "macs"]'),
        ["ablate", "a.toml"],
        {},
        "an ablation takes one objective",
    ),
    (
        "bad --set in sweep",
        _study(),
        ["sweep", "s.toml", "--set", "train.lrr=1"],
        {},
        "--set: unknown key 'train.lrr'",
    ),
    (
        "bad --set in ablate",
        _ablation(),
        ["ablate", "a.toml", "--set", "train.lr=fast"],
        {},
        "--set: train.lr = 'fast' is not allowed",
    ),
    ("one arm", _ablation(arms={"a": {}}), ["ablate", "a.toml"], {}, "at least two arms"),
    # the cases of test_cli, test_sweep and test_ablation, through this test's contract too
    *[
        (f"--set {item}", _none, ["summary", "--set", item], {}, message)
        for item, message in [
            ("train.lr=fast", "train.lr = 'fast' is not allowed; expected a finite number"),
            ("train.lr=-1", "train.lr = -1 is not allowed"),
            ("train.epochs=2.5", "train.epochs = 2.5 is not allowed; expected an integer"),
        ]
    ],
    (
        "unknown table",
        _files(**{"u.toml": "[optim]\nlr = 0.1\n"}),
        ["summary", "--config", "u.toml"],
        {},
        "u.toml: unknown table [optim]",
    ),
    *[
        (f"study: {what}", _study(**change), ["sweep", "s.toml"], {}, message)
        for what, change, message in [
            ("unknown top key", {"top": "trails = 3"}, "s.toml: unknown key(s) trails"),
            (
                "unknown param key",
                {"params": {"train.lrr": "{ low = 0.1, high = 0.2 }"}},
                '[params] "train.lrr": unknown key',
            ),
            ("n_trials type", {"n_trials": '"x"'}, "n_trials = 'x' is not allowed"),
            (
                "low above high",
                {"params": {"train.lr": "{ low = 0.3, high = 0.1 }"}},
                "low = 0.3 is above high = 0.1",
            ),
            ("empty params", {"params": {}}, "[params] is empty"),
            ("unknown sampler", {"sampler": 'type = "anneal"'}, "type = 'anneal' is not allowed"),
            ("unknown pruner", {"pruner": 'type = "patient"'}, "type = 'patient' is not allowed"),
            (
                "no sample fits",  # 28 px, whatever lr and dropout: every trial would fail
                {
                    "settings": {"model.preset": "d2l", "data.resize": 0},
                    "params": {
                        "train.lr": "{ low = 1e-3, high = 0.3, log = true }",
                        "model.dropout": "{ low = 0.0, high = 0.7 }",
                    },
                },
                "s.toml: every trial would fail untrained, whatever [params] samples (train.lr, "
                "model.dropout): data.resize: a 28x28 input is too small for the d2l NiN",
            ),
            (
                "no choice fits",
                {
                    "settings": {"model.preset": "d2l"},
                    "params": {"data.resize": "{ choices = [8, 16] }"},
                },
                "data.resize: a 8x8 input is too small for the d2l NiN",
            ),
        ]
    ],
    *[
        (f"ablation: {what}", _ablation(**change), ["ablate", "a.toml"], {}, message)
        for what, change, message in [
            (
                "unknown arm key",
                {"arms": {"a": {"model.head": "gap"}, "b": {"model.hed": "fc"}}},
                "[arms.b]: unknown key 'model.hed'",
            ),
            (
                "bad arm value",
                {"arms": {"a": {"model.head": "gap"}, "b": {"model.head": "mlp"}}},
                "[arms.b]: model.head = 'mlp' is not allowed",
            ),
            ("unknown baseline", {"top": 'baseline = "nope"'}, "baseline = 'nope' is not an arm"),
            (
                "seed in an arm",
                {"arms": {"a": {"train.seed": 3}, "b": {}}},
                "train.seed is set by seeds",
            ),
            ("bad seeds", {"seeds": "[1, 1]"}, "seeds = [1, 1] is not allowed"),
            ("arm too small", {"arms": {"a": {}, "b": {"model.preset": "d2l"}}}, "smallest"),
        ]
    ],
    # report reads only
    (
        "report missing",
        _none,
        ["report", "nope"],
        {},
        "study 'nope' is not in sqlite:///mlruns/optuna.db",
    ),
    (
        "report missing sqlite",
        _none,
        ["report", "nope", "--storage", "sqlite:///x.db"],
        {},
        "no such store",
    ),
    (
        "report missing journal",
        _none,
        ["report", "nope", "--storage", "x.log"],
        {},
        "no such store",
    ),
    ("report missing file", _none, ["report", "nope.toml"], {}, "nope.toml: no such config"),
    (
        "evaluate without a store",
        _none,
        ["evaluate", "0123abcd"],
        {},
        "'0123abcd': not found: no MLflow store at sqlite:///mlruns/mlflow.db",
    ),
    (
        "evaluate --images 0",
        _none,
        ["evaluate", "0123abcd", "--images", "0"],
        {},
        "--images 0 is not allowed",
    ),
]
if not torch.cuda.is_available():
    CASES.append(("cuda", _none, [*TRAIN, "--set", "train.device=cuda"], {}, "no CUDA device"))
    CASES.append(
        ("cuda sweep", _study(settings={"train.device": "cuda"}), ["sweep", "s.toml"], {},
         "no CUDA device")
    )  # fmt: skip


# a few cases, one of each kind of check, also through a fresh `python -m nin_search`: the real
# process's imports, environment, exit status and stderr
SUBPROCESS = [
    "unknown key",
    "NIN_SEARCH_DATA empty",
    "server refused",
    "heartbeat",
    "ablation arm data",
    "report missing",
    "evaluate without a store",
]
assert set(SUBPROCESS) <= {c[0] for c in CASES}
PYTHON_M = "test_bad_input_through_python_m_is_one_line_exit_2_and_writes_nothing"


def _listing(folder: Path) -> dict[str, bytes | None]:
    """Every path below folder: a file's bytes, None for a folder."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


@dataclass
class Case:
    cwd: Path
    before: dict[str, bytes | None]
    argv: list[str]
    env: dict[str, str]
    message: str


def _prepare(tmp_path: Path, bad_data: dict, setup, argv, env, message) -> Case:
    """The case's working directory set up, what it holds, its argv, env and message."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    setup(cwd, bad_data)
    fmt = {k: str(v) for k, v in bad_data.items()}
    return Case(
        cwd,
        _listing(cwd),
        [a.format(**fmt) for a in argv],
        {k: v.format(**fmt) for k, v in env.items()},
        message.format(**fmt),
    )


def _check(case: Case, res: Ran | subprocess.CompletedProcess) -> None:
    # exit code 2, exactly one line on stderr that says what is wrong, no traceback
    assert res.returncode == 2, res.stdout + res.stderr
    # and no password of a URL in the arguments, whole or in part ('ss', 'w0rd' of 'p@ss:w0rd')
    assert not {"secret", "w0rd"} & set(re.findall(r"\w+", res.stdout + res.stderr))
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert case.message in res.stderr, res.stderr
    # and nothing written: the directory holds what the case put there, byte for byte
    assert _listing(case.cwd) == case.before


@pytest.fixture(scope="module", autouse=True)
def python_m(request, tmp_path_factory, bad_data) -> dict[str, tuple[Case, subprocess.Popen]]:
    """The SUBPROCESS cases this session runs, started together before the module's first
    test: each takes seconds of imports, done on the other core while the in-process cases
    run. They get the environment as this module starts, before any case changes it."""
    chosen = {
        item.callspec.params["what"]
        for item in request.session.items
        if getattr(item, "originalname", None) == PYTHON_M and item.module is request.module
    }
    started = {}
    try:
        for what, setup, argv, env, message in CASES:
            if what in chosen:
                tmp = tmp_path_factory.mktemp("python-m")
                case = _prepare(tmp, bad_data, setup, argv, env, message)
                started[what] = (case, start_cli(case.argv, case.cwd, case.env))
        yield started
    finally:
        for _, proc in started.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.mark.parametrize(
    ("what", "setup", "argv", "env", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, bad_data: dict, call_main, what, setup, argv, env, message
):
    case = _prepare(tmp_path, bad_data, setup, argv, env, message)
    _check(case, call_main(case.argv, case.cwd, case.env))


@pytest.mark.parametrize("what", SUBPROCESS)
def test_bad_input_through_python_m_is_one_line_exit_2_and_writes_nothing(python_m, what):
    case, proc = python_m[what]
    _check(case, finish(proc))


def test_a_sweep_named_as_an_existing_ablation_is_refused(
    tmp_path: Path, bad_data: dict, call_main
):
    _ablation_store(tmp_path, "shared")
    (tmp_path / "s.toml").write_text(study_text("shared", bad_data["good"]))
    res = call_main(["sweep", "s.toml"], tmp_path, {})
    # one study name, one kind: the ablation's trials and record are left alone
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "name 'shared' is taken by an existing ablation" in res.stderr
    study = optuna.load_study(
        study_name="shared", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db"
    )
    assert study.trials == [] and study.user_attrs == {"nin_spec": {"kind": "ablation"}}
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # no MLflow store either


def test_use_val_with_a_one_image_validation_split_runs(data: Path):
    from nin_search.engine.data import load_data
    from nin_search.engine.lr_finder import find_lr

    cfg = load_config(
        overrides=[
            f"data.data_dir={data}",
            "data.val_size=1",
            "data.resize=16",
            "model.preset=lin2013",
            "model.width=0.125",
            "model.batch_norm=true",
            "train.batch_size=16",
            "lr_finder.use_val=true",
            "lr_finder.num_iter=10",
        ]
    )
    f = find_lr(cfg, load_data(cfg.data, "cpu", with_test=False))
    # Smith's variant on a validation batch of the one held-out image: a finite curve
    assert len(f.curve.losses) > 0 and all(x == x for x in f.curve.losses[:3])


def test_an_int_step_reaches_the_grid_sampler(tmp_path: Path):
    from nin_search.spec.space import grid, param

    p = param("s.toml", "model.mlp_depth", {"low": 0, "high": 4, "step": 2})
    # step 2 over [0, 4]: the grid holds 0, 2, 4, not every integer
    assert grid({"model.mlp_depth": p}) == {"model.mlp_depth": [0, 2, 4]}


@pytest.mark.parametrize("step", [0.1, 0.25])
def test_a_float_step_that_divides_the_range_is_kept(step: float):
    from nin_search.spec.space import param

    p = param("s.toml", "model.dropout", {"low": 0.0, "high": 0.5, "step": step})
    assert p.step == step and p.kind == "float"


# --- a store that fails mid-run --------------------------------------------------------------


def _runs(folder: Path, name: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_an_unwritable_artifact_store_is_one_line_and_the_rerun_keeps_the_parent(
    tmp_path: Path, data: Path, mlflow_db: Path, call_main
):
    import mlflow

    # the experiment's artifacts go below a plain file: the parent run's first artifact fails
    # (as on a read-only or full mlruns/; chmod does not stop root, a file in the way does)
    (tmp_path / "blocked").write_text("a file where a folder is expected")
    with_mlflow_store(tmp_path, mlflow_db)  # the store itself is fine: a ready empty one
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    client.create_experiment("art", artifact_location=(tmp_path / "blocked" / "a").as_uri())
    (tmp_path / "s.toml").write_text(study_text("art", data, n_trials=1))
    res = call_main(["sweep", "s.toml"], tmp_path, {})
    # one line, a clear non-zero exit, no traceback
    assert res.returncode == 1, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "error: a store failed mid-run" in res.stderr and "Traceback" not in res.stderr
    # the parent run was ended (not left RUNNING) and recorded on the study
    (parent,) = _runs(tmp_path, "art")
    assert parent.info.status == "FINISHED"
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    study = optuna.load_study(study_name="art", storage=storage)
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    # the way cleared, the rerun resumes under the same parent run and finishes its trial
    (tmp_path / "blocked").unlink()
    res = call_main(["sweep", "s.toml"], tmp_path, {})
    assert res.returncode == 0, res.stderr
    runs = _runs(tmp_path, "art")
    assert [r.info.run_id for r in runs if r.data.tags.get("nin.role") == "study"] == [
        parent.info.run_id
    ]
    assert [t.state for t in optuna.load_study(study_name="art", storage=storage).trials] == [
        optuna.trial.TrialState.COMPLETE
    ]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 48 MiB tmpfs at tmp_path/disk (root only: skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()[:100]}")
    try:
        yield disk
    finally:
        # lazily: this process may still hold MLflow's connection to a database on it
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_mid_sweep_fails_the_trial_in_one_line_and_the_rerun_resumes(
    small_disk: Path, tmp_path: Path, data: Path, call_main
):
    (small_disk / "s.toml").write_text(study_text("full", data, n_trials=2))
    # Optuna's store elsewhere, so the failed trial can be recorded; MLflow's on the small disk
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["sweep", "s.toml", "--storage", storage]
    assert call_main([*args, "--n-trials", "1"], small_disk, {}).returncode == 0
    filler = small_disk / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * (1 << 20))
    res = call_main(args, small_disk, {})
    # the disk is full: one line, exit 1, no traceback
    assert res.returncode == 1, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "database or disk is full" in res.stderr and "Traceback" not in res.stderr
    states = [t.state for t in optuna.load_study(study_name="full", storage=storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert all(r.info.status != "RUNNING" for r in _runs(small_disk, "full"))
    # space freed, the same command finishes the study under its one parent run
    filler.unlink()
    res = call_main(args, small_disk, {})
    assert res.returncode == 0, res.stderr
    runs = _runs(small_disk, "full")
    assert sum(r.data.tags.get("nin.role") == "study" for r in runs) == 1
    assert all(r.info.status != "RUNNING" for r in runs)
    states = [t.state for t in optuna.load_study(study_name="full", storage=storage).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # a trial by ask(), not optimize()
def test_a_heartbeat_the_store_cannot_record_shows_its_traceback_only_with_debug(
    tmp_path: Path, capfd
):
    from optuna.storages._heartbeat import get_heartbeat_thread

    from nin_search.search.storage import open_storage

    db = tmp_path / "optuna.db"
    study = optuna.create_study(storage=open_storage(f"sqlite:///{db}"))
    trial = study.ask()
    # a real fault under the running trial (as a full disk is): its heartbeat cannot be written
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("DROP TABLE trial_heartbeats")

    def beat(debug: bool) -> tuple[int, str]:
        """Threads that reached threading.excepthook, and stderr, as Optuna's heartbeat
        thread records one beat (at once) and is joined, with or without --debug."""
        hooked: list = []
        hook, nin_log = threading.excepthook, logging.getLogger("nin_search")
        threading.excepthook = hooked.append
        nin_log.setLevel(logging.DEBUG if debug else logging.NOTSET)  # what --debug sets
        capfd.readouterr()
        try:
            with get_heartbeat_thread(trial._trial_id, study._storage):
                pass
        finally:
            threading.excepthook = hook
            nin_log.setLevel(logging.NOTSET)
        return len(hooked), capfd.readouterr().err

    # a store failure is left to the main thread's one line: nothing from the heartbeat
    # thread, neither a traceback nor a line of its own ...
    assert beat(debug=False) == (0, "")
    # ... and with --debug its traceback shows
    assert beat(debug=True)[0] == 1


def test_an_unreachable_postgresql_tracking_store_fails_within_seconds(tmp_path: Path, call_main):
    import time

    url = "postgresql://u:secret@127.0.0.1:1/db"  # port 1: refused at once
    start = time.monotonic()
    res = call_main(["train", "--profile", "cpu"], tmp_path, {"MLFLOW_TRACKING_URI": url})
    # one masked line, exit 2, and soon: MLflow alone retries for ~100 s
    assert time.monotonic() - start < 20
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: MLflow store postgresql://u:***@127.0.0.1:1/db")
    assert len(res.stderr.strip().splitlines()) == 1 and "secret" not in res.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_report_of_a_name_too_long_for_a_file_name_writes_a_bounded_folder(
    tmp_path: Path, call_main
):
    # a study from before names were capped: 250 two-byte characters, 500 bytes > 255
    name = "é" * 250
    url = f"sqlite:///{tmp_path}/old.db"
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    res = call_main(["report", name, "--storage", url], tmp_path, {})
    # no "File name too long": the report lands in one folder under reports/, its name cut
    # to at most 200 bytes and told apart from others by a hash
    assert res.returncode == 0, res.stderr
    (folder,) = (tmp_path / "reports").iterdir()
    assert len(folder.name.encode()) <= 200 and (folder / "index.html").is_file()


OPTUNA = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "grid": optuna.samplers.GridSampler,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
}


@pytest.mark.parametrize(
    ("table", "kind"),
    [(t, k) for t, kinds in ARGS.items() for k in kinds if k in OPTUNA],
)
def test_every_checked_argument_is_one_optuna_takes(table: str, kind: str):
    import inspect

    taken = set(inspect.signature(OPTUNA[kind].__init__).parameters)
    # a name listed here but unknown to Optuna would pass the check and fail in make_sampler
    assert set(ARGS[table][kind]) <= taken
