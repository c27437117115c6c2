"""The engine runs with torch alone, as on a bare GPU machine with nothing else installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BENCH = Path(__file__).parents[2] / "benchmarks" / "lr_finder_regret.py"
BLOCKED = ("optuna", "mlflow", "pandas", "plotly", "tqdm", "sqlalchemy", "scipy")


def test_engine_trains_with_only_torch_importable():
    script = textwrap.dedent(f"""
        import sys
        import tempfile
        from pathlib import Path

        for name in {BLOCKED!r}:
            sys.modules[name] = None  # "import name" now raises ImportError, as if absent
        import importlib
        import pkgutil

        import torch
        import nin_search
        import nin_search.engine
        from nin_search.engine.summary import summarize

        # the package's face and every module of the engine import with torch alone
        for m in pkgutil.iter_modules(nin_search.engine.__path__):
            importlib.import_module(f"nin_search.engine.{{m.name}}")
        from nin_search.engine.config import load_config
        from nin_search.engine.data import split_data
        from nin_search.engine.lr_finder import find_lr
        from nin_search.engine.train import fit

        cfg = load_config(overrides=["model.preset=lin2013", "model.width=0.125",
                                     "data.resize=0", "data.val_size=16", "train.epochs=1",
                                     "train.batch_size=16", "lr_finder.num_iter=10"])
        x = torch.randint(0, 255, (64, 28, 28), dtype=torch.uint8)
        y = torch.randint(0, 10, (64,))
        data = split_data(x, y, cfg.data, "cpu")
        snap = Path(tempfile.mkdtemp()) / "s.pt"  # a snapshot written and resumed from
        fit(cfg, data, snapshot=snap)
        print(fit(cfg, data, snapshot=snap).status, summarize(cfg)["totals"]["params"] > 0,
              find_lr(cfg, data).status in ("ok", "no-descent", "diverged-at-once"))
        print(sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}
                     and sys.modules[m] is not None))
    """)
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    # every engine module imported, the model, data, training (snapshots too), summary and
    # lr-finder code ran, and nothing else was loaded
    assert res.stdout.splitlines() == ["completed True True", "[]"]


def test_lr_finder_regret_benchmark_imports_only_torch_and_the_engine():
    script = textwrap.dedent(f"""
        import runpy, sys

        for name in {BLOCKED!r}:
            sys.modules[name] = None
        runpy.run_path({str(BENCH)!r}, run_name="not_main")
        print(sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}
                     and sys.modules[m] is not None))
    """)
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    # the benchmark runs on a GPU machine that has torch alone
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["[]"]
