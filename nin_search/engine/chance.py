"""Chance level: is a run's accuracy no better than guessing, did a run that had learned
collapse to it, and did its loss blow up far past a constant guess's ln(classes)?

fit() stops a run that collapsed or exploded (status "diverged", like a non-finite loss); train
says when a run ended at chance without ever learning. Imports only torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # train.py imports this module
    pass


# An accuracy "at chance": below 1.5 / num_classes and not above chance at p < 0.001
# (one-sided binomial test); "learned": at least 2 / num_classes and above chance at p < 1e-6.
AT_CHANCE, AT_CHANCE_P = 1.5, 1e-3


LEARNED, LEARNED_P = 2.0, 1e-6


# An epoch whose mean training loss is above EXPLODED x ln(num_classes) has exploded.
# ln(num_classes) is a constant guess's loss, and a new network starts within a few times of it.
# Runs that learn bump far above ln 10 (the lr-finder's 4x would stop them), runs that blow up
# go far past this line within two epochs: docs/results/collapse.md, "Runs whose loss explodes".
EXPLODED = 1000.0


def _above_chance_p(acc: float, n: int, num_classes: int) -> float:
    """One-sided binomial p of getting acc * n or more of n right by guessing (torch only)."""
    if n <= 0:
        return 1.0
    right = round(acc * n)
    k = torch.arange(right, n + 1, dtype=torch.float64)
    dist = torch.distributions.Binomial(n, torch.tensor(1 / num_classes, dtype=torch.float64))
    return float(dist.log_prob(k).logsumexp(0).exp().clamp(max=1.0))


def at_chance(acc: float, n: int, num_classes: int) -> bool:
    """acc over n images is at chance: below AT_CHANCE / num_classes and not significantly
    above chance (AT_CHANCE_P). 0.14 of 5,000 images is above chance (it learned a little);
    2 right of 16 is not."""
    return acc < AT_CHANCE / num_classes and _above_chance_p(acc, n, num_classes) > AT_CHANCE_P


def learned(acc: float, n: int, num_classes: int) -> bool:
    """acc over n images is clearly above chance: LEARNED x chance (with two classes, halfway
    from chance to 1) and p < LEARNED_P, so noise on a small val set (7 right of 16 is p ~ 1e-4)
    is not taken for learning."""
    least = min(LEARNED / num_classes, (1 + 1 / num_classes) / 2)
    return acc >= least and _above_chance_p(acc, n, num_classes) < LEARNED_P


def collapsed(history: list[dict], val_images: int, num_classes: int) -> bool:
    """The last epoch's val accuracy is at chance although an earlier epoch's was clearly above
    it (learned). Val accuracies only: a train accuracy above chance can be memorization, which
    is no collapse. Plain SGD at lr ~1 on the fully connected head kills every ReLU that feeds
    it; the logits are then the same for every image, the loss sits at ln 10, finite, and no
    gradient reaches the body, so it never recovers (docs/results/collapse.md)."""
    if not history or not at_chance(history[-1]["val_acc"], val_images, num_classes):
        return False
    return any(learned(h["val_acc"], val_images, num_classes) for h in history[:-1])


def explosion_limit(num_classes: int) -> float:
    return EXPLODED * math.log(max(num_classes, 2))  # one class: ln 1 = 0 would stop every run


def exploded(history: list[dict], num_classes: int) -> bool:
    """The last epoch's mean training loss is above explosion_limit(num_classes). The training
    loss, not the validation loss: with BatchNorm a short run's running statistics lag its
    weights, and runs with val losses of 1e3-2e5 after epoch 1 went on to 1.00 val accuracy."""
    return bool(history) and history[-1]["train_loss"] > explosion_limit(num_classes)
