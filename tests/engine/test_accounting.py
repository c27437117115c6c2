"""Resource accounting: MACs equal torch's flop counter / 2 for every preset and knob; memory."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest
import torch
from builders import KNOBS, SMALL, WIDTH
from torch.utils.flop_counter import FlopCounterMode

import nin_search.engine.summary as accounting
from nin_search.engine.config import PRESETS, load_config
from nin_search.engine.model import build_model, count_params, spatial_trace
from nin_search.engine.summary import format_summary, shape_pass_device, summarize


def cfg_for(preset: str, size: int, **knobs):
    cfg = load_config(overrides=[f"model.preset={preset}", f"data.resize={size}"])
    model = dataclasses.replace(cfg.model, **({"width": WIDTH[preset]} | knobs))
    return dataclasses.replace(cfg, model=model)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("knob", list(KNOBS))
def test_macs_equal_flop_counter_half_and_params_equal_the_model(preset: str, knob: str):
    size = SMALL[preset]
    cfg = cfg_for(preset, size, **KNOBS[knob])
    s = summarize(cfg)
    net = build_model(cfg.model, size).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = net(torch.empty(1, 1, size, size, device="meta"))
    # our MACs are torch.utils.flop_counter's FLOPs / 2, layer by layer summed
    assert s["totals"]["macs"] == counter.get_total_flops() // 2
    assert s["totals"]["flops"] == counter.get_total_flops()
    assert s["totals"]["params"] == count_params(build_model(cfg.model, size))
    # the last layer's output shape is the logits'
    assert s["layers"][-1]["output_shape"] == list(out.shape[1:]) == [10]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("knob", list(KNOBS))
def test_the_cpu_pass_and_the_meta_pass_give_the_same_summary(preset, knob, monkeypatch):
    cfg = cfg_for(preset, SMALL[preset], **KNOBS[knob])
    assert shape_pass_device(spatial_trace(cfg.model, SMALL[preset])) == "cpu"
    on_cpu = summarize(cfg)
    monkeypatch.setattr(accounting, "CPU_PASS_MAX_MACS", -1)  # every net on the meta device
    assert summarize(cfg) == on_cpu


@pytest.mark.parametrize(
    ("sets", "device"),
    [
        (["model.preset=lin2013", "data.resize=0"], "cpu"),
        (["model.preset=d2l", "data.resize=224"], "cpu"),  # 0.76 G multiply-adds
        (["model.preset=nin11", "data.resize=32"], "cpu"),
        (["model.preset=nin19", "data.resize=224"], "meta"),  # 24.8 G, VGG-19's size
        (["model.preset=lin2013", "data.resize=224"], "meta"),  # 10.4 G
        (["model.preset=d2l", "data.resize=1024"], "meta"),
    ],
)
def test_big_nets_take_the_meta_pass(sets: list[str], device: str):
    cfg = load_config(overrides=sets)
    macs = summarize(cfg)["totals"]["macs"]
    assert shape_pass_device(spatial_trace(cfg.model, cfg.data.resize or 28)) == device
    assert (macs <= 2.1e9) == (device == "cpu")  # the body's estimate is most of the total


def test_a_small_nets_summary_never_imports_torch_dynamo():
    # a meta pass imports torch._dynamo on its first op (~3 s, measured 2.7-2.9 s against 0.21 s
    # for lin2013 with BatchNorm on two contended cores): summary, lr-finder and ablate skip it
    script = textwrap.dedent("""
        import sys
        from nin_search.engine.summary import summarize
        from nin_search.engine.config import load_config
        for size in (0, 224, 256):
            cfg = load_config(overrides=["model.batch_norm=true", f"data.resize={size}",
                                         "model.preset=" + ("lin2013" if size == 0 else "d2l")])
            assert summarize(cfg)["totals"]["macs"] > 0
        print("torch._dynamo" in sys.modules)
    """)
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False"]


def test_memory_estimate_follows_its_stated_assumptions():
    cfg = load_config(overrides=["train.batch_size=8"])
    s = summarize(cfg)
    acts = [224 * 224] + [r["activations"] for r in s["layers"]]
    params = s["totals"]["params"]
    m = s["memory"]
    # prediction: parameters plus the largest input + output pair, fp32, for the batch
    pair = max(a + b for a, b in zip(acts, acts[1:], strict=False))
    assert m["predict_bytes"] == 4 * params + 8 * 4 * pair
    # training with plain SGD: parameters, gradients, no optimizer state, every activation
    assert m["train_parts"] == {
        "params": 4 * params,
        "grads": 4 * params,
        "optimizer_state": 0,
        "activations": 8 * 4 * sum(acts),
    }
    assert m["train_bytes"] == sum(m["train_parts"].values())


@pytest.mark.parametrize(
    ("sets", "states"),
    [
        ([], 0),
        (["train.momentum=0.9"], 1),
        (["train.optimizer=adam"], 2),
        (["train.optimizer=adamw"], 2),
    ],
)
def test_optimizer_state_counts_per_optimizer(sets: list[str], states: int):
    s = summarize(load_config(overrides=sets))
    # momentum keeps one buffer per parameter, Adam and AdamW two
    assert s["memory"]["train_parts"]["optimizer_state"] == 4 * states * s["totals"]["params"]


def test_dropped_pixels_are_reported_only_where_the_stride_leaves_some():
    at_224 = {r["layer"]: r["dropped"] for r in summarize(load_config())["layers"]}
    # (224 - 11) mod 4 = 1: one row and column never visited by the first conv
    assert at_224["block1.conv"] == "1 px at bottom/right"
    assert at_224["block1.mlp1"] == ""  # a 1x1 conv with stride 1 drops nothing
    at_227 = summarize(load_config(overrides=["data.resize=227"]))["layers"]
    # (227 - 11) mod 4 = 0: nothing dropped, and 227 -> 55 exactly
    assert at_227[0]["dropped"] == "" and at_227[0]["output_shape"] == [96, 55, 55]


def test_training_flops_are_three_forward_passes():
    t = summarize(load_config())["totals"]
    assert t["train_flops_per_image"] == 3 * t["flops"] == 6 * 762_297_352


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_every_format_names_the_first_layer(fmt: str):
    text = format_summary(summarize(load_config()), fmt)
    assert "block1.conv" in text and "96" in text
