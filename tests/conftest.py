"""Shared fixtures: tiny (Fashion-)MNIST-shaped IDX files written into tmp_path, an empty
MLflow store to copy, and nin_here: a command run in this process instead of a new python."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions: (N, rows, cols)
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension: (N,)

# The tests use tiny tensors: with a second OpenMP thread every op pays a wake-up that costs
# more than it saves, and on a shared 2-core box a busy neighbour makes each op ~100x slower.
torch.set_num_threads(1)

# `make test` hands out whole files (--dist loadfile) in this order (--no-loadscope-reorder):
# the longest first, so that no long file starts last and leaves one worker running alone.
# Seconds per file, summed over its tests (pytest --junitxml, 2 workers, PostgreSQL, a clone,
# 2026-12-08, with another full suite running beside it for most of the run, which slows the
# files of several real processes most): sweep 208, machines 163, tuning 133, workers 132,
# pareto 130, cli 112, notebooks 112, ablation 107, ui 69, snapshot 67, cpu_memory 48, api 33,
# notebook 33, bad_input 31, evaluate 24, accounting 15, dashboard 10; the rest under 10.
# Files not named here go last. benchmarks/RESULTS.md, "make test's file order".
LONGEST_FIRST = [
    "test_sweep.py", "test_machines.py", "test_tuning.py", "test_workers.py", "test_pareto.py",
    "test_cli.py", "test_notebooks.py", "test_ablation.py", "test_ui.py", "test_snapshot.py",
    "test_cpu_memory.py", "test_api.py", "test_notebook.py", "test_bad_input.py",
    "test_evaluate.py", "test_accounting.py", "test_dashboard.py", "test_engine_deps.py",
    "test_model.py", "test_lr_finder.py", "test_docs.py", "test_train.py", "test_chance.py",
    "test_precision.py",
]  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before --sw drops the items ahead of its last failure
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the files as LONGEST_FIRST says; a file's own tests keep their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    """The tests' own $XDG_CACHE_HOME, inherited by the commands they start: studies on a
    database server keep their snapshots there (snapshot.py), not in the user's ~/.cache."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture
def idx_writer() -> Callable[[Path, torch.Tensor], Path]:
    """write_idx(path, tensor) for tests that build their own (or broken) files."""
    return write_idx


@pytest.fixture
def make_idx_dir() -> Callable[..., Path]:
    """make_idx_dir(folder, n_train=60, n_test=20, gz=False) writes the four IDX files.

    Image i of the training split is filled with the value i % 256 and labelled i % 10, so a
    loaded image tells which file row it came from.
    """

    def make(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        ext = ".gz" if gz else ""
        for prefix, n in (("train", n_train), ("t10k", n_test)):
            rows = torch.arange(n)
            images = (rows % 256).to(torch.uint8)[:, None, None].expand(n, 28, 28)
            write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
            write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", (rows % 10).to(torch.uint8))
        return folder

    return make


@pytest.fixture
def offline_nowhere(tmp_path, monkeypatch) -> Path:
    """No dataset anywhere: empty Debian dir, empty cwd, no $NIN_SEARCH_DATA, no download."""
    import nin_search.engine.data as data

    empty = tmp_path / "system"
    empty.mkdir()
    monkeypatch.setattr(data, "SYSTEM_DIRS", {k: str(empty) for k in data.SYSTEM_DIRS})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NIN_SEARCH_DATA", raising=False)
    monkeypatch.setenv("NIN_SEARCH_OFFLINE", "1")
    return tmp_path


def squares(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 28x28 images: class k is a bright block in cell k of a 2x5 grid, on dim noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 40, (n, 28, 28), generator=g).to(torch.uint8)
    for k in range(10):
        r, c = divmod(k, 5)
        x[y == k, 3 + 12 * r : 11 + 12 * r, 1 + 5 * c : 6 + 5 * c] = 255
    return x, y


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """256 training and 16 test images of the squares task as IDX files."""
    folder = tmp_path_factory.mktemp("squares")
    for prefix, n, seed in (("train", 256, 0), ("t10k", 16, 1)):
        x, y = squares(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y)
    return folder


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, migrated once per pytest worker, for end-to-end tests to
    copy: MLflow builds a new one by running all its migrations, 3.7-3.9 s on an idle 2-core Zen
    3 (6-10 s while the other worker runs). The tests of a new store (made where the command
    runs, nothing written on bad input, two commands racing to make it) do not use it."""
    import mlflow

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    with contextlib.chdir(path.parent):  # the Default experiment's artifacts: in there, not here
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def with_mlflow_store(folder: Path, mlflow_db: Path) -> Path:
    """folder with a ready (empty) default MLflow store in mlruns/."""
    (folder / "mlruns").mkdir()
    shutil.copy(mlflow_db, folder / "mlruns" / "mlflow.db")
    return folder


@pytest.fixture
def work(tmp_path: Path, mlflow_db: Path) -> Path:
    """tmp_path with a ready (empty) default MLflow store in mlruns/."""
    return with_mlflow_store(tmp_path, mlflow_db)


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
