"""Config: d2l defaults, profiles, TOML files, --set overrides, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nin_search.engine.config import (
    Config,
    ConfigError,
    apply,
    config_hash,
    fields_by_name,
    flatten,
    load_config,
    parse_overrides,
    resolve_profile,
    to_toml,
)

ROOT = str(Path(__file__).resolve().parents[2])


def write(tmp_path, text: str, name: str = "run.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(*args, **kwargs) -> str:
    """The message of the ConfigError that load_config(*args, **kwargs) raises."""
    with pytest.raises(ConfigError) as e:
        load_config(*args, **kwargs)
    return str(e.value)


# ---- defaults and precedence -----------------------------------------------------------------


def test_defaults_reproduce_the_d2l_run():
    cfg = load_config()
    got = (
        cfg.model.preset,
        cfg.train.lr,
        cfg.train.batch_size,
        cfg.train.epochs,
        cfg.data.resize,
        cfg.train.optimizer,
        cfg.train.momentum,
        cfg.train.weight_decay,
    )
    # d2l NiN: lr 0.05, batch 128, 10 epochs, 224 px, plain SGD without momentum or decay
    assert got == ("d2l", 0.05, 128, 10, 224, "sgd", 0.0, 0.0)


def test_defaults_keep_d2l_model_knobs():
    m = load_config().model
    # two 1x1 convs, GAP head, dropout 0.5, no BN, full width, ReLU on the logits
    assert (m.mlp_depth, m.mlp_kernel, m.head, m.dropout, m.batch_norm, m.width, m.final_relu) == (
        2,
        1,
        "gap",
        0.5,
        False,
        1.0,
        True,
    )


def test_quick_profile_shrinks_the_run():
    cfg = load_config(profile="quick")
    # quick: 96 px, 10,000 training images, 2 epochs
    assert (cfg.data.resize, cfg.data.train_subset, cfg.train.epochs) == (96, 10_000, 2)


def test_d2l_profile_is_the_full_run():
    cfg = load_config(profile="d2l")
    # d2l: 224 px, every training image, 10 epochs
    assert (cfg.data.resize, cfg.data.train_subset, cfg.train.epochs) == (224, 0, 10)


def test_set_wins_over_profile():
    cfg = load_config(overrides=["train.epochs=5"], profile="quick")
    # --set train.epochs beats the profile's 2
    assert cfg.train.epochs == 5


def test_file_wins_over_profile(tmp_path):
    path = write(tmp_path, "[data]\nresize = 64\n[model]\npreset = 'lin2013'\n")
    cfg = load_config(path, profile="quick")
    # the file's resize beats the profile's 96
    assert cfg.data.resize == 64
    # and what the file leaves alone keeps the profile's value
    assert cfg.train.epochs == 2


def test_set_wins_over_file(tmp_path):
    path = write(tmp_path, "[train]\nlr = 0.2\n")
    cfg = load_config(path, ["train.lr=0.01"])
    # --set train.lr beats the file's 0.2
    assert cfg.train.lr == 0.01


def test_toml_tables_are_read(tmp_path):
    path = write(tmp_path, "[model]\nhead = 'fc'\nwidth = 0.5\n[train]\nlr = 0.1\nepochs = 3\n")
    cfg = load_config(path)
    # every value of the [model] and [train] tables lands in its field
    assert (cfg.model.head, cfg.model.width, cfg.train.lr, cfg.train.epochs) == ("fc", 0.5, 0.1, 3)


def test_toml_dotted_keys_are_read(tmp_path):
    cfg = load_config(write(tmp_path, "train.lr = 0.1\n"))
    # a TOML dotted key is the same as a [train] table
    assert cfg.train.lr == 0.1


def test_auto_profile_is_cpu_on_cpu_and_d2l_on_cuda():
    # without CUDA the auto profile is the converging cpu one, with CUDA the full d2l run
    assert (resolve_profile("auto", cuda=False), resolve_profile("auto", cuda=True)) == (
        "cpu",
        "d2l",
    )


def test_cpu_profile_keeps_the_final_block_spatial_on_all_the_data():
    from nin_search.engine.summary import summarize

    cfg = load_config(profile="cpu")
    # all training images, BatchNorm, and a final block that still sees a map of >= 3x3
    assert cfg.data.train_subset == 0 and cfg.model.batch_norm
    rows = summarize(cfg)["layers"]
    entering = rows[next(i for i, r in enumerate(rows) if r["layer"] == "final.conv") - 1]
    assert entering["output_shape"] == [96, 7, 7]


def test_unknown_profile_is_a_config_error():
    with pytest.raises(ConfigError, match="'fast'"):
        # an unknown --profile is named and refused
        resolve_profile("fast", cuda=False)


def test_load_config_refuses_an_unknown_profile():
    # load_config validates its profile too, rather than failing with a KeyError
    assert "'fast'" in error_of(profile="fast")


# ---- --set parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, value",
    [
        ("train.lr=0.1", 0.1),
        ("train.epochs=3", 3),
        ("model.batch_norm=true", True),
        ("model.head=fc", "fc"),
        ("model.head='fc'", "fc"),
        ("data.data_dir=/tmp/a b", "/tmp/a b"),
    ],
)
def test_set_values_are_read_as_toml_scalars_else_strings(item, value):
    parsed = parse_overrides([item])[item.split("=")[0]]
    # the value has the TOML type (float, int, bool) or is the bare string
    assert (parsed, type(parsed)) == (value, type(value))


def test_set_int_for_a_float_field_becomes_float():
    lr = load_config(overrides=["train.lr=3"]).train.lr
    # 3 is accepted for train.lr and stored as 3.0
    assert (lr, type(lr)) == (3.0, float)


def test_set_splits_at_the_first_equals_sign():
    # everything after the first '=' is the value
    assert parse_overrides(["data.data_dir=/x=y"]) == {"data.data_dir": "/x=y"}


@pytest.mark.parametrize("item", ["train.lr", "=0.1", " =0.1"])
def test_malformed_set_is_a_config_error(item):
    message = error_of(overrides=[item])
    # the message quotes the item and shows the expected KEY=VALUE form
    assert repr(item) in message and "KEY=VALUE" in message


# ---- bad input: one line naming the key, the value and what is allowed ------------------------


def test_unknown_key_is_named(tmp_path):
    message = error_of(overrides=["train.learning_rate=0.1"])
    # the bad key is named and the known keys are listed
    assert "'train.learning_rate'" in message and "train.lr" in message


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = write(tmp_path, "[train]\nlearning_rate = 0.1\n")
    message = error_of(path)
    # the file and the bad key are both named
    assert path in message and "train.learning_rate" in message


def test_unknown_table_is_named(tmp_path):
    message = error_of(write(tmp_path, "[optim]\nlr = 0.1\n"))
    # the unknown table and the allowed ones are named
    assert "[optim]" in message and all(t in message for t in ("model", "data", "train"))


@pytest.mark.parametrize(
    "item, allowed",
    [
        ("train.lr='0.1'", "a finite number"),  # string for a float
        ("train.epochs=2.5", "an integer"),  # float for an int
        ("model.batch_norm=1", "true or false"),  # int for a bool
        ("train.lr=true", "a finite number"),  # bool for a float (bool is an int in Python)
        ("train.epochs=true", "an integer"),  # bool for an int
        ("model.head=3", "one of 'gap', 'fc'"),  # int for a string with choices
    ],
)
def test_wrong_type_names_key_value_and_type(item, allowed):
    key, raw = item.split("=")
    message = error_of(overrides=[item])
    # the key, its value and the expected type are all in the message
    assert key in message and allowed in message and repr(parse_overrides([item])[key]) in message


@pytest.mark.parametrize(
    "item, allowed",
    [
        ("train.lr=0", "(0.0, 100.0]"),
        ("train.lr=-0.1", "(0.0, 100.0]"),
        ("model.mlp_kernel=2", "one of 1, 3"),
        ("model.mlp_depth=-1", "[0, 8]"),
        ("model.width=0", "(0.0, 8.0]"),
        ("train.momentum=1.0", "[0.0, 0.9999]"),
        ("model.preset='vgg'", "'nin19'"),
        ("train.lr=nan", "a finite number"),
        ("train.lr=inf", "a finite number"),
    ],
)
def test_out_of_range_names_key_value_and_range(item, allowed):
    key, raw = item.split("=")
    message = error_of(overrides=[item])
    # the key, the value and the allowed range or choices are in the message
    assert key in message and allowed in message and repr(parse_overrides([item])[key]) in message


def test_unparsable_toml_names_the_file(tmp_path):
    path = write(tmp_path, "[train\nlr = 0.1\n")
    message = error_of(path)
    # the file is named and called invalid TOML
    assert path in message and "not valid TOML" in message


def test_missing_file_is_named(tmp_path):
    path = str(tmp_path / "nope.toml")
    message = error_of(path)
    # the missing file is named
    assert path in message and "no such config file" in message


def test_nesterov_needs_momentum():
    message = error_of(overrides=["train.nesterov=true"])
    # the combination is refused, naming both keys
    assert "train.nesterov" in message and "train.momentum" in message


def test_nesterov_with_momentum_is_fine():
    cfg = load_config(overrides=["train.nesterov=true", "train.momentum=0.9"])
    # sgd with momentum accepts nesterov
    assert (cfg.train.nesterov, cfg.train.momentum) == (True, 0.9)


def test_momentum_needs_sgd():
    message = error_of(overrides=["train.optimizer=adam", "train.momentum=0.9"])
    # momentum is for sgd only; adam is named
    assert "train.momentum" in message and "'adam'" in message


@pytest.mark.parametrize(
    "args",
    [
        {"overrides": ["train.learning_rate=0.1"]},
        {"overrides": ["train.lr=0"]},
        {"overrides": ["train.lr"]},
        {"overrides": ["train.nesterov=true"]},
        {"overrides": ["train.optimizer=adam", "train.momentum=0.9"]},
        {"path": "missing.toml"},
    ],
)
def test_errors_are_one_line(args):
    # every config error is a single line (the CLI prints it as is)
    assert "\n" not in error_of(**args)


def test_errors_in_files_are_one_line(tmp_path):
    for text in ("[optim]\nx = 1\n", "[train\n", "[train]\nlr = 'fast'\n"):
        # the unknown table, the TOML syntax error and the bad value are one line each
        assert "\n" not in error_of(write(tmp_path, text))


def test_apply_does_not_change_its_input():
    cfg = Config()
    apply(cfg, {"train.lr": 0.2}, "test")
    # apply returns a changed copy and leaves the original alone
    assert cfg.train.lr == 0.05


# ---- serialising ----------------------------------------------------------------------------


def test_to_toml_round_trips(tmp_path):
    cfg = load_config(
        overrides=[
            "model.head=fc",
            "train.lr=1e-05",
            "model.batch_norm=true",
            'data.data_dir=C:\\data "x"',
            "train.optimizer=adamw",
            "train.warmup_epochs=0.5",
        ]
    )
    back = load_config(write(tmp_path, to_toml(cfg)))
    # the written config reads back to exactly the same values
    assert flatten(back) == flatten(cfg)


def test_config_hash_is_stable_across_processes():
    code = "from nin_search.engine.config import Config, config_hash; print(config_hash(Config()))"
    env = os.environ | {"PYTHONHASHSEED": "123", "PYTHONPATH": ROOT}
    other = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    # another interpreter, with another string-hash seed, gives the same hash
    assert other == config_hash(load_config())


def test_config_hash_is_12_hex_digits():
    h = config_hash(Config())
    # a short hex digest
    assert len(h) == 12 and set(h) <= set("0123456789abcdef")


def test_config_hash_changes_with_a_value():
    # one changed value gives a different hash
    assert config_hash(load_config(overrides=["train.seed=1"])) != config_hash(Config())


def test_flatten_uses_dotted_names():
    flat = flatten(Config())
    # every hyperparameter under its dotted name, with its value
    assert (flat["train.lr"], flat["model.preset"], flat["data.resize"]) == (0.05, "d2l", 224)
    # grouped by section in declaration order: model, data, train first
    assert list(dict.fromkeys(k.split(".")[0] for k in flat))[:3] == ["model", "data", "train"]


FLOAT_KEYS = [k for k, f in fields_by_name().items() if isinstance(f.default, float)]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_refuses_non_finite_values(key: str, value: str):
    # inf once reached the schedule (train.warmup_epochs = inf: OverflowError) before any check
    message = error_of(overrides=[f"{key}={value}"])
    assert key in message and "a finite number" in message


def test_val_size_zero_is_refused_before_training():
    # every epoch is validated: with no validation images evaluate() divided by zero after
    # a whole epoch of training
    message = error_of(overrides=["data.val_size=0"])
    assert "data.val_size = 0 is not allowed" in message and ">= 1" in message
