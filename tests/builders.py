"""Builders the tests share: tiny configs, study and ablation files, IDX files and images,
and commands run in the test's process or as `python -m nin_search`. Fixtures live in conftest.py.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import mlflow.tracking._tracking_service.utils as mlflow_uri
import optuna
import pytest
import torch
from optuna.trial import TrialState

from nin_search.cli.main import main as cli
from nin_search.search.storage import DEFAULT_STORAGE
from nin_search.search.sweep import run_sweep
from nin_search.spec.ablation import load_ablation
from nin_search.spec.study import load_study


# images and IDX files, commands in the test's process, stores
def idx_bytes(t: torch.Tensor) -> bytes:
    """A uint8 tensor as an IDX file: big-endian magic (0, 0, 0x08, ndim), dims, raw bytes."""
    header = (0x0800 + t.ndim).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in t.shape)
    return header + t.to(torch.uint8).contiguous().numpy().tobytes()


def write_idx(path: Path, t: torch.Tensor) -> Path:
    """Write t as an IDX file at path, gzipped when the name ends in .gz."""
    raw = idx_bytes(t)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def squares(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 28x28 images: class k is a bright block in cell k of a 2x5 grid, on dim noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 40, (n, 28, 28), generator=g).to(torch.uint8)
    for k in range(10):
        r, c = divmod(k, 5)
        x[y == k, 3 + 12 * r : 11 + 12 * r, 1 + 5 * c : 6 + 5 * c] = 255
    return x, y


def with_mlflow_store(folder: Path, mlflow_db: Path) -> Path:
    """folder with a ready (empty) default MLflow store in mlruns/."""
    (folder / "mlruns").mkdir()
    shutil.copy(mlflow_db, folder / "mlruns" / "mlflow.db")
    return folder


# variables a test's environment may hold that a command must not inherit (as test_sweep._env)
_NOT_INHERITED = (
    "MLFLOW_TRACKING_URI", "NIN_SEARCH_STORAGE", "NIN_SEARCH_HEARTBEAT_S", "NIN_SEARCH_COMMAND",
)  # fmt: skip


def nin_here(*argv: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m nin_search ARGV` in cwd, run in this process through cli.main: its exit code,
    stdout and stderr as subprocess.run gives them. For claims about what a command does, not
    about the process it runs in (signals, kills, concurrent workers, the `python -m` entry
    point keep a subprocess): it saves the ~3 s of imports a new python pays.

    The environment is the one the tests' subprocesses get (no store named, offline), plus env;
    the working directory, environment, MLflow's tracking URI and Optuna's verbosity are put
    back afterwards."""
    import mlflow.tracking._tracking_service.utils as mlflow_uri
    import optuna

    from nin_search.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    verbosity = optuna.logging.get_verbosity()
    env_before = dict(os.environ)
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    handlers = {s: signal.getsignal(s) for s in signals}
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(cwd)
            for k in _NOT_INHERITED:
                os.environ.pop(k, None)
            os.environ.update({"NIN_SEARCH_OFFLINE": "1"} | (env or {}))
            # set_tracking_uri keeps the URI in this module global
            mp.setattr(mlflow_uri, "_tracking_uri", mlflow_uri._tracking_uri)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(list(argv))
                except SystemExit as e:  # argparse's usage errors
                    code = e.code if isinstance(e.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        optuna.logging.set_verbosity(verbosity)
        changed = {s for s in signals if signal.getsignal(s) != handlers[s]}
        for s in signals:
            signal.signal(s, handlers[s])
    assert not changed, f"signal handlers left changed: {changed}"
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def nin_here_ok(*argv: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """nin_here that must exit 0 (its output shown where it does not)."""
    res = nin_here(*argv, cwd=cwd, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


# study files and sweeps
# A small NiN on 16 px images: a 2-epoch trial takes under a second on one core.
STUDY_TINY = {
    "model.preset": "lin2013",
    "model.width": 0.25,
    "model.final_relu": False,
    "model.dropout": 0.0,
    "data.resize": 16,
    "data.val_size": 64,
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.optimizer": "adam",
}


LR = {"train.lr": "{ low = 1e-3, high = 1e-2, log = true }"}


def tables(values: dict) -> list[str]:
    """Dotted values as [model], [data] and [train] TOML tables."""
    lines = []
    for section in ("model", "data", "train"):
        lines.append(f"[{section}]")
        lines += [
            f"{key.split('.', 1)[1]} = {json.dumps(value)}"
            for key, value in values.items()
            if key.startswith(section + ".")
        ]
    return lines


def study_text(
    name: str,
    data: Path,
    n_trials: int | str = 2,
    params: dict[str, str] | None = None,
    settings: dict | None = None,
    sampler: str = 'type = "random"',
    pruner: str = 'type = "none"',
    top: str = "",
) -> str:
    """A study file: STUDY_TINY (and settings) as tables, params as inline TOML tables."""
    params = LR if params is None else params
    # a searched key is not also fixed (load_study refuses that): STUDY_TINY leaves it to the
    # search
    fixed = {k: v for k, v in STUDY_TINY.items() if k not in params}
    values = fixed | {"data.data_dir": str(data)} | (settings or {})
    lines = [f"name = {json.dumps(name)}", f"n_trials = {n_trials}", top] + tables(values)
    lines.append("[params]")
    lines += [f'"{key}" = {spec}' for key, spec in params.items()]
    lines += ["[sampler]", sampler, "[pruner]", pruner]
    return "\n".join(lines) + "\n"


def write_study(folder: Path, name: str, data: Path, **kw) -> Path:
    path = folder / "study.toml"
    path.write_text(study_text(name, data, **kw))
    return path


def _env(extra: dict | None = None) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "NIN_SEARCH_STORAGE", "NIN_SEARCH_HEARTBEAT_S")
    }
    # one torch thread per process: the concurrent tests share two cores
    env |= {"NIN_SEARCH_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return env | (extra or {})


def sweep(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m nin_search sweep ARGS` in cwd, so the default stores land in cwd/mlruns."""
    return subprocess.run(
        [sys.executable, "-m", "nin_search", "sweep", *args],
        cwd=cwd,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def sweep_ok(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """sweep() for a test's setup: a failing command fails the test with its stderr."""
    res = sweep(*args, cwd=cwd, env=env)
    # the command itself succeeded
    assert res.returncode == 0, res.stderr
    return res


def start_sweep(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nin_search", "sweep", *args],
        cwd=cwd,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell without job control starts background jobs with SIGINT ignored, and Python
        # then installs no KeyboardInterrupt handler: give the sweep the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlruns' / 'optuna.db'}"


def trials(folder: Path, name: str, storage=None) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage or sqlite_url(folder))
    return study.get_trials(deepcopy=False)


def runs(folder: Path, name: str):
    """The experiment's MLflow runs (deleted ones left out) as a DataFrame."""
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[name])


def children(folder: Path, name: str):
    df = runs(folder, name)
    return df[df["tags.nin.role"] != "study"]


def parents(folder: Path, name: str):
    df = runs(folder, name)
    return df[df["tags.nin.role"] == "study"]


def wait_for_running_trial(proc: subprocess.Popen, folder: Path, name: str) -> int:
    """The number of the first RUNNING trial that has its MLflow run, once there is one."""
    header = proc.stdout.readline()  # printed once the study and the parent run exist
    assert header.startswith("study "), header + proc.stderr.read()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = [
            t
            for t in trials(folder, name)
            if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
        ]
        if running:
            return running[0].number
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    raise AssertionError("no trial started within 120 s")


@contextlib.contextmanager
def inside(folder: Path):
    """Run in folder with its default stores (mlruns/), as a command or a notebook started
    there would: no store variables, offline, MLflow's tracking URI put back afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for k in ("MLFLOW_TRACKING_URI", "NIN_SEARCH_STORAGE", "NIN_SEARCH_COMMAND"):
            mp.delenv(k, raising=False)
        mp.setenv("NIN_SEARCH_OFFLINE", "1")
        mp.setattr(mlflow_uri, "_tracking_uri", mlflow_uri._tracking_uri)  # set_tracking_uri's
        yield


def swept_here(folder: Path, kind: str = "sweep") -> SimpleNamespace:
    """run_sweep on folder/study.toml in this process, as `sweep` runs it there but without
    the command's checks at load (check_space, check_arms): its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    verbosity = optuna.logging.get_verbosity()
    with inside(folder):
        study = (load_ablation if kind == "ablate" else load_study)("study.toml")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_sweep(study, DEFAULT_STORAGE)
    optuna.logging.set_verbosity(verbosity)
    return SimpleNamespace(code=code, out=out.getvalue(), err=err.getvalue())


def sweep_refused(folder: Path, monkeypatch, capfd) -> str:
    """`sweep study.toml` in folder, no store named by the environment: exit code 2, one line
    on stderr (returned: it names the file, the key and the value) and no mlruns/ (checked
    before any store is touched, so no study and no run)."""
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NIN_SEARCH_STORAGE", raising=False)
    code = cli(["sweep", "study.toml"])
    _, err = capfd.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert not (folder / "mlruns").exists()
    return err


# ablation files and commands as processes
def ablation_text(name: str, data: Path, seeds="[0, 1]", arms=None, top="") -> str:
    values = STUDY_TINY | {"data.data_dir": str(data), "train.lr": 0.003}
    lines = [f"name = {json.dumps(name)}", f"seeds = {seeds}", top] + tables(values)
    arms = {"gap": {"model.head": "gap"}, "fc": {"model.head": "fc"}} if arms is None else arms
    for arm, overrides in arms.items():
        lines.append(f"[arms.{arm}]")
        lines += [f'"{k}" = {json.dumps(v)}' for k, v in overrides.items()]
    return "\n".join(lines) + "\n"


def nin(*args: str, cwd: Path, timeout: int = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nin_search", *args],
        cwd=cwd,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def nin_ok(*args: str, cwd: Path, env=None) -> subprocess.CompletedProcess:
    res = nin(*args, cwd=cwd, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def start_nin(*args: str, cwd: Path, env=None, stdout=subprocess.PIPE) -> subprocess.Popen:
    """The CLI in the background, its stderr kept for a failure's message; stdout=DEVNULL for a
    run nobody reads, whose output would otherwise fill the pipe and stall it."""
    return subprocess.Popen(
        [sys.executable, "-m", "nin_search", *args],
        cwd=cwd,
        env=_env(env),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


# a tiny config file (TOML)
CLI_TINY = """
[model]
preset = "lin2013"
width = 0.125
[data]
resize = 0
val_size = 40
train_subset = 0
[train]
epochs = 2
batch_size = 32
optimizer = "adam"
lr = 0.003
"""


# tiny settings for the Python API
API_TINY = {
    "model.width": 0.25,
    "data.resize": 16,
    "data.val_size": 64,
    "train.batch_size": 32,
    "lr_finder.num_iter": 30,
}


# model sizes and knobs
# A small input each preset accepts, so forward passes stay fast on 2 CPU cores.
SMALL = {"d2l": 67, "lin2013": 28, "nin11": 32, "nin16": 32, "nin19": 32}


# Feature-map sizes do not depend on width; spatial_trace builds the layers it measures, so the
# size searches below run at quarter width to stay fast, and so do the VGG-sized presets.
NARROW = 0.25


WIDTH = {"d2l": 1.0, "lin2013": 1.0, "nin11": NARROW, "nin16": NARROW, "nin19": NARROW}


KNOBS = {
    "mlp_depth=0": {"mlp_depth": 0},
    "mlp_depth=1": {"mlp_depth": 1},
    "mlp_depth=2": {"mlp_depth": 2},
    "mlp_depth=3": {"mlp_depth": 3},
    "mlp_kernel=3": {"mlp_kernel": 3},
    "head=fc": {"head": "fc"},
    "reduction=gradual": {"reduction": "gradual"},
    "batch_norm": {"batch_norm": True},
    "width=0.5": {"width": 0.5},
    "final_relu=false": {"final_relu": False},
    "dropout=0": {"dropout": 0.0},
}
