# csetrain — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The CPU build of torch, pinned so pip never falls back to a multi-GB CUDA build on a machine
# without a GPU; on a GPU box set TORCH to the build you want (e.g. TORCH="torch==2.13.0").
TORCH ?= torch==2.13.0
# Tests and the sts7 evaluations read the data pack from here unless already set.
export CSETRAIN_DATA_DIR ?= $(abspath ../shared/data)

.DEFAULT_GOAL := help
.PHONY: help install demo test test-slow test-all lint format bench clean

help:  ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## create .venv with CPU torch, csetrain and the test tools

demo: install  ## train on the embedded default (packaged MiniLM, bundled sample, local MLflow)
	$(BIN)/csetrain train experiment=demo

test: install  ## run the default test suite (offline, < 10 min on 2 cores)
	$(PY) -m pytest -m "not slow"

test-slow: install  ## only the slow tests (real MLflow servers, headless Chromium)
	$(PY) -m pytest -m slow

test-all: install  ## run every test, the slow ones too
	$(PY) -m pytest

lint: install  ## ruff lint + format check
	$(BIN)/ruff check csetrain tests scripts
	$(BIN)/ruff format --check csetrain tests scripts

format: install  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format csetrain tests scripts
	$(BIN)/ruff check --fix csetrain tests scripts

bench: install  ## CPU speed benchmarks against sentence-transformers and mteb (GPU: scripts/bench_gpu.sh)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_eval.py
	$(PY) scripts/bench_batching.py

clean:  ## remove outputs/ (runs, MLflow store, caches); keeps .venv
	rm -rf outputs
