"""Tracked runs: `train` and `lr-finder`, end to end, each one MLflow run.

    python -m nin_search train --profile quick --set train.lr=0.1
    python -m nin_search lr-finder --profile quick

Loads the data, trains (or runs the range test) with the engine, and logs everything to one
MLflow run: every resolved config value as a param under its dotted name, per-epoch metrics with
step = epoch, tags for device, torch version, git commit and config hash, and the config,
summary and curves (or the finder's curve and suggestions) as artifacts.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import mlflow

from nin_search.engine.chance import learned
from nin_search.engine.config import Config, flatten, to_toml
from nin_search.engine.data import load_data
from nin_search.engine.evaluate import Evaluation, evaluate_split
from nin_search.engine.summary import format_summary, summarize
from nin_search.engine.train import FitResult, fit, resolve_device, resolved
from nin_search.reports.plots import training_curves
from nin_search.stores.locks import StoreLock
from nin_search.stores.urls import mask
from nin_search.tracking.evaluate import log_evaluation
from nin_search.tracking.models import log_model, size_text
from nin_search.tracking.store import (
    check_tracking,
    experiment_id,
    run_tags,
    setup_tracking,
    ui_command,
)


def chance_note(result: FitResult, batch_norm: bool) -> str:
    """What `train` says of a run that ended at chance without having learned, and what to try."""
    last, k = result.history[-1], result.num_classes
    top = max(result.history, key=lambda h: h["train_acc"])
    fell = learned(top["train_acc"], result.train_images, k)
    why = (
        f"; its train accuracy reached {top['train_acc']:.4f} (epoch {top['epoch']}): an lr that "
        "collapsed it within the epoch, or memorizing; try a lower train.lr"
        if fell
        else ""
    )
    bn = (
        "; or set model.batch_norm=true (without it the NiN can sit at ln 10 for hundreds of "
        "steps)"
    )
    return (
        f"did not learn: val_acc {last['val_acc']:.4f} after {last['epoch']} epoch(s) is chance "
        f"for {k} classes (val loss {last['val_loss']:.4g}; a constant guess scores ln {k} = "
        f"{math.log(k):.3f}){why}; find an lr with `python -m nin_search lr-finder` and the "
        f"same --set values{'' if batch_norm else bn}"
    )


METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "img_per_s", "epoch_time_s")


def epoch_line(m: dict, epochs: int) -> str:
    """The one fixed log line per epoch."""
    line = (
        f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  "
        f"train_acc {m['train_acc']:.4f}  val_loss {m['val_loss']:.4f}  "
        f"val_acc {m['val_acc']:.4f}  lr {m['lr']:.4g}  {m['img_per_s']:,.0f} img/s  "
        f"{m['epoch_time_s']:.1f} s"
    )
    return line + (f"  peak {m['peak_mem_mib']:,.0f} MiB" if "peak_mem_mib" in m else "")


def show_progress() -> bool:
    """A progress bar on a terminal or in a Jupyter notebook (tqdm.auto draws its widget
    there); none where stderr is a file or a pipe (cron, CI logs), which it would fill."""
    if sys.stderr.isatty():
        return True
    ipython = sys.modules.get("IPython")  # imported already wherever a notebook runs us
    shell = ipython.get_ipython() if ipython else None
    return shell is not None and hasattr(shell, "kernel")  # a Jupyter kernel, not a terminal


def logged_line(run_id: str, uri: str) -> str:
    """Where a run went: the line `train` and `lr-finder` end with."""
    return f"run {run_id} logged to {mask(uri)}; open the MLflow UI with: {ui_command(uri)}"


@dataclass(frozen=True)
class TrainRun:
    """What `train` did: its MLflow run and the engine's result (model and history in it)."""

    run_id: str
    uri: str  # the MLflow tracking URI
    experiment: str
    result: FitResult
    model_id: str | None  # the logged model, None when the run diverged
    test: Evaluation | None  # --final-eval's evaluation on the test set


def open_experiment(name: str) -> tuple[str, str]:
    """The tracking URI and the experiment's id. On a fresh SQLite store one process at a time
    creates MLflow's tables: two migrating at once fail ('duplicate column name'), as two
    `train` commands started together once did. sweep and ablate take the same lock."""
    uri = setup_tracking()
    with StoreLock(uri if uri.startswith("sqlite") else None):
        return uri, experiment_id(name)


