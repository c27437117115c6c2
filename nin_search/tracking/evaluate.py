"""A kept model evaluated: accuracy, per-class accuracy, the confusion matrix and a gallery.

    python -m nin_search evaluate RUN_ID [--split test|val] [--out DIR] [--images 36]
    python -m nin_search evaluate models:/nin-quick@best --split val

Loads the model with its resolved config (models.load), reads the split with the engine's
data path and evaluates it batch by batch as train.evaluate does, at the precision it trained at
(fp32 where this device has no bf16 units): on the test split the same figures that
`train --final-eval` logged as test_acc, which calls evaluate_split too. Writes
confusion_matrix.html (counts and row-normalised) and .csv, predictions.html (images at their
native 28x28, misclassified first), per_class.csv and index.html to --out, and logs them to the
model's run under evaluation/<split>/.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from nin_search.engine.config import ConfigError
from nin_search.engine.data import load_data
from nin_search.engine.evaluate import Evaluation, _precision, evaluate_split, per_class, summary
from nin_search.engine.train import resolve_device
from nin_search.reports.gallery import FILES, IMAGES, write
from nin_search.tracking.models import Loaded, load, size_text


def log_files(folder: Path, run_id: str, split: str) -> None:
    """The evaluation's files in folder (and nothing else there) to the run's evaluation/SPLIT/."""
    import mlflow

    client = mlflow.MlflowClient()
    for name in ("index.html", *FILES):
        client.log_artifact(run_id, str(folder / name), f"evaluation/{split}")


def log_evaluation(ev: Evaluation, run_id: str, images: int = IMAGES) -> None:
    """Write the files to a temporary folder and log them to the run."""
    with tempfile.TemporaryDirectory() as tmp:
        write(ev, Path(tmp), images, f"{ev.split} evaluation", [summary(ev)])
        log_files(Path(tmp), run_id, ev.split)


def check_out(folder: Path) -> None:
    """--out must be a folder this user can write, or one that can be made; checked before the
    work, and without leaving anything behind. The nearest existing folder gets a probe folder,
    made and removed at once: os.access alone says yes to root everywhere, /proc included."""
    parent = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"--out {folder}: {parent} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".nin-out-check-", dir=parent))
    except OSError as e:
        raise ConfigError(
            f"--out {folder}: cannot create a folder in {parent} ({e.strerror}); expected a "
            "writable folder, or a path where one can be made"
        ) from None


def load_kept(ref: str) -> Loaded:
    """The kept model behind ref (models.load), from the MLflow store in use: ConfigError when
    there is no store (looking a model up must not create an empty one) or no such model."""
    from nin_search.stores.locks import store_exists
    from nin_search.stores.urls import mask
    from nin_search.tracking.store import check_tracking, setup_tracking, tracking_uri

    check_tracking()
    if not store_exists(tracking_uri()):
        raise ConfigError(
            f"{ref!r}: not found: no MLflow store at {mask(tracking_uri())} (run train or "
            "sweep first, or set MLFLOW_TRACKING_URI)"
        )
    setup_tracking()
    return load(ref)


@dataclass(frozen=True)
class ModelEvaluation:
    """A kept model evaluated: the engine's Evaluation, the model and where its files went."""

    evaluation: Evaluation
    loaded: Loaded  # the model (on the device it ran on), its config, model and run ids
    folder: Path  # index.html and the files beside it


def report_line(folder: Path, run_id: str | None, split: str) -> str:
    """The line `evaluate` ends with: the report, and the run it was logged to."""
    logged = f"; logged to run {run_id} under evaluation/{split}/" if run_id else ""
    return f"report: {folder / 'index.html'} ({', '.join(FILES)}){logged}"


def evaluate_model(
    ref: str, split: str = "test", out: str | None = None, images: int = IMAGES
) -> ModelEvaluation:
    """Load, evaluate, print the figures, write the files to out and log them to the run."""
    if images < 1:
        raise ConfigError(f"--images {images} is not allowed; expected >= 1")
    check_out(Path(out or "reports/evaluate"))  # before the work, not after it
    loaded = load_kept(ref)  # every mistake is raised here, before anything is written
    cfg, device = loaded.cfg, resolve_device("auto")
    precision, note = _precision(cfg.train.precision, device)
    data = load_data(cfg.data, device, with_test=split == "test")
    model = loaded.model.to(device, memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: models:/{loaded.model_id} (run {loaded.run_id}), {cfg.model.preset}, "
        f"{params:,} params, {loaded.input_size} px, {size_text(4 * params)} of weights; "
        f"{precision} on {device}" + (f" ({note})" if note else "")
    )
    ev = evaluate_split(model, data, split, precision)
    lines = [summary(ev), f"model models:/{loaded.model_id}, run {loaded.run_id}"]
    print(lines[0])
    print("per-class accuracy:")
    for r in per_class(ev):
        print(f"  {r['class']:<12} {r['accuracy']:.4f}  ({r['correct']}/{r['images']})")
    print("most confused (true -> predicted):")
    for count, t, p in ev.most_confused():
        print(f"  {t} -> {p}: {count}")
    folder = Path(out or Path("reports/evaluate") / f"{loaded.run_id or loaded.model_id}-{split}")
    write(ev, folder, images, f"{split} evaluation", lines)
    if loaded.run_id:
        log_files(folder, loaded.run_id, split)
    return ModelEvaluation(ev, loaded, folder)
