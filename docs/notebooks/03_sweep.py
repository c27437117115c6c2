# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Run a small sweep and read it
#
# This notebook writes a study file and runs it with `ns.sweep`, which returns an ordinary
# `optuna.Study`. It then reads the study in three places: in the notebook, with the trials
# table and Optuna's own plots (`plot_optimization_history`, `plot_param_importances`); in
# optuna-dashboard, which reads the same Optuna storage; and in the MLflow UI, where every
# trial is a run under the study's parent run. The sweep below has six trials of one epoch on 2,048
# images, and it takes about a minute on two CPU cores. Six trials are enough to learn how to
# read the plots but too few to trust their conclusions. `studies/quick.toml` is the real
# version, with 12 trials on all the data and Hyperband pruning.

# %%
import os
import tempfile

# Work in a fresh folder so that the sweep's mlruns/ (the MLflow store and the Optuna storage
# mlruns/optuna.db) land there, not in your checkout. Drop this line to keep them beside your
# other runs.
os.chdir(tempfile.mkdtemp(prefix="nin-notebook-"))

import optuna

import nin_search as ns

N_TRIALS = 6  # quick.toml runs 12
TINY = {  # shared by every trial, on top of the study file (as --set does)
    "data.train_subset": 2048,  # training images per trial (0 = all 55,000)
    "data.val_size": 512,  # the validation split every trial is scored on
    "train.epochs": 1,  # the cpu profile trains 5
    "train.batch_size": 32,  # more, smaller steps than the default 128 on so few images
}

# %% [markdown]
# ## The study file
# A study file holds the study's name, the profile, the parameters to search with their
# ranges, the sampler and the pruner. It holds only what differs from the defaults. The keys in
# `[params]` are the same dotted names as in `TINY`, in MLflow and in the trials table.
# `studies/quick.toml` takes the lr range from the lr-finder with
# `"train.lr" = { from_lr_finder = true }`. This file gives the range explicitly to stay short.

# %%
STUDY = """
name = "notebook-sweep"
profile = "cpu"
n_trials = 6      # the call's n_trials=N_TRIALS wins over it

[params]
"train.lr" = { low = 1e-3, high = 0.1, log = true }
"model.dropout" = { low = 0.0, high = 0.7 }
"model.mlp_depth" = { low = 0, high = 3 }

[sampler]
type = "tpe"
seed = 0

[pruner]
type = "none"   # quick.toml uses hyperband; one epoch leaves nothing to stop early
"""
with open("notebook_sweep.toml", "w") as f:
    f.write(STUDY)

# %% [markdown]
# ## Run it
# Each trial prints its epochs and its result. Calling `ns.sweep` again on the same file
# resumes the study until it holds `n_trials` finished trials. Ctrl-C (the kernel's stop
# button) ends the running trial, marks its MLflow run KILLED and raises KeyboardInterrupt.

# %%
study = ns.sweep("notebook_sweep.toml", n_trials=N_TRIALS, overrides=TINY)
print("best value", study.best_value, "with", study.best_params)

# %% [markdown]
# ## The trials table
# Each row is one trial with its parameters, its value (the best validation accuracy of its
# epochs) and its state.

# %%
study.trials_dataframe(attrs=("number", "value", "params", "state", "duration"))

# %% [markdown]
# ## Optuna's plots
# **Optimization history.** Each dot is a trial's value, and the line is the best so far. With
# TPE the first 10 trials are random, so a curve that keeps climbing after 10 trials means that
# the sampler is learning the space.

# %%
optuna.visualization.plot_optimization_history(study)

# %% [markdown]
# **Parameter importances.** Optuna 5 estimates them with PED-ANOVA by default. It asks how
# differently each parameter is spread among the best trials than among all of them. A
# parameter whose good values bunch together scores high. Read it as a hint and not as a
# verdict: six trials are few, and an importance says nothing about which values are better.
# `plot_slice` shows that: each trial's value against one parameter.

# %%
optuna.visualization.plot_param_importances(study)

# %%
optuna.visualization.plot_slice(study, params=["train.lr", "model.dropout"])

# %% [markdown]
# ## The dashboard and the MLflow UI
# Both UIs read the stores that this sweep wrote to `mlruns/` in the working folder below. Run
# these commands in a terminal from that folder.
#
# - **optuna-dashboard** shows the history, the intermediate values per epoch, the importances
#   and the Pareto fronts of multi-objective studies, live while a sweep runs:
#   `python -m nin_search dashboard notebook_sweep.toml`. It needs
#   `pip install nin-search[dashboard]`. Or run it directly on the storage with
#   `optuna-dashboard sqlite:///mlruns/optuna.db`.
# - **The MLflow UI** shows one run per trial under the study's parent run, with its config,
#   its per-epoch metrics and its model: `python -m nin_search ui`. It serves the UI at
#   http://127.0.0.1:5000.
#
# The same runs can be read from Python. `mlflow.search_runs` returns a DataFrame.

# %%
import mlflow

runs = mlflow.search_runs(experiment_names=[study.study_name])
print("working folder:", os.getcwd())
print("MLflow runs in experiment", repr(study.study_name), ":", len(runs), "(trials and parent)")
