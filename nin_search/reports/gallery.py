"""An evaluation as files: the confusion matrix (HTML and CSV), a gallery of predictions as
inline PNGs (misclassified first), per-class accuracy and an index page linking them."""

from __future__ import annotations

import base64
import csv
import html
import struct
import zlib
from pathlib import Path

import torch

from nin_search.engine.evaluate import SPLITS, Evaluation, per_class
from nin_search.reports.pages import page

FILES = ("confusion_matrix.html", "predictions.html", "per_class.csv", "confusion_matrix.csv")


IMAGES = 36  # gallery size by default


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


STYLE = (  # the gallery's own, beside pages.STYLE
    "figure{display:inline-block;margin:4px;padding:4px;text-align:center;font-size:11px;"
    "width:96px;vertical-align:top} figure.ok{border:2px solid #2ca02c}"
    "figure.bad{border:2px solid #d62728;color:#d62728}"
    "img{image-rendering:pixelated;width:56px;height:56px}"
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
    return page(title, head + "".join(cells), STYLE)


def write(ev: Evaluation, out: Path, images: int, title: str, lines: list[str]) -> Path:
    """The evaluation's files in out; returns index.html."""
    from nin_search.reports.plots import confusion_matrix

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
    (out / "index.html").write_text(page(title, body, STYLE))
    return out / "index.html"
