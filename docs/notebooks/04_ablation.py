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
# # Run a small ablation and read its table and plot
#
# This notebook asks one of d2l's NiN questions: does the global-average-pooling head (GAP)
# beat a fully connected one (FC) on accuracy? It asks with an ablation file and `ns.ablate`.
# An ablation trains every arm (here `gap` and `fc`) once per seed, on the same data split, so
# arms with the same seed form a pair. It then compares each arm with the baseline across the
# seeds: mean, 95% confidence interval, paired difference (delta) and p-values. You will learn
# how to read that table and its plot, and why one seed is not enough. The settings are tiny (2
# arms x 3 seeds, one epoch on 2,048 images), so the notebook runs in about a minute on two CPU
# cores and its answer is not the real one. `studies/ablate_head.toml` asks the same question
# at full size, and the docs' answers page gives its result.

# %%
import os
import tempfile

# Work in a fresh folder so that mlruns/ and reports/ land there, not in your checkout. Drop
# this line to keep them beside your other runs.
os.chdir(tempfile.mkdtemp(prefix="nin-notebook-"))

import nin_search as ns

SEEDS = [0, 1, 2]  # at least 3 for a confidence interval; ablate_head.toml uses 3
TINY = {  # shared by every cell, on top of the ablation file (as --set does)
    "data.train_subset": 2048,  # training images per cell (0 = all 55,000)
    "data.val_size": 512,  # the validation split every cell is scored on
    "train.epochs": 1,  # ablate_head.toml trains 10
    "train.batch_size": 32,  # more, smaller steps than the default 128 on so few images
}

# %% [markdown]
# ## The ablation file
# Shared settings come first. Then comes one `[arms.NAME]` table per arm, holding only what the
# arm changes. `baseline` names the arm that the others are compared with. `ablate_head.toml`
# also gives each arm its own lr from its own range test
# (`"train.lr" = { per_arm = "lr-finder" }`). This file keeps the cpu profile's lr for both
# arms to stay short.

# %%
ABLATION = """
name = "notebook-ablate-head"
profile = "cpu"
baseline = "gap"
seeds = [0, 1, 2]   # ns.ablate(..., seeds=SEEDS) replaces them

[arms.gap]
"model.head" = "gap"

[arms.fc]
"model.head" = "fc"   # Flatten + Linear on the last feature map, instead of a NiN block + GAP
"""
with open("notebook_ablation.toml", "w") as f:
    f.write(ABLATION)

# %% [markdown]
# ## Run it
# Each (arm, seed) cell is one training run, tracked in MLflow under the ablation's parent run.
# Calling `ns.ablate` again resumes: only the missing cells run.

# %%
abl = ns.ablate("notebook_ablation.toml", seeds=SEEDS, overrides=TINY)
print("metric:", abl.metric, "- report in", abl.folder)

# %% [markdown]
# ## The summary table
# There is one row per arm. The baseline comes first.
# - `lr` is the arm's learning rate. `n` is the number of seeds that finished. `mean`, `sd` and
#   `ci_low`..`ci_high` describe the metric (`final_val_acc`, the last epoch's validation
#   accuracy) over those seeds, with a 95% t interval.
# - `delta` is the arm's mean minus the baseline's. It is paired by seed, so it removes the
#   luck of a seed that is good or bad for both arms. `delta_ci_low`..`delta_ci_high` and
#   `p_value` (paired t-test) say whether the difference is larger than the spread between
#   seeds. With more arms, `p_holm` corrects for the number of comparisons.
# - `params`, `macs`, `img_per_s` and `epoch_time_s` give each arm's size, cost and speed, the
#   other half of d2l's "GAP or FC" question.
# - `diverged`, `at_chance` (seeds that ended at chance accuracy), `last_gain` and `converged`
#   flag cells that failed or that had not finished learning. At one epoch nothing has
#   converged, so read the tiny run's means as a demonstration only.

# %%
abl.summary

# %% [markdown]
# Each cell's value is kept too. Read `abl.cells` to check that no seed diverged or stayed at
# chance, since a failed seed drags the mean and widens the interval.

# %%
abl.cells

# %% [markdown]
# ## The plot
# Each arm's mean appears with its 95% CI, and every seed is a dot. Intervals that overlap
# widely, or a delta whose CI contains 0, mean that this ablation cannot tell the arms apart.
# It takes more seeds or more epochs to settle the question, not a second look at the same
# numbers.

# %%
abl.plot()

# %% [markdown]
# ## The report
# `ns.ablate` also wrote a report to `abl.folder`: `summary.md` (the table above with the
# statistics spelled out), `summary.csv`, `cells.csv` and `index.html` with every plot. It
# logged the report to the ablation's MLflow parent run as well. `python -m nin_search ui`
# opens the MLflow UI on these runs, and `python -m nin_search dashboard notebook_ablation.toml`
# opens optuna-dashboard on the study behind them (`abl.study`).

# %%
from IPython.display import Markdown

Markdown((abl.folder / "summary.md").read_text())

# %%
row = abl.summary.set_index("arm").loc["fc"]
print(
    f"fc - gap = {row['delta']:+.4f} {abl.metric} over {int(row['n'])} seeds "
    f"(p = {row['p_value']:.3g})"
)
