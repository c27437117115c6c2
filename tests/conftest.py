"""Shared fixtures: tiny (Fashion-)MNIST-shaped IDX files written into tmp_path, an empty
MLflow store to copy, and nin_here: a command run in this process instead of a new python."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from builders import (
    squares,
    with_mlflow_store,
    write_idx,
)

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


@pytest.fixture
def work(tmp_path: Path, mlflow_db: Path) -> Path:
    """tmp_path with a ready (empty) default MLflow store in mlruns/."""
    return with_mlflow_store(tmp_path, mlflow_db)


@pytest.fixture(scope="module")
def pg_url() -> str:
    """A PostgreSQL server's URL for the multi-machine tests: $NIN_SEARCH_TEST_PG_URL (CI sets it
    through .ci/postgres.sh; without it they skip, and in CI they fail)."""
    url = os.environ.get("NIN_SEARCH_TEST_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must set NIN_SEARCH_TEST_PG_URL (see .ci/postgres.sh)")
        pytest.skip("NIN_SEARCH_TEST_PG_URL is not set; `bash .ci/postgres.sh` prints one")
    return url
