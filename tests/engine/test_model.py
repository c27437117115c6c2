"""The NiN model family: exact d2l figures, every preset x knob, input-size checks, init."""

from __future__ import annotations

import math

import pytest
import torch
from builders import KNOBS, NARROW, SMALL, WIDTH
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nin_search.engine.config import PRESETS, ConfigError, ModelConfig
from nin_search.engine.model import (
    build_model,
    check_input_size,
    count_params,
    min_input_size,
    spatial_trace,
)

MIN_SIZE = {"d2l": 67, "lin2013": 1, "nin11": 32, "nin16": 32, "nin19": 32}
FIRST_CONV = {"d2l": 96, "lin2013": 192, "nin11": 64, "nin16": 64, "nin19": 64}  # at width 1


def small(preset: str, **knobs) -> ModelConfig:
    """The preset at its test width (knobs may override it)."""
    return ModelConfig(preset=preset, **({"width": WIDTH[preset]} | knobs))


# Every row of ../shared/reference/nin.md at 1x224x224: (knobs, params, forward MACs).
D2L_TABLE = {
    "d2l": ({}, 1_992_166, 762_297_352),
    "one 1x1 conv": ({"mlp_depth": 1}, 1_769_112, 669_884_996),
    "three 1x1 convs": ({"mlp_depth": 3}, 2_215_220, 854_709_708),
    "3x3 instead of 1x1": ({"mlp_kernel": 3}, 5_549_094, 2_240_895_048),
    "fc head": ({"head": "fc"}, 2_053_386, 761_524_352),
    "gradual reduction": ({"reduction": "gradual"}, 2_355_734, 771_383_352),
}


def forward_macs(net: nn.Module, size: int) -> int:
    """Multiply-adds of one forward pass of a 1x1xsize x size input (FlopCounterMode / 2)."""
    net = net.to("meta").eval()  # FlopCounterMode counts meta tensors: no arithmetic is done
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 1, size, size, device="meta"))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("row", list(D2L_TABLE))
def test_param_count_matches_reference_table(row):
    knobs, params, _ = D2L_TABLE[row]
    net = build_model(ModelConfig(**knobs), input_size=224)
    # the parameter count is the one in nin.md for this variant
    assert count_params(net) == params


@pytest.mark.parametrize("row", list(D2L_TABLE))
def test_forward_macs_match_reference_table(row):
    knobs, _, macs = D2L_TABLE[row]
    net = build_model(ModelConfig(**knobs), input_size=224)
    # torch.utils.flop_counter FLOPs / 2 equal the MACs in nin.md at 1x224x224
    assert forward_macs(net, 224) == macs


def test_fc_head_and_the_block_it_replaces_have_reference_sizes():
    fc = build_model(ModelConfig(head="fc"), input_size=224)
    gap = build_model(ModelConfig(), input_size=224)
    # the FC head Linear(384*5*5 -> 10) alone is 96,010 parameters
    assert count_params(fc.fc) == 96_010
    # the last NiN block it replaces is 34,790 parameters
    assert count_params(gap.final) == 34_790


def test_block2_spatial_conv_is_54_percent_of_d2l_macs():
    net = build_model(ModelConfig(), input_size=224)
    total = forward_macs(net, 224)
    conv = net.block2.conv  # 5x5, 96 -> 256 at 26x26, same padding
    block2_conv = conv.in_channels * conv.out_channels * 5 * 5 * 26 * 26
    # the 5x5 conv of block 2 is 54% of all forward MACs
    assert round(100 * block2_conv / total) == 54


def test_gradual_reduction_steps_384_114_34_10():
    net = build_model(ModelConfig(reduction="gradual"), input_size=224)
    convs = [m for m in net.final.modules() if isinstance(m, nn.Conv2d)]
    # the last block steps down geometrically: 384 -> 114 -> 34 -> 10
    assert [convs[0].in_channels] + [c.out_channels for c in convs] == [384, 114, 34, 10]


def test_d2l_feature_map_sizes_follow_reference():
    trace = {name: n_out for name, _, _, n_out in spatial_trace(ModelConfig(), 224)}
    sizes = [
        trace[k]
        for k in (
            "block1.conv",
            "pool1",
            "block2.conv",
            "pool2",
            "block3.conv",
            "pool3",
            "final.conv",
        )
    ]
    # 54 -> 26 -> 26 -> 12 -> 12 -> 5 -> 5, as in nin.md
    assert sizes == [54, 26, 26, 12, 12, 5, 5]


def test_spatial_trace_rounds_224_down_to_54_at_first_conv():
    name, _, n_in, n_out = spatial_trace(ModelConfig(), 224)[0]
    # floor((224 - 11) / 4) + 1 = 54: the last row that does not fill a stride is dropped
    assert (name, n_in, n_out) == ("block1.conv", 224, 54)


@pytest.mark.parametrize("preset", PRESETS)
def test_spatial_trace_agrees_with_real_feature_maps(preset):
    cfg = small(preset)
    size = SMALL[preset]
    net = build_model(cfg, input_size=size).eval()
    seen: dict[str, int] = {}

    def record(name: str):
        return lambda module, inputs, output: seen.__setitem__(name, output.shape[-1])

    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d | nn.MaxPool2d):
            m.register_forward_hook(record(name))
    with torch.no_grad():
        net(torch.zeros(1, 1, size, size))
    # every conv and pool's predicted output side equals the side PyTorch computes
    assert {name: n_out for name, _, _, n_out in spatial_trace(cfg, size)} == seen


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("knob", list(KNOBS))
def test_forward_gives_finite_logits_per_class(preset, knob):
    cfg = small(preset, **KNOBS[knob])
    size = SMALL[preset]
    net = build_model(cfg, input_size=size)
    torch.manual_seed(0)
    with torch.no_grad():
        logits = net(torch.rand(2, 1, size, size))  # train mode: BN uses batch statistics
    # one logit per class for each image
    assert logits.shape == (2, 10)
    # and none of them is NaN or infinite
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("preset", PRESETS)
def test_final_relu_makes_logits_non_negative(preset):
    net = build_model(small(preset), input_size=SMALL[preset]).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        logits = net(torch.rand(4, 1, SMALL[preset], SMALL[preset]))
    # d2l's ReLU on the logits conv keeps every pooled logit >= 0
    assert (logits >= 0).all()


