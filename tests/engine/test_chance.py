"""Chance level (chance.py) and the runs fit() stops because they collapsed to it.

A collapse is what benchmarks/RESULTS.md measured with plain SGD on the fully connected head at
lr >= ~1: every ReLU that feeds the head dies within ~20 steps, the logits are the same for
every image, the loss is finite, and the run used to end "completed" at 10 % val accuracy.
"""

from __future__ import annotations

import pytest
from builders import squares
from scipy import stats

from nin_search.engine.chance import (
    _above_chance_p,
    at_chance,
    collapsed,
    exploded,
    explosion_limit,
    learned,
)
from nin_search.engine.config import load_config
from nin_search.engine.data import split_data
from nin_search.engine.train import FitResult, fit
from nin_search.tracking.runs import chance_note

# the squares task at 16 px with the fully connected head, plain SGD under onecycle
FC_SGD = [
    "model.preset=lin2013", "model.width=0.25", "data.resize=16", "train.batch_size=32",
    "data.val_size=200", "model.head=fc", "model.batch_norm=true", "model.dropout=0",
    "train.optimizer=sgd", "train.schedule=onecycle", "train.epochs=4",
]  # fmt: skip


def epoch(val_acc: float, train_acc: float = 0.1, n: int = 1) -> dict:
    return {"epoch": n, "val_acc": val_acc, "train_acc": train_acc, "val_loss": 2.3}


@pytest.mark.parametrize(("right", "n"), [(503, 5000), (700, 5000), (2, 16), (7, 16), (40, 40)])
def test_the_binomial_p_is_scipys(right, n):
    # P(X >= right) for X ~ Binomial(n, 1/10), computed with torch alone
    want = stats.binom.sf(right - 1, n, 0.1)
    assert _above_chance_p(right / n, n, 10) == pytest.approx(want, rel=1e-6, abs=1e-300)


def test_at_chance_is_below_one_and_a_half_times_chance_and_not_significantly_above():
    assert at_chance(0.1006, 5000, 10)  # the fc runs of the regret grid
    assert at_chance(2 / 16, 16, 10)
    # 0.14 of 5,000 is far above guessing (p ~ 1e-19): it learned a little
    assert not at_chance(0.14, 5000, 10)
    assert not at_chance(0.2, 5000, 10)
    # chance is 1 / num_classes: 0.3 is chance for 3 classes, not for 10
    assert at_chance(0.3, 5000, 3) and not at_chance(0.3, 5000, 10)


def test_learned_needs_twice_chance_and_strong_evidence():
    assert learned(0.831, 5000, 10) and learned(0.3733, 1280, 10)
    # 7 right of 16 (p ~ 5e-4) is not evidence enough; 10 of 16 is
    assert not learned(7 / 16, 16, 10) and learned(10 / 16, 16, 10)
    assert not learned(0.19, 5000, 10)
    # two classes: halfway from chance to 1 (0.75), not 2 x chance (1.0, out of reach)
    assert learned(0.8, 5000, 2) and not learned(0.7, 5000, 2)


def test_collapsed_on_fixed_histories():
    # fell to chance after a good epoch (lr 1.12, seed 0 of the regret grid's fc model)
    assert collapsed([epoch(0.831), epoch(0.095, 0.3, 2)], 5000, 10)
    # fell within its first epoch: no val accuracy above chance to fall from, so not a collapse
    # (the run completes at chance and train says "did not learn")
    assert not collapsed([epoch(0.0976, 0.36)], 5000, 10)
    # memorized the training set without generalizing: train accuracy is no evidence
    assert not collapsed([epoch(0.1, 0.9), epoch(0.1, 1.0, 2)], 5000, 10)
    # the plain NiN's plateau at ln 10: at chance, but it never learned
    assert not collapsed([epoch(0.1), epoch(0.1, n=2)], 5000, 10)
    # worse, but not at chance
    assert not collapsed([epoch(0.5), epoch(0.45, 0.5, 2)], 5000, 10)
    # a 16-image val set's noise is no evidence of having learned
    assert not collapsed([epoch(7 / 16), epoch(1 / 16, n=2)], 16, 10)
    assert collapsed([epoch(10 / 16), epoch(1 / 16, n=2)], 16, 10)


def run(lr: float, *sets: str, n: int = 800):
    cfg = load_config(overrides=[*FC_SGD, f"train.lr={lr}", *sets])
    x, y = squares(n)
    return fit(cfg, split_data(x, y, cfg.data, "cpu"))


def test_a_run_that_collapses_to_chance_stops_as_diverged_with_the_reason():
    # 4 steps an epoch, fp32 on every host (a collapse is a draw: bf16 trains on here); at lr
    # 10 its loss explodes first (test_a_run_whose_loss_explodes_stops_as_diverged_with_the_reason)
    sets = ["data.val_size=256", "train.batch_size=64", "train.epochs=3", "train.precision=fp32"]
    result = run(1, *sets, n=512)
    # epoch 1 learned (val 0.38 of 256), epoch 3 fell to chance
    assert result.status == "diverged" and result.diverged_at == (3, 4)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]  # the collapsed epoch is kept
    assert learned(result.history[0]["val_acc"], 256, 10)
    assert at_chance(result.history[2]["val_acc"], 256, 10)
    # the dead head's signature: the train loss sits at ln 10, far from an explosion
    assert result.history[2]["train_loss"] == pytest.approx(2.303, abs=0.05)
    assert result.reason.startswith("collapsed at epoch 3 (its lr up to ")
    assert "after 0.3828 at epoch 1; the loss stayed finite" in result.reason
    assert result.reason.endswith("lower train.lr")


