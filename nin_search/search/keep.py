"""Which trial models a sweep keeps in MLflow (the study file's keep_models): a trial's model
is logged when it beats every complete trial (the kept ones it beats are deleted), and at the
end the best one is registered as models:/NAME@best."""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException
from torch import nn

from nin_search.engine.config import Config
from nin_search.engine.errors import first_line
from nin_search.spec.study import OBJECTIVES, Study
from nin_search.tracking.models import (
    ALIAS,
    _exists,
    _model_of,
    delete_model,
    live_models,
    log_model,
    size_text,
)


def _beats(ostudy, value: float, direction: str) -> bool:
    try:
        best = ostudy.best_value
    except ValueError:  # no complete trial yet
        return True
    except RuntimeError:  # several objectives: keep it unless a complete trial dominates it
        from nin_search.search.budgets import dominated

        return not dominated(ostudy, value)
    return value > best if direction == "maximize" else value < best


def keep_trial(study: Study, trial, value: float, model: nn.Module, cfg: Config, data) -> None:
    """A complete trial's model, kept as study.keep_models says: 'all', or 'best' (only when it
    beats every complete trial; the kept models it beats are deleted). Its val evaluation (the
    confusion matrix and the gallery) goes to its run. A failure here costs the trial nothing."""
    direction = OBJECTIVES[study.objective][1]
    if study.keep_models == "best" and not _beats(trial.study, value, direction):
        return
    try:
        from nin_search.engine.evaluate import evaluate_split
        from nin_search.tracking.evaluate import log_evaluation

        tags = {"nin.study": study.name, "nin.trial": str(trial.number), "nin.value": repr(value)}
        model_id, size = log_model(model, cfg, data.input_size, data.num_classes, tags)
        trial.set_user_attr("mlflow_model_id", model_id)
        trial.set_user_attr("model_bytes", size)
        run_id = mlflow.active_run().info.run_id
        log_evaluation(evaluate_split(model, data, "val", cfg.train.precision), run_id)
        single = isinstance(value, int | float)  # a multi-objective value has no "worse"
        dropped = _drop_worse(study, value, direction, model_id) if single else 0
        note = f"; {dropped} worse kept model(s) deleted" if dropped else ""
        print(f"trial {trial.number}: model kept as models:/{model_id} ({size_text(size)}){note}")
    except (MlflowException, OSError, RuntimeError, ValueError) as e:
        print(f"trial {trial.number}: model not kept: {first_line(e, 200)}")


def _drop_worse(study: Study, value: float, direction: str, keep: str) -> int:
    """With keep_models = 'best': delete the study's kept models worse than value. Only worse
    ones: a worker finishing a better trial at the same moment keeps its own."""
    if study.keep_models != "best":
        return 0
    dropped = 0
    for m in live_models(study.name):
        if m.model_id == keep or m.tags.get("nin.study") != study.name:
            continue
        try:
            v = float(m.tags.get("nin.value", "nan"))
        except ValueError:
            continue
        if not (v > value if direction == "maximize" else v < value) and v != value:
            delete_model(m.model_id)
            dropped += 1
    return dropped


def register_best(study: Study, ostudy) -> None:
    """Register the sweep's best trial's kept model under the study's name with alias 'best';
    a better trial found since moves the alias (and, with keep_models = 'best', the versions
    whose models were deleted are dropped)."""
    try:
        best = ostudy.best_trial
    except (ValueError, RuntimeError):
        return
    model_id = best.user_attrs.get("mlflow_model_id")
    if not model_id:
        print(f"registry: best trial {best.number} kept no model (keep_models); not registered")
        return
    client, name = mlflow.MlflowClient(), study.name
    try:
        client.get_logged_model(model_id)
    except MlflowException:
        print(f"registry: the model of best trial {best.number} was deleted; not registered")
        return
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description=f"nin-search sweep {name!r}")
        try:
            current = client.get_model_version_by_alias(name, ALIAS)
        except MlflowException:
            current = None
        if current is not None and _model_of(current) == model_id:
            print(f"registry: models:/{name}@{ALIAS} is version {current.version}, unchanged")
            return
        mv = client.create_model_version(
            name,
            f"models:/{model_id}",
            run_id=best.user_attrs.get("mlflow_run_id"),
            tags={"nin.trial": str(best.number)},
            await_creation_for=0,
            model_id=model_id,
        )
        client.set_registered_model_alias(name, ALIAS, mv.version)
        if study.keep_models == "best":
            for v in client.search_model_versions(f"name = '{name}'"):
                if v.version != mv.version and not _exists(client, _model_of(v)):
                    client.delete_model_version(name, v.version)
    except MlflowException as e:
        print(f"registry: not registered ({first_line(e, 200)})")
        return
    moved = f", moved from version {current.version}" if current is not None else ""
    print(
        f"registry: models:/{name}@{ALIAS} -> version {mv.version} (trial {best.number}, "
        f"models:/{model_id}){moved}"
    )
