"""One self-contained HTML page: every report, study and evaluation page is built here."""

from __future__ import annotations

import hashlib
import html
from pathlib import Path

ROOT = Path("reports")  # a study's report goes to reports/<name>/

STYLE = (
    "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
)


def page(title: str, body: str, style: str = "", plotly: bool = False) -> str:
    """An HTML page titled title (escaped) holding body; plotly: plotly.js inlined once, for
    figures written with include_plotlyjs=False (no network needed to open it)."""
    script = ""
    if plotly:
        from plotly.offline import get_plotlyjs

        script = f"<script>{get_plotlyjs()}</script>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}{style}</style>{script}</head><body><h1>{html.escape(title)}</h1>"
        f"{body}</body></html>"
    )


def report_dir(root: Path, name: str) -> Path:
    """root/<name> as one folder under root, whatever the name holds: separators, '..', a
    leading '/' or '.', control characters and an over-long name cannot lead elsewhere
    (spaces and unicode stay as they are)."""
    safe = "".join("_" if c in "/\\" or ord(c) < 32 else c for c in name).strip()
    if not safe or safe.startswith("."):
        safe = "_" + safe
    if len(safe.encode()) > 200:  # file systems cap a name at 255 bytes
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        safe = safe.encode()[:180].decode(errors="ignore") + "-" + digest
    return root / safe
