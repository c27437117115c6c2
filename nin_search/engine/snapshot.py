"""Epoch snapshots: what a killed trial or ablation cell resumes from instead of epoch 1.

    path = snapshot_path(scope, cfg, snapshot_dir(store_file))  # <dir>/<hash>.pt
    result = fit(cfg, data, on_epoch, snapshot=path)   # saves after every epoch, resumes if there
    remove(path)                             # once the trial is recorded in Optuna and MLflow

A 3x3 cell of ablate_mlp_kernel.toml trains for two hours on a 2-core CPU without bf16; a
SIGKILL, a reboot or the end of a session at epoch 7 used to throw all of it away, since the
heartbeat retry (workers.py) starts the cell over. fit() now writes, after each epoch's metrics
are logged, everything the next epoch depends on: weights and BatchNorm buffers, optimizer and
schedule state, the batch-order generator and the global RNG (dropout), and the history so far.
A retry with the same resolved config (the same study, arm and seed: its params are the dead
trial's) loads it, replays the finished epochs to on_epoch (so its new MLflow run and Optuna trial
hold the whole curve) and trains on from the next epoch. On the CPU the result is bit for bit the
uninterrupted run's (tests/search/test_snapshot.py); on CUDA, as deterministic as the kernels are.

The file's name hashes the scope (the study's store and name) and the whole resolved config, and
the file holds the config too: a snapshot from another config (more epochs, another lr) is never
resumed. The files live beside a file store (mlruns/snapshots/ for the default SQLite one) and,
for a database server, in the user's cache (~/.cache/nin-search/snapshots/), never in a fleet
worker's working directory. Files are written to a temporary name and renamed, so a kill
mid-write leaves the previous epoch's. They are local files: a trial retried on another machine
starts over. Loaded with weights_only=True. Imports only torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from nin_search.engine.config import Config, flatten
from nin_search.engine.errors import first_line

FORMAT = "nin-search-snapshot/1"


def snapshot_dir(store_file: Path | None) -> Path:
    """Beside an SQLite or journal file (git-ignored in mlruns/ by default); for a database
    server, $XDG_CACHE_HOME/nin-search/snapshots (~/.cache unless set)."""
    if store_file is not None:
        return store_file.parent / "snapshots"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "nin-search" / "snapshots"


def snapshot_path(scope: str, cfg: Config, root: Path) -> Path:
    """The file for cfg within scope (a study's store and name): a hash, so no name can leave
    root."""
    blob = json.dumps({"scope": scope, "config": flatten(cfg)}, sort_keys=True, default=str)
    return root / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.pt"


def _fingerprint(cfg: Config, device: torch.device) -> str:
    """What a snapshot must have been written for: this config, on this kind of device (a CUDA
    generator's state means nothing to a CPU one), by this torch."""
    what = {"config": flatten(cfg), "device": device.type, "torch": torch.__version__}
    return json.dumps(what, sort_keys=True, default=str)


def _say(path: Path, what: str) -> None:
    print(f"snapshot {path}: {what}", file=sys.stderr, flush=True)


def save(path: Path, cfg: Config, epoch: int, history: list[dict], model, opt, sched, gen) -> bool:
    """The state after `epoch` finished, replacing the previous snapshot atomically. A snapshot
    is a convenience: a full disk or a folder it cannot write is one line on stderr and False
    (the run goes on, a kill would cost it its epochs), never a failed run."""
    device = gen.device
    state = {
        "format": FORMAT,
        "fingerprint": _fingerprint(cfg, device),
        "epoch": epoch,
        "history": [dict(h) for h in history],
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "schedule": sched.state_dict(),
        "generator": gen.get_state(),
        "rng": {"cpu": torch.get_rng_state()}
        | ({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
        return True
    except (OSError, RuntimeError) as e:  # RuntimeError: torch's writer on a full disk
        _say(path, f"not saved ({first_line(e, 200)}); this run goes on without snapshots")
        return False
    finally:
        if tmp:
            with contextlib.suppress(OSError):  # a folder that lets us write but not delete
                os.unlink(tmp)


def resume(path: Path, cfg: Config, model, opt, sched, gen) -> list[dict] | None:
    """Restore the snapshot at path into the freshly built objects and return the history of
    its epochs: [] when there is none for exactly this config and device (a line on stderr when
    a file is there but unusable), None when restoring failed part-way (the file is removed: the
    caller builds the objects again and trains from epoch 1)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, NotADirectoryError):  # none yet: the usual case
        return []
    except Exception as e:  # a truncated or foreign file: start over rather than fail the run
        _say(path, f"unreadable ({first_line(e, 200)}); training from epoch 1")
        return []
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        _say(path, f"not a {FORMAT} file; training from epoch 1")
        return []
    if state.get("fingerprint") != _fingerprint(cfg, gen.device):  # a hash collision, another
        _say(path, "another config's, device's or torch's; training from epoch 1")  # machine
        return []
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])  # moves its tensors to the parameters' device
        sched.load_state_dict(state["schedule"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["rng"]["cpu"])
        if gen.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], gen.device)
        return list(state["history"])
    except Exception as e:  # the model's code changed since it was written, say
        _say(path, f"cannot be restored ({first_line(e, 200)}); removed, training from epoch 1")
        remove(path)
        return None


def remove(path: Path) -> None:
    """Delete the snapshot (its run is recorded, or it cannot be restored). One that cannot be
    deleted (a read-only folder) is one line on stderr, never a failed trial or run."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        _say(path, f"not removed ({first_line(e, 200)}); delete it by hand to free its space")
