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
# # Train a NiN, evaluate it, and look at its predictions
#
# This notebook trains one Network-in-Network on Fashion-MNIST with `ns.train`, evaluates the
# kept model on the test set with `ns.evaluate`, and looks at the results in three ways: the
# per-class accuracy, the confusion matrix, and a gallery of test images with their true and
# predicted labels, misclassified first. The gallery is what d2l's NiN forum asked for as
# `predict_ch3`. Every run is tracked in MLflow, and `ns.load_model(run.run_id)` gives the
# trained network back as a `torch.nn.Module`. The settings below are tiny (a few thousand
# images, a few epochs), so the notebook runs in under a minute on two CPU cores and the model
# is far from converged. Enlarge `TINY` for the real thing: the cpu profile's defaults (all
# 55,000 training images, 5 epochs) reach at least 0.90 test accuracy.

# %%
import html
import os
import tempfile

# Work in a fresh folder so that the run's mlruns/ and reports/ land there, not in your
# checkout. Drop this line to keep them beside your other runs.
os.chdir(tempfile.mkdtemp(prefix="nin-notebook-"))

from IPython.display import HTML

import nin_search as ns

TINY = {
    "data.train_subset": 4096,  # training images (0 = all 55,000)
    "data.val_size": 1000,  # images held out for validation, scored after every epoch
    "train.epochs": 2,  # the cpu profile trains 5
    "train.batch_size": 32,  # more, smaller steps than the default 128 on so few images
    "train.lr": 0.02,  # the cpu profile's lr (onecycle peak); notebook 01 finds one for you
}

# %% [markdown]
# ## Train
# The call prints one line per epoch and shows a progress bar. It returns the run's id, its
# best validation accuracy and the per-epoch history as a DataFrame.

# %%
run = ns.train(profile="cpu", overrides=TINY, experiment="notebooks")
print(run.status, run.run_id, f"best val_acc {run.best_val_acc:.4f}")
run.history

# %%
run.plot()

# %% [markdown]
# ## Evaluate on the test set
# `ns.evaluate` loads the model that the run logged, scores the 10,000 test images and writes
# its files to `ev.folder`: the confusion matrix, per-class accuracy and a gallery of
# predictions. It also logs them to the run. The test set is for this final look only. Sweeps
# tune on the validation split.

# %%
ev = ns.evaluate(run.run_id, split="test", images=36)
print(f"test accuracy {ev.accuracy:.4f}, loss {ev.loss:.4f}")
ev.per_class

# %% [markdown]
# ## The confusion matrix
# The rows are the true classes and the columns are the predicted ones. The left panel shows
# counts. The right panel divides each row by its total, so the diagonal is each class's
# recall. Look for the bright cells off the diagonal: on Fashion-MNIST, shirts, T-shirts,
# pullovers and coats are confused with one another long after trousers and bags are solved.

# %%
ev.plot()

# %%
# the same counts as a table: shirts predicted as T-shirts, for example
mistakes = ev.confusion.stack().rename("images").reset_index()
mistakes = mistakes[mistakes["true"] != mistakes["predicted"]]
mistakes.sort_values("images", ascending=False).head(5)

# %% [markdown]
# ## The prediction gallery (d2l's `predict_ch3`)
# `ns.evaluate` wrote `predictions.html` to `ev.folder`. It shows `images=36` test images at
# their native 28x28 pixels, labelled with the true and predicted class. Misclassified images
# (red) come first, then correct ones (green). The page is shown inside an iframe here so that
# its styles stay out of the notebook's. Open `ev.folder / "index.html"` in a browser for all
# of the evaluation's files.

# %%
page = (ev.folder / "predictions.html").read_text()
HTML(f'<iframe srcdoc="{html.escape(page)}" width="100%" height="480" frameborder="0"></iframe>')

# %% [markdown]
# ## The model itself
# `ns.load_model` returns the trained network on the CPU, in eval mode. It takes the run id,
# `models:/NAME@ALIAS` or a `models:/m-...` URI. The network expects `(N, 1, 28, 28)` float
# images scaled to [0, 1], which is how the cpu profile feeds them (`data.resize = 0`).

# %%
import torch

model = ns.load_model(run.run_id)
with torch.no_grad():
    logits = model(torch.rand(2, 1, 28, 28))
print(type(model).__name__, tuple(logits.shape), "eval mode:", not model.training)

# %%
wrong = int(ev.confusion.to_numpy().sum() - ev.confusion.to_numpy().trace())
print(
    f"test accuracy {ev.accuracy:.4f}: {wrong} of {int(ev.confusion.to_numpy().sum())} "
    f"test images misclassified; files in {ev.folder}"
)
