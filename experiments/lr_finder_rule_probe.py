"""Candidate finder rules on the cached range tests: where would each put the lr? (issue 11)

    .venv/bin/python experiments/lr_finder_rule_probe.py
    .venv/bin/python experiments/lr_finder_rule_probe.py --seeds  # + lr_finder_spread's curves

Trains nothing and runs no range test: it reads lr_finder_regret.py's cache (one range test per
configuration, seed 0, and the lr grid's runs), applies each candidate rule to the cached curve and
prints its lr as a ratio to the grid-best lr, whether that is within 3x, and whether the grid-best
lies in the candidate's sweep range, and an interpolated regret: the grid-best mean val_acc minus
the grid's mean at the candidate's lr, read off the line between the two grid lrs around it (in
log lr; "-" outside the grid). That is an estimate from neighbouring runs, not a run at the lr.
It answers "is a rule worth a grid run?", not "is it
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

--seeds also applies every candidate to each range test in lr_finder_spread.py's cache (six seeds
a configuration, on whichever host ran them) and counts, per candidate and configuration, the
seeds within 3x of the grid-best and the seeds whose [lr/30, 3lr] holds it: does a count that
passes on seed 0 survive the seed? Those curves were not used to choose any candidate, but the
grid-best is still the one of the regret cache (its host and precision), and no run trains at a
candidate's lr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
from pathlib import Path

from nin_search.engine.curve import zero_phase

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lr_finder_regret import CACHE, DEFAULT_MODELS, cache_key, configs, load_cache  # noqa: E402
from lr_finder_spread import CACHE as SPREAD_CACHE  # noqa: E402
from lr_finder_spread import grid_best, grid_means  # noqa: E402

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


def interpolated(means: dict[float, float], lr: float) -> float | None:
    """The grid's mean val_acc at lr, linear in log lr between the grid lrs around it."""
    lrs = sorted(means)
    for a, b in itertools.pairwise(lrs):
        if a <= lr <= b:
            t = math.log(lr / a) / math.log(b / a)
            return means[a] + t * (means[b] - means[a])
    return None


def by_seed(path: str) -> dict[tuple[str, str], dict[str, dict[int, dict]]]:
    """lr_finder_spread.py's cache: (host, precision) -> configuration -> seed -> curve."""
    names = {
        json.dumps(sorted(sets)): name for name, sets in configs(list(DEFAULT_MODELS)).items()
    }
    out: dict[tuple[str, str], dict[str, dict[int, dict]]] = {}
    with open(path, encoding="utf-8") as f:
        for r in map(json.loads, filter(str.strip, f)):
            _, sets, seed, prec, cpu, _ = json.loads(r["key"])
            if (name := names.get(json.dumps(sorted(sets)))) is not None:
                out.setdefault((cpu, prec), {}).setdefault(name, {})[seed] = r["curve"]
    return out


def seeds_table(cache: dict, path: str) -> None:
    sets_of = configs(list(DEFAULT_MODELS))
    lo, hi = RANGES["[lr/30, 3lr]"]
    names = list(candidates([1.0] * 40, [1.0] * 40))  # the candidates' names, from a flat curve
    for (cpu, prec), by_name in sorted(by_seed(path).items()):
        print(
            f"\n{cpu}, {prec}: seeds within 3x of the grid-best, seeds whose [lr/30, 3lr] holds it"
        )
        print("| configuration | seeds | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        totals = {n: [0, 0, 0] for n in names}
        for name, curves in by_name.items():
            best = grid_best(cache, name, sets_of[name])
            if best is None:
                continue
            found = [candidates(c["lrs"], c["losses"]) for c in curves.values()]
            cells = []
            for rule in names:
                lrs = [f[rule] for f in found]
                within = sum(1 / 3 <= lr / best <= 3 for lr in lrs)
                held = sum(lr * lo <= best <= lr * hi for lr in lrs)
                totals[rule] = [
                    totals[rule][0] + within,
                    totals[rule][1] + held,
                    totals[rule][2] + len(lrs),
                ]
                cells.append(f"{within}/{len(lrs)}, {held}/{len(lrs)}")
            print(f"| {name} | {len(found)} | " + " | ".join(cells) + " |")
        cells = [f"{w}/{n}, {h}/{n}" for w, h, n in totals.values()]
        print("| all | | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seeds",
        nargs="?",
        const=SPREAD_CACHE,
        default=None,
        help=f"also lr_finder_spread.py's curves (default file {SPREAD_CACHE})",
    )
    args = ap.parse_args()
    cache = load_cache(CACHE)
    rows: dict[str, list[tuple[str, float, float, float | None]]] = {}
    names = list(candidates([1.0] * 40, [1.0] * 40))  # the candidates' names, from a flat curve
    print("lr (its ratio to the grid-best; interpolated regret in points)\n")
    print("| configuration | grid-best lr | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for name, sets in configs(list(DEFAULT_MODELS)).items():
        test = cache.get(cache_key("range-test", sets))
        best = grid_best(cache, name, sets)
        if test is None or best is None:
            print(f"| {name} | not in the cache | |")
            continue
        means = grid_means(cache, name, sets)
        found = candidates(test["curve"]["lrs"], test["curve"]["losses"])
        cells = []
        for rule, lr in found.items():
            at = interpolated(means, lr)
            regret = None if at is None else 100 * (means[best] - at)
            rows.setdefault(rule, []).append((name, lr, best, regret))
            shown = "-" if regret is None else f"{regret:+.2f}"
            cells.append(f"{lr:.3g} ({lr / best:.2g}x; {shown})")
        print(f"| {name} | {best:.3g} | " + " | ".join(cells) + " |")
    head = "| candidate | within 3x of grid-best | " + " | ".join(RANGES)
    print(f"\n{head} | interpolated regret <= 1.0 | its median |")
    print("|---|---|" + "---|" * (len(RANGES) + 2))
    for rule, found in rows.items():
        within = sum(1 / 3 <= lr / best <= 3 for _, lr, best, _ in found)
        held = [
            sum(lr * a <= best <= lr * b for _, lr, best, _ in found) for a, b in RANGES.values()
        ]
        regrets = [r for *_, r in found if r is not None]
        n = len(found)
        median = f"{statistics.median(regrets):+.2f}" if regrets else "-"
        print(
            f"| {rule} | {within}/{n} | "
            + " | ".join(f"{h}/{n}" for h in held)
            + f" | {sum(r <= 1.0 for r in regrets)}/{len(regrets)} | {median} |"
        )
    print("\n(in-sample: the six configurations the default was chosen on; no run at any new lr)")
    if args.seeds:
        if not os.path.exists(args.seeds):
            raise SystemExit(f"error: {args.seeds}: no such file (run lr_finder_spread.py first)")
        seeds_table(cache, args.seeds)


if __name__ == "__main__":
    main()
