"""The Optuna internals nin-search reads (nin_search/search/optuna_private.py) exist and mean what
the package takes them to mean, on the Optuna installed."""

from __future__ import annotations

from pathlib import Path

import optuna

from nin_search.search import optuna_private as private


def test_every_internal_read_exists_in_this_optuna():
    # a newer Optuna that drops one fails here with its name, not deep inside a sweep
    private.check()


def test_the_internals_read_what_the_package_takes_them_for(tmp_path: Path):
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=60, grace_period=120
    )
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    # the storage and ids address this trial: a system attr set through them is the trial's
    private.storage(study).set_trial_system_attr(private.trial_id(trial), "nin_cell", {"a": 1})
    (only,) = private.storage(study).get_all_trials(private.study_id(study))
    assert only.system_attrs["nin_cell"] == {"a": 1} and only.number == trial.number
    # heartbeats: on for an RDB storage with an interval, off for an in-memory study
    assert private.heartbeat_enabled(study)
    assert not private.heartbeat_enabled(optuna.create_study())
    # study.stop() inside optimize sets the flag the workers read
    seen = []

    def objective(t: optuna.Trial) -> float:
        t.study.stop()
        seen.append(private.stop_requested(t.study))
        return 0.0

    assert not private.stop_requested(study)
    study.optimize(objective, n_trials=3)
    assert seen == [True]


def test_no_other_module_touches_optuna_internals():
    package = Path(private.__file__).parents[1]
    names = ("._storage", "._study_id", "._trial_id", "._stop_flag", "storages._", "_get_stale")
    # the internals are read in one module only: an Optuna upgrade is checked in one place
    touching = sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "optuna_private.py" and any(n in p.read_text() for n in names)
    )
    assert touching == []
