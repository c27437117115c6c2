"""Workers on several machines, as the README's recipe runs them: each worker in its own empty
working directory (no shared mlruns/, no shared lock file), one PostgreSQL study, and a real
`mlflow server` on 127.0.0.1 with a PostgreSQL backend store and --serve-artifacts. Faults in
the same set-up: a worker SIGKILLed mid-trial, the MLflow server restarted mid-sweep."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pytest
import sqlalchemy
from builders import _env, ablation_text, nin_here, write_study
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from nin_search.search.storage import open_storage
from nin_search.stores.locks import StoreLock

N_TRIALS = 4
EPOCHS = 8  # a trial of a few seconds: long enough to be killed or to outlive a restart


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """A TCP relay on 127.0.0.1 in front of the test PostgreSQL server. outage(s) is what a
    PostgreSQL restart looks like from every client: each connection is cut, new ones are
    refused for s seconds, then the same port answers again with the data intact (the shared
    test server itself is never restarted: other test runs may be using it)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.port = upstream, free_port()
        self.conns: list[socket.socket] = []
        self.guard = threading.Lock()
        self._listen()

    def _listen(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(self.upstream)
            except OSError:
                return
            with self.guard:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def outage(self, seconds: float) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self.server.close()
        with self.guard:
            cut, self.conns = self.conns, []
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        time.sleep(seconds)
        self._listen()


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a PostgreSQL backend and proxied artifacts. The store's
    URL (and its password) goes in $MLFLOW_BACKEND_STORE_URI, not on the command line."""

    def __init__(self, backend: str, artifacts: Path) -> None:
        self.backend, self.artifacts, self.port = backend, artifacts, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", "1", "--serve-artifacts"]
        cmd += ["--artifacts-destination", str(self.artifacts)]
        env = _env({"MLFLOW_BACKEND_STORE_URI": self.backend})
        log = open(self.artifacts.parent / "server.log", "a")  # noqa: SIM115  (the server's)
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.artifacts.parent / "server.log").read_text()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.3)
        raise AssertionError("mlflow server did not answer /health within 120 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def pg(pg_url: str) -> SimpleNamespace:
    """The test PostgreSQL server, reached by every worker and by MLflow through a Proxy."""
    u = make_url(pg_url)
    proxy = Proxy((u.host, u.port or 5432))
    return SimpleNamespace(
        direct=pg_url,
        proxy=proxy,
        url=u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory, pg: SimpleNamespace):
    """A fresh MLflow database on the test PostgreSQL server, and the server in front of it."""
    db = f"mlflow_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(pg.direct, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{db}"'))
    backend = make_url(pg.url).set(database=db).render_as_string(hide_password=False)
    folder = tmp_path_factory.mktemp("mlflow-server")
    srv = MlflowServer(backend, folder / "artifacts")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def machine(tmp_path_factory, label: str) -> Path:
    """An empty working directory: one 'machine'."""
    return tmp_path_factory.mktemp(label)


def worker(args: list[str], cwd: Path, pg: str, server: MlflowServer) -> subprocess.Popen:
    """The README's worker command, with the storage URL in $NIN_SEARCH_STORAGE."""
    env = {
        "NIN_SEARCH_STORAGE": pg,
        "MLFLOW_TRACKING_URI": server.url,
        "NIN_SEARCH_HEARTBEAT_S": "1",  # a dead worker's trial is stale after 3 s
    }
    return subprocess.Popen(
        [sys.executable, "-m", "nin_search", *args],
        cwd=cwd,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def running_in(study: optuna.Study, pid: int) -> optuna.trial.FrozenTrial | None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.system_attrs.get("nin_worker", "").endswith(f":{pid}") and (
            "mlflow_run_id" in t.user_attrs
        ):
            return t
    return None


def spanning(trials, window: tuple[float, float]) -> list:
    """The complete trials that started before a fault and ended after it was over."""
    down, up = window
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.datetime_start.timestamp() < down < up < t.datetime_complete.timestamp()
    ]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, data: Path, pg: SimpleNamespace, server: MlflowServer):
    """Three worker machines on one sweep; one is SIGKILLed mid-trial, then the MLflow server
    is restarted, then PostgreSQL is cut off for a while, all while the other two train; then
    `report` from a fourth machine."""
    name = f"fleet-{uuid.uuid4().hex[:12]}"
    dirs = [machine(tmp_path_factory, f"m{i}") for i in range(3)]
    for d in dirs:
        write_study(d, name, data, n_trials=N_TRIALS, settings={"train.epochs": EPOCHS})
    try:
        procs = [worker(["sweep", "study.toml"], d, pg.url, server) for d in dirs]
        victim = procs[0]
        deadline = time.monotonic() + 180
        killed = None
        # one storage for the whole poll: a new one every 0.2 s kept ~70 idle connections
        # open in this process ('too many clients already' at PostgreSQL's default 100)
        with StoreLock(pg.direct, key="nin-search schema"):  # as the workers create tables
            polling = optuna.storages.RDBStorage(pg.direct)
        while killed is None and time.monotonic() < deadline:
            with contextlib.suppress(KeyError):  # the study is not created yet
                study = optuna.load_study(study_name=name, storage=polling)
                killed = running_in(study, victim.pid)
            time.sleep(0.2)
        polling.engine.dispose()
        assert killed is not None, "the first worker never started a trial"
        victim.kill()  # SIGKILL mid-trial: no cleanup at all
        victim.communicate()
        mlflow_down = time.time()
        server.stop()  # the MLflow server goes away while the other two train ...
        time.sleep(1)
        server.start()  # ... and comes back on the same port
        pg_down = mlflow_up = time.time()
        pg.proxy.outage(4)  # then PostgreSQL: every connection cut, none for 4 s
        pg_up = time.time()
        outs = [p.communicate(timeout=600) for p in procs[1:]]
        rep = nin_here(  # in this process: a machine is its own working directory here
            "report",
            name,
            cwd=machine(tmp_path_factory, "m3"),
            env={"NIN_SEARCH_STORAGE": pg.url, "MLFLOW_TRACKING_URI": server.url},
        )
        study = optuna.load_study(study_name=name, storage=pg.direct)
        yield SimpleNamespace(
            name=name,
            codes=[p.returncode for p in procs[1:]],
            out="".join(o for o, _ in outs),
            err="".join(e for _, e in outs),
            report=rep,
            trials=study.get_trials(deepcopy=False),
            parent=study.user_attrs.get("mlflow_parent_run_id"),
            killed=killed.number,
            victim=victim.pid,
            mlflow_window=(mlflow_down, mlflow_up),
            pg_window=(pg_down, pg_up),
            client=mlflow.MlflowClient(tracking_uri=server.url),
            dirs=dirs,
            artifacts=server.artifacts,
        )
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=pg.direct)


