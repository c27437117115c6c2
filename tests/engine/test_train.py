"""The training engine: fit() learns, stops, diverges and schedules as documented; evaluate().

Synthetic data only: class k is a bright 8x5 block at a class-specific place on a dim noisy
28x28 background, so a small NiN can tell the classes apart within a few epochs on a CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from builders import squares
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from nin_search.engine.config import TrainConfig, load_config
from nin_search.engine.data import split_data, to_input
from nin_search.engine.model import build_model
from nin_search.engine.train import evaluate, fit, make_schedule

HISTORY_KEYS = {
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "img_per_s",
    "epoch_time_s",
}
# lin2013 accepts any size; at quarter width and 16 px a step takes milliseconds on a CPU
SMALL_RUN = ["model.preset=lin2013", "model.width=0.25", "data.resize=16", "train.batch_size=16"]


def run(sets: list[str], n: int = 80, val: int = 16, on_epoch=None):
    """fit() on n synthetic images with val held out, under SMALL_RUN plus sets."""
    cfg = load_config(overrides=SMALL_RUN + [f"data.val_size={val}"] + sets)
    x, y = squares(n)
    return fit(cfg, split_data(x, y, cfg.data, "cpu"), on_epoch=on_epoch)


# ---- learning --------------------------------------------------------------------------------


def test_tiny_run_learns_an_easy_task_well_above_chance():
    result = run(
        [
            "train.optimizer=adam",
            "train.lr=0.003",
            "train.epochs=5",
            "model.final_relu=false",
            "model.dropout=0",
            "train.batch_size=32",
        ],
        n=600,
        val=200,
    )
    # 10 classes: chance is 0.1; the block's place is easy to learn
    assert result.status == "completed" and result.best_val_acc >= 0.8
    # and the training loss falls from about ln(10)
    assert result.history[-1]["train_loss"] < 0.5 * math.log(10)


# ---- history and the on_epoch hook -----------------------------------------------------------


def test_history_has_one_entry_per_epoch_with_every_metric():
    result = run(["train.epochs=3"])
    # one dict per epoch, numbered from 1
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    # each with every documented metric
    assert all(HISTORY_KEYS <= set(h) for h in result.history)


def test_history_metrics_are_in_range():
    h = run(["train.epochs=1"]).history[0]
    # accuracies are fractions, losses positive and finite, timings positive
    assert 0 <= h["train_acc"] <= 1 and 0 <= h["val_acc"] <= 1
    assert 0 < h["train_loss"] < math.inf and 0 < h["val_loss"] < math.inf
    assert h["img_per_s"] > 0 and h["epoch_time_s"] > 0


def test_best_val_acc_is_the_best_epoch():
    result = run(["train.epochs=3"])
    # best_val_acc is the highest val_acc of any epoch
    assert result.best_val_acc == max(h["val_acc"] for h in result.history)


def test_on_epoch_sees_every_epochs_metrics():
    seen: list[dict] = []
    result = run(["train.epochs=2"], on_epoch=lambda m: seen.append(dict(m)))
    # the hook gets each epoch's metrics, the same ones the history keeps
    assert seen == result.history and result.status == "completed"


def test_on_epoch_returning_a_reason_stops_the_run():
    result = run(["train.epochs=4"], on_epoch=lambda m: "pruned" if m["epoch"] == 2 else None)
    # the run stops after the epoch whose hook returned a reason, and says why
    assert (result.status, result.reason, len(result.history)) == ("stopped", "pruned", 2)


# ---- determinism -----------------------------------------------------------------------------


def losses(result) -> list[tuple[float, float]]:
    return [(h["train_loss"], h["val_loss"]) for h in result.history]


def test_same_seed_gives_identical_losses():
    sets = ["train.epochs=2", "train.seed=7", "data.augment=true"]
    # weights, batch order, dropout and augmentation all follow train.seed
    assert losses(run(sets)) == losses(run(sets))


def test_another_seed_gives_other_losses():
    # a different train.seed is a different run
    assert losses(run(["train.epochs=1", "train.seed=1"])) != losses(
        run(["train.epochs=1", "train.seed=2"])
    )


# ---- divergence ------------------------------------------------------------------------------


@pytest.mark.parametrize("final_relu", ["true", "false"])
def test_absurd_lr_diverges_with_epoch_and_step(final_relu):
    result = run(["train.lr=100", "train.epochs=2", f"model.final_relu={final_relu}"])
    epoch, step = result.diverged_at
    # plain SGD at lr 100 blows the loss up in the first epoch
    assert (result.status, epoch) == ("diverged", 1) and 1 <= step <= 4
    # the reason names the epoch and step, and the fix
    assert f"epoch {epoch}, step {step}" in result.reason and "train.lr" in result.reason


def test_divergence_after_good_epochs_keeps_their_history():
    # lr warms up from 1 to 100 over 3 epochs: fine at first, non-finite later
    result = run(["train.lr=100", "train.warmup_epochs=3", "train.epochs=4"])
    epoch, _ = result.diverged_at
    # it diverges after at least one completed epoch
    assert result.status == "diverged" and epoch >= 2
    # the completed epochs are kept, the diverged one is not
    assert [h["epoch"] for h in result.history] == list(range(1, epoch))
    # and the reason names the epoch it happened in
    assert f"epoch {epoch}," in result.reason


def test_weights_overflowing_in_an_epochs_last_update_diverge_at_that_step():
    # every training loss of epoch 1 is finite, but its last update leaves an inf weight: the
    # validation loss is the first non-finite loss, and the run stops there, not one step later
    def poison(opt, *_):
        steps.append(1)
        if len(steps) == 4:  # 64 training images in batches of 16: the last step of epoch 1
            with torch.no_grad():
                opt.param_groups[0]["params"][0].fill_(math.inf)

    steps: list[int] = []
    handle = register_optimizer_step_post_hook(poison)
    try:
        result = run(["train.epochs=3"])
    finally:
        handle.remove()
    assert (result.status, result.diverged_at) == ("diverged", (1, 4))
    assert "epoch 1, step 4 (the validation loss" in result.reason
    assert result.history == []


# ---- learning-rate schedules -----------------------------------------------------------------

SCHEDULES = ["constant", "cosine", "onecycle", "step"]
STEPS = 4  # steps per epoch below: 64 training images in batches of 16


def lr_per_step(**train) -> list[float]:
    """The lr of each optimizer step of make_schedule, then the lr after the last step."""
    t = TrainConfig(**train)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=t.lr)
    sched = make_schedule(t, opt, STEPS)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(t.epochs * STEPS):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("warmup", ["0", "1"])
def test_every_schedule_trains(schedule, warmup):
    result = run(
        [
            f"train.schedule={schedule}",
            f"train.warmup_epochs={warmup}",
            "train.epochs=3",
            "train.step_size=1",
        ]
    )
    # every schedule, with or without warmup, completes with finite losses
    assert result.status == "completed" and len(result.history) == 3
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    # and the lr never exceeds train.lr
    assert all(0 <= h["lr"] <= 0.05 + 1e-12 for h in result.history)


def test_constant_lr_stays_at_train_lr():
    history = run(["train.epochs=2"]).history
    # the d2l run: one lr throughout
    assert [h["lr"] for h in history] == [0.05, 0.05]


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_annealing_schedules_end_near_zero(schedule):
    history = run([f"train.schedule={schedule}", "train.epochs=3"]).history
    # the lr in effect at the end of training has annealed to (almost) nothing
    assert history[-1]["lr"] < 1e-3 * 0.05


def test_cosine_decreases_every_epoch():
    lrs = [h["lr"] for h in run(["train.schedule=cosine", "train.epochs=3"]).history]
    # cosine annealing only goes down
    assert lrs == sorted(lrs, reverse=True) and len(set(lrs)) == 3


def test_step_decays_by_gamma_every_step_size_epochs():
    history = run(
        ["train.schedule=step", "train.step_size=2", "train.gamma=0.1", "train.epochs=4"]
    ).history
    # the lr at the end of each epoch: decayed by 0.1 once 2 and 4 epochs are done
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.005, 0.005, 0.0005])


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_warmup_starts_at_one_hundredth_and_reaches_lr(schedule):
    lrs = lr_per_step(lr=0.1, schedule=schedule, warmup_epochs=1, epochs=3)
    # the first step runs at lr / 100
    assert lrs[0] == pytest.approx(0.001)
    # the lr rises linearly to train.lr, reached after one epoch of steps
    assert lrs[: STEPS + 1] == sorted(lrs[: STEPS + 1]) and lrs[STEPS] == pytest.approx(0.1)


def test_cosine_after_warmup_anneals_to_zero():
    lrs = lr_per_step(lr=0.1, schedule="cosine", warmup_epochs=1, epochs=3)
    # after the warmup the lr only falls, to 0 at the last step
    assert lrs[STEPS:] == sorted(lrs[STEPS:], reverse=True) and lrs[-1] == pytest.approx(0)


def test_step_counts_its_epochs_after_warmup():
    lrs = lr_per_step(lr=0.1, schedule="step", step_size=1, gamma=0.5, warmup_epochs=1, epochs=3)
    # one warmup epoch, one epoch at lr, then halved
    assert lrs[STEPS : 2 * STEPS] == [pytest.approx(0.1)] * STEPS
    assert lrs[2 * STEPS] == pytest.approx(0.05)


def test_onecycle_starts_low_peaks_at_lr_and_never_rises_again():
    lrs = lr_per_step(lr=0.1, schedule="onecycle", epochs=3)
    peak = lrs.index(max(lrs))
    # it starts at lr / 25 and peaks at train.lr
    assert lrs[0] == pytest.approx(0.004) and max(lrs) == pytest.approx(0.1, rel=1e-2)
    # after the peak it only anneals down, to the very end
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True)


def test_onecycle_warmup_sets_the_peak_step():
    lrs = lr_per_step(lr=0.1, schedule="onecycle", warmup_epochs=1, epochs=3)
    # train.warmup_epochs is onecycle's ramp-up: the peak comes after one epoch of steps
    assert lrs.index(max(lrs)) == STEPS - 1 and max(lrs) == pytest.approx(0.1)


# ---- evaluate --------------------------------------------------------------------------------


def test_evaluate_matches_a_direct_computation():
    cfg = load_config(overrides=SMALL_RUN + ["data.val_size=150"])
    x, y = squares(170)  # 150 validation images: more than one evaluation batch on the CPU
    data = split_data(x, y, cfg.data, "cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_size)
    loss, acc = evaluate(model, data.val_x, data.val_y, data)
    with torch.no_grad():
        logits = model.eval()(to_input(data.val_x, cfg.data.resize))
    # the accuracy is the fraction of argmax hits, a number in [0, 1]
    assert 0 <= acc <= 1 and acc == pytest.approx((logits.argmax(1) == data.val_y).float().mean())
    # the loss is the mean cross-entropy over all images
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, data.val_y).item(), rel=1e-5)


def test_evaluate_of_a_trained_model_agrees_with_history():
    result = run(["train.epochs=1"])
    cfg = load_config(overrides=SMALL_RUN + ["data.val_size=16"])
    x, y = squares(80)
    data = split_data(x, y, cfg.data, "cpu")
    # evaluating the returned model on the validation split reproduces the logged val_acc
    assert evaluate(result.model, data.val_x, data.val_y, data)[1] == result.history[-1]["val_acc"]


def test_batch_norm_trains_when_the_last_batch_would_hold_one_image():
    # 65 training images at batch 16: the epoch's last batch would be a single image, which
    # BatchNorm cannot normalise ("Expected more than 1 value per channel"); it is dropped
    result = run(["model.batch_norm=true", "train.epochs=2"], n=81, val=16)
    assert result.status == "completed" and len(result.history) == 2
    # 64 of the 65 images train each epoch, in 4 steps of 16
    assert 0.0 <= result.history[-1]["train_acc"] <= 1.0
    assert result.history[-1]["train_loss"] == result.history[-1]["train_loss"]  # finite


def test_training_batches_drop_only_a_lone_last_image():
    from nin_search.engine.data import batches, train_images

    cfg = load_config(overrides=SMALL_RUN)
    x, y = squares(33)
    gen = torch.Generator().manual_seed(0)
    sizes = [len(yb) for _, yb in batches(x, y, 16, cfg.data, gen, train=True)]
    # 33 = 16 + 16 + 1: the lone image goes, and train_images counts what is used
    assert sizes == [16, 16] and train_images(33, 16) == 32
    # 34 = 16 + 16 + 2 keeps every image; evaluation batches keep everything always
    assert [len(b) for _, b in batches(*squares(34), 16, cfg.data, gen, train=True)] == [16, 16, 2]
    assert [len(b) for _, b in batches(x, y, 16, cfg.data)] == [16, 16, 1]
