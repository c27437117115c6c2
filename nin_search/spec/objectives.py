"""What a study file's objectives say: the trained quantities (OBJECTIVES), the sizes known
before training (SIZES), and the parsers of `objective`, [constraints] and [reference]. Standard
library only: study files load without optuna. What a multi-objective study and a budget do
when it runs: search/budgets.py."""

from __future__ import annotations

import math
from typing import Any

from nin_search.engine.config import Config, ConfigError, apply

OBJECTIVES = {  # name: (metric per epoch, direction, how the epochs reduce to one value)
    "best_val_acc": ("val_acc", "maximize", max),
    "final_val_acc": ("val_acc", "maximize", lambda v: v[-1]),
    "best_val_loss": ("val_loss", "minimize", min),
}

SIZES = {"macs": "minimize", "params": "minimize", "epoch_time_s": "minimize"}


BUDGETS = ("macs", "params")  # known from the config alone: a budget is checked untrained


MULTI_SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")  # cmaes is single-objective


def parse_objectives(path: str, value: Any) -> list[str]:
    """A study file's objective: one name, or a list of them (several: a multi-objective study)."""
    allowed = ", ".join([*OBJECTIVES, *SIZES])
    if isinstance(value, str):
        if value not in OBJECTIVES:
            raise ConfigError(
                f"{path}: objective = {value!r} is not allowed; expected one of "
                f"{', '.join(OBJECTIVES)}, or a list of {allowed} such as "
                '["best_val_acc", "macs"]'
            )
        return [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{path}: objective = {value!r} is not allowed; expected a name or a list of "
            f'names from {allowed}, such as ["best_val_acc", "macs"]'
        )
    for v in value:
        if v not in OBJECTIVES and v not in SIZES:
            raise ConfigError(
                f"{path}: objective {v!r} (in {value!r}) is not allowed; expected names from "
                f"{allowed}"
            )
    if len(set(value)) != len(value):
        raise ConfigError(f"{path}: objective = {value!r} names an objective twice")
    if not any(v in OBJECTIVES for v in value):
        raise ConfigError(
            f"{path}: objective = {value!r} needs one trained quantity ({', '.join(OBJECTIVES)}); "
            "sizes alone need no sweep: `python -m nin_search summary`"
        )
    return value


def parse_constraints(path: str, raw: Any) -> dict[str, float]:
    """[constraints] "macs" = { max = 200e6 }, "params" = { max = 1e6 } -> {name: max}."""
    if raw is None:
        return {}
    example = '"macs" = { max = 200e6 }'
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: [constraints] must be a table such as {example}, got {raw!r}")
    out = {}
    for key, spec in raw.items():
        where = f'{path}: [constraints] "{key}"'
        if key not in BUDGETS:
            raise ConfigError(
                f"{where}: unknown quantity; allowed: {', '.join(BUDGETS)} (known from the "
                "config before training)"
            )
        if not isinstance(spec, dict) or set(spec) != {"max"}:
            raise ConfigError(f"{where} = {spec!r} is not allowed; expected {{ max = NUMBER }}")
        top = spec["max"]
        if isinstance(top, bool) or not isinstance(top, int | float) or not math.isfinite(top):
            raise ConfigError(f"{where}: max = {top!r} is not allowed; expected a number > 0")
        if top <= 0:
            raise ConfigError(f"{where}: max = {top!r} is not allowed; expected a number > 0")
        out[key] = float(top)
    return out


def parse_reference(path: str, raw: Any) -> dict[str, Any]:
    """[reference] label = "...", best_val_acc = 0.92: the base config's own measured point."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [reference] must be a table, got {raw!r}")
    for key, value in raw.items():
        where = f"{path}: [reference] {key} = {value!r}"
        if key == "label":
            if not isinstance(value, str):
                raise ConfigError(f"{where} is not allowed; expected a string")
        elif key not in OBJECTIVES:
            raise ConfigError(f"{where}: unknown key; allowed: label, {', '.join(OBJECTIVES)}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where} is not allowed; expected a number >= 0")
    return dict(raw)


def reference(spec: dict) -> tuple[int | None, dict, str]:
    """(MACs, measured values, label) of the study's base config, the profile's own NiN (the
    d2l NiN on the d2l profile); MACs None when the base config cannot be built."""
    from nin_search.engine.summary import summarize

    ref = dict(spec.get("reference") or {})
    label = ref.pop("label", "base config (the profile's NiN)")
    try:
        macs = summarize(apply(Config(), spec["base"], "reference"))["totals"]["macs"]
    except (ConfigError, KeyError, RuntimeError, ValueError):
        macs = None
    return macs, ref, label
