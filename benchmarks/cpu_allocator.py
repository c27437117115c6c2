"""glibc's default malloc against keep_cpu_memory() and torch's THP knob: one CPU training step.

    .venv/bin/python benchmarks/cpu_allocator.py [--rounds 3] [--steps 15] [--procs 2]

Why fit() and the lr-finder call nin_search.engine.cpu_memory.keep_cpu_memory() on the CPU. Each
variant is a fresh process (the allocator's settings are process-wide), --procs of them at once
with one torch thread each, as `ablate --workers 2` runs on two cores:
- default: glibc as it comes (blocks over the mmap threshold are mapped and unmapped each time);
- keep: keep_cpu_memory() first (mallopt: no mmap, a 1 GiB trim threshold);
- thp: THP_MEM_ALLOC_ENABLE=1, torch's own switch that asks for 2 MiB pages for its buffers of
  2 MiB or more (madvise; counts only where /sys/kernel/mm/transparent_hugepage allows it).
Each process builds the `cpu` profile's model (Lin 2013 NiN, 28 px, width 0.5, BatchNorm,
channels_last, AdamW, --precision auto as the engine resolves it), takes 3 untimed steps and
--steps timed ones on one random batch of 128 and reports, per step: wall ms, CPU ms (user +
system), system ms, minor page faults; and its peak RSS and last loss (the same in every variant:
the allocator does not change the arithmetic). The variants take turns, --rounds rounds with the
order rotated; reported: the median round of each and its ratio to default in the same round.
Imports only torch and nin_search.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from nin_search.engine.config import load_config
from nin_search.engine.cpu_memory import keep_cpu_memory
from nin_search.engine.model import build_model
from nin_search.engine.train import make_optimizer, resolve_precision, train_step

VARIANTS = {"default": {}, "keep": {}, "thp": {"THP_MEM_ALLOC_ENABLE": "1"}}


def child(variant: str, steps: int) -> dict:
    """One process's measurement (the process was started for this variant alone)."""
    torch.set_num_threads(1)
    kept = keep_cpu_memory() if variant == "keep" else False
    cfg = load_config(profile="cpu")
    dev = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, dev)
    torch.manual_seed(0)
    net = build_model(cfg.model, 28).to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg.train, net.parameters())
    crit = torch.nn.CrossEntropyLoss()
    x = torch.rand(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    for _ in range(3):
        train_step(net, opt, crit, x, y, dev, precision)
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        _, loss = train_step(net, opt, crit, x, y, dev, precision)
    loss = loss.item()
    wall, r1 = time.perf_counter() - w0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {
        "variant": variant,
        "kept": kept,
        "precision": precision,
        "wall_ms": 1000 * wall / steps,
        "cpu_ms": 1000 * cpu / steps,
        "sys_ms": 1000 * (r1.ru_stime - r0.ru_stime) / steps,
        "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
        "rss_mib": r1.ru_maxrss / 1024,
        "loss": loss,
    }


def measure(variant: str, steps: int, procs: int) -> list[dict]:
    """--procs processes of one variant at once; their reports."""
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE",)}
    env |= VARIANTS[variant] | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", variant, "--steps", str(steps)]
    running = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(procs)
    ]
    out = []
    for p in running:
        stdout, _ = p.communicate()
        if p.returncode:
            sys.exit(f"{variant}: a measuring process failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per process")
    ap.add_argument("--procs", type=int, default=2, help="processes of a variant at once")
    ap.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.steps)))
        return
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    print(
        f"torch {torch.__version__}; {a.procs} process(es) of one torch thread at once; "
        f"{a.steps} timed steps each; median of {a.rounds} rounds; transparent hugepages: "
        f"{thp.read_text().strip() if thp.exists() else 'n/a'}\n"
    )
    names = list(VARIANTS)
    rounds: list[dict[str, dict]] = []
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        row = {}
        for v in order:
            reports = measure(v, a.steps, a.procs)
            row[v] = {k: statistics.mean(p[k] for p in reports) for k in reports[0] if
                      isinstance(reports[0][k], float)}  # fmt: skip
            row[v] |= {"loss": reports[0]["loss"], "precision": reports[0]["precision"]}
            print(f"round {r + 1} {v}: {json.dumps(row[v])}", flush=True)
        rounds.append(row)
    print(
        "\n| variant | wall ms/step | CPU ms/step | system ms/step | page faults/step | "
        "peak RSS MiB | default / variant (wall, same round) | last loss |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for v in names:
        med = {k: statistics.median(row[v][k] for row in rounds) for k in rounds[0][v]
               if k not in ("loss", "precision")}  # fmt: skip
        ratio = statistics.median(row["default"]["wall_ms"] / row[v]["wall_ms"] for row in rounds)
        print(
            f"| {v} | {med['wall_ms']:.0f} | {med['cpu_ms']:.0f} | {med['sys_ms']:.0f} | "
            f"{med['faults']:,.0f} | {med['rss_mib']:.0f} | {ratio:.2f}x | "
            f"{rounds[-1][v]['loss']:.6f} |"
        )
    print(f"\nprecision: {rounds[0]['default']['precision']}")


if __name__ == "__main__":
    main()
