"""train.precision: auto / fp32 / bf16 resolved per device, used by fit, evaluate and the finder.

The CPU's bf16 units are read through one seam, `train.cpu_bf16_units`, which the tests set so
each case runs the same on a CPU with AMX or AVX512-BF16 and on one without (bf16 autocast is
emulated there: slow, but correct, so tiny runs still work).
"""

from __future__ import annotations

import pytest
import torch
from builders import squares
from torch import nn

import nin_search.engine.train as train
from nin_search.cli.main import main
from nin_search.engine.config import ConfigError, LRFinderConfig, load_config
from nin_search.engine.data import split_data
from nin_search.engine.lr_finder import range_test
from nin_search.engine.model import build_model
from nin_search.engine.train import fit, make_optimizer, resolve_precision, resolved

CPU = torch.device("cpu")


@pytest.fixture
def with_units(monkeypatch):
    monkeypatch.setattr(train, "cpu_bf16_units", lambda: ["avx512_bf16"])


@pytest.fixture
def without_units(monkeypatch):
    monkeypatch.setattr(train, "cpu_bf16_units", lambda: [])


def test_auto_is_bf16_on_a_cpu_with_bf16_units(with_units):
    assert resolve_precision("auto", CPU) == "bf16"


def test_auto_is_fp32_on_a_cpu_without_bf16_units(without_units):
    assert resolve_precision("auto", CPU) == "fp32"


@pytest.mark.parametrize("units", [[], ["amx_bf16"]])
def test_fp32_is_fp32_everywhere(monkeypatch, units):
    monkeypatch.setattr(train, "cpu_bf16_units", lambda: units)
    assert resolve_precision("fp32", CPU) == "fp32"


def test_bf16_without_bf16_units_is_a_config_error_naming_key_and_device(without_units):
    with pytest.raises(ConfigError) as e:
        resolve_precision("bf16", CPU)
    msg = str(e.value)
    assert "train.precision = 'bf16'" in msg and "this CPU" in msg and "no bf16 units" in msg
    assert "\n" not in msg


def test_resolved_config_carries_the_precision_that_runs(with_units):
    # what gets logged as the train.precision param is the resolved value, never 'auto'
    cfg = resolved(load_config(overrides=["train.device=cpu"]))
    assert cfg.train.precision == "bf16"


def test_the_real_cpu_units_are_read_through_torch():
    # whatever this machine has, the answer is a list of the two known unit names
    assert set(train.cpu_bf16_units()) <= {"amx_bf16", "avx512_bf16"}


def test_cli_bf16_without_units_exits_2_with_one_line(
    tmp_path, monkeypatch, capsys, without_units
):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--profile", "cpu", "--set", "train.precision=bf16"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "train.precision = 'bf16'" in err
    # rejected before anything was written: no MLflow store, no reports
    assert list(tmp_path.iterdir()) == []


def _tiny(sets: list[str]):
    cfg = load_config(
        overrides=[
            "model.preset=lin2013",
            "model.width=0.25",
            "model.dropout=0",
            "model.final_relu=false",
            "data.resize=16",
            "data.val_size=200",
            "train.optimizer=adam",
            "train.lr=0.003",
            "train.batch_size=32",
            "train.epochs=5",
        ]
        + sets
    )
    x, y = squares(600)
    return cfg, split_data(x, y, cfg.data, "cpu")


def test_tiny_bf16_run_learns_an_easy_task(with_units):
    cfg, data = _tiny(["train.precision=bf16"])
    result = fit(cfg, data)
    # chance is 0.1; bf16 activations must not stop a small NiN from learning the squares
    assert result.status == "completed" and result.precision == "bf16"
    assert result.best_val_acc >= 0.8


def test_bf16_runs_the_convolutions_in_bf16_and_keeps_weights_fp32(with_units, monkeypatch):
    cfg, data = _tiny(["train.precision=bf16", "train.epochs=1"])
    seen: list[torch.dtype] = []
    real_build = train.build_model

    def build(*a, **k):
        net = real_build(*a, **k)
        conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        return net

    monkeypatch.setattr(train, "build_model", build)
    result = fit(cfg, data)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


def test_fp32_runs_the_convolutions_in_fp32(with_units):
    cfg, data = _tiny(["train.precision=fp32", "train.epochs=1"])
    result = fit(cfg, data)
    assert result.precision == "fp32"
    net = result.model.eval()
    with train.autocast(CPU, result.precision):
        out = net(torch.rand(2, 1, 16, 16).contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.float32


def test_lr_finder_restores_state_exactly_under_bf16(with_units):
    cfg = load_config(
        overrides=[
            "model.preset=lin2013",
            "model.width=0.125",
            "model.batch_norm=true",
            "train.optimizer=adamw",
            "train.lr=0.01",
        ]
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, 28).to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg.train, model.parameters())
    x, y = squares(64)
    for i in range(0, 64, 16):  # optimizer state and BatchNorm statistics to restore
        with train.autocast(CPU, "bf16"):
            logits = model(x[i : i + 16, None].float() / 255)
        nn.functional.cross_entropy(logits.float(), y[i : i + 16]).backward()
        opt.step()
        opt.zero_grad()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = {
        k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()}
        for k, s in opt.state_dict()["state"].items()
    }
    gen = torch.Generator().manual_seed(3)
    gen_state = gen.get_state().clone()

    def stream():
        while True:
            idx = torch.randperm(64, generator=gen)[:16]
            yield x[idx, None].float() / 255, y[idx]

    curve = range_test(
        model, opt, stream(), LRFinderConfig(num_iter=12), gen=gen, precision="bf16"
    )
    assert len(curve.losses) > 0
    # every weight and BatchNorm buffer, the optimizer state and the generator, bit for bit
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k
    for k, s in opt.state_dict()["state"].items():
        for n, t in s.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(state[k][n])), (k, n)
    assert torch.equal(gen.get_state(), gen_state)
