"""How far does the finder's lr move between seeds, and between fp32 and bf16? (issue 11)

    .venv/bin/python experiments/lr_finder_spread.py                   # 6 configurations x 6 seeds
    .venv/bin/python experiments/lr_finder_spread.py --configs adamw/lin2013 --seeds 0 \
        --precision bf16                                               # bf16, emulated if need be
    .venv/bin/python experiments/lr_finder_spread.py --cached-only     # the tables from the cache

lr_finder_regret.py judges each rule by one range test per configuration (train.seed 0). This
script asks how much that one test's answer is worth: it trains nothing, it runs the range test
(the `cpu` profile's lr_finder settings) once per configuration and seed (train.seed = 0..n-1),
and per configuration prints the recommended lr (lowest/zero-phase, the default) and fastai's
valley for every seed, their spread (largest / smallest), how many seeds land within 3x of the
grid-best lr in lr_finder_regret.py's cache, and the lr that `lr_finder.repeats = 3` gives (the
median curve of seeds 0-2, and of 3-5: curve.median_curve, as find_lr computes it, from the same
curves). The range test lr_finder_regret.py cached (seed 0, on the host that ran it) is shown
beside them.

`--precision bf16` runs the tests under bf16 autocast even on a CPU without bf16 units (oneDNN
emulates it there, slower than fp32), so that the precision's effect can be told from the host's.
Every range test goes to --cache (JSON lines, keyed by configuration, seed, precision, the CPU's
family/model and torch version) with its curve; a later invocation reuses it. Imports only
torch and nin_search's engine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from nin_search.engine.config import load_config
from nin_search.engine.curve import Curve, median_curve, suggest
from nin_search.engine.data import load_data
from nin_search.engine.lr_finder import _stream, range_test
from nin_search.engine.train import resolve_device, resolve_precision, seeded_start

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lr_finder_regret import CACHE as REGRET_CACHE  # noqa: E402
from lr_finder_regret import (  # noqa: E402
    DEFAULT_MODELS,
    MODELS,
    PROFILE,
    cache_key,
    configs,
    grid,
    load_cache,
    select,
)

CACHE = os.path.join(
    os.path.dirname(__file__), "..", "benchmarks", "results", "lr_finder_spread.jsonl"
)
RULES = ("lowest/zero-phase", "valley/ema")  # ours (the default under onecycle), fastai's valley


def forced_test(cfg, data, seed: int, precision: str) -> Curve:
    """The engine's seeded_test at a given precision: bf16 even where it is emulated (the engine
    refuses that), so that the precision's effect can be told from the host's."""
    gen, model, opt = seeded_start(cfg, data, seed)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    stream = _stream(data, cfg, gen)
    return range_test(model, opt, stream, cfg.lr_finder, crit, None, gen, False, precision)


def host() -> str:
    """The CPU as /proc/cpuinfo names it (family/model tell Zen 3 from Zen 5), or the platform."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    bf16 = "avx512_bf16" if caps.get("avx512_bf16") else "no bf16 units"
    return (
        f"{fields.get('model name', '?')} family {fields.get('cpu family', '?')} "
        f"model {fields.get('model', '?')}, {bf16}"
    )


def grid_means(cached: dict, name: str, sets: list[str]) -> dict[float, float]:
    """lr_finder_regret.py's grid for this configuration: lr -> mean final val_acc over its
    seeds (2 a point), the optimizer's grid lrs only (the cache also holds each rule's runs)."""
    lrs = set(grid(name.split("/")[0], None))
    means: dict[float, list[float]] = {}
    for k, r in cached.items():  # load_cache's keys hold the lr rounded as grid() rounds it
        kind, _, rsets, lr, _, _ = json.loads(k)
        if kind == "run" and lr in lrs and sorted(rsets) == sorted(sets) and "val_acc" in r:
            means.setdefault(lr, []).append(r["val_acc"])
    return {lr: statistics.mean(v) for lr, v in sorted(means.items()) if len(v) >= 2}


def grid_best(cached: dict, name: str, sets: list[str]) -> float | None:
    """The grid-best lr of lr_finder_regret.py's cache for this configuration."""
    full = grid_means(cached, name, sets)
    return max(full, key=full.get) if full else None


def fmt(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.3g}"


