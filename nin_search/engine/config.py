"""Run configuration: dataclasses with the d2l reference run as defaults, read from TOML and --set.

    cfg = load_config("studies/my_run.toml", ["train.lr=0.1"], profile="quick")

One dotted name per hyperparameter (`train.lr`, `model.width`) in TOML, on the command line, in
Optuna and in MLflow. Everything is validated here, once: a bad key, type or value raises
ConfigError with one line naming the source, the key, the value and what is allowed.
This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A user's mistake in a config file, a --set override or a study file (exit code 2).

    Its message is the one line the command prints after "error: ":

        try:
            ns.train(overrides={"train.lr": -1.0})
        except ns.ConfigError as e:
            print(e)  # --set: train.lr = -1.0 is not allowed; expected a finite number in ...
    """


def _f(
    default: Any,
    *,
    choices: tuple = (),
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> Any:
    """A config field with its allowed values, checked by validate()."""
    meta = {"choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open}
    return field(default=default, metadata=meta)


PRESETS = ("d2l", "lin2013", "nin11", "nin16", "nin19")


DATASETS = ("fashion-mnist", "mnist")


FINDER_RULES = ("valley", "steep", "minimum", "half-decade", "lowest")  # curve.suggest


@dataclass
class ModelConfig:
    preset: str = _f("d2l", choices=PRESETS)  # d2l's NiN chapter model
    mlp_depth: int = _f(2, lo=0, hi=8)  # 1x1 convs after each block's spatial conv (d2l: 2)
    mlp_kernel: int = _f(1, choices=(1, 3))  # 3 = the exercise "replace the 1x1 convs by 3x3"
    head: str = _f(
        "gap", choices=("gap", "fc")
    )  # fc = Flatten + Linear instead of last block + GAP
    reduction: str = _f("one-step", choices=("one-step", "gradual"))  # last block's channel path
    dropout: float = _f(0.5, lo=0.0, hi=0.95)  # d2l: 0.5 before the last block
    batch_norm: bool = _f(False)  # BatchNorm after every conv but the logits conv
    width: float = _f(1.0, lo=0.0, hi=8.0, lo_open=True)  # channel multiplier; classes unscaled
    final_relu: bool = _f(True)  # d2l puts a ReLU on the logits before global average pooling


@dataclass
class DataConfig:
    dataset: str = _f("fashion-mnist", choices=DATASETS)
    data_dir: str = _f("")  # "" = NIN_SEARCH_DATA, Debian's package, ./data, then download
    resize: int = _f(224, lo=0, hi=1024)  # pixels per side, resized on the device; 0 = native 28
    augment: bool = _f(False)  # on-device random flip and 2 px random crop
    # images held out of the training split for tuning; every epoch is validated on them
    val_size: int = _f(5000, lo=1)
    split_seed: int = _f(0, lo=0)  # the held-out split; fixed so seeds and arms share it
    train_subset: int = _f(0, lo=0)  # 0 = all remaining training images


@dataclass
class TrainConfig:
    optimizer: str = _f("sgd", choices=("sgd", "adam", "adamw"))
    lr: float = _f(0.05, lo=0.0, hi=100.0, lo_open=True)  # d2l NiN (current edition), plain SGD
    momentum: float = _f(0.0, lo=0.0, hi=0.9999)  # sgd only; d2l uses none
    nesterov: bool = _f(False)  # sgd with momentum > 0 only
    weight_decay: float = _f(0.0, lo=0.0, hi=1.0)
    schedule: str = _f("constant", choices=("constant", "cosine", "onecycle", "step"))
    warmup_epochs: float = _f(0.0, lo=0.0)  # linear warmup from lr/100 (onecycle: its ramp-up)
    step_size: int = _f(3, lo=1)  # epochs between decays for the step schedule
    gamma: float = _f(0.1, lo=0.0, hi=1.0, lo_open=True)  # decay factor for the step schedule
    label_smoothing: float = _f(0.0, lo=0.0, hi=0.99)
    epochs: int = _f(10, lo=1, hi=10_000)  # d2l: 10
    batch_size: int = _f(128, lo=1, hi=65_536)  # d2l: 128
    seed: int = _f(0, lo=0)  # weight init, batch order, augmentation
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    # auto = bf16 autocast on CUDA and on CPUs with AMX or AVX512-BF16, else fp32; weights,
    # optimizer state and the loss stay fp32 (train.resolve_precision)
    precision: str = _f("auto", choices=("auto", "fp32", "bf16"))
    compile: bool = _f(False)  # torch.compile the model (CUDA only)


@dataclass
class LRFinderConfig:
    mode: str = _f("exp", choices=("exp", "linear"))  # how the lr grows from step to step
    start_lr: float = _f(1e-7, lo=0.0, hi=100.0, lo_open=True)  # fastai's default
    end_lr: float = _f(10.0, lo=0.0, hi=1000.0, lo_open=True)  # fastai's default
    num_iter: int = _f(100, lo=10, hi=100_000)  # training steps, one batch each
    beta: float = _f(0.98, lo=0.0, hi=0.999)  # causal EMA (fastai's): progress bar, stop, "ema"
    stop_factor: float = _f(4.0, lo=1.0, lo_open=True)  # stop once smoothed loss > 4x best
    use_val: bool = _f(False)  # Smith's variant: a fixed validation batch's loss at every step
    val_images: int = _f(512, lo=1)  # size of that validation batch
    # the suggestion that becomes recommended_lr; auto (finder_rule): lowest under a onecycle
    # schedule, where it had the smallest worst regret against an lr grid
    # (docs/results/lr-finder.md), half-decade under the others
    rule: str = _f("auto", choices=(*FINDER_RULES, "auto"))
    # the curve the rules read: zero-phase = forward-backward EMA of the raw loss (no lag);
    # ema = fastai's causal EMA, which lags ~49 steps (~4 decades at the defaults)
    smoothing: str = _f("zero-phase", choices=("zero-phase", "ema"))
    repeats: int = _f(1, lo=1, hi=100)  # tests with seeds train.seed + i; suggest from the median


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lr_finder: LRFinderConfig = field(default_factory=LRFinderConfig)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}


# A profile sets a few values over the defaults; a config file and --set win over it.
PROFILES: dict[str, dict[str, Any]] = {
    "d2l": {"data.resize": 224, "data.train_subset": 0, "train.epochs": 10},
    "quick": {"data.resize": 96, "data.train_subset": 10_000, "train.epochs": 2},
    # converged results on a 2-core CPU (docs/configuration.md, docs/results/cpu-profile.md)
    "cpu": {
        "model.preset": "lin2013",  # the paper's model at native 28 px: 96x7x7 into its last block
        "model.width": 0.5,
        "model.batch_norm": True,  # the plain NiN sits at ln 10 for hundreds of steps
        "data.resize": 0,
        "data.train_subset": 0,
        "train.optimizer": "adamw",
        # an lr grid at 4 epochs is flat from 0.005 to 0.04 and drops at 0.08 (docs/results/
        # cpu-profile.md): 0.02 is the plateau's middle, 4x below that cliff
        "train.lr": 0.02,
        "train.schedule": "onecycle",
        "train.epochs": 5,  # under 6 minutes on 2 cores, val and test accuracy >= 0.90
    },
}


def finder_rule(cfg: Config) -> str:
    """lr_finder.rule as it runs. auto: lowest under train.schedule = onecycle, which takes
    train.lr as its peak after a warmup (measured: benchmarks/lr_finder_regret.py); half-decade
    under the schedules that start at train.lr, for which Smith (2018) puts the rate below the
    range test's extremum (not measured against a grid here)."""
    if cfg.lr_finder.rule != "auto":
        return cfg.lr_finder.rule
    return "lowest" if cfg.train.schedule == "onecycle" else "half-decade"


def fields_by_name() -> dict[str, dataclasses.Field]:
    """Every config field under its dotted name, e.g. 'train.lr'."""
    return {f"{s}.{f.name}": f for s, cls in SECTIONS.items() for f in dataclasses.fields(cls())}


def flatten(cfg: Config) -> dict[str, Any]:
    """{'model.preset': 'd2l', ..., 'train.lr': 0.05, ...} in declaration order."""
    return {
        f"{s}.{k}": v for s in SECTIONS for k, v in dataclasses.asdict(getattr(cfg, s)).items()
    }


def config_hash(cfg: Config) -> str:
    """A short stable hash of the resolved config (12 hex digits)."""
    blob = json.dumps(flatten(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _allowed(f: dataclasses.Field) -> str:
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(repr(c) for c in m["choices"])
    kind = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[
        type(f.default)
    ]
    lo, hi = m.get("lo"), m.get("hi")
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if m['lo_open'] else '['}{lo}, {hi}]"
    if lo is not None:
        return f"{kind} {'>' if m['lo_open'] else '>='} {lo}"
    return kind


def check_value(key: str, value: Any, source: str) -> Any:
    """The value coerced to the field's type, or ConfigError naming source, key and value."""
    fields = fields_by_name()
    if key not in fields:
        raise ConfigError(f"{source}: unknown key {key!r}; known keys: {', '.join(fields)}")
    f = fields[key]
    want, m = type(f.default), f.metadata
    bad = ConfigError(f"{source}: {key} = {value!r} is not allowed; expected {_allowed(f)}")
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not want:
        raise bad
    if m.get("choices") and value not in m["choices"]:
        raise bad
    lo, hi = m.get("lo"), m.get("hi")
    if lo is not None and (value < lo or (m["lo_open"] and value == lo)):
        raise bad
    if hi is not None and value > hi:
        raise bad
    if want is float and not math.isfinite(value):  # nan, inf: no float key takes them
        raise bad
    return value


def apply(cfg: Config, values: dict[str, Any], source: str) -> Config:
    """A copy of cfg with dotted values set, each checked."""
    cfg = dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s)) for s in SECTIONS})
    for key, value in values.items():
        value = check_value(key, value, source)
        section, name = key.split(".", 1)
        setattr(getattr(cfg, section), name, value)
    _check_combinations(cfg, source)
    return cfg


