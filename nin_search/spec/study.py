"""Study files: TOML that names a search over dotted config keys (ablation files: ablation.py).

    name = "nin-lr-dropout-depth"
    n_trials = 40                       # finished trials (complete or pruned) to reach
    profile = "d2l"                     # optional: auto | d2l | cpu | quick, before the tables
    keep_models = "best"                # best (default) | all | none: trial models kept in MLflow
    [train]                             # optional [model] [data] [train] [lr_finder] overrides
    epochs = 10
    [params]
    "train.lr" = { low = 1e-3, high = 0.3, log = true }
    "model.dropout" = { low = 0.0, high = 0.7 }
    "model.mlp_depth" = { low = 0, high = 3 }            # int: both bounds are ints
    "model.head" = { choices = ["gap", "fc"] }
    # "train.lr" = { from_lr_finder = true }            # the latest lr-finder range
    [sampler]
    type = "tpe"                        # tpe (seeded) | nsga2 | random | cmaes | gp | grid
    seed = 0
    [pruner]
    type = "hyperband"          # median | hyperband | successive-halving | percentile | none
    # objective = ["best_val_acc", "macs"] and [constraints]: see pareto.py

Everything is checked here, before anything runs; mistakes raise ConfigError naming the file,
the key and the value. Standard library only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nin_search.engine.config import (
    PROFILES,
    SECTIONS,
    Config,
    ConfigError,
    apply,
    check_value,
    flatten,
    flatten_toml,
    read_toml,
    resolve_profile,
)
from nin_search.spec.components import check_args
from nin_search.spec.objectives import (
    MULTI_SAMPLERS,
    OBJECTIVES,
    SIZES,
    parse_constraints,
    parse_objectives,
    parse_reference,
)
from nin_search.spec.space import Param, param

SAMPLERS = ("tpe", "nsga2", "random", "cmaes", "gp", "grid")


PRUNERS = ("median", "hyperband", "successive-halving", "percentile", "none")


TOP_KEYS = {
    "name", "n_trials", "profile", "objective", "params", "sampler", "pruner", "keep_models",
    "constraints", "reference",
}  # fmt: skip


KEEP_MODELS = ("best", "all", "none")  # trial models kept in MLflow: the best so far, all, none


@dataclass(frozen=True)
class Study:
    """What a study or ablation file says, checked; frozen: a step that decides something (each
    arm's lr, the target) returns a new Study (dataclasses.replace), never writes into one."""

    name: str
    path: str
    n_trials: int
    base: dict[str, Any]  # dotted values from the file's tables (and --set)
    params: dict[str, Param]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    objective: str = "best_val_acc"
    profile: str | None = None
    # ablations: arm name -> dotted overrides; every arm runs with every seed (train.seed)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: str | None = None
    seeds: list[int] = field(default_factory=list)
    final_eval: bool = False  # also evaluate each finished trial on the test set
    keep_models: str = "best"  # KEEP_MODELS; ablations default to "none"
    # sweeps (pareto.py): every objective in the file's order (several: a Pareto front; objective
    # is then the trained one), budgets {"macs": max}, the base config's measured values
    objectives: list[str] = field(default_factory=list)
    constraints: dict[str, float] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    # ablations: how each arm's lr is chosen ([params] "train.lr" = { per_arm = ... }), then
    # what was chosen (tuning.py): arm -> train.lr and how; arms with no lr, with the reason
    per_arm: dict[str, dict[str, Any]] = field(default_factory=dict)
    arm_lr: dict[str, float] = field(default_factory=dict)
    lr_how: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "ablation" if self.arms else "sweep"

    def cells(self) -> list[dict[str, Any]]:
        """An ablation's grid, seed-major: {"arm": name, "train.seed": seed} per cell."""
        arms = [a for a in self.arms if a not in self.skipped]  # no lr for it: never run
        return [{"arm": a, "train.seed": s} for s in self.seeds for a in arms]

    def base_config(self) -> Config:
        """Defaults, then the study's profile, then its tables (and --set)."""
        cfg = Config()
        if self.profile:
            cfg = apply(cfg, PROFILES[self.profile], f"{self.path}: profile {self.profile!r}")
        return apply(cfg, self.base, self.path)


def _typed(path: str, doc: dict, key: str, kind: type, allowed: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{path}: {key} = {value!r} is not allowed; expected {allowed}")
    return value


def _component(path: str, doc: dict, table: str, types: tuple, default: str) -> dict:
    spec = doc.get(table, {})
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: [{table}] must be a table, but got {spec!r}")
    spec = {"type": default} | spec
    if spec["type"] not in types:
        raise ConfigError(
            f"{path}: [{table}] type = {spec['type']!r} is not allowed; "
            f"expected one of {', '.join(types)}"
        )
    check_args(path, table, spec)
    return spec


NAME_MAX = 200  # characters: MLflow keeps run names ("NAME trial N") to 250, models to 256


REGISTRY_FORBIDS = ("/", ":", "%")  # MLflow's model registry refuses them in a name


def shared_values(path: str, doc: dict, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The file's [model] [data] [train] [lr_finder] values, then --set (blamed on --set)."""
    for key, value in (overrides or {}).items():
        check_value(key, value, "--set")
    tables = {k: v for k, v in doc.items() if k in SECTIONS}
    return flatten_toml(tables, path) | (overrides or {})


def header(path: str, doc: dict, keys: set[str], objective: str) -> tuple[str, str | None, str]:
    """name, profile and objective of a study or ablation file, after its keys are checked."""
    unknown = set(doc) - keys - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(sorted(keys))} and tables {', '.join(SECTIONS)}"
        )
    name = _typed(path, doc, "name", str, "a non-empty string")
    if not name.strip():
        raise ConfigError(f"{path}: name must not be empty")
    if len(name) > NAME_MAX or not name.isprintable():
        raise ConfigError(
            f"{path}: name = {name[:40]!r}{'...' if len(name) > 40 else ''} is not allowed; "
            f"expected at most {NAME_MAX} printable characters (it names the MLflow experiment, "
            "runs and model)"
        )
    # MLflow's model registry refuses these (mlflow.utils.validation._validate_model_name and
    # its file store's): models:/NAME@best would never exist, after every trial had run. One
    # rule for sweeps and ablations: they share one name space (an Optuna study each)
    if any(c in name for c in REGISTRY_FORBIDS) or name == "." or name.startswith(".."):
        raise ConfigError(
            f"{path}: name = {name[:40]!r} is not allowed; expected no '/', ':' or '%', and "
            "not '.' or a leading '..' (a sweep registers its best model under the name, and "
            "MLflow's model registry refuses them): use '-' or '_' instead"
        )
    profile = doc.get("profile")
    if profile is not None and profile != "auto" and profile not in PROFILES:
        raise ConfigError(
            f"{path}: profile = {profile!r} is not allowed; expected auto or one of "
            f"{', '.join(PROFILES)}"
        )
    profile = resolve_profile(profile)  # as --profile auto: d2l on CUDA, cpu otherwise
    objective = doc.get("objective", objective)
    if not isinstance(objective, str) or objective not in OBJECTIVES:  # a list is unhashable
        raise ConfigError(
            f"{path}: objective = {objective!r} is not allowed; expected one of "
            f"{', '.join(OBJECTIVES)}"
        )
    return name, profile, objective


def load_study(path: str, overrides: dict[str, Any] | None = None) -> Study:
    """The study file at path, validated; overrides are --set values over its tables."""

    doc = read_toml(path)
    objectives = parse_objectives(path, doc.get("objective", "best_val_acc"))
    trained = next(o for o in objectives if o in OBJECTIVES)
    name, profile, objective = header(path, doc | {"objective": trained}, TOP_KEYS, trained)
    n_trials = _typed(path, doc, "n_trials", int, "an integer >= 1")
    if n_trials < 1:
        raise ConfigError(f"{path}: n_trials = {n_trials} is not allowed; expected >= 1")
    base = shared_values(path, doc, overrides)
    raw = doc.get("params", {})
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{path}: [params] is empty: give at least one dotted key, e.g. "
            f'"train.lr" = {{ low = 1e-3, high = 0.3, log = true }}'
        )
    params = {k: param(path, k, v) for k, v in raw.items()}
    for key in params:  # a searched key fixed as well: the fixed value would be ignored
        if key in base:
            where = "--set" if key in (overrides or {}) else f"[{key.split('.')[0]}]"
            raise ConfigError(
                f'{path}: [params] "{key}" is searched, but {where} also sets {key} = '
                f"{base[key]!r}; remove one of the two"
            )
    study = Study(
        name,
        path,
        n_trials,
        base,
        params,
        _component(path, doc, "sampler", SAMPLERS, "tpe"),
        # Optuna cannot prune a multi-objective study: no pruner is its default
        _component(path, doc, "pruner", PRUNERS, "median" if len(objectives) == 1 else "none"),
        objective,
        profile,
        keep_models=keep_option(path, doc, "best"),
        objectives=objectives,
        constraints=parse_constraints(path, doc.get("constraints")),
        reference=parse_reference(path, doc.get("reference")),
    )
    study.base_config()  # the shared settings must be valid on their own
    check(study)  # objectives, [constraints], [reference] together
    if study.sampler["type"] == "grid" and any(
        p.kind not in ("categorical", "int") for p in params.values()
    ):
        raise ConfigError(
            f"{path}: [sampler] type = 'grid' needs choices or integer ranges for every param"
        )
    return study


