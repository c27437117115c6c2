"""A kept model evaluated: accuracy, per-class accuracy, the confusion matrix and a gallery.

    python -m nin_search evaluate RUN_ID [--split test|val] [--out DIR] [--images 36]
    python -m nin_search evaluate models:/nin-quick@best --split val

Loads the model with its resolved config (checkpoint.load), reads the split with the engine's
data path and evaluates it batch by batch as train.evaluate does, at the precision it trained at
(fp32 where this device has no bf16 units): on the test split the same figures that
`train --final-eval` logged as test_acc, which calls evaluate_split too. Writes
confusion_matrix.html (counts and row-normalised) and .csv, predictions.html (images at their
native 28x28, misclassified first), per_class.csv and index.html to --out, and logs them to the
model's run under evaluation/<split>/.
"""

from __future__ import annotations

import base64
import csv
import html
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nin_search.config import ConfigError
from nin_search.data import Data, batches, load_data
from nin_search.train import EVAL_BATCH, autocast, resolve_device, resolve_precision

CLASSES = {
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(d) for d in range(10)),
}  # fmt: skip
SPLITS = {
    "test": "the test set (never used for tuning)",
    "val": "the validation split (held out of training by data.split_seed; what sweeps tune on)",
}
FILES = ("confusion_matrix.html", "predictions.html", "per_class.csv", "confusion_matrix.csv")
IMAGES = 36  # gallery size by default


