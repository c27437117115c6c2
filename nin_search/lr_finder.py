"""The learning-rate range test (Smith 2015), with suggestions read off a curve without lag.

    python -m nin_search lr-finder --profile cpu --set lr_finder.repeats=3

The lr grows from lr_finder.start_lr to end_lr over num_iter steps, one batch each; fastai's
debiased causal EMA (lr_finder.beta, 0.98) drives the progress bar and the stop (above 4x its best,
lr_finder.stop_factor, or non-finite). Weights, BatchNorm buffers, optimizer state, training mode
and every RNG state are restored afterwards, bit for bit. lr_finder.repeats = k runs k tests (seeds
train.seed + i) and suggests from the elementwise median raw loss, cut to the shortest run.
The rules read the lr_finder.smoothing curve without its first 10% and last 5 points, cut at the
first non-finite loss: `zero-phase` (default; zero_phase(): a debiased EMA run forward, then
backward; no lag) or `ema`, fastai's causal curve, which lags beta / (1 - beta) = 49 steps, ~4
decades at its defaults, and lifts every suggestion (../shared/reference/lr_finder_methods.md).
lr_finder.rule names the suggestion that becomes recommended_lr:
- valley (fastai's default): about halfway into the longest decreasing subsequence of the loss;
- steep: the steepest drop of loss per log-lr;
- minimum: the lr at the lowest loss / 10 (fastai's margin, much of it for the EMA's lag);
- half-decade (ours): the lr at the lowest loss / 10**0.5 = 3.16: with no lag to correct for,
  half of fastai's margin below the point where the loss turns up;
- lowest: the lr at the lowest loss itself, Smith's (2018) largest usable peak for a cyclical or
  one-cycle schedule (the cpu profile's onecycle takes train.lr as its peak).
The default, auto (config.finder_rule), is lowest under a onecycle schedule: against an lr grid
on six configurations of the cpu profile (benchmarks/lr_finder_regret.py, RESULTS.md) it lost
at most 0.96 points, though no rule met every target there; half-decade under the schedules
that start at their peak (not measured against a grid). Sweep
range: [recommended / 10, lr at the lowest point] (3x recommended if that is not above it);
under lowest [recommended / 30, 3x recommended]: the peak sits near the top of the stable lrs,
and the plateau below it can reach a decade further down (AdamW at width 0.25). A
loss that never falls gets one sentence on why and the --set overrides to try. Imports only
torch.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from nin_search.config import Config, LRFinderConfig, finder_rule
from nin_search.data import Data, batches
from nin_search.model import build_model
from nin_search.train import autocast, make_optimizer, resolve_precision, tqdm, train_step

MIN_POINTS = 5  # fewer points left after trimming: the curve diverged at once
MIN_DROP = 0.02  # a curve whose loss never falls 2% below its start "never falls"
ZERO_PHASE_STEPS = 20  # zero-phase beta = 1 - 20 / num_iter: 0.8 at 100 steps, 0.95 at 400


@dataclass
class Curve:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # raw loss per step; the repeats' median
    smoothed: list[float] = field(default_factory=list)  # fastai's causal debiased EMA
    stop_reason: str = "reached end_lr"
    runs: list[list[float]] = field(default_factory=list)  # each repeat's raw losses (repeats > 1)


@dataclass
class Finding:
    curve: Curve
    status: str  # "ok" | "no-descent" | "diverged-at-once"
    message: str
    rule: str = "lowest"  # lr_finder.rule: the suggestion that is recommended_lr
    smoothing: str = "zero-phase"  # lr_finder.smoothing: the curve the rules read
    zero_phase: list[float] = field(default_factory=list)  # the zero-phase curve, per step
    suggestions: dict[str, float] = field(default_factory=dict)  # lr per rule
    suggestion_points: dict[str, tuple[float, float]] = field(default_factory=dict)
    recommended_lr: float | None = None
    recommended_range: tuple[float, float] | None = None

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "message": self.message,
            "rule": self.rule,
            "smoothing": self.smoothing,
            "repeats": max(1, len(self.curve.runs)),
            "suggestions": self.suggestions,
            "recommended_lr": self.recommended_lr,
            "recommended_range": list(self.recommended_range) if self.recommended_range else None,
            "stop_reason": self.curve.stop_reason,
            "curve": {
                "lr": self.curve.lrs,
                "loss": self.curve.losses,
                "smoothed_loss": self.curve.smoothed,
                "zero_phase_loss": self.zero_phase,
            }
            | ({"repeat_losses": self.curve.runs} if self.curve.runs else {}),
        }


def schedule(c: LRFinderConfig) -> list[float]:
    """The lr of each step: start_lr * q**i (exponential) or evenly spaced (linear)."""
    n = c.num_iter
    if c.mode == "linear":
        return [c.start_lr + (c.end_lr - c.start_lr) * i / (n - 1) for i in range(n)]
    return [c.start_lr * (c.end_lr / c.start_lr) ** (i / (n - 1)) for i in range(n)]


def ema(losses: list[float], beta: float) -> list[float]:
    """fastai's debiased causal EMA: avg = beta * avg + (1 - beta) * loss, / (1 - beta**(i+1))."""
    out, avg = [], 0.0
    for i, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def zero_phase(losses: list[float], num_iter: int) -> list[float]:
    """The raw losses smoothed by a debiased EMA forward, then backward: no lag, either way.

    beta = 1 - 20 / num_iter keeps the window a fixed share of the sweep. Losses above the highest
    of the first 10% (the start) and non-finite ones are capped at it first: above its start the
    loss's size says nothing, and the backward pass would carry a divergence's 1e3 back onto lrs
    that still train.
    """
    beta = max(0.0, 1 - ZERO_PHASE_STEPS / num_iter)
    head = [v for v in losses[: max(1, num_iter // 10)] if math.isfinite(v)]
    if not head:
        return [math.nan] * len(losses)
    cap = max(head)
    capped = [min(v, cap) if math.isfinite(v) else cap for v in losses]
    return ema(ema(capped, beta)[::-1], beta)[::-1]


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


def suggest(
    curve: Curve, num_iter: int, rule: str = "lowest", smoothing: str = "zero-phase"
) -> Finding:
    """Every rule's lr on the `smoothing` curve; `rule`'s becomes recommended, with a range."""
    zp = zero_phase(curve.losses, num_iter)
    values = zp if smoothing == "zero-phase" else curve.smoothed
    lo = num_iter // 10
    raw, lrs, losses = curve.losses[lo:-5], curve.lrs[lo:-5], values[lo:-5]
    bad = (i for i, (r, v) in enumerate(zip(raw, losses, strict=True)) if not math.isfinite(r + v))
    cut = next(bad, len(lrs))
    lrs, losses = lrs[:cut], losses[:cut]
    stop_lr = curve.lrs[-1] if curve.lrs else float("nan")
    common = {"rule": rule, "smoothing": smoothing, "zero_phase": zp}
    if len(lrs) < MIN_POINTS:
        return Finding(
            curve,
            "diverged-at-once",
            f"the loss diverged at once (by lr {stop_lr:.3g}, {len(curve.lrs)} steps): "
            f"no lr in this range trains; lower lr_finder.start_lr or check the data",
            **common,
        )
    if min(losses) > losses[0] * (1 - MIN_DROP):
        return Finding(
            curve,
            "no-descent",
            f"the loss never fell (lowest {min(losses):.4g} vs {losses[0]:.4g} at the "
            f"start, lr {lrs[0]:.3g} to {lrs[-1]:.3g})",
            **common,
        )
    v, _, _ = _valley(losses)
    logs = [math.log(x) for x in lrs]
    grads = [(losses[i + 1] - losses[i]) / (logs[i + 1] - logs[i]) for i in range(len(lrs) - 1)]
    s = min(range(len(grads)), key=grads.__getitem__)
    m = min(range(len(losses)), key=losses.__getitem__)
    points = {
        "valley": (lrs[v], losses[v]),
        "steep": (lrs[s], losses[s]),
        "minimum": (lrs[m] / 10, losses[m]),
        "half-decade": (lrs[m] / 10**0.5, losses[m]),
        "lowest": (lrs[m], losses[m]),
    }
    best = points[rule][0]
    high = lrs[m] if lrs[m] > best else 3 * best
    low = best / (30 if rule == "lowest" else 10)
    return Finding(
        curve,
        "ok",
        f"{rule} at lr {best:.3g} on the {smoothing} curve",
        **common,
        suggestions={k: lr for k, (lr, _) in points.items()},
        suggestion_points=points,
        recommended_lr=best,
        recommended_range=(low, high),
    )


def no_descent_advice(cfg: Config, finding: Finding, num_classes: int = 10) -> str:
    """Why the loss never fell, in one sentence, and the --set overrides to try, by name."""
    c, t, n = cfg.lr_finder, cfg.train, len(finding.curve.lrs)
    zp = [v for v in finding.zero_phase if math.isfinite(v)] or [math.nan]
    start, chance = zp[0], math.log(num_classes)
    why = (
        f"the loss sat at ln {num_classes} = {chance:.3f}, chance level: in {n} steps the "
        f"network found no class signal yet at any lr"
        if abs(start - chance) < 0.05 * chance
        else f"no lr lowered the loss below its start ({start:.4g}) within {n} steps"
    )
    longer = f"--set lr_finder.num_iter={min(4 * c.num_iter, 100_000)}"
    tries = [] if cfg.model.batch_norm else ["--set model.batch_norm=true"]
    if t.optimizer == "sgd":
        tries += [] if t.momentum else ["--set train.momentum=0.9"]
        tries.append("--set train.optimizer=adamw")
    else:
        tries.append("--set train.optimizer=sgd --set train.momentum=0.9")
    if finding.curve.stop_reason == "reached end_lr" and c.end_lr < 10:
        tries.append("--set lr_finder.end_lr=10")
    low = min(range(len(zp)), key=zp.__getitem__)
    if low >= 0.85 * len(zp) and zp[low] < start * (1 - MIN_DROP / 2):  # a descent just begun
        return (
            f"{why}; it began to fall only at the end (to {zp[low]:.4g} at lr "
            f"{finding.curve.lrs[low]:.3g}): a longer test will likely find the descent, "
            f"rerun with {longer}; else try {' or '.join(tries)}"
        )
    return f"{why}; try a longer test ({longer}) or {' or '.join(tries)}"


def median_curve(curves: list[Curve], beta: float) -> Curve:
    """The repeats' elementwise median raw loss, cut to the shortest run, and its causal EMA."""
    n = min(len(c.lrs) for c in curves)
    # a non-finite loss ranks above every finite one, so a diverged step counts as +inf
    losses = [
        statistics.median(
            v if math.isfinite(v) else math.inf for v in (c.losses[i] for c in curves)
        )
        for i in range(n)
    ]
    first = min(range(len(curves)), key=lambda j: len(curves[j].lrs))
    reason = curves[first].stop_reason
    if reason != "reached end_lr":
        reason += f" in repeat {first + 1} of {len(curves)}"
    return Curve(
        curves[0].lrs[:n], losses, ema(losses, beta), reason, [c.losses[:n] for c in curves]
    )


def _stream(data: Data, cfg: Config, gen: torch.Generator) -> Iterator:
    while True:  # as many passes over the training split as the sweep needs
        yield from batches(data.train_x, data.train_y, cfg.train.batch_size, data.cfg, gen, True)


def _test(cfg: Config, data: Data, seed: int, val: tuple | None, progress: bool) -> Curve:
    device = data.train_x.device
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    model = build_model(cfg.model, data.input_size, 1, data.num_classes)
    model = model.to(device, memory_format=torch.channels_last)  # as fit() trains it
    opt = make_optimizer(cfg.train, model.parameters())
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
    curves = [_test(cfg, data, cfg.train.seed + i, val, progress) for i in range(c.repeats)]
    curve = curves[0] if c.repeats == 1 else median_curve(curves, c.beta)
    finding = suggest(curve, c.num_iter, finder_rule(cfg), c.smoothing)
    if finding.status == "no-descent":
        finding.message += ": " + no_descent_advice(cfg, finding, data.num_classes)
    return finding
