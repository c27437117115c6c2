"""nin-search: hyperparameter search and ablations for the Network-in-Network CNN, from Python.

    import nin_search as ns
    found = ns.find_lr(profile="cpu", overrides={"data.train_subset": 2048})
    run = ns.train(profile="cpu", overrides={"train.lr": found.lr, "train.epochs": 2})
    ev = ns.evaluate(run.run_id, split="test")
    study = ns.sweep("studies/quick.toml", n_trials=4)
    abl = ns.ablate("studies/ablate_head.toml", seeds=[0, 1])
    ns.summary(profile="cpu")

Settings are the dotted names of the config files and --set (`overrides={"train.lr": 0.1}`,
`config="my.toml"`); a bad one raises ns.ConfigError with the command line's one-line message.
Each command of `python -m nin_search` is a call of one of these functions.

Importing this package is cheap and needs torch alone (nothing at all, in fact): each name
below is loaded on first use (PEP 562), and with it optuna, mlflow, pandas or plotly as needed.
"""

import importlib as _importlib  # private names: dir(ns) shows __all__ and the subpackages
import typing as _typing

__all__ = [
    "ConfigError",
    "find_lr",
    "train",
    "load_model",
    "evaluate",
    "summary",
    "sweep",
    "ablate",
    "LrFinding",
    "TrainedRun",
    "Evaluated",
    "AblationResult",
]

_HOME = {  # name -> the module of the api layer that defines (or re-exports) it
    "ConfigError": "nin_search.api.runs",
    "find_lr": "nin_search.api.runs",
    "train": "nin_search.api.runs",
    "load_model": "nin_search.api.runs",
    "evaluate": "nin_search.api.runs",
    "summary": "nin_search.api.runs",
    "sweep": "nin_search.api.studies",
    "ablate": "nin_search.api.studies",
    "LrFinding": "nin_search.api.results",
    "TrainedRun": "nin_search.api.results",
    "Evaluated": "nin_search.api.results",
    "AblationResult": "nin_search.api.results",
}

if _typing.TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads them
    from nin_search.api.results import AblationResult, Evaluated, LrFinding, TrainedRun
    from nin_search.api.runs import ConfigError, evaluate, find_lr, load_model, summary, train
    from nin_search.api.studies import ablate, sweep


def __getattr__(name: str) -> object:
    if name not in _HOME:
        raise AttributeError(f"module 'nin_search' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_HOME[name]), name)
    globals()[name] = value  # once: the next access does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