def keep_option(path: str, doc: dict, default: str) -> str:
    keep = doc.get("keep_models", default)
    if keep not in KEEP_MODELS:
        raise ConfigError(
            f"{path}: keep_models = {keep!r} is not allowed; expected one of "
            f"{', '.join(map(repr, KEEP_MODELS))}"
        )
    return keep


def with_params(study: Study, values: dict[str, Any], source: str) -> Config:
    """The study's base config with one trial's sampled values (an ablation arm's overrides
    first, then the other values)."""
    values = dict(values)
    arm = values.pop("arm", None)
    overrides = study.arms[arm] if arm is not None else {}
    if arm in study.arm_lr:  # tuned for this arm (tuning.py)
        overrides = overrides | {"train.lr": study.arm_lr[arm]}
    return apply(study.base_config(), overrides | values, source)


def spec(study: Study) -> dict[str, Any]:
    """What `report NAME` needs without the study file, kept on the Optuna study."""
    return {
        "kind": study.kind,
        "path": study.path,
        "objective": study.objective,
        "objectives": study.objectives,
        "constraints": study.constraints,
        "reference": study.reference,
        "base": flatten(study.base_config()),
        "params": {k: dataclasses.asdict(p) for k, p in study.params.items()},
        "arms": study.arms,
        "baseline": study.baseline,
        "seeds": study.seeds,
        "final_eval": study.final_eval,
        "keep_models": study.keep_models,
        "per_arm": study.per_arm,
    }


