"""The Optuna internals nin-search relies on, in this one module, for `optuna>=5.0,<6`.

Optuna's public API has no way to read a trial's system attributes inside a sampler's
before_trial, to set one on a trial being created, to tell whether optimize() was asked to stop,
or to test a storage for heartbeats; these do, as Optuna's own optimize() does. check() names
any of them a newer Optuna no longer has, and tests/search/test_optuna_private.py runs it.
"""

from __future__ import annotations

import optuna
from optuna.storages import _heartbeat

STALE_TRIAL_IDS = "_get_stale_trial_ids"  # RDBStorage's; storage.py retries it as the rest


def storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes (its _storage)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (not its number)."""
    return trial._trial_id


def stop_requested(study: optuna.Study) -> bool:
    """Whether study.stop() was called (a sampler's, here) in the running optimize()."""
    return study._stop_flag


def heartbeat_enabled(study: optuna.Study) -> bool:
    """Optuna's own test, as in optimize(): an RDB storage with a heartbeat interval."""
    return _heartbeat.is_heartbeat_enabled(study._storage)


def check() -> None:
    """RuntimeError naming what this Optuna lacks of what the functions above read."""
    study = optuna.create_study(storage=optuna.storages.RDBStorage("sqlite:///:memory:"))
    trial = study.ask()
    missing = [
        name
        for owner, name in (
            (study, "_storage"),
            (study, "_study_id"),
            (study, "_stop_flag"),
            (trial, "_trial_id"),
            (_heartbeat, "is_heartbeat_enabled"),
            (optuna.storages.RDBStorage, STALE_TRIAL_IDS),
        )
        if not hasattr(owner, name)
    ]
    if missing:
        raise RuntimeError(
            f"optuna {optuna.__version__} has no {', '.join(missing)}: nin_search/search/"
            "optuna_private.py reads them; pin optuna to the range in pyproject.toml or adapt it"
        )
