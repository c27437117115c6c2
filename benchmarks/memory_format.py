"""NCHW against channels_last: the time of one fp32 training step, per preset, side by side.

    .venv/bin/python benchmarks/memory_format.py [--threads 1] [--rounds 5] [--device cpu]

Why the engine keeps its models and batches channels_last on every device. For each case the same
model (same seed, same weights) is built twice, once left NCHW and once moved to channels_last,
and the two take turns: --rounds rounds of --steps timed SGD steps each (after one untimed step)
on one resident random batch. On the CPU the clock is the process's CPU time
(time.process_time), which another job on the machine does not inflate; with --threads 1 that is
also the step's wall time. On CUDA it is the synchronised wall clock. Reported: the median round
of each and their ratio. Imports only torch and nin_search.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from nin_search.engine.config import ModelConfig
from nin_search.engine.model import build_model

CASES = [  # (model config, input size, batch size, timed steps per round)
    (ModelConfig(preset="lin2013", width=0.25), 28, 64, 20),  # sweep_efficiency.py's search
    (ModelConfig(preset="lin2013"), 28, 128, 3),
    (ModelConfig(), 96, 128, 3),  # the quick profile
    (ModelConfig(batch_norm=True), 96, 128, 3),  # the ablation studies
    (ModelConfig(mlp_kernel=3), 96, 64, 3),
    (ModelConfig(), 224, 32, 3),  # the d2l profile's resolution
    (ModelConfig(preset="nin11", width=0.25), 96, 32, 3),
]


def label(mc: ModelConfig) -> str:
    knobs = {k: v for k, v in vars(mc).items() if k != "preset" and v != getattr(ModelConfig(), k)}
    return mc.preset + "".join(f", {k}={v}" for k, v in knobs.items())


def sgd_step(net: nn.Module, opt, crit, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    crit(net(x), y).backward()
    opt.step()


def step_times(
    mc: ModelConfig, size: int, batch: int, steps: int, rounds: int, dev: torch.device
) -> dict[str, float]:
    """Median seconds per step, NCHW and channels_last, measured in alternation."""
    cuda = dev.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    x = torch.rand(batch, 1, size, size, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    nets = {}
    for fmt in ("NCHW", "channels_last"):
        torch.manual_seed(0)
        net = build_model(mc, size).to(dev)
        if fmt == "channels_last":
            net = net.to(memory_format=torch.channels_last)
        nets[fmt] = (net, torch.optim.SGD(net.parameters(), lr=0.01))
    crit = nn.CrossEntropyLoss()
    times: dict[str, list[float]] = {fmt: [] for fmt in nets}
    for _ in range(rounds):
        for fmt, (net, opt) in nets.items():
            xb = x.contiguous(memory_format=torch.channels_last) if fmt != "NCHW" else x
            sgd_step(net, opt, crit, xb, y)  # untimed
            sync()
            start = clock()
            for _ in range(steps):
                sgd_step(net, opt, crit, xb, y)
            sync()
            times[fmt].append((clock() - start) / steps)
    return {fmt: statistics.median(v) for fmt, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    clock = "wall time" if dev.type == "cuda" else f"CPU time, {a.threads} torch thread(s)"
    print(f"torch {torch.__version__}; {a.device}; {clock}; median of {a.rounds} rounds\n")
    print(
        "| model | input | batch | NCHW, ms/step | channels_last, ms/step | NCHW / channels_last |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for mc, size, batch, steps in CASES:
        t = step_times(mc, size, batch, steps, a.rounds, dev)
        print(
            f"| {label(mc)} | {size} px | {batch} | {1000 * t['NCHW']:.0f} | "
            f"{1000 * t['channels_last']:.0f} | {t['NCHW'] / t['channels_last']:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