def check(study: Study) -> None:
    """The combinations Optuna cannot run, refused before anything is written."""
    path, sampler, pruner = study.path, study.sampler["type"], study.pruner["type"]
    if is_multi(study) and pruner != "none":
        raise ConfigError(
            f"{path}: [pruner] type = {pruner!r} is not allowed with objective = "
            f"{study.objectives!r}: Optuna cannot prune a multi-objective study; use "
            'type = "none" (a diverged trial still stops at once), or one objective with '
            '[constraints] such as "macs" = { max = 200e6 }, which prunes as usual'
        )
    if is_multi(study) and sampler not in MULTI_SAMPLERS:
        raise ConfigError(
            f"{path}: [sampler] type = {sampler!r} is single-objective; for objective = "
            f"{study.objectives!r} use one of {', '.join(MULTI_SAMPLERS)}"
        )
    if study.constraints and sampler != "tpe":
        raise ConfigError(
            f"{path}: [constraints] needs [sampler] type = 'tpe', but got {sampler!r}: an "
            "over-budget sample ends untrained (pruned), and only TPE learns from such trials "
            "(NSGA-II and GP read complete trials only; random, cmaes and grid ignore constraints)"
        )


def is_multi(study: Study) -> bool:
    return len(study.objectives) > 1


def directions(study: Study) -> list[str]:
    names = study.objectives or [study.objective]
    return [OBJECTIVES[n][1] if n in OBJECTIVES else SIZES[n] for n in names]


def values(study: Study, history: list[dict], size: dict) -> tuple[float, ...]:
    """A finished trial's objective values, in the study file's order."""
    out = []
    for name in study.objectives:
        if name in OBJECTIVES:
            metric, _, reduce = OBJECTIVES[name]
            out.append(float(reduce([h[metric] for h in history])))
        elif name == "epoch_time_s":
            out.append(sum(h["epoch_time_s"] for h in history) / len(history))
        else:
            out.append(float(size[name]))
    return tuple(out)
