"""Hyperband on real learning curves: a finished unpruned search replayed through Optuna's pruner.

    .venv/bin/python benchmarks/sweep_efficiency.py --trials 81 --epochs 27 --keep DIR
    .venv/bin/python experiments/hyperband_replay.py DIR [--orders 200] [--seed 0]

A seeded trial trains the same way whether it is pruned later or not (the same configuration,
data order and schedule), so the unpruned search of sweep_efficiency.py holds every curve a pruned
search of the same configurations can see: trial k's val_acc after every epoch. This feeds those
curves, epoch by epoch, to a fresh study with Optuna's own HyperbandPruner(1, epochs, 3) and
reports the epochs consumed and the best value (the best epoch's val_acc, the sweep's objective)
against the unpruned search. Only the training is replayed; every pruning decision is Optuna's.

Order 0 is the real one, under the study name sweep_efficiency.py gives its Hyperband search
(Optuna assigns brackets by a hash of the study name and trial number): its row must match the
real Hyperband search in DIR/hyperband, which is checked trial by trial. The other orders shuffle
the configurations: other draws of the same search, so one expensive unpruned run tells how
often Hyperband meets the target (at least 3x fewer epochs, best within 0.5 points) on real curves.
Imports optuna only.
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import optuna
from optuna.trial import TrialState

NAME = "efficiency-hyperband"  # sweep_efficiency.py's study name: Optuna's brackets hash it


def curves(folder: Path, pruner: str) -> tuple[list[list[float]], int]:
    """Each trial's val_acc per epoch, in trial order, and the study's epoch budget."""
    study = optuna.load_study(
        study_name=f"efficiency-{pruner}", storage=f"sqlite:///{folder / pruner / 'optuna.db'}"
    )
    trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    out = [[t.intermediate_values[e] for e in sorted(t.intermediate_values)] for t in trials]
    return out, max((len(c) for c in out), default=0)


def replay(runs: list[list[float]], epochs: int) -> tuple[int, float, list[int]]:
    """(epochs consumed, best value, epochs per trial) of a Hyperband search over these curves."""
    used: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        curve = runs[trial.number]
        for epoch, value in enumerate(curve, 1):
            trial.report(value, epoch)
            if trial.should_prune():
                used.append(epoch)
                raise optuna.TrialPruned()
        used.append(len(curve))
        return max(curve)

    study = optuna.create_study(
        study_name=NAME, direction="maximize", pruner=optuna.pruners.HyperbandPruner(1, epochs, 3)
    )
    study.optimize(objective, n_trials=len(runs))
    best = max(max(c[:n]) for c, n in zip(runs, used, strict=True))
    return sum(used), best, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="sweep_efficiency.py --keep's folder")
    ap.add_argument("--orders", type=int, default=200, help="shuffled orders besides the real one")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffles")
    a = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs, epochs = curves(a.folder, "none")
    full = sum(len(c) for c in runs)
    top = max(max(c) for c in runs)
    near = sum(max(c) >= top - 0.005 for c in runs)
    print(
        f"unpruned: {len(runs)} trials, {full} epochs, best {top:.4f}; "
        f"{near} trial(s) within 0.5 points of it, itself included"
    )
    used, best, per_trial = replay(runs, epochs)
    if (a.folder / "hyperband" / "optuna.db").exists():
        real = [len(c) for c in curves(a.folder, "hyperband")[0]]
        same = "match" if real == per_trial else f"DIFFER from ({sum(real)} epochs)"
        same = f"epochs per trial {same} the real Hyperband search"
        if len(real) != len(runs):
            same = f"the real Hyperband search has {len(real)} of {len(runs)} trials: not compared"
    else:
        same = "no real Hyperband search to check against (--only none)"
    winner = max(range(len(runs)), key=lambda k: max(runs[k]))
    print(
        f"order 0 (the real one): {full / used:.2f}x fewer epochs ({used}), best {best:.4f} "
        f"({100 * (best - top):+.2f} points); the unpruned best, trial {winner}, ran "
        f"{per_trial[winner]} of its {len(runs[winner])} epochs; {same}"
    )
    if a.orders < 1:
        return
    rng = random.Random(a.seed)
    ratios, gaps = [], []
    for _ in range(a.orders):
        order = rng.sample(runs, len(runs))
        used, best, _ = replay(order, epochs)
        ratios.append(full / used)
        gaps.append(100 * (best - top))
    met = sum(r >= 3 and g >= -0.5 for r, g in zip(ratios, gaps, strict=True))
    kept = sum(g == 0 for g in gaps)
    print(
        f"{a.orders} shuffled orders: {statistics.mean(ratios):.2f}x fewer epochs "
        f"[{min(ratios):.2f}, {max(ratios):.2f}], best {statistics.mean(gaps):+.2f} points "
        f"[{min(gaps):+.2f}, {max(gaps):+.2f}]; the unpruned best kept in {kept}; "
        f"both targets met in {met} of {a.orders} ({100 * met / a.orders:.0f}%)"
    )


if __name__ == "__main__":
    main()
