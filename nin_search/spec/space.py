"""A search space: one Param per dotted config key, checked against the key's own type and range.

    "train.lr" = { low = 1e-3, high = 0.3, log = true }      # float range (log: low > 0)
    "model.mlp_depth" = { low = 0, high = 3 }                # int range: both bounds ints
    "model.dropout" = { low = 0.0, high = 0.5, step = 0.1 }  # a stepped range
    "model.head" = { choices = ["gap", "fc"] }               # categorical
    "train.lr" = { from_lr_finder = true }                   # the latest lr-finder range

Standard library only; mistakes raise ConfigError naming the file, the key and the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nin_search.engine.config import ConfigError, check_value, fields_by_name


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
    return Param(name, kind, low, high, log, _step(where, spec, kind, low, high, log))


def _step(where: str, spec: dict, kind: str, low, high, log: bool) -> float | int | None:
    """The range's step: a positive number (an int for an int key) that divides high - low;
    Optuna takes none with log and silently moves high onto a step that does not divide."""
    if "step" not in spec:
        return None
    step = spec["step"]
    allowed = "a positive integer" if kind == "int" else "a positive number"
    if isinstance(step, bool) or not isinstance(step, int | float) or not 0 < step < math.inf:
        raise ConfigError(f"{where}: step = {step!r} is not allowed; expected {allowed}")
    if kind == "int" and not isinstance(step, int):
        raise ConfigError(f"{where}: step = {step!r}: the key is an integer; expected {allowed}")
    if log:
        raise ConfigError(f"{where}: step = {step!r} cannot be combined with log = true")
    n = (high - low) / step
    if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
        raise ConfigError(
            f"{where}: step = {step!r} does not divide high - low = {high - low:g}; "
            "pick a step that lands on high"
        )
    return step if kind == "int" else float(step)


def grid(params: dict[str, Param]) -> dict[str, list[Any]]:
    """The search space as lists, for Optuna's GridSampler."""
    return {
        k: (p.choices if p.kind == "categorical" else list(range(p.low, p.high + 1, p.step or 1)))
        for k, p in params.items()
    }


PER_ARM = ("lr-finder", "search")


TUNING_SEED = 1000  # per_arm = "search" trains its trials at this train.seed by default


def per_arm(path: str, raw: Any, seeds: list[int]) -> dict[str, dict[str, Any]]:
    """An ablation's [params] table: how each arm's train.lr is chosen.

    "train.lr" = { per_arm = "lr-finder" }    # the arm's own lr-finder recommendation
    "train.lr" = { per_arm = "search", low = 1e-3, high = 0.1, log = true, trials = 6 }
                                              # optional: seed = 1000 (the tuning seed)
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [params] must be a table, but got {raw!r}")
    out = {}
    for name, spec in raw.items():
        where = f'{path}: [params] "{name}"'
        if name != "train.lr":
            raise ConfigError(f"{where}: an ablation tunes train.lr per arm only")
        if not isinstance(spec, dict) or spec.get("per_arm") not in PER_ARM:
            got = spec.get("per_arm") if isinstance(spec, dict) else spec
            raise ConfigError(
                f"{where}: per_arm = {got!r} is not allowed; expected "
                f'{{ per_arm = "lr-finder" }} or {{ per_arm = "search", low, high, trials }}'
            )
        if spec["per_arm"] == "lr-finder":
            if set(spec) != {"per_arm"}:
                raise ConfigError(
                    f"{where}: per_arm = 'lr-finder' takes no other keys, but got "
                    f"{sorted(set(spec) - {'per_arm'})} (set lr_finder.* in [lr_finder])"
                )
            out[name] = {"per_arm": "lr-finder"}
            continue
        allowed = {"per_arm", "low", "high", "log", "trials", "seed"}
        if unknown := set(spec) - allowed:
            raise ConfigError(
                f"{where}: unknown key(s) {sorted(unknown)}; allowed {sorted(allowed)}"
            )
        if missing := {"low", "high", "trials"} - set(spec):
            raise ConfigError(f"{where}: per_arm = 'search' needs {sorted(missing)}")
        search = param(path, name, {k: spec[k] for k in ("low", "high", "log") if k in spec})
        if search.low == search.high:
            raise ConfigError(f"{where}: low = high = {search.low}: nothing to search")
        trials, seed = spec["trials"], spec.get("seed", TUNING_SEED)
        if type(trials) is not int or trials < 1:
            raise ConfigError(f"{where}: trials = {trials!r} is not allowed; expected an int >= 1")
        if type(seed) is not int or seed < 0 or seed in seeds:
            raise ConfigError(
                f"{where}: seed = {seed!r} is not allowed; expected an int >= 0 that is not "
                f"one of the reported seeds {seeds}"
            )
        out[name] = {
            "per_arm": "search",
            "low": float(search.low),
            "high": float(search.high),
            "log": search.log,
            "trials": trials,
            "seed": seed,
        }
    return out
