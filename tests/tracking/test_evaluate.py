"""Kept models end to end: `train` logs its model, `evaluate` reloads it by run id and by
models:/NAME@best after a tiny sweep, the confusion matrix and the gallery, the registry alias
moving on resume, keep_models, and every bad input. Real SQLite MLflow and Optuna stores."""

from __future__ import annotations

import ast
import base64
import csv
import re
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from builders import CLI_TINY as TINY
from builders import nin_here, nin_here_ok, squares, study_text, with_mlflow_store, write_idx

from nin_search.engine.config import ConfigError

N_TEST = 48  # images of the test split


def _store(folder: Path) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    return mlflow.MlflowClient()


def _local(uri: str) -> Path:
    """An artifact location (a path or a file:// URI) as a local path."""
    return Path(urllib.parse.urlparse(uri).path)


def _artifacts(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """Every file path under the run's artifacts."""
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_db: Path) -> SimpleNamespace:
    """One tiny `train --final-eval` through the CLI, on the squares task."""
    folder = with_mlflow_store(tmp_path_factory.mktemp("trained"), mlflow_db)
    for prefix, n, seed in (("train", 200, 0), ("t10k", N_TEST, 1)):
        x, y = squares(n, seed)
        (folder / "idx").mkdir(exist_ok=True)
        write_idx(folder / "idx" / f"{prefix}-images-idx3-ubyte", x)
        write_idx(folder / "idx" / f"{prefix}-labels-idx1-ubyte", y)
    (folder / "tiny.toml").write_text(TINY)
    res = nin_here(
        "train", "--config", "tiny.toml", "--set", f"data.data_dir={folder / 'idx'}",
        "--final-eval", cwd=folder,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    client = _store(folder)
    run = mlflow.search_runs(experiment_names=["nin-train"], output_format="list")[0]
    return SimpleNamespace(folder=folder, res=res, client=client, run=run, id=run.info.run_id)


def test_train_logs_its_model_with_the_weights_file_and_prints_the_size(trained):
    outputs = trained.run.outputs.model_outputs
    # one MLflow model on the run, with the weights-only file inside it
    assert len(outputs) == 1
    model = trained.client.get_logged_model(outputs[0].model_id)
    assert model.name == "model" and model.source_run_id == trained.id
    local = _local(model.artifact_location)
    assert (local / "MLmodel").is_file() and (local / "extra_files" / "nin_weights.pt").is_file()
    # the model's files are under mlruns/ (git-ignored), never in the source tree
    assert local.is_relative_to(trained.folder / "mlruns")
    assert re.search(rf"model: models:/{model.model_id} \([\d.]+ [KM]iB\)", trained.res.stdout)


def test_weights_file_loads_with_weights_only_into_build_model(trained):
    from nin_search.engine.model import build_model
    from nin_search.tracking.models import load

    loaded = load(trained.id)
    blob = torch.load(
        _local(trained.client.get_logged_model(loaded.model_id).artifact_location)
        / "extra_files/nin_weights.pt",
        weights_only=True,
    )
    # the resolved config travels with the weights and rebuilds the same network
    assert blob["config"]["model.preset"] == "lin2013" and blob["config"]["model.width"] == 0.125
    assert blob["config"]["train.precision"] in ("bf16", "fp32")
    net = build_model(loaded.cfg.model, blob["input_size"])
    net.load_state_dict(blob["state_dict"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k


def test_final_eval_logs_the_confusion_matrix_and_gallery_to_the_train_run(trained):
    files = _artifacts(trained.client, trained.id, "evaluation")
    names = ("index.html", "confusion_matrix.html", "predictions.html", "per_class.csv")
    assert {f"evaluation/test/{n}" for n in names} <= files


@pytest.fixture(scope="module")
def evaluated(trained) -> SimpleNamespace:
    res = nin_here("evaluate", trained.id, "--out", "ev", "--images", "10", cwd=trained.folder)
    assert res.returncode == 0, res.stderr
    return SimpleNamespace(res=res, out=trained.folder / "ev")


def test_evaluate_by_run_id_equals_the_logged_test_acc(trained, evaluated):
    logged = trained.run.data.metrics["test_acc"]
    # the same batches and precision as train --final-eval: the very same figure
    assert f"test_acc {logged:.4f}" in evaluated.res.stdout
    assert "final evaluation on the test set" in evaluated.res.stdout
    rows = list(csv.DictReader((evaluated.out / "per_class.csv").open()))
    assert sum(int(r["correct"]) for r in rows) / N_TEST == logged
    # per-class accuracy under the class names, and the most confused pairs
    assert [r["class"] for r in rows][:2] == ["T-shirt/top", "Trouser"] and len(rows) == 10
    assert "Ankle boot" in evaluated.res.stdout and "most confused" in evaluated.res.stdout


def test_confusion_matrix_sums_to_the_split_and_its_diagonal_to_the_correct(trained, evaluated):
    rows = list(csv.reader((evaluated.out / "confusion_matrix.csv").open()))[1:]
    counts = [[int(c) for c in row[1:]] for row in rows]
    correct = round(trained.run.data.metrics["test_acc"] * N_TEST)
    assert sum(map(sum, counts)) == N_TEST
    assert sum(counts[k][k] for k in range(10)) == correct
    page = (evaluated.out / "confusion_matrix.html").read_text()
    assert "heatmap" in page and "row-normalised" in page  # plotly, counts and rates


def test_gallery_holds_n_labelled_28px_images_misclassified_first(evaluated):
    page = (evaluated.out / "predictions.html").read_text()
    figures = re.findall(r"<figure class='(ok|bad)'>(.*?)</figure>", page)
    assert len(figures) == 10
    # misclassified (bad) ones come first, and every image has its true and predicted label
    states = [s for s, _ in figures]
    assert states == sorted(states)  # "bad" < "ok"
    for _, body in figures:
        assert "true: " in body and "pred: " in body
        png = base64.b64decode(re.search(r"base64,([^']+)'", body).group(1))
        # a PNG whose header says 28 x 28: the native resolution
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(png[16:20], "big") == int.from_bytes(png[20:24], "big") == 28
    index = (evaluated.out / "index.html").read_text()
    for name in ("confusion_matrix.html", "predictions.html", "per_class.csv"):
        assert f"href='{name}'" in index


def test_evaluate_on_val_logs_its_files_to_the_run(trained):
    res = nin_here("evaluate", trained.id, "--split", "val", "--out", "ev-val", cwd=trained.folder)
    assert res.returncode == 0, res.stderr
    last_val = trained.client.get_metric_history(trained.id, "val_acc")[-1].value
    # the validation split as fit() evaluated it after the last epoch
    assert f"val_acc {last_val:.4f}" in res.stdout
    files = _artifacts(trained.client, trained.id, "evaluation/val")
    assert "evaluation/val/predictions.html" in files and "evaluation/val/per_class.csv" in files


def test_torch_load_is_only_called_with_weights_only():
    package = Path(__file__).resolve().parents[2] / "nin_search"
    calls = 0
    for path in package.rglob("*.py"):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                # weights_only=True, spelled out: no pickle of ours ever runs code
                assert isinstance(kw.get("weights_only"), ast.Constant), path
                assert kw["weights_only"].value is True, path
        # and torch.load is never taken by another name (a = torch.load; a(...))
        assert text.count("torch.load") == len(re.findall(r"torch\.load\(", text)), path
    assert calls >= 1


# --- sweeps: the best model kept and registered -------------------------------------------------


def _lr_study(data: Path, low: float, top: str) -> str:
    return study_text(
        "keep-sweep", data, n_trials=1, params={"train.lr": f"{{ low = {low}, high = {low} }}"},
        top=top,
    )  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory, mlflow_db: Path, data: Path) -> SimpleNamespace:
    """A 1-trial sweep at a learning rate that learns nothing, then resumed to 2 trials at one
    that learns: the second trial is better by construction."""
    folder = with_mlflow_store(tmp_path_factory.mktemp("swept"), mlflow_db)
    top = 'objective = "best_val_loss"'
    (folder / "study.toml").write_text(_lr_study(data, 1e-7, top))
    first = nin_here_ok("sweep", "study.toml", cwd=folder)
    client = _store(folder)
    v1 = client.get_model_version_by_alias("keep-sweep", "best")
    ev1 = nin_here(
        "evaluate", "models:/keep-sweep@best", "--split", "val", "--out", "e1", cwd=folder
    )
    (folder / "study.toml").write_text(_lr_study(data, 3e-3, top))
    second = nin_here_ok("sweep", "study.toml", "--n-trials", "2", cwd=folder)
    return SimpleNamespace(
        folder=folder, first=first, second=second, client=client, v1=v1, ev1=ev1
    )


def test_sweep_registers_its_best_model_under_the_study_name(swept):
    assert swept.v1.version == 1 and swept.v1.tags["nin.trial"] == "0"
    assert "registry: models:/keep-sweep@best -> version 1 (trial 0" in swept.first.stdout


def test_evaluate_by_registry_alias_loads_the_best_trials_model(swept):
    assert swept.ev1.returncode == 0, swept.ev1.stderr
    run_id = swept.v1.run_id
    last_val = swept.client.get_metric_history(run_id, "val_acc")[-1].value
    assert f"val_acc {last_val:.4f}" in swept.ev1.stdout and run_id in swept.ev1.stdout


def test_resumed_sweep_that_improves_moves_the_alias_and_drops_the_old_model(swept):
    v2 = swept.client.get_model_version_by_alias("keep-sweep", "best")
    # the better trial 1 now holds the alias; trial 0's model and version are gone (keep best)
    assert v2.version == 2 and v2.tags["nin.trial"] == "1"
    assert "moved from version 1" in swept.second.stdout
    versions = swept.client.search_model_versions("name = 'keep-sweep'")
    assert [v.version for v in versions] == [2]
    from nin_search.tracking.models import live_models

    assert [m.tags["nin.trial"] for m in live_models("keep-sweep")] == ["1"]
    assert not _artifacts(swept.client, swept.v1.run_id, "evaluation")  # its val evaluation too


def test_sweep_report_links_the_kept_model_and_the_best_confusion_matrix(swept):
    res = nin_here("report", "study.toml", cwd=swept.folder)
    assert res.returncode == 0, res.stderr
    out = swept.folder / "reports" / "keep-sweep"
    index = (out / "index.html").read_text()
    model_id = swept.client.get_model_version_by_alias("keep-sweep", "best").source[8:]
    assert "kept models" in index and f"models:/{model_id}" in index
    assert "href='best_confusion_matrix.html'" in index
    assert "heatmap" in (out / "best_confusion_matrix.html").read_text()


@pytest.mark.parametrize(("keep", "models"), [("all", 2), ("none", 0)])
def test_keep_models_all_keeps_every_trial_and_none_keeps_nothing(
    work: Path, data: Path, keep: str, models: int
):
    from nin_search.tracking.models import live_models

    (work / "s.toml").write_text(study_text("keep-" + keep, data, top=f'keep_models = "{keep}"'))
    res = nin_here_ok("sweep", "s.toml", cwd=work)
    _store(work)
    assert len(live_models("keep-" + keep)) == models
    # nothing kept, nothing registered
    assert ("registry:" in res.stdout) == (keep != "none")


def test_keep_models_defaults_and_bad_values(tmp_path: Path, data: Path):
    from builders import ablation_text

    from nin_search.spec.ablation import load_ablation
    from nin_search.spec.study import load_study

    (tmp_path / "s.toml").write_text(study_text("k", data))
    (tmp_path / "a.toml").write_text(ablation_text("a", data))
    assert load_study(str(tmp_path / "s.toml")).keep_models == "best"
    assert load_ablation(str(tmp_path / "a.toml")).keep_models == "none"
    (tmp_path / "bad.toml").write_text(study_text("k", data, top='keep_models = "some"'))
    with pytest.raises(ConfigError, match="keep_models = 'some' is not allowed; expected one of"):
        load_study(str(tmp_path / "bad.toml"))


# --- bad input: one line, exit 2, nothing written ----------------------------------------------


def _bad_model(trained, how: str) -> str:
    """A run id or URI that evaluate must refuse, made in the trained store."""
    from torch import nn

    from nin_search.engine.config import load_config
    from nin_search.tracking.models import log_model

    client = _store(trained.folder)
    exp_id = trained.run.info.experiment_id
    if how == "no model":
        run = client.create_run(exp_id)
        client.set_terminated(run.info.run_id)
        return run.info.run_id
    if how.startswith("deleted"):  # the trained model again, in a run deleted afterwards
        from nin_search.tracking.models import load

        good = load(trained.id)
        with mlflow.start_run(experiment_id=exp_id) as run:
            model_id, _ = log_model(good.model, good.cfg, good.input_size, good.num_classes)
        client.delete_run(run.info.run_id)
        return run.info.run_id if how == "deleted run" else f"models:/{model_id}"
    cfg = load_config(trained.folder / "tiny.toml")
    with mlflow.start_run(experiment_id=exp_id) as run:
        if how == "other format":
            info = mlflow.pytorch.log_model(
                nn.Linear(2, 2), name="model", serialization_format="pickle",
                pip_requirements=["torch"],
            )  # fmt: skip
            return info.model_uri
        if how == "invalid config":
            cfg.model.width = 99.0  # past validation: what an older or newer version might write
        model_id, _ = log_model(nn.Sequential(nn.Flatten()), cfg, 28)
    if how == "truncated":
        path = _local(client.get_logged_model(model_id).artifact_location) / "extra_files"
        weights = path / "nin_weights.pt"
        weights.write_bytes(weights.read_bytes()[:200])
    return run.info.run_id


def _with_file(path: Path, ref: str) -> str:
    path.write_text("kept")
    return ref


BAD = {
    "unknown run": (lambda t: "0123456789abcdef0123456789abcdef", [], "not found"),
    "no model": (lambda t: _bad_model(t, "no model"), [], "it has no logged model"),
    "invalid config": (
        lambda t: _bad_model(t, "invalid config"),
        [],
        "its config no longer validates",
    ),
    "truncated": (lambda t: _bad_model(t, "truncated"), [], "is corrupt or truncated"),
    "other format": (lambda t: _bad_model(t, "other format"), [], "not a nin-search model"),
    "not a uri": (lambda t: "s3://bucket/model", [], "expected a run id, models:/NAME@ALIAS"),
    "unknown alias": (lambda t: "models:/nope@best", [], "not found"),
    "images 0": (lambda t: t.id, ["--images", "0"], "--images 0 is not allowed"),
    "images -3": (lambda t: t.id, ["--images", "-3"], "--images -3 is not allowed"),
    # a deleted run is refused before its model or the data are read: evaluating it would
    # write into it; and so is a kept model whose run was deleted
    "deleted run": (lambda t: _bad_model(t, "deleted run"), [], "is deleted; restore it"),
    "model of a deleted run": (
        lambda t: _bad_model(t, "deleted model"),
        [],
        "is deleted; restore it",
    ),
    # the run's model is there, only the path after the run id is wrong: not "deleted"
    "wrong model path": (
        lambda t: f"runs:/{t.id}/nomodel",
        [],
        "has no model 'nomodel'; its model is runs:/",
    ),
    # --out is checked before the evaluation, not after it
    "out a file": (
        lambda t: _with_file(t.folder / "afile", t.id),
        ["--out", "afile"],
        "--out afile: afile is a file, not a folder",
    ),
    "out in /proc": (
        lambda t: t.id,
        ["--out", "/proc/nope"],
        "--out /proc/nope: cannot create a folder in /proc",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(trained, case: str, monkeypatch, capsys):
    from nin_search.cli.main import main

    make, extra, message = BAD[case]
    ref = make(trained)
    before = _artifacts(trained.client, trained.id)
    # in this process (the next test runs one through the CLI): the default store in its folder
    monkeypatch.chdir(trained.folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capsys.readouterr()
    code = main(["evaluate", ref, "--out", f"bad-{case}", *extra])
    out, err = capsys.readouterr()
    assert code == 2, err
    # one line naming what is wrong, and no file written anywhere
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert message in err
    # refused before the work: no model was loaded onto the device and evaluated
    assert "model: models:/" not in out
    assert not (trained.folder / f"bad-{case}").exists()
    assert _artifacts(trained.client, trained.id) == before
    if ref != trained.id and re.fullmatch(r"[0-9a-f]{32}", ref) and case != "unknown run":
        assert not _artifacts(trained.client, ref, "evaluation")


def test_a_bad_run_id_through_the_cli_is_one_line_without_traceback(trained):
    res = nin_here("evaluate", "0123456789abcdef0123456789abcdef", cwd=trained.folder)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "0123456789abcdef0123456789abcdef" in res.stderr and "Traceback" not in res.stderr
