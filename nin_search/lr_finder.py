"""The learning-rate range test (Smith 2015) with fastai's suggestions.

    python -m nin_search lr-finder --profile quick

The lr grows from lr_finder.start_lr to lr_finder.end_lr over lr_finder.num_iter training steps
(exponentially by default), one batch each; the loss is smoothed by a debiased EMA
(beta 0.98) and the test stops once the smoothed loss exceeds 4x the best or turns non-finite.
Model weights, BatchNorm buffers, optimizer state, the training mode and every RNG state are
restored afterwards, bit for bit. Suggestions follow fastai (../shared/reference/hpo.md), on the
curve without its first 10% and last 5 points and cut at the first NaN:
- valley: the longest decreasing subsequence of the loss; the point about halfway into it
  (1/3 + 1/6 of its length), fastai's default and ours;
- steep: the steepest drop of loss per log-lr;
- minimum: the lr at the lowest loss, divided by 10.
The sweep range: [valley / 10, lr at the lowest smoothed loss]. Below valley / 10 training is
10x slower than at the valley; past the lowest point the loss rises again. When the lowest point
is not above the valley, the range ends at 3x the valley. Imports only torch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from nin_search.config import Config, LRFinderConfig
from nin_search.data import Data, batches
from nin_search.model import build_model
from nin_search.train import autocast, make_optimizer, resolve_precision, tqdm, train_step

MIN_POINTS = 5  # fewer points left after trimming: the curve diverged at once
MIN_DROP = 0.02  # a curve whose loss never falls 2% below its start "never falls"


@dataclass
class Curve:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # raw loss per step (val loss if use_val)
    smoothed: list[float] = field(default_factory=list)  # debiased EMA
    stop_reason: str = "reached end_lr"


@dataclass
class Finding:
    curve: Curve
    status: str  # "ok" | "no-descent" | "diverged-at-once"
    message: str
    suggestions: dict[str, float] = field(default_factory=dict)  # valley, steep, minimum
    suggestion_points: dict[str, tuple[float, float]] = field(default_factory=dict)
    recommended_lr: float | None = None
    recommended_range: tuple[float, float] | None = None

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "message": self.message,
            "suggestions": self.suggestions,
            "recommended_lr": self.recommended_lr,
            "recommended_range": list(self.recommended_range) if self.recommended_range else None,
            "stop_reason": self.curve.stop_reason,
            "curve": {
                "lr": self.curve.lrs,
                "loss": self.curve.losses,
                "smoothed_loss": self.curve.smoothed,
            },
        }


def schedule(c: LRFinderConfig) -> list[float]:
    """The lr of each step: start_lr * q**i (exponential) or evenly spaced (linear)."""
    n = c.num_iter
    if c.mode == "linear":
        return [c.start_lr + (c.end_lr - c.start_lr) * i / (n - 1) for i in range(n)]
    return [c.start_lr * (c.end_lr / c.start_lr) ** (i / (n - 1)) for i in range(n)]


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator | None):
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(opt.state_dict()),
        model.training,
        torch.get_rng_state(),
        cuda,
        gen.get_state() if gen is not None else None,
    )


def _restore(model, opt, gen, snap) -> None:
    weights, opt_state, training, cpu_rng, cuda_rng, gen_state = snap
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
    snap = _snapshot(model, opt, gen)
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
        _restore(model, opt, gen, snap)
    return curve


def _valley(losses: list[float]) -> tuple[int, int, int]:
    """fastai's valley: (index, start, end) of the longest decreasing subsequence's midpoint."""
    n = len(losses)
    lds, max_start, max_end = [1] * n, 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2), max_start, max_end


def suggest(curve: Curve, num_iter: int) -> Finding:
    """fastai's valley, steep and minimum on the smoothed curve, plus the sweep range."""
    lrs, losses = curve.lrs[num_iter // 10 : -5], curve.smoothed[num_iter // 10 : -5]
    cut = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
    lrs, losses = lrs[:cut], losses[:cut]
    stop_lr = curve.lrs[-1] if curve.lrs else float("nan")
    if len(lrs) < MIN_POINTS:
        return Finding(
            curve,
            "diverged-at-once",
            f"the loss diverged at once (by lr {stop_lr:.3g}, {len(curve.lrs)} steps): "
            f"no lr in this range trains; lower lr_finder.start_lr or check the data",
        )
    if min(losses) > losses[0] * (1 - MIN_DROP):
        return Finding(
            curve,
            "no-descent",
            f"the loss never fell (lowest {min(losses):.4g} vs {losses[0]:.4g} at the "
            f"start, lr {lrs[0]:.3g} to {lrs[-1]:.3g}): no suggestion; raise "
            f"lr_finder.end_lr or lr_finder.num_iter, or change the optimizer",
        )
    v, _, _ = _valley(losses)
    logs = [math.log(x) for x in lrs]
    grads = [(losses[i + 1] - losses[i]) / (logs[i + 1] - logs[i]) for i in range(len(lrs) - 1)]
    s = min(range(len(grads)), key=grads.__getitem__)
    m = min(range(len(losses)), key=losses.__getitem__)
    valley = lrs[v]
    high = lrs[m] if lrs[m] > valley else 3 * valley
    return Finding(
        curve,
        "ok",
        f"valley at lr {valley:.3g}",
        suggestions={"valley": valley, "steep": lrs[s], "minimum": lrs[m] / 10},
        suggestion_points={
            "valley": (valley, losses[v]),
            "steep": (lrs[s], losses[s]),
            "minimum": (lrs[m] / 10, losses[m]),
        },
        recommended_lr=valley,
        recommended_range=(valley / 10, high),
    )


def _stream(data: Data, cfg: Config, gen: torch.Generator) -> Iterator:
    while True:  # as many passes over the training split as the sweep needs
        yield from batches(
            data.train_x,
            data.train_y,
            cfg.train.batch_size,
            data.cfg,
            gen,
            train=True,
        )


def find_lr(cfg: Config, data: Data, progress: bool = False) -> Finding:
    """The range test on cfg's model and optimizer (training split only), and its suggestions."""
    device = data.train_x.device
    torch.manual_seed(cfg.train.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.input_size, 1, data.num_classes)
    model = model.to(device, memory_format=torch.channels_last)  # as fit() trains it
    opt = make_optimizer(cfg.train, model.parameters())
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    val = None
    if cfg.lr_finder.use_val:
        n = min(cfg.lr_finder.val_images, len(data.val_x))
        val = next(batches(data.val_x[:n], data.val_y[:n], n, data.cfg))
    precision = resolve_precision(cfg.train.precision, device)
    curve = range_test(
        model, opt, _stream(data, cfg, gen), cfg.lr_finder, crit, val, gen, progress, precision
    )
    return suggest(curve, cfg.lr_finder.num_iter)
