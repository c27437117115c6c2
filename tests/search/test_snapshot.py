"""Epoch snapshots (snapshot.py): a killed run goes on from its last epoch, bit for bit.

The engine tests interrupt fit() from on_epoch (as Ctrl-C does) and resume it from the file; the
end-to-end test SIGKILLs an ablation worker mid-cell and compares the resumed cell with the same
study run without a kill.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from builders import (
    ablation_text,
    children,
    nin_here_ok,
    runs,
    squares,
    start_nin,
    start_sweep,
    swept_here,
    trials,
    with_mlflow_store,
    write_study,
)
from optuna.trial import TrialState

from nin_search.engine.config import load_config
from nin_search.engine.data import split_data
from nin_search.engine.snapshot import FORMAT, remove, snapshot_dir, snapshot_path
from nin_search.engine.train import fit
from nin_search.stores.locks import store_file

# BatchNorm, dropout and augmentation on: every piece of state a resumed epoch depends on
# (buffers, the global RNG, the batch-order generator) is exercised
SMALL = [
    "model.preset=lin2013",
    "model.width=0.25",
    "model.batch_norm=true",
    "model.dropout=0.3",
    "data.resize=16",
    "data.augment=true",
    "data.val_size=16",
    "train.batch_size=16",
    "train.epochs=4",
]
TIMES = ("img_per_s", "epoch_time_s")  # measured again by a resumed run's new epochs
ROOT = Path("mlruns/snapshots")  # beside the default store, mlruns/optuna.db


def config(sets: list[str] = ()):
    return load_config(overrides=SMALL + list(sets))


def data_for(cfg):
    x, y = squares(80)
    return split_data(x, y, cfg.data, "cpu")


class Interrupted(Exception):
    pass


def interrupt_at(epoch: int):
    """An on_epoch that stops the run as a kill would, at the start of `epoch`'s logging (so
    the snapshot holds the epoch before it), and records what it was shown."""
    seen = []

    def on_epoch(m: dict) -> None:
        seen.append(m)
        if m["epoch"] == epoch:
            raise Interrupted

    return on_epoch, seen


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMES} for h in history]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


SCHEDULES = [
    ["train.optimizer=adamw", "train.lr=0.003", "train.schedule=onecycle"],
    ["train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9", "train.schedule=cosine",
     "train.warmup_epochs=1"],
    ["train.optimizer=sgd", "train.lr=0.05", "train.schedule=step", "train.step_size=1",
     "train.gamma=0.5"],
    ["train.optimizer=adam", "train.lr=0.003", "train.schedule=constant", "train.warmup_epochs=1"],
]  # fmt: skip


@pytest.mark.parametrize("sets", SCHEDULES, ids=["onecycle", "cosine-warmup", "step", "constant"])
def test_a_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, sets):
    cfg = config(sets)
    straight = fit(cfg, data_for(cfg))
    path = tmp_path / "s.pt"
    on_epoch, _ = interrupt_at(3)
    with pytest.raises(Interrupted):
        fit(cfg, data_for(cfg), on_epoch, snapshot=path)
    # the kill came while epoch 3 was being logged: the file holds epochs 1 and 2
    assert torch.load(path, weights_only=True)["epoch"] == 2
    seen = []
    resumed = fit(cfg, data_for(cfg), seen.append, snapshot=path)
    # epochs 1-2 replayed to on_epoch (marked), 3-4 trained: the same numbers as never stopping
    assert [(m["epoch"], m.get("resumed", False)) for m in seen] == [
        (1, True), (2, True), (3, False), (4, False)
    ]  # fmt: skip
    assert resumed.status == "completed"
    assert without_times(resumed.history) == without_times(straight.history)
    assert same_weights(resumed.model, straight.model)
    assert torch.load(path, weights_only=True)["epoch"] == 4  # the caller removes it when done


def test_a_finished_snapshot_trains_nothing_and_gives_the_trained_model(tmp_path):
    cfg = config(["train.epochs=2"])
    path = tmp_path / "s.pt"
    first = fit(cfg, data_for(cfg), snapshot=path)
    seen = []
    again = fit(cfg, data_for(cfg), seen.append, snapshot=path)
    assert [m.get("resumed") for m in seen] == [True, True]
    assert again.history == first.history  # times included: nothing was measured again
    assert same_weights(again.model, first.model)


def test_a_stop_asked_for_while_replaying_stops_the_resumed_run(tmp_path):
    cfg = config()
    path = tmp_path / "s.pt"
    on_epoch, _ = interrupt_at(3)
    with pytest.raises(Interrupted):
        fit(cfg, data_for(cfg), on_epoch, snapshot=path)
    # a pruner that now (other trials having finished) prunes at epoch 1
    result = fit(cfg, data_for(cfg), lambda m: "pruned at epoch 1", snapshot=path)
    assert result.status == "stopped" and len(result.history) == 1


@pytest.mark.parametrize("change", ["train.lr=0.004", "train.epochs=5", "model.dropout=0.2"])
def test_another_configs_snapshot_is_not_resumed(tmp_path, capsys, change):
    cfg = config(["train.optimizer=adamw", "train.lr=0.003"])
    path = tmp_path / "s.pt"
    fit(cfg, data_for(cfg), snapshot=path)
    other = config(["train.optimizer=adamw", "train.lr=0.003", change])
    seen = []
    result = fit(other, data_for(other), seen.append, snapshot=path)
    assert not any(m.get("resumed") for m in seen)  # trained from epoch 1
    assert without_times(result.history) == without_times(fit(other, data_for(other)).history)
    err = capsys.readouterr().err
    assert "another config's, device's or torch's; training from epoch 1" in err


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_an_unreadable_snapshot_is_reported_and_training_starts_over(tmp_path, capsys, content):
    cfg = config(["train.epochs=2"])
    path = tmp_path / "s.pt"
    if content is None:  # a readable torch file that is not a snapshot
        torch.save({"format": "something else"}, path)
    else:
        path.write_bytes(content)
    seen = []
    result = fit(cfg, data_for(cfg), seen.append, snapshot=path)
    assert result.status == "completed" and not any(m.get("resumed") for m in seen)
    err = capsys.readouterr().err
    assert str(path) in err and "training from epoch 1" in err
    assert torch.load(path, weights_only=True)["format"] == FORMAT  # replaced by a real one
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]  # no temporary file left


def _tamper(path: Path, change) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def _other_device(state: dict) -> None:
    what = json.loads(state["fingerprint"])
    state["fingerprint"] = json.dumps(what | {"device": "cuda"}, sort_keys=True)


def test_a_snapshot_from_another_kind_of_device_is_not_resumed(tmp_path, capsys):
    # a CUDA generator's state means nothing to a CPU one (an NFS home shares ~/.cache)
    cfg = config(["train.epochs=2"])
    path = tmp_path / "s.pt"
    fit(cfg, data_for(cfg), snapshot=path)
    _tamper(path, _other_device)
    seen = []
    result = fit(cfg, data_for(cfg), seen.append, snapshot=path)
    assert result.status == "completed" and not any(m.get("resumed") for m in seen)
    assert "another config's, device's or torch's" in capsys.readouterr().err


def test_a_snapshot_that_cannot_be_restored_is_removed_and_the_run_starts_over(tmp_path, capsys):
    # as when the model's code changed between the kill and the rerun: a layer it lacks
    cfg = config(["train.optimizer=adamw", "train.lr=0.003"])
    straight = fit(cfg, data_for(cfg))
    path = tmp_path / "s.pt"
    on_epoch, _ = interrupt_at(3)
    with pytest.raises(Interrupted):
        fit(cfg, data_for(cfg), on_epoch, snapshot=path)
    _tamper(path, lambda state: state["model"].popitem())
    seen = []
    result = fit(cfg, data_for(cfg), seen.append, snapshot=path)
    err = capsys.readouterr().err
    assert "cannot be restored" in err and "removed, training from epoch 1" in err, err
    # trained from freshly seeded objects, not from a half-restored model
    assert not any(m.get("resumed") for m in seen) and len(seen) == 4
    assert without_times(result.history) == without_times(straight.history)
    assert same_weights(result.model, straight.model)


def test_a_snapshot_that_cannot_be_written_warns_once_and_the_run_goes_on(tmp_path, capsys):
    cfg = config()
    (tmp_path / "file").write_text("in the way")
    path = tmp_path / "file" / "s.pt"  # its folder cannot be made: a file is there
    result = fit(cfg, data_for(cfg), snapshot=path)
    assert result.status == "completed" and len(result.history) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not saved" in err[0] and "goes on without snapshots" in err[0]


def refuse_to_delete(mp: pytest.MonkeyPatch, folder: str) -> None:
    """Path.unlink of a .pt file under `folder` fails as in a read-only folder. An os-level
    fault by hand: the tests run as root, whom chmod does not stop."""
    unlink = Path.unlink

    def refused(self: Path, missing_ok: bool = False) -> None:
        if self.suffix == ".pt" and folder in self.parts and self.exists():
            raise PermissionError(13, "Permission denied", str(self))
        unlink(self, missing_ok)

    mp.setattr(Path, "unlink", refused)


def test_a_snapshot_that_cannot_be_deleted_is_one_line_and_kept(tmp_path, capsys, monkeypatch):
    cfg = config(["train.epochs=1"])
    path = tmp_path / "snapshots" / "s.pt"
    fit(cfg, data_for(cfg), snapshot=path)
    refuse_to_delete(monkeypatch, "snapshots")
    remove(path)  # no exception: the run it belonged to is recorded already
    assert path.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not removed (" in err[0] and "Permission denied" in err[0]
    remove(tmp_path / "snapshots" / "absent.pt")  # none there: nothing to say
    assert capsys.readouterr().err == ""


def test_a_sweep_trial_whose_snapshot_cannot_be_deleted_completes(work, data, monkeypatch):
    # issue 34 4.1: the trial trained to the end, then removing its snapshot failed it (FAILED in
    # Optuna, exit 1); the snapshot is a convenience, its removal never fails a trial
    write_study(work, "keep", data, n_trials=1)
    refuse_to_delete(monkeypatch, "snapshots")
    res = swept_here(work)
    (trial,) = trials(work, "keep")
    assert res.code == 0, res.err
    assert trial.state == TrialState.COMPLETE and len(trial.user_attrs["val_acc"]) == 2
    assert children(work, "keep").iloc[0]["status"] == "FINISHED"
    # one line says so, and the file is still there
    lines = [ln for ln in res.err.splitlines() if ln.startswith("snapshot ")]
    assert len(lines) == 1 and "not removed (" in lines[0]
    assert len(list((work / ROOT).glob("*.pt"))) == 1


def test_snapshot_paths_differ_by_study_and_config_and_stay_in_their_folder(tmp_path):
    cfg = config()
    a = snapshot_path("study", cfg, tmp_path)
    assert a.parent == tmp_path and a.suffix == ".pt"
    assert a == snapshot_path("study", config(), tmp_path)  # the same config: the same file
    assert a != snapshot_path("other", cfg, tmp_path)
    assert a != snapshot_path("study", config(["train.seed=1"]), tmp_path)
    assert snapshot_path("../../../etc/passwd", cfg, tmp_path).parent == tmp_path  # never escapes


def test_snapshots_live_beside_a_file_store_and_in_the_cache_for_a_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the default store: mlruns/snapshots, git-ignored with the rest of mlruns/
    assert snapshot_dir(store_file("sqlite:///mlruns/optuna.db")) == tmp_path / "mlruns/snapshots"
    assert snapshot_dir(store_file("journal:runs/s.log")) == tmp_path / "runs" / "snapshots"
    assert snapshot_dir(store_file("runs/s.jsonl")) == tmp_path / "runs" / "snapshots"
    # a server: nothing in the working directory (fleet workers keep no local store)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pg = store_file("postgresql://u:secret@db/optuna")
    assert pg is None and snapshot_dir(pg) == tmp_path / "cache" / "nin-search" / "snapshots"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert snapshot_dir(None) == Path.home() / ".cache" / "nin-search" / "snapshots"


# ---- end to end: SIGKILL an ablation worker mid-cell, resume, compare with no kill ----------


def _cells(folder: Path, name: str) -> dict[tuple[str, int], list[float]]:
    return {
        (t.params["arm"], t.params["train.seed"]): t.user_attrs["val_acc"]
        for t in trials(folder, name)
        if t.state == TrialState.COMPLETE
    }


def _snapshot_epoch(folder: Path) -> int:
    files = list((folder / ROOT).glob("*.pt"))
    if not files:
        return 0
    try:
        return torch.load(files[0], weights_only=True)["epoch"]
    except Exception:  # being replaced this instant
        return 0


def test_a_killed_ablation_cell_resumes_from_its_snapshot_with_the_same_result(
    tmp_path, mlflow_db, data
):
    epochs = 12  # the kill lands after epoch 3's snapshot, well before the cell ends
    text = ablation_text("snap", data, seeds="[0]").replace("epochs = 2", f"epochs = {epochs}")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight, killed):
        folder.mkdir()
        with_mlflow_store(folder, mlflow_db)
        (folder / "abl.toml").write_text(text)
    nin_here_ok("ablate", "abl.toml", cwd=straight)
    assert not list((straight / ROOT).glob("*.pt"))  # finished cells leave no snapshot

    beat = {"NIN_SEARCH_HEARTBEAT_S": "1"}  # a silent trial is stale after 3 s
    proc = start_nin("ablate", "abl.toml", cwd=killed, env=beat, stdout=subprocess.DEVNULL)
    _wait_for_snapshot(proc, killed, 3)
    proc.kill()  # SIGKILL mid-cell: no handler runs, the snapshot is all that is left
    proc.communicate()
    done_before = len(_cells(killed, "snap"))
    at = _snapshot_epoch(killed)
    assert 3 <= at < epochs
    time.sleep(3.5)
    res = nin_here_ok("ablate", "abl.toml", cwd=killed, env=beat)  # the rerun: in this process
    # the killed cell went on from its snapshot: its replayed epochs are marked in the log
    replayed = [ln for ln in res.stdout.splitlines() if ln.endswith("from its snapshot")]
    assert len(replayed) == at, res.stdout
    # every cell's curve is the uninterrupted study's, to the last digit
    assert _cells(killed, "snap") == _cells(straight, "snap")
    assert done_before < 2
    assert not list((killed / ROOT).glob("*.pt"))  # removed once the cell was recorded
    # the retry's MLflow run holds the whole curve and says how much of it it replayed
    df = runs(killed, "snap")
    retry = df[df["tags.nin.resumed_epochs"].notna()]
    assert len(retry) == 1 and int(retry["tags.nin.resumed_epochs"].item()) == at
    history = mlflow.MlflowClient().get_metric_history(retry["run_id"].item(), "val_acc")
    arm = retry["tags.nin.arm"].item()
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == _cells(killed, "snap")[
        (arm, 0)
    ]
    cells = pd.read_csv(killed / "reports" / "snap" / "cells.csv")
    assert len(cells[cells["state"] == "complete"]) == 2


def _wait_for_snapshot(proc: subprocess.Popen, folder: Path, epoch: int) -> None:
    deadline = time.monotonic() + 120
    while _snapshot_epoch(folder) < epoch:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"no snapshot of epoch {epoch} within 120 s"
        time.sleep(0.05)


def test_an_interrupted_sweep_trial_leaves_no_snapshot(work, data):
    # a sweep never reruns an interrupted trial: a file would only take disk space
    write_study(work, "ctrlc", data, n_trials=1, settings={"train.epochs": 100})
    proc = start_sweep("study.toml", cwd=work)
    _wait_for_snapshot(proc, work, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGINT), err
    assert not list((work / ROOT).glob("*.pt"))


def test_a_sigtermed_ablation_cell_keeps_its_snapshot_and_the_rerun_goes_on(work, data):
    # SIGTERM (Slurm, systemd, kill) stops the cell; the rerun reruns it from its last epoch
    text = ablation_text("term", data, seeds="[0]").replace("epochs = 2", "epochs = 12")
    (work / "abl.toml").write_text(text)
    proc = start_nin("ablate", "abl.toml", cwd=work, stdout=subprocess.DEVNULL)
    _wait_for_snapshot(proc, work, 2)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    at = _snapshot_epoch(work)
    assert at >= 2  # kept
    res = nin_here_ok("ablate", "abl.toml", cwd=work)  # the rerun: in this process
    replayed = [ln for ln in res.stdout.splitlines() if ln.endswith("from its snapshot")]
    assert len(replayed) == at, res.stdout
    assert not list((work / ROOT).glob("*.pt"))
