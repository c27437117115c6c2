"""Where does a loss blow up, and where does a bump come back? fit() on the fully connected head.

The explosion rule (nin_search/engine/chance.py, EXPLODED) ends a run whose epoch-mean training
loss is above EXPLODED x ln(classes). This trains the configurations where that loss leaves ln 10
the most, plain SGD on the fc head with BatchNorm at 4 steps an epoch (a bump weighs most on the
mean), with the rule switched off, and prints each epoch's mean train loss, val loss and val
accuracy, and the epoch where the rule would have stopped the run.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/explosion_grid.py            # squares task
    OMP_NUM_THREADS=1 .venv/bin/python experiments/explosion_grid.py --fashion  # 256 + 256 images
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nin_search.engine.train as engine
from nin_search.engine.chance import explosion_limit
from nin_search.engine.config import load_config
from nin_search.engine.data import load_data, split_data

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from builders import squares  # noqa: E402  (the synthetic task of the tests)

BASE = [
    "model.head=fc", "model.batch_norm=true", "model.width=0.25", "train.optimizer=sgd",
    "train.batch_size=64", "data.val_size=256", "train.epochs=3", "train.precision=fp32",
]  # fmt: skip
MODELS = {  # name: (sets, also on Fashion-MNIST)
    "lin2013-67": (["model.preset=lin2013", "data.resize=67"], False),
    "lin2013-28": (["model.preset=lin2013", "data.resize=28"], True),
    "lin2013-16": (["model.preset=lin2013", "data.resize=16"], False),
    "d2l-67": (["model.preset=d2l", "data.resize=67"], True),
}
LRS = [0.1, 0.3, 0.5, 1, 2, 3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion", action="store_true", help="Fashion-MNIST, 256 training images")
    ap.add_argument("--seeds", type=int, default=1)
    a = ap.parse_args()
    engine.exploded = lambda *_: False  # measure the whole curve: the rule is what we test
    limit = explosion_limit(10)
    print("| model | lr | seed | train loss by epoch | val loss | val acc | rule stops at |")
    print("|---|---|---|---|---|---|---|")
    for name, (sets, on_fashion) in MODELS.items():
        if a.fashion and not on_fashion:
            continue
        for lr in LRS:
            for seed in range(a.seeds):
                extra = ["data.train_subset=256"] if a.fashion else []
                run = [*BASE, *sets, *extra, f"train.lr={lr}", f"train.seed={seed}"]
                cfg = load_config(overrides=run)
                if a.fashion:
                    data = load_data(cfg.data, "cpu", with_test=False)
                else:
                    data = split_data(*squares(512), cfg.data, "cpu")
                h = engine.fit(cfg, data).history
                stop = next((m["epoch"] for m in h if m["train_loss"] > limit), "-")
                row = [f"{m[k]:.3g}" for k in ("train_loss", "val_loss", "val_acc") for m in h]
                n = len(h)
                cells = [", ".join(row[i * n : (i + 1) * n]) for i in range(3)]
                print(f"| {name} | {lr:g} | {seed} | {' | '.join(cells)} | {stop} |", flush=True)


if __name__ == "__main__":
    main()
