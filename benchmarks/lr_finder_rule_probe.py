"""Candidate finder rules on the cached range tests: where would each put the lr? (issue 11)

    .venv/bin/python benchmarks/lr_finder_rule_probe.py

Trains nothing and runs no range test: it reads lr_finder_regret.py's cache (one range test per
configuration, seed 0, and the lr grid's runs), applies each candidate rule to the cached curve and
prints its lr as a ratio to the grid-best lr, whether that is within 3x, and whether the grid-best
lies in the candidate's sweep range. It answers "is a rule worth a grid run?", not "is it
better": every candidate here is seen against the same six configurations the default was chosen
on, so a count that passes here is in-sample; a rule is only shown to hold on configurations it
was not fitted to, and its regret only by training at its lr (lr_finder_regret.py --rules).

Candidates, all on the zero-phase curve (curve.suggest's trimming):
- lowest: the default under onecycle (the lr at the lowest loss);
- mid@F: the geometric middle of the contiguous lrs around the lowest point whose loss is within
  F of the drop (start - lowest) above the lowest: "the middle of the near-minimum region";
- lowest x K: K times the lowest point (onecycle reaches its peak after a warmup, when the weights
  tolerate more than at initialisation).
Ranges: [lr / 30, 3 lr] (the default's) and [lr / 30, 10 lr].
"""

from __future__ import annotations

import math

from lr_finder_regret import CACHE, DEFAULT_MODELS, cache_key, configs, load_cache
from lr_finder_spread import grid_best

from nin_search.curve import zero_phase

NUM_ITER = 100  # the cpu profile's lr_finder.num_iter, as the cached tests ran
RANGES = {"[lr/30, 3lr]": (1 / 30, 3), "[lr/30, 10lr]": (1 / 30, 10)}


def candidates(lrs: list[float], losses: list[float]) -> dict[str, float]:
    zp = zero_phase(losses, NUM_ITER)
    lo = NUM_ITER // 10
    x, y = lrs[lo:-5], zp[lo:-5]
    m = min(range(len(y)), key=y.__getitem__)
    out = {"lowest": x[m]}
    for frac in (0.05, 0.1, 0.2):
        limit = y[m] + frac * (y[0] - y[m])
        a = b = m
        while a > 0 and y[a - 1] <= limit:
            a -= 1
        while b < len(y) - 1 and y[b + 1] <= limit:
            b += 1
        out[f"mid@{frac:g}"] = math.sqrt(x[a] * x[b])
    for k in (2, 3):
        out[f"lowest x {k}"] = k * x[m]
    return out


def main() -> None:
    cache = load_cache(CACHE)
    rows: dict[str, list[tuple[str, float, float]]] = {}
    names = list(candidates([1.0] * 40, [1.0] * 40))  # the candidates' names, from a flat curve
    print("| configuration | grid-best lr | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for name, sets in configs(list(DEFAULT_MODELS)).items():
        test = cache.get(cache_key("range-test", sets))
        best = grid_best(cache, name, sets)
        if test is None or best is None:
            print(f"| {name} | not in the cache | |")
            continue
        found = candidates(test["curve"]["lrs"], test["curve"]["losses"])
        cells = [f"{lr:.3g} ({lr / best:.2g}x)" for lr in found.values()]
        print(f"| {name} | {best:.3g} | " + " | ".join(cells) + " |")
        for rule, lr in found.items():
            rows.setdefault(rule, []).append((name, lr, best))
    print("\n| candidate | within 3x of grid-best | " + " | ".join(RANGES) + " |")
    print("|---|---|" + "---|" * len(RANGES))
    for rule, found in rows.items():
        within = sum(1 / 3 <= lr / best <= 3 for _, lr, best in found)
        held = [sum(lr * a <= best <= lr * b for _, lr, best in found) for a, b in RANGES.values()]
        n = len(found)
        print(f"| {rule} | {within}/{n} | " + " | ".join(f"{h}/{n}" for h in held) + " |")
    print("\n(in-sample: the six configurations the default was chosen on; no run at any new lr)")


if __name__ == "__main__":
    main()
