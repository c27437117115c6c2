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
uninterrupted run's (tests/test_snapshot.py); on CUDA, as deterministic as the kernels are.

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
from pathlib import Path

import torch

from nin_search.config import Config, flatten

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


def _rng(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save(path: Path, cfg: Config, epoch: int, history: list[dict], model, opt, sched, gen) -> None:
    """The state after `epoch` finished, replacing the previous snapshot atomically."""
    device = gen.device
    state = {
        "format": FORMAT,
        "config": json.dumps(flatten(cfg), sort_keys=True, default=str),
        "epoch": epoch,
        "history": [dict(h) for h in history],
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "schedule": sched.state_dict(),
        "generator": gen.get_state(),
        "rng": _rng(device),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load(path: Path, cfg: Config) -> dict | None:
    """The snapshot at path if it was written for exactly cfg, else None (with a line on stderr
    when a file is there but cannot be used: the run then starts at epoch 1, as before)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # a truncated or foreign file: start over rather than fail the run
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"snapshot {path} unreadable ({first}); training from epoch 1", file=sys.stderr)
        return None
    config = json.dumps(flatten(cfg), sort_keys=True, default=str)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        print(f"snapshot {path} is not a {FORMAT} file; training from epoch 1", file=sys.stderr)
        return None
    if state.get("config") != config:  # a hash collision, or a file copied by hand
        print(f"snapshot {path} is another config's; training from epoch 1", file=sys.stderr)
        return None
    return state


def restore(state: dict, model, opt, sched, gen) -> list[dict]:
    """Put the snapshot's state into the freshly built objects; returns its history."""
    device = gen.device
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])  # moves its tensors to the parameters' device
    sched.load_state_dict(state["schedule"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["rng"]["cpu"])
    if device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return state["history"]


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
