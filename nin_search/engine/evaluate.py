"""A model on a split: loss, accuracy, predictions and per-class counts (torch only).

ev = evaluate_split(model, data, "test", cfg.train.precision)
ev.acc, ev.confusion, per_class(ev)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nin_search.engine.config import ConfigError
from nin_search.engine.data import Data
from nin_search.engine.train import predict, resolve_precision

CLASSES = {
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(d) for d in range(10)),
}  # fmt: skip


SPLITS = {
    "test": "the test set (never used for tuning)",
    "val": "the validation split (held out of training by data.split_seed; what sweeps tune on)",
}


@dataclass
class Evaluation:
    split: str  # "test" | "val"
    loss: float
    acc: float
    labels: torch.Tensor  # (N,) int64 on the CPU
    preds: torch.Tensor  # (N,) int64 on the CPU
    images: torch.Tensor  # (N, 28, 28) uint8 on the CPU: the split at its native size
    classes: tuple[str, ...]
    precision: str  # the resolved precision it ran at

    def confusion(self) -> torch.Tensor:
        """(K, K) counts: row = true class, column = predicted class."""
        k = len(self.classes)
        return torch.bincount(self.labels * k + self.preds, minlength=k * k).reshape(k, k)

    def most_confused(self, n: int = 5) -> list[tuple[int, str, str]]:
        """The n largest off-diagonal cells: (count, true class, predicted class)."""
        c = self.confusion().fill_diagonal_(0).flatten()
        top = [(int(c[i]), *divmod(int(i), len(self.classes))) for i in c.argsort(descending=True)]
        return [(v, self.classes[t], self.classes[p]) for v, t, p in top[:n] if v > 0]


@torch.no_grad()
def evaluate_split(model: nn.Module, data: Data, split: str, precision: str) -> Evaluation:
    x, y = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
    loss, acc, preds = predict(model, x, y, data, precision)  # as fit validates
    preds = preds.cpu()
    classes = CLASSES[data.cfg.dataset][: data.num_classes]
    return Evaluation(split, loss, acc, y.cpu(), preds, x.cpu(), classes, precision)


def per_class(ev: Evaluation) -> list[dict]:
    c = ev.confusion()
    return [
        {
            "class": name,
            "images": int(c[k].sum()),
            "correct": int(c[k, k]),
            "accuracy": float(c[k, k] / c[k].sum()) if c[k].sum() else float("nan"),
        }
        for k, name in enumerate(ev.classes)
    ]


def summary(ev: Evaluation) -> str:
    """'final evaluation on the test set (...): test_loss 0.3012  test_acc 0.8923 (...)'"""
    return (
        f"{'final evaluation' if ev.split == 'test' else 'evaluation'} on {SPLITS[ev.split]}: "
        f"{ev.split}_loss {ev.loss:.4f}  {ev.split}_acc {ev.acc:.4f}  ({len(ev.labels):,} "
        f"images, {ev.precision})"
    )


def _precision(trained: str, device: torch.device) -> tuple[str, str]:
    """The precision it trained at, or fp32 (with a note) where this device has no bf16."""
    try:
        return resolve_precision(trained, device), ""
    except ConfigError:
        return "fp32", f"trained in {trained}; no bf16 units here, so evaluated in fp32"