def train_run(
    cfg: Config, experiment: str = "nin-train", final_eval: bool = False, profile_note: str = ""
) -> TrainRun:
    """Train cfg once, tracked in MLflow, printing one line per epoch; a run that diverged is
    returned too (result.status "diverged", its MLflow run ended FAILED)."""
    device = resolve_device(cfg.train.device)
    cfg = resolved(cfg, device)  # train.precision as it runs: bf16 or fp32
    summary = summarize(cfg)  # validates the input size before any data is read
    check_tracking(experiment)  # the store, then the data: a mistake in either writes nothing
    data = load_data(cfg.data, device, with_test=final_eval)
    uri, exp_id = open_experiment(experiment)
    if profile_note:
        print(profile_note)
    print(
        f"data: {cfg.data.dataset} from {data.source}: {len(data.train_x):,} train / "
        f"{len(data.val_x):,} val images at {data.input_size} px on {device}, "
        f"{cfg.train.precision} (train.precision)"
    )
    t = summary["totals"]
    print(f"model: {cfg.model.preset}, {t['params']:,} params, {t['macs']:,} MACs per image")

    tags = run_tags(cfg, str(device)) | {"nin.command": "train"}
    with mlflow.start_run(experiment_id=exp_id, tags=tags) as run:
        mlflow.log_params(flatten(cfg))
        mlflow.log_text(to_toml(cfg), "config.toml")
        mlflow.log_text(format_summary(summary), "summary.txt")
        mlflow.log_dict(summary, "summary.json")
        print(f"mlflow: run {run.info.run_id} in experiment {experiment!r} at {mask(uri)}")

        def on_epoch(m: dict) -> None:
            mlflow.log_metrics({k: v for k, v in m.items() if k != "epoch"}, step=m["epoch"])
            _print(epoch_line(m, cfg.train.epochs))

        result = fit(cfg, data, on_epoch, progress=show_progress())
        mlflow.set_tag("nin.status", result.status)
        if result.history:
            mlflow.log_metric("best_val_acc", result.best_val_acc)
            mlflow.log_figure(
                training_curves(result.history, f"{cfg.model.preset} run"), "training_curves.html"
            )
        if result.status == "diverged":
            epoch, step = result.diverged_at
            mlflow.set_tags({"nin.diverged_epoch": epoch, "nin.diverged_step": step})
            print(f"diverged: {result.reason}")
        ev = model_id = None
        # --final-eval takes the evaluate command's path: one figure whichever computed it
        if final_eval and result.status != "diverged":
            ev = evaluate_split(result.model, data, "test", cfg.train.precision)
            mlflow.log_metrics({"test_loss": ev.loss, "test_acc": ev.acc})
            log_evaluation(ev, run.info.run_id)  # confusion matrix, gallery: evaluation/test/
            print(
                f"final evaluation on the test set (never used for tuning): "
                f"test_loss {ev.loss:.4f}  test_acc {ev.acc:.4f}; confusion matrix and "
                "predictions in the run's evaluation/test/"
            )
        if result.status != "diverged":
            best = max(result.history, key=lambda h: h["val_acc"])
            print(f"done: best val_acc {best['val_acc']:.4f} at epoch {best['epoch']}")
            if result.at_chance:
                mlflow.set_tag("nin.at_chance", "true")
                print(chance_note(result, cfg.model.batch_norm))
            model_id, size = log_model(result.model, cfg, data.input_size, data.num_classes)
            print(
                f"model: models:/{model_id} ({size_text(size)}); evaluate it with: "
                f"python -m nin_search evaluate {run.info.run_id}"
            )
    if result.status == "diverged":
        mlflow.tracking.MlflowClient().set_terminated(run.info.run_id, "FAILED")
    return TrainRun(run.info.run_id, uri, experiment, result, model_id, ev)


def _print(line: str) -> None:
    try:  # keep the epoch line clear of tqdm's bar
        from tqdm import tqdm

        tqdm.write(line)
    except ImportError:
        print(line)
