"""Does pruning pay? The same small search with Hyperband and without pruning, side by side.

    .venv/bin/python benchmarks/sweep_efficiency.py [--trials 81] [--epochs 27] [--seed 0] \
        [--sampler random|tpe] [--train-subset 1500] [--val-size 1500] [--width 0.125] \
        [--batch-size 32] [--[no-]batch-norm] [--parallel] [--keep DIR] [--only none|hyperband]
    .venv/bin/python benchmarks/sweep_efficiency.py --report DIR

Runs the real sweep machinery (nin_search.search.sweep.run_worker: Optuna on SQLite, every trial an
MLflow run in a temporary store) twice on real Fashion-MNIST with the same sampler seed: once with
Hyperband (min 1 epoch, max --epochs, factor 3), once without pruning. With the random sampler (the
default) both searches draw the very same configurations, so the difference is pruning's alone;
TPE's draws part ways after the first pruned trial (and under Hyperband it models each bracket's
trials apart). Reports the epochs consumed and the best val_acc of each, and the tracking overhead
(MLflow logging plus Optuna report/should_prune) per epoch as a share of the epoch time. Targets:
at least 3x fewer epochs for a best value within 0.5 points; overhead under 2%. --parallel runs the
two searches at once, one process and one torch thread each, each with its own stores (epochs and
values do not depend on it; seconds do). --keep DIR keeps both searches' stores
(DIR/none/optuna.db, DIR/hyperband/optuna.db, MLflow's beside them) for
experiments/hyperband_replay.py; by default they go to a temporary folder. --only runs one of the
two (`--only none` is all the replay needs; `--only hyperband --keep` the same DIR adds the other
later, never over an existing one; --report DIR then prints the comparison). The search itself:
lin2013 NiN on 28 px Fashion-MNIST, Adam, over train.lr (log 1e-4..3e-2), model.dropout (0..0.7)
and model.mlp_depth (0..3); --width, --batch-size, --batch-norm, --train-subset and --val-size size
it. The defaults: 81 trials of up to 27 epochs (fewer cannot save 3x: Optuna's Hyperband (1, 27, 3)
saves at most 3.6x, and every rung promotes its first arrivals), BatchNorm on as in
studies/quick.toml (without it most trials are still near chance after the first epochs, which
tells Hyperband's first rungs little), 47 steps per epoch. """

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import torch

STUDY = """
name = "{name}"
n_trials = {trials}
[model]
preset = "lin2013"
width = {width}
batch_norm = {bn}
[data]
resize = 0
train_subset = {subset}
val_size = {val}
[train]
optimizer = "adam"
batch_size = {batch}
epochs = {epochs}
[params]
"train.lr" = {{ low = 1e-4, high = 3e-2, log = true }}
"model.dropout" = {{ low = 0.0, high = 0.7 }}
"model.mlp_depth" = {{ low = 0, high = 3 }}
[sampler]
type = "{sampler}"
seed = {seed}
[pruner]
type = "{pruner}"
"""


def run(folder: Path, pruner: str, args: argparse.Namespace) -> dict:
    """One search in folder/<pruner>/ (its own Optuna and MLflow stores), in this process."""
    from nin_search.search.sweep import run_worker
    from nin_search.spec.study import load_study

    if args.parallel:
        torch.set_num_threads(1)
    folder = folder / pruner
    folder.mkdir()
    os.chdir(folder)  # MLflow's default store lands in this temporary folder
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
            sampler=args.sampler,
            subset=args.train_subset,
            val=args.val_size,
            width=args.width,
            batch=args.batch_size,
            bn=str(args.batch_norm).lower(),
        )
    )
    url = f"sqlite:///{folder}/optuna.db"
    start = time.perf_counter()
    run_worker(load_study(str(path)), url, trials, None, None)
    (folder / "wall_s.json").write_text(json.dumps(time.perf_counter() - start))
    return summarize(folder.parent, pruner)


