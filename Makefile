# The two set-up commands for a new machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 7860
WHEELS ?= ../shared/wheels
# FAISS build: one of the two, never both (a GPU machine gets faiss-gpu).
FAISS ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: install demo test lint typecheck clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,$(FAISS)]"
	# Neighbour sampling (optional): prebuilt wheels for this exact torch, when this folder exists.
	if ls $(WHEELS)/torch_sparse-*.whl >/dev/null 2>&1; then \
		$(PY) -m pip install -q $(WHEELS)/torch_scatter-*.whl $(WHEELS)/torch_sparse-*.whl; fi
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/shopgraph demo --port $(PORT)

lint: install
	$(VENV)/bin/ruff check graph encoders retrieval ui tests bench

typecheck: install
	$(VENV)/bin/mypy graph encoders retrieval ui

test: install lint typecheck
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
