"""Resource accounting: per-layer shapes, parameters, MACs, activations and memory estimates.

    python -m nin_search summary --set data.resize=224 --format table

Shapes come from one forward pass of one zero image: on the CPU for a body of up to 2 G
multiply-adds (milliseconds), on the meta device above (no memory, no compute, but a first meta
pass costs seconds). MACs are the multiply-adds of conv and linear weights, the convention of
fvcore and ptflops and half the FLOPs of torch.utils.flop_counter. The engine part imports only
torch; format_summary() uses pandas for tables and CSV.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from nin_search.engine.config import Config
from nin_search.engine.model import build_model, spatial_trace

BYTES = {"fp32": 4, "bf16": 2}


# the largest body (conv multiply-adds) whose shape pass runs on the CPU: the d2l NiN at 224 px
# has 0.76 G (~40 ms on one Zen 3 core); nin19 at width 8 and 256 px has 2 T (minutes)
CPU_PASS_MAX_MACS = 2e9


OPTIMIZER_STATES = {"sgd": 0, "adam": 2, "adamw": 2}  # tensors of parameter size; +1 for momentum


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    if isinstance(m, nn.Conv2d):
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        return out[0].numel() * k
    if isinstance(m, nn.Linear):
        return m.in_features * m.out_features
    return 0


def _dropped(trace: list, name: str) -> str:
    """'1 px at bottom/right' where the stride leaves rows and columns unvisited."""
    for sub, m, n_in, _ in trace:
        if sub == name:
            k, s, p = (getattr(m, a) for a in ("kernel_size", "stride", "padding"))
            k, s, p = (v[0] if isinstance(v, tuple) else v for v in (k, s, p))
            r = (n_in + 2 * p - k) % s
            return f"{r} px at bottom/right" if r else ""
    return ""


def shape_pass_device(trace: list) -> str:
    """'cpu' for a body of at most CPU_PASS_MAX_MACS conv multiply-adds, else 'meta'. The meta
    device runs ops through Python decompositions whose first use imports torch._dynamo (about 3 s,
    paid by every summary, lr-finder and ablation); one real image is faster for a small net."""
    macs = sum(
        n_out**2 * m.out_channels * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        for _, m, _, n_out in trace
        if isinstance(m, nn.Conv2d)
    )
    return "cpu" if macs <= CPU_PASS_MAX_MACS else "meta"


def summarize(cfg: Config, in_channels: int = 1, num_classes: int = 10) -> dict[str, Any]:
    """Per-layer rows and totals for one image at cfg.data.resize (0 = native 28 px)."""
    size = cfg.data.resize or 28
    net = build_model(cfg.model, size, in_channels, num_classes)
    trace = spatial_trace(cfg.model, size)
    rows: list[dict[str, Any]] = []

    def hook(name: str):
        def record(m: nn.Module, _inp, out: torch.Tensor) -> None:
            rows.append(
                {
                    "layer": name,
                    "type": type(m).__name__,
                    "output_shape": list(out.shape[1:]),
                    "params": sum(p.numel() for p in m.parameters(recurse=False)),
                    "macs": _macs(m, out),
                    "activations": out[0].numel(),
                    "dropped": _dropped(trace, name),
                }
            )

        return record

    for name, m in net.named_modules():
        if not list(m.children()):
            m.register_forward_hook(hook(name))
    device = shape_pass_device(trace)
    with torch.no_grad():
        net.to(device).eval()(torch.zeros(1, in_channels, size, size, device=device))

    params = sum(r["params"] for r in rows)
    macs = sum(r["macs"] for r in rows)
    return {
        "preset": cfg.model.preset,
        "input_shape": [in_channels, size, size],
        "layers": rows,
        "totals": {
            "params": params,
            "macs": macs,
            "flops": 2 * macs,
            "train_flops_per_image": 6 * macs,  # forward + backward (about 2x forward)
        },
        "memory": memory_estimate(cfg, rows, params, in_channels * size * size),
    }


def memory_estimate(
    cfg: Config, rows: list[dict], params: int, input_elems: int, dtype: str = "fp32"
) -> dict[str, Any]:
    """Bytes for prediction and for training one batch of cfg.train.batch_size."""
    b, w = cfg.train.batch_size, BYTES[dtype]
    acts = [input_elems] + [r["activations"] for r in rows]
    states = OPTIMIZER_STATES[cfg.train.optimizer] + (
        1 if cfg.train.optimizer == "sgd" and cfg.train.momentum else 0
    )
    predict_acts = max(a + c for a, c in zip(acts, acts[1:], strict=False)) * b * w
    train_acts = sum(acts) * b * w
    return {
        "batch_size": b,
        "dtype": dtype,
        "params_bytes": params * 4,
        "predict_bytes": params * 4 + predict_acts,
        "train_bytes": params * 4 * (2 + states) + train_acts,
        "train_parts": {
            "params": params * 4,
            "grads": params * 4,
            "optimizer_state": params * 4 * states,
            "activations": train_acts,
        },
        "assumptions": [
            f"batch of {b} images, activations in {dtype} ({w} bytes), parameters in fp32",
            "prediction: parameters + the largest pair of consecutive activations (input and "
            "output of one layer alive at once)",
            f"training: parameters + gradients + {states} optimizer state tensor(s) "
            f"({cfg.train.optimizer}"
            + (f", momentum {cfg.train.momentum}" if cfg.train.optimizer == "sgd" else "")
            + ") + every layer's output kept for backward (no in-place ReLU, no checkpointing)",
            "not counted: framework workspace (cuDNN), allocator caching, the CUDA context",
        ],
    }


def measure_cuda_peak(cfg: Config, in_channels: int = 1, num_classes: int = 10) -> int:
    """Peak bytes allocated by one real fp32 training step on CUDA (beside the estimate)."""
    from nin_search.engine.train import make_optimizer

    dev = torch.device("cuda")
    size = cfg.data.resize or 28
    net = build_model(cfg.model, size, in_channels, num_classes).to(dev)
    opt = make_optimizer(cfg.train, net.parameters())
    x = torch.rand(cfg.train.batch_size, in_channels, size, size, device=dev)
    y = torch.randint(0, num_classes, (cfg.train.batch_size,), device=dev)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(2):  # the second step holds the optimizer state too
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(dev)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_summary(s: dict[str, Any], fmt: str = "table") -> str:
    """The summary as a text table, one JSON object, or CSV of the layers."""
    if fmt == "json":
        return json.dumps(s, indent=2)
    import pandas as pd

    df = pd.DataFrame(s["layers"])
    df["output_shape"] = df["output_shape"].map(lambda v: "x".join(map(str, v)))
    if fmt == "csv":
        return df.to_csv(index=False)
    t, m = s["totals"], s["memory"]
    shown = df[df["type"] != "ReLU"]  # every ReLU keeps its input's shape; JSON and CSV list them
    lines = [
        f"{s['preset']} at {'x'.join(map(str, s['input_shape']))}",
        shown.to_string(
            index=False,
            formatters={
                "params": "{:,}".format,
                "macs": "{:,}".format,
                "activations": "{:,}".format,
            },
        ),
        "",
        f"params                  {t['params']:,}",
        f"forward MACs            {t['macs']:,}   (FLOPs {t['flops']:,})",
        f"training FLOPs / image  {t['train_flops_per_image']:,}   (about 3x forward)",
        f"memory, prediction      {_mib(m['predict_bytes'])}",
        f"memory, training        {_mib(m['train_bytes'])}   ("
        + ", ".join(f"{k} {_mib(v)}" for k, v in m["train_parts"].items())
        + ")",
    ]
    if "measured_train_peak_bytes" in m:
        lines.append(
            f"measured CUDA peak      {_mib(m['measured_train_peak_bytes'])}"
            "   (one fp32 training step)"
        )
    lines += ["assumptions:"] + [f"  - {a}" for a in m["assumptions"]]
    drops = df[df["dropped"] != ""]
    if len(drops):
        lines.append(
            "pixels dropped where the stride does not divide evenly "
            "(out = floor((in + 2p - k) / s) + 1):"
        )
        lines += [f"  - {r.layer}: {r.dropped}" for r in drops.itertuples()]
    return "\n".join(lines)
