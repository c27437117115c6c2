"""How long an ablation or sweep file will take here: a short timed fit per arm, scaled up.

    .venv/bin/python benchmarks/study_time.py studies/ablate_head.toml [more.toml ...] \
        [--steps 40] [--rounds 2]

For every arm of an ablation (a sweep: its base config, the search space's midpoint is not
sampled) it runs the engine's own fit() on `--steps` batches of the real training split for one
epoch and reads its img_per_s (training only), interleaving the arms for `--rounds` rounds and
keeping each arm's median. A cell's time is then epochs x (train images / img_per_s) plus the
validation passes, timed the same way; the study's time is the sum over its cells (one worker).
The figures go into the study files' comments. Imports only torch and nin_search.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from nin_search.engine.config import Config, apply
from nin_search.engine.data import load_data
from nin_search.engine.train import evaluate, fit, resolve_device, resolved
from nin_search.spec.ablation import load_ablation
from nin_search.spec.study import load_study, read_toml, with_params


def arms_of(path: str) -> tuple[list[tuple[str, Config]], int]:
    """[(arm, config)] and the number of cells (seeds x arms, or n_trials)."""
    if "arms" in read_toml(path):
        study = load_ablation(path)
        cfgs = [(arm, with_params(study, {"arm": arm}, path)) for arm in study.arms]
        return cfgs, len(study.seeds) * len(study.arms)
    study = load_study(path)
    return [("base", study.base_config())], study.n_trials


def timed_fit(cfg: Config, steps: int) -> tuple[float, float]:
    """(training img/s, seconds of one validation pass) for cfg on `steps` batches."""
    device = resolve_device(cfg.train.device)
    short = apply(
        cfg,
        {"train.epochs": 1, "data.train_subset": steps * cfg.train.batch_size},
        "study_time",
    )
    data = load_data(short.data, device, with_test=False)
    result = fit(resolved(short, device), data)
    start = time.perf_counter()
    evaluate(result.model, data.val_x, data.val_y, data, resolved(short, device).train.precision)
    return result.history[0]["img_per_s"], time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per arm")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the arms")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| study | arm | img/s | s per cell | cells | study total |")
    print("|---|---|---:|---:|---:|---:|")
    for path in a.studies:
        arms, cells = arms_of(path)
        rates: dict[str, list[tuple[float, float]]] = {arm: [] for arm, _ in arms}
        for _ in range(a.rounds):
            for arm, cfg in arms:
                rates[arm].append(timed_fit(cfg, a.steps))
        total = 0.0
        for arm, cfg in arms:
            img_s = statistics.median(r for r, _ in rates[arm])
            val_s = statistics.median(v for _, v in rates[arm])
            # Fashion-MNIST and MNIST both have 60,000 training images
            n_train = cfg.data.train_subset or (60_000 - cfg.data.val_size)
            cell = cfg.train.epochs * (n_train / img_s + val_s)
            total += cell * cells / len(arms)
            name, per_arm = Path(path).name, cells // len(arms)
            print(f"| {name} | {arm} | {img_s:,.0f} | {cell:,.0f} | {per_arm} | |")
        print(f"| {Path(path).name} | all | | | {cells} | {total / 60:,.0f} min |", flush=True)


if __name__ == "__main__":
    main()
