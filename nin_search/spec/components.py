"""The [sampler] and [pruner] tables of a study file: every argument's type and range.

    [sampler]
    type = "tpe"
    seed = 0
    n_startup_trials = 10      # an integer >= 0
    [pruner]
    type = "hyperband"
    reduction_factor = 3       # an integer >= 2

Checked when the study file is loaded, before any store is opened: Optuna itself takes some
mistakes silently (GP with n_startup_trials = -3), fails on others only mid-study (Hyperband
with reduction_factor = 1 after the first epoch, TPE with n_startup_trials = "x" at the
second trial), and NopPruner accepts any argument at all. Standard library only.
"""

from __future__ import annotations

import math
from typing import Any

from nin_search.engine.config import ConfigError

# what each kind of argument allows: (check, words for the message)
_INT0 = (lambda v: type(v) is int and v >= 0, "an integer >= 0")


_INT1 = (lambda v: type(v) is int and v >= 1, "an integer >= 1")


_INT2 = (lambda v: type(v) is int and v >= 2, "an integer >= 2")


_BOOL = (lambda v: isinstance(v, bool), "true or false")


_POS = (
    lambda v: type(v) in (int, float) and 0 < v < math.inf,
    "a positive finite number",
)


_PERCENT = (lambda v: type(v) in (int, float) and 0 <= v <= 100, "a number in [0, 100]")


_PROB = (lambda v: type(v) in (int, float) and 0 <= v <= 1, "a probability in [0, 1]")


_INT1_AUTO = (lambda v: v == "auto" or _INT1[0](v), 'an integer >= 1 or "auto"')


_STEPS = {  # MedianPruner and PercentilePruner
    "n_startup_trials": _INT0,
    "n_warmup_steps": _INT0,
    "interval_steps": _INT1,
    "n_min_trials": _INT1,
}


ARGS: dict[str, dict[str, dict[str, tuple]]] = {
    "sampler": {
        "tpe": {
            "seed": _INT0,
            "n_startup_trials": _INT0,
            "n_ei_candidates": _INT1,
            "prior_weight": _POS,
            "consider_prior": _BOOL,
            "consider_magic_clip": _BOOL,
            "consider_endpoints": _BOOL,
            "multivariate": _BOOL,
            "group": _BOOL,
            "constant_liar": _BOOL,
            "warn_independent_sampling": _BOOL,
        },
        "nsga2": {
            "seed": _INT0,
            "population_size": _INT2,
            "mutation_prob": _PROB,
            "crossover_prob": _PROB,
            "swapping_prob": _PROB,
        },
        "random": {"seed": _INT0},
        "cmaes": {
            "seed": _INT0,
            "sigma0": _POS,
            "n_startup_trials": _INT0,
            "popsize": _INT1,
            "consider_pruned_trials": _BOOL,
            "use_separable_cma": _BOOL,
            "with_margin": _BOOL,
            "lr_adapt": _BOOL,
            "warn_independent_sampling": _BOOL,
        },
        "gp": {
            "seed": _INT0,
            "n_startup_trials": _INT0,
            "deterministic_objective": _BOOL,
            "warn_independent_sampling": _BOOL,
        },
        "grid": {"seed": _INT0},
    },
    "pruner": {
        "median": _STEPS,
        "percentile": {"percentile": _PERCENT} | _STEPS,
        "hyperband": {
            "min_resource": _INT1,
            "max_resource": _INT1_AUTO,
            "reduction_factor": _INT2,
            "bootstrap_count": _INT0,
        },
        "successive-halving": {
            "min_resource": _INT1_AUTO,
            "reduction_factor": _INT2,
            "min_early_stopping_rate": _INT0,
            "bootstrap_count": _INT0,
        },
        "none": {},
    },
}


def check_args(path: str, table: str, spec: dict[str, Any]) -> None:
    """Every argument of a [sampler] or [pruner] table (spec holds its type) is known to that
    type and of the type and range it allows; else ConfigError naming file, table and value."""
    kind = spec["type"]
    allowed = ARGS[table].get(kind)
    if allowed is None:  # a type without a table here: Optuna's own checks (make_sampler)
        return
    where = f"{path}: [{table}] {kind}"
    for key, value in spec.items():
        if key == "type":
            continue
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise ConfigError(f"{where}: unknown argument {key!r}; it takes: {known}")
        ok, words = allowed[key]
        if not ok(value):
            raise ConfigError(f"{where}: {key} = {value!r} is not allowed; expected {words}")
    if spec.get("group") and not spec.get("multivariate"):
        raise ConfigError(f"{where}: group = true needs multivariate = true")
    low, high = spec.get("min_resource"), spec.get("max_resource")
    if type(low) is int and type(high) is int and low > high:
        raise ConfigError(f"{where}: min_resource = {low} is above max_resource = {high}")
