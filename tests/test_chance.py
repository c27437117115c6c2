"""Chance level (chance.py) and the runs fit() stops because they collapsed to it.

A collapse is what benchmarks/RESULTS.md measured with plain SGD on the fully connected head at
lr >= ~1: every ReLU that feeds the head dies within ~20 steps, the logits are the same for
every image, the loss is finite, and the run used to end "completed" at 10 % val accuracy.
"""

from __future__ import annotations

import pytest
from conftest import squares
from scipy import stats

from nin_search.chance import _above_chance_p, at_chance, chance_note, collapsed, learned
from nin_search.config import load_config
from nin_search.data import split_data
from nin_search.train import FitResult, fit

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


def run(lr: float):
    cfg = load_config(overrides=[*FC_SGD, f"train.lr={lr}"])
    x, y = squares(800)
    return fit(cfg, split_data(x, y, cfg.data, "cpu"))


def test_a_run_that_collapses_to_chance_stops_as_diverged_with_the_reason():
    result = run(10)
    # epoch 1 learned (val 0.22 of 200), epoch 2 fell to chance: stopped there, not at epoch 4
    assert result.status == "diverged" and result.diverged_at == (2, 19)
    assert [h["epoch"] for h in result.history] == [1, 2]  # the collapsed epoch is kept
    assert learned(result.history[0]["val_acc"], 200, 10)
    assert at_chance(result.history[1]["val_acc"], 200, 10)
    assert result.reason.startswith("collapsed at epoch 2 (its lr up to 10)")
    assert "after 0.2200 at epoch 1; the loss stayed finite" in result.reason
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
