"""Training throughput: the d2l-style loop vs the nin_search engine vs a bare training step.

    .venv/bin/python benchmarks/throughput.py [--device cpu|cuda|auto] [--size 96] \
        [--batch-size 128] [--steps 20] [--warmup 2] [--rounds 5] [--workers N] [--threads N] \
        [--precision auto|fp32|bf16] [--compile] [--peak-gflops G]

One process, one model (the d2l NiN preset, build_model(ModelConfig(), size)), one batch size,
resolution and device for all of them:
  d2l     torchvision FashionMNIST over the same IDX files, Compose([Resize, ToTensor]), a shuffled
          DataLoader with d2l's 4 workers (capped to os.cpu_count()), fp32 SGD(lr 0.05) steps with
          d2l's per-step loss/accuracy bookkeeping (train_ch6's loop);
  engine  nin_search.engine.train.fit on steps * batch_size training images, one epoch; its
          img_per_s (evaluation excluded). fit runs channels_last at train.precision = --precision
          (auto: bf16 autocast on CUDA and on CPUs with AMX or AVX512-BF16, fp32 elsewhere);
  bare    d2l's fp32 NCHW forward/backward/SGD step on one batch already resident on the device;
  bare-engine  the engine's own step (train_step: channels_last, the same precision) on the
          same batch: the ceiling for fit(), so engine / bare-engine is the engine's overhead;
  compiled  (--compile) bare-engine with torch.compile(model) (inductor; on the CPU it needs a
          C++ compiler): whether train.compile would pay off for this step.
Each measurement runs --warmup steps first (the engine: a separate --warmup-step fit); methods are
interleaved for --rounds short rounds, so that drifts in the machine's speed (a shared VM's host,
other jobs: the load average is printed per round) hit all four alike. Reported: each method's
median round, and ratios as the median over rounds of the same round's ratio (a round's four
measurements lie close in time); then the median gap between optimizer steps over all rounds (a
global step hook: the same timer for all four).
Achieved FLOP/s are printed beside the device's peak at that precision (on the CPU computed from
the vector unit's FLOPs per cycle, read from /proc/cpuinfo's flags, vendor, family and model by
flops_per_cycle, the clock and the cores, or given with --peak-gflops; the unit assumed is
printed beside the figure), so the distance to the limit is visible. Prints a markdown table
for benchmarks/RESULTS.md. Imports only torch, torchvision, nin_search.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from nin_search.engine.config import Config, DataConfig, ModelConfig, load_config
from nin_search.engine.data import Data, load_data, locate, to_input
from nin_search.engine.model import build_model
from nin_search.engine.train import (
    cpu_bf16_units,
    fit,
    resolve_device,
    resolve_precision,
    train_step,
)

D2L_WORKERS = 4  # d2l's get_dataloader_workers()
LR = 0.05  # d2l NiN chapter
VAL_SIZE = 256  # the engine's held-out images: two eval batches, outside its img_per_s
STAMPS: list[float] = []  # perf_counter() after every optimizer step, whichever method ran it


def stamp(*_: object) -> None:  # a global optimizer step post-hook: one timer for all four
    STAMPS.append(time.perf_counter())


def timed(step: Callable[[], None], a: argparse.Namespace) -> float:
    """Images/s over a.steps calls of step after a.warmup untimed ones (CUDA: synchronised)."""
    sync = torch.cuda.synchronize if a.dev.type == "cuda" else (lambda: None)
    for _ in range(a.warmup):
        step()
    sync()
    STAMPS.clear()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    return a.steps * a.batch_size / (time.perf_counter() - start)


def fresh_model(a: argparse.Namespace) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = build_model(ModelConfig(), a.size).to(a.dev).train()
    return net, torch.optim.SGD(net.parameters(), lr=LR)


def torchvision_dataset(tmp: Path, size: int) -> torchvision.datasets.FashionMNIST:
    """FashionMNIST(train) over the engine's IDX files, placed where torchvision looks."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in locate(DataConfig())[1].values():
        if path.suffix != ".gz":
            (raw / path.name).symlink_to(path.resolve())
            continue
        # Debian's .gz files are recompressed (other md5s than torchvision's), so download=True
        # would go online; unpack them here, as torchvision's own extraction would.
        with gzip.open(path, "rb") as src, open(raw / path.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    tf = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    return torchvision.datasets.FashionMNIST(str(tmp), train=True, transform=tf, download=False)


def run_d2l(ds: torchvision.datasets.FashionMNIST, a: argparse.Namespace) -> float:
    """d2l's train_ch6 inner loop (fp32) over a live, shuffled DataLoader."""
    net, opt = fresh_model(a)
    criterion = nn.CrossEntropyLoss()
    src = [iter(DataLoader(ds, a.batch_size, shuffle=True, num_workers=a.workers))]
    metric = [0.0, 0.0, 0]  # d2l's Accumulator(3): loss sum, correct, images

    def step() -> None:
        X, y = next(src[0])
        opt.zero_grad()
        X, y = X.to(a.dev), y.to(a.dev)
        y_hat = net(X)
        loss = criterion(y_hat, y)
        loss.backward()
        opt.step()
        with torch.no_grad():  # two host syncs per step, as d2l's metric.add does
            metric[0] += float(loss) * X.shape[0]
            metric[1] += float((y_hat.argmax(1) == y).sum())
            metric[2] += X.shape[0]

    rate = timed(step, a)
    src.clear()  # shut the workers down before the next method runs
    return rate


def run_engine(cfgs: tuple[Config, Config], data: tuple[Data, Data]) -> float:
    """fit()'s own img_per_s over one epoch, after a --warmup-step fit."""
    fit(cfgs[0], data[0])
    STAMPS.clear()
    return fit(cfgs[1], data[1]).history[0]["img_per_s"]


def run_bare(x: torch.Tensor, y: torch.Tensor, a: argparse.Namespace) -> float:
    """d2l's fp32 NCHW step alone on one resident batch: no data path, no bookkeeping."""
    net, opt = fresh_model(a)
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        criterion(net(x), y).backward()
        opt.step()

    return timed(step, a)


def run_bare_engine(
    x: torch.Tensor, y: torch.Tensor, a: argparse.Namespace, compiled: bool = False
) -> float:
    """The engine's own step (train.train_step: channels_last, a.precision) alone on one
    resident batch: what fit() would reach with a free data path and no bookkeeping."""
    net, opt = fresh_model(a)
    net = net.to(memory_format=torch.channels_last)
    step_net = torch.compile(net) if compiled else net
    criterion = nn.CrossEntropyLoss()
    return timed(lambda: train_step(step_net, opt, criterion, x, y, a.dev, a.precision), a)


def flops_per_cycle(
    flags: set[str], vendor: str, family: int, model: int, precision: str
) -> tuple[int, str]:
    """Peak FLOPs per cycle per core at this precision (2 per FMA lane), and what was assumed.

    From /proc/cpuinfo's flags, vendor_id, cpu family and model:
      bf16  AMX-BF16 tiles 1024; AVX512-BF16 (VDPBF16PS, 4 FLOPs per fp32 lane) on two 512-bit
            pipes 128
      fp32  AVX-512 FMA on two 512-bit pipes 64; AVX2 FMA on two 256-bit pipes 32; AVX without
            FMA (one 256-bit add + one mul) 16; SSE (4-wide add + mul) 8; arm64 NEON (two
            128-bit FMA pipes, as Neoverse N1) 16
    AMD runs 512-bit ops as two 256-bit halves on Zen 4 (family 0x19) and mobile Zen 5 (0x1a,
    models 0x20-0x2f Strix Point, 0x60-0x6f Krackan Point): half the AVX-512 figures, the same
    32 fp32 as Zen 3's AVX2. Zen 1/Zen+ (0x17, models below 0x30) has 128-bit FMA pipes: 16.
    Intel AVX-512 is assumed to have two FMA units (Xeon Gold 6xxx/Platinum, Sapphire Rapids
    on); one-unit parts (Xeon Silver/Bronze, client Ice/Tiger Lake) reach half: --peak-gflops."""
    amd = vendor in ("AuthenticAMD", "HygonGenuine")
    halves = amd and (family == 0x19 or (family == 0x1A and model // 16 in (2, 6)))
    split = f" (AMD family {family:#x} model {model:#x}: 512-bit ops as two 256-bit halves)"
    if precision == "bf16" and "amx_bf16" in flags:
        return 1024, "AMX-BF16"
    if precision == "bf16" and "avx512_bf16" in flags:
        return (64, "AVX512-BF16" + split) if halves else (128, "AVX512-BF16, two 512-bit pipes")
    if "avx512f" in flags:
        if halves:
            return 32, "fp32 AVX-512 FMA" + split
        return 64, "fp32 AVX-512 FMA, two 512-bit pipes" + ("" if amd else " (assumed)")
    if "avx2" in flags and "fma" in flags:
        if amd and family in (0x17, 0x18) and model < 0x30:  # Zen 1/Zen+ and Hygon Dhyana
            return 16, "fp32 AVX2 FMA on two 128-bit pipes (Zen 1/Zen+)"
        return 32, "fp32 AVX2 FMA, two 256-bit pipes"
    if "avx" in flags:
        return 16, "fp32 AVX, one 256-bit add + one mul"
    if "asimd" in flags:
        return 16, "fp32 NEON FMA, two 128-bit pipes (assumed)"
    return 8, "fp32 SSE, one 128-bit add + one mul (unknown vector unit: assumed)"


def cpu_identity(cpuinfo: str) -> tuple[set[str], str, int, int]:
    """(flags, vendor_id, cpu family, model) from /proc/cpuinfo's first processor."""
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())  # x86 | arm64
    ids = [fields.get(key, "") for key in ("cpu family", "model")]  # arm64 has neither: 0
    family, model = (int(v) if v.isdigit() else 0 for v in ids)
    return flags, fields.get("vendor_id", ""), family, model


def cpu_peak_gflops(precision: str) -> tuple[float, str]:
    """The CPU's peak GFLOP/s at this precision, and how it was computed (flops_per_cycle)."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    flags, vendor, family, model = cpu_identity(cpuinfo)
    flags |= set(cpu_bf16_units())  # what torch sees decides bf16 (resolve_precision) as well
    per_cycle, unit = flops_per_cycle(flags, vendor, family, model, precision)
    mhz = [float(line.split(":")[1]) for line in cpuinfo.splitlines() if "MHz" in line]
    freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")  # arm64: no MHz line
    if not mhz and freq.is_file():
        mhz = [int(freq.read_text()) / 1e3]  # kHz
    if not mhz:
        raise SystemExit("no CPU clock in /proc/cpuinfo or cpufreq: give --peak-gflops")
    ghz = max(mhz) / 1e3
    cores = os.cpu_count() or 1
    how = f"{unit}: {per_cycle} FLOP/cycle/core x {cores} cores x {ghz:.2f} GHz"
    return per_cycle * cores * ghz, how


def forward_flops(size: int) -> int:
    """Forward FLOPs of one image (2 per MAC), counted by FlopCounterMode."""
    net = build_model(ModelConfig(), size).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 1, size, size))
    return counter.get_total_flops()


def engine_configs(a: argparse.Namespace) -> tuple[Config, Config]:
    """The warmup fit's config and the measured fit's: one epoch of `steps` batches each."""
    sets = f"data.resize={a.size} data.val_size={VAL_SIZE} train.device={a.dev.type} "
    sets += f"train.precision={a.precision} "
    sets += f"train.batch_size={a.batch_size} train.epochs=1 data.train_subset="
    return tuple(  # type: ignore[return-value]
        load_config(overrides=(sets + str(n * a.batch_size)).split())
        for n in (max(a.warmup, 1), a.steps)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the four methods")
    workers = min(D2L_WORKERS, os.cpu_count() or 1)  # d2l: 4, capped to the CPUs
    p.add_argument("--workers", type=int, default=workers, help="d2l-style DataLoader workers")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: one per CPU)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--compile", action="store_true", help="also time torch.compile's step")
    p.add_argument("--peak-gflops", type=float, help="the device's peak (default: computed)")
    a = p.parse_args()
    a.dev = dev = resolve_device(a.device)
    a.precision = resolve_precision(a.precision, dev)
    cuda = dev.type == "cuda"
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    register_optimizer_step_post_hook(stamp)
    torch.backends.cudnn.benchmark = cuda  # fit sets it for the process anyway: same for all

    cfgs = engine_configs(a)
    data = tuple(load_data(c.data, dev, with_test=False) for c in cfgs)
    x, y = to_input(data[1].train_x[: a.batch_size], a.size), data[1].train_y[: a.batch_size]
    flops_img = 3 * forward_flops(a.size)  # training = 3 x forward; forward = 2 x MACs
    best: dict[str, list[float]] = {"d2l": [], "engine": [], "bare": [], "bare-engine": []}
    if a.compile:
        best["compiled"] = []
    gaps: dict[str, list[float]] = {k: [] for k in best}  # seconds between timed steps
    with tempfile.TemporaryDirectory() as tmp:
        ds = torchvision_dataset(Path(tmp), a.size)
        runs = {"d2l": lambda: run_d2l(ds, a), "engine": lambda: run_engine(cfgs, data),
                "bare": lambda: run_bare(x, y, a),
                "bare-engine": lambda: run_bare_engine(x, y, a),
                "compiled": lambda: run_bare_engine(x, y, a, compiled=True)}  # fmt: skip
        runs = {k: v for k, v in runs.items() if k in best}
        for r in range(1, a.rounds + 1):
            for k, run in runs.items():
                best[k].append(run())
                gaps[k] += [t1 - t0 for t0, t1 in itertools.pairwise(STAMPS)]
            got = ", ".join(f"{k} {v[-1]:.1f}" for k, v in best.items())
            print(f"round {r} img/s: {got} (load average {os.getloadavg()[0]:.2f})", flush=True)

    top = {k: statistics.median(v) for k, v in best.items()}
    per_round = {k: statistics.median(e / m for e, m in zip(best["engine"], v, strict=True))
                 for k, v in best.items()}  # fmt: skip
    med = {k: a.batch_size / statistics.median(v) for k, v in gaps.items()}
    unit, scale = ("TFLOP/s", 1e12) if cuda else ("GFLOP/s", 1e9)
    name = torch.cuda.get_device_name(dev) if cuda else f"CPU, {torch.get_num_threads()} threads"
    prec = f"{a.precision}{' autocast' if a.precision == 'bf16' else ''}, channels_last"
    print(f"\ndevice {name}; torch {torch.__version__}; torchvision {torchvision.__version__}")
    print(
        f"d2l NiN at {a.size} px, batch {a.batch_size}, {a.steps} timed steps after {a.warmup}"
        f" warmup, {a.rounds} interleaved rounds; d2l-style DataLoader workers {a.workers}"
    )
    print(f"the engine runs {prec}; the d2l-style loop and the bare step run fp32 NCHW, as d2l")
    print(f"training FLOPs per image {flops_img / 1e9:.3f} G (3 x forward, 2 FLOPs per MAC)\n")
    labels = {"d2l": "d2l-style loop (torchvision + DataLoader, fp32)",
              "engine": f"engine: nin_search.engine.train.fit ({prec})",
              "bare": "bare step on one resident batch (fp32 NCHW, as d2l)",
              "bare-engine": f"bare step, same batch, engine's train_step ({prec})",
              "compiled": f"bare step, same batch, torch.compile(model) ({prec})"}  # fmt: skip
    labels = {k: v for k, v in labels.items() if k in best}
    print(f"| method | img/s, median round | engine / method, median of per-round ratios "
          f"| {unit} | img/s, median step | engine / method, median step |\n"
          "|---|---:|---:|---:|---:|---:|")  # fmt: skip
    for k, label in labels.items():
        print(f"| {label} | {top[k]:.1f} | {per_round[k]:.3f}x | "
              f"{top[k] * flops_img / scale:.2f} | {med[k]:.1f} | "
              f"{med['engine'] / med[k]:.3f}x |")  # fmt: skip
    ratio = {k: (per_round[k], med["engine"] / med[k]) for k in best}
    print("")
    for k, target in (("d2l", 5.0 if cuda else 2.0), ("bare-engine", 0.97), ("bare", None)):
        goal = f", target >= {target}x" if target else " (d2l's own step)"
        print(f"engine / {k} = {ratio[k][0]:.3f}x (median step {ratio[k][1]:.3f}x){goal}")
    if "compiled" in best:
        pairs = zip(best["compiled"], best["bare-engine"], strict=True)
        print(f"compiled / bare-engine = {statistics.median(c / b for c, b in pairs):.3f}x "
              "(median of per-round ratios; above 1: torch.compile is faster)")  # fmt: skip
    achieved = top["engine"] * flops_img / scale
    if a.peak_gflops or not cuda:
        peak, how = (
            (a.peak_gflops, "--peak-gflops") if a.peak_gflops else cpu_peak_gflops(a.precision)
        )
        peak /= scale / 1e9
        print(f"engine {achieved:.2f} {unit} = {achieved / peak:.1%} of the peak {peak:.0f} "
              f"{unit} ({how})")  # fmt: skip
    else:
        print(f"engine {achieved:.2f} {unit}")
    print(
        "rounds: fit()'s img_per_s for the engine, wall time over the timed steps for the"
        " others; median step: the median gap between optimizer steps, one timer for all four"
        " (on CUDA asynchronous: use the rounds)"
    )


if __name__ == "__main__":
    main()
