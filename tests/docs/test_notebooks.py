"""The docs' notebooks (docs/notebooks/*.py, jupytext percent scripts) run top to bottom in a real
Jupyter kernel on real Fashion-MNIST, each within 300 s, and show what their text says they show.

Each notebook works in a tempfile.mkdtemp() folder of its own; TMPDIR puts that folder under
tmp_path, so nothing lands in the checkout and pytest cleans it up.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).parents[2] / "docs" / "notebooks").glob("*.py"))
BUDGET_S = 300  # per notebook, all cells together; each takes under 2 minutes on 2 idle cores
PLOTLY = "application/vnd.plotly.v1+json"


def run_notebook(path: Path) -> tuple[object, float]:
    """The executed notebook and its wall time; CellExecutionError (with the cell's traceback)
    on a failing cell, a timeout once the notebook's BUDGET_S is spent."""
    nb = jupytext.read(path)
    deadline = time.monotonic() + BUDGET_S
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),  # what is left
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.monotonic()
    client.execute()
    return nb, time.monotonic() - start


def outputs(nb) -> list[dict]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.get("name") == "stdout")


def last_stdout(nb) -> str:
    return stdout([c for c in nb.cells if c.cell_type == "code"][-1])


def figures(nb) -> list[dict]:
    """Every plotly figure drawn, as its JSON (data and layout)."""
    return [o.data[PLOTLY] for o in outputs(nb) if PLOTLY in o.get("data", {})]


def trace_names(fig: dict) -> list[str]:
    return [t.get("name") or "" for t in fig["data"]]


def html_outputs(nb) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in outputs(nb))


def check_find_lr(nb) -> None:
    # the last cell states the recommendation, and it lies inside its sweep range
    m = re.search(r"recommended train.lr = (\S+); sweep range \[(\S+), (\S+)\]", last_stdout(nb))
    assert m, last_stdout(nb)
    lr, low, high = map(float, m.groups())
    assert 1e-6 < low < lr < high < 10
    # the curve is drawn with both smoothings and the recommendation marked
    (fig,) = [f for f in figures(nb) if any("(recommended)" in n for n in trace_names(f))]
    names = trace_names(fig)
    assert any(n.startswith("causal EMA") for n in names), names
    assert any(n.startswith("zero-phase") for n in names), names
    # the notebook's reading by hand agrees with the 'lowest' rule, as its text says
    text = "".join(stdout(c) for c in nb.cells if c.cell_type == "code")
    hand = re.search(r"lowest zero-phase loss at lr (\S+) \(rule 'lowest': (\S+)\)", text)
    assert hand and hand.group(1) == hand.group(2), text


def check_train_evaluate(nb) -> None:
    # trained past chance (0.1) on the test set: the run, the evaluation and the kept model fit
    m = re.search(
        r"test accuracy (\S+): (\d+) of (\d+) test images misclassified", last_stdout(nb)
    )
    assert m, last_stdout(nb)
    assert float(m.group(1)) > 0.5 and m.group(3) == "10000"
    # the training curves and the confusion matrix (a heatmap) are drawn
    kinds = [{t["type"] for t in f["data"]} for f in figures(nb)]
    assert any("heatmap" in k for k in kinds), kinds
    # the gallery shows images with their true and predicted labels, misclassified first
    gallery = html_outputs(nb)
    assert "data:image/png;base64," in gallery and "true: " in gallery and "pred: " in gallery
    assert "misclassified (red, first)" in gallery


def check_sweep(nb) -> None:
    # Optuna's history, importances and slice plots of the returned study, over its 3 params
    titles = [f["layout"].get("title", {}).get("text", "") for f in figures(nb)]
    assert any("Optimization History" in t for t in titles), titles
    (importances,) = [f for f in figures(nb) if "Importance" in str(f["layout"].get("title"))]
    searched = {"train.lr", "model.dropout", "model.mlp_depth"}
    assert set(importances["data"][0]["y"]) == searched
    # one MLflow run per trial, plus the study's parent run
    m = re.search(r"MLflow runs in experiment 'notebook-sweep' : (\d+)", last_stdout(nb))
    assert m and int(m.group(1)) == 6 + 1, last_stdout(nb)


def check_ablation(nb) -> None:
    # the paired comparison over the three seeds asked for, and its plot
    m = re.search(r"fc - gap = [+-]\d\.\d+ final_val_acc over (\d+) seeds", last_stdout(nb))
    assert m and m.group(1) == "3", last_stdout(nb)
    assert figures(nb), "abl.plot() drew no figure"
    # the summary table and the report's summary.md render in the notebook
    shown = html_outputs(nb) + "".join(
        o.get("data", {}).get("text/markdown", "") for o in outputs(nb)
    )
    assert "p_value" in shown and "# Ablation notebook-ablate-head" in shown


CHECKS = {
    "01_find_lr": check_find_lr,
    "02_train_evaluate": check_train_evaluate,
    "03_sweep": check_sweep,
    "04_ablation": check_ablation,
}


def test_every_notebook_has_its_check():
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(CHECKS)


@pytest.fixture
def notebook_env(tmp_path, monkeypatch):
    """The kernel's environment: its temporary folder under tmp_path, the default stores of the
    folder it works in, no download, and one torch thread (the tests share two cores)."""
    from nin_search.engine.config import DataConfig
    from nin_search.engine.data import DataError, locate

    for k in ("MLFLOW_TRACKING_URI", "NIN_SEARCH_STORAGE", "NIN_SEARCH_COMMAND"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NIN_SEARCH_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    try:
        locate(DataConfig())
    except DataError as e:
        pytest.skip(f"the notebooks run on real Fashion-MNIST: {e}")
    return tmp_path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_notebook_runs_and_shows_what_it_says(path: Path, notebook_env: Path):
    nb, seconds = run_notebook(path)  # raises on the first cell that fails
    print(f"{path.name}: {seconds:.0f} s")
    CHECKS[path.stem](nb)
    # everything it wrote went to its temporary folder, none to the docs folder it started in
    assert list(notebook_env.glob("nin-notebook-*/mlruns"))
    assert not (path.parent / "mlruns").exists() and not (path.parent / "reports").exists()
