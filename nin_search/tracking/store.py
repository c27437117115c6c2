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

from nin_search.engine.config import Config, ConfigError, config_hash
from nin_search.engine.errors import first_line
from nin_search.stores.urls import check_db_url, mask

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"


ARTIFACTS = Path("mlruns/artifacts")


KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def setup_tracking() -> str:
    """Point MLflow at the store (creating mlruns/ for the default) and quiet its startup logs."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # it logs every failed write with its SQL and traceback, then raises it: store_failure says
    # it in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in logs
    uri = tracking_uri()
    if uri == DEFAULT_URI:
        Path("mlruns").mkdir(exist_ok=True)
        # MLflow caches its store per URI string for the life of the process: the relative
        # default would stay bound to the first working directory it was used in
        mlflow.set_tracking_uri(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
        # ... and set_tracking_uri writes $MLFLOW_TRACKING_URI: a later call in this process
        # (a notebook that moved to another folder) would read it as the user's and stay in the
        # first folder's store. The default is this folder's, every time
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        mlflow.set_tracking_uri(uri)
    return uri


def check_tracking(experiment: str | None = None) -> None:
    """The MLflow store can be used and the experiment name is one MLflow takes, found without
    writing anything: a command that exits 2 leaves no mlflow.db, optuna.db or mlruns/.

    An SQLite file must be a database (not random bytes or a truncated copy) and its folder one
    that can be made; a server must answer within PROBE_S (MLflow itself retries for ~2 min)."""
    if experiment is not None and not 0 < len(experiment.strip()) <= 500:
        raise ConfigError(
            f"--experiment {experiment[:40]!r}: expected a name of 1 to 500 characters"
        )
    uri = tracking_uri()
    bad = f"MLflow store {mask(uri)} cannot be used"
    if uri.startswith(("http://", "https://")):
        _probe(uri, bad)
        return
    if uri.split(":")[0].split("+")[0] in ("postgresql", "mysql", "mssql"):
        _probe_db(uri, bad)
        return
    if not uri.startswith("sqlite:"):
        return  # file:, databricks...: MLflow's own errors (experiment_id)
    try:
        db = make_url(uri).database
    except Exception as e:
        raise ConfigError(f"{bad}: {e}") from None
    if not db or db == ":memory:":
        return
    path = Path(db)
    if path.exists():
        _check_sqlite(path, bad)
        return
    above = next((q for q in path.parents if q.exists()), Path("."))
    if not above.is_dir():
        raise ConfigError(f"{bad}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ConfigError(f"{bad}: {above} is not writable")


PROBE_S = 5.0  # seconds a tracking server has to accept a connection


def _probe(uri: str, bad: str) -> None:
    """Any HTTP answer from the server's /health within PROBE_S, an error status included
    (a proxy's 401 is still an answer); a refused, unresolvable or silent host is not."""
    import ssl
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    u = urlsplit(uri)
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_S).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as e:  # URLError, timeouts, a malformed URL
        reason = getattr(e, "reason", e)
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        if isinstance(reason, ssl.SSLError) and insecure:
            return  # it answered, and MLflow is told not to verify its certificate
        why = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        raise ConfigError(
            f"{bad}: {u.netloc} gave no answer within {PROBE_S:g} s ({why})"
        ) from None


def _probe_db(uri: str, bad: str) -> None:
    """A database server that accepts a connection within PROBE_S: MLflow itself retries an
    unreachable one 10 times over ~100 s before its traceback."""
    import sqlalchemy

    check_db_url(uri, "MLflow store")
    u = make_url(uri)
    # a silent host: the driver's own timeout (a refused port fails at once anyway), under
    # the name each driver takes; the user's own in the URL wins
    option = {"pg8000": "timeout", "pyodbc": "timeout"}.get(u.get_driver_name(), "connect_timeout")
    wait = {} if option in u.query else {option: int(PROBE_S)}
    engine = sqlalchemy.create_engine(u, poolclass=sqlalchemy.pool.NullPool, connect_args=wait)
    try:
        engine.connect().close()
    except Exception as e:  # refused, unresolvable, silent, a bad password or database
        first = first_line(e.__cause__ or e)
        if u.password:  # drivers should not echo it; make sure
            first = first.replace(str(u.password), "***")
        raise ConfigError(f"{bad}: {first[:200]}") from None
    finally:
        engine.dispose()


def _check_sqlite(path: Path, bad: str) -> None:
    import sqlite3

    if not path.is_file():
        raise ConfigError(f"{bad}: {path} is not a file")
    fix = "move it aside or point MLFLOW_TRACKING_URI elsewhere"
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
        size = path.stat().st_size
    except OSError as e:
        raise ConfigError(f"{bad}: {path} cannot be read ({e.strerror})") from None
    if not size:
        return  # an empty file: SQLite and MLflow make a new database in it
    if not head.startswith(b"SQLite format 3\x00") or len(head) < 100:
        raise ConfigError(f"{bad}: {path} is not an SQLite database; {fix}")
    # the header's page count against the file: a truncated copy (without a -wal beside it,
    # which holds pages of its own) is missing pages MLflow fails on half-way through a run
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    if size < page * pages and not Path(f"{path}-wal").exists():
        raise ConfigError(
            f"{bad}: {path} is truncated ({size:,} of {page * pages:,} bytes); {fix}"
        )
    try:  # read-only: a file that is not a database is reported, never rewritten
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:
        # locked, or a hot journal a killed writer left (read-only cannot roll it back): a
        # database all the same, which MLflow's own connection recovers
        return
    except sqlite3.DatabaseError as e:
        raise ConfigError(
            f"{bad}: {path} is not a readable SQLite database ({e}); {fix}"
        ) from None


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
    except (sqlalchemy.exc.SQLAlchemyError, mlflow.exceptions.MlflowException, OSError) as e:
        first = first_line(e)
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
        "nin.torch_threads": str(torch.get_num_threads()),  # epoch times depend on it
        "nin.git_commit": git_commit(),
        "nin.config_hash": config_hash(cfg),
    }


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store, bound to 127.0.0.1; for a tracking
    server, its own address (it serves the UI, and is no backend store of `mlflow server`)."""
    if uri.startswith(("http://", "https://")):
        return mask(uri)
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

    if uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"MLFLOW_TRACKING_URI is the tracking server {mask(uri)}, which serves the UI "
            "itself: open that address"
        )
    args = [sys.executable, "-m", "mlflow", "server"]
    if uri == DEFAULT_URI:
        args += ["--default-artifact-root", ARTIFACTS.resolve().as_uri()]
    env = dict(os.environ) | {"MLFLOW_BACKEND_STORE_URI": uri}
    return args + ["--host", host, "--port", str(port)], env