def _check_combinations(cfg: Config, source: str) -> None:
    t, f = cfg.train, cfg.lr_finder
    if f.end_lr <= f.start_lr:
        raise ConfigError(
            f"{source}: lr_finder.end_lr = {f.end_lr} must be above "
            f"lr_finder.start_lr = {f.start_lr}"
        )
    if t.nesterov and (t.optimizer != "sgd" or t.momentum == 0):
        raise ConfigError(
            f"{source}: train.nesterov = true needs train.optimizer = 'sgd' and "
            f"train.momentum > 0, but got optimizer {t.optimizer!r} and momentum {t.momentum}"
        )
    if t.momentum and t.optimizer != "sgd":
        raise ConfigError(
            f"{source}: train.momentum = {t.momentum} applies to train.optimizer = 'sgd' only"
            f" (got {t.optimizer!r}; adam and adamw use their betas)"
        )


def flatten_toml(doc: dict[str, Any], source: str, sections=tuple(SECTIONS)) -> dict[str, Any]:
    """{'model': {'head': 'fc'}, 'train.lr': 0.1} -> {'model.head': 'fc', 'train.lr': 0.1}."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in sections:
                raise ConfigError(
                    f"{source}: unknown table [{key}]; allowed tables: {', '.join(sections)}"
                )
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def read_toml(path: str) -> dict[str, Any]:
    """A parsed TOML file, or ConfigError naming the file and the problem."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['train.lr=0.1', 'model.head=fc'] -> {'train.lr': 0.1, 'model.head': 'fc'}.

    Values are read as TOML scalars (0.1, 3, true, "x"); anything else is taken as a string.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.1")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key.strip()] = value
    return out


