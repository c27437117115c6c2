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
# # Find a learning rate and read the curve
#
# This notebook runs an LR range test on Fashion-MNIST with `ns.find_lr` and shows how to read
# its plot. The test trains a fresh network for a few dozen steps while the learning rate grows
# from 1e-7 to 10, and it records the loss at each step. You will see what the raw, causal and
# zero-phase curves are, where each suggestion on the plot comes from, why one suggestion becomes
# the recommended `train.lr`, and how the sweep range around it is chosen. A study file takes
# that range with `"train.lr" = { from_lr_finder = true }`. The settings below are tiny, so the
# notebook runs in about half a minute on two CPU cores. Enlarge `TINY` for a curve you can
# trust.

# %%
import os
import tempfile

# Work in a fresh folder so that the run's mlruns/ and reports/ land there, not in your
# checkout. Drop this line to keep them beside your other runs.
os.chdir(tempfile.mkdtemp(prefix="nin-notebook-"))

import pandas as pd

import nin_search as ns

# The cpu profile is the Lin 2013 NiN at 28 px, width 0.5, with BatchNorm, AdamW and a onecycle
# schedule. These settings shrink the test, and any dotted key of the config can go here.
TINY = {
    "data.train_subset": 2048,  # training images the range test draws its batches from (0 = all)
    "data.val_size": 512,  # images held out for validation (the default is 5,000)
    "train.batch_size": 64,  # one batch per step
    "lr_finder.num_iter": 60,  # steps in the range test (the default is 100)
}

# %% [markdown]
# ## Run the range test
# The call logs one MLflow run (in experiment `nin-lr-finder`) and writes `lr_finder.json` and
# `lr_finder.html` to `found.folder`. It returns the recommended lr and the range a sweep would
# search.

# %%
found = ns.find_lr(profile="cpu", overrides=TINY)
found.lr, found.range

# %% [markdown]
# ## The three curves
# - **loss** (grey) is the raw training loss at each step. Each step sees a different batch,
#   so the line is noisy.
# - **causal EMA** is fastai's smoothing. It averages each step with the steps *before* it,
#   so it lags: at fastai's `beta = 0.98` the curve trails the raw loss by about 49 steps.
#   That delay moves its minimum (and every suggestion read from it) to a higher lr than the
#   loss itself reached.
# - **zero-phase** runs the same average forward and then backward. The two lags cancel, and
#   the minimum stays where the loss had it. The suggestion rules read this curve
#   (`lr_finder.smoothing = "zero-phase"`, marked "rules read this" in the legend).
#
# The diamonds mark one suggestion per rule. The large one is the recommendation, and the green
# band is the sweep range.

# %%
found.plot()

# %% [markdown]
# ## Where the suggestion comes from
# Each rule reads the zero-phase curve without its first 10% and last 5 steps:
#
# | rule | the lr it suggests |
# |---|---|
# | `valley` | fastai's default: about halfway into the longest descent |
# | `steep` | the steepest drop of loss per decade of lr |
# | `minimum` | the lr at the lowest loss, divided by 10 (fastai's margin) |
# | `half-decade` | the lr at the lowest loss, divided by 10**0.5 |
# | `lowest` | the lr at the lowest loss itself |
#
# `lr_finder.rule = "auto"` picks `lowest` under a onecycle schedule, which treats `train.lr` as
# its peak and warms up to it. It picks `half-decade` under schedules that start at `train.lr`.

# %%
pd.Series(found.suggestions, name="lr").to_frame()

# %% [markdown]
# The next cell reads the lowest point of the zero-phase curve by hand. It should give the same lr
# as `found.suggestions["lowest"]`. It also finds the lowest point of the causal EMA, to show how
# far that curve's lag would have moved the suggestion.

# %%
import math

curve, n = found.finding.curve, TINY["lr_finder.num_iter"]
window = range(n // 10, len(curve.lrs) - 5)  # what the rules read
by_hand = min(window, key=lambda i: found.finding.zero_phase[i])
lagged = min(window, key=lambda i: curve.smoothed[i])
print(
    f"lowest zero-phase loss at lr {curve.lrs[by_hand]:.3g} (rule 'lowest': "
    f"{found.suggestions['lowest']:.3g})"
)
print(
    f"lowest causal-EMA loss at lr {curve.lrs[lagged]:.3g}: "
    f"{math.log10(curve.lrs[lagged] / curve.lrs[by_hand]):+.1f} decades from the zero-phase one"
)

# %% [markdown]
# ## The sweep range
# Under `lowest`, the range is [recommended / 30, 3 x recommended]. The recommendation sits near
# the top of the stable lrs, and the plateau below it can reach a decade or more further down.
# Under the other rules it is [recommended / 10, the lr at the lowest loss]. A study file that
# says `"train.lr" = { from_lr_finder = true }` searches this range on a log scale. It takes the
# range from the latest lr-finder run whose model, optimizer and data settings match the study's,
# and it runs the test first when no such run exists. When the loss never fell, `found.lr` is
# None and `found.message` explains why and suggests settings to try.

# %%
low, high = found.range
print(found.status, "-", found.message)
print(f"recommended train.lr = {found.lr:.4g}; sweep range [{low:.4g}, {high:.4g}]")
