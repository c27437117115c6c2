# make demo: venv + package + the main job.  make test: venv + test extra + pytest.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned, so pip does not pull a newer build with gigabytes of CUDA packages
TORCH ?= torch==2.14.1 torchvision==0.29.1
PROFILE ?= auto

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m nin_search train --profile $(PROFILE)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/python -m pip install -q ruff
	$(BIN)/ruff check nin_search tests benchmarks && $(BIN)/ruff format --check nin_search tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
