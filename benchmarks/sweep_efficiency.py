"""Does pruning pay? The same small search with Hyperband and without pruning, side by side.

    .venv/bin/python benchmarks/sweep_efficiency.py [--trials 15] [--epochs 9] [--seed 0]

Runs the real sweep machinery (nin_search.sweep.run_worker: Optuna on SQLite, every trial an MLflow
run in a temporary store) twice on real Fashion-MNIST with the same TPE seed: once with
Hyperband, once without pruning. Reports the epochs consumed and the best val_acc of each, and
the tracking overhead (MLflow logging plus Optuna report/should_prune) per epoch as a share of
the epoch time. Targets: at least 3x fewer epochs for a best value within 0.5 points; overhead
under 2%.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import textwrap
import time
from pathlib import Path

import optuna

STUDY = """
name = "{name}"
n_trials = {trials}
[model]
preset = "lin2013"
width = 0.25
[data]
resize = 0
train_subset = {subset}
val_size = {val}
[train]
optimizer = "adam"
batch_size = 64
epochs = {epochs}
[params]
"train.lr" = {{ low = 1e-4, high = 3e-2, log = true }}
"model.dropout" = {{ low = 0.0, high = 0.7 }}
"model.mlp_depth" = {{ low = 0, high = 3 }}
[sampler]
type = "tpe"
seed = {seed}
[pruner]
type = "{pruner}"
"""


def run(folder: Path, pruner: str, args: argparse.Namespace) -> dict:
    from nin_search.storage import open_storage
    from nin_search.study import load_study
    from nin_search.sweep import run_worker

    path = folder / f"{pruner}.toml"
    name = f"efficiency-{pruner}"
    trials = args.trials
    path.write_text(
        STUDY.format(
            name=name,
            trials=trials,
            epochs=args.epochs,
            seed=args.seed,
            pruner=pruner,
            subset=args.train_subset,
            val=args.val_size,
        )
    )
    url = f"sqlite:///{folder}/optuna.db"
    start = time.perf_counter()
    run_worker(load_study(str(path)), url, trials, None, None)
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    done = [
        t
        for t in study.trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    return {
        "pruner": pruner,
        "trials": len(done),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
        "epochs": sum(t.user_attrs.get("epochs", 0) for t in done),
        "best": study.best_value,
        "tracking_s": sum(t.user_attrs.get("tracking_s", 0.0) for t in done),
        "epoch_s": sum(t.user_attrs.get("epoch_s", 0.0) for t in done),
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-subset", type=int, default=1000)
    ap.add_argument("--val-size", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chdir(folder)  # MLflow's default store lands in this temporary folder
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        rows = [run(folder, p, args) for p in ("none", "hyperband")]
    base, hb = rows
    print(
        textwrap.dedent("""
        | pruner | trials (pruned) | epochs consumed | best val_acc | tracking overhead | wall |
        |---|---|---|---|---|---|""")
    )
    for r in rows:
        share = r["tracking_s"] / r["epoch_s"]
        print(
            f"| {r['pruner']} | {r['trials']} ({r['pruned']}) | {r['epochs']} | "
            f"{r['best']:.4f} | {100 * share:.2f}% of epoch time "
            f"({1000 * r['tracking_s'] / r['epochs']:.0f} ms/epoch) | {r['wall_s']:.0f} s |"
        )
    print(
        f"\nepochs: {base['epochs'] / hb['epochs']:.2f}x fewer with Hyperband (target >= 3x); "
        f"best val_acc {100 * (hb['best'] - base['best']):+.2f} points (target within 0.5)"
    )


if __name__ == "__main__":
    main()
