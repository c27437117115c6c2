"""The LR range test: the zero-phase curve, fastai's rules and ours, repeats, the never-fell
advice, the stops, the exact restore; it trains."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest
import torch
from builders import squares
from torch import nn

from nin_search.engine.config import (
    FINDER_RULES,
    ConfigError,
    LRFinderConfig,
    finder_rule,
    load_config,
)
from nin_search.engine.curve import (
    Curve,
    ema,
    median_curve,
    no_descent_advice,
    suggest,
    zero_phase,
)
from nin_search.engine.data import split_data
from nin_search.engine.lr_finder import find_lr, range_test, schedule, seeded_test
from nin_search.engine.model import build_model
from nin_search.engine.train import fit, make_optimizer, resolved

N = 20  # iterations of the synthetic curves: suggestions use points N // 10 = 2 to N - 5 = 14
LRS = [10 ** (-4 + 5 * i / (N - 1)) for i in range(N)]


def curve(trimmed: list[float]) -> Curve:
    """A 20-point curve whose points 2..14 (the part fastai looks at) are `trimmed`."""
    assert len(trimmed) == 13
    smoothed = [9.0, 9.0] + trimmed + [9.0] * 5  # the edges are ignored, whatever they hold
    return Curve(lrs=LRS, losses=smoothed, smoothed=smoothed)


def test_known_valley_matches_hand_computed_indices():
    c = curve([2.30, 2.30, 2.25, 2.10, 1.90, 1.60, 1.20, 0.90, 0.70, 0.80, 1.50, 3.0, 6.0])
    f = suggest(c, N, rule="valley", smoothing="ema")  # fastai's rules on the curve as given
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
    f = suggest(c, N, smoothing="ema")
    # a loss that never falls gets a plain statement, not a suggestion
    assert f.status == "no-descent"
    assert f.suggestions == {} and f.recommended_lr is None and f.recommended_range is None
    assert "never fell" in f.message


def test_nan_tail_is_cut_before_suggesting():
    nan = float("nan")
    c = curve([2.3, 2.2, 2.0, 1.7, 1.3, 1.0, 0.9, 0.95, 1.2, nan, nan, nan, nan])
    f = suggest(c, N, smoothing="ema")
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


@pytest.mark.parametrize("rule", FINDER_RULES)
def test_every_rule_can_be_the_recommendation(rule: str):
    c = curve([2.30, 2.30, 2.25, 2.10, 1.90, 1.60, 1.20, 0.90, 0.70, 0.80, 1.50, 3.0, 6.0])
    f = suggest(c, N, rule=rule, smoothing="ema")
    # lr_finder.rule picks which suggestion is recommended; the range starts a decade below it
    # (lowest: a decade and a half)
    assert f.rule == rule and f.recommended_lr == f.suggestions[rule]
    below = 30 if rule == "lowest" else 10
    assert f.recommended_range[0] == pytest.approx(f.recommended_lr / below)
    assert set(f.suggestions) == set(FINDER_RULES)


def test_half_decade_is_the_lowest_point_over_root_ten():
    c = curve([2.30, 2.30, 2.25, 2.10, 1.90, 1.60, 1.20, 0.90, 0.70, 0.80, 1.50, 3.0, 6.0])
    f = suggest(c, N, rule="half-decade", smoothing="ema")
    # the lowest loss 0.70 is at curve index 10: half a decade below it
    assert f.suggestions["half-decade"] == pytest.approx(LRS[10] / 10**0.5)
    # the sweep range ends at the lowest point, which lies above the recommendation
    assert f.recommended_range == (pytest.approx(LRS[10] / 10**1.5), LRS[10])
    # a curve still falling at its last kept point: that point is the lowest
    f = suggest(curve([2.3 - 0.15 * i for i in range(13)]), N, rule="half-decade", smoothing="ema")
    assert f.recommended_lr == pytest.approx(LRS[14] / 10**0.5)


def test_lowest_is_the_lowest_point_with_a_range_around_it():
    c = curve([2.30, 2.30, 2.25, 2.10, 1.90, 1.60, 1.20, 0.90, 0.70, 0.80, 1.50, 3.0, 6.0])
    f = suggest(c, N, rule="lowest", smoothing="ema")
    # the lowest loss 0.70 is at curve index 10: that lr itself, one-cycle's peak
    assert f.recommended_lr == f.suggestions["lowest"] == LRS[10]
    assert f.suggestions["lowest"] == pytest.approx(f.suggestions["half-decade"] * 10**0.5)
    # the range: 1.5 decades below it to 3x above it (the range test's divergence lies above)
    assert f.recommended_range == (pytest.approx(LRS[10] / 30), pytest.approx(3 * LRS[10]))
    # on the zero-phase curve of the same raw losses the lowest point is where the raw one is
    z = suggest(c, N, rule="lowest", smoothing="zero-phase")
    assert z.recommended_lr == LRS[10]


def _sigmoid_curve(noise: float = 0.0, seed: int = 0) -> tuple[Curve, float]:
    """A 100-step test from 1e-7 to 10, cut at lr 0.1: the loss falls from 2.3 to 0.3 around
    lr 1e-3 (0.25 decade wide) and diverges past 3e-2. Returns it and the log10 lr at which the
    noise-free loss falls fastest per log-lr, found on a fine grid."""

    def loss(d: float) -> float:
        return 0.3 + 2.0 / (1 + math.exp((d + 3) / 0.25)) + 0.5 * math.exp((d + 1.5) / 0.3)

    g = random.Random(seed)
    lrs = [lr for lr in (1e-7 * 1e8 ** (i / 99) for i in range(100)) if lr <= 0.1]
    losses = [loss(math.log10(lr)) + g.gauss(0, noise) for lr in lrs]
    grid = [-6 + i / 2000 for i in range(10_001)]
    slopes = [loss(grid[i + 1]) - loss(grid[i]) for i in range(10_000)]
    steepest = grid[min(range(10_000), key=slopes.__getitem__)]
    return Curve(lrs=lrs, losses=losses, smoothed=ema(losses, 0.98)), steepest


def test_zero_phase_steep_lands_on_the_true_steepest_point():
    c, true = _sigmoid_curve()
    zp = math.log10(suggest(c, 100, rule="steep").recommended_lr)
    causal = math.log10(suggest(c, 100, rule="steep", smoothing="ema").recommended_lr)
    # no noise: the zero-phase curve's steepest point is within 0.1 decade of the truth
    assert abs(zp - true) < 0.1
    # while the causal EMA's lag moves it up by more than a third of a decade
    assert causal - true > 0.35


def test_zero_phase_is_closer_than_the_causal_ema_under_noise():
    zp_err, ema_err = [], []
    for seed in range(10):
        c, true = _sigmoid_curve(noise=0.1, seed=seed)
        zp_err.append(abs(math.log10(suggest(c, 100, rule="steep").recommended_lr) - true))
        f = suggest(c, 100, rule="steep", smoothing="ema")
        ema_err.append(abs(math.log10(f.recommended_lr) - true))
    # over 10 seeded noisy curves the zero-phase steep point is the closer one, typically
    assert statistics.median(zp_err) < statistics.median(ema_err)
    assert statistics.median(zp_err) < 0.2


def test_zero_phase_has_no_lag_and_a_divergence_does_not_leak_back():
    ramp = [3.0 - 0.02 * i for i in range(100)]  # a loss falling steadily
    zp, causal = zero_phase(ramp, 100), ema(ramp, 0.98)
    # inside the curve a ramp comes out as itself; the causal EMA trails it by many steps
    assert all(abs(zp[i] - ramp[i]) < 1e-3 for i in range(30, 70))
    assert causal[50] - ramp[50] > 0.2
    flat = [2.3] * 90 + [1e4, math.inf]
    # losses above the start (here 1e4 and inf) are capped at it: ten steps before, nothing shows
    assert zero_phase(flat, 100)[:80] == pytest.approx([2.3] * 80)


def test_median_curve_is_elementwise_and_cut_to_the_shortest_run():
    a = Curve(lrs=[1.0, 2.0, 3.0, 4.0], losses=[3.0, 2.0, 1.0, 0.5])
    b = Curve(lrs=[1.0, 2.0, 3.0], losses=[1.0, 5.0, math.nan], stop_reason="loss turned bad")
    c = Curve(lrs=[1.0, 2.0, 3.0, 4.0], losses=[2.0, 3.0, 2.0, 9.0])
    m = median_curve([a, b, c], 0.98)
    # medians of (3, 1, 2), (2, 5, 3) and (1, nan = +inf, 2); the 4th step is not in every run
    assert m.lrs == [1.0, 2.0, 3.0] and m.losses == [2.0, 3.0, 2.0]
    assert m.smoothed == ema([2.0, 3.0, 2.0], 0.98)
    assert [r[:2] for r in m.runs] == [[3.0, 2.0], [1.0, 5.0], [2.0, 3.0]]
    assert m.stop_reason == "loss turned bad in repeat 2 of 3"


TINY = [
    "model.preset=lin2013",
    "model.width=0.125",
    "data.resize=16",
    "data.val_size=16",
    "train.batch_size=16",
    "lr_finder.num_iter=12",
    "lr_finder.start_lr=1e-4",
    "lr_finder.end_lr=1",
    "train.seed=5",
]


def test_repeats_run_seed_plus_i_and_suggest_from_the_median():
    x, y = squares(128)
    cfg = load_config(overrides=TINY + ["lr_finder.repeats=3"])
    data = split_data(x, y, cfg.data, "cpu")
    f = find_lr(cfg, data)
    singles = [
        find_lr(load_config(overrides=TINY + [f"train.seed={5 + i}"]), data).curve.losses
        for i in range(3)
    ]
    n = len(f.curve.lrs)
    # repeat i is exactly the single test at train.seed + i: each starts from a fresh state
    assert f.curve.runs == [s[:n] for s in singles]
    assert len({tuple(s) for s in singles}) == 3  # the seeds differ
    # the curve the rules read is the elementwise median of the repeats
    assert f.curve.losses == [statistics.median(col) for col in zip(*f.curve.runs, strict=True)]
    assert f.to_json()["repeats"] == 3 and len(f.to_json()["curve"]["repeat_losses"]) == 3


def test_seeded_test_is_find_lrs_test_and_the_spread_probe_can_force_bf16():
    import runpy

    x, y = squares(128)
    cfg = load_config(overrides=TINY + ["train.precision=fp32"])
    data = split_data(x, y, cfg.data, "cpu")
    # the benchmark's single test at a seed is exactly the test find_lr runs at that seed
    assert seeded_test(cfg, data, 5).losses == find_lr(cfg, data).curve.losses
    # experiments/lr_finder_spread.py forces bf16 (emulated on a CPU without bf16 units) with
    # its own copy of the test (the engine has no parameter for it): the same test at another
    # precision, equal to the engine's in fp32, close to it at the first steps in bf16
    probe = Path(__file__).parents[2] / "experiments" / "lr_finder_spread.py"
    forced_test = runpy.run_path(str(probe), run_name="probe")["forced_test"]
    fp32 = forced_test(cfg, data, 5, "fp32").losses
    bf16 = forced_test(cfg, data, 5, "bf16").losses
    assert fp32 == seeded_test(cfg, data, 5).losses
    assert bf16 != fp32[: len(bf16)]
    assert bf16[0] == pytest.approx(fp32[0], rel=0.02)


def test_never_fell_on_the_chance_plateau_says_why_and_names_the_keys():
    g = random.Random(0)
    losses = [math.log(10) + g.gauss(0, 0.005) for _ in range(100)]
    lrs = [1e-7 * 1e8 ** (i / 99) for i in range(100)]
    f = suggest(Curve(lrs=lrs, losses=losses, smoothed=ema(losses, 0.98)), 100)
    assert f.status == "no-descent"
    advice = no_descent_advice(load_config(), f)  # the plain d2l NiN: no BatchNorm, plain SGD
    # one line: why (chance level, no class signal) and what to try, each by its --set name
    assert "\n" not in advice and "ln 10 = 2.303" in advice and "no class signal" in advice
    for key in ("lr_finder.num_iter=400", "model.batch_norm=true", "train.momentum=0.9"):
        assert f"--set {key}" in advice, key
    assert "--set train.optimizer=adamw" in advice
    # a BatchNorm AdamW network is not told to add BatchNorm, but to try SGD with momentum
    other = no_descent_advice(
        load_config(overrides=["model.batch_norm=true", "train.optimizer=adamw"]), f
    )
    assert "model.batch_norm" not in other and "--set train.optimizer=sgd" in other


def test_never_fell_offers_a_longer_test_when_the_descent_has_just_begun():
    chance = math.log(10)
    losses = [chance] * 94 + [chance * (1 - 0.03 * (k + 1) / 6) for k in range(6)]
    lrs = [1e-7 * 1e8 ** (i / 99) for i in range(100)]
    f = suggest(Curve(lrs=lrs, losses=losses, smoothed=ema(losses, 0.98)), 100)
    assert f.status == "no-descent"  # less than 2% down on the points the rules read
    advice = no_descent_advice(load_config(overrides=["lr_finder.num_iter=100"]), f)
    # the longer test is offered by name; nothing is rerun behind the user's back
    assert "a longer test will likely find the descent" in advice
    assert "rerun with --set lr_finder.num_iter=400" in advice


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


# the default (lowest on the zero-phase curve) and fastai's valley on its causal curve; valley
# on the zero-phase curve is not among them: on this smooth curve its decreasing run starts at the
# plateau, and its 9.3e-4 leaves the loss at 2.05 after 4 epochs (one reason it is not the default)
@pytest.mark.parametrize("sets_rule", [[], ["lr_finder.rule=valley", "lr_finder.smoothing=ema"]])
def test_recommended_lr_trains_and_30x_does_not(sets_rule: list[str]):
    # a tiny NiN on an easy synthetic task: the finder's lr (ours, and fastai's valley on its
    # causal curve) lowers the loss within a few epochs; thirty times that lr diverges or stalls
    sets = sets_rule + [
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


def test_auto_rule_is_lowest_under_onecycle_and_half_decade_otherwise():
    # lr_finder.rule = auto (the default) resolves by the schedule, and what runs is what is logged
    assert LRFinderConfig().rule == "auto"
    assert finder_rule(load_config(profile="cpu")) == "lowest"  # onecycle
    assert finder_rule(load_config()) == "half-decade"  # d2l's constant lr
    assert finder_rule(load_config(overrides=["train.schedule=cosine"])) == "half-decade"
    # a rule the user names is kept whatever the schedule
    assert finder_rule(load_config(profile="cpu", overrides=["lr_finder.rule=valley"])) == "valley"
    assert resolved(load_config(profile="cpu")).lr_finder.rule == "lowest"
    with pytest.raises(ConfigError, match="lr_finder.rule"):
        load_config(overrides=["lr_finder.rule=median"])


# ---- what the user sees: the plot and the terminal table -------------------------------------


def test_plot_shows_both_smoothings_and_marks_the_recommendation():
    from nin_search.reports.plots import lr_finder_curve

    c = curve([2.30, 2.30, 2.25, 2.10, 1.90, 1.60, 1.20, 0.90, 0.70, 0.80, 1.50, 3.0, 6.0])
    f = suggest(c, N, rule="valley", smoothing="ema")
    fig = lr_finder_curve(f)
    names = [t.name for t in fig.data]
    # the causal EMA and the zero-phase curves, the one the rules read said so
    assert "causal EMA (fastai, lags) - rules read this" in names
    assert "zero-phase (no lag)" in names
    # one marker per rule, the recommended one named and at the rule's lr
    rec = [t for t in fig.data if t.name.endswith("(recommended)")]
    assert len(rec) == 1 and rec[0].name.startswith("valley") and rec[0].x[0] == LRS[5]
    assert {n.split()[0] for n in names if "e-0" in n or "e+0" in n} >= set(f.suggestions)
    assert "lr_finder.rule = valley, lr_finder.smoothing = ema" in fig.layout.title.text


def test_plot_axis_ends_above_the_start_and_marks_where_a_blow_up_leaves_it():
    from nin_search.reports.plots import lr_finder_curve

    # make demo's shape: a descent from 2.31 to 0.7, then the raw loss blows up to 215
    raw = [2.31, 2.30, 2.30, 2.25, 2.10, 1.90, 1.60, 1.20, 0.90, 0.70, 0.80, 1.50, 3.0, 6.0]
    raw += [20.0, 60.0, 100.0, 150.0, 190.0, 215.0]
    f = suggest(Curve(lrs=LRS, losses=raw, smoothed=ema(raw, 0.98)), N)
    fig = lr_finder_curve(f)
    low, high = fig.layout.yaxis.range
    # the axis runs from below the minimum to a little above the start, far below 215
    assert low < 0.7 and 2.31 < high < 3.0
    # the first raw point above the axis is marked, with the curve's maximum
    first = next(lr for lr, v in zip(LRS, raw, strict=True) if v > high)
    assert first == LRS[12]
    marks = [t.name for t in fig.data if "leaves the axis" in t.name]
    assert marks == [f"loss leaves the axis at lr {first:.3g} (max 215)"]
    # the raw trace and the JSON still hold every point, the 215 included
    assert list(next(t for t in fig.data if t.name == "loss").y) == raw
    assert json.loads(json.dumps(f.to_json()))["curve"]["loss"][-1] == 215.0


def test_plot_axis_holds_a_curve_that_stays_below_its_start():
    from nin_search.reports.plots import lr_finder_curve

    c = curve([2.30, 2.30, 2.25, 2.10, 1.90, 1.60, 1.20, 0.90, 0.70, 0.80, 1.50, 3.0, 6.0])
    fig = lr_finder_curve(suggest(c, N, rule="valley", smoothing="ema"))
    low, high = fig.layout.yaxis.range
    # every point lies inside the axis (the edges' 9.0 is the start), and nothing is marked
    assert low < 0.70 and 9.0 < high < 10.0
    assert not [t for t in fig.data if "leaves the axis" in t.name]


def test_terminal_table_gives_each_rule_on_both_curves_and_the_range():
    from nin_search.tracking.finder import _suggestion_table

    c = curve([2.30, 2.30, 2.25, 2.10, 1.90, 1.60, 1.20, 0.90, 0.70, 0.80, 1.50, 3.0, 6.0])
    f = suggest(c, N, rule="valley", smoothing="ema")
    other = suggest(c, N, rule="valley", smoothing="zero-phase")
    lines = _suggestion_table(f, other).splitlines()
    assert lines[0].split() == ["lr_finder.rule", "ema", "(in", "use)", "zero-phase"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["valley"][0] == "(recommended)" and rows["valley"][1] == f"{LRS[5]:.3g}"
    assert rows["steep"] == [f"{LRS[7]:.3g}", f"{other.suggestions['steep']:.3g}"]
    low, high = f.recommended_range
    assert lines[-1].split()[:3] == ["sweep", "range", f"[{low:.3g},"]
