"""A range test's curve and what it says: the smoothing, the suggestion rules, the median of
repeats, and the advice when the loss never fell.

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
The default, auto (config.finder_rule), is lowest under a onecycle schedule, the rule that met
the targets against an lr grid on the cpu profile (docs/results/lr-finder.md); half-decade under
the schedules that start at their peak (not measured against a grid). Sweep
range: [recommended / 10, lr at the lowest point] (3x recommended if that is not above it);
under lowest [recommended / 30, 3x recommended]: the peak sits near the top of the stable lrs,
and the plateau below it can reach a decade further down (AdamW at width 0.25). A
loss that never falls gets one sentence on why and the --set overrides to try. Imports no torch.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from nin_search.engine.config import Config

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
