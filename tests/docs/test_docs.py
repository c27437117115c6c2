"""The docs: the site builds with --strict, its configuration table is the code's, and the README
stays short and shows only command lines that parse."""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import nin_search
from nin_search.cli.main import parser
from nin_search.engine.config import Config, flatten

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_MAX_LINES = 150  # issue 36 §1: "at most ~150 lines"
# pages that describe the commands as they are now (the results pages record past commands)
CURRENT_PAGES = ["README.md", "docs/getting-started.md", "docs/answers.md", "docs/commands"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built as `make docs` builds it, into a temporary folder (about 10 s)."""
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q"]
    cmd += ["-f", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)]
    # cwd: mkdocs-jupyter writes its cache under the working directory, kept out of the tree
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_site_builds_strict_with_every_nav_page(site):
    # a strict build that succeeded wrote the home page, the answers page and the API reference
    for page in ["index.html", "answers/index.html", "api/index.html", "results/index.html"]:
        assert (site / page).is_file(), page


def test_api_reference_documents_every_public_name(site):
    # mkdocstrings rendered an entry for each name of nin_search.__all__, from its docstring
    page = (site / "api" / "index.html").read_text()
    missing = [n for n in nin_search.__all__ if f'id="nin_search.{n}"' not in page]
    assert not missing, f"no API entry for {missing}"


def test_configuration_page_lists_every_key_with_its_default(site):
    # the table is generated from the dataclasses (docs/gen_config.py): every key with its default
    page = html.unescape((site / "configuration" / "index.html").read_text())
    cell = r"<td><code>([^<]*)</code></td>"
    rows = dict(re.findall(cell + r"\s*" + cell, page))
    expected = {k: json.dumps(v) for k, v in flatten(Config()).items()}
    assert rows == expected


def test_notebooks_are_listed_in_the_nav(site):
    # every jupytext script in docs/notebooks/ has its page under Notebooks
    for script in sorted((ROOT / "docs" / "notebooks").glob("*.py")):
        assert (site / "notebooks" / script.stem / "index.html").is_file(), script.name


def test_readme_is_short():
    # issue 36 §1: the README is a tour; everything else lives in docs/
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/"


def _shown_commands(paths: list[str]) -> list[tuple[str, str]]:
    """(file, command line) for every `python -m nin_search ...` line in a sh code block."""
    files: list[Path] = []
    for p in paths:
        path = ROOT / p
        files += sorted(path.glob("*.md")) if path.is_dir() else [path]
    found = []
    for f in files:
        in_sh = False
        for line in f.read_text().splitlines():
            if line.startswith("```"):
                in_sh = line.strip() in ("```sh", "```bash")
                continue
            m = re.search(r"python -m nin_search (.*)", line)
            if in_sh and m and not line.lstrip().startswith("#"):
                found.append((str(f.relative_to(ROOT)), m.group(1)))
    return found


SHOWN = _shown_commands(CURRENT_PAGES)


def test_readme_shows_every_command():
    # one example per command of the CLI in the README (the dashboard's page may add its own)
    shown = {args.split()[0] for f, args in SHOWN if f == "README.md"}
    commands = set(parser()._subparsers._group_actions[0].choices)
    assert commands - shown <= {"dashboard"}, f"README shows no example of {commands - shown}"


@pytest.mark.parametrize("where,args", SHOWN, ids=[f"{f}: {a[:40]}" for f, a in SHOWN])
def test_shown_command_line_parses(where, args):
    # the line as a reader would paste it (after the shell strips its comment and quotes) parses,
    # and a study file it names exists in the repository
    argv = shlex.split(args, comments=True)
    argv = [a for a in argv if a not in ("...",)]
    if any(a.startswith("[") or re.fullmatch(r"[A-Z_|]+(\.toml)?", a) for a in argv):
        pytest.skip("a synopsis: [options] and placeholders (RUN_ID, STUDY.toml)")
    try:
        parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `python -m nin_search {args}` does not parse (exit {e.code})")
    for a in argv:
        if a.endswith(".toml") and a.startswith(("studies/", "experiments/")):
            assert (ROOT / a).is_file(), f"{where}: {a} does not exist"


def test_readme_python_example_uses_public_names():
    # every ns.NAME the README's Python example calls is in nin_search.__all__
    text = README.read_text()
    block = text[text.index("```python") : text.index("```", text.index("```python") + 3)]
    used = set(re.findall(r"\bns\.(\w+)", block))
    assert used and used <= set(nin_search.__all__), used - set(nin_search.__all__)


def test_readme_links_point_to_files():
    # the README's links into docs/ and benchmarks/ name files that exist (GitHub renders them)
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    missing = [link for link in local if not (ROOT / link).exists()]
    assert local and not missing, missing