def lr_of(curve: Curve, num_iter: int, key: str) -> float | None:
    rule, smoothing = key.split("/")
    return suggest(curve, num_iter, rule, smoothing).recommended_lr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="", help="comma-separated names, optimizers or models")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help=", ".join(MODELS))
    ap.add_argument("--seeds", default="0-5", help="train.seed values: '0-5' or '0,3'")
    ap.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"), help="bf16 is forced"
    )
    ap.add_argument("--cache", default=CACHE, help="JSON-lines file of range tests ('' = none)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--cached-only", action="store_true", help="run nothing; print the cache")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    a, _, b = args.seeds.partition("-")
    seeds = list(range(int(a), int(b) + 1)) if b else [int(s) for s in args.seeds.split(",") if s]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    chosen = select(list(configs(models)), args.configs)
    sets_of = configs(models)
    base = load_config(profile=PROFILE)
    device = resolve_device(base.train.device)
    precision = "bf16" if args.precision == "bf16" else resolve_precision(args.precision, device)
    here = host()
    cached = {}
    if args.cache and os.path.exists(args.cache):
        with open(args.cache, encoding="utf-8") as f:
            cached = {r["key"]: r for r in map(json.loads, filter(str.strip, f))}
    regret = load_cache(REGRET_CACHE)
    data = None
    print(f"host: {here}; torch {torch.__version__}; {precision}; seeds {seeds}", flush=True)

    def key(sets: list[str], seed: int, prec: str, cpu: str) -> str:
        return json.dumps([PROFILE, sorted(sets), seed, prec, cpu, torch.__version__])

    for name in chosen:
        sets = sets_of[name]
        cfg = load_config(overrides=sets, profile=PROFILE)
        for seed in seeds:
            k = key(sets, seed, precision, here)
            if k in cached or args.cached_only:
                continue
            if data is None:
                data = load_data(base.data, device, with_test=False)
            t = time.perf_counter()
            curve = forced_test(cfg, data, seed, precision)
            took = time.perf_counter() - t
            lr = lr_of(curve, cfg.lr_finder.num_iter, RULES[0])
            print(f"{name} seed {seed} {precision}: lowest {fmt(lr)} ({took:.0f} s)", flush=True)
            record = {"key": k, "curve": vars(curve), "wall_s": round(took, 1)}
            cached[k] = record
            if args.cache:
                os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
                with open(args.cache, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")

    # the tables: every (host, precision) the cache holds for the chosen configurations
    groups: dict[tuple[str, str], dict[str, dict[int, Curve]]] = {}
    for r in cached.values():
        _, rsets, seed, prec, cpu, _ = json.loads(r["key"])
        name = next((n for n in chosen if sorted(sets_of[n]) == rsets), None)
        if name is not None:
            c = r["curve"]
            curve = Curve(c["lrs"], c["losses"], c["smoothed"], c["stop_reason"], c["runs"])
            groups.setdefault((cpu, prec), {}).setdefault(name, {})[seed] = curve
    num_iter = base.lr_finder.num_iter
    for (cpu, prec), by_name in sorted(groups.items()):
        print(f"\n{cpu}, {prec}, torch {torch.__version__}, profile {PROFILE}\n")
        print(
            "| configuration | grid-best lr | rule | lr per seed (seed: lr) | largest / smallest "
            "| seeds within 3x of grid-best | seeds whose range holds it "
            "| repeats = 3: seeds 0-2, 3-5 | regret cache's seed 0 |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name in chosen:
            curves = by_name.get(name, {})
            if not curves:
                continue
            best = grid_best(regret, name, sets_of[name])
            rc = regret.get(cache_key("range-test", sets_of[name]))
            for rule in RULES:
                lrs = {s: lr_of(c, num_iter, rule) for s, c in sorted(curves.items())}
                found = [lr for lr in lrs.values() if lr is not None]
                spread = f"{max(found) / min(found):.1f}x" if len(found) > 1 else "-"
                within = (
                    f"{sum(1 / 3 <= lr / best <= 3 for lr in found)}/{len(found)}"
                    if best and found
                    else "-"
                )
                ranges = [
                    suggest(c, num_iter, *rule.split("/")).recommended_range
                    for c in curves.values()
                ]
                held = (
                    f"{sum(r[0] <= best <= r[1] for r in ranges if r)}/{len(ranges)}"
                    if best
                    else "-"
                )
                medians = []
                for trio in ((0, 1, 2), (3, 4, 5)):
                    if all(s in curves for s in trio):
                        mc = median_curve([curves[s] for s in trio], base.lr_finder.beta)
                        medians.append(fmt(lr_of(mc, num_iter, rule)))
                old = "-"
                if rc:
                    c = rc["curve"]
                    old = fmt(lr_of(Curve(c["lrs"], c["losses"], c["smoothed"]), num_iter, rule))
                print(
                    f"| {name} | {fmt(best)} | {rule} | "
                    + ", ".join(f"{s}: {fmt(lr)}" for s, lr in lrs.items())
                    + f" | {spread} | {within} | {held} | {', '.join(medians) or '-'} | {old} |"
                )


if __name__ == "__main__":
    main()
