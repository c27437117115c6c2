"""The public Python API (`import nin_search as ns`), in this process, on the squares task.

One module fixture runs the README's notebook example once, as written but with tiny settings
(a 16 px Lin 2013 NiN at width 0.25, 192 training images, a 30-step range test, 2 epochs, a
2-trial sweep and a 2-arm x 2-seed ablation); the tests check what each call returned against
the stores it wrote.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import mlflow
import mlflow.tracking._tracking_service.utils as mlflow_uri
import optuna
import plotly.graph_objects as go
import pytest
import torch
from builders import API_TINY as TINY
from builders import ablation_text, inside, study_text, trials, with_mlflow_store
from optuna.trial import TrialState

import nin_search as ns
from nin_search.cli.main import main as cli


@pytest.fixture(scope="module")
def nb(tmp_path_factory, mlflow_db: Path, data: Path) -> SimpleNamespace:
    """The example of README's "Python API", each call's value kept."""
    folder = with_mlflow_store(tmp_path_factory.mktemp("api"), mlflow_db)
    tiny = TINY | {"data.data_dir": str(data)}
    (folder / "sweep.toml").write_text(study_text("api-sweep", data))
    (folder / "ablate.toml").write_text(ablation_text("api-ablate", data, seeds="[0, 1, 2]"))
    verbosity = optuna.logging.get_verbosity()
    out = io.StringIO()
    with inside(folder), contextlib.redirect_stdout(out):
        r = SimpleNamespace(folder=folder, sigint=signal.getsignal(signal.SIGINT))
        r.found = ns.find_lr(profile="cpu", overrides=tiny)
        r.run = ns.train(
            profile="cpu",
            overrides=tiny | {"train.lr": r.found.lr, "train.epochs": 2},
            experiment="nb",
        )
        r.model = ns.load_model(r.run.run_id)
        r.ev = ns.evaluate(r.run.run_id, split="test")
        r.study = ns.sweep("sweep.toml", n_trials=2)
        r.sigint_after_sweep = signal.getsignal(signal.SIGINT)
        r.abl = ns.ablate("ablate.toml", seeds=[0, 1])
        r.summary = ns.summary(profile="cpu")
    optuna.logging.set_verbosity(verbosity)
    r.out = out.getvalue()
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    return r


def test_find_lr_returns_a_recommendation_inside_its_sweep_range(nb):
    low, high = nb.found.range
    # the squares task's loss falls: a recommendation, within the range a sweep would search
    assert nb.found.status == "ok" and low < nb.found.lr < high
    # the value returned is the one logged to the finder's MLflow run
    logged = mlflow.get_run(nb.found.run_id).data.metrics
    assert logged["recommended_lr"] == nb.found.lr
    assert (logged["recommended_lr_low"], logged["recommended_lr_high"]) == nb.found.range


def test_find_lr_plot_draws_both_smoothings_and_marks_the_recommendation(nb):
    fig = nb.found.plot()
    names = [t.name for t in fig.data]
    assert isinstance(fig, go.Figure)
    assert any(n.startswith("causal EMA") for n in names)
    assert any(n.startswith("zero-phase") for n in names)
    # the recommended suggestion is marked at the lr returned
    (marker,) = [t for t in fig.data if "(recommended)" in t.name]
    assert list(marker.x) == [nb.found.lr]


def test_train_history_has_one_row_per_epoch_equal_to_the_logged_metrics(nb):
    h = nb.run.history
    assert list(h["epoch"]) == [1, 2]
    client = mlflow.MlflowClient()
    for key in ("train_loss", "val_loss", "val_acc", "lr"):
        logged = [m.value for m in client.get_metric_history(nb.run.run_id, key)]
        # floats as logged, epoch by epoch
        assert list(h[key]) == logged, key


def test_train_best_val_acc_is_the_logged_one_and_the_trained_lr_the_finders(nb):
    run = mlflow.get_run(nb.run.run_id)
    assert nb.run.best_val_acc == run.data.metrics["best_val_acc"] == nb.run.history.val_acc.max()
    # the lr found was trained with, in experiment nb, and the run finished
    assert float(run.data.params["train.lr"]) == nb.found.lr
    assert run.info.status == "FINISHED" and nb.run.status == "completed"
    assert mlflow.get_experiment(run.info.experiment_id).name == "nb"


def test_load_model_gives_the_trained_weights_in_eval_mode(nb):
    assert isinstance(nb.model, torch.nn.Module) and not nb.model.training
    trained = nb.run.model.state_dict()
    # the logged weights are the trained ones
    for k, v in nb.model.state_dict().items():
        assert torch.equal(v.cpu(), trained[k].cpu()), k
    assert ns.load_model(nb.run.model_uri).state_dict().keys() == trained.keys()


def test_evaluate_accuracy_is_the_confusion_matrix_trace_over_its_total(nb):
    c = nb.ev.confusion.to_numpy()
    assert c.sum() == 16  # every test image of the squares fixture
    assert nb.ev.accuracy == c.trace() / c.sum()
    # per-class rows sum to the same counts
    assert list(nb.ev.per_class["correct"]) == list(c.diagonal())
    assert list(nb.ev.per_class["images"]) == list(c.sum(axis=1))
    assert isinstance(nb.ev.plot(), go.Figure)


def test_evaluate_logs_its_files_to_the_models_run(nb):
    files = {
        f.path for f in mlflow.MlflowClient().list_artifacts(nb.run.run_id, "evaluation/test")
    }
    assert "evaluation/test/index.html" in files
    assert (nb.folder / nb.ev.folder / "index.html").is_file()


def test_sweep_returns_the_optuna_study_with_its_trials(nb):
    assert isinstance(nb.study, optuna.Study) and nb.study.study_name == "api-sweep"
    assert [t.state for t in nb.study.trials] == [TrialState.COMPLETE] * 2
    # the same study as in the storage
    assert [t.number for t in trials(nb.folder, "api-sweep")] == [0, 1]


def test_sweep_leaves_the_sigint_handler_as_it_found_it(nb):
    assert nb.sigint_after_sweep is nb.sigint


def test_ablate_summary_has_one_row_per_arm_over_the_seeds_asked_for(nb):
    s = nb.abl.summary
    assert list(s["arm"]) == ["gap", "fc"]  # the file's order
    assert list(s["n"]) == [2, 2]  # seeds=[0, 1], not the file's three
    cells = nb.abl.cells
    assert sorted(cells["seed"]) == [0, 0, 1, 1]
    # the mean is over the cells' values
    gap = cells[cells["arm"] == "gap"]["value"]
    assert s.set_index("arm").loc["gap", "mean"] == pytest.approx(gap.mean())
    assert isinstance(nb.abl.plot(), go.Figure)
    assert (nb.folder / nb.abl.folder / "summary.csv").is_file()


def test_summary_is_the_per_layer_table(nb):
    t = nb.summary
    assert t["params"].sum() == t.attrs["totals"]["params"]
    assert t["layer"].iloc[0] == "block1.conv" and list(t["output_shape"].iloc[0])[1:] == [28, 28]


@pytest.mark.parametrize(
    "overrides, argv",
    [
        ({"train.lr": -1.0}, ["--set", "train.lr=-1.0"]),
        ({"train.nope": 1}, ["--set", "train.nope=1"]),
        ({"train.epochs": "two"}, ["--set", "train.epochs='two'"]),
    ],
    ids=["range", "unknown", "type"],
)
def test_a_bad_override_raises_config_error_with_the_cli_line(overrides, argv, capsys, tmp_path):
    with inside(tmp_path):
        with pytest.raises(ns.ConfigError) as e:
            ns.train(profile="cpu", overrides=overrides)
        capsys.readouterr()
        code = cli(["train", "--profile", "cpu", *argv])
    # the same one line, which the command prints after "error: " with exit code 2
    assert code == 2
    assert capsys.readouterr().err == f"error: {e.value}\n"
    assert not (tmp_path / "mlruns").exists()  # nothing written


def test_ctrl_c_in_a_sweep_kills_the_trial_raises_and_restores_the_handlers(
    tmp_path, mlflow_db, data, monkeypatch
):
    import nin_search.search.objective as objective

    def pressed(*_a, **_k):  # Ctrl-C while the trial trains
        signal.raise_signal(signal.SIGINT)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("Ctrl-C did not interrupt")

    monkeypatch.setattr(objective, "fit", pressed)
    folder = with_mlflow_store(tmp_path, mlflow_db)
    (folder / "s.toml").write_text(study_text("api-ctrlc", data, n_trials=1))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with inside(folder), contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(KeyboardInterrupt):
            ns.sweep("s.toml")
    # no handler of ours stays installed after the call
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    (trial,) = trials(folder, "api-ctrlc")
    assert trial.state == TrialState.FAIL
    run = mlflow.MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}").get_run(
        trial.user_attrs["mlflow_run_id"]
    )
    # its MLflow run ended KILLED, as on the command line
    assert (run.info.status, run.data.tags["nin.state"]) == ("KILLED", "interrupted")


def test_progress_shows_on_a_terminal_and_in_jupyter_but_not_in_a_log(monkeypatch):
    from nin_search.tracking.runs import show_progress

    class Kernel:  # what get_ipython() returns inside a Jupyter kernel
        kernel = object()

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert show_progress() is False  # a cron log
    fake = ModuleType("IPython")
    fake.get_ipython = lambda: Kernel()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert show_progress() is True  # a notebook
    fake.get_ipython = lambda: object()
    assert show_progress() is False  # IPython in a terminal whose stderr is a file


def test_all_lists_exactly_the_public_names_each_documented_with_an_example():
    public = {n for n in dir(ns) if not n.startswith("_")}
    public -= {n for n in public if inspect.ismodule(getattr(ns, n))}  # subpackages
    assert public == set(ns.__all__)
    for name in ns.__all__:
        doc = inspect.getdoc(getattr(ns, name)) or ""
        # a docstring with a short example of its use
        assert "ns." in doc, name


def test_the_package_ships_py_typed():
    import tomllib

    assert (Path(ns.__file__).parent / "py.typed").is_file()
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["nin_search"]


def test_the_default_store_follows_the_working_directory_within_one_process(
    tmp_path: Path, monkeypatch
):
    from nin_search.tracking.store import setup_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(mlflow_uri, "_tracking_uri", mlflow_uri._tracking_uri)  # restored after
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    monkeypatch.chdir(first)
    setup_tracking()
    monkeypatch.chdir(second)
    setup_tracking()
    # a notebook that moves to another folder logs to that folder's mlruns/, not the first's
    # (MLflow's set_tracking_uri had left the first folder's path in $MLFLOW_TRACKING_URI)
    assert mlflow.get_tracking_uri() == f"sqlite:///{(second / 'mlruns/mlflow.db').resolve()}"
    assert "MLFLOW_TRACKING_URI" not in os.environ