def resolve_profile(profile: str | None, cuda: bool | None = None) -> str | None:
    """'auto' -> 'd2l' on CUDA, 'cpu' otherwise (cuda None: torch is asked); None stays None
    (the plain defaults). The one place 'auto' is decided: --profile, the API, study files."""
    if profile is None:
        return None
    if profile == "auto":
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        return "d2l" if cuda else "cpu"
    if profile not in PROFILES:
        raise ConfigError(f"--profile {profile!r}: expected auto, {', '.join(PROFILES)}")
    return profile


def load_config(
    path: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    profile: str | None = None,
) -> Config:
    """Defaults, then the profile, then the TOML file, then --set overrides; all validated.

    overrides: --set's KEY=VALUE strings, or {dotted key: value} (the Python API's), checked
    alike and named "--set" in a message, so that both say the same line."""
    cfg = Config()
    if profile and profile not in PROFILES:
        raise ConfigError(f"--profile {profile!r}: expected one of {', '.join(PROFILES)}")
    if profile:
        cfg = apply(cfg, PROFILES[profile], f"profile {profile!r}")
    if path:
        cfg = apply(cfg, flatten_toml(read_toml(path), path), path)
    if overrides:
        values = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        cfg = apply(cfg, values, "--set")
    return cfg


def to_toml(cfg: Config) -> str:
    """The resolved config as a TOML document that load_config() reads back unchanged."""
    lines: list[str] = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for k, v in dataclasses.asdict(getattr(cfg, section)).items():
            lines.append(f"{k} = {json.dumps(v)}")  # JSON scalars are valid TOML scalars
        lines.append("")
    return "\n".join(lines)
