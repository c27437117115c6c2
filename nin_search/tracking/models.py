"""Kept models: a trained NiN logged to its MLflow run, registered, found again and loaded back.

    model_id, size = log_model(result.model, cfg, data.input_size)   # inside an active run
    loaded = load("models:/nin-quick@best")  # or a run id, models:/NAME/3, models:/m-ID, runs:/

Each kept model is an MLflow model named "model" (pytorch flavour in torch.export's pt2 format,
whose loading runs no pickle), listed on its run and registrable, and inside it
`extra_files/nin_weights.pt`: a weights-only state dict with the resolved config, which this
module loads with torch.load(weights_only=True) and build_model(cfg.model). Files live under the
store's artifact root (mlruns/, git-ignored). Every mistake in finding or reading one is a
ConfigError naming what is wrong.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from torch import nn

from nin_search.engine.config import Config, ConfigError, apply, flatten
from nin_search.engine.errors import first_line
from nin_search.engine.model import build_model
from nin_search.stores.urls import mask
from nin_search.tracking.store import tracking_uri

WEIGHTS = "nin_weights.pt"  # the state dict and config, inside the MLflow model's extra_files/


FORMAT = "nin-search-weights/1"


ALIAS = "best"  # the registered model of a sweep points at its best trial by this alias


REFS = "a run id, models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID or runs:/RUN_ID/model"


@dataclass
class Loaded:
    model: nn.Module  # on the CPU, eval mode
    cfg: Config  # the resolved config it trained with
    input_size: int
    num_classes: int
    model_id: str
    run_id: str | None


def size_text(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**16 else f"{n / 2**10:.1f} KiB"


def _size(location: str, path: str | None = None) -> int:
    """Bytes under an artifact location, summed over its files."""
    repo = get_artifact_repository(location)
    return sum(
        _size(location, f.path) if f.is_dir else (f.file_size or 0)
        for f in repo.list_artifacts(path)
    )


def log_model(
    model: nn.Module, cfg: Config, input_size: int, num_classes: int = 10, tags: dict | None = None
) -> tuple[str, int]:
    """Log model to the active MLflow run; returns (model id, bytes on the store)."""
    blob = {
        "format": FORMAT,
        "config": flatten(cfg),
        "input_size": input_size,
        "num_classes": num_classes,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    # torch.export traces a CPU copy in NCHW: a channels_last trace exports with a warning, and
    # two example images keep the batch dimension dynamic (one would fix it at 1)
    cpu = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 1, input_size, input_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / WEIGHTS
        torch.save(blob, path)
        info = mlflow.pytorch.log_model(
            cpu,
            name="model",
            input_example=example.numpy(),
            extra_files=[str(path)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # none inferred
            serialization_format="pt2",
            tags=tags,
        )
    lm = mlflow.MlflowClient().get_logged_model(info.model_id)
    return info.model_id, _size(lm.artifact_location)


def delete_model(model_id: str) -> None:
    """Delete a logged model, its files and its run's evaluation/ (a trial's val evaluation)."""
    client = mlflow.MlflowClient()
    lm = client.get_logged_model(model_id)
    client.delete_logged_model(model_id)
    try:
        get_artifact_repository(lm.artifact_location).delete_artifacts()
        if lm.source_run_id:
            run_root = client.get_run(lm.source_run_id).info.artifact_uri
            get_artifact_repository(run_root).delete_artifacts("evaluation")
    except (OSError, MlflowException, NotImplementedError):
        pass  # a store that cannot delete files keeps them; the model is gone from MLflow


def live_models(experiment: str) -> list:
    """The experiment's logged models that are not deleted."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    client, out, token = mlflow.MlflowClient(), [], None
    while True:
        page = client.search_logged_models([exp.experiment_id], page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _model_of(mv) -> str:
    return mv.model_id or mv.source.removeprefix("models:/")


def _exists(client, model_id: str) -> bool:
    try:
        client.get_logged_model(model_id)
        return True
    except MlflowException:
        return False


def resolve(ref: str) -> tuple[str, str | None]:
    """(model id, run id) of a run id or model URI; ConfigError when there is none."""
    client = mlflow.MlflowClient()
    try:
        if ref.startswith("models:/") and ref[8:].startswith("m-") and "/" not in ref[8:]:
            model_id = ref[8:]
        elif ref.startswith("models:/"):
            # the alias follows the last '@': a study name may hold one
            name, at, alias = ref[8:].rpartition("@") if "@" in ref else (ref[8:], "", "")
            name, slash, version = name.partition("/") if not at else (name, "", "")
            if not name or not (alias or version):
                raise ConfigError(f"{ref!r}: expected {REFS}")
            mv = (
                client.get_model_version_by_alias(name, alias)
                if alias
                else client.get_model_version(name, version)
            )
            model_id = _model_of(mv)
        else:
            run_id, path = ref, "model"
            if ref.startswith("runs:/"):
                run_id, _, path = ref[6:].partition("/")
            elif "/" in ref or ":" in ref:
                raise ConfigError(f"{ref!r}: expected {REFS}")
            run = client.get_run(run_id)
            _check_live(ref, run)
            ids = [o.model_id for o in run.outputs.model_outputs] if run.outputs else []
            names = {m: client.get_logged_model(m).name for m in ids if _exists(client, m)}
            live = [m for m, name in names.items() if name == path]
            if not live and names:  # the model is there, only the path after the run id is wrong
                at = ", ".join(f"runs:/{run_id}/{n}" for n in sorted(set(names.values())))
                raise ConfigError(
                    f"{ref!r}: run {run_id} has no model {path!r}; its model is {at}"
                )
            if not live:
                why = "its model was deleted (keep_models)" if ids else "it has no logged model"
                raise ConfigError(f"run {run_id}: {why}; `train` logs one, sweeps keep_models")
            return live[-1], run_id
        run_id = client.get_logged_model(model_id).source_run_id
        if run_id:
            _check_live(ref, client.get_run(run_id))
        return model_id, run_id
    except MlflowException as e:
        raise ConfigError(
            f"{ref!r}: not found in {mask(tracking_uri())}: {first_line(e, 200)}"
        ) from None


def _check_live(ref: str, run) -> None:
    """A deleted run is refused: evaluate would write its files into it (and `mlflow gc` may
    remove it and its model at any moment)."""
    if run.info.lifecycle_stage == "deleted":
        rid = run.info.run_id
        raise ConfigError(
            f"{ref!r}: run {rid} is deleted; restore it first with: MLFLOW_TRACKING_URI="
            f"{mask(tracking_uri())} mlflow runs restore --run-id {rid}"
        )


def load(ref: str) -> Loaded:
    """The kept model behind ref with its config; ConfigError names anything wrong."""
    model_id, run_id = resolve(ref)
    client = mlflow.MlflowClient()
    repo = get_artifact_repository(client.get_logged_model(model_id).artifact_location)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            meta = Model.load(repo.download_artifacts("MLmodel", tmp))
        except (MlflowException, OSError) as e:
            raise ConfigError(f"{ref}: not an MLflow model ({first_line(e, 200)})") from None
        extra = meta.flavors.get("pytorch", {}).get("extra_files", [])
        if {"path": f"extra_files/{WEIGHTS}"} not in extra:
            raise ConfigError(
                f"{ref}: not a nin-search model (flavors {', '.join(meta.flavors)}, no "
                f"extra_files/{WEIGHTS}); evaluate takes models logged by train or sweep"
            )
        try:
            path = repo.download_artifacts(f"extra_files/{WEIGHTS}", tmp)
        except (MlflowException, OSError) as e:
            raise ConfigError(
                f"{ref}: its {WEIGHTS} cannot be read ({first_line(e, 200)})"
            ) from None
        return _read(path, ref, model_id, run_id)


def _read(path: str, ref: str, model_id: str, run_id: str | None) -> Loaded:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle opcode, disallowed global, ...
        raise ConfigError(
            f"{ref}: {WEIGHTS} is corrupt or truncated ({first_line(e, 200)})"
        ) from None
    keys = {"config", "input_size", "num_classes", "state_dict"}
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not keys <= set(blob):
        raise ConfigError(f"{ref}: {WEIGHTS} is not a {FORMAT} file")
    bad = f"{ref}: its config no longer validates"
    try:
        cfg = apply(Config(), blob["config"], bad)  # "REF: its config ...: key = value ..."
        model = build_model(cfg.model, blob["input_size"], 1, blob["num_classes"])
    except ConfigError as e:
        raise (e if str(e).startswith(bad) else ConfigError(f"{bad}: {e}")) from None
    except (AttributeError, TypeError) as e:
        raise ConfigError(f"{bad} ({first_line(e, 200)})") from None
    try:
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{ref}: its weights do not fit the model its config builds ({first_line(e, 200)})"
        ) from None
    return Loaded(model.eval(), cfg, blob["input_size"], blob["num_classes"], model_id, run_id)
