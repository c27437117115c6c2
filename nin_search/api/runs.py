"""One model at a time: the lr-finder, a training run, a kept model and its evaluation, the
per-layer summary. What `lr-finder`, `train`, `evaluate` and `summary` run, as functions.

    import nin_search as ns
    found = ns.find_lr(profile="cpu", overrides={"data.train_subset": 2048})
    run = ns.train(profile="cpu", overrides={"train.lr": found.lr, "train.epochs": 2})
    ev = ns.evaluate(run.run_id, split="test")

Settings take the dotted names of the config files and --set: `overrides={"train.lr": 0.1}`,
`config="my.toml"`, `profile="cpu"`; a bad one raises ConfigError with the command's one line.
"""

from __future__ import annotations

from typing import Any

from nin_search.engine.config import Config, ConfigError, load_config, resolve_profile

__all__ = ["ConfigError", "find_lr", "train", "load_model", "evaluate", "summary"]

Overrides = dict[str, Any] | list[str] | None  # {"train.lr": 0.1} or --set's ["train.lr=0.1"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def configure(
    profile: str | None = None, config: str | None = None, overrides: Overrides = None
) -> tuple[Config, str]:
    """The validated config (defaults, profile, TOML file, overrides) and the line that says
    which profile it is ("" for none); profile "auto" is d2l on CUDA, cpu otherwise."""
    resolved = resolve_profile(profile)
    note = f"profile: {resolved}" if resolved else ""
    if profile == "auto":
        why = (
            "a CUDA device is available"
            if resolved == "d2l"
            else "no CUDA device; the d2l profile takes hours on a CPU"
        )
        note = f"profile: {resolved} (auto: {why})"
    return load_config(config, overrides, resolved), note


def find_lr(
    profile: str | None = "auto",
    config: str | None = None,
    overrides: Overrides = None,
    *,
    experiment: str = "nin-lr-finder",
    out: str | None = None,
):
    """Run the LR range test on the training split and return its recommendation.

        found = ns.find_lr(profile="cpu", overrides={"data.train_subset": 2048})
        found.lr, found.range    # train.lr to use; (low, high) for a sweep
        found.plot()

    Logged as one MLflow run in `experiment`; lr_finder.json and .html go to `out` (default
    reports/lr-finder/<time>/). Returns an LrFinding.
    """
    from nin_search.api.results import LrFinding
    from nin_search.tracking.finder import lr_finder_run

    cfg, note = configure(profile, config, overrides)
    done = lr_finder_run(cfg, out, experiment, note)
    f = done.finding
    return LrFinding(
        f.recommended_lr,
        f.recommended_range,
        f.status,
        f.message,
        dict(f.suggestions),
        done.run_id,
        done.folder,
        f,
    )


def train(
    profile: str | None = "auto",
    config: str | None = None,
    overrides: Overrides = None,
    *,
    experiment: str = "nin-train",
    final_eval: bool = False,
):
    """Train one NiN, tracked in MLflow, and return the run with its history.

        run = ns.train(profile="cpu", overrides={"train.lr": 0.02, "train.epochs": 2})
        run.run_id, run.best_val_acc, run.history
        model = ns.load_model(run.run_id)

    One line per epoch is printed, and a progress bar shows on a terminal and in Jupyter.
    final_eval=True also evaluates on the test set (never used for tuning). A run that
    diverges is returned with status "diverged"; Ctrl-C ends it (its MLflow run FAILED) and
    raises KeyboardInterrupt. Returns a TrainedRun.
    """
    import pandas as pd

    from nin_search.api.results import TrainedRun
    from nin_search.tracking.runs import train_run

    cfg, note = configure(profile, config, overrides)
    done = train_run(cfg, experiment, final_eval, note)
    r = done.result
    kept = r.status != "diverged"
    return TrainedRun(
        done.run_id,
        experiment,
        "diverged" if r.status == "diverged" else "completed",
        r.reason,
        r.best_val_acc,
        pd.DataFrame(r.history),
        f"models:/{done.model_id}" if done.model_id else None,
        done.test.acc if done.test else None,
        r.model.eval() if kept and r.model is not None else None,
    )


def load_model(ref: str):
    """A kept model as a torch.nn.Module on the CPU, in eval mode.

        model = ns.load_model(run.run_id)                  # the model a run logged
        model = ns.load_model("models:/nin-quick@best")    # a sweep's best trial
        logits = model(images)                             # (N, 1, S, S) float -> (N, 10)

    ref: a run id, models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID or runs:/ID/model.
    The model expects images as the run fed them: data.resize pixels a side, scaled to [0, 1]
    and normalized as the engine's data path does.
    """
    from nin_search.tracking.evaluate import load_kept

    return load_kept(ref).model


def evaluate(ref: str, split: str = "test", *, out: str | None = None, images: int = 36):
    """Evaluate a kept model on the test (or val) split, as `evaluate` does.

        ev = ns.evaluate(run.run_id, split="test")
        ev.accuracy, ev.per_class, ev.confusion
        ev.plot()

    Writes the confusion matrix, per-class accuracy and a gallery of `images` predictions to
    `out` (default reports/evaluate/<run>-<split>/) and logs them to the model's run. Returns
    an Evaluated.
    """
    import pandas as pd

    from nin_search.api.results import Evaluated
    from nin_search.engine.evaluate import per_class
    from nin_search.tracking.evaluate import evaluate_model

    if split not in ("test", "val"):
        raise ConfigError(f"split {split!r} is not allowed; expected test or val")
    done = evaluate_model(ref, split, out, images)
    ev, names = done.evaluation, list(done.evaluation.classes)
    confusion = pd.DataFrame(ev.confusion().numpy(), index=names, columns=names)
    confusion.index.name, confusion.columns.name = "true", "predicted"
    return Evaluated(
        split,
        ev.acc,
        ev.loss,
        pd.DataFrame(per_class(ev)),
        confusion,
        f"models:/{done.loaded.model_id}",
        done.loaded.run_id,
        done.folder,
    )


def measure(
    profile: str | None = None, config: str | None = None, overrides: Overrides = None
) -> dict[str, Any]:
    """The summary as a dict (engine/summary.summarize), with the measured peak on CUDA."""
    from nin_search.engine.summary import measure_cuda_peak, summarize

    cfg, _ = configure(profile, config, overrides)
    s = summarize(cfg)
    if _cuda():
        s["memory"]["measured_train_peak_bytes"] = measure_cuda_peak(cfg)
    return s


def summary(profile: str | None = None, config: str | None = None, overrides: Overrides = None):
    """The network's per-layer table: output shape, params, MACs and activations per layer.

        table = ns.summary(profile="cpu")
        table[["layer", "output_shape", "params", "macs"]]
        table.attrs["totals"]["params"]      # also "memory": the estimates, in bytes

    Nothing is trained and no data is read. Returns a pandas DataFrame, one row per layer.
    """
    import pandas as pd

    s = measure(profile, config, overrides)
    table = pd.DataFrame(s["layers"])
    table.attrs |= {k: s[k] for k in ("preset", "input_shape", "totals", "memory")}
    return table
