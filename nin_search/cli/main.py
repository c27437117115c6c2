"""Command line: parse, dispatch, and turn user mistakes into one line and exit code 2.

python -m nin_search summary --set data.resize=224
python -m nin_search train --profile quick --set train.lr=0.1
python -m nin_search lr-finder --profile quick
python -m nin_search sweep studies/quick.toml
python -m nin_search ablate studies/ablate_head.toml
python -m nin_search report studies/ablate_head.toml
python -m nin_search ui
python -m nin_search dashboard studies/quick.toml
python -m nin_search evaluate RUN_ID --split test
"""

from __future__ import annotations

import argparse
import logging
import sys

from nin_search.engine.config import ConfigError

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


def _seeds(text: str) -> int | list[int]:
    """--seeds 3 (the file's first three) or --seeds 0,1 (these)."""
    if "," in text:
        return [int(x) for x in text.split(",") if x.strip()]
    return int(text)


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
    p.add_argument(
        "--seeds",
        type=_seeds,
        help="number of seeds, or the seeds themselves as 0,1,2 (default: the file's list)",
    )
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

    p = sub.add_parser("dashboard", help="start optuna-dashboard on a study (127.0.0.1)")
    p.add_argument("study", metavar="NAME_OR_STUDY.toml")
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
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


def _train(args: argparse.Namespace) -> int:
    from nin_search.api.runs import train
    from nin_search.tracking.runs import logged_line
    from nin_search.tracking.store import tracking_uri

    # the store as given: MLflow's set_tracking_uri puts its absolute form in the environment
    uri = tracking_uri()
    run = train(
        args.profile,
        args.config,
        args.overrides,
        experiment=args.experiment,
        final_eval=args.final_eval,
    )
    print(logged_line(run.run_id, uri))
    return 1 if run.status == "diverged" else 0


def _lr_finder(args: argparse.Namespace) -> int:
    from nin_search.api.runs import find_lr
    from nin_search.tracking.finder import finder_lines
    from nin_search.tracking.store import tracking_uri

    uri = tracking_uri()  # as given, before MLflow resolves it
    found = find_lr(
        args.profile, args.config, args.overrides, experiment=args.experiment, out=args.out
    )
    print(*finder_lines(found.folder, found.run_id, uri), sep="\n")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from nin_search.api.runs import measure
    from nin_search.engine.summary import format_summary

    print(format_summary(measure(args.profile, args.config, args.overrides), args.format))
    return 0


def _duration(text: str | None) -> float | None:
    from nin_search.api.studies import duration

    return duration(text)


def _sweep(args: argparse.Namespace) -> int:
    from nin_search.api.studies import run_study

    # the workers' command line: this one's, with its --set values as typed
    tail = ["sweep", args.study] + [f"--set={o}" for o in args.overrides]
    if args.n_trials:
        tail += ["--n-trials", str(args.n_trials)]
    if args.timeout:
        tail += ["--timeout", args.timeout]
    code, _, _ = run_study(
        args.study,
        args.n_trials,
        args.timeout,
        args.storage,
        args.workers,
        args.overrides,
        tail,
        args.worker,
    )
    return code  # 1 where nothing finished, its reason the last line (run_sweep says it)


def _ablate(args: argparse.Namespace) -> int:
    from nin_search.api.studies import run_ablation

    tail = ["ablate", args.study] + [f"--set={o}" for o in args.overrides]  # + --seeds
    code, _, _ = run_ablation(
        args.study,
        args.seeds,
        args.storage,
        args.workers,
        args.overrides,
        args.final_eval,
        tail,
        args.worker,
    )
    return code


def _evaluate(args: argparse.Namespace) -> int:
    from nin_search.api.runs import evaluate
    from nin_search.tracking.evaluate import report_line

    ev = evaluate(args.model, args.split, out=args.out, images=args.images)
    print(report_line(ev.folder, ev.run_id, ev.split))
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nin_search.search.report import report
    from nin_search.search.storage import storage_url
    from nin_search.search.studies import find_study

    report(find_study(args.study, storage_url(args.storage)), Path(args.out))
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


def _dashboard(args: argparse.Namespace) -> int:
    from nin_search.search.dashboard import require, serve
    from nin_search.search.storage import storage_url
    from nin_search.search.studies import find_study

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not allowed; expected 1..65535")
    require()  # the optional extra
    url = storage_url(args.storage)
    ostudy = find_study(args.study, url)
    _free_port(args.host, args.port)
    serve(ostudy, url, args.host, args.port)
    return 0


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
    "dashboard": _dashboard,
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
