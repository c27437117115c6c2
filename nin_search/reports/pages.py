"""One self-contained HTML page: every report, study and evaluation page is built here."""

from __future__ import annotations

import html

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
