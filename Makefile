# `make run` and `make test` bootstrap .venv on a fresh machine, then do their job.
# The install is skipped while .venv/.installed is newer than pyproject.toml.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3
RUN_DIR ?= runs/demo

.PHONY: install run test lint bench gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,eval,formats]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/cfgdiff demo --out $(RUN_DIR)

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

bench: install
	$(PY) -m bench

# On a GPU machine (bench/gpu_check.py): no bootstrap, since such a machine may have no package index; it uses
# .venv where there is one and the system's CUDA Python otherwise (GPU_PY=... to choose).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PY) -m bench.gpu_check

clean:
	rm -rf runs .pytest_cache