def test_fleet_workers_survive_the_faults_without_a_traceback(fleet):
    # the two surviving workers end cleanly, through a dead peer and two server outages
    assert fleet.codes == [0, 0], fleet.err[-3000:]
    assert "Traceback" not in fleet.err


def test_fleet_ends_with_exactly_n_trials_finished_and_nothing_running(fleet):
    states = [t.state for t in fleet.trials]
    # n_trials complete, the one dead trial failed, none running, waiting or lost
    assert states.count(TrialState.COMPLETE) == N_TRIALS, states
    assert states.count(TrialState.FAIL) == 1 and len(states) == N_TRIALS + 1


def test_fleet_killed_trial_is_retried_once_on_another_machine(fleet):
    by_number = {t.number: t for t in fleet.trials}
    retries = [t for t in fleet.trials if t.system_attrs.get("failed_trial") == fleet.killed]
    # the dead trial failed, and one retry with its params finished in another worker
    assert by_number[fleet.killed].state == TrialState.FAIL
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == by_number[fleet.killed].params
    assert not retries[0].system_attrs["nin_worker"].endswith(f":{fleet.victim}")


def test_fleet_has_one_parent_and_one_child_per_trial(fleet):
    runs = fleet.client.search_runs(
        [fleet.client.get_experiment_by_name(fleet.name).experiment_id], max_results=100
    )
    parents = [r for r in runs if r.data.tags.get("nin.role") == "study"]
    kids = [r for r in runs if r.data.tags.get("nin.role") != "study"]
    # one parent run for three machines, and a child for every trial (the dead one too)
    assert [r.info.run_id for r in parents] == [fleet.parent]
    assert sorted(r.info.run_id for r in kids) == sorted(
        t.user_attrs["mlflow_run_id"] for t in fleet.trials
    )
    assert {r.data.tags["mlflow.parentRunId"] for r in kids} == {fleet.parent}
    # nothing is left RUNNING; the dead trial's run was ended FAILED by a live worker
    assert "RUNNING" not in {r.info.status for r in runs}
    dead = next(t for t in fleet.trials if t.number == fleet.killed)
    assert fleet.client.get_run(dead.user_attrs["mlflow_run_id"]).info.status == "FAILED"


def test_fleet_trains_through_an_mlflow_restart_and_loses_no_metric(fleet):
    # at least one trial ran while the server was down and up again ...
    assert spanning(fleet.trials, fleet.mlflow_window), fleet.mlflow_window
    for t in fleet.trials:
        if t.state == TrialState.COMPLETE:
            history = fleet.client.get_metric_history(t.user_attrs["mlflow_run_id"], "val_acc")
            # ... and no trial lost a metric: one val_acc per epoch
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), t.number


