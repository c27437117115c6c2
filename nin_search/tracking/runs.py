"""Tracked runs: `train` and `lr-finder`, end to end, each one MLflow run.

    python -m nin_search train --profile quick --set train.lr=0.1
    python -m nin_search lr-finder --profile quick

Loads the data, trains (or runs the range test) with the engine, and logs everything to one
MLflow run: every resolved config value as a param under its dotted name, per-epoch metrics with
step = epoch, tags for device, torch version, git commit and config hash, and the config,
summary and curves (or the finder's curve and suggestions) as artifacts.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric

from nin_search.engine.chance import learned
from nin_search.engine.config import Config, ConfigError, flatten, to_toml
from nin_search.engine.curve import Finding, suggest
from nin_search.engine.data import load_data
from nin_search.engine.evaluate import Evaluation, evaluate_split
from nin_search.engine.lr_finder import find_lr
from nin_search.engine.summary import format_summary, summarize
from nin_search.engine.train import FitResult, fit, resolve_device, resolved
from nin_search.reports.plots import lr_finder_curve, training_curves
from nin_search.stores.locks import StoreLock
from nin_search.stores.urls import mask
from nin_search.tracking.evaluate import check_out, log_evaluation
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


FINDER_EXPERIMENT = "nin-lr-finder"


# what shapes an LR range test's curve: the model, the optimizer and the data, not the lr itself
FINDER_KEYS = (
    "model.",
    "data.dataset",
    "data.resize",
    "data.augment",
    "data.val_size",
    "data.split_seed",
    "data.train_subset",
    "train.optimizer",
    "train.momentum",
    "train.nesterov",
    "train.weight_decay",
    "train.batch_size",
    "train.label_smoothing",
    "train.precision",
    "lr_finder.",
)


def finder_key(cfg: Config) -> str:
    """A hash of the settings an lr-finder result holds for (12 hex digits)."""
    same = {k: v for k, v in flatten(cfg).items() if k.startswith(FINDER_KEYS)}
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:12]


def _suggestion_table(f: Finding, other: Finding) -> str:
    """Each rule's lr on the curve in use and, beside it, on the other smoothing's curve."""
    import pandas as pd

    rows = [
        {
            "lr_finder.rule": k + (" (recommended)" if k == f.rule else ""),
            f"{f.smoothing} (in use)": f"{v:.3g}",
            other.smoothing: f"{other.suggestions[k]:.3g}" if other.suggestions else "-",
        }
        for k, v in f.suggestions.items()
    ]
    low, high = f.recommended_range
    rows.append(
        {
            "lr_finder.rule": "sweep range",
            f"{f.smoothing} (in use)": f"[{low:.3g}, {high:.3g}]",
            other.smoothing: "",
        }
    )
    return pd.DataFrame(rows).to_string(index=False)


@dataclass(frozen=True)
class FinderRun:
    """What `lr-finder` did: the finding, its MLflow run and the folder of its files."""

    finding: Finding
    run_id: str
    uri: str  # the MLflow tracking URI
    folder: Path  # lr_finder.json and lr_finder.html


def finder_lines(folder: Path, run_id: str, uri: str) -> list[str]:
    """The lines `lr-finder` ends with: the plot, the JSON and the MLflow run."""
    plot = f"plot: {folder / 'lr_finder.html'}  json: {folder / 'lr_finder.json'}"
    return [plot, logged_line(run_id, uri)]


def lr_finder_run(
    cfg: Config,
    out: str | None = None,
    experiment: str = FINDER_EXPERIMENT,
    profile_note: str = "",
    quiet: bool = False,
) -> FinderRun:
    """The LR range test, written to <out>/lr_finder.{json,html} and one MLflow run; prints
    the suggestions (unless quiet), not where they went (finder_lines)."""
    say = (lambda *a: None) if quiet else print
    device = resolve_device(cfg.train.device)
    cfg = resolved(cfg, device)
    summarize(cfg)  # validates the input size before any data is read
    folder = Path(out or Path("reports/lr-finder") / time.strftime("%Y%m%d-%H%M%S"))
    check_out(folder)  # before MLflow or the data are touched
    check_tracking(experiment)  # the store, then the data: a mistake in either writes nothing
    data = load_data(cfg.data, device, with_test=False)
    uri, exp_id = open_experiment(experiment)
    if profile_note:
        say(profile_note)
    say(
        f"data: {cfg.data.dataset} from {data.source}: {len(data.train_x):,} training images "
        f"at {data.input_size} px on {device}"
    )
    c = cfg.lr_finder
    say(
        f"lr-finder: {cfg.model.preset}, {cfg.train.optimizer}, {c.mode} sweep from "
        f"{c.start_lr:g} to {c.end_lr:g} over {c.num_iter} steps of {cfg.train.batch_size}, "
        f"{cfg.train.precision}, {c.repeats} repeat(s); rule {c.rule!r} on the {c.smoothing} curve"
    )
    tags = run_tags(cfg, str(device)) | {
        "nin.command": "lr-finder",
        "nin.finder_key": finder_key(cfg),
    }
    with mlflow.start_run(experiment_id=exp_id, tags=tags) as run:
        mlflow.log_params(flatten(cfg))
        finding = find_lr(cfg, data, progress=show_progress() and not quiet)
        curve = finding.curve
        # the same curve read with the other smoothing: fastai's causal numbers beside ours
        other = suggest(curve, c.num_iter, c.rule, {"ema": "zero-phase"}.get(c.smoothing, "ema"))
        stamp = int(time.time() * 1000)
        steps = zip(curve.lrs, curve.losses, curve.smoothed, finding.zero_phase, strict=True)
        metrics = [
            Metric(k, v, stamp, i)
            for i, (lr, loss, sm, zp) in enumerate(steps)
            for k, v in (
                ("lr", lr),
                ("loss", loss),
                ("smoothed_loss", sm),
                ("zero_phase_loss", zp),
            )
        ]
        client = mlflow.MlflowClient()
        for start in range(0, len(metrics), 900):  # log_batch takes up to 1000 metrics
            client.log_batch(run.info.run_id, metrics=metrics[start : start + 900])
        if finding.status == "ok":
            low, high = finding.recommended_range
            mlflow.log_metrics(
                {f"suggested_{k}": v for k, v in finding.suggestions.items()}
                | {f"suggested_{k}_{other.smoothing}": v for k, v in other.suggestions.items()}
                | {
                    "recommended_lr": finding.recommended_lr,
                    "recommended_lr_low": low,
                    "recommended_lr_high": high,
                }
            )
        # lr_finder.rule and lr_finder.smoothing are params already, under those names
        mlflow.set_tags({"nin.status": finding.status, "nin.message": finding.message[:5000]})
        report = finding.to_json() | {"mlflow_run_id": run.info.run_id, "config": flatten(cfg)}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "lr_finder.json").write_text(json.dumps(report, indent=2))
        lr_finder_curve(finding).write_html(folder / "lr_finder.html")
        mlflow.log_artifact(str(folder / "lr_finder.json"))
        mlflow.log_artifact(str(folder / "lr_finder.html"))
    say(f"stopped: {curve.stop_reason} after {len(curve.lrs)} steps")
    if finding.status == "ok":
        say(_suggestion_table(finding, other))
        say(
            f"recommended lr: {finding.recommended_lr:.3g} (train.lr; lr_finder.rule = "
            f"{c.rule!r} on the {c.smoothing} curve); sweep range "
            f"[{finding.recommended_range[0]:.3g}, {finding.recommended_range[1]:.3g}]"
        )
    else:
        say(f"no recommendation: {finding.message}")
    return FinderRun(finding, run.info.run_id, uri, folder)


def lr_range_from_finder(
    cfg: Config, experiment: str = FINDER_EXPERIMENT, run_if_missing: bool = True
) -> tuple[float, float, str]:
    """(low, high, run id): the recommended range of the latest lr-finder run whose model,
    optimizer and data settings match cfg; runs the finder first when there is none.

    This is what a study's `"train.lr" = { from_lr_finder = true }` resolves to.
    """
    cfg = resolved(cfg)  # the key holds the precision the finder ran at, not 'auto'
    setup_tracking()
    key = finder_key(cfg)
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        output_format="list",
        max_results=1,
        filter_string=f"tags.`nin.finder_key` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    if runs:
        run = runs[0]
        if run.data.tags.get("nin.status") != "ok":
            raise ConfigError(
                f"train.lr = {{ from_lr_finder = true }}: the latest lr-finder run for these "
                f"settings ({run.info.run_id}) found no lr: {run.data.tags.get('nin.message')}; "
                f"give train.lr a range {{ low, high, log = true }} instead"
            )
        m = run.data.metrics
        return m["recommended_lr_low"], m["recommended_lr_high"], run.info.run_id
    if not run_if_missing:
        raise ConfigError(
            f"no lr-finder run in experiment {experiment!r} matches these model, "
            f"optimizer and data settings (finder key {key})"
        )
    found = lr_finder_run(cfg, experiment=experiment)
    print(*finder_lines(found.folder, found.run_id, found.uri), sep="\n")
    finding, run_id = found.finding, found.run_id
    if finding.status != "ok":
        raise ConfigError(
            f"train.lr = {{ from_lr_finder = true }}: the lr-finder run "
            f"{run_id} found no lr: {finding.message}"
        )
    return (*finding.recommended_range, run_id)
