"""mkdocs hook: the configuration table, generated from nin_search.engine.config, and the
notebook pages found in docs/notebooks/.

    mkdocs build --strict        # mkdocs.yml names this file under `hooks:`
    python docs/gen_config.py    # prints the table

The table cannot drift from the code: every key, its default and what it allows come from the
dataclasses (the same `_allowed` text a bad value's error message names), and the note beside
each is the comment the field carries in config.py.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import tokenize
from pathlib import Path

MARKER = "<!-- config-table -->"
NOTEBOOKS = "Notebooks"  # the nav section that lists docs/notebooks/*.py


def _comments(source: str) -> dict[tuple[str, str], str]:
    """{(class name, field name): its comment}: the comment lines just above a field and the
    comments on its own lines (a field may span several lines)."""
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        prev_end = node.lineno
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                lines = range(prev_end + 1, stmt.end_lineno + 1)
                text = " ".join(by_line[i] for i in lines if i in by_line)
                out[(node.name, stmt.target.id)] = text
            prev_end = stmt.end_lineno
    return out


def _default(value: object) -> str:
    return "`" + json.dumps(value) + "`"  # as TOML and --set write it: "d2l", 0.05, false


def config_rows() -> list[tuple[str, str, str, str]]:
    """(dotted key, default, what it allows, note) for every config field, in declaration order."""
    from nin_search.engine import config

    notes = _comments(Path(config.__file__).read_text())
    rows = []
    for section, cls in config.SECTIONS.items():
        for f in dataclasses.fields(cls()):
            note = notes.get((cls.__name__, f.name), "")
            rows.append((f"{section}.{f.name}", _default(f.default), config._allowed(f), note))
    return rows


def config_table() -> str:
    """The markdown table of every key, its default, what it allows and its note."""
    lines = ["| key | default | allowed | note |", "|---|---|---|---|"]
    for key, default, allowed, note in config_rows():
        note = note.replace("|", "\\|")
        lines.append(f"| `{key}` | {default} | {allowed} | {note} |")
    return "\n".join(lines)


def _notebook_title(path: Path) -> str:
    """The notebook's first markdown heading (`# # Title`), else its file name."""
    for line in path.read_text().splitlines():
        if line.startswith("# # "):
            return line[4:].strip()
    return path.stem.replace("_", " ").lstrip("0123456789 ").capitalize()


# mkdocs hook events


def on_config(config, **kwargs):
    """List docs/notebooks/*.py (jupytext percent scripts) under the nav's Notebooks section, so
    a notebook added there shows in the site without editing mkdocs.yml."""
    found = sorted(Path(config["docs_dir"], "notebooks").glob("*.py"))
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and NOTEBOOKS in entry:
            listed = entry[NOTEBOOKS]
            names = {next(iter(e.values())) if isinstance(e, dict) else e for e in listed}
            for path in found:
                rel = f"notebooks/{path.name}"
                if rel not in names:
                    listed.append({_notebook_title(path): rel})
    return config


def on_page_markdown(markdown, page, **kwargs):
    if MARKER in markdown:
        return markdown.replace(MARKER, config_table())
    return markdown


if __name__ == "__main__":
    print(config_table())
