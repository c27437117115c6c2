"""MLflow plumbing: the store, experiments, run tags, and passwords kept out of logs.

uri = setup_tracking()                       # $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db
exp_id = experiment_id("nin-train")
with mlflow.start_run(experiment_id=exp_id, tags=run_tags(cfg)): ...
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from pathlib import Path

import mlflow
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from nin_search.config import Config, ConfigError, config_hash

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
ARTIFACTS = Path("mlruns/artifacts")
KIND = {"mlflow.experimentKind": "custom_model_development"}


SECRET_KEYS = {"password", "passwd", "pwd", "pass", "secret", "token"}  # query parameters


def mask(url: str) -> str:
    """The URL with any password replaced by ***, for printing and logging: user:password@
    and query parameters such as ?password=... SQLite URLs and plain paths hold no password
    and are returned as they are (a ':' or '@' in a path is part of the file's name)."""
    if url.startswith("sqlite:") or "://" not in url:
        return url
    try:
        u = make_url(url)
        query = {k: ("***" if k.lower() in SECRET_KEYS else v) for k, v in u.query.items()}
        shown = u.set(query=query).render_as_string(hide_password=True)
        return shown.replace("%2A%2A%2A", "***")  # the query part comes URL-encoded
    except Exception:  # not an SQLAlchemy URL (a file path, http://...): mask user:pass@ by hand
        head, sep, tail = url.rpartition("@")
        if sep and "://" in head and ":" in head.split("://", 1)[1]:
            scheme, cred = head.split("://", 1)
            return f"{scheme}://{cred.split(':', 1)[0]}:***@{tail}"
        return url


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def setup_tracking() -> str:
    """Point MLflow at the store (creating mlruns/ for the default) and quiet its startup logs."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in logs
    uri = tracking_uri()
    if uri == DEFAULT_URI:
        Path("mlruns").mkdir(exist_ok=True)
        # MLflow caches its store per URI string for the life of the process: the relative
        # default would stay bound to the first working directory it was used in
        mlflow.set_tracking_uri(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    else:
        mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """The experiment's id, created on first use with artifacts under mlruns/artifacts."""
    uri = tracking_uri()
    try:
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = ARTIFACTS.resolve().as_uri() if uri == DEFAULT_URI else None
        try:
            # the UI opens model-training experiments on their runs table (not the GenAI view)
            return mlflow.create_experiment(name, artifact_location=location, tags=KIND)
        except mlflow.exceptions.MlflowException:  # another process created it meanwhile
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id
    except (sqlalchemy.exc.OperationalError, mlflow.exceptions.MlflowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"MLflow store {mask(uri)} cannot be used: {first[:200]}") from None


@functools.cache  # the code this process runs was loaded at its start: ask git once
def git_commit() -> str:
    """The source tree's commit (with '+dirty' when it has changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        return sha + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(cfg: Config, device: str) -> dict[str, str]:
    import torch

    return {
        "nin.device": device,
        "nin.torch": torch.__version__,
        "nin.git_commit": git_commit(),
        "nin.config_hash": config_hash(cfg),
    }


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store, bound to 127.0.0.1."""
    return (
        "python -m nin_search ui"
        if uri == DEFAULT_URI
        else (f"mlflow server --backend-store-uri {mask(uri)} --host 127.0.0.1 --port 5000")
    )


def ui_args(uri: str, host: str = "127.0.0.1", port: int = 5000) -> tuple[list[str], dict]:
    """argv and environment of `mlflow server` on this store; artifacts of new experiments go
    to mlruns/. The store's URL travels in $MLFLOW_BACKEND_STORE_URI, never on the command
    line, where `ps` shows it (and its password) to every user of the machine."""
    import sys

    args = [sys.executable, "-m", "mlflow", "server"]
    if uri == DEFAULT_URI:
        args += ["--default-artifact-root", ARTIFACTS.resolve().as_uri()]
    env = dict(os.environ) | {"MLFLOW_BACKEND_STORE_URI": uri}
    return args + ["--host", host, "--port", str(port)], env