def test_fleet_trains_through_a_postgresql_outage(fleet):
    # a trial ran across the outage and finished (the exact counts are checked above)
    assert spanning(fleet.trials, fleet.pg_window), fleet.pg_window


def test_storage_call_during_a_postgresql_outage_waits_and_succeeds(pg, capfd):
    storage = open_storage(pg.url)
    name = f"outage-{uuid.uuid4().hex[:12]}"
    study = optuna.create_study(study_name=name, storage=storage)
    study.enqueue_trial({"x": 1.0})
    try:
        cut = threading.Thread(target=pg.proxy.outage, args=(3,))
        cut.start()
        time.sleep(0.5)  # the connections are cut and no new one is taken
        start = time.monotonic()
        trials = storage.get_all_trials(study._study_id)
        waited = time.monotonic() - start
        cut.join()
        # the call waited for the server instead of failing, and then read the right trial
        assert waited > 2.0, waited
        assert [t.state for t in trials] == [TrialState.WAITING]
        err = capfd.readouterr().err
        # one line when the connection was lost, one when it came back, no password
        assert "connection lost" in err and "reconnected after" in err, err
        assert make_url(pg.url).password not in err
    finally:
        optuna.delete_study(study_name=name, storage=pg.direct)


def test_fleet_report_artifacts_are_uploaded_through_the_server(fleet):
    # `report` from a fourth machine logs its files to the parent run, through the server
    assert fleet.report.returncode == 0, fleet.report.stderr[-2000:]
    names = {Path(a.path).name for a in fleet.client.list_artifacts(fleet.parent, "report")}
    assert {"trials.csv", "best_config.toml", "index.html"} <= names, names
    # the server stored them under its --artifacts-destination; no machine kept a local store
    assert list(fleet.artifacts.rglob("trials.csv")), "not under --artifacts-destination"
    assert not any((d / "mlruns").exists() for d in fleet.dirs)


# --- an ablation on the same set-up ------------------------------------------------------


@pytest.fixture(scope="module")
def fleet_ablation(tmp_path_factory, data: Path, pg: SimpleNamespace, server: MlflowServer):
    """Three machines on a 2-arm x 2-seed ablation: more workers than free cells at the end,
    so two of them race for the same last free cell."""
    name = f"fleet-abl-{uuid.uuid4().hex[:12]}"
    dirs = [machine(tmp_path_factory, f"a{i}") for i in range(3)]
    for d in dirs:
        (d / "abl.toml").write_text(ablation_text(name, data))
    try:
        procs = [worker(["ablate", "abl.toml"], d, pg.url, server) for d in dirs]
        outs = [p.communicate(timeout=600) for p in procs]
        study = optuna.load_study(study_name=name, storage=pg.direct)
        yield SimpleNamespace(
            name=name,
            codes=[p.returncode for p in procs],
            err="".join(e for _, e in outs),
            trials=study.get_trials(deepcopy=False),
            parent=study.user_attrs.get("mlflow_parent_run_id"),
            client=mlflow.MlflowClient(tracking_uri=server.url),
        )
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=pg.direct)


def test_fleet_ablation_runs_every_cell_exactly_once(fleet_ablation):
    assert fleet_ablation.codes == [0, 0, 0], fleet_ablation.err[-3000:]
    cells = sorted((t.params["arm"], t.params["train.seed"]) for t in fleet_ablation.trials)
    # four cells, four trials, all complete: no cell twice, no 'no free cell' failure
    assert cells == [("fc", 0), ("fc", 1), ("gap", 0), ("gap", 1)]
    assert {t.state for t in fleet_ablation.trials} == {TrialState.COMPLETE}


def test_fleet_ablation_has_one_parent_and_a_child_per_cell(fleet_ablation):
    client = fleet_ablation.client
    runs = client.search_runs([client.get_experiment_by_name(fleet_ablation.name).experiment_id])
    parents = [r for r in runs if r.data.tags.get("nin.role") == "study"]
    kids = [r for r in runs if r.data.tags.get("nin.role") != "study"]
    # one parent, not one per machine, and the children are not split between parents
    assert [r.info.run_id for r in parents] == [fleet_ablation.parent]
    assert len(kids) == 4 and {r.data.tags["mlflow.parentRunId"] for r in kids} == {
        fleet_ablation.parent
    }
    # each machine's `ablate` logged the report to that parent, through the server
    names = {Path(a.path).name for a in client.list_artifacts(fleet_ablation.parent, "report")}
    assert "summary.csv" in names, names


def test_no_password_in_any_worker_output(fleet, fleet_ablation, pg_url: str):
    password = make_url(pg_url).password
    # the storage URL's password is never printed unmasked
    assert password not in fleet.out + fleet.err + fleet_ablation.err
    assert password not in fleet.report.stdout + fleet.report.stderr
