"""The learning-rate range test (Smith 2015); nin_search.engine.curve reads its suggestions off
the curve.

    python -m nin_search lr-finder --profile cpu --set lr_finder.repeats=3

The lr grows from lr_finder.start_lr to end_lr over num_iter steps, one batch each; fastai's
debiased causal EMA (lr_finder.beta, 0.98) drives the progress bar and the stop (above 4x its best,
lr_finder.stop_factor, or non-finite). Weights, BatchNorm buffers, optimizer state, training mode
and every RNG state are restored afterwards, bit for bit. lr_finder.repeats = k runs k tests (seeds
train.seed + i) and suggests from the elementwise median raw loss, cut to the shortest run. The
rules, the zero-phase smoothing and the sweep range are curve.py's. Imports only torch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import nn

from nin_search.engine.config import Config, LRFinderConfig, finder_rule
from nin_search.engine.cpu_memory import keep_cpu_memory, release_cpu_memory
from nin_search.engine.curve import Curve, Finding, median_curve, no_descent_advice, suggest
from nin_search.engine.data import Data, batches
from nin_search.engine.train import autocast, resolve_precision, seeded_start, tqdm, train_step


def schedule(c: LRFinderConfig) -> list[float]:
    """The lr of each step: start_lr * q**i (exponential) or evenly spaced (linear)."""
    n = c.num_iter
    if c.mode == "linear":
        return [c.start_lr + (c.end_lr - c.start_lr) * i / (n - 1) for i in range(n)]
    return [c.start_lr * (c.end_lr / c.start_lr) ** (i / (n - 1)) for i in range(n)]


def _state_before(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator | None):
    """What the range test changes, copied, so that _restore puts the model, optimizer and
    random state back exactly (snapshot.py is the training checkpoint, a different thing)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(opt.state_dict()),
        model.training,
        torch.get_rng_state(),
        cuda,
        gen.get_state() if gen is not None else None,
    )


def _restore(model, opt, gen, before) -> None:
    weights, opt_state, training, cpu_rng, cuda_rng, gen_state = before
    model.load_state_dict(weights)
    opt.load_state_dict(opt_state)
    model.train(training)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    if gen_state is not None:
        gen.set_state(gen_state)


def range_test(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    stream: Iterator[tuple[torch.Tensor, torch.Tensor]],
    c: LRFinderConfig,
    criterion: nn.Module | None = None,
    val: tuple | None = None,
    gen: torch.Generator | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> Curve:
    """Run the sweep on (model, opt) and put both back exactly as they were.

    stream yields training batches; val = (x, y) evaluates that fixed batch at every step
    (Smith's variant, lr_finder.use_val) instead of using the training loss.
    """
    criterion = criterion or nn.CrossEntropyLoss()
    device = next(model.parameters()).device
    if device.type == "cpu":
        keep_cpu_memory()
    before = _state_before(model, opt, gen)
    curve, avg, best = Curve(), 0.0, math.inf
    lrs = schedule(c)
    bar = tqdm(total=len(lrs), desc="lr-finder", leave=False) if progress and tqdm else None
    try:
        for i, lr in enumerate(lrs):
            for group in opt.param_groups:
                group["lr"] = lr
            model.train()
            xb, yb = next(stream)
            _, loss = train_step(model, opt, criterion, xb, yb, device, precision)
            if val is not None:
                model.eval()
                with torch.no_grad(), autocast(device, precision):
                    loss = criterion(model(val[0]).float(), val[1])
            value = loss.item()  # one sync per step: the test is 100 steps, not a hot loop
            avg = c.beta * avg + (1 - c.beta) * value
            smooth = avg / (1 - c.beta ** (i + 1))
            curve.lrs.append(lr)
            curve.losses.append(value)
            curve.smoothed.append(smooth)
            if bar is not None:
                bar.update()
                bar.set_postfix(lr=f"{lr:.2e}", loss=f"{smooth:.4f}", refresh=False)
            if not math.isfinite(smooth):
                curve.stop_reason = f"loss turned non-finite at lr {lr:.3g} (step {i + 1})"
                break
            best = min(best, smooth)
            if smooth > c.stop_factor * best:
                curve.stop_reason = (
                    f"smoothed loss exceeded {c.stop_factor:g}x the best at lr "
                    f"{lr:.3g} (step {i + 1})"
                )
                break
    finally:
        if bar is not None:
            bar.close()
        _restore(model, opt, gen, before)
        release_cpu_memory()
    return curve


def _stream(data: Data, cfg: Config, gen: torch.Generator) -> Iterator:
    while True:  # as many passes over the training split as the sweep needs
        yield from batches(data.train_x, data.train_y, cfg.train.batch_size, data.cfg, gen, True)


def seeded_test(
    cfg: Config,
    data: Data,
    seed: int,
    val: tuple | None = None,
    progress: bool = False,
) -> Curve:
    """One range test from a fresh model and data order seeded with seed, at train.precision
    resolved for the device."""
    device = data.train_x.device
    gen, model, opt = seeded_start(cfg, data, seed)  # as fit() starts
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    precision = resolve_precision(cfg.train.precision, device)
    stream = _stream(data, cfg, gen)
    return range_test(model, opt, stream, cfg.lr_finder, crit, val, gen, progress, precision)


def find_lr(cfg: Config, data: Data, progress: bool = False) -> Finding:
    """The range test on cfg's model and optimizer (training split only), lr_finder.repeats
    times with seeds train.seed + i, and the suggestions from the (median) curve."""
    c = cfg.lr_finder
    val = None
    if c.use_val:
        n = min(c.val_images, len(data.val_x))
        val = next(batches(data.val_x[:n], data.val_y[:n], n, data.cfg))
    curves = [seeded_test(cfg, data, cfg.train.seed + i, val, progress) for i in range(c.repeats)]
    curve = curves[0] if c.repeats == 1 else median_curve(curves, c.beta)
    finding = suggest(curve, c.num_iter, finder_rule(cfg), c.smoothing)
    if finding.status == "no-descent":
        finding.message += ": " + no_descent_advice(cfg, finding, data.num_classes)
    return finding
