"""optuna-dashboard on every study: a tiny sweep names its objective and writes its note, its
summary gives the `dashboard` command, and `python -m nin_search dashboard` serves the study's
page to a real browser (Debian's /usr/bin/chromium driven by Playwright) that shows the trials
under the metric's name. Mistakes are one line and exit 2, a password never shows."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from builders import (
    _env,
    ablation_text,
    nin_here,
    nin_here_ok,
    sqlite_url,
    with_mlflow_store,
    write_study,
)

from nin_search.search.dashboard import dashboard_command, write_note
from nin_search.search.studies import open_study
from nin_search.spec.ablation import load_ablation

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, data: Path, mlflow_db: Path) -> SimpleNamespace:
    """A 2-trial sweep named "dash" on fresh default stores, run once in this process."""
    folder = with_mlflow_store(tmp_path_factory.mktemp("dash"), mlflow_db)
    write_study(folder, "dash", data, n_trials=2, top='keep_models = "none"')  # no model logged
    res = nin_here_ok("sweep", "study.toml", cwd=folder)
    study = optuna.load_study(study_name="dash", storage=sqlite_url(folder))
    return SimpleNamespace(folder=folder, out=res.stdout, study=study)


def one_line_exit_2(res: subprocess.CompletedProcess) -> str:
    # exit code 2 and one line on stderr, nothing served
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    return res.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- what a sweep or an ablation leaves for the dashboard -----------------------------------


def test_a_sweep_names_its_objective(swept):
    # the dashboard and Optuna's plots say best_val_acc, not "Objective 0"
    assert swept.study.metric_names == ["best_val_acc"]


def test_an_ablation_names_its_objective(tmp_path: Path, data: Path):
    (tmp_path / "abl.toml").write_text(ablation_text("abl", data))
    study = open_study(load_ablation(str(tmp_path / "abl.toml")), f"sqlite:///{tmp_path}/o.db")
    # an ablation's objective is final_val_acc unless its file says otherwise
    assert study.metric_names == ["final_val_acc"]


def test_a_sweep_notes_its_study_file_mlflow_parent_run_and_report_folder(swept):
    from optuna_dashboard import get_note

    note = get_note(swept.study)
    parent = swept.study.user_attrs["mlflow_parent_run_id"]
    # the note says where the rest of the study's record is
    assert "study file: `study.toml`" in note
    assert f"experiment `dash` (id 1), parent run `{parent}`" in note
    assert "reports/dash/index.html" in note


def test_a_note_of_the_users_own_is_kept():
    pytest.importorskip("optuna_dashboard")
    from optuna_dashboard import get_note, save_note

    study = optuna.create_study(study_name="mine")
    save_note(study, "## what I tried\nwider nets")
    write_note(study, "## mine (nin-search)\n- study file: `s.toml`")
    # a note written in the dashboard is not overwritten by the next sweep
    assert get_note(study) == "## what I tried\nwider nets"


def test_without_optuna_dashboard_the_note_is_skipped_quietly(capsys):
    study = optuna.create_study(study_name="bare")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "optuna_dashboard", None)  # its import raises ImportError
        write_note(study, "## bare (nin-search)")
    # no error, no output, no note: the note is optional
    assert capsys.readouterr() == ("", "")
    pytest.importorskip("optuna_dashboard")
    from optuna_dashboard import get_note

    assert get_note(study) == ""


def test_the_summary_gives_the_dashboard_command_beside_the_mlflow_ui(swept):
    last = next(line for line in swept.out.splitlines() if line.startswith("Optuna: "))
    # one line: both stores and the command that opens each
    assert "open the dashboard with: python -m nin_search dashboard study.toml;" in last
    assert "open the UI with: " in last


def test_the_dashboard_command_hands_a_password_over_masked_and_not_as_an_option():
    cmd = dashboard_command("s.toml", "postgresql://u:secret@db/optuna")
    # the password is neither shown nor put in an option that `ps` shows
    assert cmd == "NIN_SEARCH_STORAGE='postgresql://u:***@db/optuna' python -m nin_search " + (
        "dashboard s.toml"
    )
    assert dashboard_command("s.toml", "runs/s.log") == (
        "python -m nin_search dashboard s.toml --storage runs/s.log"
    )


# --- the command's mistakes: one line, exit 2 -----------------------------------------------


def test_an_unknown_study_is_one_line_naming_the_studies_there(swept):
    err = one_line_exit_2(nin_here("dashboard", "nope", cwd=swept.folder))
    assert "study 'nope' is not in sqlite:///mlruns/optuna.db; it holds: dash" in err


def test_a_busy_port_is_one_line(swept):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = nin_here("dashboard", "study.toml", "--port", str(port), cwd=swept.folder)
    assert f"--port {port} on 127.0.0.1 is not free" in one_line_exit_2(res)


def test_a_missing_extra_is_one_line_with_the_install_command(swept, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    err = one_line_exit_2(nin_here("dashboard", "study.toml", cwd=swept.folder))
    assert "pip install 'nin-search[dashboard]'" in err


def test_a_storage_that_cannot_be_opened_is_one_line_with_the_password_masked(tmp_path: Path):
    url = "postgresql://u:secret@127.0.0.1:1/db"  # port 1: refused at once
    res = nin_here("dashboard", "dash", "--storage", url, cwd=tmp_path)
    assert "--storage postgresql://u:***@127.0.0.1:1/db" in one_line_exit_2(res)
    assert "secret" not in res.stdout + res.stderr


# --- the dashboard in a real browser --------------------------------------------------------


def _served(proc: subprocess.Popen, seconds: float = 60) -> list[str]:
    """The command's lines up to the one that gives the URL, or a failure with its output."""
    lines: queue.Queue[str] = queue.Queue()
    read = lambda: [lines.put(x.rstrip()) for x in proc.stdout]  # noqa: E731
    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    while not (seen and seen[-1].startswith("open ")):
        try:
            seen.append(lines.get(timeout=seconds))
        except queue.Empty:
            raise AssertionError(f"no URL within {seconds} s: {seen}") from None
    return seen


