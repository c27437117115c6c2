"""What the Python API returns: small frozen values a notebook shows, each with a .plot().

    found = ns.find_lr(profile="cpu")        # LrFinding
    run = ns.train(profile="cpu")            # TrainedRun
    ev = ns.evaluate(run.run_id)             # Evaluated
    abl = ns.ablate("studies/ablate_head.toml", seeds=[0, 1])   # AblationResult

Tables are pandas DataFrames and figures plotly Figures (reports/plots.py, the same ones the
commands write as HTML and log to MLflow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    import plotly.graph_objects as go
    from torch import nn

    from nin_search.engine.curve import Finding


@dataclass(frozen=True)
class LrFinding:
    """An LR range test's recommendation, its MLflow run and its curve.

        found = ns.find_lr(profile="cpu", overrides={"data.train_subset": 2048})
        found.lr, found.range      # 0.0123, (0.00041, 0.037): train.lr and a sweep's range
        found.plot()               # raw, causal and zero-phase curves, the suggestions marked

    lr and range are None when the loss never fell (status "no-descent" or
    "diverged-at-once"); message then says why and what to try.
    """

    lr: float | None  # the recommended train.lr (lr_finder.rule on lr_finder.smoothing's curve)
    range: tuple[float, float] | None  # (low, high): the range a sweep searches
    status: str  # "ok" | "no-descent" | "diverged-at-once"
    message: str
    suggestions: dict[str, float]  # lr per rule (valley, steep, minimum, half-decade, lowest)
    run_id: str  # the MLflow run in experiment nin-lr-finder (or the one given)
    folder: Path  # lr_finder.json and lr_finder.html
    finding: Finding = field(repr=False)  # the engine's full result: curve, points, rule

    def plot(self) -> go.Figure:
        """The curves against lr on a log axis, the recommended suggestion larger."""
        from nin_search.reports.plots import lr_finder_curve

        return lr_finder_curve(self.finding)


@dataclass(frozen=True)
class TrainedRun:
    """One training run, tracked in MLflow, with its per-epoch history.

        run = ns.train(profile="cpu", overrides={"train.epochs": 2}, experiment="nb")
        run.run_id, run.best_val_acc   # '3f2a...', 0.8861
        run.history                    # one row per epoch: epoch, train_loss, val_acc, lr, ...
        run.plot()                     # loss and accuracy per epoch

    A run whose loss diverged or collapsed is returned too: status "diverged", reason says
    why, and model_uri is None (its MLflow run ended FAILED).
    """

    run_id: str
    experiment: str
    status: str  # "completed" | "diverged"
    reason: str  # why it diverged ("" otherwise)
    best_val_acc: float  # the best epoch's val_acc, as logged (nan if no epoch finished)
    history: pd.DataFrame = field(
        repr=False
    )  # one row per epoch, the metrics logged with step = epoch
    model_uri: str | None  # models:/m-..., what ns.load_model and ns.evaluate take too
    test_acc: float | None  # with final_eval=True: accuracy on the test set
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # trained, eval()

    def plot(self) -> go.Figure:
        """Loss and accuracy per epoch, training and validation side by side."""
        from nin_search.reports.plots import training_curves

        return training_curves(self.history.to_dict("records"), f"run {self.run_id}")


@dataclass(frozen=True)
class Evaluated:
    """A kept model on a split: accuracy, per-class accuracy and the confusion matrix.

    ev = ns.evaluate(run.run_id, split="test")    # or "models:/nin-quick@best"
    ev.accuracy, ev.per_class                     # 0.9123; one row per class
    ev.confusion.loc["Shirt", "T-shirt/top"]      # shirts predicted as T-shirts
    ev.plot()                                     # counts and row-normalised rates
    """

    split: str  # "test" | "val"
    accuracy: float
    loss: float
    per_class: pd.DataFrame = field(repr=False)  # class, images, correct, accuracy
    confusion: pd.DataFrame = field(
        repr=False
    )  # counts: index = true class, columns = predicted class
    model_uri: str  # models:/m-...
    run_id: str | None  # the run the model was logged by (and the files to)
    folder: Path  # index.html, confusion_matrix.html, predictions.html, ...

    def plot(self) -> go.Figure:
        """The confusion matrix: counts and row-normalised rates side by side."""
        from nin_search.reports.plots import confusion_matrix

        counts = self.confusion.to_numpy().tolist()
        return confusion_matrix(counts, list(self.confusion.index), f"{self.split} evaluation")


@dataclass(frozen=True)
class AblationResult:
    """An ablation's paired comparison: one row per arm against the baseline.

        abl = ns.ablate("studies/ablate_head.toml", seeds=[0, 1, 2])
        abl.summary[["arm", "mean", "delta", "p_value"]]
        abl.plot()            # each arm's mean with its 95% CI, every seed as a dot

    summary is the table `report` writes as summary.csv; cells has one row per finished
    (arm, seed); study is the Optuna study behind it.
    """

    summary: pd.DataFrame = field(repr=False)
    cells: pd.DataFrame = field(repr=False)
    metric: str  # the ablation's objective, e.g. final_val_acc
    study: optuna.Study = field(repr=False)
    folder: Path | None  # the report: index.html, summary.md, plots (None if nothing finished)

    def plot(self) -> go.Figure:
        """Accuracy per arm: mean and 95% CI, every seed's value as a dot."""
        from nin_search.reports.plots import arm_accuracy

        return arm_accuracy(self.summary, self.cells, self.metric)
