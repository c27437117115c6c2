# make demo: venv + package + the main job.  make test: venv + test extra + pytest.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned, so pip does not pull a newer build with gigabytes of CUDA packages
TORCH ?= torch==2.14.1 torchvision==0.29.1
PROFILE ?= auto

.PHONY: demo test docs lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The plain d2l NiN's loss does not move within the finder's 100 steps at any lr (a plateau:
# ReLU on the logits, no BatchNorm); with BatchNorm the curve has a clear valley.
DEMO_SET ?= --set model.batch_norm=true

demo: $(VENV)/.installed
	$(BIN)/python -m nin_search lr-finder --profile $(PROFILE) $(DEMO_SET)

# one pytest worker per core; loadfile keeps a file's tests (and its module fixtures) on one worker,
# handed out longest file first (tests/conftest.py, LONGEST_FIRST), not by number of tests
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

# the docs site into site/ (docs/, mkdocs.yml); --strict: a broken link or a missing page fails.
# The test extra holds the docs extra's tools; serve it locally with `.venv/bin/mkdocs serve`.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

lint: $(VENV)/.installed
	$(BIN)/python -m pip install -q ruff
	$(BIN)/ruff check nin_search tests benchmarks experiments && $(BIN)/ruff format --check nin_search tests benchmarks experiments

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache site .cache
