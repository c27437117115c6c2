"""Command line: parse, dispatch, and turn user mistakes into one line and exit code 2.

python -m nin_search summary --set data.resize=224
python -m nin_search train --profile quick --set train.lr=0.1
python -m nin_search lr-finder --profile quick
python -m nin_search sweep studies/quick.toml
python -m nin_search ablate studies/ablate_head.toml
python -m nin_search report studies/ablate_head.toml
python -m nin_search ui
python -m nin_search evaluate RUN_ID --split test
"""

from __future__ import annotations

import argparse
import logging
import sys

from nin_search.engine.config import ConfigError, load_config, resolve_profile

STORAGE_HELP = (
    "Optuna storage URL (default $NIN_SEARCH_STORAGE or sqlite:///mlruns/optuna.db); "
    "a .log path = journal file"
)


def _set_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides", help=help
    )


def _study_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    _set_option(p, "override the study's shared settings by dotted name")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # started by --workers
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)


def _common(p: argparse.ArgumentParser, profile_default: str | None) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML file with [model], [data], [train]")
    _set_option(p, "override one value by its dotted name, e.g. train.lr=0.1 (repeatable)")
    p.add_argument(
        "--profile",
        choices=("auto", "d2l", "quick", "cpu"),
        default=profile_default,
        help="d2l: 224 px, all data, 10 epochs; quick: 96 px, 10,000 images, 2 epochs "
        "(smoke test); cpu: the Lin 2013 NiN at 28 px, converged in minutes on 2 cores; "
        "auto: d2l on CUDA, cpu otherwise",
    )
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nin-search", description=__doc__.splitlines()[0])
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one NiN, tracked in MLflow")
    _common(p, "auto")
    p.add_argument(
        "--final-eval",
        action="store_true",
        help="also evaluate on the test set (never used for tuning)",
    )
    p.add_argument("--experiment", default="nin-train", help="MLflow experiment name")

    p = sub.add_parser("lr-finder", help="LR range test with suggestions, tracked in MLflow")
    _common(p, "auto")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where lr_finder.json and .html go (default reports/lr-finder/<time>/)",
    )
    p.add_argument("--experiment", default="nin-lr-finder", help="MLflow experiment name")

    p = sub.add_parser("sweep", help="an Optuna study, every trial an MLflow run")
    p.add_argument("study", metavar="STUDY.toml")
    p.add_argument("--n-trials", type=int, help="finished trials to reach (default: the file's)")
    p.add_argument("--timeout", help="stop starting trials after this long: 90m, 2h, 3600")
    _study_options(p)

    p = sub.add_parser("ablate", help="every arm x seed once, paired statistics, plots")
    p.add_argument("study", metavar="ABLATION.toml")
    p.add_argument("--seeds", type=int, help="number of seeds (default: the file's list)")
    p.add_argument(
        "--final-eval",
        action="store_true",
        help="also evaluate every run on the test set (reported, never used to choose)",
    )
    _study_options(p)

    p = sub.add_parser("report", help="plots, tables and best config of a sweep or ablation")
    p.add_argument("study", metavar="NAME_OR_STUDY.toml")
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--out", default="reports", help="reports go to OUT/<study>/ (default reports)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    p = sub.add_parser("ui", help="start the MLflow UI on this store (127.0.0.1)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    p = sub.add_parser("evaluate", help="a kept model: accuracy, confusion matrix, gallery")
    p.add_argument("model", metavar="RUN_ID|MODEL_URI", help="a run id or models:/NAME@best")
    p.add_argument("--split", choices=("test", "val"), default="test", help="default test")
    p.add_argument("--out", metavar="DIR", help="default reports/evaluate/<run>-<split>/")
    p.add_argument("--images", type=int, default=36, help="images in the gallery (default 36)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    p = sub.add_parser("summary", help="per-layer shapes, params, MACs, memory")
    _common(p, None)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    return ap


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _resolve(args: argparse.Namespace):
    profile = resolve_profile(args.profile, _cuda() if args.profile == "auto" else False)
    note = ""
    if args.profile == "auto":
        why = (
            "a CUDA device is available"
            if profile == "d2l"
            else "no CUDA device; the d2l profile takes hours on a CPU"
        )
        note = f"profile: {profile} (auto: {why})"
    elif profile:
        note = f"profile: {profile}"
    return load_config(args.config, args.overrides, profile), note


def _train(args: argparse.Namespace) -> int:
    from nin_search.tracking.runs import train_run

    cfg, note = _resolve(args)
    return train_run(cfg, args.experiment, args.final_eval, note)


def _lr_finder(args: argparse.Namespace) -> int:
    from nin_search.tracking.runs import lr_finder_run

    cfg, note = _resolve(args)
    finding, _ = lr_finder_run(cfg, args.out, args.experiment, note)
    return 0


def _summary(args: argparse.Namespace) -> int:
    from nin_search.engine.summary import format_summary, measure_cuda_peak, summarize

    cfg, _ = _resolve(args)
    s = summarize(cfg)
    if _cuda():
        s["memory"]["measured_train_peak_bytes"] = measure_cuda_peak(cfg)
    print(format_summary(s, args.format))
    return 0


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    import pandas as pd

    try:
        seconds = (
            float(text)
            if text.replace(".", "", 1).isdigit()
            else (pd.Timedelta(text).total_seconds())
        )
    except ValueError:
        seconds = -1
    if not 0 < seconds < float("inf"):  # nan and NaT compare False: refused too
        raise ConfigError(f"--timeout {text!r}: expected a positive duration like 90m, 2h, 3600")
    return seconds


def _sweep(args: argparse.Namespace) -> int:
    from nin_search.engine.config import parse_overrides
    from nin_search.engine.data import check_data
    from nin_search.engine.train import resolved
    from nin_search.search.storage import heartbeat_s, storage_url
    from nin_search.search.sweep import check_space, run_sweep
    from nin_search.spec.study import load_study
    from nin_search.tracking.store import check_tracking

    if args.workers < 1 or (args.n_trials is not None and args.n_trials < 1):
        raise ConfigError("--workers and --n-trials must be >= 1")
    study = load_study(args.study, parse_overrides(args.overrides))
    # exit 2 before anything is written: device and precision, the data, the MLflow store and
    # $NIN_SEARCH_HEARTBEAT_S (run_sweep makes mlruns/ before it opens the Optuna store)
    resolved(study.base_config())
    check_space(study)  # a search whose every sample the network cannot take
    check_data(study.base_config().data)
    check_tracking()
    heartbeat_s()
    url = storage_url(args.storage)
    # no --storage on the workers' command lines (ps shows them to every user): workers.spawn hands
    # the URL over in $NIN_SEARCH_STORAGE
    tail = ["sweep", args.study] + [f"--set={o}" for o in args.overrides]
    if args.n_trials:
        tail += ["--n-trials", str(args.n_trials)]
    if args.timeout:
        tail += ["--timeout", args.timeout]
    timeout = _duration(args.timeout)
    return run_sweep(study, url, args.n_trials, timeout, args.workers, tail, args.worker)


def _ablate(args: argparse.Namespace) -> int:
    from nin_search.engine.config import parse_overrides
    from nin_search.engine.data import check_data
    from nin_search.search.storage import heartbeat_s, storage_url
    from nin_search.search.sweep import run_sweep
    from nin_search.spec.ablation import check_arms, load_ablation
    from nin_search.tracking.store import check_tracking

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} is not allowed; expected >= 1")
    study = load_ablation(args.study, parse_overrides(args.overrides), args.seeds)
    study.final_eval = args.final_eval
    # exit 2 before anything is written: the data, an arm the network or the data cannot
    # take (device and precision too), the MLflow store, $NIN_SEARCH_HEARTBEAT_S
    check_data(study.base_config().data, study.final_eval)
    check_arms(study)
    check_tracking()
    heartbeat_s()
    url = storage_url(args.storage)
    tail = ["ablate", args.study] + [f"--set={o}" for o in args.overrides]
    tail += ["--seeds", str(len(study.seeds))] + (["--final-eval"] if args.final_eval else [])
    code = run_sweep(study, url, None, None, args.workers, tail, args.worker)
    if args.worker:
        return code
    from nin_search.search.report import load, report
    from nin_search.search.workers import failure

    final = load(study.name, url)
    if code and failure(study, final):  # nothing finished: run_sweep's error stays the last line
        return code
    report(final)
    return code


def _evaluate(args: argparse.Namespace) -> int:
    from nin_search.tracking.evaluate import evaluate_command

    return evaluate_command(args.model, args.split, args.out, args.images)


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nin_search.search.report import load, report
    from nin_search.search.storage import storage_url

    report(load(args.study, storage_url(args.storage)), Path(args.out))
    return 0


def _ui(args: argparse.Namespace) -> int:
    import subprocess

    from nin_search.stores.urls import mask
    from nin_search.tracking.store import setup_tracking, ui_args

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not allowed; expected 1..65535")
    _free_port(args.host, args.port)
    uri = setup_tracking()
    cmd, env = ui_args(uri, args.host, args.port)
    print("starting:", " ".join(cmd[2:]), f"(backend store {mask(uri)})", flush=True)
    print(f"open http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    return subprocess.call(cmd, env=env)


def _free_port(host: str, port: int) -> None:
    """--host must resolve and --port be free there, or mlflow server fails with a traceback
    (or, on a port in use, exits 0 and the URL shown is another server's)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConfigError(f"--host {host!r} does not resolve: {e}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as e:
            raise ConfigError(f"--port {port} on {host} is not free: {e.strerror}") from None


COMMANDS = {
    "sweep": _sweep,
    "ablate": _ablate,
    "report": _report,
    "ui": _ui,
    "train": _train,
    "lr-finder": _lr_finder,
    "summary": _summary,
    "evaluate": _evaluate,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.debug:  # tracebacks from threads too (storage's heartbeat)
        logging.getLogger("nin_search").setLevel(logging.DEBUG)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk or a read-only store mid-run: one line, exit 1
        from nin_search.stores.faults import store_failure

        line = store_failure(e)
        if line is None or args.debug:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
