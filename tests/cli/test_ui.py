"""The MLflow UI comparison in a real browser: a tiny ablation, `python -m nin_search ui` on a free
port, the experiment page in headless Chromium (Debian's /usr/bin/chromium driven by
Playwright), every arm x seed run listed by name, and a screenshot."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from builders import CLI_TINY as TINY
from builders import _env, ablation_text, nin_here, nin_here_ok, with_mlflow_store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists() and not os.environ.get("CI"):  # CI installs it: never skip there
    pytest.skip("no chromium (apt-get install chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server at {url} not healthy within {seconds} s")


def _outside_address() -> str | None:
    """This machine's non-loopback address, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent for UDP connect
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


@contextlib.contextmanager
def ui_server(cwd: Path):
    """`python -m nin_search ui` on a free port in cwd; yields its URL, stops it afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "nin_search", "ui", "--port", str(port)],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # mlflow server starts workers: stop the whole group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def ui(tmp_path_factory, mlflow_db: Path, data: Path):
    """One store holding a tiny ablation and a `train --final-eval` run, `ui` serving it and a
    headless Chromium: the tests below look at different pages of the same server (one server
    start and one browser start instead of two)."""
    from playwright.sync_api import sync_playwright

    work = with_mlflow_store(tmp_path_factory.mktemp("ui"), mlflow_db)
    (work / "abl.toml").write_text(ablation_text("ui-ablation", data))
    nin_here_ok("ablate", "abl.toml", cwd=work)
    (work / "tiny.toml").write_text(TINY)
    res = nin_here(
        "train", "--config", "tiny.toml", "--set", f"data.data_dir={data}", "--final-eval",
        cwd=work,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    with ui_server(work) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield SimpleNamespace(work=work, url=url, browser=browser)
        finally:
            browser.close()


def test_mlflow_ui_lists_the_arm_runs(ui):
    work, url = ui.work, ui.url
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("ui-ablation").experiment_id

    port = int(url.rsplit(":", 1)[1])
    outside = _outside_address()
    if outside:  # bound to 127.0.0.1 only: not reachable on the machine's own address
        with pytest.raises(OSError), socket.create_connection((outside, port), timeout=2):
            pass
    names = ["gap seed 0", "gap seed 1", "fc seed 0", "fc seed 1"]
    page = ui.browser.new_page(viewport={"width": 1600, "height": 1000})
    # the experiment's runs table (MLflow 3 opens on its GenAI view unless told)
    page.goto(f"{url}/#/experiments/{exp_id}/runs?workflowType=machine_learning")
    parent = page.get_by_role("link", name="ui-ablation", exact=True).first
    parent.wait_for(timeout=90_000)
    # the arm runs are children of the study's run: expand it (the + before its name)
    row = page.locator("[role=row]", has=parent).first
    row.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    for name in names:
        page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    shot = work / "mlflow_ui.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("NIN_SEARCH_SCREENSHOTS")
    if keep:  # a place to look at it afterwards
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


def test_mlflow_ui_shows_a_train_runs_model_and_gallery(ui):
    work, url = ui.work, ui.url
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("nin-train").experiment_id
    run = client.search_runs([exp_id])[0]
    model_id = run.outputs.model_outputs[0].model_id
    base = f"#/experiments/{exp_id}"
    page = ui.browser.new_page(viewport={"width": 1600, "height": 1000})
    # the run's page lists its logged model, linked to the model's own page
    page.goto(f"{url}/{base}/runs/{run.info.run_id}")
    page.get_by_text("Logged models (1)").first.wait_for(timeout=90_000)
    assert page.locator(f"a[href*='models/{model_id}']").count() >= 1
    # its artifacts: the gallery of the final evaluation, previewed with its images
    page.goto(f"{url}/{base}/runs/{run.info.run_id}/artifacts")
    page.get_by_text("evaluation", exact=True).first.click()
    page.get_by_text("test", exact=True).first.click()
    page.get_by_text("predictions.html", exact=True).first.click()
    gallery = page.frame_locator("iframe").first
    gallery.locator("figure img").first.wait_for(timeout=90_000)
    assert gallery.locator("figure").count() == 16  # the whole 16-image test split
    assert "pred: " in gallery.locator("figure").first.inner_text()
    page.screenshot(path=str(work / "mlflow_gallery.png"), full_page=True)
    # the model's page: the MLflow model and the weights-only file beside it
    page.goto(f"{url}/{base}/models/{model_id}/artifacts")
    for name in ("MLmodel", "extra_files", "data"):
        page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    page.close()
    keep = os.environ.get("NIN_SEARCH_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "mlflow_gallery.png", Path(keep) / "mlflow_gallery.png")
