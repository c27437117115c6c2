"""The Python API in a real Jupyter kernel (nbclient + ipykernel), as a notebook user runs it:
the README's example on tiny settings, its progress bars in the cells' outputs, its figure
drawn in the cell, and no signal handler left behind by a call."""

from __future__ import annotations

import json

import pytest
from builders import API_TINY as TINY
from builders import ablation_text, study_text, with_mlflow_store

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

CELLS = [
    # what the notebook starts with: Jupyter's own SIGINT handling, kept to compare
    """import signal
sigint = signal.getsignal(signal.SIGINT)
import nin_search as ns
tiny = json.loads(TINY)""",
    """found = ns.find_lr(profile="cpu", overrides=tiny)
found.lr, found.range""",
    "found.plot()",
    """run = ns.train(profile="cpu", overrides=tiny | {"train.lr": found.lr, "train.epochs": 2},
               experiment="nb")
print("history rows", len(run.history), "best", run.best_val_acc)""",
    """model = ns.load_model(run.run_id)
ev = ns.evaluate(run.run_id, split="test")
print("eval mode", not model.training, "accuracy", ev.accuracy)""",
    # in the cell of the calls: the kernel puts its own handler back when a cell ends
    """study = ns.sweep("sweep.toml", n_trials=2)
abl = ns.ablate("ablate.toml", seeds=[0, 1])
print("sweep trials", len(study.trials), "arms", len(abl.summary))
print("SIGINT unchanged", signal.getsignal(signal.SIGINT) is sigint)""",
    """print("layers", len(ns.summary(profile="cpu")))""",
]


def test_the_api_example_runs_in_a_jupyter_kernel(tmp_path, mlflow_db, data, monkeypatch):
    folder = with_mlflow_store(tmp_path, mlflow_db)
    (folder / "sweep.toml").write_text(study_text("nb-sweep", data))
    (folder / "ablate.toml").write_text(ablation_text("nb-ablate", data))
    for k in ("MLFLOW_TRACKING_URI", "NIN_SEARCH_STORAGE", "NIN_SEARCH_COMMAND"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NIN_SEARCH_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch: one thread, as the tests
    tiny = json.dumps(TINY | {"data.data_dir": str(data)})
    first = f"import json\nTINY = {tiny!r}\n" + CELLS[0]
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) for c in [first, *CELLS[1:]]]
    )
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    outputs = [o for cell in nb.cells for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    stderr = "".join(o.text for o in outputs if o.get("name") == "stderr")
    widgets = [
        o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    # the progress bars show: tqdm's widget, or its text bar where ipywidgets is missing
    assert widgets or ("epoch 1/2" in stderr and "lr-finder" in stderr), stderr[:2000]
    # the figure draws in its cell
    (fig,) = nb.cells[2].outputs
    assert "application/vnd.plotly.v1+json" in fig["data"]
    # every call returned its value: nothing had to be read from the output
    assert "history rows 2 best" in text and "eval mode True accuracy" in text
    assert "sweep trials 2 arms 2" in text and "layers" in text
    # no signal handler of ours stayed installed after a call returned
    assert "SIGINT unchanged True" in text