def test_the_dashboard_shows_the_trials_under_the_metric_name(swept):
    if not Path(CHROMIUM).exists() and not os.environ.get("CI"):  # CI installs it: never skip
        pytest.skip("no chromium (apt-get install chromium)")
    pytest.importorskip("optuna_dashboard")
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "nin_search", "dashboard", "study.toml", "--port", str(port)],
        cwd=swept.folder,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = _served(server)
        study_id = swept.study._study_id
        # the study's own page, on 127.0.0.1 unless told otherwise
        url = f"http://127.0.0.1:{port}/dashboard/studies/{study_id}"
        assert lines[-1] == f"open {url} (Ctrl-C stops it)", lines
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            page.get_by_text("best_val_acc").first.wait_for(timeout=60_000)
            # the history plots each trial under the metric's name, never "Objective 0"
            for n in (0, 1):
                page.get_by_text(f"trial #{n}").first.wait_for(timeout=30_000)
            assert "Objective 0" not in page.inner_text("body")
            page.screenshot(path=str(swept.folder / "dashboard.png"), full_page=True)
            # its trials list names both trials, its note the MLflow parent run
            page.goto(f"{url}/trials")
            for n in (0, 1):
                page.get_by_text(f"Trial {n}", exact=True).first.wait_for(timeout=30_000)
            page.goto(f"{url}/note")
            parent = swept.study.user_attrs["mlflow_parent_run_id"]
            page.get_by_text(parent).first.wait_for(timeout=30_000)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    keep = os.environ.get("NIN_SEARCH_SCREENSHOTS")
    if keep:  # a place to look at it afterwards
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(swept.folder / "dashboard.png", Path(keep) / "dashboard.png")
