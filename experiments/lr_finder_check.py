"""Does the lr-finder's recommendation train? Short runs at 0.1x, 1x and 10x of it.

    .venv/bin/python experiments/lr_finder_check.py [--profile quick] [--set KEY=VALUE ...]

For each optimizer (SGD, SGD with momentum 0.9, AdamW) on real Fashion-MNIST at the given profile:
the finder's suggestions, then one short run (the profile's epochs) at 0.1x, 1x and 10x the
recommended lr, and the final val accuracy of each. Prints a markdown table for RESULTS.md.
Imports only torch and nin_search's engine.
"""

from __future__ import annotations

import argparse
import time

import torch

from nin_search.engine.config import load_config
from nin_search.engine.data import load_data
from nin_search.engine.lr_finder import find_lr
from nin_search.engine.train import fit, resolve_device

OPTIMIZERS = {
    "sgd": ["train.optimizer=sgd"],
    "sgd, momentum 0.9": ["train.optimizer=sgd", "train.momentum=0.9"],
    "adamw": ["train.optimizer=adamw"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    rows = []
    data = None
    for name, sets in OPTIMIZERS.items():
        cfg = load_config(overrides=sets + args.sets, profile=args.profile)
        if data is None:
            data = load_data(cfg.data, resolve_device(cfg.train.device), with_test=False)
        start = time.perf_counter()
        f = find_lr(cfg, data)
        took = time.perf_counter() - start
        if f.status != "ok":
            rows.append(f"| {name} | {f.status}: {f.message} | - | - | - |")
            print(rows[-1], flush=True)
            continue
        accs = []
        for factor in (0.1, 1.0, 10.0):
            lr = f.recommended_lr * factor
            run_cfg = load_config(
                overrides=sets + args.sets + [f"train.lr={lr}"], profile=args.profile
            )
            r = fit(run_cfg, data)
            accs.append(
                f"{r.history[-1]['val_acc']:.3f}"
                if r.status == "completed"
                else f"diverged (epoch {r.diverged_at[0]})"
            )
        s = f.suggestions
        rows.append(
            f"| {name} | valley {s['valley']:.3g}, steep {s['steep']:.3g}, minimum "
            f"{s['minimum']:.3g}; range [{f.recommended_range[0]:.3g}, "
            f"{f.recommended_range[1]:.3g}] ({took:.0f} s) | " + " | ".join(accs) + " |"
        )
        print(rows[-1], flush=True)
    print(f"\ntorch {torch.__version__}, profile {args.profile}, extra sets {args.sets}")
    print("| optimizer | lr-finder suggestions | val_acc at 0.1x | at 1x (recommended) | at 10x |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