def test_the_same_model_at_a_lower_lr_completes_and_learns():
    result = run(1)
    assert result.status == "completed" and len(result.history) == 4
    assert result.history[-1]["val_acc"] >= 0.9 and not result.at_chance


def test_a_run_that_never_learned_is_at_chance_and_the_note_names_what_to_try():
    # the plain NiN (no BatchNorm, ReLU on the logits) at a low lr: the plateau at ln 10
    plain = ["model.preset=lin2013", "model.width=0.25", "data.resize=16", "data.val_size=200"]
    sets = ["model.batch_norm=false", "train.optimizer=sgd", "train.lr=0.001", "train.epochs=1"]
    cfg = load_config(overrides=plain + sets + ["train.batch_size=32"])
    x, y = squares(800)
    result = fit(cfg, split_data(x, y, cfg.data, "cpu"))
    # nothing learned: completed (not a collapse), at chance
    assert result.status == "completed" and result.at_chance
    acc = result.history[-1]["val_acc"]
    note = chance_note(result, batch_norm=False)
    assert note.startswith(f"did not learn: val_acc {acc:.4f} after 1 epoch(s) is chance")
    assert "lr-finder" in note and "model.batch_norm=true" in note
    # with BatchNorm already on, the note does not suggest it
    assert "model.batch_norm" not in chance_note(result, batch_norm=True)
    # its train accuracy stayed at chance too: nothing says it fitted anything
    assert "train accuracy reached" not in note


def test_the_note_of_a_run_whose_train_accuracy_rose_says_to_lower_the_lr():
    # the fc model at lr 3 (RESULTS.md): collapsed within epoch 1, whose train accuracy was 0.36
    # while it lasted; no val accuracy above chance, so no collapse by the rule, but the note
    # says what the train accuracy shows
    history = [{"epoch": 1, "train_acc": 0.36, "val_acc": 0.0976, "val_loss": 2.3045}]
    result = FitResult("completed", history, num_classes=10, val_images=5000, train_images=55000)
    assert result.at_chance
    note = chance_note(result, batch_norm=True)
    assert "its train accuracy reached 0.3600 (epoch 1)" in note and "lower train.lr" in note


# the lin2013 NiN with the fully connected head at native 28 px, plain SGD at a constant lr:
# 256 training and 256 validation images, 4 steps an epoch (issue 34's blow-up, on squares);
# fp32, since auto is bf16 on a CPU with bf16 units and runs at these lrs are chaotic
FC_PLAIN = [
    "model.preset=lin2013", "model.width=0.25", "data.resize=28", "model.head=fc",
    "model.batch_norm=true", "data.val_size=256", "train.batch_size=64", "train.optimizer=sgd",
    "train.epochs=3", "train.precision=fp32",
]  # fmt: skip


def plain_run(lr: float):
    cfg = load_config(overrides=[*FC_PLAIN, f"train.lr={lr}"])
    x, y = squares(512)
    return fit(cfg, split_data(x, y, cfg.data, "cpu"))


def losses(*train_loss: float) -> list[dict]:
    return [{"epoch": i + 1, "train_loss": v} for i, v in enumerate(train_loss)]


def test_exploded_on_fixed_histories():
    assert explosion_limit(10) == pytest.approx(1000 * 2.302585)
    # issue 34 (Fashion-MNIST, lr 1): 8.9e3 in epoch 1, 1.8e7 in epoch 2
    assert exploded(losses(8.9e3), 10) and exploded(losses(8.9e3, 1.8e7), 10)
    # bumps of runs that recovered (squares, 4 steps an epoch): lr 0.3 reached 1.00 val
    # accuracy after 22.8 in epoch 1; lr 0.5 after 126 in epoch 2
    assert not exploded(losses(22.8, 0.114), 10)
    assert not exploded(losses(38.1, 126), 10)
    # ln 2 for two classes: the limit scales with a constant guess's loss
    assert exploded(losses(700.0), 2) and not exploded(losses(700.0), 10)


def test_a_run_whose_loss_explodes_stops_as_diverged_with_the_reason():
    result = plain_run(3)
    (last,) = result.history  # epoch 1's mean train loss is ~1.5e4: stopped there, not at 3
    assert result.status == "diverged" and result.diverged_at == (1, 4)
    assert explosion_limit(10) < last["train_loss"] < float("inf")
    # its val accuracy is well above chance: the collapse rule alone let it complete
    assert not at_chance(last["val_acc"], 256, 10)
    assert result.reason.startswith("exploded at epoch 1 (its lr up to 3): the mean train loss")
    assert "above 1000 x ln 10 = 2303" in result.reason
    assert result.reason.endswith("lower train.lr")


def test_a_run_with_a_first_epoch_bump_that_learns_completes():
    result = plain_run(1)
    # epoch 1's mean train loss is ~75 (33 x ln 10, above the lr-finder's 4x stop), then it
    # falls and the run learns: a bump, not an explosion
    first, last = result.history[0], result.history[-1]
    assert first["train_loss"] > 10 * 2.303 and last["train_loss"] < 1
    assert result.status == "completed" and len(result.history) == 3
    assert last["val_acc"] >= 0.8
