"""The LR range test: fastai's suggestion rules, the stops, the exact restore; it trains."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import squares
from torch import nn

from nin_search.config import LRFinderConfig, load_config
from nin_search.data import split_data
from nin_search.lr_finder import Curve, find_lr, range_test, schedule, suggest
from nin_search.model import build_model
from nin_search.train import fit, make_optimizer

N = 20  # iterations of the synthetic curves: suggestions use points N // 10 = 2 to N - 5 = 14
LRS = [10 ** (-4 + 5 * i / (N - 1)) for i in range(N)]


def curve(trimmed: list[float]) -> Curve:
    """A 20-point curve whose points 2..14 (the part fastai looks at) are `trimmed`."""
    assert len(trimmed) == 13
    smoothed = [9.0, 9.0] + trimmed + [9.0] * 5  # the edges are ignored, whatever they hold
    return Curve(lrs=LRS, losses=smoothed, smoothed=smoothed)


def test_known_valley_matches_hand_computed_indices():
    c = curve([2.30, 2.30, 2.25, 2.10, 1.90, 1.60, 1.20, 0.90, 0.70, 0.80, 1.50, 3.0, 6.0])
    f = suggest(c, N)
    assert f.status == "ok"
    # longest decreasing subsequence: points 0, 2..8 (8 long), start 8 - 8 = 0;
    # 8 / 3 = 2.67 -> index 0 + 2 + int(1.33) = 3, i.e. curve index 5
    assert f.suggestions["valley"] == LRS[5]
    # steepest drop per log-lr: 1.60 -> 1.20 at trimmed index 5 (curve index 7)
    assert f.suggestions["steep"] == LRS[7]
    # lowest loss 0.70 at trimmed index 8 (curve index 10), divided by 10
    assert f.suggestions["minimum"] == pytest.approx(LRS[10] / 10)
    assert f.recommended_lr == LRS[5]
    # the sweep range: a decade below the valley up to the lowest point
    assert f.recommended_range == (pytest.approx(LRS[5] / 10), LRS[10])


def test_monotone_curve_gives_no_number():
    c = curve([2.30 + 0.01 * i for i in range(13)])
    f = suggest(c, N)
    # a loss that never falls gets a plain statement, not a suggestion
    assert f.status == "no-descent"
    assert f.suggestions == {} and f.recommended_lr is None and f.recommended_range is None
    assert "never fell" in f.message


def test_nan_tail_is_cut_before_suggesting():
    nan = float("nan")
    c = curve([2.3, 2.2, 2.0, 1.7, 1.3, 1.0, 0.9, 0.95, 1.2, nan, nan, nan, nan])
    f = suggest(c, N)
    assert f.status == "ok"
    # on the 9 finite points: decreasing run 0..6 (7 long) gives fastai's start 6 - 7 = -1,
    # 7 / 3 = 2.33 -> index -1 + 2 + 1 = 2, i.e. curve index 4
    assert f.suggestions["valley"] == LRS[4]
    # steepest: 1.7 -> 1.3 at trimmed index 3 (curve index 5); lowest: 0.9 at index 6 (curve 8)
    assert f.suggestions["steep"] == LRS[5]
    assert f.suggestions["minimum"] == pytest.approx(LRS[8] / 10)


def test_immediate_divergence_gives_no_number():
    c = Curve(
        lrs=LRS[:6],
        losses=[2.3, 2.4, 5.0, 50.0, float("nan"), float("nan")],
        smoothed=[2.3, 2.4, 5.0, 50.0, float("nan"), float("nan")],
    )
    f = suggest(c, N)
    assert f.status == "diverged-at-once" and f.recommended_lr is None
    assert "diverged at once" in f.message


def test_schedule_is_exponential_or_linear_from_start_to_end():
    exp = schedule(LRFinderConfig(start_lr=1e-7, end_lr=10.0, num_iter=100))
    # exponential: the ends are exact and every step multiplies by the same factor
    assert exp[0] == pytest.approx(1e-7) and exp[-1] == pytest.approx(10.0)
    assert exp[50] / exp[49] == pytest.approx(exp[1] / exp[0])
    lin = schedule(LRFinderConfig(mode="linear", start_lr=0.1, end_lr=1.0, num_iter=10))
    assert lin[1] - lin[0] == pytest.approx(0.1) and lin[-1] == pytest.approx(1.0)


def _linear_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 20, generator=g)
    y = x[:, :10].argmax(1)

    def stream():
        while True:
            for i in range(0, 256, 32):
                yield x[i : i + 32], y[i : i + 32]

    return stream()


def test_diverging_loss_stops_the_sweep_early():
    torch.manual_seed(0)
    model = nn.Linear(20, 10)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    c = LRFinderConfig(start_lr=1e-3, end_lr=1e6, num_iter=100)
    result = range_test(model, opt, _linear_problem(), c)
    # stopped well before the 100th step, for one of the two documented reasons
    assert len(result.lrs) < 100
    assert "exceeded 4x the best" in result.stop_reason or "non-finite" in result.stop_reason
    assert result.smoothed[-1] > 4 * min(result.smoothed) or not math.isfinite(result.smoothed[-1])


def test_debiased_ema_smoothing():
    torch.manual_seed(0)
    model = nn.Linear(20, 10)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    c = LRFinderConfig(start_lr=1e-6, end_lr=1e-5, num_iter=10)
    r = range_test(model, opt, _linear_problem(), c)
    # the first smoothed value equals the first loss (debiasing), later ones follow the EMA
    assert r.smoothed[0] == pytest.approx(r.losses[0])
    avg = 0.0
    for i, loss in enumerate(r.losses):
        avg = 0.98 * avg + 0.02 * loss
        assert r.smoothed[i] == pytest.approx(avg / (1 - 0.98 ** (i + 1)))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_state_is_restored_bit_for_bit(optimizer: str):
    sets = [
        "model.preset=lin2013",
        "model.width=0.125",
        "model.batch_norm=true",
        "data.resize=0",
        f"train.optimizer={optimizer}",
        "train.lr=0.01",
    ]
    if optimizer == "sgd":
        sets.append("train.momentum=0.9")
    cfg = load_config(overrides=sets)
    torch.manual_seed(0)
    model = build_model(cfg.model, 28)
    opt = make_optimizer(cfg.train, model.parameters())
    x, y = squares(64)
    for i in range(0, 64, 16):  # a few real steps so the optimizer has state and BN has stats
        nn.functional.cross_entropy(
            model(x[i : i + 16, None].float() / 255), y[i : i + 16]
        ).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    gen = torch.Generator().manual_seed(7)
    before = (
        {k: v.clone() for k, v in model.state_dict().items()},
        str(opt.state_dict()),
        torch.get_rng_state().clone(),
        gen.get_state().clone(),
    )
    exp_state = {
        k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()}
        for k, s in opt.state_dict()["state"].items()
    }

    def stream():
        while True:
            idx = torch.randperm(64, generator=gen)[:16]
            yield x[idx, None].float() / 255, y[idx]

    c = LRFinderConfig(start_lr=1e-4, end_lr=10.0, num_iter=15)
    range_test(model, opt, stream(), c, gen=gen)
    # every weight and BatchNorm buffer, bit for bit
    after = model.state_dict()
    assert set(after) == set(before[0])
    for k, v in before[0].items():
        assert torch.equal(after[k], v), k
    # the optimizer's state tensors and hyperparameters (lr included)
    for k, s in opt.state_dict()["state"].items():
        for n, t in s.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(exp_state[k][n])), (k, n)
    assert opt.param_groups[0]["lr"] == 0.01
    # the mode, the global RNG and the batch generator
    assert not model.training
    assert torch.equal(torch.get_rng_state(), before[2])
    assert torch.equal(gen.get_state(), before[3])


def test_recommended_lr_trains_and_30x_does_not():
    # a tiny NiN on an easy synthetic task: the finder's lr lowers the loss within a few
    # epochs; thirty times that lr diverges or stalls
    sets = [
        "model.preset=lin2013",
        "model.width=0.25",
        "data.resize=16",
        "data.val_size=64",
        "train.batch_size=32",
        "train.epochs=4",
        "model.final_relu=false",
        "model.dropout=0",
        "train.optimizer=adam",
        "lr_finder.num_iter=100",
        "lr_finder.start_lr=1e-5",
        "lr_finder.end_lr=1",
    ]
    cfg = load_config(overrides=sets)
    x, y = squares(384)
    data = split_data(x, y, cfg.data, "cpu")
    finding = find_lr(cfg, data)
    assert finding.status == "ok", finding.message
    lr = finding.recommended_lr
    good = fit(load_config(overrides=sets + [f"train.lr={lr}"]), data)
    bad = fit(load_config(overrides=sets + [f"train.lr={min(30 * lr, 100)}"]), data)
    assert good.status == "completed"
    assert good.history[-1]["train_loss"] < 0.7 * math.log(10)
    assert good.best_val_acc >= 0.5
    assert bad.status == "diverged" or bad.history[-1]["train_loss"] > 0.9 * math.log(10)
