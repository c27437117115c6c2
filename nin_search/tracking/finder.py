"""The lr-finder as a tracked run: `python -m nin_search lr-finder`, each arm's range test of a
per-arm ablation, and the sweep range a study takes from a finder run.

    python -m nin_search lr-finder --profile cpu

One MLflow run: the config as params, the curve per step, every rule's suggestion on both
smoothings, the recommendation and its range; lr_finder.json and .html beside it in --out.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric

from nin_search.engine.config import Config, ConfigError, flatten
from nin_search.engine.curve import Finding, suggest
from nin_search.engine.data import load_data
from nin_search.engine.lr_finder import find_lr
from nin_search.engine.summary import summarize
from nin_search.engine.train import resolve_device, resolved
from nin_search.reports.plots import lr_finder_curve
from nin_search.tracking.evaluate import check_out
from nin_search.tracking.runs import logged_line, open_experiment, show_progress
from nin_search.tracking.store import (
    check_tracking,
    run_tags,
    setup_tracking,
)

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


def log_finding(finding: Finding, cfg: Config, folder: Path, title: str = "LR range test"):
    """Log a range test to the active MLflow run: the curve per step (lr, loss and both
    smoothings), every rule's suggestion on both curves, the recommendation, its status, and
    lr_finder.json and .html, written to folder too. The lr-finder command's run and each
    arm's range test (search/arm_lr.py) log alike. Returns the curve read with the other
    smoothing: fastai's causal numbers beside ours."""
    c = cfg.lr_finder
    curve = finding.curve
    run = mlflow.active_run()
    other = suggest(curve, c.num_iter, c.rule, {"ema": "zero-phase"}.get(c.smoothing, "ema"))
    stamp = int(time.time() * 1000)
    steps = zip(curve.lrs, curve.losses, curve.smoothed, finding.zero_phase, strict=True)
    metrics = [
        Metric(k, v, stamp, i)
        for i, (lr, loss, sm, zp) in enumerate(steps)
        for k, v in (("lr", lr), ("loss", loss), ("smoothed_loss", sm), ("zero_phase_loss", zp))
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
    lr_finder_curve(finding, title).write_html(folder / "lr_finder.html")  # plotly.js inline
    mlflow.log_artifact(str(folder / "lr_finder.json"))
    mlflow.log_artifact(str(folder / "lr_finder.html"))
    return other


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
        other = log_finding(finding, cfg, folder)
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
