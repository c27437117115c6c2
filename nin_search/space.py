"""A search space: one Param per dotted config key, checked against the key's own type and range.

    "train.lr" = { low = 1e-3, high = 0.3, log = true }      # float range (log: low > 0)
    "model.mlp_depth" = { low = 0, high = 3 }                # int range: both bounds ints
    "model.dropout" = { low = 0.0, high = 0.5, step = 0.1 }  # a stepped range
    "model.head" = { choices = ["gap", "fc"] }               # categorical
    "train.lr" = { from_lr_finder = true }                   # the latest lr-finder range

Standard library only; mistakes raise ConfigError naming the file, the key and the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nin_search.config import ConfigError, check_value, fields_by_name


@dataclass
class Param:
    name: str  # dotted config key
    kind: str  # "float" | "int" | "categorical" | "lr_finder"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)


def param(path: str, name: str, spec: Any) -> Param:
    where = f'{path}: [params] "{name}"'
    if name not in fields_by_name():
        raise ConfigError(f"{where}: unknown key; known keys: {', '.join(fields_by_name())}")
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where} = {spec!r}: expected {{ low, high, log }}, "
            f"{{ choices = [...] }} or {{ from_lr_finder = true }}"
        )
    keys = set(spec)
    if keys == {"from_lr_finder"}:
        if name != "train.lr" or spec["from_lr_finder"] is not True:
            raise ConfigError(f"{where}: from_lr_finder = true applies to train.lr only")
        return Param(name, "lr_finder", log=True)
    if "choices" in keys:
        if keys != {"choices"}:
            raise ConfigError(
                f"{where}: choices cannot be combined with {sorted(keys - {'choices'})}"
            )
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, but got {choices!r}")
        return Param(
            name, "categorical", choices=[check_value(name, c, f"{where} choice") for c in choices]
        )
    unknown = keys - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= keys:
        raise ConfigError(
            f"{where}: a range needs low and high (optional log, step), "
            f"but got keys {sorted(keys)}"
        )
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise ConfigError(f"{where}: low and high must be numbers, but got {bound!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, but got {log!r}")
    if low > high:
        raise ConfigError(f"{where}: low = {low} is above high = {high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, but got low = {low}")
    kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
    want = type(fields_by_name()[name].default)
    if want is int and kind == "float":
        raise ConfigError(f"{where}: {name} is an integer; give integer low and high")
    if want not in (int, float):
        raise ConfigError(f"{where}: {name} is not numeric; use {{ choices = [...] }}")
    if want is float:
        kind = "float"
    for bound in (low, high):  # both ends must be values the config accepts
        check_value(name, want(bound), f"{where} bound")
    return Param(name, kind, low, high, log, spec.get("step"))


def grid(params: dict[str, Param]) -> dict[str, list[Any]]:
    """The search space as lists, for Optuna's GridSampler."""
    return {
        k: (p.choices if p.kind == "categorical" else list(range(p.low, p.high + 1)))
        for k, p in params.items()
    }


__all__ = ["Param", "param", "grid"]