@pytest.mark.parametrize("preset", PRESETS)
def test_without_final_relu_logits_can_be_negative(preset):
    cfg = small(preset, final_relu=False)
    torch.manual_seed(0)
    net = build_model(cfg, input_size=SMALL[preset]).eval()
    with torch.no_grad():
        logits = net(torch.rand(4, 1, SMALL[preset], SMALL[preset]))
    # with no ReLU on the logits conv some logits are negative
    assert (logits < 0).any()


@pytest.mark.parametrize("preset", PRESETS)
def test_conv_and_linear_weights_are_xavier_uniform(preset):
    torch.manual_seed(0)
    net = build_model(small(preset, head="fc"), input_size=SMALL[preset])
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            receptive = m.weight[0, 0].numel()
            fan_in, fan_out = m.weight.shape[1] * receptive, m.weight.shape[0] * receptive
            bound = math.sqrt(6 / (fan_in + fan_out))
            # xavier_uniform draws from U(-bound, bound) (PyTorch's default is wider)
            assert m.weight.abs().max() <= bound, name
            if m.weight.numel() >= 1000:
                # and fills that range, so it is not some narrower init either
                assert m.weight.abs().max() >= 0.95 * bound, name


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_mlp_depth_sets_convs_per_block(preset, depth):
    net = build_model(small(preset, mlp_depth=depth), input_size=SMALL[preset])
    blocks = [m for n, m in net.named_children() if n.startswith("block") or n == "final"]
    # each NiN block is its spatial conv plus mlp_depth micro-network convs
    assert {sum(isinstance(c, nn.Conv2d) for c in b) for b in blocks} == {depth + 1}


@pytest.mark.parametrize("preset", PRESETS)
def test_mlp_kernel_3_uses_same_padded_3x3_convs(preset):
    net = build_model(small(preset, mlp_kernel=3), input_size=SMALL[preset])
    mlp = [m for n, m in net.named_modules() if ".mlp" in n and isinstance(m, nn.Conv2d)]
    # every micro-network conv is 3x3 with padding 1, so the map size is kept
    assert {(m.kernel_size, m.padding) for m in mlp} == {((3, 3), (1, 1))}


@pytest.mark.parametrize("preset", PRESETS)
def test_batch_norm_follows_every_conv_but_the_logits_conv(preset):
    net = build_model(small(preset, batch_norm=True), input_size=SMALL[preset])
    convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    # one BatchNorm per conv, except the conv that produces the class maps
    assert bns == convs - 1


@pytest.mark.parametrize("preset", PRESETS)
def test_width_scales_channels_but_not_classes(preset):
    half = build_model(ModelConfig(preset=preset, width=0.5), input_size=SMALL[preset])
    # the first conv has half the channels at width 0.5
    assert half.block1.conv.out_channels == FIRST_CONV[preset] // 2
    # while the logits conv still has one channel per class
    assert [m for m in half.final.modules() if isinstance(m, nn.Conv2d)][-1].out_channels == 10


def test_d2l_at_64_names_pool3_and_the_smallest_size():
    with pytest.raises(ConfigError) as e:
        build_model(ModelConfig(width=NARROW), input_size=64)
    # the message names the layer that collapses and the smallest input that works
    assert "pool3" in str(e.value) and "67" in str(e.value)
    # and the key to change
    assert "data.resize" in str(e.value)


def test_d2l_at_66_collapses_at_third_pool():
    with pytest.raises(ConfigError, match="pool3"):
        # at 66 the third max pool would output 0x0
        check_input_size(ModelConfig(width=NARROW), 66)


def test_d2l_builds_at_67():
    net = build_model(ModelConfig(), input_size=67)
    with torch.no_grad():
        logits = net.eval()(torch.zeros(1, 1, 67, 67))
    # 67x67 is accepted and runs
    assert logits.shape == (1, 10)


@pytest.mark.parametrize("preset", ["nin11", "nin16", "nin19"])
def test_vgg_presets_at_28_ask_for_32(preset):
    with pytest.raises(ConfigError) as e:
        build_model(ModelConfig(preset=preset, width=NARROW), input_size=28)
    # the five 2x2 pools need 32 pixels, and the message says so
    assert "32" in str(e.value) and "pool5" in str(e.value)


@pytest.mark.parametrize("preset", PRESETS)
def test_min_input_size(preset):
    # the smallest square input each preset accepts
    assert min_input_size(ModelConfig(preset=preset, width=NARROW)) == MIN_SIZE[preset]


@pytest.mark.parametrize("preset", PRESETS)
def test_min_input_size_is_tight(preset):
    cfg = ModelConfig(preset=preset, width=NARROW)
    size = min_input_size(cfg)
    check_input_size(cfg, size)  # accepted
    if size > 1:
        with pytest.raises(ConfigError):
            # one pixel less is refused
            check_input_size(cfg, size - 1)


def test_input_size_error_is_one_line():
    with pytest.raises(ConfigError) as e:
        check_input_size(ModelConfig(preset="nin11", width=NARROW), 31)
    # the error is a single line, as every config error
    assert "\n" not in str(e.value)
