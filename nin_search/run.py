"""One tracked training run: `python -m nin_search train` end to end.

    python -m nin_search train --profile quick --set train.lr=0.1

Loads the data, trains with the engine, and logs everything to one MLflow run: every resolved
config value as a param under its dotted name, per-epoch metrics with step = epoch, tags for
device, torch version, git commit and config hash, and the config, summary and curves as
artifacts.
"""

from __future__ import annotations

import sys

import mlflow

from nin_search.accounting import format_summary, summarize
from nin_search.config import Config, flatten, to_toml
from nin_search.data import load_data
from nin_search.plots import training_curves
from nin_search.tracking import experiment_id, mask, run_tags, setup_tracking, ui_command
from nin_search.train import evaluate, fit, resolve_device

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "img_per_s", "epoch_time_s")


def epoch_line(m: dict, epochs: int) -> str:
    """The one fixed log line per epoch."""
    line = (f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  "
            f"train_acc {m['train_acc']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"val_acc {m['val_acc']:.4f}  lr {m['lr']:.4g}  {m['img_per_s']:,.0f} img/s  "
            f"{m['epoch_time_s']:.1f} s")
    return line + (f"  peak {m['peak_mem_mib']:,.0f} MiB" if "peak_mem_mib" in m else "")


def train_run(cfg: Config, experiment: str = "nin-train", final_eval: bool = False,
              profile_note: str = "") -> int:
    """Train cfg once, tracked in MLflow; returns the exit code (0 done, 1 diverged)."""
    device = resolve_device(cfg.train.device)
    summary = summarize(cfg)  # validates the input size before any data is read
    uri = setup_tracking()
    exp_id = experiment_id(experiment)
    data = load_data(cfg.data, device, with_test=final_eval)
    if profile_note:
        print(profile_note)
    print(f"data: {cfg.data.dataset} from {data.source}: {len(data.train_x):,} train / "
          f"{len(data.val_x):,} val images at {data.input_size} px on {device}")
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

        result = fit(cfg, data, on_epoch, progress=sys.stderr.isatty())
        mlflow.set_tag("nin.status", result.status)
        if result.history:
            mlflow.log_metric("best_val_acc", result.best_val_acc)
            mlflow.log_figure(training_curves(result.history, f"{cfg.model.preset} run"),
                              "training_curves.html")
        if result.status == "diverged":
            epoch, step = result.diverged_at
            mlflow.set_tags({"nin.diverged_epoch": epoch, "nin.diverged_step": step})
            print(f"diverged: {result.reason}")
        elif final_eval:
            loss, acc = evaluate(result.model, data.test_x, data.test_y, data,
                                 channels_last=device.type == "cuda")
            mlflow.log_metrics({"test_loss": loss, "test_acc": acc})
            print(f"final evaluation on the test set (never used for tuning): "
                  f"test_loss {loss:.4f}  test_acc {acc:.4f}")
        if result.status != "diverged":
            best = max(result.history, key=lambda h: h["val_acc"])
            print(f"done: best val_acc {best['val_acc']:.4f} at epoch {best['epoch']}")
    if result.status == "diverged":
        mlflow.tracking.MlflowClient().set_terminated(run.info.run_id, "FAILED")
    print(f"run {run.info.run_id} logged to {mask(uri)}; open the MLflow UI with: "
          f"{ui_command(uri)}")
    return 1 if result.status == "diverged" else 0


def _print(line: str) -> None:
    try:  # keep the epoch line clear of tqdm's bar
        from tqdm import tqdm

        tqdm.write(line)
    except ImportError:
        print(line)