def summarize(folder: Path, pruner: str) -> dict:
    """What one search in folder/<pruner>/ consumed and found, read from its Optuna store."""
    from nin_search.search.storage import open_storage

    wall = folder / pruner / "wall_s.json"
    url = f"sqlite:///{folder / pruner / 'optuna.db'}"
    study = optuna.load_study(study_name=f"efficiency-{pruner}", storage=open_storage(url))
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
        "best_trial": study.best_trial.number,
        "fate": {t.number: (t.state.name.lower(), t.user_attrs.get("epochs", 0)) for t in done},
        "tracking_s": sum(t.user_attrs.get("tracking_s", 0.0) for t in done),
        "epoch_s": sum(t.user_attrs.get("epoch_s", 0.0) for t in done),
        "wall_s": json.loads(wall.read_text()) if wall.exists() else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=81)
    ap.add_argument("--epochs", type=int, default=27)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-subset", type=int, default=1500)
    ap.add_argument("--val-size", type=int, default=1500)
    ap.add_argument("--width", type=float, default=0.125, help="model.width of lin2013")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--batch-norm", action=argparse.BooleanOptionalAction, default=True, help="BatchNorm"
    )
    ap.add_argument("--sampler", default="random", choices=("random", "tpe"))
    ap.add_argument("--parallel", action="store_true", help="both searches at once")
    ap.add_argument("--keep", type=Path, help="keep the stores here, a new subfolder each")
    ap.add_argument("--only", choices=("none", "hyperband"), help="run one of the two searches")
    ap.add_argument("--report", type=Path, help="compare the two searches kept in this folder")
    args = ap.parse_args()
    if args.report:  # both searches ran before, --only and --keep, perhaps on two machines
        print(f"\nthe searches kept in {args.report}")
        compare([summarize(args.report, p) for p in ("none", "hyperband")], args.sampler)
        return
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    pruners = (args.only,) if args.only else ("none", "hyperband")
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)  # run() refuses a used subfolder
            tmp = args.keep.resolve()
        if args.parallel and not args.only:
            with concurrent.futures.ProcessPoolExecutor(2) as pool:
                rows = list(pool.map(run, [Path(tmp)] * 2, pruners, [args] * 2))
        else:
            rows = [run(Path(tmp), p, args) for p in pruners]
        os.chdir(Path(__file__).parent)  # out of the folder before it goes
    if args.only:
        r = rows[0]
        print(
            f"\n{args.only}: {r['trials']} trials ({r['pruned']} pruned), {r['epochs']} epochs, "
            f"best {r['best']:.4f} (trial {r['best_trial']}), {r['wall_s']:.0f} s"
        )
        return
    print(
        f"\n{args.trials} trials x {args.epochs} epochs, {args.sampler} sampler seed {args.seed}, "
        f"{args.train_subset} training / {args.val_size} validation images, "
        f"width {args.width}, batch {args.batch_size}"
        + (", batch_norm" if args.batch_norm else "")
        + (", the two searches in parallel (one thread each)" if args.parallel else "")
    )
    compare(rows, args.sampler)


def compare(rows: list[dict], sampler: str) -> None:
    """The table and the two target lines: rows = (no pruning, Hyperband)."""
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
            f"({1000 * r['tracking_s'] / r['epochs']:.0f} ms/epoch) | "
            + (f"{r['wall_s']:.0f} s |" if r["wall_s"] is not None else "not kept |")
        )
    print(
        f"\nepochs: {base['epochs'] / hb['epochs']:.2f}x fewer with Hyperband (target >= 3x); "
        f"best val_acc {100 * (hb['best'] - base['best']):+.2f} points (target within 0.5)"
    )
    if sampler == "random":  # the same configuration under the same trial number
        state, epochs = hb["fate"].get(base["best_trial"], ("missing", 0))
        print(
            f"the unpruned search's best, trial {base['best_trial']}, was {state} under "
            f"Hyperband after {epochs} epochs; Hyperband's best is trial {hb['best_trial']}"
        )


if __name__ == "__main__":
    main()
