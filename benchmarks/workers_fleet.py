"""Several workers through PostgreSQL and an MLflow server, against one worker, with faults.

    NIN_SEARCH_TEST_PG_URL=$(bash .ci/postgres.sh) \
        .venv/bin/python benchmarks/workers_fleet.py [--trials 12] [--epochs 4] [--workers 4]

The set-up of tests/search/test_machines.py (and of README's "Workers on other machines"): a fresh
`mlflow server` on 127.0.0.1 with a PostgreSQL backend store and --serve-artifacts, the Optuna
study on the same PostgreSQL server, each worker in its own empty working directory. One tiny
study (tests/builders.py's STUDY_TINY, on synthetic 16 px images) runs three times under new
names: on 1 worker; on --workers workers; on --workers workers while faults are injected (one
worker SIGKILLed mid-trial, the MLflow server stopped and started again, PostgreSQL cut off for
4 s through a TCP relay, as a restart looks to its clients). Prints per run: finished trials
against the target (lost: short of it; duplicated: beyond it), failed trials, wall time, and the
tracking cost per epoch (MLflow log_metrics over HTTP plus Optuna report/should_prune on
PostgreSQL, with each run's setup spread over its epochs: trial user attrs tracking_s / epochs);
then what the faults cost in wall time against the fault-free run.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import conftest  # noqa: E402  (the tests' synthetic data)
from test_machines import MlflowServer, Proxy  # noqa: E402
from test_sweep import _env, write_study  # noqa: E402

BEAT_S = 2  # NIN_SEARCH_HEARTBEAT_S for the workers: a dead worker's trial is stale after 6 s


def squares_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", 256, 0), ("t10k", 16, 1)):
        x, y = conftest.squares(n, seed)
        conftest.write_idx(folder / f"{prefix}-images-idx3-ubyte", x)
        conftest.write_idx(folder / f"{prefix}-labels-idx1-ubyte", y)
    return folder


def start_worker(cwd: Path, storage: str, server: MlflowServer) -> subprocess.Popen:
    env = {
        "NIN_SEARCH_STORAGE": storage,
        "MLFLOW_TRACKING_URI": server.url,
        "NIN_SEARCH_HEARTBEAT_S": str(BEAT_S),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "nin_search", "sweep", "study.toml"],
        cwd=cwd,
        env=_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def running_trial_of(name: str, direct: str, pid: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError):
            study = optuna.load_study(study_name=name, storage=direct)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.system_attrs.get("nin_worker", "").endswith(f":{pid}"):
                    return t.number
        time.sleep(0.2)
    raise RuntimeError("the first worker never started a trial")


def run(args, k: int, faults: bool, root: Path, data: Path, pg, server, epochs: int) -> dict:
    name = f"bench-{k}{'-faults' if faults else ''}-{uuid.uuid4().hex[:8]}"
    dirs = [root / name / f"m{i}" for i in range(k)]
    for d in dirs:
        d.mkdir(parents=True)
        write_study(d, name, data, n_trials=args.trials, settings={"train.epochs": epochs})
    costs = {}
    start = time.monotonic()
    procs = [start_worker(d, pg.url, server) for d in dirs]
    if faults:
        running_trial_of(name, pg.direct, procs[0].pid, time.monotonic() + 300)
        procs[0].kill()
        t = time.monotonic()
        server.stop()
        time.sleep(1)
        server.start()
        costs["mlflow server down (s)"] = time.monotonic() - t
        t = time.monotonic()
        pg.proxy.outage(4)
        costs["postgresql cut off (s)"] = time.monotonic() - t
    errs = [p.communicate()[1] for p in procs]
    wall = time.monotonic() - start
    study = optuna.load_study(study_name=name, storage=pg.direct)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    n_epochs = sum(t.user_attrs.get("epochs", 0) for t in done)
    tracking = sum(t.user_attrs.get("tracking_s", 0.0) for t in done)
    result = {
        "workers": k,
        "epochs": epochs,
        "faults": faults,
        "finished": len(done),
        "lost": max(0, args.trials - len(done)),
        "duplicated": max(0, len(done) - args.trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "left running": sum(t.state == TrialState.RUNNING for t in trials),
        "wall_s": wall,
        "tracking_s_per_trial": tracking / max(len(done), 1),
        "epoch_s": sum(t.user_attrs.get("epoch_s", 0.0) for t in done) / max(n_epochs, 1),
        "tracebacks": sum("Traceback" in e for e in errs),
        **costs,
    }
    optuna.delete_study(study_name=name, storage=pg.direct)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pg", default=None, help="default: $NIN_SEARCH_TEST_PG_URL")
    args = parser.parse_args()
    import os

    direct = args.pg or os.environ["NIN_SEARCH_TEST_PG_URL"]
    u = make_url(direct)
    proxy = Proxy((u.host, u.port or 5432))
    relayed = u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    pg = argparse.Namespace(direct=direct, url=relayed, proxy=proxy)
    db = f"mlflow_bench_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(direct, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{db}"'))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = squares_data(root / "data")
        (root / "srv").mkdir()
        backend = make_url(relayed).set(database=db).render_as_string(hide_password=False)
        server = MlflowServer(backend, root / "srv" / "artifacts")
        server.start()
        try:
            e = args.epochs
            results = [
                run(args, 1, False, root, data, pg, server, e),
                run(args, 1, False, root, data, pg, server, 4 * e),  # per epoch: the slope
                run(args, args.workers, False, root, data, pg, server, e),
                run(args, args.workers, True, root, data, pg, server, e),
            ]
        finally:
            server.stop()
            with admin.connect() as c:
                c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    print(f"target {args.trials} trials of {args.epochs} epochs; heartbeat {BEAT_S} s")
    keys = list(dict.fromkeys(k for r in results for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        print("| " + " | ".join(cells) + " |")
    short, long = results[0], results[1]
    per_epoch = (long["tracking_s_per_trial"] - short["tracking_s_per_trial"]) / (3 * args.epochs)
    setup = short["tracking_s_per_trial"] - args.epochs * per_epoch
    print(
        f"tracking on 1 worker: {1000 * per_epoch:.1f} ms per epoch (log_metrics over HTTP, "
        f"report and should_prune on PostgreSQL) plus {1000 * setup:.0f} ms per trial (run "
        f"setup: start_run, tags, the full config as params)"
    )
    clean, hurt = results[2], results[3]
    print(
        f"faults cost {hurt['wall_s'] - clean['wall_s']:+.1f} s of wall time on {args.workers} "
        f"workers ({hurt['failed']} failed trial(s), each retried once)"
    )
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main()
