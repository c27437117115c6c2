"""The NiN model family: one table of presets and one builder.

    from nin_search.engine.config import ModelConfig
    from nin_search.engine.model import build_model
    net = build_model(ModelConfig(preset="d2l"), input_size=224)   # 1,992,166 parameters

A NiN block is a spatial conv followed by `mlp_depth` 1x1 convs (the "micro network"), each with a
ReLU. A preset is a list of steps:
    ("nin", conv_out, kernel, stride, padding, hidden, out)   a NiN block
    ("pool", kernel, stride, padding)                          max pooling
    ("drop",)                                                  dropout (model.dropout)
    ("final", conv_out, kernel, stride, padding, hidden)       the last block, ending in classes
With mlp_depth = d >= 1 a block's channels go conv_out -> hidden (d - 1 times) -> out; with d = 0
the spatial conv alone maps to `out`. None stands for the number of classes.

Presets:
- d2l: d2l.ai's NiN chapter model for 224x224 input (../shared/reference/nin.md).
- lin2013: the CIFAR model of Lin, Chen and Yan (2013), mlpconv 192-160-96, 192-192-192,
  192-192-classes, adapted to 28x28: 3x3/2 max pooling with padding 1 (28 -> 14 -> 7).
- nin11 / nin16 / nin19: VGG-11/16/19's recipe made NiN. VGG's five stages keep their widths
  64-128-256-512-512 and their number of 3x3 convs (11: 1-1-2-2-2, 16: 2-2-3-3-3, 19: 2-2-4-4-4),
  each 3x3 conv becomes a NiN block (3x3 conv + the 1x1 convs at the same width), each stage ends
  in VGG's 2x2/2 max pool, and VGG's three fully connected layers are replaced by dropout, a final
  NiN block 512 -> classes and global average pooling. They need inputs of at least 32 pixels.

Knobs (ModelConfig): mlp_depth, mlp_kernel (1 or 3, same padding), head (gap | fc: Flatten +
Linear on the last feature map replaces the final block and the pooling), reduction (gradual:
the final block steps down geometrically from its input width to the classes, 384 -> 114 -> 34
-> 10), dropout, batch_norm (after every conv but the logits conv), width (multiplies every
channel count but the classes), final_relu (d2l's ReLU on the logits before pooling).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from nin_search.engine.config import ConfigError, ModelConfig

_D2L = [
    ("nin", 96, 11, 4, 0, 96, 96), ("pool", 3, 2, 0),
    ("nin", 256, 5, 1, 2, 256, 256), ("pool", 3, 2, 0),
    ("nin", 384, 3, 1, 1, 384, 384), ("pool", 3, 2, 0),
    ("drop",), ("final", None, 3, 1, 1, None),
]  # fmt: skip


_LIN2013 = [
    ("nin", 192, 5, 1, 2, 160, 96), ("pool", 3, 2, 1), ("drop",),
    ("nin", 192, 5, 1, 2, 192, 192), ("pool", 3, 2, 1), ("drop",),
    ("final", 192, 3, 1, 1, 192),
]  # fmt: skip


def _vgg(stages: list[list[int]]) -> list[tuple]:
    steps: list[tuple] = []
    for stage in stages:
        steps += [("nin", c, 3, 1, 1, c, c) for c in stage] + [("pool", 2, 2, 0)]
    return steps + [("drop",), ("final", None, 3, 1, 1, None)]


PRESETS: dict[str, list[tuple]] = {
    "d2l": _D2L,
    "lin2013": _LIN2013,
    "nin11": _vgg([[64], [128], [256] * 2, [512] * 2, [512] * 2]),
    "nin16": _vgg([[64] * 2, [128] * 2, [256] * 3, [512] * 3, [512] * 3]),
    "nin19": _vgg([[64] * 2, [128] * 2, [256] * 4, [512] * 4, [512] * 4]),
}


PRESET_NAMES = {"d2l": "the d2l NiN", "lin2013": "the Lin 2013 NiN"} | {
    f"nin{n}": f"NiN-{n}" for n in (11, 16, 19)
}


def _widths(step: tuple, cfg: ModelConfig, c_in: int, classes: int) -> list[int]:
    """Output channels of each conv in a block: the spatial conv, then the mlp_depth 1x1 convs."""
    d = cfg.mlp_depth
    conv_out, hidden, out = (step[1], step[5], step[6]) if step[0] == "nin" else (
        step[1], step[5], None)  # fmt: skip

    def scale(c: int | None) -> int:
        return classes if c is None else max(1, round(c * cfg.width))

    if step[0] == "final" and cfg.reduction == "gradual":
        ratio = classes / c_in
        return [round(c_in * ratio ** ((i + 1) / (d + 1))) for i in range(d)] + [classes]
    if d == 0:
        return [scale(out)]
    return [scale(conv_out)] + [scale(hidden)] * (d - 1) + [scale(out)]


def nin_block(
    c_in: int,
    widths: list[int],
    kernel: int,
    stride: int,
    padding: int,
    cfg: ModelConfig,
    logits: bool = False,
) -> nn.Sequential:
    """Spatial conv + 1x1 (or mlp_kernel x mlp_kernel) convs, each with BN (optional) and ReLU."""
    layers: list[tuple[str, nn.Module]] = []
    for i, c_out in enumerate(widths):
        k, s, p = (kernel, stride, padding) if i == 0 else (cfg.mlp_kernel, 1, cfg.mlp_kernel // 2)
        tag = "conv" if i == 0 else f"mlp{i}"
        layers.append((tag, nn.Conv2d(c_in, c_out, k, s, p)))
        last = logits and i == len(widths) - 1
        if cfg.batch_norm and not last:
            layers.append((f"{tag}_bn", nn.BatchNorm2d(c_out)))
        if not last or cfg.final_relu:
            layers.append((f"{tag}_relu", nn.ReLU()))
        c_in = c_out
    return nn.Sequential(OrderedDict(layers))


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _body(cfg: ModelConfig, in_channels: int, classes: int) -> tuple[list, int]:
    """The layers before the head as (name, module) and the channels they end with."""
    layers: list[tuple[str, nn.Module]] = []
    c, nb, npool, ndrop = in_channels, 0, 0, 0
    for step in PRESETS[cfg.preset]:
        kind = step[0]
        if kind == "pool":
            npool += 1
            layers.append((f"pool{npool}", nn.MaxPool2d(step[1], step[2], step[3])))
        elif kind == "drop":
            ndrop += 1
            layers.append((f"drop{ndrop}", nn.Dropout(cfg.dropout)))
        elif kind == "nin":
            nb += 1
            widths = _widths(step, cfg, c, classes)
            layers.append((f"block{nb}", nin_block(c, widths, *step[2:5], cfg)))
            c = widths[-1]
        elif kind == "final" and cfg.head == "gap":
            widths = _widths(step, cfg, c, classes)
            layers.append(("final", nin_block(c, widths, *step[2:5], cfg, logits=True)))
            c = widths[-1]
    return layers, c


def spatial_trace(cfg: ModelConfig, size: int) -> list[tuple[str, nn.Module, int, int]]:
    """(name, layer, input size, output size) for each conv and pool of the body, square inputs.

    out = floor((in + 2p - k) / s) + 1: the rows and columns that do not fill a whole stride
    at the bottom and right edge are never visited (the forum's "why does 224 become 54?").
    """
    trace = []
    with torch.device("meta"):  # only the layers' geometry is read: no memory, no init
        layers, _ = _body(cfg, 1, 10)
    for name, module in layers:
        for sub, m in (
            [(name, module)]
            if not isinstance(module, nn.Sequential)
            else [(f"{name}.{n}", x) for n, x in module.named_children()]
        ):
            if isinstance(m, nn.Conv2d | nn.MaxPool2d):
                k, s, p = (_pair(m.kernel_size), _pair(m.stride), _pair(m.padding))
                n_out = _out(size, k, s, p)
                trace.append((sub, m, size, n_out))
                if n_out < 1:
                    return trace
                size = n_out
    return trace


def _pair(v: int | tuple) -> int:
    return v[0] if isinstance(v, tuple) else v


def min_input_size(cfg: ModelConfig) -> int:
    """The smallest square input the network accepts (67 for d2l)."""
    for size in range(1, 4097):
        if spatial_trace(cfg, size)[-1][3] >= 1:
            return size
    raise ConfigError(f"{cfg.preset}: no input size up to 4096 fits this network")


def check_input_size(cfg: ModelConfig, size: int, key: str = "data.resize") -> None:
    """ConfigError naming the layer that collapses and the smallest size that works."""
    trace = spatial_trace(cfg, size)
    name, m, n_in, n_out = trace[-1]
    if n_out >= 1:
        return
    what = "max pool" if isinstance(m, nn.MaxPool2d) else "conv"
    k, s = _pair(m.kernel_size), _pair(m.stride)
    least = min_input_size(cfg)
    raise ConfigError(
        f"{key}: a {size}x{size} input is too small for {PRESET_NAMES[cfg.preset]}: at {name} "
        f"({what} {k}x{k}, stride {s}) the feature map is {n_in}x{n_in} and would become "
        f"{max(n_out, 0)}x{max(n_out, 0)}; the smallest input that works is {least} "
        f"(set {key} >= {least})"
    )


def build_model(
    cfg: ModelConfig, input_size: int = 224, in_channels: int = 1, num_classes: int = 10
) -> nn.Sequential:
    """The configured NiN for (N, in_channels, input_size, input_size) input, Xavier init."""
    check_input_size(cfg, input_size)
    layers, c = _body(cfg, in_channels, num_classes)
    if cfg.head == "gap":
        layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
    else:
        side = spatial_trace(cfg, input_size)[-1][3]
        layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(c * side * side, num_classes))]
    net = nn.Sequential(OrderedDict(layers))
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)  # d2l's init_cnn
    return net


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