@dataclass
class Evaluation:
    split: str  # "test" | "val"
    loss: float
    acc: float
    labels: torch.Tensor  # (N,) int64 on the CPU
    preds: torch.Tensor  # (N,) int64 on the CPU
    images: torch.Tensor  # (N, 28, 28) uint8 on the CPU: the split at its native size
    classes: tuple[str, ...]
    precision: str  # the resolved precision it ran at

    def confusion(self) -> torch.Tensor:
        """(K, K) counts: row = true class, column = predicted class."""
        k = len(self.classes)
        return torch.bincount(self.labels * k + self.preds, minlength=k * k).reshape(k, k)

    def most_confused(self, n: int = 5) -> list[tuple[int, str, str]]:
        """The n largest off-diagonal cells: (count, true class, predicted class)."""
        c = self.confusion().fill_diagonal_(0).flatten()
        top = [(int(c[i]), *divmod(int(i), len(self.classes))) for i in c.argsort(descending=True)]
        return [(v, self.classes[t], self.classes[p]) for v, t, p in top[:n] if v > 0]


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: Data, precision: str
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, predictions) over (x, y): train.evaluate's batches, autocast and
    sums in the same order, so loss and accuracy are exactly what it returns."""
    model.eval()
    loss = torch.zeros((), device=x.device)
    preds = []
    for xb, yb in batches(x, y, EVAL_BATCH.get(x.device.type, 1024), data.cfg):
        with autocast(x.device, precision):
            logits = model(xb).float()
        loss += F.cross_entropy(logits, yb, reduction="sum")
        preds.append(logits.argmax(1))
    pred = torch.cat(preds)
    return loss.item() / len(x), (pred == y).sum().item() / len(x), pred.cpu()


def evaluate_split(model: nn.Module, data: Data, split: str, precision: str) -> Evaluation:
    x, y = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
    loss, acc, preds = predict(model, x, y, data, precision)
    classes = CLASSES[data.cfg.dataset][: data.num_classes]
    return Evaluation(split, loss, acc, y.cpu(), preds, x.cpu(), classes, precision)


def per_class(ev: Evaluation) -> list[dict]:
    c = ev.confusion()
    return [
        {
            "class": name,
            "images": int(c[k].sum()),
            "correct": int(c[k, k]),
            "accuracy": float(c[k, k] / c[k].sum()) if c[k].sum() else float("nan"),
        }
        for k, name in enumerate(ev.classes)
    ]


def _png(img: torch.Tensor) -> bytes:
    """A (H, W) uint8 image as a grayscale PNG: no PIL needed."""
    h, w = img.shape
    raw = b"".join(b"\x00" + row.numpy().tobytes() for row in img.contiguous())

    def chunk(tag: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grayscale
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


STYLE = (
    "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    "figure{display:inline-block;margin:4px;padding:4px;text-align:center;font-size:11px;"
    "width:96px;vertical-align:top} figure.ok{border:2px solid #2ca02c}"
    "figure.bad{border:2px solid #d62728;color:#d62728}"
    "img{image-rendering:pixelated;width:56px;height:56px}"
)


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def gallery(ev: Evaluation, n: int, title: str) -> str:
    """n images of the split as inline 28x28 PNGs with true and predicted labels (shown at 2x,
    pixels kept), misclassified first, in split order within each group."""
    wrong = (ev.preds != ev.labels).nonzero().flatten().tolist()
    right = (ev.preds == ev.labels).nonzero().flatten().tolist()
    cells = []
    for i in (wrong + right)[:n]:
        t, p = ev.classes[ev.labels[i]], ev.classes[ev.preds[i]]
        src = base64.b64encode(_png(ev.images[i])).decode()
        cells.append(
            f"<figure class='{'ok' if t == p else 'bad'}'><img alt='{i}' "
            f"src='data:image/png;base64,{src}'><figcaption>#{i}<br>true: {html.escape(t)}"
            f"<br>pred: {html.escape(p)}</figcaption></figure>"
        )
    shown = min(n, len(ev.labels))
    head = (
        f"<p>{shown} of {len(ev.labels):,} images of {SPLITS[ev.split]}, {len(wrong):,} "
        f"misclassified (red, first), correct in green; native 28x28 pixels shown at 2x.</p>"
    )
    return _page(title, head + "".join(cells))


def write(ev: Evaluation, out: Path, images: int, title: str, lines: list[str]) -> Path:
    """The evaluation's files in out; returns index.html."""
    from nin_search.plots import confusion_matrix

    out.mkdir(parents=True, exist_ok=True)
    counts = ev.confusion().tolist()
    confusion_matrix(counts, ev.classes, f"{title}: confusion matrix").write_html(
        out / "confusion_matrix.html",
        include_plotlyjs=True,  # offline, also inside MLflow's UI
    )
    with open(out / "confusion_matrix.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["true \\ predicted", *ev.classes])
        w.writerows([name, *row] for name, row in zip(ev.classes, counts, strict=True))
    rows = per_class(ev)
    with open(out / "per_class.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "predictions.html").write_text(gallery(ev, images, f"{title}: predictions"))
    table = "".join(
        f"<tr><td style='text-align:left'>{html.escape(r['class'])}</td><td>{r['images']}</td>"
        f"<td>{r['correct']}</td><td>{r['accuracy']:.4f}</td></tr>"
        for r in rows
    )
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    body += "<ul>" + "".join(f"<li><a href='{f}'>{f}</a></li>" for f in FILES) + "</ul>"
    body += "<h2>per class</h2><table><tr><th>class</th><th>images</th><th>correct</th>"
    body += f"<th>accuracy</th></tr>{table}</table><h2>most confused (true -> predicted)</h2>"
    body += "<ul>" + "".join(
        f"<li>{html.escape(t)} -> {html.escape(p)}: {n}</li>" for n, t, p in ev.most_confused()
    )
    body += "</ul>"
    (out / "index.html").write_text(_page(title, body))
    return out / "index.html"


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


def summary(ev: Evaluation) -> str:
    """'final evaluation on the test set (...): test_loss 0.3012  test_acc 0.8923 (...)'"""
    return (
        f"{'final evaluation' if ev.split == 'test' else 'evaluation'} on {SPLITS[ev.split]}: "
        f"{ev.split}_loss {ev.loss:.4f}  {ev.split}_acc {ev.acc:.4f}  ({len(ev.labels):,} "
        f"images, {ev.precision})"
    )


def _precision(trained: str, device: torch.device) -> tuple[str, str]:
    """The precision it trained at, or fp32 (with a note) where this device has no bf16."""
    try:
        return resolve_precision(trained, device), ""
    except ConfigError:
        return "fp32", f"trained in {trained}; no bf16 units here, so evaluated in fp32"


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


def evaluate_command(ref: str, split: str = "test", out: str | None = None, images: int = IMAGES):
    """The evaluate command: load, evaluate, print, write and log; returns the exit code."""
    from nin_search.checkpoint import load, size_text
    from nin_search.storage import store_exists
    from nin_search.tracking import check_tracking, mask, setup_tracking, tracking_uri

    if images < 1:
        raise ConfigError(f"--images {images} is not allowed; expected >= 1")
    check_out(Path(out or "reports/evaluate"))  # before the work, not after it
    check_tracking()
    if not store_exists(tracking_uri()):  # looking a model up must not create an empty store
        raise ConfigError(
            f"{ref!r}: not found: no MLflow store at {mask(tracking_uri())} (run train or "
            "sweep first, or set MLFLOW_TRACKING_URI)"
        )
    setup_tracking()
    loaded = load(ref)  # every mistake is raised here, before anything is written
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
    where = ""
    if loaded.run_id:
        log_files(folder, loaded.run_id, split)
        where = f"; logged to run {loaded.run_id} under evaluation/{split}/"
    print(f"report: {folder / 'index.html'} ({', '.join(FILES)}){where}")
    return 0


__all__ = ["Evaluation", "evaluate_split", "predict", "log_evaluation", "evaluate_command"]
